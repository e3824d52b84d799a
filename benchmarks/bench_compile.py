#!/usr/bin/env python
"""Does `generate --compile` pay? The demo episode eager, compiled with an empty compiler cache, and compiled
again with the cache that run left, each in a fresh process.

Reports each run's total generation time, its first chunks (where compiling happens: once for the start
frame's 1-frame context, once for the 4-frame context of every later chunk) and its median chunk after
them, and the number of chunks after which compiling has paid for itself.

    python benchmarks/bench_compile.py --out outputs/compile.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from bench_long_episode import report, run_generate  # a sibling script (python puts this folder on sys.path)

WARM_UP = 3  # chunks 0-2 include compilation (two context lengths) and its first runs


def summarize(run: dict) -> dict:
    seconds = run["chunk_seconds"]
    return {"generate_seconds": run["generate_seconds"], "first_chunks_seconds": round(sum(seconds[:WARM_UP]), 2),
            "median_chunk_seconds": statistics.median(seconds[WARM_UP:]), "chunks": len(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=26, help="chunks per episode (default 26, the demo's length)")
    parser.add_argument("--out", help="also write the measurements as JSON")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # inherited by the generate processes
        results["eager"] = summarize(run_generate(folder, args.chunks, []))
        results["compiled, empty cache"] = summarize(run_generate(folder, args.chunks, ["--compile"]))
        results["compiled, warm cache"] = summarize(run_generate(folder, args.chunks, ["--compile"]))
    eager = results["eager"]
    for name in ("compiled, empty cache", "compiled, warm cache"):
        run = results[name]
        saved = eager["median_chunk_seconds"] - run["median_chunk_seconds"]
        extra = run["first_chunks_seconds"] - eager["first_chunks_seconds"]
        run["saved_per_chunk"] = round(saved, 4)
        run["break_even_chunks"] = round(WARM_UP + extra / saved) if saved > 0 else None
    report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
