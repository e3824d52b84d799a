"""Endless, seeded streams of training data whose state saves with a checkpoint, for exact resume.

- `SampleStream`: batches of (context, target) clips for slow learning (the VAE, UNet and IDM stages), from
  ToyWorld, recorded Memory Maze episodes or a manifest of the user's videos.
- `EpisodeStream`: whole ToyWorld episodes with revisits, for the slow-fast loop (Algorithm 1 (b)).
- `ManifestEpisodeStream`: whole episodes cut from the consecutive clips of the user's videos.
- `MazeEpisodeStream`: recorded Memory Maze episodes with revisits, for the slow-fast loop in 3-D.

Every stream draws from one `random.Random`; `state()` / `load_state()` (`SeededStream`) save and restore it.
"""

from __future__ import annotations

import json
import random
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch

from . import memory_maze
from .episodes import PATH_FAMILIES, make_episode
from .manifest import ManifestEpisode, ManifestRecord, load_clip, manifest_episodes, read_manifest
from .retrace import make_retrace_task
from .toyworld import Sample, ToyWorld, sample_lengths

# The slow-fast loop's ToyWorld episodes: every path family with revisits, and planning's retrace task.
TRAINING_FAMILIES = PATH_FAMILIES + ("retrace",)


class SeededStream:
    """A stream's seeded random state, which saves as JSON with a checkpoint and loads back for exact resume."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def state(self) -> list:
        return json.loads(json.dumps(self.rng.getstate()))

    def load_state(self, state: list) -> None:
        self.rng.setstate((state[0], tuple(state[1]), state[2]))


# ---------------------------------------------------------------------------------------------- batches


class SampleStream(SeededStream):
    """An endless stream of training batches from one source: ToyWorld `worlds`, recorded Memory Maze
    `episodes` (`memory_maze_episodes.load_cache`) or manifest `records`.

    All clips of a batch share f_p and f_g (so they stack): ToyWorld draws them once per batch, so every
    length pair is trained as often as it is drawn; manifest clips are cut to the shortest of the batch.
    """

    def __init__(self, batch_size: int, image_size: int, context_window: int, seed: int,
                 max_generate: int | None = None, worlds: Sequence[ToyWorld] | None = None,
                 episodes: Sequence[dict] | None = None, records: Sequence[ManifestRecord] | None = None):
        if sum(source is not None for source in (worlds, episodes, records)) != 1:
            raise ValueError("A SampleStream draws from exactly one of worlds, episodes and records.")
        super().__init__(seed)
        self.batch_size, self.image_size, self.context_window = batch_size, image_size, context_window
        self.max_generate = max_generate or context_window // 2
        self.worlds, self.episodes, self.records = worlds, episodes, records

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, list[str]]]:
        while True:
            samples = self.next_batch()
            num_context = min(len(s.context) for s in samples)
            num_generate = min(len(s.target) for s in samples)
            clips = np.stack([np.concatenate([s.context[-num_context:], s.target[:num_generate]]) for s in samples])
            video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
            yield video, num_context, [s.action for s in samples]

    def next_batch(self) -> list[Sample]:
        if self.episodes is not None:
            lengths = sample_lengths(self.rng, self.context_window, min(self.max_generate, 4))
            samples = []
            while len(samples) < self.batch_size:
                episode = self.rng.choice(self.episodes)
                sample = memory_maze.sample_from_episode(self.rng, episode["frames"], episode["actions"],
                                                         episode["chunk_frames"], *lengths)
                if sample is not None:
                    samples.append(sample)
            return samples
        if self.worlds is not None:
            lengths = sample_lengths(self.rng, self.context_window, self.max_generate)
            return [self.rng.choice(self.worlds).sample(self.rng, *lengths) for _ in range(self.batch_size)]
        return [load_clip(self.rng.choice(self.records), self.image_size) for _ in range(self.batch_size)]


# ---------------------------------------------------------------------------------------------- episodes


class _EpisodeLengths(SeededStream):
    """An episode stream's `min_chunks`..`max_chunks` chunks an episode, checked."""

    def __init__(self, min_chunks: int, max_chunks: int, seed: int):
        if min_chunks < 2 or max_chunks < min_chunks:
            raise ValueError(f"episode chunks {min_chunks} {max_chunks}: an episode needs at least 2 chunks, and the "
                             "longest may not be shorter than the shortest.")
        super().__init__(seed)
        self.min_chunks, self.max_chunks = min_chunks, max_chunks

    def window(self, num_chunks: int) -> tuple[int, int]:
        """A window (first chunk, length) of `min_chunks`..`max_chunks` chunks at a random place in an
        episode of `num_chunks` (the whole episode when it is shorter), so that long recordings cost a
        bounded step and every part of them is learned."""
        length = min(self.rng.randint(self.min_chunks, self.max_chunks), num_chunks)
        return self.rng.randint(0, num_chunks - length), length


