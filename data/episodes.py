"""ToyWorld episodes that come back to places seen long before, along paths of several families.

A path is one action per chunk; the camera moves `world.step` pixels a frame, `chunk_frames` frames a
chunk. Families (the return never only retraces the way out, except in out-and-back):

- ``out-and-back``: n chunks one way, n chunks back the same way (the paper's SRC paths).
- ``loop``: a square, n chunks a side (right, down, left, up), back at the start from the other side.
- ``detour``: n chunks out, one chunk sideways, n chunks back on a parallel track, one chunk to the start.
- ``random-walk``: random moves, then home by the shortest way (along x, then y), rarely the way out.
- a user's path file: JSON ``{"actions": ["move right", ...], "start": [x, y]}`` (``start`` optional, the
  camera's top-left corner in world pixels; default: the path centred in the world).

Every episode starts where its whole path fits inside the world; a path that cannot fit is refused.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .toyworld import DIRECTIONS, OPPOSITE, TRAIN_PARAPHRASES, ToyWorld, parse_action

PATH_FAMILIES = ("out-and-back", "loop", "detour", "random-walk")
MOVES = ("right", "down", "left", "up")
SIDEWAYS = {"right": "down", "down": "left", "left": "up", "up": "right"}


@dataclass(frozen=True)
class EpisodePath:
    """A ToyWorld episode: its world, actions (one per chunk) and the true camera position of every frame.

    `positions[0]` is the start frame's; chunk i covers frames 1 + i * chunk_frames ... (i + 1) * chunk_frames.
    """

    world: ToyWorld
    family: str
    actions: tuple[str, ...]
    chunk_frames: int
    positions: tuple[tuple[int, int], ...]

    @property
    def num_chunks(self) -> int:
        return len(self.actions)

    def chunk_slice(self, index: int) -> slice:
        """Frames of chunk `index` in the episode's frame list (frame 0 is the start frame)."""
        return slice(1 + index * self.chunk_frames, 1 + (index + 1) * self.chunk_frames)

    def frames(self) -> np.ndarray:
        """The true frames (1 + chunks * chunk_frames, H, W, 3), float32 in [0, 1]."""
        return np.stack([self.world.render(*p) for p in self.positions]).astype(np.float32) / 255

    def describe(self) -> dict:
        return {"seed": self.world.seed, "family": self.family, "actions": list(self.actions),
                "start": list(self.positions[0]), "chunk_frames": self.chunk_frames}


