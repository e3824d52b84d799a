#!/usr/bin/env python
"""How far could a better memory take gate 1's turns in Memory Maze? Bounds, with the world's ground truth.

Gate 1 asks every action's next chunk to beat repeating the last frame by 3 dB. With the product's pose
memory, which brings back the last view turned by the heading difference (`turn_views.turned_view`), the
turns stop short of it. This benchmark replaces what the memory recalls with what no memory could have
better, and generates the same turn chunks with the same model, starts, wordings and noise as
`python -m slowfast_vgen.evaluation.maze_quality MODEL --memory poses` (the seen wording):

- `product`: the memory as the product recalls (turned views of the last frame);
- `exact_turned_views`: the true frame's pixels on the pixels the turned view covers (a turned view with no
  error: no parallax from the camera sitting ahead of its turning axis, no pitch);
- `reprojected_3d`: the start frame and the context frames reprojected into each frame of the turn with the
  world's true depth and camera poses (a 3-D memory with perfect depth and poses), recalled on every pixel
  they show, the last frame first.

Scores: the chunk's PSNR gain over repeating the last context frame (mean ± std over the turns), and, per
frame of the turn, the share of it each recall covers and the recall's own PSNR there. Generation never sees
the true frames or depth: these are bounds, not methods. What sampling one world costs against the average
of several is `maze_quality --samples N` (its `MOTION/per_frame` rows).

    python benchmarks/maze_turn_bounds.py models/memory-maze --seeds 2000 2020
"""

from __future__ import annotations

import argparse
import math
import sys
import types

import cv2
import numpy as np
import torch

from slowfast_vgen.data.memory_maze import HEADINGS, TRAIN_PARAPHRASES, CameraView, MemoryMaze
from slowfast_vgen.evaluation.maze_quality import gate_start
from slowfast_vgen.evaluation.report import print_json
from slowfast_vgen.pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS, SlowFastVGenPipeline
from slowfast_vgen.pipelines.memorize import memory_of
from slowfast_vgen.pipelines.memory_settings import temp_lora_preset
from slowfast_vgen.pipelines.panorama import recall_mask
from slowfast_vgen.pipelines.turn_views import turned_view

RECALLS = ("product", "exact_turned_views", "reprojected_3d")


