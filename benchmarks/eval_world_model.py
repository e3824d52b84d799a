"""Quality gate 1 of a ToyWorld world model: continuation PSNR against the ground truth.

For held-out world seeds: encode the true context chunk, generate the next chunk for "stay" and for each
move, and compare with the true frames (PSNR in dB on [0, 1] frames). The trivial baseline repeats the
last context frame. Usage: python benchmarks/eval_world_model.py [MODEL] [--seeds N] [--steps S]
"""

import argparse
import json

import numpy as np
import torch

from slowfast_vgen.data.toyworld import TRAIN_PARAPHRASES, ToyWorld
from slowfast_vgen.paths import DEFAULT_MODEL_DIR
from slowfast_vgen.pipelines import SlowFastVGenPipeline


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-10)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--seeds", type=int, default=4, help="held-out seeds 1000.. (training used 1..64 at most)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.0)
    args = parser.parse_args()
    pipe = SlowFastVGenPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    chunk = pipe.context_window // 2
    results = {d: {"model": [], "repeat_last": [], "vae_ceiling": []} for d in TRAIN_PARAPHRASES}
    for seed in range(1000, 1000 + args.seeds):
        world = ToyWorld(seed, view_size=pipe.native_size)
        for direction, phrases in TRAIN_PARAPHRASES.items():
            truth = world.rollout(["move right", direction], chunk)[1:].astype(np.float32) / 255
            context, target = truth[:chunk], truth[chunk:]
            context_latents = pipe.encode_frames(list(context))
            out = pipe(phrases[0], context_latents=context_latents, num_frames=chunk, num_inference_steps=args.steps,
                       guidance_scale=args.guidance, generator=torch.Generator().manual_seed(seed), output_type="np")
            results[direction]["model"].append(psnr(out.frames[0], target))
            results[direction]["repeat_last"].append(psnr(np.repeat(context[-1:], chunk, 0), target))
            ceiling = pipe.postprocess(pipe.encode_frames(list(target)), "np")[0]
            results[direction]["vae_ceiling"].append(psnr(ceiling, target))
    summary = {d: {k: round(float(np.mean(v)), 2) for k, v in r.items()} for d, r in results.items()}
    print(json.dumps({"model": args.model, "seeds": args.seeds, "steps": args.steps, "psnr_db": summary}, indent=2))


if __name__ == "__main__":
    main()