def family_actions(family: str, num_chunks: int, rng: random.Random) -> list[str]:
    """The directions of one episode of `family`, about `num_chunks` long (at least 2 chunks)."""
    if num_chunks < 2:
        raise ValueError(f"num_chunks must be at least 2 (a way out and a way back), got {num_chunks}.")
    first = rng.choice(MOVES)
    if family == "out-and-back":
        half = num_chunks // 2
        return [first] * half + [OPPOSITE[first]] * half
    if family == "loop":
        side = max(1, num_chunks // 4)
        turn = rng.choice((SIDEWAYS, {value: key for key, value in SIDEWAYS.items()}))  # clockwise or not
        directions, direction = [], first
        for _ in range(4):
            directions += [direction] * side
            direction = turn[direction]
        return directions
    if family == "detour":
        out = max(1, (num_chunks - 2) // 2)
        side = rng.choice((SIDEWAYS[first], OPPOSITE[SIDEWAYS[first]]))
        return [first] * out + [side] + [OPPOSITE[first]] * out + [OPPOSITE[side]]
    if family == "random-walk":
        for _ in range(100):  # walks that end where they began have no way home to take: draw again
            walk = [rng.choice(MOVES) for _ in range(max(1, num_chunks // 2))]
            dx = sum(DIRECTIONS[d][0] for d in walk)
            dy = sum(DIRECTIONS[d][1] for d in walk)
            home = ["left" if dx > 0 else "right"] * abs(dx) + ["up" if dy > 0 else "down"] * abs(dy)
            if home:
                return walk + home
        raise RuntimeError("no random walk left home in 100 draws")
    raise ValueError(f"Unknown path family {family!r}; known families: {', '.join(PATH_FAMILIES)}, or a path file.")


def make_episode(seed: int, family: str, num_chunks: int = 8, chunk_frames: int = 4, view_size: int = 64,
                 rng_seed: int | None = None) -> EpisodePath:
    """Episode `seed` of `family`: world seed `seed`, the path drawn from `rng_seed` (default: the seed)."""
    rng = random.Random(f"{family}:{seed if rng_seed is None else rng_seed}")
    directions = family_actions(family, num_chunks, rng)
    actions = [TRAIN_PARAPHRASES[d][0] for d in directions]
    return place_path(ToyWorld(seed, view_size=view_size), family, actions, chunk_frames)


def load_path_file(path: str | Path, seed: int, chunk_frames: int = 4, view_size: int = 64) -> EpisodePath:
    """A user's path (JSON: "actions", optional "start") in ToyWorld `seed`; refused if it leaves the world."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"path file {str(path)!r} cannot be read as JSON ({error}).") from None
    actions = data.get("actions") if isinstance(data, dict) else None
    if not isinstance(actions, list) or len(actions) < 2 or not all(isinstance(a, str) for a in actions):
        raise ValueError(f"path file {str(path)!r}: 'actions' must be a list of at least 2 action texts, "
                         "one per chunk.")
    from ..pipelines.checks import actions_problem  # here: the pipelines import data at module level

    problem = actions_problem(actions, parse_action)
    if problem:
        raise ValueError(f"path file {str(path)!r}, {problem}")
    start = data.get("start")
    well_formed = isinstance(start, list) and len(start) == 2 and all(isinstance(v, int) for v in start)
    if start is not None and not well_formed:
        raise ValueError(f"path file {str(path)!r}: 'start' must be [x, y], whole pixels, got {start!r}.")
    return place_path(ToyWorld(seed, view_size=view_size), Path(path).stem, actions, chunk_frames,
                      tuple(start) if start else None)


def place_path(world: ToyWorld, family: str, actions: list[str], chunk_frames: int,
               start: tuple[int, int] | None = None) -> EpisodePath:
    """The episode of `actions` from `start` (default: the path's bounding box centred in the world)."""
    x = y = 0
    xs, ys = [0], [0]
    for action in actions:
        dx, dy = DIRECTIONS[parse_action(action)]
        x, y = x + dx * world.step * chunk_frames, y + dy * world.step * chunk_frames
        xs.append(x)
        ys.append(y)
    if start is None:
        middle = world.max_position // 2
        start = (middle - (min(xs) + max(xs)) // 2 // world.step * world.step,
                 middle - (min(ys) + max(ys)) // 2 // world.step * world.step)
    low = (start[0] + min(xs), start[1] + min(ys))
    high = (start[0] + max(xs), start[1] + max(ys))
    if min(low) < 0 or max(high) > world.max_position:
        raise ValueError(
            f"The path {family!r} from {start} leaves the world: it reaches camera positions {low} to {high}, but "
            f"ToyWorld {world.seed} spans 0..{world.max_position}. Use a shorter path or another start."
        )
    positions = world.path(list(actions), chunk_frames, start)
    return EpisodePath(world, family, tuple(actions), chunk_frames, tuple(positions))


class RevisitMap:
    """Which pixels of which frames revisit a place seen long before, in world coordinates.

    A pixel of a frame in chunk i is a revisit when its world place was first seen by a frame before the
    chunk's context (chunk i-1, or the start frame for chunk 0) and no context frame shows it: only memory
    can bring it back. `first_seen` holds, for every world pixel, the first frame that showed it.
    """

    def __init__(self, episode: EpisodePath):
        self.episode, size = episode, episode.world.view_size
        self.first_seen = np.full((episode.world.size,) * 2, np.iinfo(np.int32).max, np.int32)
        for index, (x, y) in enumerate(episode.positions):
            window = self.first_seen[y:y + size, x:x + size]
            np.minimum(window, index, out=window)

    def context_range(self, chunk: int) -> range:
        """Frame indices of chunk `chunk`'s context: the previous chunk, or the start frame."""
        if chunk == 0:
            return range(0, 1)
        frames = self.episode.chunk_slice(chunk - 1)
        return range(frames.start, frames.stop)

    @functools.cache  # every memory setting of an episode is scored on the same masks
    def masks(self, chunk: int) -> np.ndarray:
        """Boolean (frames, H, W): the revisited pixels of every frame of chunk `chunk` (do not modify)."""
        episode, size = self.episode, self.episode.world.view_size
        context = self.context_range(chunk)
        out = []
        for index in range(episode.chunk_slice(chunk).start, episode.chunk_slice(chunk).stop):
            x, y = episode.positions[index]
            seen_long_ago = self.first_seen[y:y + size, x:x + size] < context.start
            in_context = np.zeros((size, size), bool)
            for cx, cy in (episode.positions[c] for c in context):
                left, top = max(cx - x, 0), max(cy - y, 0)
                right, bottom = min(cx + size - x, size), min(cy + size - y, size)
                if left < right and top < bottom:
                    in_context[top:bottom, left:right] = True
            out.append(seen_long_ago & ~in_context)
        return np.stack(out)

    def first_sightings(self, video: np.ndarray) -> np.ndarray:
        """For every frame of `video` (the episode's frames, generated), what its pixels looked like when
        their world place was first seen, in that same video (a frame's own pixels where it is the first)."""
        episode, size = self.episode, self.episode.world.view_size
        canvas = np.zeros((episode.world.size, episode.world.size, video.shape[-1]), video.dtype)
        painted = np.zeros(canvas.shape[:2], bool)
        out = np.empty_like(video)
        for index, (x, y) in enumerate(episode.positions):
            window, done = canvas[y:y + size, x:x + size], painted[y:y + size, x:x + size]
            window[~done] = video[index][~done]
            done[:] = True
            out[index] = window
        return out
