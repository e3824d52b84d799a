"""`slowfast-vgen evaluate`: revisit, drift and next-chunk quality of a world model, through the product's loop.

Every episode runs `SlowFastVGenPipeline.stream_episode`, the loop of `generate`, the nodes and the
workflows. All settings of an episode share its seed, so they sample the same noise and the first chunk
is bit-identical in all of them: settings differ by memory alone (Temp-LoRA updates draw from a stream
of their own, see `memory_generator_for`).

Per episode (a held-out ToyWorld world, a path of one of `data.episodes.PATH_FAMILIES` or a user's path
file) and per memory setting it records, in world coordinates:
- revisit PSNR and SSIM: the pixels whose world place was first seen before the chunk's context and that
  no context frame shows, against their first sighting in the same video (the pixel SRC) and against the
  truth; per chunk and pooled over the episode;
- SRC (with `--resnet18`): cosine similarity of ResNet-18 features of each revisit frame and the earliest
  frame before its context that saw most of the same place (at least half of the view);
- SCuts (PySceneDetect) and drift per chunk: shift-consistency, full-frame PSNR against the truth, colour
  shift and sharpness against the truth's;
- with `--oracle`: the memory of the true first half (every chunk learned as an episode would), then the
  second half generated from the true half-way chunk with that memory frozen, scored against the truth;
- with `--teacher-forced`: every chunk from the true previous chunk, with the memory of the true chunks so
  far (memory read without drift).

Rows are appended to `OUT/episodes-<rank>.jsonl` as each episode ends, so a stopped run resumes where it
stopped; under `accelerate launch` the episodes are shared out over the processes. `summary.json`,
`summary.md` and the plots are written at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.episodes import PATH_FAMILIES
from ..data.worlds import WORLDS
from ..pipelines import SCHEDULERS
from .options import SETTINGS, EvaluationOptions
from .protocols import load_pipeline, next_chunk_quality
from .runner import evaluate, evaluate_video


def add_evaluate_command(commands) -> None:
    parser = commands.add_parser("evaluate", help="revisit, drift and next-chunk quality of a world model",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = EvaluationOptions()
    parser.add_argument("output_dir", nargs="?", default=defaults.output_dir,
                        help="where rows, summary and plots go (default: %(default)s); an existing run resumes")
    parser.add_argument("--model", default=None, help="world model folder (default: the shipped model of --world)")
    parser.add_argument("--world", choices=tuple(WORLDS), default=defaults.world,
                        help="the built-in world whose held-out episodes are scored (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=defaults.episodes)
    parser.add_argument("--families", default=None,
                        help=f"path families, comma-separated (default: all of the world's: in ToyWorld "
                             f"{', '.join(PATH_FAMILIES)}; in Memory Maze {', '.join(WORLDS['memory-maze'].families)})")
    parser.add_argument("--path-file", help="your own path: JSON {\"actions\": [...], \"start\": [x, y]}")
    parser.add_argument("--first-seed", type=int, default=defaults.first_seed,
                        help="held-out worlds from here (ToyWorld's model trained on 1..64, Memory Maze's on 1..100)")
    parser.add_argument("--chunks", type=int, default=defaults.chunks, help="chunks per episode")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--guidance", type=float, default=defaults.guidance)
    parser.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None,
                        help="sampler (default: the model's own)")
    parser.add_argument("--settings", default=",".join(defaults.settings),
                        help=f"memory settings side by side, comma-separated; known: {', '.join(SETTINGS)}")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=JSON",
                        help="define a setting from TempLoRAConfig fields (and num_context_frames; "
                             "\"memory\": false for none), e.g. fast='{\"learning_rate\": 1e-3}'")
    parser.add_argument("--oracle", action="store_true", help="also the memory of the true first half (gate 2)")
    parser.add_argument("--teacher-forced", action="store_true",
                        help="also every chunk from the true previous chunk, with the memory of the true chunks so far "
                             "(memory read without drift)")
    parser.add_argument("--resnet18", help="ResNet-18 weights for SRC (folder, .safetensors or torchvision .pth)")
    parser.add_argument("--scuts-threshold", type=float, default=defaults.scuts_threshold)
    parser.add_argument("--no-strips", action="store_true", help="write no first-visit / revisit pictures")
    parser.add_argument("--next-chunk", type=int, metavar="SEEDS",
                        help="instead: next-chunk quality (gate 1) on SEEDS held-out worlds from 1000")
    parser.add_argument("--video", help="instead: score an MP4 written by `generate` (with its JSON)")
    parser.set_defaults(run=run)


def parse_custom_settings(entries: list[str]) -> dict[str, dict]:
    custom = {}
    for entry in entries:
        name, _, text = entry.partition("=")
        try:
            fields = json.loads(text)
        except ValueError as error:
            raise ValueError(f"--setting {entry!r}: expected NAME=JSON object ({error}).") from None
        if not name or not isinstance(fields, dict):
            raise ValueError(f"--setting {entry!r}: expected NAME=JSON object, e.g. fast='{{\"learning_rate\": 1e-3}}'.")
        custom[name] = fields
    return custom


def run(args: argparse.Namespace) -> int:
    try:
        if args.video:
            print(json.dumps(evaluate_video(args.video, args.resnet18, args.scuts_threshold), indent=2))
            return 0
        if args.next_chunk is not None:
            if args.next_chunk < 1:
                raise ValueError(f"--next-chunk must be at least 1 world, got {args.next_chunk}.")
            pipe = load_pipeline(args.model or str(WORLDS[args.world].model_dir), args.scheduler)
            results = next_chunk_quality(pipe, range(1000, 1000 + args.next_chunk), args.steps, args.guidance)
            print(json.dumps({"model": args.model, "seeds": args.next_chunk, "steps": args.steps,
                              "scheduler": args.scheduler or type(pipe.scheduler).__name__,
                              "guidance": args.guidance, "results": results}, indent=2))
            return 0
        kind = WORLDS[args.world]
        families = kind.families if args.families is None else args.families.split(",")
        options = EvaluationOptions(
            output_dir=args.output_dir, model=args.model or str(kind.model_dir), episodes=args.episodes,
            families=tuple(f.strip() for f in families if f.strip()), path_file=args.path_file, world=args.world,
            first_seed=args.first_seed, chunks=args.chunks, steps=args.steps, guidance=args.guidance,
            scheduler=args.scheduler,
            settings=tuple(s.strip() for s in args.settings.split(",") if s.strip()),
            custom_settings=parse_custom_settings(args.setting), oracle=args.oracle, teacher_forced=args.teacher_forced,
            resnet18=args.resnet18,
            scuts_threshold=args.scuts_threshold, strips=not args.no_strips,
        )
        summary = evaluate(options)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    if summary is not None:
        print((Path(options.output_dir) / "summary.md").read_text(encoding="utf-8"))
    return 0
