"""One small interface over the project's two worlds, ToyWorld (2-D, a panning camera) and Memory Maze (3-D,
a first-person camera that turns), so that commands, nodes and the evaluation take a world by name.

A world gives: seeded worlds and a start frame; free-text actions with paraphrases, some held out of
training; the true frames and camera pose of any path; the exact view at any pose; and the path families
with revisits, as episodes whose revisit map says which frames (or pixels) only memory can bring back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..paths import PACKAGE_DIR
from . import memory_maze, toyworld
from .episodes import PATH_FAMILIES, EpisodePath, RevisitMap, make_episode
from .memory_maze_episodes import PATH_FAMILIES_3D, PoseRevisits, make_maze_episode
from .retrace import PLANNING_WORLDS, PlanningWorld

WORLD_NAMES = ("toyworld", "memory-maze")


@dataclass(frozen=True)
class WorldKind:
    """What the project knows of one world: how to build it, read its actions, and walk its paths."""

    name: str
    build: Callable[[int, int], Any]  # (seed, view_size) -> a world with start_frame() and rollout()
    parse_action: Callable[[str], str]
    reverse_actions: Callable[[], dict[str, str]]
    train_paraphrases: dict[str, tuple[str, ...]]
    held_out_paraphrases: dict[str, tuple[str, ...]]
    families: tuple[str, ...]
    make_episode: Callable[..., Any]  # (seed, family, num_chunks, chunk_frames, view_size) -> an episode
    revisits: Callable[[Any], Any]  # episode -> a revisit map (masks(chunk), first_sightings(video))
    model_dir: Path  # its shipped world model
    max_seed: int
    planning: PlanningWorld  # the retrace task, its scores and planning's models (`data/retrace.py`)

    def seed_problem(self, seed: Any, name: str = "--world-seed") -> str | None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= self.max_seed:
            return f"{name} must be a whole number from 0 to {self.max_seed} for {self.name}, got {seed!r}."
        return None

    def demo(self, seed: int, view_size: int = 64, frame: bool = True) -> tuple[np.ndarray | None, list[str]]:
        """The demo episode of `generate`: its first frame (uint8; None with `frame=False`, which renders
        nothing) and its actions, which revisit places."""
        if self.name == "toyworld":
            actions = (toyworld.out_and_back("right", 6) + toyworld.out_and_back("down", 4) + toyworld.loop(1)
                       + ["stay", "stay"])
            return (toyworld.ToyWorld(seed, view_size=view_size).start_frame() if frame else None), actions
        # Round a block (back at the start from the other side), then a full turn on the spot and more.
        episode = make_maze_episode(seed, "loop", num_chunks=9, view_size=view_size)
        actions = list(episode.actions) + ["turn left"] * 5
        return (episode.world.render_pose(episode.positions[0]) if frame else None), actions


def _toyworld_episode(seed: int, family: str, num_chunks: int = 8, chunk_frames: int = 4,
                      view_size: int = 64) -> EpisodePath:
    return make_episode(seed, family, num_chunks, chunk_frames, view_size)


def _maze_episode(seed: int, family: str, num_chunks: int = 8, chunk_frames: int = 4, view_size: int = 64):
    return make_maze_episode(seed, family, num_chunks, chunk_frames, view_size)


WORLDS: dict[str, WorldKind] = {
    "toyworld": WorldKind(
        name="toyworld",
        build=lambda seed, view_size=64: toyworld.ToyWorld(seed, view_size=view_size),
        parse_action=toyworld.parse_action,
        reverse_actions=toyworld.reverse_actions,
        train_paraphrases=toyworld.TRAIN_PARAPHRASES,
        held_out_paraphrases=toyworld.HELD_OUT_PARAPHRASES,
        families=PATH_FAMILIES,
        make_episode=_toyworld_episode,
        revisits=RevisitMap,
        model_dir=PACKAGE_DIR / "models" / "toyworld",
        max_seed=2**32 - 1,
        planning=PLANNING_WORLDS["toyworld"],
    ),
    "memory-maze": WorldKind(
        name="memory-maze",
        build=lambda seed, view_size=64: memory_maze.MemoryMaze(seed, view_size=view_size),
        parse_action=memory_maze.parse_action,
        reverse_actions=memory_maze.reverse_actions,
        train_paraphrases=memory_maze.TRAIN_PARAPHRASES,
        held_out_paraphrases=memory_maze.HELD_OUT_PARAPHRASES,
        families=PATH_FAMILIES_3D,
        make_episode=_maze_episode,
        revisits=PoseRevisits,
        model_dir=PACKAGE_DIR / "models" / "memory-maze",
        max_seed=memory_maze.MAX_SEED,
        planning=PLANNING_WORLDS["memory-maze"],
    ),
}


def world_kind(name: str) -> WorldKind:
    """The world called `name` (refused with the known names)."""
    if name not in WORLDS:
        raise ValueError(f"Unknown world {name!r}; known worlds: {', '.join(WORLDS)}.")
    return WORLDS[name]
