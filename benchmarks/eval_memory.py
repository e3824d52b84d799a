"""Quality gates 2 and 3 of a ToyWorld world model: does Temp-LoRA memory bring places back?

Each episode (a held-out world seed) goes out for `--chunks-out` chunks in one direction and comes back
the same way, so the return revisits views that left the context window long before. PSNR is measured
against the true frames on the **revisited regions only**: the pixels of each return frame that the
chunk's conditioning frames (the previous chunk) do not show, at the true camera positions. Those pixels
can only come from memory (or luck); what the context shows, the model can copy without it.

Gate 2, oracle: Temp-LoRA is trained on the TRUE frames of the outward trip (chunk pairs, as in an
episode), then the return is generated from the true last outward chunk, with that memory and without.
This measures what memory can do, apart from how well the model generates the outward trip.

Gate 3, real: the whole episode is generated from the true start frame, with Temp-LoRA learning after
every chunk, and without memory. What the outward trip showed beyond the start frame was invented by
the model, so the truth cannot come back there; gate 3 measures what the issue asks, how close each
return frame is to the FIRST VISIT of its place (the generated outward frame at the same camera
position, or the start frame), on the same revisited regions. PSNR against the truth is given beside it.

Every chunk of every setting is sampled with the same noise (a generator seeded by episode and chunk;
memory updates draw from a generator of their own), so the settings differ by memory alone.

    python benchmarks/eval_memory.py [MODEL] [--episodes 20] [--rank 32 --lr 1e-4 --steps-per-update 1 ...]
    [--objective transition --direction backward] [--oracle-only]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from slowfast_vgen.data.toyworld import DIRECTIONS, ToyWorld, out_and_back
from slowfast_vgen.paths import DEFAULT_MODEL_DIR
from slowfast_vgen.pipelines import TEMP_LORA_DIRECTIONS, TEMP_LORA_OBJECTIVES, SlowFastVGenPipeline, TempLoRAConfig

EPISODE_DIRECTIONS = ("right", "down", "left", "up")


def revisit_mask(frame_position: tuple[int, int], context_positions: list[tuple[int, int]], size: int) -> np.ndarray:
    """Pixels of the view at `frame_position` that none of the views at `context_positions` shows."""
    x, y = frame_position
    seen = np.zeros((size, size), bool)
    for cx, cy in context_positions:
        left, top = max(cx - x, 0), max(cy - y, 0)
        right, bottom = min(cx + size - x, size), min(cy + size - y, size)
        if left < right and top < bottom:
            seen[top:bottom, left:right] = True
    return ~seen


def masked_psnr(frames: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> float:
    """PSNR (dB, [0, 1] frames) over the masked pixels of a chunk (frames F,H,W,3; masks F,H,W)."""
    error = ((frames - truth) ** 2).mean(-1)[masks]
    return float(10 * np.log10(1.0 / max(error.mean(), 1e-10))) if error.size else float("nan")


class Episode:
    """One out-and-back episode of a held-out world: its actions, true frames and camera positions."""

    def __init__(self, seed: int, chunks_out: int, chunk: int, size: int):
        self.world = ToyWorld(seed, view_size=size)
        direction = EPISODE_DIRECTIONS[seed % len(EPISODE_DIRECTIONS)]
        self.actions = out_and_back(direction, chunks_out)
        self.chunks_out, self.chunk, self.size, self.seed = chunks_out, chunk, size, seed
        # Start half the trip behind the centre, so that the whole trip stays inside the world.
        reach = chunks_out * chunk * self.world.step
        (center_x, center_y), (dx, dy) = self.world.center(), DIRECTIONS[direction]
        self.start = (center_x - dx * reach // 2, center_y - dy * reach // 2)
        self.positions = self.world.path(self.actions, chunk, self.start)
        self.frames = np.stack([self.world.render(*p) for p in self.positions]).astype(np.float32) / 255

    def chunk_slice(self, index: int) -> slice:
        """Frames of chunk `index` (frame 0 is the start frame)."""
        return slice(1 + index * self.chunk, 1 + (index + 1) * self.chunk)

    def first_visits(self) -> np.ndarray:
        """For every frame, the index of the first frame of the episode taken at the same camera position."""
        first: dict[tuple[int, int], int] = {}
        return np.array([first.setdefault(tuple(p), i) for i, p in enumerate(self.positions)])

    def return_masks(self, index: int) -> np.ndarray:
        context = self.positions[self.chunk_slice(index - 1)] if index > 0 else self.positions[:1]
        return np.stack([revisit_mask(p, context, self.size) for p in self.positions[self.chunk_slice(index)]])


def sample_chunk(pipe, action, context, memory, episode: Episode, index: int, args) -> torch.Tensor:
    generator = torch.Generator().manual_seed(episode.seed * 1000 + index)
    return pipe(action, context_latents=context, num_frames=episode.chunk, memory=memory, generator=generator,
                num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="latent").latents


def revisit_psnr(episode: Episode, video: np.ndarray, reference: np.ndarray, returns: range) -> float:
    """Mean masked PSNR of the return chunks of `video` (every frame of the episode) against `reference`."""
    scores = []
    for index in returns:
        frames = episode.chunk_slice(index)
        scores.append(masked_psnr(video[frames], reference[frames], episode.return_masks(index)))
    return float(np.nanmean(scores))


def first_visit_psnr(episode: Episode, video: np.ndarray, returns: range) -> float:
    """Mean masked PSNR of the return chunks of a generated `video` against its own first visits."""
    return revisit_psnr(episode, video, video[episode.first_visits()], returns)


def run_episode(pipe, episode: Episode, config: TempLoRAConfig, args) -> dict[str, float]:
    encode = lambda frames: pipe.encode_frames(list(frames))  # noqa: E731
    update_generator = torch.Generator().manual_seed(episode.seed)
    returns = range(episode.chunks_out, 2 * episode.chunks_out)
    start = encode(episode.frames[:1])
    outward_frames = episode.frames[:episode.chunk_slice(returns.start).start]

    # Gate 2: memory of the true outward trip, then the return from the true last outward chunk.
    oracle = None
    previous = start
    for index in range(episode.chunks_out):
        current = encode(episode.frames[episode.chunk_slice(index)])
        oracle = pipe.update_memory(oracle, previous, current, action=episode.actions[index], config=config,
                                    generator=update_generator)
        previous = current
    results = {}
    for name, memory in (("oracle_memory", oracle), ("oracle_no_memory", None)):
        context, chunks = previous, []
        for index in returns:
            context = sample_chunk(pipe, episode.actions[index], context, memory, episode, index, args)
            chunks.append(context)
        video = np.concatenate([outward_frames, pipe.postprocess(torch.cat(chunks, dim=2), "np")[0]])
        results[name] = revisit_psnr(episode, video, episode.frames, returns)

    if args.oracle_only:
        return results
    # Gate 3: the whole episode generated, with Temp-LoRA learning after every chunk, and without memory.
    for name, learn in (("memory", True), ("no_memory", False)):
        context, memory, chunks = start, None, [start]
        update_generator = torch.Generator().manual_seed(episode.seed)
        for index, action in enumerate(episode.actions):
            chunk = sample_chunk(pipe, action, context, memory, episode, index, args)
            if learn:
                memory = pipe.update_memory(memory, context, chunk, action=action, config=config,
                                            generator=update_generator)
            chunks.append(chunk)
            context = chunk
        video = pipe.postprocess(torch.cat(chunks, dim=2), "np")[0]
        results[name] = first_visit_psnr(episode, video, returns)
        results[f"{name}_vs_truth"] = revisit_psnr(episode, video, episode.frames, returns)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--episodes", type=int, default=20, help="held-out world seeds (training uses 1..64)")
    parser.add_argument("--chunks-out", type=int, default=4, help="chunks out (and as many back)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--rank", type=int, default=TempLoRAConfig.rank)
    parser.add_argument("--lr", type=float, default=TempLoRAConfig.learning_rate)
    parser.add_argument("--steps-per-update", type=int, default=TempLoRAConfig.steps_per_update)
    parser.add_argument("--target", default=TempLoRAConfig.target)
    parser.add_argument("--timestep-range", type=float, nargs=2, default=TempLoRAConfig.timestep_range)
    parser.add_argument("--objective", default=TempLoRAConfig.objective, choices=TEMP_LORA_OBJECTIVES)
    parser.add_argument("--direction", default=TempLoRAConfig.direction, choices=TEMP_LORA_DIRECTIONS)
    parser.add_argument("--action-text", action="store_true",
                        help="learn each clip with its action's text (the reverse action's played backward)")
    parser.add_argument("--replay", type=int, default=TempLoRAConfig.replay,
                        help="earlier clips of the episode rehearsed at every Temp-LoRA step")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                        default=TempLoRAConfig.gradient_checkpointing,
                        help="same memories either way; without it the updates run faster in more memory")
    parser.add_argument("--first-seed", type=int, default=2000, help="held-out world seeds from here on")
    parser.add_argument("--oracle-only", action="store_true", help="gate 2 only: a quicker screen of Temp-LoRA settings")
    args = parser.parse_args()
    config = TempLoRAConfig(rank=args.rank, learning_rate=args.lr, steps_per_update=args.steps_per_update,
                            target=args.target, timestep_range=tuple(args.timestep_range),
                            objective=args.objective, direction=args.direction, action_text=args.action_text,
                            replay=args.replay, gradient_checkpointing=args.gradient_checkpointing)
    pipe = SlowFastVGenPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    chunk = pipe.context_window // 2
    started = time.perf_counter()
    per_episode = []
    for seed in range(args.first_seed, args.first_seed + args.episodes):
        per_episode.append(run_episode(pipe, Episode(seed, args.chunks_out, chunk, pipe.native_size), config, args))
        print(json.dumps({"seed": seed, **{k: round(v, 2) for k, v in per_episode[-1].items()}}), flush=True)
    table = {name: np.array([r[name] for r in per_episode]) for name in per_episode[0]}
    gains = {"oracle": table["oracle_memory"] - table["oracle_no_memory"]}
    if not args.oracle_only:
        gains["real"] = table["memory"] - table["no_memory"]
        gains["real_vs_truth"] = table["memory_vs_truth"] - table["no_memory_vs_truth"]
    summary = {
        "model": args.model, "episodes": args.episodes, "first_seed": args.first_seed,
        "chunks_out": args.chunks_out, "steps": args.steps,
        "guidance": args.guidance, "temp_lora": {k: v for k, v in vars(config).items()},
        "revisit_psnr_db": {name: {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}
                            for name, v in table.items()},
        "memory_gain_db": {name: {"mean": round(float(g.mean()), 2), "std": round(float(g.std()), 2),
                                  "min": round(float(g.min()), 2), "max": round(float(g.max()), 2),
                                  "episodes_improved": int((g > 0).sum())} for name, g in gains.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
