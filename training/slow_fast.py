"""The slow-fast learning loop: paper Algorithm 1 (b), section 3.3.

    while not converged:                                   # the trainer's steps
        for each episode (one per process and step):
            X_0 ... X_I  <- its true chunks                # X_0: the start frame
            Θ_0 <- a fresh memory
            for i in 0 .. I-1:
                record (X_i, X_{i+1}, Θ_i)                 # inner_loop
                Θ_{i+1} <- fast update of Θ_i on X_i ⊕ X_{i+1}       (Temp-LoRA, any TempLoRAConfig)
        update Φ on the records with Φ + Θ_i, Θ frozen     # learn_episode: the gradient reaches Φ only

The records are streamed, not stored: Φ does not change within an episode, so the gradient of record i
can be taken as soon as it is made and Θ_i dropped before Θ_{i+1} is trained. What is kept at any time is
one memory and the episode's latents, whatever the episode's length. Φ steps once per episode (the mean
over its records), with the gradients all-reduced over processes (each process its own episode and Θ).
The loss is slow learning's own masked conditional loss (`masked_diffusion_loss`), the encoder the
pipeline's (`encode_pixels`), the fast update the pipeline's (`update_memory`).
"""

from __future__ import annotations

import contextlib
import json
import random
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.episodes import PATH_FAMILIES, make_episode
from ..data.manifest import ManifestEpisode, manifest_episodes, read_manifest
from ..data.retrace import make_retrace_task
from ..pipelines import EpisodicMemory, SlowFastVGenPipeline, TempLoRAConfig, memory_generator_for
from ..pipelines.temp_lora import memory_applied


@dataclass
class Record:
    """(X_i, X_{i+1}, Θ_i): a chunk, the action that led to the next one, the next one, the memory before it."""

    previous: torch.Tensor
    action: str
    target: torch.Tensor
    memory: EpisodicMemory


def inner_loop(pipe: SlowFastVGenPipeline, chunks: list[torch.Tensor], actions: list[str],
               config: TempLoRAConfig | None, generator: torch.Generator,
               reverse_actions: list[str | None] | None = None) -> Iterator[Record]:
    """Algorithm 1 (b), inner loop: yield (X_i, X_{i+1}, Θ_i), then train Θ on X_i ⊕ X_{i+1} (Θ_0 is empty).

    `config=None` never trains Θ: every record holds the empty memory, which is plain slow learning on the
    same episodes (the paper's "wo Loop" ablation, step for step). `reverse_actions` (one per chunk, or
    None) are the texts of the way back through each chunk, for memories that learn it (planning's retrace
    task: the instruction); default: the world model's reverse of each action."""
    if len(chunks) != len(actions) + 1 or len(actions) < 2:
        raise ValueError(f"An episode needs at least two chunks after its start and one action per chunk; got "
                         f"{len(chunks) - 1} chunks and {len(actions)} actions.")
    memory = pipe.new_memory(config)
    for index, action in enumerate(actions):
        yield Record(chunks[index], action, chunks[index + 1], memory)
        if config is not None:
            memory = pipe.update_memory(memory, chunks[index], chunks[index + 1], action=action, generator=generator,
                                        reverse_action=reverse_actions[index] if reverse_actions else None)


def learn_episode(accelerator, model, pipe: SlowFastVGenPipeline, records: Iterator[Record], num_records: int,
                  loss_of: Callable[[torch.nn.Module, torch.Tensor, int, str], torch.Tensor]) -> float:
    """Algorithm 1 (b), outer loop over one episode's records: the gradient of the mean slow-learning loss
    with each record's memory applied and frozen (its LoRA tensors take no gradient). Returns the mean loss.

    `loss_of(model, latents, num_context, action)` is slow learning's masked loss on latents X_i ⊕ X_{i+1}.
    Gradients are all-reduced once, with the last record.
    """
    total = 0.0
    for index, record in enumerate(records):
        last = index == num_records - 1
        with memory_applied(pipe.unet, record.memory) as lora:
            for parameter in lora.values():  # Θ frozen (peft marks an enabled adapter trainable)
                parameter.requires_grad_(False)
            syncing = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with syncing:
                latents = torch.cat([record.previous, record.target], dim=2)
                loss = loss_of(model, latents, record.previous.shape[2], record.action)
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


TRAINING_FAMILIES = PATH_FAMILIES + ("retrace",)


class _SeededEpisodes:
    """What every episode stream shares: `min_chunks`..`max_chunks` chunks an episode, and a seeded random
    state that saves with the checkpoint for exact resume."""

    def __init__(self, min_chunks: int, max_chunks: int, seed: int):
        if min_chunks < 2 or max_chunks < min_chunks:
            raise SystemExit(f"--episode-chunks {min_chunks} {max_chunks}: an episode needs at least 2 chunks, and "
                             "the longest may not be shorter than the shortest.")
        self.rng = random.Random(seed)
        self.min_chunks, self.max_chunks = min_chunks, max_chunks

    def state(self) -> list:
        return json.loads(json.dumps(self.rng.getstate()))

    def load_state(self, state: list) -> None:
        self.rng.setstate((state[0], tuple(state[1]), state[2]))


