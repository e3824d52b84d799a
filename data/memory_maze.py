"""Memory Maze (Pasukonis, Lillicrap and Hafner, 2022) as a built-in 3-D world, seen in first person.

The scenes are the package's own: its seeded mazes, wall and floor textures, target objects and lighting,
rendered by MuJoCo through the egocentric camera of its agent. The camera is moved kinematically instead of
by the package's rolling ball (whose actions cannot be undone), so that every action is exact and
invertible and every revisit shows the same pixels:

- a frame of "turn left" / "turn right" turns the camera by 360/16 = 22.5 degrees on the spot;
- a frame of "walk forward" / "walk back" moves it a quarter of a maze cell along its heading, unless a wall
  is within `BODY_RADIUS` of where it would stand (then it stays, as it would against a wall);
- "stay" keeps the pose.

A pose is kept as whole numbers (quarter-cell steps along each of the 8 axes of the 16 headings, and the
heading), so that the same pose is always the same floating-point camera position whatever path led there.

Install with ``pip install -e ".[memory-maze]"``. Rendering needs no display: MuJoCo uses EGL (Mesa's, on
Debian: ``libegl1``) by default here, or OSMesa (``libosmesa6``) with ``MUJOCO_GL=osmesa``.
"""

from __future__ import annotations

import functools
import math
import os
import random
from dataclasses import dataclass

import numpy as np

from .toyworld import Sample

HEADINGS = 16  # a turn frame is 360 / 16 = 22.5 degrees
AXES = HEADINGS // 2
STEP = 0.5  # world units a walking frame moves: a quarter of a maze cell (cells are 2 units wide)
CELL = 2.0
BODY_RADIUS = 0.35  # how near a wall the camera may stand, in world units
_CAMERA = "walker/egocentric"  # the package's first-person camera
MAZE_SIZES = (9, 11, 13, 15)
MAX_SEED = 2**31 - 1

# What a frame of each action does: (heading change in 1/16 turns, quarter-cell steps along the heading).
MOTIONS = {"forward": (0, 1), "back": (0, -1), "left": (1, 0), "right": (-1, 0), "stay": (0, 0)}
OPPOSITE = {"forward": "back", "back": "forward", "left": "right", "right": "left", "stay": "stay"}

# Paraphrases seen in training, then the held-out ones.
TRAIN_PARAPHRASES = {
    "forward": ("walk forward", "move forward", "go forward", "step forward", "go ahead"),
    "back": ("walk back", "move back", "go back", "step back", "back up"),
    "left": ("turn left", "rotate left", "look left", "turn to the left", "spin left"),
    "right": ("turn right", "rotate right", "look right", "turn to the right", "spin right"),
    "stay": ("stay", "stay still", "wait", "hold position", "don't move"),
}
HELD_OUT_PARAPHRASES = {
    "forward": ("walk ahead",),
    "back": ("walk backward",),
    "left": ("rotate to the left",),
    "right": ("rotate to the right",),
    "stay": ("hold still",),
}
# Words the paraphrases are made of that ToyWorld's vocabulary lacks (each becomes one token).
EXTRA_WORDS = ("rotate", "look", "spin", "step", "ahead", "backward", "up")
_PHRASE_TO_MOTION = {
    phrase: motion
    for table in (TRAIN_PARAPHRASES, HELD_OUT_PARAPHRASES)
    for motion, phrases in table.items()
    for phrase in phrases
}

# Unit vectors of the 8 axes, exact where they can be (so axis-aligned walks land on exact positions).
_AXIS_VECTORS = [
    (1.0, 0.0) if a == 0 else (0.0, 1.0) if a == AXES // 2 else
    (math.cos(2 * math.pi * a / HEADINGS), math.sin(2 * math.pi * a / HEADINGS))
    for a in range(AXES)
]


@dataclass(frozen=True)
class CameraView:
    """What the camera sees at a pose, in 3-D: the frame (H, W, 3 uint8), its depth along the optical axis in
    world units (H, W; the far plane where only sky is seen), and the camera's world position (3,) and
    orientation (3 x 3, columns: its right, up and backward axes; MuJoCo's convention, looking along -z)."""

    frame: np.ndarray
    depth: np.ndarray
    position: np.ndarray
    rotation: np.ndarray
    fovy: float


