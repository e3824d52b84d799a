"""Slow learning: masked conditional video diffusion training (paper section 3.1, Eq. 1 and 2).

Run it as `slowfast-vgen train ...`, `python -m slowfast_vgen.training.train ...`, or under any
`accelerate launch` / `torchrun` configuration (multi-GPU, multi-node, DeepSpeed, FSDP: accelerate's).

Two stages, for a world model trained from scratch (ToyWorld has no pretrained VAE):
  --stage vae   trains the AutoencoderKL on single frames and sets its latent scaling factor;
  --stage unet  trains the UNet (and, with --train-text-encoder, the text encoder) to generate the next
                frames from clean context frames and an action, with the loss masked on the context.
For planning (paper section 3.4):
  --stage idm   trains an inverse dynamics model (`pipelines/inverse_dynamics.py`): two consecutive frames ->
                the action, on the same clips as the UNet, a share of them drawn through the world model's
                VAE and blurred so that it reads generated frames too; saved to `<output-dir>/inverse_dynamics`.
Then, to teach the UNet to use its memory:
  --stage slow-fast  the slow-fast learning loop (Algorithm 1 (b), `training/slow_fast.py`): ToyWorld
                episodes with revisits, or with --data manifest the consecutive clips of your videos; Temp-LoRA
                runs over each, and the UNet learns with each chunk's memory applied and frozen. One step is
                one episode per process.
Each run writes `checkpoint-<step>/` folders (exact resume), `loss.jsonl`, `loss.png` and the final
pipeline as a diffusers folder in `<output-dir>/model`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler  # noqa: F401  (tests build the loss's scheduler from here)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..data import memory_maze, streams
from ..data.manifest import BadRecordError
from ..data.memory_maze_episodes import PATH_FAMILIES_3D
from ..data.toyworld import reverse_actions
from ..pipelines import SlowFastVGenPipeline, WorldModelSpec, build_pipeline
from ..pipelines._deprecation import deprecated_aliases
from . import losses, slow_fast, stages
from .checkpoints import resume, save_checkpoint, write_rank_report
from .losses import encode_actions, masked_diffusion_loss  # noqa: F401  (the slow-fast tests use them from here)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="slowfast-vgen train", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="new:toyworld",
                        help="pipeline folder to start from, or new:<tiny|toyworld|mid> for random weights")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--stage", choices=("vae", "unet", "slow-fast", "idm"), default="unet",
                        help="slow-fast: Algorithm 1 (b), the UNet learns with each episode's Temp-LoRA applied; "
                             "idm: the inverse dynamics model of planning")
    parser.add_argument("--temp-lora", metavar="JSON",
                        help="slow-fast: the fast learner's TempLoRAConfig fields (default: the paper's); 'none': "
                             "Θ stays empty, the 'wo Loop' ablation")
    parser.add_argument("--families", nargs="+", choices=streams.TRAINING_FAMILIES + PATH_FAMILIES_3D, default=None,
                        metavar="FAMILY",
                        help="slow-fast: path families of the episodes (default: ToyWorld's "
                             f"{' '.join(streams.PATH_FAMILIES)}, 'retrace' being planning's task; Memory Maze's "
                             f"{' '.join(PATH_FAMILIES_3D)})")
    parser.add_argument("--episode-chunks", type=int, nargs=2, default=(4, 8), metavar=("MIN", "MAX"),
                        help="slow-fast: chunks per ToyWorld episode, or per window of a manifest episode "
                             "(default: 4 8, beyond the context window)")
    parser.add_argument("--data", choices=("toyworld", "memory-maze", "manifest"), default="toyworld",
                        help="toyworld: rendered on the fly; memory-maze: episodes recorded in --maze-cache (made "
                             "there first when missing); manifest: your own videos")
    parser.add_argument("--maze-cache", default="runs/memory-maze-cache",
                        help="with --data memory-maze: the folder of recorded episodes (resumable)")
    parser.add_argument("--episodes-per-maze", type=int, default=10,
                        help="with --data memory-maze: recorded episodes of each maze 1..--world-seeds")
    parser.add_argument("--manifest", help="JSON Lines manifest of videos (with --data manifest)")
    parser.add_argument("--on-bad-record", choices=("skip", "fatal"), default="skip")
    parser.add_argument("--reverse-actions", metavar="JSON",
                        help="a JSON file mapping each action to the one that undoes it, saved with the model for "
                             "Temp-LoRA's action_text (ToyWorld's are built in)")
    parser.add_argument("--world-seeds", type=int, default=64,
                        help="ToyWorld worlds or Memory Maze mazes 1..N train; 0 and >N are held out")
    parser.add_argument("--max-generate", type=int, default=None, help="most frames generated per sample (f_g)")
    parser.add_argument("--train-text-encoder", action="store_true", help="also train the text encoder (a new:<spec> model has a random one)")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--lr-scheduler", default="cosine", help="any diffusers.optimization scheduler name")
    parser.add_argument("--lr-warmup-steps", type=int, default=100)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--ema", action="store_true", help="keep an EMA of the trained weights and save it")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--action-dropout", type=float, default=0.1, help="share of empty actions, for guidance")
    parser.add_argument("--checkpointing-steps", type=int, default=500)
    parser.add_argument("--checkpoints-total-limit", type=int, default=2)
    parser.add_argument("--resume-from-checkpoint", help="a checkpoint folder, or 'latest'")
    parser.add_argument("--force", action="store_true",
                        help="replace the earlier run in --output-dir (deleted once the new run has its model "
                             "loaded); without it an --output-dir that holds files needs --resume-from-checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true",
                        help="train on CPU; with several processes (torchrun) they then join over gloo")
    parser.set_defaults(run=run)
    return parser


def add_train_command(commands) -> None:
    build_parser(commands.add_parser("train", help="slow learning: train a world model",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


# ---------------------------------------------------------------------------------------------- checks


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse option combinations that cannot train, before anything is loaded or written."""
    for flag, value, least in (("--max-steps", args.max_steps, 1), ("--batch-size", args.batch_size, 1),
                               ("--checkpointing-steps", args.checkpointing_steps, 1),
                               ("--gradient-accumulation-steps", args.gradient_accumulation_steps, 1),
                               ("--lr-warmup-steps", args.lr_warmup_steps, 0)):
        if value < least:
            raise SystemExit(f"{flag} must be at least {least}, got {value}.")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise SystemExit(f"--learning-rate must be a positive finite number, got {args.learning_rate}.")
    check_output_dir(args)
    if args.families and args.stage != "slow-fast":
        raise SystemExit("--families chooses the slow-fast stage's episodes: use it with --stage slow-fast.")
    if args.stage == "slow-fast":
        if args.train_text_encoder:
            raise SystemExit("--stage slow-fast trains the UNet only (the memory's texts must not move): drop "
                             "--train-text-encoder.")
        if args.data == "manifest" and args.families:
            raise SystemExit("--families chooses ToyWorld's paths; with --data manifest the episodes are the "
                             "manifest's consecutive clips: drop --families.")
        world_families = PATH_FAMILIES_3D if args.data == "memory-maze" else streams.TRAINING_FAMILIES
        unknown = [family for family in args.families or () if family not in world_families]
        if unknown:
            raise SystemExit(f"--families {' '.join(unknown)}: not a path family of --data {args.data}; its "
                             f"families are {' '.join(world_families)}.")
    if args.data == "manifest" and not args.manifest:
        raise SystemExit("--data manifest needs --manifest PATH (JSON Lines: video, start, end, action).")
    if args.stage == "slow-fast":
        low, high = args.episode_chunks
        if low < 2 or high < low:
            raise SystemExit(f"--episode-chunks {low} {high}: an episode needs at least 2 chunks, and the longest "
                             "may not be shorter than the shortest.")
    if args.stage == "idm" and (args.model.startswith("new:") or args.train_text_encoder):
        raise SystemExit("--stage idm learns frames as a trained world model draws them: give --model a trained "
                         "world model folder (e.g. models/toyworld), and drop --train-text-encoder.")


