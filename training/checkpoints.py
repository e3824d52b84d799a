"""A training run's checkpoints (exact resume) and its per-process weight reports."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders of a run, oldest first."""
    return sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, args, output_dir: Path, step: int, stream, generator, ema) -> None:
    """accelerate's state (models, optimizer, LR schedule, RNGs) plus this loop's own data and noise RNGs.

    `stream` is the run's data stream (`data.streams`: anything with `state()`). The EMA weights are also
    written as a diffusers model folder, `ema_unet/` (or `ema_vae/`), for export.
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
        for old in checkpoint_folders(output_dir)[:-args.checkpoints_total_limit]:
            shutil.rmtree(old)


def resume(accelerator, args, output_dir: Path, stream, generator) -> int:
    """Load the checkpoint of `--resume-from-checkpoint` (a folder, or 'latest') into this run; its step."""
    folder = Path(args.resume_from_checkpoint)
    if args.resume_from_checkpoint == "latest":
        checkpoints = checkpoint_folders(output_dir)
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