class EpisodeStream(_SeededEpisodes):
    """Seeded ToyWorld episodes with revisits (every path family, lengths `min_chunks`..`max_chunks`) from
    training worlds 1..`world_seeds`; its state saves with the checkpoint for exact resume.

    The "retrace" family is planning's task (`data/retrace.py`): the way out, then the way back learned
    with an instruction paraphrase as its action; its length comes from its legs, not `min_chunks`."""

    def __init__(self, world_seeds: int, min_chunks: int, max_chunks: int, chunk_frames: int, view_size: int,
                 seed: int, families: tuple[str, ...] = PATH_FAMILIES):
        super().__init__(min_chunks, max_chunks, seed)
        self.world_seeds, self.chunk_frames, self.view_size, self.families = world_seeds, chunk_frames, view_size, families

    def next_episode(self) -> tuple[np.ndarray, list[str], int]:
        """Frames (F, H, W, 3) in [0, 1], one action per chunk, and the episode's own seed (for its memory)."""
        world = self.rng.randint(1, self.world_seeds)
        family = self.rng.choice(self.families)
        chunks = self.rng.randint(self.min_chunks, self.max_chunks)
        path_seed = self.rng.getrandbits(32)
        if family == "retrace":
            task = make_retrace_task(world, rng_seed=path_seed, chunk_frames=self.chunk_frames,
                                     view_size=self.view_size)
            return task.episode.frames(), task.training_labels(self.rng), path_seed
        episode = make_episode(world, family, chunks, self.chunk_frames, self.view_size, rng_seed=path_seed)
        return episode.frames(), list(episode.actions), path_seed


class ManifestEpisodeStream(_SeededEpisodes):
    """Episodes from the user's own videos: consecutive clips of one video in a manifest
    (`data.manifest.manifest_episodes`). Each step takes one episode at random and a window of
    `min_chunks`..`max_chunks` of its chunks at a random place in it (whole, when it is shorter), so that
    long recordings cost a bounded step and every part of them is learned. Same interface as `EpisodeStream`."""

    def __init__(self, manifest: str, on_bad_record: str, min_chunks: int, max_chunks: int, chunk_frames: int,
                 view_size: int, seed: int):
        super().__init__(min_chunks, max_chunks, seed)
        try:
            self.episodes: list[ManifestEpisode] = manifest_episodes(read_manifest(manifest, on_bad_record),
                                                                     chunk_frames, 2, on_bad_record)
        except (OSError, ValueError) as error:  # the manifest's own messages name the file and line
            raise SystemExit(f"--manifest: {error}") from None
        if not self.episodes:
            raise SystemExit(f"{manifest}: no episode of at least 2 chunks ({2 * chunk_frames + 1} consecutive frames "
                             "of one video); the slow-fast stage learns from consecutive clips of one video.")
        for episode in self.episodes:
            straddling = episode.straddling_chunks()
            if straddling:
                warnings.warn(f"{episode.video!r}, {episode.lines}: {straddling} of its "
                              f"{episode.num_chunks} chunks hold frames of two clips with different actions and take "
                              f"the action of their first frame; clips that end 1 + k x {chunk_frames} frames after "
                              "the episode's start give every chunk one action.", stacklevel=2)
        self.view_size = view_size

    def next_episode(self) -> tuple[np.ndarray, list[str], int]:
        """Frames (F, H, W, 3) in [0, 1], one action per chunk, and a seed for the episode's memory."""
        episode = self.rng.choice(self.episodes)
        length = min(self.rng.randint(self.min_chunks, self.max_chunks), episode.num_chunks)
        first = self.rng.randint(0, episode.num_chunks - length)
        path_seed = self.rng.getrandbits(32)
        actions = episode.chunk_actions()[first:first + length]
        return episode.frames(first, length, self.view_size), actions, path_seed


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
    """`--temp-lora` JSON (TempLoRAConfig fields) -> the fast learner's settings, checked before training;
    "none" -> no fast learning (the "wo Loop" ablation: the same episodes and steps, Θ always empty)."""
    if not text:
        return TempLoRAConfig()
    if text.strip().lower() == "none":
        return None
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("expected a JSON object")
        return TempLoRAConfig.from_fields(fields)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--temp-lora {text!r}: {error}. Give TempLoRAConfig fields as JSON, e.g. "
                         "'{\"learning_rate\": 1e-3, \"steps_per_update\": 2}'.") from None


def warn_skipped(step: int) -> None:
    warnings.warn(f"slow-fast step {step}: a loss or gradient was not finite on some process; Φ was not updated "
                  "(the step is skipped) and training carries on.", RuntimeWarning, stacklevel=2)
