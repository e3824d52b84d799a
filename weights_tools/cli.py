"""`slowfast-vgen memory ...` and `slowfast-vgen model ...`: the weights tools on the command line.

Exit status: 0 on success, 1 when `memory check` finds that a memory does not fit, 2 on any error (the
message says what is wrong; nothing has been written).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Callable

import torch

from ..pipelines.temp_lora import MemoryMismatchError
from .files import WeightsFileError, check_apart
from .fingerprint import file_fingerprint
from .memory_tools import (
    DTYPES,
    cast_memory,
    check_memory_file,
    fuse_memory,
    inspect_memory,
    load_memory,
    memory_from_peft,
    memory_to_peft,
    merge_memories,
    save_memory,
)
from .model_tools import DEFAULT_CONTEXT_WINDOW, KNOWN_VARIANTS, cast_quality, cast_world_model, export_checkpoint, import_modelscope

EXIT_MISMATCH, EXIT_ERROR = 1, 2


def add_weights_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `memory` and `model` command groups to the `slowfast-vgen` parser."""
    memory = subparsers.add_parser("memory", help="inspect, check, merge, fuse, convert and cast episodic memories",
                                   description="Episodic memories (Temp-LoRA .safetensors adapters).")
    memory_commands = memory.add_subparsers(dest="memory_command", required=True)

    command = memory_commands.add_parser("inspect", help="what a memory holds and which layers it changed most")
    command.add_argument("memory")
    command.add_argument("--json", action="store_true", help="print JSON for scripts")
    command.add_argument("--no-norms", action="store_true", help="read the header only, skip per-layer norms")
    command.add_argument("--top", type=int, default=10, help="layers to list by update norm (default 10)")
    command.set_defaults(run=_run_inspect)

    command = memory_commands.add_parser("check", help="does a memory fit a world model? (exit 0 yes, 1 no)")
    command.add_argument("memory")
    command.add_argument("model", help="world-model folder")
    command.set_defaults(run=_run_check)

    command = memory_commands.add_parser("merge", help="merge memories by summing their updates, at a chosen rank")
    command.add_argument("memories", nargs="+")
    command.add_argument("-o", "--output", required=True)
    command.add_argument("--weights", type=float, nargs="+", help="one weight per memory (default 1 each)")
    command.add_argument("--rank", type=int, help="rank of the result (default: the largest input rank)")
    command.add_argument("--json", action="store_true")
    command.add_argument("--force", action="store_true", help="replace an existing output")
    command.set_defaults(run=_run_merge)

    command = memory_commands.add_parser("fuse", help="bake a memory into a new world-model folder")
    command.add_argument("memory")
    command.add_argument("model", help="the world-model folder the memory was made on")
    command.add_argument("-o", "--output", required=True, help="new world-model folder")
    command.add_argument("--strength", type=float, default=1.0, help="multiplier of the memory's update (default 1)")
    command.add_argument("--link", action="store_true", help="symlink the unchanged components instead of copying")
    command.add_argument("--force", action="store_true")
    command.set_defaults(run=_run_fuse)

    command = memory_commands.add_parser("convert", help="memory file <-> peft adapter folder")
    command.add_argument("source", help="a memory .safetensors (-> peft folder) or a peft folder (-> memory)")
    command.add_argument("-o", "--output", required=True)
    command.add_argument("--base", help="world-model folder a foreign peft adapter was trained on (fingerprint, "
                                        "shape check)")
    command.add_argument("--force", action="store_true")
    command.set_defaults(run=_run_convert)

    command = memory_commands.add_parser("cast", help="a smaller copy of a memory (fp16 / bf16)")
    command.add_argument("memory")
    command.add_argument("-o", "--output", required=True)
    command.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    command.add_argument("--drop-optimizer", action="store_true",
                         help="drop Adam's moments too (the memory still generates, but continues less smoothly)")
    command.add_argument("--force", action="store_true")
    command.set_defaults(run=_run_cast_memory)

    model = subparsers.add_parser("model", help="import, export, fingerprint and cast world models",
                                  description="World-model folders (diffusers layout).")
    model_commands = model.add_subparsers(dest="model_command", required=True)

    command = model_commands.add_parser("import", help="make a world model of a ModelScope text-to-video folder")
    command.add_argument("source", help="diffusers-format text-to-video-ms-1.7b folder")
    command.add_argument("-o", "--output", required=True)
    command.add_argument("--link", action="store_true", help="symlink the weight files instead of copying them")
    command.add_argument("--context-window", type=int, default=DEFAULT_CONTEXT_WINDOW)
    command.add_argument("--variant", choices=KNOWN_VARIANTS, help="take e.g. the *.fp16.safetensors weights")
    command.add_argument("--allow-pickle", action="store_true",
                         help="convert .bin weights, read with torch.load(weights_only=True)")
    command.add_argument("--force", action="store_true")
    command.set_defaults(run=_run_import)

    command = model_commands.add_parser("export", help="a training checkpoint -> world-model folder")
    command.add_argument("checkpoint", help="checkpoint-<step>/ folder written by `slowfast-vgen train`")
    command.add_argument("-o", "--output", required=True)
    command.add_argument("--base", help="base world model (default: base_model in the run's run_config.json)")
    command.add_argument("--no-ema", action="store_true", help="export the trained weights, not their EMA")
    command.add_argument("--link", action="store_true", help="symlink the base model's other components")
    command.add_argument("--allow-pickle", action="store_true")
    command.add_argument("--force", action="store_true")
    command.set_defaults(run=_run_export)

    command = model_commands.add_parser("fingerprint", help="the identifier memories record (reads ~100 KB)")
    command.add_argument("model", help="world-model or UNet folder")
    command.add_argument("--json", action="store_true")
    command.set_defaults(run=_run_fingerprint)

    command = model_commands.add_parser("cast", aliases=["prune"],
                                        help="a smaller copy (fp16 / bf16) holding only what loading needs")
    command.add_argument("model")
    command.add_argument("-o", "--output", required=True)
    command.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    command.add_argument("--keep-fp32", nargs="*", default=[], choices=["unet", "vae", "text_encoder"],
                         help="components to leave in float32 (e.g. vae)")
    command.add_argument("--measure", action="store_true", help="report the PSNR of a ToyWorld chunk, copy vs source")
    command.add_argument("--device", default="cpu", help="device for --measure (on cuda the copy runs in --dtype)")
    command.add_argument("--force", action="store_true")
    command.set_defaults(run=_run_cast_model)


