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
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.manifest import load_clip, read_manifest
from ..data.retrace import retrace_reverse_actions
from ..data import memory_maze
from ..data.memory_maze_episodes import load_cache, write_cache
from ..data.toyworld import Sample, ToyWorld, reverse_actions, sample_lengths
from ..pipelines import SlowFastVGenPipeline, WorldModelSpec, build_pipeline
from ..pipelines import inverse_dynamics
from ..pipelines.inverse_dynamics import InverseDynamicsModel
from ..pipelines.temp_lora import denoising_target, memory_applied
from . import slow_fast


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
    parser.add_argument("--families", nargs="+", choices=slow_fast.TRAINING_FAMILIES, default=None, metavar="FAMILY",
                        help="slow-fast: path families of the episodes (default: "
                             f"{' '.join(slow_fast.PATH_FAMILIES)}); 'retrace' is planning's task")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true",
                        help="train on CPU; with several processes (torchrun) they then join over gloo")
    parser.set_defaults(run=run)
    return parser


def add_train_command(commands) -> None:
    build_parser(commands.add_parser("train", help="slow learning: train a world model",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


# ---------------------------------------------------------------------------------------------- data


class SampleStream:
    """An endless, seeded stream of training batches whose state can be saved for exact resume.

    All clips of a batch share f_p and f_g (so they stack): ToyWorld draws them once per batch, so every
    length pair is trained as often as it is drawn; manifest clips are cut to the shortest of the batch.
    """

    def __init__(self, args, image_size: int, context_window: int, seed: int):
        self.rng = random.Random(seed)
        self.batch_size, self.image_size, self.context_window = args.batch_size, image_size, context_window
        self.max_generate = args.max_generate or context_window // 2
        if args.data == "manifest":
            if not args.manifest:
                raise SystemExit("--data manifest needs --manifest PATH (JSON Lines: video, start, end, action).")
            self.records = read_manifest(args.manifest, args.on_bad_record)
            self.worlds = self.episodes = None
        elif args.data == "memory-maze":
            self.records = self.worlds = None
            seeds = range(1, args.world_seeds + 1)
            write_cache(args.maze_cache, seeds, args.episodes_per_maze, view_size=image_size,
                        processes=min(2, os.cpu_count() or 1))
            self.episodes = load_cache(args.maze_cache, seeds, args.episodes_per_maze, view_size=image_size)
        else:
            self.records = self.episodes = None
            self.worlds = [ToyWorld(seed, view_size=image_size) for seed in range(1, args.world_seeds + 1)]

    def state(self) -> list:
        return json.loads(json.dumps(self.rng.getstate()))

    def load_state(self, state: list) -> None:
        self.rng.setstate((state[0], tuple(state[1]), state[2]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, list[str]]]:
        while True:
            samples = self.next_batch()
            num_context = min(len(s.context) for s in samples)
            num_generate = min(len(s.target) for s in samples)
            clips = np.stack([np.concatenate([s.context[-num_context:], s.target[:num_generate]]) for s in samples])
            video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
            yield video, num_context, [s.action for s in samples]

    def next_batch(self) -> list[Sample]:
        if self.episodes is not None:
            lengths = sample_lengths(self.rng, self.context_window, min(self.max_generate, 4))
            samples = []
            while len(samples) < self.batch_size:
                episode = self.rng.choice(self.episodes)
                sample = memory_maze.sample_from_episode(self.rng, episode["frames"], episode["actions"],
                                                         episode["chunk_frames"], *lengths)
                if sample is not None:
                    samples.append(sample)
            return samples
        if self.worlds is not None:
            lengths = sample_lengths(self.rng, self.context_window, self.max_generate)
            return [self.rng.choice(self.worlds).sample(self.rng, *lengths) for _ in range(self.batch_size)]
        return [load_clip(self.rng.choice(self.records), self.image_size) for _ in range(self.batch_size)]


# ---------------------------------------------------------------------------------------------- losses


def masked_diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, num_context: int, text_embeds: torch.Tensor,
                          generator: torch.Generator) -> torch.Tensor:
    """Paper Eq. 1-2: noise only the frames after `num_context`, and compute the loss on those frames only."""
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    noisy = torch.cat([latents[:, :, :num_context], noisy[:, :, num_context:]], dim=2)
    prediction = unet(noisy, timesteps, encoder_hidden_states=text_embeds).sample
    target = denoising_target(noise_scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction[:, :, num_context:].float(), target[:, :, num_context:].float())


def vae_loss(vae, frames: torch.Tensor, generator: torch.Generator, kl_weight: float = 1e-6) -> torch.Tensor:
    posterior = vae.encode(frames).latent_dist
    latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(frames)
    reconstruction = vae.decode(latents).sample
    return F.mse_loss(reconstruction.float(), frames.float()) + kl_weight * posterior.kl().mean()


# ---------------------------------------------------------------------------------------------- run


def load_base_pipeline(model: str) -> SlowFastVGenPipeline:
    if model.startswith("new:"):
        name = model[len("new:"):]
        if not hasattr(WorldModelSpec, name):
            raise SystemExit(f"--model {model}: unknown spec; use new:tiny, new:toyworld, new:memory_maze or new:mid.")
        return build_pipeline(getattr(WorldModelSpec, name)())
    if not os.path.isfile(os.path.join(model, "model_index.json")):
        raise SystemExit(f"--model {model!r} is not a pipeline folder (no model_index.json).")
    return SlowFastVGenPipeline.from_pretrained(model)


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


def run(args: argparse.Namespace) -> int:
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, cpu=args.cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise SystemExit(f"{launched} processes were launched but accelerate joined {accelerator.num_processes}: "
                         "on a machine without GPU pass --cpu so that they train together over gloo.")
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if args.reverse_actions:
        reversals = read_reverse_actions(args.reverse_actions)
    else:
        reversals = {"toyworld": reverse_actions, "memory-maze": memory_maze.reverse_actions}.get(args.data, lambda: None)()
    pipe = load_base_pipeline(args.model)
    if reversals is not None:
        pipe.register_to_config(reverse_actions=reversals)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)

    temp_lora = None
    if args.families and args.stage != "slow-fast":
        raise SystemExit("--families chooses the slow-fast stage's episodes: use it with --stage slow-fast.")
    if args.stage == "slow-fast":
        if args.train_text_encoder:
            raise SystemExit("--stage slow-fast trains the UNet only (the memory's texts must not move): drop "
                             "--train-text-encoder.")
        if args.data == "manifest" and args.families:
            raise SystemExit("--families chooses ToyWorld's paths; with --data manifest the episodes are the "
                             "manifest's consecutive clips: drop --families.")
        if args.data == "manifest" and not args.manifest:
            raise SystemExit("--data manifest needs --manifest PATH (JSON Lines: video, start, end, action).")
        temp_lora = slow_fast.parse_temp_lora(args.temp_lora)
        with memory_applied(pipe.unet, pipe.new_memory(temp_lora)):
            pass  # the LoRA layers are put in once, before accelerate wraps the UNet; Θ is never trained here
    idm = None
    if args.stage == "idm":
        if args.model.startswith("new:") or args.train_text_encoder:
            raise SystemExit("--stage idm learns frames as a trained world model draws them: give --model a trained "
                             "world model folder (e.g. models/toyworld), and drop --train-text-encoder.")
        idm = InverseDynamicsModel(actions=idm_actions(args), sample_size=pipe.native_size)
    if args.stage == "vae":
        trained = [pipe.vae]
    elif idm is not None:
        trained = [idm]
    else:
        trained = [pipe.unet] + ([pipe.text_encoder] if args.train_text_encoder else [])
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
    models, optimizer, lr_scheduler = list(prepared[:len(trained)]), prepared[-2], prepared[-1]
    ema = None
    if args.ema:
        unet_or_vae = trained[0]
        ema = EMAModel(unet_or_vae.parameters(), decay=args.ema_decay, model_cls=type(unet_or_vae),
                       model_config=unet_or_vae.config)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    device = accelerator.device
    pipe.to(device)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    stream_seed = args.seed * 1000 + accelerator.process_index
    if args.stage == "slow-fast" and args.data == "manifest":
        stream = slow_fast.ManifestEpisodeStream(args.manifest, args.on_bad_record, *args.episode_chunks,
                                                 pipe.context_window // 2, pipe.native_size, seed=stream_seed)
    elif args.stage == "slow-fast":
        stream = slow_fast.EpisodeStream(args.world_seeds, *args.episode_chunks, pipe.context_window // 2,
                                         pipe.native_size, seed=stream_seed,
                                         families=tuple(args.families or slow_fast.PATH_FAMILIES))
    else:
        stream = SampleStream(args, pipe.native_size, pipe.context_window, seed=stream_seed)
    generator = torch.Generator().manual_seed(args.seed * 1000 + accelerator.process_index)
    step = 0
    if args.resume_from_checkpoint:
        step = resume(accelerator, args, output_dir, stream, generator)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        run_config = {**vars(args), "base_model": args.model, "num_processes": accelerator.num_processes}
        run_config.pop("run", None)
        (output_dir / "run_config.json").write_text(json.dumps(run_config, indent=2))
    log = open(output_dir / "loss.jsonl", "a") if accelerator.is_main_process else None
    progress = tqdm(total=args.max_steps, initial=step, desc=f"train {args.stage}",
                    disable=not accelerator.is_main_process)
    batches = iter(stream) if args.stage != "slow-fast" else None
    started = time.time()

    def slow_loss(model, latents, num_context, action):
        """Slow learning's masked loss on one clip, its action dropped to "" at the dropout rate (for guidance)."""
        dropped = torch.rand(1, generator=generator).item() < args.action_dropout
        text_embeds = encode_actions(pipe, pipe.text_encoder, ["" if dropped else action], device)
        return masked_diffusion_loss(model, noise_scheduler, latents, num_context, text_embeds, generator)

    while step < args.max_steps:
        with accelerator.accumulate(*models):
            finite = True
            if args.stage == "slow-fast":  # Algorithm 1 (b) over one episode; it takes its own gradients
                frames, episode_actions, path_seed = stream.next_episode()
                chunks = slow_fast.episode_chunks(pipe, frames, pipe.context_window // 2, device)
                records = slow_fast.inner_loop(pipe, chunks, episode_actions, temp_lora,
                                               slow_fast.episode_memory_generator(path_seed),
                                               retrace_reverse_actions(episode_actions))
                loss = torch.tensor(slow_fast.learn_episode(accelerator, models[0], pipe, records,
                                                            len(episode_actions), slow_loss))
                finite = slow_fast.gradients_finite(accelerator, parameters)
            else:
                video, num_context, actions = next(batches)
                video = video.to(device)
                if args.stage == "vae":
                    frames = video.permute(0, 2, 1, 3, 4).flatten(0, 1)
                    loss = vae_loss(models[0], frames, generator)
                elif args.stage == "idm":
                    loss = idm_loss(models[0], idm.config.actions, pipe, video, num_context, actions, generator)
                else:
                    with torch.no_grad():
                        latents = pipe.encode_pixels(video)
                    dropped = torch.rand(len(actions), generator=generator) < args.action_dropout
                    actions = ["" if drop else action for drop, action in zip(dropped.tolist(), actions)]
                    with torch.set_grad_enabled(args.train_text_encoder):
                        text_embeds = encode_actions(pipe, models[1] if args.train_text_encoder else pipe.text_encoder,
                                                     actions, device)
                    loss = masked_diffusion_loss(models[0], noise_scheduler, latents, num_context, text_embeds,
                                                 generator)
                accelerator.backward(loss)
            if finite:
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
                optimizer.step()
            else:  # never write NaN weights: this step is skipped on every process
                slow_fast.warn_skipped(step + 1)
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(trained[0].parameters())
        step += 1
        progress.update()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if log is not None:
            log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0],
                                  "seconds": round(time.time() - started, 2)}) + "\n")
            log.flush()
        if step % args.checkpointing_steps == 0 or step == args.max_steps:
            save_checkpoint(accelerator, args, output_dir, step, stream, generator, ema)
    progress.close()

    accelerator.wait_for_everyone()
    write_rank_report(output_dir, accelerator, models, step)
    if accelerator.is_main_process:
        log.close()
        for model in models:
            accelerator.unwrap_model(model).eval()
        if ema is not None:
            ema.copy_to(trained[0].parameters())
        if args.stage == "vae":
            set_latent_scaling(pipe, stream, device)
        if idm is not None:
            idm.to("cpu").save_pretrained(output_dir / "inverse_dynamics")
            print(f"Saved the inverse dynamics model to {output_dir / 'inverse_dynamics'} after {step} steps "
                  f"({time.time() - started:.0f} s this run).")
        else:
            pipe.to("cpu").save_pretrained(output_dir / "model")
        plot_loss(output_dir / "loss.jsonl", output_dir / "loss.png")
        if idm is None:
            print(f"Saved the world model to {output_dir / 'model'} after {step} steps "
                  f"({time.time() - started:.0f} s this run).")
    accelerator.end_training()
    return 0


