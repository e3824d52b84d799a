"""`slowfast-vgen plan`: walk a way out in ToyWorld or Memory Maze (`--world`), then plan the way back with the
world model's video plan and its memory, read the plan's actions with the inverse dynamics model, execute
them, and score the walk.

Writes an MP4 of the plan (left) and its execution in the true world (right) side by side, and a JSON of the
subgoals, executed actions, camera positions (Memory Maze: poses) and scores (Table 2's closest distance to
each outward waypoint and the final distance to the start, in views in ToyWorld, in maze cells in Memory
Maze, with the final heading error in degrees). In Memory Maze the way back is the way out reversed, one
maze action a chunk (the model folder's reverse_actions), imagined by the world model with its memory and
read back by the inverse dynamics model (docs/planning.md). Every setting is checked before anything is loaded or
written; outputs are written under temporary names and renamed into place, and existing ones are refused
unless `--force`.

`slowfast-vgen plan-eval` runs the paper's Table 2 in either world: held-out worlds (mazes), memory settings and
world models side by side, open and closed loop, one JSON line per episode (a stopped run resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from ..data.retrace import PLANNING_WORLDS, RETRACE_INSTRUCTIONS
from ..data.worlds import WORLDS, world_kind
from ..pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..pipelines.atomic_files import partial_path, remove_stale_partials, write_text_atomically
from ..pipelines.checks import actions_problem, sampling_problem
from .evaluate import PlanningOptions, evaluate_planning
from .models import load_models
from .planner import (MEMORY_SETTINGS, plan_from_image, plan_retrace, scripted_decomposer, untrained_instruction,
                      world_decomposer)

DEMO_OUTWARD = "; ".join(PLANNING_WORLDS["toyworld"].default_outward)


def add_plan_commands(commands) -> None:
    parser = commands.add_parser("plan", help="plan a way back with a video plan and an inverse dynamics model",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default="outputs/plan.mp4", help="MP4 path (default: %(default)s)")
    add_world_argument(parser)
    add_model_arguments(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--world-seed", type=int, default=0, help="ToyWorld or maze seed (default 0): the way out is "
                                                                 "walked in the true world, and so is the plan")
    where.add_argument("--image", help="a start frame of your own world instead: the way out is imagined by the "
                                       "world model, and the plan is read but not executed (no true world)")
    parser.add_argument("--outward", default=None,
                        help="the way out, one action of --world per chunk, separated by ';' (default: ToyWorld "
                             f"{DEMO_OUTWARD!r}; Memory Maze "
                             f"{'; '.join(PLANNING_WORLDS['memory-maze'].default_outward)!r}, from the maze's "
                             "start pose)")
    parser.add_argument("--start", type=int, nargs=2, metavar=("X", "Y"),
                        help="ToyWorld: camera's top-left corner at the start, in world pixels (default: the path "
                             "centred)")
    parser.add_argument("--instruction", default=RETRACE_INSTRUCTIONS[0], help="where to go (default: %(default)s)")
    parser.add_argument("--closed-loop", action="store_true",
                        help="re-plan after every executed chunk from the true observation (default: open loop)")
    parser.add_argument("--memory-setting", choices=[name for name in MEMORY_SETTINGS if name != "none"],
                        default=None,
                        help="the memory preset to plan with: poses (Memory Maze's default: the views by camera "
                             "pose, recalled where the plan's actions lead back), panorama (ToyWorld's default: a "
                             "panorama of the places seen, "
                             "which recalls the way the trip came for a way-back instruction, docs/planning.md; "
                             "paper+panorama adds the paper's Temp-LoRA update), way-back (Temp-LoRA that learns the way back through "
                             "each chunk with the instruction's text), memory (= strong: the paper's update at a "
                             "higher rate), paper (the paper's update), or any other preset of TEMP_LORA_PRESETS")
    parser.add_argument("--no-temp-lora", action="store_true", help="plan without memory")
    parser.add_argument("--chunks", type=int, default=None, help="planning horizon (default: the way out's + 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=run_plan)

    table = commands.add_parser("plan-eval", help="Table 2: planning with and without memory (ToyWorld or Memory Maze)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    table.add_argument("output_dir", help="folder for rows.jsonl, summary.json and summary.md")
    add_world_argument(table)
    table.add_argument("--models", nargs="+", default=None, metavar="NAME=FOLDER",
                       help="world models to compare (default: --world's planning model: ToyWorld's shipped retrace "
                            "model, Memory Maze's shipped model)")
    table.add_argument("--idm", default=None, help="inverse dynamics model folder (default: --world's shipped one)")
    table.add_argument("--episodes", type=int, default=20)
    table.add_argument("--first-seed", type=int, default=2000, help="held-out worlds first-seed, first-seed + 1, ...")
    table.add_argument("--settings", default=None,
                       help="memory settings, comma-separated: none, poses, panorama, way-back, memory, paper or "
                            "another preset (default: none and --world's memory: none,panorama in ToyWorld, "
                            "none,poses in Memory Maze)")
    table.add_argument("--loops", default="open,closed", help="open, closed or both (default: %(default)s)")
    table.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    table.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    table.set_defaults(run=run_plan_eval)


def add_world_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", choices=tuple(WORLDS), default="toyworld",
                        help="where the way out is walked and the plan executed; it chooses the defaults of the "
                             "models, the way out and the memory (default: %(default)s)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="world model folder (default: --world's: the shipped retrace-task model in ToyWorld, "
                             "models/memory-maze in Memory Maze)")
    parser.add_argument("--idm", default=None, help="inverse dynamics model folder (default: --world's shipped one)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps per chunk")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)


def world_defaults(args: argparse.Namespace) -> None:
    """Fill in what --world chooses and the user left out: the models, the way out, the memory."""
    kind = PLANNING_WORLDS[args.world]
    if getattr(args, "model", "") is None:
        args.model = str(kind.model_dir)
    if getattr(args, "models", "") is None:
        args.models = [f"{'retrace' if args.world == 'toyworld' else args.world}={kind.model_dir}"]
    if args.idm is None:
        args.idm = str(kind.idm_dir)
    if getattr(args, "outward", "") is None:
        args.outward = "; ".join(kind.default_outward)
    if getattr(args, "memory_setting", "") is None:
        args.memory_setting = kind.default_memory
    if getattr(args, "settings", "") is None:
        args.settings = f"none,{kind.default_memory}"


def check_common(args: argparse.Namespace) -> None:
    world_defaults(args)
    problem = sampling_problem(args.steps, args.guidance, "--steps", "--guidance", parsed=True)
    if problem:
        raise SystemExit(problem)
    if not os.path.isfile(os.path.join(args.idm, "config.json")):
        raise SystemExit(f"--idm {args.idm!r} is not an inverse dynamics model folder (no config.json); train one "
                         "with slowfast-vgen train --stage idm --model <world model>.")


def check_model(flag: str, folder: str) -> None:
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise SystemExit(f"{flag} {folder!r} is not a world model folder (no model_index.json).")


def side_by_side(plan: np.ndarray, executed: np.ndarray) -> np.ndarray:
    """Frames of the plan (left) and the execution (right), the shorter one holding its last frame."""
    length = max(len(plan), len(executed))
    pad = lambda video: np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)])  # noqa: E731
    return np.concatenate([pad(plan), pad(executed)], axis=2)


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """An MP4 written under a temporary name beside `path`, renamed into place when complete."""
    partial = partial_path(path)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV could not open a video writer for {str(path)!r} (codec mp4v).")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor((frame * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    os.replace(partial, path)


def run_plan(args: argparse.Namespace) -> int:
    # 1. Everything the user gave, checked before any work or write.
    check_common(args)
    check_model("--model", args.model)
    if args.chunks is not None and args.chunks < 1:
        raise SystemExit(f"--chunks must be at least 1, got {args.chunks}.")
    if not math.isfinite(args.fps) or args.fps <= 0:
        raise SystemExit(f"--fps must be a positive number, got {args.fps}.")
    if not args.instruction.strip():
        raise SystemExit("--instruction is empty: say where to go, e.g. 'go back to the start'.")
    kind = world_kind(args.world)
    outward = [action.strip() for action in args.outward.split(";") if action.strip()]
    if not outward:
        raise SystemExit("--outward is empty: give the way out, one action per chunk, separated by ';'.")
    for index, action in enumerate(outward if not args.image else ()):  # your own world: any action text
        problem = actions_problem([action], kind.parse_action, f"--outward, action {index + 1} (--world "
                                  f"{args.world})", numbered=False)
        if problem:
            raise SystemExit(problem)
    if not args.image:
        problem = kind.seed_problem(args.world_seed)
        if problem:
            raise SystemExit(problem)
        if args.start and kind.planning.heading_error is not None:
            raise SystemExit(f"--start is ToyWorld's (pixels); in {args.world} the way out starts at the maze's start "
                             "pose: leave --start out.")
    image = None
    if args.image:
        image = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"--image {args.image!r} cannot be read as an image.")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    video, summary_path = Path(args.output), Path(args.output).with_suffix(".json")
    if video.suffix.lower() != ".mp4":
        raise SystemExit(f"The output {args.output!r} must end in .mp4.")
    for target in (video, summary_path):
        if target.exists() and not args.force:
            raise SystemExit(f"{target} already exists; pass --force to replace it (or choose another output).")
        remove_stale_partials(target)
    warning = untrained_instruction(args.instruction, scripted_decomposer, kind.parse_action)
    if warning:
        warnings.warn(warning, stacklevel=1)

    started = time.time()
    pipe, idm = load_models(args.model, args.idm, world=None if image is not None else args.world)
    temp_lora = None if args.no_temp_lora else MEMORY_SETTINGS[args.memory_setting]
    if image is not None:
        return plan_own_world(args, pipe, idm, image, outward, temp_lora, video, summary_path, started)
    try:  # the world is drawn at the model's frame size, a chunk the model's
        task = kind.planning.task_from_actions(args.world_seed, outward, args.instruction,
                                               tuple(args.start) if args.start else None,
                                               chunk_frames=pipe.context_window // 2, view_size=pipe.native_size)
    except ValueError as error:
        raise SystemExit(f"--outward / --start / --world-seed: {error}") from None

    # 2. Plan, execute, score. What plan_retrace refuses (a way out the model folder cannot reverse, a
    # decomposer's bad answer) it refuses before any sampling, and nothing has been written yet.
    try:
        result = plan_retrace(pipe, idm, task, temp_lora=temp_lora, closed_loop=args.closed_loop,
                              num_chunks=args.chunks, seed=args.seed, num_inference_steps=args.steps,
                              guidance_scale=args.guidance)
    except ValueError as error:
        raise SystemExit(f"--model {args.model!r} / --idm {args.idm!r} / --outward: {error}") from None

    # 3. Into place: the video, then the summary that names it.
    video.parent.mkdir(parents=True, exist_ok=True)
    write_video(video, side_by_side(result.plan_frames, result.executed_frames), args.fps)
    summary = {"video": str(video), "left": "plan", "right": "execution in the true world",
               "world": args.world, "model": args.model, "idm": args.idm, "task": task.describe(),
               "subgoals": result.subgoals, "closed_loop": args.closed_loop,
               "temp_lora": None if temp_lora is None else vars(temp_lora), "executed_actions": result.actions,
               "positions": [kind.planning.pose_list(p) for p in result.positions],
               "scores": result.scores, "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
               "seconds": round(time.time() - started, 2)}
    write_text_atomically(summary_path, json.dumps(summary, indent=2))
    scores, units = result.scores, result.scores["units"]
    heading = f" facing {scores['final_heading_error']:.1f} degrees off" if "final_heading_error" in scores else ""
    print(f"Planned {len(result.actions)} frames ({'closed' if args.closed_loop else 'open'} loop); mean closest "
          f"distance to the way out {scores['mean_closest_distance']:.2f} {units}, final distance to the start "
          f"{scores['final_distance']:.2f} {units}{heading}. Wrote {video} and {summary_path}.")
    return 0


def plan_own_world(args, pipe, idm, image, outward, temp_lora, video: Path, summary_path: Path,
                   started: float) -> int:
    """`plan --image`: the way out imagined from the image, the plan read; the video shows the plan (left) and
    the imagined way out played backward (right), which is what a plan that retraces it would show."""
    try:
        result, way_out = plan_from_image(pipe, idm, image, outward, args.instruction, temp_lora=temp_lora,
                                          num_chunks=args.chunks, seed=args.seed, num_inference_steps=args.steps,
                                          guidance_scale=args.guidance,
                                          decomposer=world_decomposer(pipe, args.world, outward))
    except ValueError as error:
        raise SystemExit(f"--image {args.image!r}: {error}") from None
    video.parent.mkdir(parents=True, exist_ok=True)
    write_video(video, side_by_side(result.plan_frames, way_out[::-1]), args.fps)
    summary = {"video": str(video), "left": "plan", "right": "the imagined way out, played backward",
               "world": args.world, "model": args.model, "idm": args.idm, "image": args.image, "outward": outward,
               "instruction": args.instruction, "subgoals": result.subgoals,
               "temp_lora": None if temp_lora is None else vars(temp_lora), "plan_actions": result.actions,
               "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
               "seconds": round(time.time() - started, 2)}
    write_text_atomically(summary_path, json.dumps(summary, indent=2))
    print(f"Planned {len(result.actions)} frames from {args.image} (not executed: no true world). Wrote {video} and "
          f"{summary_path}.")
    return 0


def run_plan_eval(args: argparse.Namespace) -> int:
    check_common(args)
    models = {}
    for entry in args.models:
        name, _, folder = entry.partition("=")
        if not name or not folder:
            raise SystemExit(f"--models {entry!r}: give NAME=FOLDER, e.g. loop=runs/loop/model.")
        check_model(f"--models {name}=", folder)
        models[name] = folder
    options = PlanningOptions(output_dir=args.output_dir, world=args.world, models=models, idm=args.idm,
                              episodes=args.episodes,
                              first_seed=args.first_seed,
                              settings=tuple(s.strip() for s in args.settings.split(",") if s.strip()),
                              loops=tuple(s.strip() for s in args.loops.split(",") if s.strip()),
                              steps=args.steps, guidance=args.guidance)
    try:
        options.check()
    except ValueError as error:
        raise SystemExit(str(error)) from None
    evaluate_planning(options)
    return 0
