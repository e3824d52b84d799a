#!/usr/bin/env python
"""How much of a Memory Maze turn is known before it is generated: the last frame before a turn, turned by
the pose memory's `turn_views.turned_view`, against the true frames of the turn (gate 1's starts and
held-out mazes).

A camera that turns on the spot sees the same scene through a rotation, which moves every pixel by the
homography K R K^-1 whatever the depth (K: the egocentric camera's intrinsics, from its vertical field of
view in the package's MuJoCo model); Memory Maze's camera sits a little ahead of the axis it turns about,
so the map is close rather than exact. Scores, per frame of a 4-frame turn: the share of the frame the
turned view covers, and PSNR on that share for the turned view and for repeating the last frame (the
baseline gate 1 uses).

What recalling the turned views does to the generated turns is measured by gate 1 with the product's
memory: `python -m slowfast_vgen.evaluation.maze_quality MODEL --memory poses`.

    python benchmarks/maze_turn_warp.py --seeds 2000 2008
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from slowfast_vgen.data.memory_maze import HEADINGS, MemoryMaze, camera_fovy
from slowfast_vgen.evaluation.maze_quality import gate_start
from slowfast_vgen.pipelines.turn_views import turned_view


def psnr_on(mask: np.ndarray, frame: np.ndarray, truth: np.ndarray) -> float:
    error = float(((frame - truth)[mask] ** 2).mean())
    return 10 * math.log10(1 / max(error, 1e-10))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs=2, default=(2000, 2008), metavar=("FIRST", "STOP"))
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    step, fovy = 360 / HEADINGS, camera_fovy()
    rows: dict[str, list[list[float]]] = {"covered": [[] for _ in range(4)], "turned": [[] for _ in range(4)],
                                          "repeat_last": [[] for _ in range(4)]}
    for seed in range(*args.seeds):
        world = MemoryMaze(seed, view_size=args.size)
        start = gate_start(world)
        for motion, direction in (("turn left", -1), ("turn right", 1)):
            truth = world.rollout(["walk forward", motion], 4, start)[1:].astype(np.float32) / 255
            last, turn = truth[3], truth[4:]
            for i in range(4):
                turned, covered = turned_view(last, fovy, direction * step * (i + 1))
                rows["covered"][i].append(float(covered.mean()))
                if covered.mean() > 0.05:
                    rows["turned"][i].append(psnr_on(covered, turned, turn[i]))
                    rows["repeat_last"][i].append(psnr_on(covered, last, turn[i]))
    result = {"fovy": fovy, "turns": 2 * len(range(*args.seeds)),
              **{name: [round(float(np.mean(v)), 3) if v else None for v in values] for name, values in rows.items()}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