def idm_actions(args: argparse.Namespace) -> tuple[str, ...]:
    """The inverse dynamics model's classes: ToyWorld's directions, or the distinct actions of a manifest."""
    if args.data == "toyworld":
        return inverse_dynamics.TOYWORLD_ACTIONS
    if not args.manifest:
        raise SystemExit("--data manifest needs --manifest PATH (JSON Lines: video, start, end, action).")
    actions = tuple(sorted({record.action for record in read_manifest(args.manifest, args.on_bad_record)}))
    if len(actions) < 2:
        raise SystemExit(f"--stage idm: the manifest {args.manifest} has {len(actions)} distinct action(s); an "
                         "inverse dynamics model tells at least two apart.")
    return actions


def idm_loss(model, classes: tuple[str, ...], pipe: SlowFastVGenPipeline, video: torch.Tensor, num_context: int, actions: list[str],
             generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy of the action between every consecutive frame pair that shows it (the last context
    frame on), the pairs softened like generated frames for a share of them."""
    previous, following = inverse_dynamics.frame_pairs(video, num_context)
    previous, following = inverse_dynamics.soften_like_generated(pipe, previous, following, generator)
    per_clip = torch.tensor([inverse_dynamics.action_index(classes, action) for action in actions])
    labels = per_clip.repeat_interleave(previous.shape[0] // len(actions)).to(video.device)
    return F.cross_entropy(model(previous, following), labels)


def encode_actions(pipe: SlowFastVGenPipeline, text_encoder, actions: list[str], device) -> torch.Tensor:
    tokens = pipe.tokenizer(actions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


@torch.no_grad()
def set_latent_scaling(pipe: SlowFastVGenPipeline, stream: SampleStream, device, batches: int = 8) -> None:
    """Scale latents to unit variance (what `scaling_factor` is for), measured on training frames."""
    pipe.vae.register_to_config(scaling_factor=1.0)
    samples = iter(stream)
    latents = torch.cat([pipe.encode_pixels(next(samples)[0].to(device)).flatten() for _ in range(batches)])
    pipe.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(accelerator, args, output_dir: Path, step: int, stream: SampleStream, generator,
                    ema: EMAModel | None) -> None:
    """accelerate's state (models, optimizer, LR schedule, RNGs) plus this loop's own data and noise RNGs.

    The EMA weights are also written as a diffusers model folder, `ema_unet/` (or `ema_vae/`), for export.
    """
    folder = output_dir / f"checkpoint-{step}"
    accelerator.save_state(str(folder))
    if ema is not None and accelerator.is_main_process:
        ema.save_pretrained(str(folder / f"ema_{args.stage}"))
    rank = accelerator.process_index
    save_file({"state": generator.get_state()}, str(folder / f"noise_generator_{rank}.safetensors"))
    (folder / f"data_stream_{rank}.json").write_text(json.dumps({"step": step, "rng": stream.state()}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and args.checkpoints_total_limit:
        checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in checkpoints[:-args.checkpoints_total_limit]:
            shutil.rmtree(old)


def resume(accelerator, args, output_dir: Path, stream: SampleStream, generator) -> int:
    folder = Path(args.resume_from_checkpoint)
    if args.resume_from_checkpoint == "latest":
        checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not checkpoints:
            accelerator.print(f"No checkpoint in {output_dir}: starting from scratch.")
            return 0
        folder = checkpoints[-1]
    if not folder.is_dir():
        raise SystemExit(f"--resume-from-checkpoint {folder}: no such checkpoint folder.")
    accelerator.load_state(str(folder))
    rank = accelerator.process_index
    generator.set_state(load_file(str(folder / f"noise_generator_{rank}.safetensors"))["state"])
    state = json.loads((folder / f"data_stream_{rank}.json").read_text())
    stream.load_state(state["rng"])
    accelerator.print(f"Resumed from {folder} at step {state['step']}.")
    return state["step"]


def write_rank_report(output_dir: Path, accelerator, models, step: int) -> None:
    """Each process records its steps and a hash of its weights: proof that every rank trained the same model."""
    digest = hashlib.sha256()
    for model in models:
        for name, tensor in sorted(accelerator.unwrap_model(model).state_dict().items()):
            if ".lora_" in name:  # a process's own episode memory, not the shared weights
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    folder = output_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    report = {"rank": accelerator.process_index, "world_size": accelerator.num_processes, "steps": step,
              "weights_sha256": digest.hexdigest()}
    (folder / f"rank-{accelerator.process_index}.json").write_text(json.dumps(report))


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
