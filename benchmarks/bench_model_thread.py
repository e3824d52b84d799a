#!/usr/bin/env python
"""Why `slowfast-vgen play` runs the model on one thread only: a UNet call of the shipped ToyWorld model
(batch 2 as with guidance, 8 frames) timed on a worker thread, in a fresh process each, when the main thread
has run nothing of torch's and when it has run one UNet call first (as it did when it loaded the model and
checked the start frame). docs/benchmarks.md, "Playing live".

    python benchmarks/bench_model_thread.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

CALLS = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import slowfast_vgen, torch
from slowfast_vgen.paths import DEFAULT_MODEL_DIR
from slowfast_vgen.pipelines import SlowFastVGenPipeline
unet = SlowFastVGenPipeline.from_pretrained(DEFAULT_MODEL_DIR).unet.eval()
config = unet.config
x = torch.randn(2, config.in_channels, 8, config.sample_size, config.sample_size)
text = torch.randn(2, 8, config.cross_attention_dim)

def call():
    with torch.inference_mode():
        started = time.perf_counter()
        unet(x, torch.tensor(500), encoder_hidden_states=text)
        return time.perf_counter() - started

if sys.argv[1] == "main-thread-first":
    call()
worker = ThreadPoolExecutor(1)
worker.submit(call).result()
print(json.dumps([worker.submit(call).result() for _ in range(10)]))
"""


def main() -> int:
    results = {}
    for round_ in range(2):
        for mode in ("worker-only", "main-thread-first"):
            out = subprocess.run([sys.executable, "-c", CALLS, mode], capture_output=True, text=True, check=True)
            median = statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))
            results.setdefault(mode, []).append(round(median, 4))
            print(f"round {round_ + 1}, {mode}: median UNet call on the worker thread {median:.4f} s", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