class MemoryMazeUnavailable(RuntimeError):
    """Memory Maze or a headless OpenGL cannot be used here; the message says what to install."""


def parse_action(action: str) -> str:
    """The motion ("forward", "back", "left", "right", "stay") a free-text Memory Maze action means."""
    key = " ".join(str(action).lower().split())
    if key in MOTIONS:
        return key
    if key in _PHRASE_TO_MOTION:
        return _PHRASE_TO_MOTION[key]
    raise ValueError(
        f"Memory Maze does not know the action {action!r}; known actions: {', '.join(sorted(_PHRASE_TO_MOTION))}."
    )


def reverse_actions() -> dict[str, str]:
    """Every action Memory Maze knows -> the training phrase of the action that undoes it."""
    return {phrase: TRAIN_PARAPHRASES[OPPOSITE[motion]][0] for phrase, motion in _PHRASE_TO_MOTION.items()}


def action_motions() -> dict[str, list[int]]:
    """Every action Memory Maze knows -> [turn, walk] per frame (1/16 turns, quarter-cell steps): what its world
    model's folder records as `action_motions`, from which the pose memory follows the camera."""
    return {phrase: list(MOTIONS[motion]) for phrase, motion in _PHRASE_TO_MOTION.items()}


@functools.lru_cache(maxsize=None)
def camera_fovy() -> float:
    """The vertical field of view of the package's egocentric camera, in degrees (its MuJoCo model's): what a
    world model's folder records as `camera_fovy`, from which the pose memory turns the views it holds."""
    (_, physics), _, _ = _scene(MAZE_SIZES[0], 0)
    return float(physics.model.cam_fovy[physics.model.name2id(_CAMERA, "camera")])


@dataclass(frozen=True)
class Pose:
    """A camera pose: quarter-cell steps taken along each of the 8 axes (negative: the opposite way), and
    the heading in 1/16 turns counter-clockwise from the maze's +x axis, both relative to the start cell."""

    steps: tuple[int, ...]
    heading: int

    def key(self) -> tuple:
        """Equal for poses at the same place and heading, whatever steps led there (for revisits)."""
        x, y = self.offset()
        return round(x, 6), round(y, 6), self.heading % HEADINGS

    def offset(self) -> tuple[float, float]:
        """World units from the start cell's centre (summed in a fixed order: the same pose, the same floats)."""
        x = y = 0.0
        for count, (ux, uy) in zip(self.steps, _AXIS_VECTORS):
            x += STEP * count * ux
            y += STEP * count * uy
        return x, y

    def moved(self, motion: str) -> "Pose":
        turn, walk = MOTIONS[motion]
        heading = (self.heading + turn) % HEADINGS
        if not walk:
            return Pose(self.steps, heading)
        axis, sign = heading % AXES, (1 if heading < AXES else -1)
        steps = list(self.steps)
        steps[axis] += sign * walk
        return Pose(tuple(steps), heading)

    def to_list(self) -> list[int]:
        return [*self.steps, self.heading]

    @classmethod
    def from_list(cls, values) -> "Pose":
        return cls(tuple(int(v) for v in values[:AXES]), int(values[AXES]))


def _no_renderer(error: BaseException) -> MemoryMazeUnavailable:
    backend = os.environ.get("MUJOCO_GL")
    return MemoryMazeUnavailable(
        f"Memory Maze could not render with MUJOCO_GL={backend!r} ({type(error).__name__}: {error}). Install an "
        "offscreen OpenGL and name it in MUJOCO_GL: Debian's libegl1 (MUJOCO_GL=egl, the default here) or "
        "libosmesa6 (MUJOCO_GL=osmesa)."
    )


def _require_renderer() -> None:
    # Without a display MuJoCo must render offscreen; EGL is the fast choice where Mesa provides it.
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import memory_maze  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("memory_maze", "gym", "dm_control", "mujoco", "labmaze"):
            raise MemoryMazeUnavailable(
                f"Memory Maze is not installed (no module {error.name!r}): pip install -e \".[memory-maze]\" "
                "(or pip install memory-maze gym)."
            ) from None
        raise
    except (ImportError, RuntimeError, OSError) as error:  # dm_control refuses a bad or missing MUJOCO_GL here
        raise _no_renderer(error) from None


