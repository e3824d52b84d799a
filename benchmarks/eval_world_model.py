"""Quality gate 1 of a ToyWorld world model: continuation against the ground truth.

For held-out world seeds: encode the true context chunk, generate the next chunk for "stay" and for each
move, with a paraphrase seen in training and with the held-out one, and compare with the true frames:
PSNR (dB) and SSIM on [0, 1] frames, and the camera motion per frame estimated from the frames by phase
correlation (OpenCV), against the true one (the estimator is also run on the true frames). The trivial
baseline repeats the last context frame.
Usage: python benchmarks/eval_world_model.py [MODEL] [--seeds N] [--steps S] [--guidance G]
"""

import argparse
import json

import cv2
import numpy as np
import torch

from slowfast_vgen.data.toyworld import DIRECTIONS, HELD_OUT_PARAPHRASES, TRAIN_PARAPHRASES, ToyWorld
from slowfast_vgen.paths import DEFAULT_MODEL_DIR
from slowfast_vgen.pipelines import SlowFastVGenPipeline


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) over frames and channels of [0, 1] frames."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    scores = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64)):
        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        scores.append(((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))).mean())
    return float(np.mean(scores))


def camera_motion(frames: np.ndarray) -> np.ndarray:
    """Mean camera motion (dx, dy) in pixels per frame, from phase correlation of consecutive frames."""
    gray = [cv2.cvtColor(f.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64) for f in frames]
    # The picture moves against the camera, hence the minus.
    return -np.mean([cv2.phaseCorrelate(a, b)[0] for a, b in zip(gray, gray[1:])], axis=0)


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
    rows: dict[str, dict[str, list]] = {}
    for seed in range(1000, 1000 + args.seeds):
        world = ToyWorld(seed, view_size=pipe.native_size)
        for direction in DIRECTIONS:
            truth = world.rollout(["move right", direction], chunk)[1:].astype(np.float32) / 255
            context, target = truth[:chunk], truth[chunk:]
            context_latents = pipe.encode_frames(list(context))
            true_motion = np.array(DIRECTIONS[direction]) * world.step
            for wording, phrase in (("seen", TRAIN_PARAPHRASES[direction][0]), ("held_out", HELD_OUT_PARAPHRASES[direction][0])):
                out = pipe(phrase, context_latents=context_latents, num_frames=chunk, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, generator=torch.Generator().manual_seed(seed), output_type="np")
                frames = out.frames[0]
                row = rows.setdefault(f"{direction}/{wording}", {})
                row.setdefault("psnr", []).append(psnr(frames, target))
                row.setdefault("ssim", []).append(ssim(frames, target))
                row.setdefault("motion_error_px", []).append(
                    float(np.abs(camera_motion(np.concatenate([context[-1:], frames])) - true_motion).max()))
            row = rows.setdefault(f"{direction}/baselines", {})
            row.setdefault("repeat_last_psnr", []).append(psnr(np.repeat(context[-1:], chunk, 0), target))
            ceiling = pipe.postprocess(pipe.encode_frames(list(target)), "np")[0]
            row.setdefault("vae_ceiling_psnr", []).append(psnr(ceiling, target))
            row.setdefault("truth_motion_error_px", []).append(
                float(np.abs(camera_motion(np.concatenate([context[-1:], target])) - true_motion).max()))
    summary = {name: {k: round(float(np.mean(v)), 3 if k == "ssim" else 2) for k, v in row.items()}
               for name, row in rows.items()}
    print(json.dumps({"model": args.model, "seeds": args.seeds, "steps": args.steps, "guidance": args.guidance,
                      "results": summary}, indent=2))


if __name__ == "__main__":
    main()
