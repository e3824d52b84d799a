#!/usr/bin/env python
"""What a larger world model would cost: a model folder's UNet against larger variants of it, on this machine.

For each variant (the folder's own `UNet3DConditionModel` config, then the same with 3 levels, 2 layers a
block, or wider channels), built with random weights: its parameters, the UNet time of one chunk as the
pipeline samples it (`--steps` calls on the context and new frames, a batch of 2 for classifier-free
guidance) and the time of one training step (forward and backward, batch 8, AdamW). Medians over
`--rounds` rounds, the variants interleaved in each, after one warm-up. What a whole chunk costs beyond its
UNet calls (VAE, memory) is the shipped model's chunk time less its UNet time.

    python benchmarks/bench_unet_sizes.py models/memory-maze
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet3DConditionModel

VARIANTS = {
    "shipped": {},
    "3 levels (32, 64, 128)": dict(block_out_channels=[32, 64, 128],
                                   down_block_types=["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
                                   up_block_types=["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"]),
    "2 layers a block": dict(layers_per_block=2),
    "wider (48, 96)": dict(block_out_channels=[48, 96]),
}


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a world model folder (its unet/config.json is the base)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of a chunk (default 4)")
    parser.add_argument("--frames", type=int, default=8, help="context + new frames a UNet call sees (default 8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = {key: value for key, value in UNet3DConditionModel.load_config(Path(args.model) / "unet").items()
            if not key.startswith("_")}
    latent = base["sample_size"]
    models = {name: UNet3DConditionModel(**{**base, **change}) for name, change in VARIANTS.items()}
    words = torch.randn(2, 77, base["cross_attention_dim"])
    sample = torch.randn(2, base["in_channels"], args.frames, latent, latent)
    batch = torch.randn(8, base["in_channels"], args.frames, latent, latent)
    batch_words = torch.randn(8, 77, base["cross_attention_dim"])
    optimizers = {name: torch.optim.AdamW(model.parameters()) for name, model in models.items()}

    def chunk(model):
        with torch.no_grad():
            for step in range(args.steps):
                model(sample, torch.tensor([999 - 250 * step]), encoder_hidden_states=words)

    def training_step(name):
        model = models[name]
        model(batch, torch.randint(0, 1000, (8,)), encoder_hidden_states=batch_words).sample.square().mean().backward()
        optimizers[name].step()
        optimizers[name].zero_grad()

    for name, model in models.items():  # warm-up
        chunk(model)
        training_step(name)
    chunks = {name: [] for name in models}
    steps = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            chunks[name].append(timed(lambda: chunk(model), 3))
            steps[name].append(timed(lambda: training_step(name), 2))
    result = {name: {"parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                     "chunk_unet_s": round(statistics.median(chunks[name]), 3),
                     "train_step_s": round(statistics.median(steps[name]), 3),
                     "chunk_x_shipped": round(statistics.median(chunks[name]) / statistics.median(chunks["shipped"]), 2)}
              for name, model in models.items()}
    print(json.dumps({"threads": args.threads, "steps": args.steps, "variants": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
