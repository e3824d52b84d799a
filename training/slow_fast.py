"""The slow-fast learning loop: paper Algorithm 1 (b), section 3.3.

    1  while not converged:                                   # the trainer's steps (`train.run`)
    3      for each episode (one per process and step):      # `slow_fast_step`
    5          X_0 ... X_I  <- its true chunks                # X_0: the start frame
    6          Θ_0 <- a fresh memory
    7-10       for i in 0 .. I-1:                             # `inner_loop`
                   record (X_i, X_{i+1}, Θ_i)
                   Θ_{i+1} <- fast update of Θ_i on X_i ⊕ X_{i+1}   (Temp-LoRA, any TempLoRAConfig)
    13-16  update Φ on the records with Φ + Θ_i, Θ frozen     # `learn_episode`: the gradient reaches Φ only

The records are streamed, not stored: Φ does not change within an episode, so the gradient of record i
can be taken as soon as it is made and Θ_i dropped before Θ_{i+1} is trained. What is kept at any time is
one memory and the episode's latents, whatever the episode's length. Φ steps once per episode (the mean
over its records), with the gradients all-reduced over processes (each process its own episode and Θ).
The loss is slow learning's own masked conditional loss (`losses.masked_diffusion_loss`), the encoder the
pipeline's (`encode_pixels`), the fast update the pipeline's (`update_memory`, through `memorize`).

The episode streams live in `data/streams.py`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..data import streams
from ..data.episodes import PATH_FAMILIES
from ..data.retrace import retrace_reverse_actions
from ..pipelines import EpisodicMemory, SlowFastVGenPipeline, TempLoRAConfig, memory_generator_for
from ..pipelines._deprecation import deprecated_aliases
from ..pipelines.memorize import memorize
from ..pipelines.memory_settings import settings_from_json
from ..pipelines.temp_lora import memory_applied

__all__ = ["PATH_FAMILIES", "Record", "episode_chunks", "episode_memory_generator", "gradients_finite",
           "inner_loop", "learn_episode", "parse_temp_lora", "slow_fast_step", "warn_skipped"]

LossOf = Callable[[torch.nn.Module, torch.Tensor, int, str], torch.Tensor]


@dataclass
class Record:
    """(X_i, X_{i+1}, Θ_i): a chunk, the action that led to the next one, the next one, the memory before it."""

    previous: torch.Tensor
    action: str
    target: torch.Tensor
    memory: EpisodicMemory


def slow_fast_step(accelerator, model: torch.nn.Module, pipe: SlowFastVGenPipeline, stream,
                   config: TempLoRAConfig | None, loss_of: LossOf,
                   parameters: list[torch.nn.Parameter]) -> tuple[torch.Tensor, bool]:
    """Algorithm 1 (b) over one episode of `stream` (lines 3-16; line 1's loop is the trainer's steps).

    Takes its own gradients (Φ's, all-reduced over processes); returns the mean loss over the episode's
    records and whether every process's gradients are finite (the trainer skips Φ's step when not).
    """
    # Line 3: a sample (x, episode) of D; this process's episode for this step.
    frames, actions, path_seed = stream.next_episode()
    # Line 5: the episode as chunks X_0 ... X_I, encoded once.
    chunks = episode_chunks(pipe, frames, pipe.context_window // 2, accelerator.device)
    # Lines 6-10: Θ_0, then each record (X_i, X_{i+1}, Θ_i) and Θ's fast update, as the records are used.
    records = inner_loop(pipe, chunks, actions, config, episode_memory_generator(path_seed),
                         retrace_reverse_actions(actions))
    # Lines 13-16: Φ's gradient on every record with its Θ_i applied and frozen.
    loss = learn_episode(accelerator, model, pipe, records, len(actions), loss_of)
    return torch.tensor(loss), gradients_finite(accelerator, parameters)


def inner_loop(pipe: SlowFastVGenPipeline, chunks: list[torch.Tensor], actions: list[str],
               config: TempLoRAConfig | None, generator: torch.Generator,
               reverse_actions: list[str | None] | None = None) -> Iterator[Record]:
    """Algorithm 1 (b), lines 6-10: yield (X_i, X_{i+1}, Θ_i), then train Θ on X_i ⊕ X_{i+1} (Θ_0 is empty).

    `config=None` never trains Θ: every record holds the empty memory, which is plain slow learning on the
    same episodes (the paper's "wo Loop" ablation, step for step). `reverse_actions` (one per chunk, or
    None) are the texts of the way back through each chunk, for memories that learn it (planning's retrace
    task: the instruction); default: the world model's reverse of each action."""
    if len(chunks) != len(actions) + 1 or len(actions) < 2:
        raise ValueError(f"An episode needs at least two chunks after its start and one action per chunk; got "
                         f"{len(chunks) - 1} chunks and {len(actions)} actions.")
    memory = pipe.new_memory(config)  # line 6
    updates = memorize(pipe, chunks, actions, memory, generator=generator, reverse_actions=reverse_actions or None)
    for index, action in enumerate(actions):
        yield Record(chunks[index], action, chunks[index + 1], memory)  # line 8
        if config is not None:
            memory = next(updates)  # line 9: the fast learning algorithm, Algorithm 1 (a) lines 11-14


