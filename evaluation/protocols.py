"""How an evaluation makes the videos it scores, one memory setting of one episode at a time.

- `run_setting`: the real loop, `SlowFastVGenPipeline.stream_episode` (the loop of `generate`, the nodes and
  the workflows), every chunk from the model's own last chunk, the memory learned as it goes;
- `teacher_forced_revisit`: every chunk from the TRUE previous chunk, with the memory of the true chunks so
  far (memory read without drift);
- `oracle_revisit`: the memory of the true first half, then the second half generated with it frozen;
- `next_chunk_quality`: gate 1, one chunk from a true context, for each move.

All settings of an episode share its seed, so they sample the same noise and differ by memory alone
(Temp-LoRA updates draw from a stream of their own, `memory_generator_for`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.toyworld import DIRECTIONS, HELD_OUT_PARAPHRASES, TRAIN_PARAPHRASES, ToyWorld
from ..pipelines import (DEFAULT_GUIDANCE, DEFAULT_STEPS, SlowFastVGenPipeline, memory_generator_for,
                         scheduler_from_name)
from ..pipelines.memorize import memorize, memory_of
from . import metrics
from .options import EvaluationOptions


def load_pipeline(model: str, scheduler: str | None = None) -> SlowFastVGenPipeline:
    """The world model to evaluate, with the sampler asked for (default: its own)."""
    try:
        pipe = SlowFastVGenPipeline.from_pretrained(model)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"--model {model!r} cannot be loaded: {message}") from None
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = scheduler_from_name(scheduler, pipe.scheduler.config)
    return pipe


def decode(pipe: SlowFastVGenPipeline, latents: torch.Tensor) -> np.ndarray:
    """Latents -> frames (F, H, W, 3) in [0, 1], a few at a time."""
    return np.concatenate([part[0] for part in pipe.iter_decode([latents], output_type="np")])


def run_setting(pipe: SlowFastVGenPipeline, episode, name: str, options: EvaluationOptions,
                start_latents: torch.Tensor) -> torch.Tensor:
    """The whole episode's latents (start frame first) with one memory setting, through the product's loop."""
    config, chunk_kwargs = options.memory_setting(name)
    chunks = pipe.stream_episode(
        list(episode.actions), start_latents=start_latents, memory_settings=config, update_memory=config is not None,
        num_frames=episode.chunk_frames, generator=torch.Generator().manual_seed(episode.world.seed),
        num_inference_steps=options.steps, guidance_scale=options.guidance, **chunk_kwargs,
    )
    return torch.cat([start_latents.cpu()] + [chunk.latents for chunk in chunks], dim=2)


def true_latents(pipe: SlowFastVGenPipeline, episode, truth: np.ndarray, chunks: int) -> list[torch.Tensor]:
    """The true start frame and first `chunks` chunks as latents: X_0, X_1 ... (what an oracle memory learns)."""
    return [pipe.encode_frames(truth[:1])] + [pipe.encode_frames(truth[episode.chunk_slice(i)]) for i in range(chunks)]


def oracle_revisit(pipe: SlowFastVGenPipeline, episode, name: str, options: EvaluationOptions,
                   truth: np.ndarray, revisits) -> dict:
    """The memory of the true first half, then the second half generated with it frozen, against the truth."""
    config, chunk_kwargs = options.memory_setting(name)
    half = episode.num_chunks // 2
    encoded = true_latents(pipe, episode, truth, half)
    generator = torch.Generator().manual_seed(episode.world.seed)
    memory = None
    if config is not None:
        memory = memory_of(pipe, encoded, episode.actions[:half], settings=config,
                           generator=memory_generator_for(generator))
    chunks = pipe.stream_episode(
        list(episode.actions[half:]), start_latents=encoded[-1], memory=memory, update_memory=False,
        num_frames=episode.chunk_frames, generator=generator, num_inference_steps=options.steps,
        guidance_scale=options.guidance, **chunk_kwargs,
    )
    generated = decode(pipe, torch.cat([chunk.latents for chunk in chunks], dim=2))
    video = np.concatenate([truth[:episode.chunk_slice(half).start], generated])
    second_half = range(half, episode.num_chunks)
    masks = np.concatenate([revisits.masks(i) for i in second_half])
    frames = np.concatenate([video[episode.chunk_slice(i)] for i in second_half])
    reference = np.concatenate([truth[episode.chunk_slice(i)] for i in second_half])
    return {"oracle_revisit_psnr_truth": metrics.masked_psnr(frames, reference, masks)}


def teacher_forced_revisit(pipe: SlowFastVGenPipeline, episode, name: str, options: EvaluationOptions,
                           truth: np.ndarray, revisits) -> dict:
    """Memory read without drift: every chunk generated from the TRUE previous chunk, with the memory of the
    true chunks so far (updated after each chunk as the episode loop does), revisit PSNR against the truth.
    What memory brings back when the context is right; the real loop adds the model's own drift."""
    config, chunk_kwargs = options.memory_setting(name)
    encoded = true_latents(pipe, episode, truth, episode.num_chunks)
    generator = torch.Generator().manual_seed(episode.world.seed)
    # The memory before chunk i has learned the true chunks up to it; the last chunk's update is never used.
    memories = memorize(pipe, encoded[:-1], episode.actions[:-1], settings=config,
                        generator=memory_generator_for(generator))
    memory, frames, reference, masks = None, [], [], []
    for index, action in enumerate(episode.actions):
        chunk = pipe(action, context_latents=encoded[index], num_frames=episode.chunk_frames, memory=memory,
                     generator=generator, num_inference_steps=options.steps, guidance_scale=options.guidance,
                     output_type="latent", **chunk_kwargs).latents
        if revisits.masks(index).any():
            frames.append(decode(pipe, chunk))
            reference.append(truth[episode.chunk_slice(index)])
            masks.append(revisits.masks(index))
        if config is not None and index + 1 < episode.num_chunks:
            memory = next(memories)
    if not frames:
        return {}
    psnr = metrics.masked_psnr(np.concatenate(frames), np.concatenate(reference), np.concatenate(masks))
    return {"teacher_forced_revisit_psnr_truth": psnr}


