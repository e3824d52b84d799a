"""Next-chunk quality against the number of sampling steps, for each sampler of `SCHEDULERS`.

Every sampler starts from the same noise (the generator of each world's seed) and the same true context;
the score is gate 1's: PSNR of the next chunk against the truth, averaged over "stay" and the four moves in
a seen and a held-out wording, per held-out world. Reported as mean ± std over worlds, with the paired
difference to the reference (default: DDIM at the shipped default's steps) and the wall time per chunk.

    python benchmarks/bench_samplers.py --seeds 10 --reference ddim:10 --out outputs/samplers.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from slowfast_vgen.evaluation.evaluate import next_chunk_quality
from slowfast_vgen.paths import DEFAULT_MODEL_DIR
from slowfast_vgen.pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS, SCHEDULERS, SlowFastVGenPipeline, scheduler_from_name


def world_scores(pipe: SlowFastVGenPipeline, seed: int, steps: int, guidance: float) -> float:
    results = next_chunk_quality(pipe, range(seed, seed + 1), steps, guidance)
    return float(np.mean([row["psnr"] for name, row in results.items() if not name.endswith("/baselines")]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--seeds", type=int, default=10, help="held-out worlds from 1000")
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    parser.add_argument("--steps", default="4,5,6,8,10,20")
    parser.add_argument("--reference", default=f"ddim:{DEFAULT_STEPS}",
                        help="sampler:steps the others are compared with (default: the shipped default)")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--out", default="outputs/samplers.json")
    args = parser.parse_args()
    pipe = SlowFastVGenPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    seeds = range(1000, 1000 + args.seeds)
    names = args.schedulers.split(",")
    configs = [(name, int(steps)) for name in names for steps in args.steps.split(",")]
    reference = (args.reference.split(":")[0], int(args.reference.split(":")[1]))
    if reference not in configs:
        configs.insert(0, reference)
    scores, seconds = {}, {}
    for name, steps in configs:
        pipe.scheduler = scheduler_from_name(name, base_config)
        started = time.perf_counter()
        scores[name, steps] = [world_scores(pipe, seed, steps, args.guidance) for seed in seeds]
        seconds[name, steps] = (time.perf_counter() - started) / (len(seeds) * 10)  # 10 chunks per world
        print(f"{name:6s} {steps:3d} steps: {np.mean(scores[name, steps]):.2f} ± {np.std(scores[name, steps]):.2f} dB"
              f"  {seconds[name, steps]:.3f} s/chunk", flush=True)
    rows = []
    for (name, steps), values in scores.items():
        difference = np.array(values) - np.array(scores[reference])
        rows.append({"scheduler": name, "steps": steps, "psnr_mean": round(float(np.mean(values)), 2),
                     "psnr_std": round(float(np.std(values)), 2),
                     "vs_reference_mean": round(float(difference.mean()), 2),
                     "vs_reference_std": round(float(difference.std()), 2),
                     "worlds_not_worse_than_reference_by_0.2dB": int((difference > -0.2).sum()),
                     "seconds_per_chunk": round(seconds[name, steps], 3)})
    result = {"model": args.model, "worlds": list(seeds), "guidance": args.guidance,
              "reference": f"{reference[0]}:{reference[1]}", "torch_threads": torch.get_num_threads(), "rows": rows}
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