# Building a maze takes seconds, and a built scene holds about 1 GB (its textures): a few recent ones are
# kept, and a `MemoryMaze` holds none itself, so that many episodes can be planned at once.
@functools.lru_cache(maxsize=2)
def _scene(size: int, seed: int):
    _require_renderer()
    from memory_maze import tasks

    builder = {9: tasks.memory_maze_9x9, 11: tasks.memory_maze_11x11, 13: tasks.memory_maze_13x13,
               15: tasks.memory_maze_15x15}[size]
    try:
        env = builder(seed=seed, global_observables=True, target_color_in_image=False)
        env.reset()
        # The target spheres are only placed by the first step after a reset.
        layout = np.asarray(env.step(0).observation["maze_layout"], bool)
    except (ImportError, RuntimeError, OSError, AttributeError) as error:  # how MuJoCo reports a missing OpenGL
        raise _no_renderer(error) from None
    base = env
    while hasattr(base, "env"):
        base = base.env
    # The physics holds its environment only weakly: keep the environment alive with it.
    return (env, base.physics), layout, float(base.physics.data.qpos[2])


class MemoryMaze:
    """Memory Maze scene `seed` of `size` x `size` cells, seen by a kinematic first-person camera.

    Args:
        seed: picks the maze (0 .. 2**31 - 1); the same seed renders the same pixels in every process.
        size: maze cells a side, without the outer walls: 9, 11, 13 or 15 (the package's four tasks).
        view_size: frame width and height in pixels.
    """

    name = "memory-maze"

    def __init__(self, seed: int = 0, size: int = 9, view_size: int = 64):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"Memory Maze seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
        if size not in MAZE_SIZES:
            raise ValueError(f"Memory Maze size must be one of {MAZE_SIZES}, got {size!r}.")
        if isinstance(view_size, bool) or not isinstance(view_size, int) or not 16 <= view_size <= 1024:
            raise ValueError(f"view_size must be a whole number of pixels from 16 to 1024, got {view_size!r}.")
        self.seed, self.size, self.view_size = seed, size, view_size
        _, self.layout, self._height = _scene(size, seed)
        self.start_cell, self.start_heading = self._start_cell()

    # ------------------------------------------------------------------ geometry

    def position(self, pose: Pose) -> tuple[float, float]:
        """The camera's world (x, y) at `pose`."""
        dx, dy = pose.offset()
        cx, cy = self.cell_center(self.start_cell)
        return cx + dx, cy + dy

    def cell_center(self, cell: tuple[int, int]) -> tuple[float, float]:
        column, row = cell
        return (column + 0.5 - self.size / 2) * CELL, (row + 0.5 - self.size / 2) * CELL

    def is_free(self, x: float, y: float) -> bool:
        """Whether the camera may stand at (x, y): no wall within `BODY_RADIUS`."""
        for ox in (-BODY_RADIUS, 0.0, BODY_RADIUS):
            for oy in (-BODY_RADIUS, 0.0, BODY_RADIUS):
                column = math.floor((x + ox) / CELL + self.size / 2)
                row = math.floor((y + oy) / CELL + self.size / 2)
                if not (0 <= column < self.size and 0 <= row < self.size) or not self.layout[row, column]:
                    return False
        return True

    def pose_problem(self, pose: Pose) -> str | None:
        x, y = self.position(pose)
        if not self.is_free(x, y):
            return f"the pose {pose.to_list()} puts the camera at ({x:.2f}, {y:.2f}), inside or against a wall"
        return None

    def step(self, pose: Pose, action: str) -> Pose:
        """The pose one frame of `action` later; a walk into a wall leaves the camera where it was."""
        moved = pose.moved(parse_action(action))
        return moved if self.is_free(*self.position(moved)) else Pose(pose.steps, moved.heading)

    def start_pose(self) -> Pose:
        return Pose((0,) * AXES, self.start_heading)

    def _start_cell(self) -> tuple[tuple[int, int], int]:
        """A free cell with the longest free corridor ahead, facing it (drawn from the seed among ties)."""
        rng = random.Random(f"memory-maze-start:{self.seed}")
        best, choices = -1, []
        for row, column in zip(*np.nonzero(self.layout)):
            for heading in range(0, HEADINGS, HEADINGS // 4):
                run = self.free_run((int(column), int(row)), heading)
                if run > best:
                    best, choices = run, []
                if run == best:
                    choices.append(((int(column), int(row)), heading))
        return rng.choice(choices)

    def free_run(self, cell: tuple[int, int], heading: int) -> int:
        """Free cells straight ahead of `cell` along an axis heading (a multiple of 4)."""
        dx, dy = {0: (1, 0), 4: (0, 1), 8: (-1, 0), 12: (0, -1)}[heading % HEADINGS]
        column, row, run = cell[0] + dx, cell[1] + dy, 0
        while 0 <= column < self.size and 0 <= row < self.size and self.layout[row, column]:
            run += 1
            column, row = column + dx, row + dy
        return run

    # ------------------------------------------------------------------ frames

    def render_pose(self, pose: Pose) -> np.ndarray:
        """The exact view at `pose`, (H, W, 3) uint8; a pose inside a wall is refused."""
        physics = self._placed(pose)
        return physics.render(self.view_size, self.view_size, camera_id=_CAMERA).copy()

    def camera_view(self, pose: Pose) -> CameraView:
        """The view at `pose` with its depth and where the camera stands: the world's ground truth in 3-D, for
        measurements (a world model never sees it)."""
        physics = self._placed(pose)
        camera = physics.model.name2id(_CAMERA, "camera")
        size = self.view_size
        return CameraView(frame=physics.render(size, size, camera_id=camera).copy(),
                          depth=physics.render(size, size, camera_id=camera, depth=True).astype(np.float32),
                          position=physics.data.cam_xpos[camera].copy(),
                          rotation=physics.data.cam_xmat[camera].reshape(3, 3).copy(),
                          fovy=float(physics.model.cam_fovy[camera]))

    def _placed(self, pose: Pose):
        """The scene's physics with the camera at `pose` (a pose inside a wall is refused)."""
        problem = self.pose_problem(pose)
        if problem:
            raise ValueError(f"Memory Maze {self.seed}: {problem}; the camera cannot stand there.")
        x, y = self.position(pose)
        (_, physics), _, _ = _scene(self.size, self.seed)
        with physics.reset_context():
            physics.data.qpos[:] = [x, y, self._height, -2 * math.pi * (pose.heading % HEADINGS) / HEADINGS, 0.0]
        return physics

    def start_frame(self, pose: Pose | None = None) -> np.ndarray:
        return self.render_pose(pose or self.start_pose())

    def path(self, actions: list[str], frames_per_action: int, start: Pose | None = None) -> list[Pose]:
        """Camera poses: the start, then one per frame."""
        pose = start or self.start_pose()
        poses = [pose]
        for action in actions:
            for _ in range(frames_per_action):
                pose = self.step(pose, action)
                poses.append(pose)
        return poses

    def rollout(self, actions: list[str], frames_per_action: int, start: Pose | None = None) -> np.ndarray:
        """The exact frames (1 + len(actions) * frames_per_action, H, W, 3) of an action sequence."""
        return np.stack([self.render_pose(p) for p in self.path(actions, frames_per_action, start)])


def sample_from_episode(rng: random.Random, frames: np.ndarray, actions: list[str], chunk_frames: int,
                        num_context: int, num_generate: int,
                        paraphrases: dict = TRAIN_PARAPHRASES) -> Sample | None:
    """A training sample cut from a recorded episode (frame 0 the start, then `chunk_frames` frames per
    action): the `num_context` frames before a point inside a chunk, that chunk's action in a random
    wording, and the next `num_generate` frames of the same chunk. None when the lengths do not fit."""
    if num_generate > chunk_frames:
        return None
    choices = [
        (chunk, offset)
        for chunk in range(len(actions))
        for offset in range(chunk_frames - num_generate + 1)
        if 1 + chunk * chunk_frames + offset - num_context >= 0
    ]
    if not choices:
        return None
    chunk, offset = rng.choice(choices)
    first = 1 + chunk * chunk_frames + offset
    return Sample(context=frames[first - num_context:first], action=rng.choice(paraphrases[parse_action(actions[chunk])]),
                  target=frames[first:first + num_generate])
