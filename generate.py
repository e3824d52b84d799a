"""`slowfast-vgen generate`: an action-driven long video from a first frame and a list of actions.

Writes an MP4 (OpenCV), the episode's final Temp-LoRA memory as a `.safetensors` adapter, and a JSON
summary. With no argument but an output path it plays a demo episode with the shipped model of `--world` (ToyWorld by
default; `--world memory-maze` walks round a block of a 3-D maze and turns on the spot).
Every setting is checked before anything is loaded or written, and existing outputs are refused unless
`--force`. Frames are decoded and written chunk by chunk to a temporary MP4 beside the output, renamed into
place at the end, so Ctrl-C, SIGTERM and SIGHUP stop cleanly with a valid video of what was generated so
far (exit status 128 + the signal's number). A SIGKILL leaves the earlier output, if any, untouched, and
the frames so far in a journal beside it: the next run to the same output rebuilds them into a playable
`NAME.recovered.mp4` and removes the killed run's temporaries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from .data.worlds import WORLDS, world_kind
from .video_files import JOURNAL_MAGIC, VideoSink, recover_killed_runs, write_contact_sheet  # noqa: F401
from .pipelines.atomic_files import _alive as process_alive
from .pipelines.atomic_files import partial_path, remove_stale_partials, write_text_atomically
from .pipelines.checks import sampling_problem
from .pipelines.temp_lora import check_memory, first_non_finite
from .pipelines import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    SCHEDULERS,
    TEMP_LORA_DIRECTIONS,
    TEMP_LORA_OBJECTIVES,
    TEMP_LORA_PRESETS,
    EpisodicMemory,
    SlowFastVGenPipeline,
    TempLoRAConfig,
    scheduler_from_name,
    scheduler_name,
)

# The memory `generate` uses unless told otherwise: the panorama, which brings places back from any
# direction, without Temp-LoRA training (why, and what it costs: docs/usage.md, "The default memory of
# `generate` and `plan`"). Nodes and the library keep the paper's `TempLoRAConfig()`, so that saved
# workflows and scripts run as they were made.
DEFAULT_PRESET = "panorama"

DEMO_ACTIONS = WORLDS["toyworld"].demo(0, frame=False)[1]


def add_model_and_start_arguments(parser: argparse.ArgumentParser, world_help: str) -> None:
    """--model, --world and the first frame (--image or --world-seed), as `generate` and `play` take them."""
    parser.add_argument("--model", default=None, help="world model folder (default: the shipped model of --world)")
    parser.add_argument("--world", choices=tuple(WORLDS), default="toyworld", help=f"{world_help} (default: %(default)s)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--image", help="first frame (an image file); default: a view of --world")
    start.add_argument("--world-seed", type=int, default=0, help="seed of --world's first frame (default 0)")


def add_generate_command(commands) -> None:
    parser = commands.add_parser("generate", help="generate a long action-driven video (the main job)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default="outputs/episode.mp4", help="MP4 path (default: %(default)s)")
    add_model_and_start_arguments(parser, "the built-in world of the first frame and the demo")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--actions", help="actions separated by ';', one per chunk (default: a demo episode)")
    actions.add_argument("--actions-file", help="text file with one action per line")
    parser.add_argument("--memory", help="continue an episode from this memory adapter (.safetensors)")
    parser.add_argument("--no-temp-lora", action="store_true", help="no fast learning: the base model only")
    parser.add_argument("--frames-per-chunk", type=int, default=None, help="default: half the context window")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps per chunk (default %(default)s)")
    parser.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None,
                        help="sampler (default: the model's own, from its scheduler folder)")
    parser.add_argument("--compile", action="store_true",
                        help="sample with torch.compile(unet): pays on long episodes only (docs/benchmarks.md)")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                        help="classifier-free guidance scale (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-preset", choices=tuple(TEMP_LORA_PRESETS), default=None,
                        help="named memory settings (default: the model's: 'poses', the views kept by camera pose, "
                             "for a model that records its action motions such as memory-maze; else 'panorama', a "
                             "panorama of the places seen, with the paper's Temp-LoRA update only where the camera "
                             "is no pan; 'paper' is Algorithm 1 (a) alone, 'paper+panorama' both); the --lora-* "
                             "flags below change single fields of it")
    parser.add_argument("--lora-rank", type=int, help="default: the preset's (the paper's 32)")
    parser.add_argument("--lora-lr", type=float, help="default: the preset's (the paper's 1e-4)")
    parser.add_argument("--lora-steps", type=int, help="default: the preset's (the paper's 1)")
    parser.add_argument("--lora-target", help="default: the preset's (all-attention)")
    parser.add_argument("--lora-objective", choices=TEMP_LORA_OBJECTIVES,
                        help="trajectory: the paper's update; transition: learn each chunk from the one before")
    parser.add_argument("--lora-direction", choices=TEMP_LORA_DIRECTIONS,
                        help="learn each clip as played, the way back through it (what a return sees) or both")
    parser.add_argument("--lora-action-text", action=argparse.BooleanOptionalAction, default=None,
                        help="learn each clip with its action's text (the model's reverse action played backward)")
    parser.add_argument("--lora-replay", type=int,
                        help="earlier clips of the episode rehearsed at every update step (0: the paper's update)")
    parser.add_argument("--panorama", action=argparse.BooleanOptionalAction, default=None,
                        help="also keep a panorama of the places seen and bring them back when the camera returns "
                             "(the 'panorama' preset; assumes a panning camera)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--contact-sheet", help="also write a PNG grid of every 4th frame here")
    parser.add_argument("--force", action="store_true",
                        help="replace existing outputs (only once the run has succeeded or was interrupted)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also load model weights stored as pickle (.bin); only for files you trust")
    parser.set_defaults(run=run)


def read_actions(args: argparse.Namespace) -> list[str]:
    if args.actions_file:
        if not os.path.isfile(args.actions_file):
            raise SystemExit(f"--actions-file {args.actions_file!r} does not exist.")
        try:
            lines = Path(args.actions_file).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise SystemExit(f"--actions-file {args.actions_file!r} is not UTF-8 text ({error.reason} at byte "
                             f"{error.start}); save it as UTF-8, one action per line.") from None
    elif args.actions is not None:
        lines = args.actions.split(";")
    else:
        return world_kind(args.world).demo(args.world_seed, frame=False)[1]
    actions = [line.strip() for line in lines if line.strip()]
    if not actions:
        raise SystemExit("No action given: write one action per chunk (e.g. --actions 'move left; stay').")
    return actions


def first_frame(args: argparse.Namespace, size: int) -> np.ndarray:
    """The start frame as uint8 RGB: `--image` read by OpenCV as 8-bit colour (alpha dropped, grey and 16-bit
    converted), else the view of `--world-seed` in `--world` (the demo's start when no actions are given)."""
    if args.image:
        frame = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if frame is None:
            raise SystemExit(f"--image {args.image!r} cannot be read as an image.")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    kind = world_kind(args.world)
    if args.actions is None and args.actions_file is None:
        return kind.demo(args.world_seed, size)[0]
    return kind.build(args.world_seed, size).start_frame()


# TempLoRAConfig field -> the generate flag that sets it (over the --lora-preset's value).
LORA_FLAGS = {"rank": "--lora-rank", "learning_rate": "--lora-lr", "steps_per_update": "--lora-steps",
              "target": "--lora-target", "objective": "--lora-objective", "direction": "--lora-direction",
              "action_text": "--lora-action-text", "replay": "--lora-replay", "panorama": "--panorama"}


def default_preset(model: str) -> str:
    """The memory preset for `model` when none is asked for: `poses` for a model whose folder records what its
    actions do to the camera (a camera that turns and walks, e.g. Memory Maze's), else `DEFAULT_PRESET` (the
    panorama, for a panning camera such as ToyWorld's)."""
    try:
        with open(os.path.join(model, "model_index.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return DEFAULT_PRESET  # the model's own loading reports a broken folder, naming it
    return "poses" if isinstance(config, dict) and config.get("action_motions") else DEFAULT_PRESET


def check_arguments(args: argparse.Namespace) -> TempLoRAConfig:
    """Every setting checked before anything is loaded or written; returns the Temp-LoRA settings."""
    problem = sampling_problem(args.steps, args.guidance, "--steps", "--guidance")
    problem = problem or (None if args.image else world_kind(args.world).seed_problem(args.world_seed))
    if problem:
        raise SystemExit(problem)
    if not 0 <= args.seed < 2**64:
        raise SystemExit(f"--seed must be between 0 and 2**64 - 1, got {args.seed}.")
    if not math.isfinite(args.fps) or args.fps <= 0:
        raise SystemExit(f"--fps must be a positive number, got {args.fps}.")
    if args.frames_per_chunk is not None and args.frames_per_chunk < 1:
        raise SystemExit(f"--frames-per-chunk must be at least 1, got {args.frames_per_chunk}.")
    if args.model is None:
        args.model = str(world_kind(args.world).model_dir)
        if not os.path.isfile(os.path.join(args.model, "model_index.json")):
            raise SystemExit(f"--world {args.world}: no shipped world model in {args.model}; train one "
                             "(docs/training.md) and pass it with --model.")
    if not os.path.isfile(os.path.join(args.model, "model_index.json")):
        raise SystemExit(f"--model {args.model!r} is not a world model folder (no model_index.json).")
    if args.lora_preset is None:
        args.lora_preset = default_preset(args.model)
    given = {name: getattr(args, flag[2:].replace("-", "_")) for name, flag in LORA_FLAGS.items()}
    try:
        return replace(TEMP_LORA_PRESETS[args.lora_preset], **{k: v for k, v in given.items() if v is not None})
    except ValueError as error:
        field_name = re.search(r"TempLoRAConfig\.(\w+)", str(error))
        flag = LORA_FLAGS.get(field_name.group(1), "--lora-*") if field_name else "--lora-*"
        raise SystemExit(f"{flag}: {error}") from None


def check_contact_sheet(sheet: Path, outputs: list[Path], inputs: dict[str, str | None]) -> None:
    """`--contact-sheet`: an image format OpenCV can write, and neither another output nor an input file."""
    if not cv2.haveImageWriter(str(sheet)):
        kind = f"the extension {sheet.suffix!r}" if sheet.suffix else "a file name without an extension"
        raise SystemExit(f"--contact-sheet {sheet}: OpenCV cannot write an image with {kind}; use .png or .jpg.")
    for path in outputs:
        if sheet.resolve() == path.resolve():
            raise SystemExit(f"--contact-sheet {sheet} is also the run's {path.name}; choose another file name.")
    for flag, path in inputs.items():
        if path and (sheet.resolve() == Path(path).resolve()
                     or (sheet.exists() and os.path.exists(path) and os.path.samefile(sheet, path))):
            raise SystemExit(f"--contact-sheet {sheet} is the {flag} file; writing the sheet would replace it: "
                             "choose another file name.")


class Outputs:
    """The files a run writes: refused if they exist (unless `force`), written under temporary names beside
    them and renamed into place only when complete, so a failed run leaves every earlier file as it was."""

    def __init__(self, video: str, contact_sheet: str | None, force: bool, inputs: dict[str, str | None] | None = None):
        self.video = Path(video)
        self.memory = self.video.with_suffix(".memory.safetensors")
        self.summary = self.video.with_suffix(".json")
        self.contact_sheet = Path(contact_sheet) if contact_sheet else None
        if self.contact_sheet is not None:
            check_contact_sheet(self.contact_sheet, [self.video, self.memory, self.summary], inputs or {})
        targets = [self.video, self.memory, self.summary] + ([self.contact_sheet] if self.contact_sheet else [])
        for target in targets:
            if target.is_dir():
                raise SystemExit(f"{target} is a folder; give a file path for the output.")
            if target.exists() and not force:
                raise SystemExit(f"{target} already exists; pass --force to replace it (or choose another output).")
        if self.video.suffix.lower() != ".mp4":
            raise SystemExit(f"The output {str(self.video)!r} must end in .mp4.")
        existing = next(folder for folder in [self.video.parent, *self.video.parent.parents] if folder.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise SystemExit(f"Cannot write to {self.video.parent}: {existing} is not a writable folder.")
        self.lock = self.video.with_name(f".{self.video.name}.lock")
        self.made_folders = [f for f in [self.video.parent, *self.video.parent.parents] if not f.exists()]
        self.claim()
        try:
            for target in targets:  # again, now that no other run can be writing them
                if target.exists() and not force:
                    raise SystemExit(f"{target} already exists; pass --force to replace it (or choose another "
                                     "output).")
            for target, frames in recover_killed_runs(self.video):
                print(f"An earlier run to {self.video} was killed; its {frames} frames were recovered into {target}.")
            for target in targets:
                remove_stale_partials(target)
        except BaseException:
            self.release(failed=True)
            raise
        self.partial_video = partial_path(self.video)
        self.journal = partial_path(self.video.with_suffix(".frames"))

    def claim(self) -> None:
        """Claim the output for this run: a lock file beside it, made with O_EXCL, holding this process's id.
        A second run to the same output is refused while the first runs; a lock whose process has ended
        (a SIGKILL) is taken over."""
        self.video.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                handle = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = int(self.lock.read_text(encoding="ascii").strip() or 0)
                except (OSError, ValueError):
                    holder = 0
                if holder <= 0:  # being written this instant, or unreadable: look again
                    time.sleep(0.1)
                    try:
                        holder = int(self.lock.read_text(encoding="ascii").strip() or 0)
                    except (OSError, ValueError):
                        holder = 0
                if holder > 0 and holder != os.getpid() and process_alive(holder):
                    self.release(failed=True, locked=False)
                    raise SystemExit(f"Another run (process {holder}) is writing {self.video} now; wait for it to "
                                     f"end or choose another output (if no such run is going on, delete {self.lock}).")
                self.lock.unlink(missing_ok=True)  # left by a run that has ended
                continue
            with os.fdopen(handle, "w", encoding="ascii") as file:
                file.write(str(os.getpid()))
            return
        self.release(failed=True, locked=False)
        raise SystemExit(f"Could not claim {self.video}: {self.lock} keeps coming back; is another run starting?")

    def release(self, failed: bool = False, locked: bool = True) -> None:
        """Drop the claim; after a failed run, also the folders that were made for it (when still empty)."""
        if locked:
            self.lock.unlink(missing_ok=True)
        if failed:
            for folder in self.made_folders:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def termination_as_interrupt():
    """SIGTERM and SIGHUP end the run like Ctrl-C: what was generated is kept."""
    def interrupt(signum, frame):
        raise Interrupted(signum)

    handled = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, interrupt) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def load_pipeline(args: argparse.Namespace) -> SlowFastVGenPipeline:
    """The world model of `--model`, refused if it cannot load, holds damaged weights or has no room for
    `--frames-per-chunk` beside its context."""
    if not args.allow_pickle:
        for component in ("unet", "vae", "text_encoder"):
            folder = Path(args.model) / component
            pickles = sorted(f.name for f in folder.glob("*") if f.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            if folder.is_dir() and pickles and not any(folder.glob("*.safetensors")):
                raise SystemExit(f"--model {args.model!r}: {component}/ holds only pickle weights ({pickles[0]}), "
                                 "which can run code when loaded; if you trust them pass --allow-pickle, or "
                                 "convert them once with `slowfast-vgen model import ... --allow-pickle`.")
    try:
        pipe = SlowFastVGenPipeline.from_pretrained(args.model, use_safetensors=not args.allow_pickle)
    except (OSError, ValueError, EnvironmentError) as error:
        raise SystemExit(f"--model {args.model!r} cannot be loaded: {error}") from None
    pipe.set_progress_bar_config(disable=True)
    for component in ("unet", "vae", "text_encoder"):
        damaged = first_non_finite(getattr(pipe, component).state_dict())
        if damaged is not None:
            raise SystemExit(f"--model {args.model!r}: {component} tensor {damaged} holds NaN or infinite values; "
                             "the model is damaged.")
    if args.frames_per_chunk is not None and args.frames_per_chunk >= pipe.context_window:
        raise SystemExit(f"--frames-per-chunk must be below the model's context window of {pipe.context_window} "
                         f"frames (it leaves room for the context), got {args.frames_per_chunk}.")
    return pipe


def load_memory(path: str | None, pipe: SlowFastVGenPipeline) -> EpisodicMemory | None:
    if path is None:
        return None
    try:
        memory = EpisodicMemory.load(path)
        check_memory(pipe.unet, memory, pipe.base_fingerprint)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise SystemExit(f"--memory {path!r}: {error}") from None
    return memory


def episode_summary(args: argparse.Namespace, pipe: SlowFastVGenPipeline, outputs: Outputs, frames: int,
                    memory: EpisodicMemory | None, config: TempLoRAConfig, actions: list[str], interrupted: bool,
                    seconds: dict) -> dict:
    """The JSON summary of an episode written to `outputs`; `play` exports with it too, so both read alike."""
    return {
        "video": str(outputs.video), "frames": frames, "fps": args.fps, "model": args.model,
        "model_fingerprint": pipe.base_fingerprint, "memory": str(outputs.memory) if memory is not None else None,
        "continued_from": args.memory, "actions": actions, "interrupted": interrupted,
        "seed": args.seed, "world": None if args.image else args.world,
        "world_seed": None if args.image else args.world_seed, "image": args.image,
        "frames_per_chunk": args.frames_per_chunk or pipe.context_window // 2,
        "steps": args.steps, "scheduler": scheduler_name(pipe.scheduler) or type(pipe.scheduler).__name__,
        "guidance": args.guidance, "compiled": pipe.__dict__.get("_compiled_unet") is not None,
        "temp_lora": None if args.no_temp_lora else vars(memory.config if memory is not None else config),
        "seconds": seconds,
    }


def run(args: argparse.Namespace) -> int:
    # 1. Everything the user gave is checked before any work or write.
    config = check_arguments(args)
    outputs = Outputs(args.output, args.contact_sheet, args.force,
                      {"--image": args.image, "--memory": args.memory, "--actions-file": args.actions_file})
    failed = True
    try:
        code = run_claimed(args, config, outputs)
        failed = False
        return code
    finally:
        outputs.release(failed=failed)


def run_claimed(args: argparse.Namespace, config: TempLoRAConfig, outputs: Outputs) -> int:
    """The run itself, once every setting is checked and the outputs are claimed."""
    actions = read_actions(args)
    started = time.time()
    pipe = load_pipeline(args)
    memory = load_memory(args.memory, pipe)
    if memory is None and not args.no_temp_lora:
        from .pipelines.lora_layers import expected_lora_shapes

        try:
            expected_lora_shapes(pipe.unet, config)
        except ValueError as error:
            raise SystemExit(f"--lora-target {config.target!r}: {error} Give a preset name or a regular expression "
                             "that matches the UNet's attention projections.") from None
    if args.scheduler:
        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    if args.compile:
        pipe.compile_unet()
    load_seconds = time.time() - started
    image = first_frame(args, pipe.native_size)
    try:
        start_latents = pipe.start_latents(image, resize=True)
    except ValueError as error:
        raise SystemExit(f"--image {args.image!r}: {error}" if args.image else str(error)) from None

    # 2. The episode, written chunk by chunk to a temporary MP4; Ctrl-C, SIGTERM and SIGHUP keep what was made.
    sink = VideoSink(str(outputs.partial_video), args.fps, pipe.native_size, outputs.journal)
    generator = torch.Generator().manual_seed(args.seed)
    start_frames = pipe.postprocess(start_latents, "np")[0]
    sheet_frames = list(start_frames) if outputs.contact_sheet else None
    completed, chunk_seconds, interrupted = [], [], None
    generation_started = last = time.time()
    try:
        with termination_as_interrupt():
            sink.write(start_frames)
            chunks = pipe.stream_episode(
                actions, start_latents=start_latents, memory=memory,
                memory_settings=None if args.no_temp_lora else (memory.config if memory else config),
                update_memory=not args.no_temp_lora,
                num_frames=args.frames_per_chunk, generator=generator, num_inference_steps=args.steps,
                guidance_scale=args.guidance,
            )
            try:
                for chunk in tqdm(chunks, total=len(actions), desc="chunks", unit="chunk"):
                    frames = pipe.postprocess(chunk.latents, "np")[0]
                    sink.write(frames)
                    if sheet_frames is not None:
                        sheet_frames.extend(frames)
                    memory = chunk.memory
                    completed.append(chunk.action)
                    chunk_seconds.append(round(time.time() - last, 3))
                    last = time.time()
            except KeyboardInterrupt as error:
                interrupted = getattr(error, "signum", signal.SIGINT)
                print(f"\nInterrupted ({signal.Signals(interrupted).name}) after {len(completed)} chunks; "
                      "keeping what was generated.")
            finally:
                sink.close()
    except BaseException:
        outputs.partial_video.unlink(missing_ok=True)
        outputs.journal.unlink(missing_ok=True)
        raise
    generation_seconds = time.time() - generation_started

    # 3. Into place: the video, the memory, the contact sheet, then the summary that names them.
    os.replace(outputs.partial_video, outputs.video)
    if memory is not None:
        memory.save(outputs.memory)
    if sheet_frames:
        write_contact_sheet(sheet_frames, outputs.contact_sheet)
    summary = episode_summary(args, pipe, outputs, sink.frames, memory, config, completed, interrupted is not None,
                              {"load": round(load_seconds, 2), "generate_and_write": round(generation_seconds, 2),
                               "chunks": chunk_seconds})
    write_text_atomically(outputs.summary, json.dumps(summary, indent=2, default=str))
    print(f"Wrote {sink.frames} frames to {outputs.video} in {generation_seconds:.1f} s; "
          f"summary in {outputs.summary}.")
    return 128 + interrupted if interrupted is not None else 0