def check_output_dir(args: argparse.Namespace) -> None:
    """An --output-dir that holds an earlier run is only continued (--resume-from-checkpoint) or replaced
    (--force), never silently mixed with a new run."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise SystemExit(f"--output-dir {args.output_dir} is a file: give a folder.")
    if args.resume_from_checkpoint or getattr(args, "force", False):
        return
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    raise SystemExit(f"--output-dir {args.output_dir} already holds files of an earlier run: pass "
                     "--resume-from-checkpoint latest to continue it, --force to replace it, or choose a new folder.")


def load_base_pipeline(model: str) -> SlowFastVGenPipeline:
    if model.startswith("new:"):
        name = model[len("new:"):]
        if not hasattr(WorldModelSpec, name):
            raise SystemExit(f"--model {model}: unknown spec; use new:tiny, new:toyworld, new:memory_maze or new:mid.")
        return build_pipeline(getattr(WorldModelSpec, name)())
    if not os.path.isfile(os.path.join(model, "model_index.json")):
        raise SystemExit(f"--model {model!r} is not a pipeline folder (no model_index.json).")
    try:
        return SlowFastVGenPipeline.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--model {model!r} cannot be loaded: {' '.join(str(error).split())}") from None


def read_reverse_actions(path: str) -> dict[str, str]:
    """The `--reverse-actions` table, checked before anything is trained."""
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"--reverse-actions {path}: cannot read it as JSON ({error}).") from None
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip()
                                              for k, v in table.items()):
        raise SystemExit(f"--reverse-actions {path}: expected a JSON object of non-empty action -> reverse action "
                         'strings, e.g. {"move left": "move right"}.')
    return table


# What `world_model` registers on the model's config about its world: a run's checkpoints hold weights only,
# so the run records these in its run_config.json ("world_config"), for `model export` to write them back.
WORLD_CONFIG_KEYS = ("reverse_actions", "action_motions", "pose_headings", "camera_fovy")


def world_model(args: argparse.Namespace) -> SlowFastVGenPipeline:
    """The pipeline to train from, its weights frozen (each stage unfreezes what it trains), with the reverse
    of every action recorded for Temp-LoRA's action_text (ToyWorld's and Memory Maze's are built in)."""
    if args.reverse_actions:
        reversals = read_reverse_actions(args.reverse_actions)
    else:
        reversals = {"toyworld": reverse_actions, "memory-maze": memory_maze.reverse_actions}.get(args.data, lambda: None)()
    pipe = load_base_pipeline(args.model)
    if reversals is not None:
        pipe.register_to_config(reverse_actions=reversals)
    if args.data == "memory-maze":  # what each action does to the camera's pose, for the pose memory
        pipe.register_to_config(action_motions=memory_maze.action_motions(), pose_headings=memory_maze.HEADINGS,
                                camera_fovy=memory_maze.camera_fovy())
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)
    return pipe