def learn_episode(accelerator, model, pipe: SlowFastVGenPipeline, records: Iterator[Record], num_records: int,
                  loss_of: LossOf) -> float:
    """Algorithm 1 (b), lines 13-16 over one episode's records: the gradient of the mean slow-learning loss
    with each record's memory applied and frozen (its LoRA tensors take no gradient). Returns the mean loss.

    `loss_of(model, latents, num_context, action)` is slow learning's masked loss on latents X_i ⊕ X_{i+1}.
    Gradients are all-reduced once, with the last record.
    """
    total = 0.0
    for index, record in enumerate(records):
        last = index == num_records - 1
        with memory_applied(pipe.unet, record.memory) as lora:  # line 14: Φ + Θ_i
            for parameter in lora.values():  # line 16: Θ frozen (peft marks an enabled adapter trainable)
                parameter.requires_grad_(False)
            syncing = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with syncing:
                latents = torch.cat([record.previous, record.target], dim=2)
                loss = loss_of(model, latents, record.previous.shape[2], record.action)  # line 15
                accelerator.backward(loss / num_records)
        total += loss.item()
    return total / num_records


def gradients_finite(accelerator, parameters: list[torch.nn.Parameter]) -> bool:
    """Whether every process's gradients are finite (one NaN anywhere and no process steps)."""
    bad = torch.tensor(0.0, device=accelerator.device)
    for parameter in parameters:
        if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
            bad += 1
    return accelerator.reduce(bad, reduction="sum").item() == 0


def episode_chunks(pipe: SlowFastVGenPipeline, frames: np.ndarray, chunk_frames: int, device) -> list[torch.Tensor]:
    """The true chunks X_0 (the start frame) ... X_I as latents, encoded once."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).unsqueeze(0).to(device) * 2 - 1
    with torch.no_grad():
        latents = pipe.encode_pixels(video)
    return [latents[:, :, :1]] + list(latents[:, :, 1:].split(chunk_frames, dim=2))


def episode_memory_generator(path_seed: int) -> torch.Generator:
    """The stream an episode's Temp-LoRA updates draw from, as `stream_episode` derives it from a seed."""
    return memory_generator_for(torch.Generator().manual_seed(path_seed))


def parse_temp_lora(text: str | None) -> TempLoRAConfig | None:
    """`--temp-lora` JSON (TempLoRAConfig fields) -> the fast learner's settings;
    "none" -> no fast learning (the "wo Loop" ablation: the same episodes and steps, Θ always empty).

    Raises `ValueError` naming the option and what to give instead (the command line exits with it)."""
    if not text:
        return TempLoRAConfig()
    if text.strip().lower() == "none":
        return None
    try:
        return settings_from_json(text)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--temp-lora {text!r}: {error}. Give TempLoRAConfig fields as JSON, e.g. "
                         "'{\"learning_rate\": 1e-3, \"steps_per_update\": 2}'.") from None


def warn_skipped(step: int) -> None:
    warnings.warn(f"slow-fast step {step}: a loss or gradient was not finite on some process; Φ was not updated "
                  "(the step is skipped) and training carries on.", RuntimeWarning, stacklevel=2)


__getattr__ = deprecated_aliases(__name__, {
    "EpisodeStream": (streams.EpisodeStream, "slowfast_vgen.data.streams.EpisodeStream"),
    "ManifestEpisodeStream": (streams.ManifestEpisodeStream, "slowfast_vgen.data.streams.ManifestEpisodeStream"),
    "TRAINING_FAMILIES": (streams.TRAINING_FAMILIES, "slowfast_vgen.data.streams.TRAINING_FAMILIES"),
})
