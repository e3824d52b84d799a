#!/usr/bin/env python
"""How much of a Memory Maze turn is known before it is generated: the last frame before a turn, warped by
the turn's rotation, against the true frames of the turn (gate 1's starts and held-out mazes).

A camera that turns on the spot sees the same scene through a rotation, which moves every pixel by the
homography K R K^-1 whatever the depth (K: the egocentric camera's intrinsics, from its vertical field of
view in the package's MuJoCo model). So part of each turning frame is the last frame warped; the rest
came into view. Scores, per frame of a 4-frame turn: the share of the frame the warp covers, and PSNR on
that share for the warped frame and for repeating the last frame (the baseline gate 1 uses).

With `--model`, also what recalling the warped view would do (not in the product yet): the model's turn
sampled as gate 1 samples it, plain and with the warped frames held at their known latent pixels during
sampling (the mechanism by which the pose and panorama memories recall known places: `recall_places`),
the same noise, whole frames against the truth.

    python benchmarks/maze_turn_warp.py --seeds 2000 2008
    python benchmarks/maze_turn_warp.py --seeds 2000 2008 --model models/memory-maze
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

import cv2
import numpy as np
import torch

from slowfast_vgen.data.memory_maze import HEADINGS, MemoryMaze, _scene
from slowfast_vgen.data.memory_maze_episodes import _pose_at
from slowfast_vgen.evaluation.maze_quality import _context_start


def rotation_homography(fovy_degrees: float, size: int, yaw_degrees: float) -> np.ndarray:
    """The pixel map of a square camera of `fovy_degrees` turned by `yaw_degrees` (positive: to the right)."""
    focal = size / 2 / math.tan(math.radians(fovy_degrees) / 2)
    intrinsics = np.array([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]])
    a = math.radians(yaw_degrees)
    rotation = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    return intrinsics @ rotation @ np.linalg.inv(intrinsics)


def psnr_on(mask: np.ndarray, frame: np.ndarray, truth: np.ndarray) -> float:
    error = float(((frame - truth)[mask] ** 2).mean())
    return 10 * math.log10(1 / max(error, 1e-10))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs=2, default=(2000, 2008), metavar=("FIRST", "STOP"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", help="also sample the turns with this world model, plain and recalling the warp")
    args = parser.parse_args()
    pipe = None
    if args.model:
        from slowfast_vgen.evaluation import metrics
        from slowfast_vgen.pipelines import SlowFastVGenPipeline
        from slowfast_vgen.pipelines.panorama import recall_mask

        pipe = SlowFastVGenPipeline.from_pretrained(args.model)
        pipe.set_progress_bar_config(disable=True)
        args.size = pipe.native_size
    step = 360 / HEADINGS
    rows: dict[str, list[list[float]]] = {"covered": [[] for _ in range(4)], "warped": [[] for _ in range(4)],
                                          "repeat_last": [[] for _ in range(4)], "sampled": [[] for _ in range(4)],
                                          "sampled_recalling_the_warp": [[] for _ in range(4)],
                                          "repeat_last_whole_frame": [[] for _ in range(4)]}
    fovy = None
    for seed in range(*args.seeds):
        world = MemoryMaze(seed, view_size=args.size)
        (_, physics), _, _ = _scene(world.size, world.seed)
        fovy = float(physics.model.cam_fovy[physics.model.name2id("walker/egocentric", "camera")])
        start = _pose_at(world, _context_start(world, random.Random(f"gate:{seed}")))
        for motion, direction in (("turn left", -1), ("turn right", 1)):
            truth = world.rollout(["walk forward", motion], 4, start)[1:].astype(np.float32) / 255
            last, turn = truth[3], truth[4:]
            views, known = [], []
            for i in range(4):
                homography = rotation_homography(fovy, args.size, direction * step * (i + 1))
                warped = cv2.warpPerspective(last, homography, (args.size, args.size), flags=cv2.INTER_LINEAR,
                                             borderValue=(-1, -1, -1))
                covered = warped[..., 0] >= 0
                views.append(np.clip(warped, 0, 1))
                known.append(covered)
                rows["covered"][i].append(float(covered.mean()))
                if covered.mean() > 0.05:
                    rows["warped"][i].append(psnr_on(covered, warped, turn[i]))
                    rows["repeat_last"][i].append(psnr_on(covered, last, turn[i]))
            if pipe is not None:
                recalled = (pipe.encode_frames(np.stack(views)), recall_mask(np.stack(known), (args.size // 4,) * 2))
                context = pipe.encode_frames(truth[:4])
                for name, recall in (("sampled", None), ("sampled_recalling_the_warp", recalled)):
                    if recall is not None:  # an experiment: the warp stands in for what a memory would recall
                        pipe.prepare_recall = lambda *_, recall=recall, **__: recall
                    frames = pipe(motion, context_latents=context, num_frames=4,
                                  generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
                    pipe.__dict__.pop("prepare_recall", None)
                    for i in range(4):
                        rows[name][i].append(metrics.masked_psnr(frames[i:i + 1], turn[i:i + 1]))
                for i in range(4):
                    rows["repeat_last_whole_frame"][i].append(metrics.masked_psnr(last[None], turn[i:i + 1]))
    result = {"fovy": fovy, "turns": 2 * len(range(*args.seeds)),
              **{name: [round(float(np.mean(v)), 3) if v else None for v in values] for name, values in rows.items()}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
