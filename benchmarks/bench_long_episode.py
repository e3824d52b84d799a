#!/usr/bin/env python
"""1000 frames at flat memory: `slowfast-vgen generate` over a long episode against a short one.

Runs the product's own command (its default memory on, each chunk decoded and written to the MP4 as it comes) twice,
each in a fresh process: a short episode (12 chunks, 49 frames) and a long one (250 chunks, 1001 frames),
on the shipped model with its demo settings. Reports each process's peak resident set size (getrusage
ru_maxrss), their ratio, and the wall time per chunk over the first and the last ten chunks of the long
episode (from the JSON summary's per-chunk seconds).

    python benchmarks/bench_long_episode.py --out outputs/long_episode.json
    python benchmarks/bench_long_episode.py --world memory-maze --out outputs/long_episode_maze.json

With `--world memory-maze` the episode is Memory Maze's (its model and default memory, `poses`): a full turn on
the spot, then forward and back, over and over, so poses keep coming back and new ones keep being added.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# Actions per world that keep coming back: square loops in ToyWorld; in Memory Maze a full turn (4 chunks of
# 4 frames at 22.5 degrees a frame), then forward and back again (walls stop the camera where they must).
ACTIONS = {"toyworld": ["move right"] * 3 + ["move down"] * 3 + ["move left"] * 3 + ["move up"] * 3,
           "memory-maze": ["turn left"] * 4 + ["walk forward"] * 2 + ["walk back"] * 2}


def episode_actions(world: str, chunks: int) -> list[str]:
    """`chunks` actions of `world`'s revisiting cycle."""
    cycle = ACTIONS[world]
    return [cycle[index % len(cycle)] for index in range(chunks)]


def run_generate(folder: str, chunks: int, extra: list[str], world: str = "toyworld") -> dict:
    """One `generate` run in a fresh process; its summary and the process's peak RSS in bytes."""
    video = os.path.join(folder, f"episode-{chunks}.mp4")
    actions = os.path.join(folder, f"actions-{chunks}.txt")
    with open(actions, "w", encoding="utf-8") as handle:
        handle.write("\n".join(episode_actions(world, chunks)))
    extra = ["--world", world, *extra]
    code = ("import resource, sys; from slowfast_vgen.cli import main; code = main(sys.argv[1:]); "
            "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    completed = subprocess.run([sys.executable, "-c", code, "generate", video, "--actions-file", actions, "--force",
                                *extra],
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"generate ({chunks} chunks) failed:\n{completed.stderr[-3000:]}")
    peak = int(next(line.split()[1] for line in completed.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")))
    with open(os.path.splitext(video)[0] + ".json", encoding="utf-8") as handle:
        summary = json.load(handle)
    return {"chunks": chunks, "frames": summary["frames"], "peak_rss_bytes": peak * 1024,
            "chunk_seconds": summary["seconds"]["chunks"], "generate_seconds": summary["seconds"]["generate_and_write"]}


def report(results: dict, out: str | None) -> None:
    """Print the measurements as JSON and, with `out`, write them there (under a temporary name, renamed)."""
    print(json.dumps(results, indent=1))
    if out:
        partial = out + ".partial"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
        os.replace(partial, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=12, help="chunks of the short episode (default 12: 49 frames)")
    parser.add_argument("--long", type=int, default=250, help="chunks of the long episode (default 250: 1001 frames)")
    parser.add_argument("--world", choices=tuple(ACTIONS), default="toyworld",
                        help="the world, its shipped model and its default memory (default toyworld)")
    parser.add_argument("--out", help="also write the measurements as JSON")
    parser.add_argument("generate_args", nargs="*", help="more `generate` flags, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        short = run_generate(folder, args.short, args.generate_args, args.world)
        long = run_generate(folder, args.long, args.generate_args, args.world)
    first, last = long["chunk_seconds"][1:11], long["chunk_seconds"][-10:]  # chunk 0 pays the warm-up
    result = {
        "short": {k: v for k, v in short.items() if k != "chunk_seconds"},
        "long": {k: v for k, v in long.items() if k != "chunk_seconds"},
        "peak_rss_ratio_long_over_short": long["peak_rss_bytes"] / short["peak_rss_bytes"],
        "seconds_per_chunk_first_10": statistics.median(first),
        "seconds_per_chunk_last_10": statistics.median(last),
        "world": args.world,
        "generate_args": args.generate_args,
        "resource_note": "peak RSS = getrusage(RUSAGE_SELF).ru_maxrss of each generate process",
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({**result, "long_chunk_seconds": long["chunk_seconds"]}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