def reproject(target: CameraView, sources: list[CameraView], tolerance: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The `sources`' pixels where `target` sees what they saw: each target pixel is lifted to 3-D with the
    target's true depth, projected into each source in turn (first one wins) and kept where the source's own
    depth there agrees within `tolerance` (relative), i.e. where it was not hidden. Returns (H, W, 3) float
    frame in [0, 1] and (H, W) bool known."""
    height, width = target.depth.shape
    focal = height / 2 / math.tan(math.radians(target.fovy) / 2)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float64)
    depth = target.depth.astype(np.float64)
    in_camera = np.stack([(columns - cx) / focal * depth, -(rows - cy) / focal * depth, -depth], -1)
    points = target.position + in_camera @ target.rotation.T
    image = np.zeros((height, width, 3), np.float32)
    known = np.zeros((height, width), bool)
    for source in sources:
        local = (points - source.position) @ source.rotation
        distance = -local[..., 2]
        safe = np.maximum(distance, 1e-6)
        u = (cx + focal * local[..., 0] / safe).astype(np.float32)
        v = (cy - focal * local[..., 1] / safe).astype(np.float32)
        inside = (distance > 1e-3) & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
        seen_depth = cv2.remap(source.depth, u, v, cv2.INTER_NEAREST)
        shown = inside & (np.abs(seen_depth - distance) < tolerance * distance) & ~known
        colour = cv2.remap(source.frame.astype(np.float32) / 255, u, v, cv2.INTER_LINEAR)
        image[shown], known = colour[shown], known | shown
    return image, known


def psnr(frames: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    error = (frames - truth) ** 2
    error = error.mean(-1)[mask].mean() if mask is not None else error.mean()
    return 10 * math.log10(1 / max(float(error), 1e-10))


def recalling(pipe: SlowFastVGenPipeline, frames: list[np.ndarray], known: list[np.ndarray]):
    """`pipe.recall_turned_views` replaced, for this pipeline object only, by these frames on these pixels."""
    def recall_turned_views(self, views, poses, recalled, context):
        latents = self.encode_frames(np.clip(np.stack(frames), 0, 1)).cpu()
        return latents, recall_mask(np.stack(known), tuple(latents.shape[-2:]))
    return types.MethodType(recall_turned_views, pipe)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Memory Maze world model folder")
    parser.add_argument("--seeds", type=int, nargs=2, default=(2000, 2020), metavar=("FIRST", "STOP"))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    pipe = SlowFastVGenPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    chunk, step = pipe.context_window // 2, 360 / HEADINGS
    settings = temp_lora_preset("poses")
    gains: dict[str, dict[str, list[float]]] = {}
    frames_rows: dict[str, dict[str, list[list[float]]]] = {}
    for seed in range(*args.seeds):
        world = MemoryMaze(seed, view_size=pipe.native_size)
        start = gate_start(world)
        for motion, direction in (("left", -1), ("right", 1)):
            views = [world.camera_view(pose) for pose in world.path(["walk forward", motion], chunk, start)]
            rollout = np.stack([view.frame for view in views]).astype(np.float32) / 255
            context, target = rollout[1:1 + chunk], rollout[1 + chunk:]
            context_latents = pipe.encode_frames(context)
            learned = memory_of(pipe, [pipe.encode_frames(rollout[:1]), context_latents], ["walk forward"],
                                settings=settings, generator=torch.Generator().manual_seed(seed))
            turned = [turned_view(context[-1], pipe.camera_fovy, direction * step * (i + 1)) for i in range(chunk)]
            exact_known = [covered for _, covered in turned]
            sources = views[chunk::-1]  # the last context frame first, back to the start frame
            reprojected = [reproject(views[1 + chunk + i], sources) for i in range(chunk)]
            reprojected_frames, reprojected_known = [frame for frame, _ in reprojected], [known for _, known in reprojected]
            recalls = {  # name: (what is recalled, where, the override that recalls it; None: the product's own)
                "product": ([frame for frame, _ in turned], exact_known, None),
                "exact_turned_views": (list(target), exact_known, recalling(pipe, list(target), exact_known)),
                "reprojected_3d": (reprojected_frames, reprojected_known,
                                   recalling(pipe, reprojected_frames, reprojected_known)),
            }
            repeat = psnr(np.repeat(context[-1:], chunk, 0), target)
            for name, (recalled, known, override) in recalls.items():
                if override is not None:
                    pipe.recall_turned_views = override
                try:
                    frames = pipe(TRAIN_PARAPHRASES[motion][0], context_latents=context_latents, num_frames=chunk,
                                  num_inference_steps=args.steps, guidance_scale=args.guidance,
                                  generator=torch.Generator().manual_seed(seed), memory=learned,
                                  output_type="np").frames[0]
                finally:
                    pipe.__dict__.pop("recall_turned_views", None)
                gains.setdefault(motion, {}).setdefault(name, []).append(psnr(frames, target) - repeat)
                rows = frames_rows.setdefault(f"{motion}/{name}", {"covered": [], "recall_psnr": []})
                rows["covered"].append([float(k.mean()) for k in known])
                rows["recall_psnr"].append([psnr(r, t, k) if k.any() else float("nan")
                                            for r, t, k in zip(recalled, target, known)])
            print(seed, motion, {name: round(values[name][-1], 2) for name, values in [(n, gains[motion]) for n in RECALLS]},
                  file=sys.stderr, flush=True)
    result = {"turns_per_motion": len(range(*args.seeds))}
    for motion, by_recall in gains.items():
        for name, values in by_recall.items():
            rows = frames_rows[f"{motion}/{name}"]
            result[f"{motion}/{name}"] = {
                "gain_over_repeat_last": {"mean": round(float(np.mean(values)), 3), "std": round(float(np.std(values)), 3)},
                "better_than_product": (int(sum(v > p for v, p in zip(values, by_recall["product"])))
                                        if name != "product" else None),
                "covered_per_frame": [round(float(v), 3) for v in np.mean(rows["covered"], 0)],
                "recall_psnr_per_frame": [round(float(v), 2) if not math.isnan(v) else None
                                          for v in np.nanmean(np.array(rows["recall_psnr"], float), 0)],
            }
    print_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