# ---------------------------------------------------------------------------------------------- next-chunk quality


def camera_motion(frames: np.ndarray) -> np.ndarray:
    """Mean camera motion (dx, dy) in pixels per frame, from OpenCV's phase correlation of consecutive frames."""
    import cv2

    grey = [cv2.cvtColor(f.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64) for f in frames]
    # The picture moves against the camera, hence the minus.
    return -np.mean([cv2.phaseCorrelate(a, b)[0] for a, b in zip(grey, grey[1:])], axis=0)


def next_chunk_quality(pipe: SlowFastVGenPipeline, seeds: range, steps: int = DEFAULT_STEPS,
                       guidance: float = DEFAULT_GUIDANCE) -> dict:
    """Gate 1: from a true context chunk, the next chunk for "stay" and each move (a seen and a held-out
    wording) against the truth: PSNR, SSIM and camera motion error; baselines: repeat the last frame, the
    VAE's own reconstruction."""
    chunk = pipe.context_window // 2
    rows: dict[str, dict[str, list]] = {}
    for seed in seeds:
        world = ToyWorld(seed, view_size=pipe.native_size)
        for direction in DIRECTIONS:
            truth = world.rollout(["move right", direction], chunk)[1:].astype(np.float32) / 255
            context, target = truth[:chunk], truth[chunk:]
            context_latents = pipe.encode_frames(context)
            true_motion = np.array(DIRECTIONS[direction]) * world.step
            for wording, phrase in (("seen", TRAIN_PARAPHRASES[direction][0]),
                                    ("held_out", HELD_OUT_PARAPHRASES[direction][0])):
                frames = pipe(phrase, context_latents=context_latents, num_frames=chunk, num_inference_steps=steps,
                              guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                              output_type="np").frames[0]
                row = rows.setdefault(f"{direction}/{wording}", {})
                row.setdefault("psnr", []).append(metrics.masked_psnr(frames, target))
                row.setdefault("ssim", []).append(metrics.masked_ssim(frames, target))
                row.setdefault("motion_error_px", []).append(
                    float(np.abs(camera_motion(np.concatenate([context[-1:], frames])) - true_motion).max()))
            row = rows.setdefault(f"{direction}/baselines", {})
            row.setdefault("repeat_last_psnr", []).append(metrics.masked_psnr(np.repeat(context[-1:], chunk, 0), target))
            ceiling = pipe.postprocess(pipe.encode_frames(target), "np")[0]
            row.setdefault("vae_ceiling_psnr", []).append(metrics.masked_psnr(ceiling, target))
            row.setdefault("truth_motion_error_px", []).append(
                float(np.abs(camera_motion(np.concatenate([context[-1:], target])) - true_motion).max()))
    return {name: {k: round(float(np.mean(v)), 3 if k == "ssim" else 2) for k, v in row.items()}
            for name, row in rows.items()}
