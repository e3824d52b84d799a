"""Memory Maze episodes: paths that come back to poses seen long before, and a disk cache of recorded
episodes to train on.

Every path turns in whole chunks (a chunk of 4 turning frames is a quarter turn), so the camera walks
from cell centre to cell centre along the maze's axes. Families:

- ``out-and-back``: walk forward along a corridor, then walk back the same way, facing the same way.
- ``loop``: round a block: along the four sides of a rectangle of free cells, turning a quarter at each
  corner, back at the start from the other side, then along the first side again.
- ``full-turn``: turn on the spot until the first views come back.
- ``detour``: walk out, turn round, walk home facing the other way, turn round again and walk out again.
- ``random-walk``: random moves, then home by undoing them in reverse order.
- ``explore``: random moves with no way home (training data).

The cache (`write_cache`) keeps one `.npz` per episode, written under a temporary name and renamed into
place, so a run that is killed leaves no half-written episode; `load_cache` checks every file and
regenerates one that is truncated or does not match its name before anything trains on it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .memory_maze import HEADINGS, TRAIN_PARAPHRASES, MemoryMaze, Pose

PATH_FAMILIES_3D = ("out-and-back", "loop", "full-turn", "detour", "random-walk")
TRAINING_FAMILIES_3D = PATH_FAMILIES_3D + ("explore",)
QUARTER = HEADINGS // 4  # a chunk of turning frames, at 4 frames a chunk

_WORDS = {motion: phrases[0] for motion, phrases in TRAIN_PARAPHRASES.items()}
_UNDO = {"forward": "back", "back": "forward", "left": "right", "right": "left", "stay": "stay"}
_AXIS_STEP = {0: (1, 0), 4: (0, 1), 8: (-1, 0), 12: (0, -1)}


@dataclass(frozen=True)
class MazeStart:
    """Where an episode starts: a free cell and an axis heading (a multiple of 4), relative to which the
    maze's own start pose is moved."""

    cell: tuple[int, int]
    heading: int