def _reports_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the tools' errors into a one-line message and exit status 2, instead of a traceback."""

    @functools.wraps(run)
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (WeightsFileError, MemoryMismatchError, OSError, ValueError, torch.linalg.LinAlgError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_ERROR

    return guarded


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


@_reports_errors
def _run_inspect(args: argparse.Namespace) -> int:
    summary = inspect_memory(args.memory, norms=not args.no_norms)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['path']}: SlowFast-VGen memory, {summary['file_bytes'] / 1e6:.2f} MB ({summary['created_with']})")
    legacy = f" (saved with a retired alpha: B scaled by {summary['scale']:g} on loading)" if summary["scale"] != 1 else ""
    print(f"  rank {summary['rank']}{legacy}, target {summary['target']!r}")
    print(f"  {len(summary['target_modules'])} target modules, {summary['num_tensors']} tensors, "
          f"{summary['num_parameters']:,} parameters, dtype {', '.join(summary['dtypes'])}")
    print(f"  optimizer state: {summary['optimizer_tensors']} tensors ({summary['optimizer_steps']} Adam steps)")
    print(f"  base model fingerprint {summary['base_fingerprint']}")
    print(f"  {summary['num_updates']} updates, {summary['frames_seen']} frames seen")
    print(f"  actions: {', '.join(summary['actions']) or '(none)'}")
    if "layer_norms" in summary:
        print(f"  layers changed most (||B A||_F), top {args.top}:")
        for name, norm in list(summary["layer_norms"].items())[:args.top]:
            print(f"    {norm:10.4g}  {name}")
    return 0


@_reports_errors
def _run_check(args: argparse.Namespace) -> int:
    if not os.path.isfile(os.path.join(args.model, "model_index.json")):
        raise WeightsFileError(f"{args.model} is not a world-model folder (no model_index.json).")
    try:
        check_memory_file(args.memory, args.model)
    except MemoryMismatchError as error:
        print(f"does not fit: {error}")
        return EXIT_MISMATCH
    print(f"{args.memory} fits {args.model}.")
    return 0


