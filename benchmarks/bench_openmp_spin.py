#!/usr/bin/env python
"""How OpenMP's spin changes a chunk's time alone and beside busy processes (docs/benchmarks.md, "OpenMP's
spin"). Each setting runs in a fresh process: a `slowfast-vgen play` session (`PlaySession`) of the shipped
ToyWorld model, one warm-up chunk, then `--chunks` timed chunks; `--busy N` starts N busy neighbours first
(each a one-thread torch loop, as a training run is).

    python benchmarks/bench_openmp_spin.py --busy 0
    python benchmarks/bench_openmp_spin.py --busy 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {"default (300000)": {"GOMP_SPINCOUNT": "300000"}, "10000": {"GOMP_SPINCOUNT": "10000"},
            "1000": {"GOMP_SPINCOUNT": "1000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}

CHUNKS = """
import json, sys, time
import slowfast_vgen  # first, as the command: the spin of the environment given, or the package's
from slowfast_vgen.cli import ArgumentParser
from slowfast_vgen.generate import load_pipeline
from slowfast_vgen.play.command import add_play_command, check_play_arguments
from slowfast_vgen.play.session import PlaySession
parser = ArgumentParser(prog="slowfast-vgen")
add_play_command(parser.add_subparsers(dest="command"))
args = parser.parse_args(["play", "--no-browser"])
preset = check_play_arguments(args)
pipe = load_pipeline(args)
pipe.set_progress_bar_config(disable=True)
session = PlaySession(pipe, args, preset)
session.step("move right")
seconds = []
for _ in range(int(sys.argv[1])):
    started = time.perf_counter()
    session.step("move right")
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""

BUSY = """
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=0, help="busy neighbour processes (default 0)")
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="every setting once a round, interleaved")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    neighbours = [subprocess.Popen([sys.executable, "-c", BUSY], env=base) for _ in range(args.busy)]
    results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    try:
        time.sleep(2 if neighbours else 0)
        for _ in range(args.rounds):
            for name, env in SETTINGS.items():
                out = subprocess.run([sys.executable, "-c", CHUNKS, str(args.chunks)], env={**base, **env},
                                     capture_output=True, text=True, check=True).stdout
                seconds = json.loads(out.strip().splitlines()[-1])
                results[name].append(round(statistics.median(seconds), 3))
                print(f"busy {args.busy}, spin {name}: median chunk {results[name][-1]} s", flush=True)
    finally:
        for process in neighbours:
            process.kill()
    print(json.dumps({"busy": args.busy, "median_chunk_seconds": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