# ---------------------------------------------------------------------------------------------- run


@dataclass
class Training:
    """What the step loop works on: the prepared models and their optimizer, schedule and EMA."""

    accelerator: Accelerator
    trained: list[torch.nn.Module]  # the modules as the stage gave them (the EMA follows these)
    models: list  # the same, prepared by accelerate
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    ema: EMAModel | None


def prepare(accelerator: Accelerator, args: argparse.Namespace, pipe: SlowFastVGenPipeline,
            trained: list[torch.nn.Module]) -> Training:
    """Unfreeze the stage's modules (never Temp-LoRA's layers) and prepare them, their AdamW and LR schedule."""
    for module in trained:
        module.requires_grad_(True)
        module.train()
    for name, parameter in pipe.unet.named_parameters():
        if ".lora_" in name:
            parameter.requires_grad_(False)
    parameters = [p for module in trained for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=1e-4)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_steps)
    prepared = accelerator.prepare(*trained, optimizer, lr_scheduler)
    ema = None
    if args.ema:
        ema = EMAModel(trained[0].parameters(), decay=args.ema_decay, model_cls=type(trained[0]),
                       model_config=trained[0].config)
        accelerator.register_for_checkpointing(ema)
    return Training(accelerator, trained, list(prepared[:len(trained)]), parameters, prepared[-2], prepared[-1], ema)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BadRecordError as error:  # --on-bad-record fatal, as asked: the user's data, not a bug
        raise SystemExit(f"--manifest: {error} (--on-bad-record fatal stops at the first bad record; "
                         "--on-bad-record skip skips them with a warning).") from None