@_reports_errors
def _run_merge(args: argparse.Namespace) -> int:
    result = merge_memories([load_memory(p) for p in args.memories], args.weights, args.rank)
    save_memory(result.memory, args.output, args.force)
    if args.json:
        print(json.dumps({"output": args.output, "rank": result.memory.config.rank,
                          "relative_error": result.relative_error, "layer_errors": result.layer_errors}, indent=2))
    else:
        print(f"Wrote {args.output}: rank {result.memory.config.rank}, relative error of the refactorisation "
              f"{result.relative_error:.3e} (worst layer {max(result.layer_errors.values()):.3e}).")
    return 0


@_reports_errors
def _run_fuse(args: argparse.Namespace) -> int:
    check_apart(args.memory, args.output, "the memory")
    result = fuse_memory(load_memory(args.memory), args.model, args.output, args.strength, args.link, args.force)
    print(f"Wrote world model {result.path}: fingerprint {result.fused_fingerprint} (base {result.base_fingerprint}).")
    return 0


@_reports_errors
def _run_convert(args: argparse.Namespace) -> int:
    if os.path.isdir(args.source):
        save_memory(memory_from_peft(args.source, args.base), args.output, args.force)
        print(f"Wrote memory {args.output} from peft adapter {args.source}.")
    else:
        memory_to_peft(load_memory(args.source), args.output, args.force)
        print(f"Wrote peft adapter folder {args.output} (peft.PeftModel.from_pretrained(unet, {args.output!r})).")
    return 0


@_reports_errors
def _run_cast_memory(args: argparse.Namespace) -> int:
    memory = cast_memory(load_memory(args.memory), DTYPES[args.dtype], args.drop_optimizer)
    save_memory(memory, args.output, args.force)
    before, after = _size(args.memory), _size(args.output)
    print(f"Wrote {args.output} ({args.dtype}): {after / 1e6:.2f} MB, was {before / 1e6:.2f} MB "
          f"({before - after:,} bytes saved, {100 * (before - after) / before:.0f}%).")
    return 0


@_reports_errors
def _run_import(args: argparse.Namespace) -> int:
    fingerprint = import_modelscope(args.source, args.output, args.link, args.context_window, args.variant,
                                    args.allow_pickle, args.force)
    print(f"Wrote world model {args.output} ({'linked' if args.link else 'copied'} weights), fingerprint {fingerprint}.")
    return 0


@_reports_errors
def _run_export(args: argparse.Namespace) -> int:
    result = export_checkpoint(args.checkpoint, args.base, args.output, not args.no_ema, args.link,
                               args.allow_pickle, args.force)
    weights = "EMA weights" if result.used_ema else "trained weights (no EMA)"
    if result.trained_text_encoder:
        weights += " and its trained text encoder"
    print(f"Wrote world model {result.path} from {args.checkpoint} ({weights}), fingerprint {result.fingerprint}.")
    return 0


@_reports_errors
def _run_fingerprint(args: argparse.Namespace) -> int:
    result = file_fingerprint(args.model)
    if args.json:
        print(json.dumps({"fingerprint": result.value, "bytes_read": result.bytes_read,
                          "bytes_total": result.bytes_total, "num_tensors": result.num_tensors}))
    else:
        print(result.value)
    return 0


@_reports_errors
def _run_cast_model(args: argparse.Namespace) -> int:
    result = cast_world_model(args.model, args.output, DTYPES[args.dtype], tuple(args.keep_fp32), args.force)
    saved = result.bytes_before - result.bytes_after
    print(f"Wrote {result.path} ({args.dtype}): {result.bytes_after / 1e6:.1f} MB, was {result.bytes_before / 1e6:.1f} MB "
          f"({saved:,} bytes saved).")
    if result.fingerprint_after != result.fingerprint_before:
        print(f"Note: the copy's fingerprint is {result.fingerprint_after} (source {result.fingerprint_before}); "
              "memories made on the source will not load on it.")
    if args.measure:
        dtype = DTYPES[args.dtype] if args.device != "cpu" else None
        print(f"PSNR of a ToyWorld chunk, copy vs source: {cast_quality(args.model, args.output, dtype, args.device):.2f} dB")
    return 0