def _pose_at(world: MemoryMaze, start: MazeStart) -> Pose:
    """The pose standing at `start.cell` facing `start.heading`, in the maze's step coordinates."""
    dc, dr = start.cell[0] - world.start_cell[0], start.cell[1] - world.start_cell[1]
    steps = [0] * (HEADINGS // 2)
    steps[0] += 4 * dc  # axis 0 is +x, axis 4 is +y; a cell is 4 quarter-cell steps
    steps[4] += 4 * dr
    return Pose(tuple(steps), start.heading)


def _free_cells(world: MemoryMaze) -> list[tuple[int, int]]:
    return [(int(c), int(r)) for r, c in zip(*np.nonzero(world.layout))]


def _ahead(cell: tuple[int, int], heading: int) -> tuple[int, int]:
    dx, dy = _AXIS_STEP[heading % HEADINGS]
    return cell[0] + dx, cell[1] + dy


def _is_free_cell(world: MemoryMaze, cell: tuple[int, int]) -> bool:
    column, row = cell
    return 0 <= column < world.size and 0 <= row < world.size and bool(world.layout[row, column])


def family_motions(world: MemoryMaze, family: str, num_chunks: int, rng: random.Random) -> tuple[MazeStart, list[str]]:
    """A start and one motion per chunk of an episode of `family` in `world`, about `num_chunks` long."""
    if num_chunks < 2:
        raise ValueError(f"num_chunks must be at least 2 (a way out and a way back), got {num_chunks}.")
    cells = _free_cells(world)
    if family == "out-and-back":
        want = max(1, num_chunks // 2)
        options = [(world.free_run(c, h), c, h) for c in cells for h in range(0, HEADINGS, QUARTER)]
        longest = max(run for run, _, _ in options)
        run, cell, heading = rng.choice([o for o in options if o[0] >= min(want, longest)])
        out = min(want, run)
        return MazeStart(cell, heading), ["forward"] * out + ["back"] * out
    if family == "full-turn":
        turn = rng.choice(("left", "right"))
        return MazeStart(rng.choice(cells), rng.randrange(0, HEADINGS, QUARTER)), [turn] * max(num_chunks, 5)
    if family == "loop":
        return _loop(world, cells, num_chunks, rng)
    if family == "detour":
        options = [(world.free_run(c, h), c, h) for c in cells for h in range(0, HEADINGS, QUARTER)]
        want = max(1, (num_chunks - 5) // 2)
        longest = max(run for run, _, _ in options)
        run, cell, heading = rng.choice([o for o in options if o[0] >= min(want, longest)])
        out, turn = min(want, run), rng.choice(("left", "right"))
        motions = ["forward"] * out + [turn] * 2 + ["forward"] * out + [turn] * 2 + ["forward"]
        return MazeStart(cell, heading), motions
    if family in ("random-walk", "explore"):
        start = MazeStart(rng.choice(cells), rng.randrange(0, HEADINGS, QUARTER))
        walk = _random_moves(world, start, num_chunks if family == "explore" else max(1, num_chunks // 2), rng)
        if family == "explore":
            return start, walk
        return start, walk + [_UNDO[m] for m in reversed(walk)]
    raise ValueError(f"Unknown Memory Maze path family {family!r}; known families: {', '.join(TRAINING_FAMILIES_3D)}.")


def _loop(world: MemoryMaze, cells: list[tuple[int, int]], num_chunks: int,
          rng: random.Random) -> tuple[MazeStart, list[str]]:
    """Round a rectangle of free cells, counter-clockwise or clockwise, then along the first side again."""
    free = set(cells)
    rectangles = []
    for (c0, r0) in cells:
        for width in range(1, 4):
            for height in range(1, 4):
                perimeter = {(c0 + i, r0) for i in range(width + 1)} | {(c0 + i, r0 + height) for i in range(width + 1)}
                perimeter |= {(c0, r0 + j) for j in range(height + 1)} | {(c0 + width, r0 + j) for j in range(height + 1)}
                if perimeter <= free and 2 * (width + height) + 5 <= max(num_chunks, 9):
                    rectangles.append((c0, r0, width, height))
    if not rectangles:
        raise ValueError(f"Memory Maze {world.seed} has no loop of free cells to walk round.")
    c0, r0, width, height = rng.choice(rectangles)
    if rng.random() < 0.5:  # counter-clockwise: east, north, west, south, turning left
        start, turn, sides = MazeStart((c0, r0), 0), "left", (width, height, width, height)
    else:  # clockwise: north, east, south, west, turning right
        start, turn, sides = MazeStart((c0, r0), 4), "right", (height, width, height, width)
    motions = []
    for side in sides:
        motions += ["forward"] * side + [turn]
    return start, motions + ["forward"] * min(sides[0], 2)


def _random_moves(world: MemoryMaze, start: MazeStart, count: int, rng: random.Random) -> list[str]:
    """Random chunk motions that never walk into a wall (so that every one of them can be undone)."""
    cell, heading, moves = start.cell, start.heading, []
    for _ in range(count):
        options = ["left", "right", "stay"]
        if _is_free_cell(world, _ahead(cell, heading)):
            options += ["forward"] * 4
        if _is_free_cell(world, _ahead(cell, heading + 2 * QUARTER)):
            options += ["back"]
        motion = rng.choice(options)
        if motion == "forward":
            cell = _ahead(cell, heading)
        elif motion == "back":
            cell = _ahead(cell, heading + 2 * QUARTER)
        elif motion in ("left", "right"):
            heading = (heading + (QUARTER if motion == "left" else -QUARTER)) % HEADINGS
        moves.append(motion)
    return moves


# ---------------------------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class MazeEpisode:
    """A Memory Maze episode: its world, actions (one per chunk) and the true camera pose of every frame,
    in the shape of ToyWorld's `EpisodePath` (`positions[0]` is the start frame's)."""

    world: MemoryMaze
    family: str
    actions: tuple[str, ...]
    chunk_frames: int
    positions: tuple[Pose, ...]

    @property
    def num_chunks(self) -> int:
        return len(self.actions)

    def chunk_slice(self, index: int) -> slice:
        return slice(1 + index * self.chunk_frames, 1 + (index + 1) * self.chunk_frames)

    def frames(self) -> np.ndarray:
        """The true frames (1 + chunks * chunk_frames, H, W, 3), float32 in [0, 1]."""
        return np.stack([self.world.render_pose(p) for p in self.positions]).astype(np.float32) / 255

    def describe(self) -> dict:
        return {"world": "memory-maze", "seed": self.world.seed, "family": self.family,
                "actions": list(self.actions), "start": self.positions[0].to_list(),
                "chunk_frames": self.chunk_frames}


def make_maze_episode(seed: int, family: str, num_chunks: int = 8, chunk_frames: int = 4, view_size: int = 64,
                      rng_seed: int | None = None, size: int = 9) -> MazeEpisode:
    """Episode `seed` of `family`: maze `seed`, the path drawn from `rng_seed` (default: the seed)."""
    if chunk_frames != QUARTER:
        raise ValueError(f"Memory Maze episodes turn a quarter per chunk: chunk_frames must be {QUARTER}, "
                         f"got {chunk_frames}.")
    world = MemoryMaze(seed, size=size, view_size=view_size)
    rng = random.Random(f"maze:{family}:{seed if rng_seed is None else rng_seed}")
    start, motions = family_motions(world, family, num_chunks, rng)
    actions = tuple(_WORDS[m] for m in motions)
    positions = world.path(list(actions), chunk_frames, _pose_at(world, start))
    return MazeEpisode(world, family, actions, chunk_frames, tuple(positions))


class PoseRevisits:
    """Which frames of a Memory Maze episode revisit a pose seen before the chunk's context (only memory can
    bring them back). The 3-D counterpart of ToyWorld's pixel `RevisitMap`: a frame is scored whole."""

    def __init__(self, episode: MazeEpisode):
        self.episode = episode
        self.first_seen: dict[tuple, int] = {}
        for index, pose in enumerate(episode.positions):
            self.first_seen.setdefault(pose.key(), index)

    def context_range(self, chunk: int) -> range:
        if chunk == 0:
            return range(0, 1)
        frames = self.episode.chunk_slice(chunk - 1)
        return range(frames.start, frames.stop)

    def masks(self, chunk: int) -> np.ndarray:
        """Boolean (frames, H, W): whole frames of chunk `chunk` whose pose was first seen before its context
        and is not in the context."""
        episode, size = self.episode, self.episode.world.view_size
        context = self.context_range(chunk)
        in_context = {episode.positions[c].key() for c in context}
        out = []
        for index in range(episode.chunk_slice(chunk).start, episode.chunk_slice(chunk).stop):
            key = episode.positions[index].key()
            revisit = self.first_seen[key] < context.start and key not in in_context
            out.append(np.full((size, size), revisit))
        return np.stack(out)

    def first_sightings(self, video: np.ndarray) -> np.ndarray:
        """For every frame of `video`, the frame of the same video that first showed its pose."""
        return np.stack([video[self.first_seen[p.key()]] for p in self.episode.positions])


# ---------------------------------------------------------------------------------------------- cache


def _episode_file(root: Path, seed: int, index: int) -> Path:
    return root / f"maze-{seed:06d}-{index:03d}.npz"


def recorded_family(index: int) -> str:
    """The path family of a maze's recorded episode `index`: every other one explores; the ones between go
    through the families with revisits in turn, so that 10 episodes a maze hold each of them once."""
    return PATH_FAMILIES_3D[(index // 2) % len(PATH_FAMILIES_3D)] if index % 2 else "explore"


def _record(seed: int, index: int, num_chunks: int, chunk_frames: int, view_size: int) -> dict:
    family = recorded_family(index)
    episode = make_maze_episode(seed, family, num_chunks, chunk_frames, view_size, rng_seed=seed * 1000 + index)
    frames = np.stack([episode.world.render_pose(p) for p in episode.positions])
    return {"frames": frames, "actions": np.array(json.dumps(list(episode.actions))),
            "poses": np.array([p.to_list() for p in episode.positions], np.int32),
            "meta": np.array(json.dumps({"seed": seed, "index": index, "family": family,
                                         "chunk_frames": chunk_frames}))}


def _write_maze(root: str, seed: int, per_maze: int, num_chunks: int, chunk_frames: int, view_size: int) -> int:
    written = 0
    for index in range(per_maze):
        path = _episode_file(Path(root), seed, index)
        if _read_episode(path, num_chunks, chunk_frames) is not None:
            continue
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, **_record(seed, index, num_chunks, chunk_frames, view_size))
        os.replace(temporary, path)
        written += 1
    return written


def _read_episode(path: Path, num_chunks: int, chunk_frames: int) -> dict | None:
    """The episode in `path`, or None when it is missing, truncated or not the episode its name says.

    Family episodes are as long as their path needs (a loop's length is its block's); `num_chunks` is
    the length of the exploring ones."""
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {key: data[key] for key in ("frames", "actions", "poses", "meta")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    frames, actions = record["frames"], json.loads(str(record["actions"]))
    meta = json.loads(str(record["meta"]))
    seed, index = (int(part) for part in path.stem.split("-")[1:])
    if (frames.dtype != np.uint8 or frames.shape[0] != 1 + len(actions) * chunk_frames
            or (meta["family"] == "explore" and len(actions) != num_chunks)
            or (meta["seed"], meta["index"], meta["chunk_frames"]) != (seed, index, chunk_frames)
            or meta["family"] != recorded_family(index)
            or len(record["poses"]) != frames.shape[0]):
        return None
    return {"frames": frames, "actions": actions, "poses": record["poses"], **meta}


def write_cache(root: str | os.PathLike, seeds: range, per_maze: int = 10, num_chunks: int = 25,
                chunk_frames: int = 4, view_size: int = 64, processes: int = 2) -> int:
    """Record `per_maze` episodes of every maze in `seeds` under `root`; resumable (finished episodes are
    kept), deterministic (an episode is a function of its maze seed and index). Returns how many were
    written now."""
    Path(root).mkdir(parents=True, exist_ok=True)
    jobs = [(os.fspath(root), seed, per_maze, num_chunks, chunk_frames, view_size) for seed in seeds]
    if processes <= 1:
        return sum(_write_maze(*job) for job in jobs)
    # Spawned, not forked: a child forked from a process that has rendered inherits its OpenGL context
    # and hangs at its first render.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return sum(pool.map(_write_maze, *zip(*jobs)))


def load_cache(root: str | os.PathLike, seeds: range, per_maze: int = 10, num_chunks: int = 25,
               chunk_frames: int = 4, view_size: int = 64) -> list[dict]:
    """Every episode of the cache, each checked; a missing or damaged one is recorded again first."""
    episodes = []
    for seed in seeds:
        for index in range(per_maze):
            path = _episode_file(Path(root), seed, index)
            record = _read_episode(path, num_chunks, chunk_frames)
            if record is None:
                _write_maze(os.fspath(root), seed, index + 1, num_chunks, chunk_frames, view_size)
                record = _read_episode(path, num_chunks, chunk_frames)
            if record is None or record["frames"].shape[1] != view_size:
                raise ValueError(f"Memory Maze cache {os.fspath(root)!r}: episode {path.name} could not be recorded "
                                 f"at {view_size} pixels; delete the folder and record it again.")
            episodes.append(record)
    return episodes