class EpisodeStream(_EpisodeLengths):
    """Seeded ToyWorld episodes with revisits (every path family, lengths `min_chunks`..`max_chunks`) from
    training worlds 1..`world_seeds`.

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


class ManifestEpisodeStream(_EpisodeLengths):
    """Episodes from the user's own videos: consecutive clips of one video in a manifest
    (`data.manifest.manifest_episodes`). Each step takes one episode at random and a window of
    `min_chunks`..`max_chunks` of its chunks at a random place in it (whole, when it is shorter), so that
    long recordings cost a bounded step and every part of them is learned. Same interface as `EpisodeStream`.

    A manifest that cannot be read raises its own error (`OSError`, `ValueError`), naming the file and line;
    one without an episode of 2 chunks raises `ValueError`."""

    def __init__(self, manifest: str, on_bad_record: str, min_chunks: int, max_chunks: int, chunk_frames: int,
                 view_size: int, seed: int):
        super().__init__(min_chunks, max_chunks, seed)
        self.episodes: list[ManifestEpisode] = manifest_episodes(read_manifest(manifest, on_bad_record),
                                                                 chunk_frames, 2, on_bad_record)
        if not self.episodes:
            raise ValueError(f"{manifest}: no episode of at least 2 chunks ({2 * chunk_frames + 1} consecutive frames "
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
        first, length = self.window(episode.num_chunks)
        path_seed = self.rng.getrandbits(32)
        actions = episode.chunk_actions()[first:first + length]
        return episode.frames(first, length, self.view_size), actions, path_seed


class MazeEpisodeStream(_EpisodeLengths):
    """Recorded Memory Maze episodes (`memory_maze_episodes.load_cache`) of the path families with revisits,
    for the slow-fast loop in 3-D. Each step takes one episode of `families` at random and a window of
    `min_chunks`..`max_chunks` of its chunks (whole, when it is shorter: a family's path is 8-9 chunks, so
    the default window 4-8 keeps most of its revisits). Same interface as `EpisodeStream`."""

    def __init__(self, episodes: Sequence[dict], families: Sequence[str], min_chunks: int, max_chunks: int,
                 seed: int):
        super().__init__(min_chunks, max_chunks, seed)
        self.episodes = [episode for episode in episodes if episode["family"] in families]
        if not self.episodes:
            raise ValueError(f"No recorded Memory Maze episode of the families {', '.join(families)} "
                             "(the cache records every family; record it with --episodes-per-maze 2 or more).")

    def next_episode(self) -> tuple[np.ndarray, list[str], int]:
        """Frames (F, H, W, 3) in [0, 1], one action per chunk, and a seed for the episode's memory."""
        episode = self.rng.choice(self.episodes)
        actions = episode["actions"]
        chunk_frames = (len(episode["frames"]) - 1) // len(actions)
        first, length = self.window(len(actions))
        frames = episode["frames"][first * chunk_frames:(first + length) * chunk_frames + 1]
        return frames.astype(np.float32) / 255.0, list(actions[first:first + length]), self.rng.getrandbits(32)