def _run(args: argparse.Namespace) -> int:
    check_arguments(args)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, cpu=args.cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise SystemExit(f"{launched} processes were launched but accelerate joined {accelerator.num_processes}: "
                         "on a machine without GPU pass --cpu so that they train together over gloo.")
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    pipe = world_model(args)
    stage = stages.STAGES[args.stage](args, pipe, masked_diffusion_loss)
    training = prepare(accelerator, args, pipe, stage.trained)
    pipe.to(accelerator.device)
    seed = args.seed * 1000 + accelerator.process_index
    stream = stage.stream(seed)
    generator = torch.Generator().manual_seed(seed)
    step = resume(accelerator, args, output_dir, stream, generator) if args.resume_from_checkpoint else 0
    if accelerator.is_main_process:
        if getattr(args, "force", False) and not args.resume_from_checkpoint and output_dir.is_dir():
            shutil.rmtree(output_dir)  # the earlier run, replaced as --force asked
        output_dir.mkdir(parents=True, exist_ok=True)
        run_config = {**vars(args), "base_model": args.model, "num_processes": accelerator.num_processes,
                      "world_config": {key: pipe.config[key] for key in WORLD_CONFIG_KEYS
                                       if pipe.config.get(key) is not None}}
        run_config.pop("run", None)
        (output_dir / "run_config.json").write_text(json.dumps(run_config, indent=2))
    started = time.time()
    step = train_steps(training, args, stage, stream, generator, step, output_dir, started)
    accelerator.wait_for_everyone()
    write_rank_report(output_dir, accelerator, training.models, step)
    if accelerator.is_main_process:
        for model in training.models:
            accelerator.unwrap_model(model).eval()
        if training.ema is not None:
            training.ema.copy_to(training.trained[0].parameters())
        folder = stage.save(output_dir, accelerator.device)
        plot_loss(output_dir / "loss.jsonl", output_dir / "loss.png")
        print(f"Saved {stage.saves} to {folder} after {step} steps ({time.time() - started:.0f} s this run).")
    accelerator.end_training()
    return 0


def train_steps(training: Training, args: argparse.Namespace, stage: stages.Stage, stream, generator: torch.Generator,
                step: int, output_dir: Path, started: float) -> int:
    """The steps from `step` to `--max-steps` (for slow-fast, Algorithm 1 (b) line 1): the stage's loss and
    gradients, one optimizer step per accumulated step (skipped when a gradient is not finite), the EMA, the
    loss log and the checkpoints. Returns the last step."""
    accelerator, optimizer, lr_scheduler = training.accelerator, training.optimizer, training.lr_scheduler
    log = open(output_dir / "loss.jsonl", "a") if accelerator.is_main_process else None
    progress = tqdm(total=args.max_steps, initial=step, desc=f"train {args.stage}",
                    disable=not accelerator.is_main_process)
    while step < args.max_steps:
        with accelerator.accumulate(*training.models):
            loss, finite = stage.step(accelerator, training.models, training.parameters, generator)
            if finite:
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(training.parameters, args.max_grad_norm)
                optimizer.step()
            else:  # never write NaN weights: this step is skipped on every process
                slow_fast.warn_skipped(step + 1)
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        if training.ema is not None:
            training.ema.step(training.trained[0].parameters())
        step += 1
        progress.update()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if log is not None:
            log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0],
                                  "seconds": round(time.time() - started, 2)}) + "\n")
            log.flush()
        if step % args.checkpointing_steps == 0 or step == args.max_steps:
            save_checkpoint(accelerator, args, output_dir, step, stream, generator, training.ema)
    progress.close()
    if log is not None:
        log.close()
    return step


def plot_loss(log_path: Path, png_path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss plot (pip install matplotlib).")
        return
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in records])
    losses = np.array([r["loss"] for r in records])
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, losses, alpha=0.3, label="loss")
    axis.plot(steps[window - 1:], smooth, label=f"mean of {window}")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def _sample_stream(args: argparse.Namespace, image_size: int, context_window: int, seed: int) -> streams.SampleStream:
    """The old `SampleStream(args, image_size, context_window, seed)`: `stages.sample_stream`."""
    return stages.sample_stream(args, image_size, context_window, seed)


__getattr__ = deprecated_aliases(__name__, {
    "SampleStream": (_sample_stream, "slowfast_vgen.data.streams.SampleStream (its batches from "
                                     "slowfast_vgen.training.stages.sample_stream(args, ...))"),
    "vae_loss": (losses.vae_loss, "slowfast_vgen.training.losses.vae_loss"),
    "idm_loss": (losses.idm_loss, "slowfast_vgen.training.losses.idm_loss"),
    "idm_actions": (stages.idm_actions, "slowfast_vgen.training.stages.idm_actions"),
    "set_latent_scaling": (stages.set_latent_scaling, "slowfast_vgen.training.stages.set_latent_scaling"),
})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
