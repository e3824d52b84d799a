#!/usr/bin/env python
"""What the default memory costs a user: `generate`'s demo length (26 chunks of square loops, so places come
back) with no memory, with the paper's Temp-LoRA update, with the default preset (`panorama`: the
panorama memory, no Temp-LoRA training) and with both (`paper+panorama`), each run a fresh process of the product's own command, the four interleaved over several rounds so that the machine's drift
hits them alike.

Reports the median seconds per chunk (chunk 0, which pays the warm-up, left out; decoding and writing the
MP4 included, as a user waits for them) and each memory's ratio to no memory, per round and over all rounds,
and the median peak resident memory of each setting's process with its ratio to no memory.

    python benchmarks/bench_default_memory.py --rounds 3 --out outputs/default_memory.json
    python benchmarks/bench_default_memory.py --world memory-maze --rounds 3 --out outputs/default_memory_maze.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from bench_long_episode import report, run_generate  # a sibling script (python puts this folder on sys.path)

# Per world: no memory, the paper's update, the world's default preset, and the other memories worth pricing.
SETTINGS = {"toyworld": {"none": ["--no-temp-lora"], "paper": ["--lora-preset", "paper"], "panorama (default)": [],
                         "paper+panorama": ["--lora-preset", "paper+panorama"]},
            "memory-maze": {"none": ["--no-temp-lora"], "paper": ["--lora-preset", "paper"], "poses (default)": []}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=26, help="chunks per episode (default 26, the demo's length)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the settings (default 3)")
    parser.add_argument("--world", choices=tuple(SETTINGS), default="toyworld",
                        help="the world, its shipped model and its memories (default toyworld)")
    parser.add_argument("--out", help="also write the measurements as JSON")
    args = parser.parse_args()
    settings = SETTINGS[args.world]
    if args.chunks < 2 or args.rounds < 1:
        raise SystemExit("--chunks must be at least 2 and --rounds at least 1.")
    runs: dict[str, list[list[float]]] = {name: [] for name in settings}
    peaks: dict[str, list[int]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for name, flags in settings.items():
                run = run_generate(folder, args.chunks, flags, args.world)
                runs[name].append(run["chunk_seconds"][1:])
                peaks[name].append(run["peak_rss_bytes"])
    medians = {name: [statistics.median(seconds) for seconds in rounds] for name, rounds in runs.items()}
    overall = {name: statistics.median([s for seconds in rounds for s in seconds]) for name, rounds in runs.items()}
    results = {"world": args.world, "chunks": args.chunks, "rounds": args.rounds, "median_chunk_seconds_per_round": medians,
               "median_chunk_seconds": overall,
               "ratio_to_none_per_round": {name: [round(m / n, 3) for m, n in zip(values, medians["none"])]
                                           for name, values in medians.items() if name != "none"},
               "ratio_to_none": {name: round(value / overall["none"], 3) for name, value in overall.items()
                                 if name != "none"},
               "median_peak_rss_mib": {name: round(statistics.median(p) / 2**20, 1) for name, p in peaks.items()},
               "peak_rss_ratio_to_none": {name: round(statistics.median(p) / statistics.median(peaks["none"]), 3)
                                          for name, p in peaks.items() if name != "none"}}
    report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
