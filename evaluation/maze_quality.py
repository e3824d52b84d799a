"""Gate 1 in Memory Maze: from a true context chunk, is each action's next chunk right?

For every held-out maze, the context is a chunk of true frames ending at a free cell where walking forward
and back are both possible; then "stay" and each motion, in a seen and a held-out wording, are generated
and scored against the true frames (PSNR, SSIM). Baselines: repeating the last context frame, and the
VAE's own reconstruction of the truth (the ceiling any generation can reach).

    python -m slowfast_vgen.evaluation.maze_quality MODEL --seeds 2000 2020
    python -m slowfast_vgen.evaluation.maze_quality MODEL --seeds 2000 2008 --samples 4   # per frame
    python -m slowfast_vgen.evaluation.maze_quality MODEL --memory poses   # as an episode with its memory
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np
import torch

from ..data.memory_maze import HELD_OUT_PARAPHRASES, MOTIONS, TRAIN_PARAPHRASES, MemoryMaze, Pose
from ..data.memory_maze_episodes import MazeStart, _is_free_cell, _ahead, _pose_at
from ..pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS, SlowFastVGenPipeline
from ..pipelines.memorize import memory_of
from ..pipelines.memory_settings import TempLoRAConfig, settings_from_json, temp_lora_preset
from . import metrics
from .report import print_json


def _context_start(world: MemoryMaze, rng: random.Random) -> MazeStart:
    """A cell and axis heading with a free cell ahead and behind (so every motion can play a whole chunk),
    reached by walking forward into it (so the context chunk is a walk)."""
    options = []
    for row, column in zip(*np.nonzero(world.layout)):
        cell = (int(column), int(row))
        for heading in range(0, 16, 4):
            behind = _ahead(cell, heading + 8)
            if (_is_free_cell(world, _ahead(cell, heading)) and _is_free_cell(world, behind)
                    and _is_free_cell(world, _ahead(behind, heading + 8))):
                options.append(MazeStart(behind, heading))
    return rng.choice(options)


def gate_start(world: MemoryMaze) -> Pose:
    """The pose gate 1's context chunk starts from in `world` (`_context_start`, drawn from the maze's seed, so
    the same in every run): where the benchmarks of Memory Maze's turns and `retrace` start too."""
    return _pose_at(world, _context_start(world, random.Random(f"gate:{world.seed}")))


def maze_next_chunk_quality(pipe: SlowFastVGenPipeline, seeds: range, steps: int = DEFAULT_STEPS,
                            guidance: float = DEFAULT_GUIDANCE, samples: int = 1,
                            memory: TempLoRAConfig | None = None) -> dict:
    """Per motion and wording: mean PSNR / SSIM of the generated next chunk against the truth, and the
    baselines, over the mazes of `seeds`. With `samples` > 1 also, per motion and frame of the chunk, the
    PSNR of one sample (the seen wording's), of the mean of `samples` samples of different noise, and of
    repeating the last frame, and the whole chunk's PSNR of that mean (`MOTION/per_frame`): where in a
    chunk a motion fails, and what sampling one world instead of the average costs in PSNR.

    With a `memory` setting, each chunk is generated as an episode of the product would make it: the memory
    has learned the start frame and the true context chunk (`memory_of`, as the teacher-forced protocol of
    `evaluate` learns its chunks), and samples with it, the same noise as without."""
    chunk = pipe.context_window // 2
    rows: dict[str, dict[str, list]] = {}
    for seed in seeds:
        world = MemoryMaze(seed, view_size=pipe.native_size)
        start = gate_start(world)
        for motion in MOTIONS:
            rollout = world.rollout(["walk forward", motion], chunk, start).astype(np.float32) / 255
            truth = rollout[1:]
            context, target = truth[:chunk], truth[chunk:]
            context_latents = pipe.encode_frames(context)
            learned = None
            if memory is not None:
                learned = memory_of(pipe, [pipe.encode_frames(rollout[:1]), context_latents], ["walk forward"],
                                    settings=memory, generator=torch.Generator().manual_seed(seed))

            def sample(phrase: str, noise_seed: int) -> np.ndarray:
                return pipe(phrase, context_latents=context_latents, num_frames=chunk, num_inference_steps=steps,
                            guidance_scale=guidance, generator=torch.Generator().manual_seed(noise_seed),
                            memory=learned, output_type="np").frames[0]

            for wording, phrase in (("seen", TRAIN_PARAPHRASES[motion][0]), ("held_out", HELD_OUT_PARAPHRASES[motion][0])):
                frames = sample(phrase, seed)
                if samples > 1 and wording == "seen":
                    draws = [frames] + [sample(phrase, seed + 100 * k) for k in range(1, samples)]
                    average, per_frame = np.mean(draws, 0), rows.setdefault(f"{motion}/per_frame", {})
                    per_frame.setdefault(f"mean_of_{samples}_chunk", []).append(metrics.masked_psnr(average, target))
                    for i in range(chunk):
                        truth_i = target[i:i + 1]
                        per_frame.setdefault(f"sample_frame{i + 1}", []).append(metrics.masked_psnr(frames[i:i + 1], truth_i))
                        per_frame.setdefault(f"mean_of_{samples}_frame{i + 1}", []).append(
                            metrics.masked_psnr(average[i:i + 1], truth_i))
                        per_frame.setdefault(f"repeat_last_frame{i + 1}", []).append(
                            metrics.masked_psnr(context[-1:], truth_i))
                row = rows.setdefault(f"{motion}/{wording}", {})
                row.setdefault("psnr", []).append(metrics.masked_psnr(frames, target))
                row.setdefault("ssim", []).append(metrics.masked_ssim(frames, target))
            row = rows.setdefault(f"{motion}/baselines", {})
            row.setdefault("repeat_last_psnr", []).append(metrics.masked_psnr(np.repeat(context[-1:], chunk, 0), target))
            ceiling = pipe.postprocess(pipe.encode_frames(target), "np")[0]
            row.setdefault("vae_ceiling_psnr", []).append(metrics.masked_psnr(ceiling, target))
    return {name: {key: {"mean": round(float(np.mean(v)), 3), "std": round(float(np.std(v)), 3), "n": len(v)}
                   for key, v in row.items()} for name, row in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slowfast_vgen.evaluation.maze_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Memory Maze world model folder")
    parser.add_argument("--seeds", type=int, nargs=2, default=(2000, 2020), metavar=("FIRST", "STOP"),
                        help="held-out mazes FIRST..STOP-1 (default: 2000 2020)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--samples", type=int, default=1,
                        help="also score each motion per frame: one sample, the mean of this many, repeating the "
                             "last frame (default 1: not)")
    parser.add_argument("--memory", metavar="SETTING",
                        help="generate with a memory that learned the start frame and the context: a Temp-LoRA "
                             "preset (e.g. poses) or its settings as JSON (default: no memory, the model alone)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)
    memory = None
    if args.memory:
        try:
            memory = (settings_from_json(args.memory) if args.memory.lstrip().startswith(("{", "["))
                      else temp_lora_preset(args.memory))
        except (ValueError, TypeError) as error:
            parser.error(f"--memory: {error}")
    pipe = SlowFastVGenPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}.")
    result = maze_next_chunk_quality(pipe, range(*args.seeds), args.steps, args.guidance, args.samples, memory)
    print_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
