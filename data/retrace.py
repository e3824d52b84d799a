"""The retrace task of planning (paper section 4.2, Table 2), in ToyWorld and in Memory Maze.

The camera goes out along a path of several legs, each a turn from the last, for longer than the world
model's context window; then it is told, in free text, to go back to the start. A plan succeeds when it
retraces the way out: the score is the closest the executed return comes to each waypoint of the way out
(the camera's place at the end of every outward chunk) and the final distance to the start, in the world's
units: views (64 pixels) in ToyWorld, maze cells in Memory Maze (where the final heading error, in degrees,
is scored too: a first-person camera that is home but faces elsewhere sees something else).

What the planner needs of a world (how to draw and build tasks, see and score poses, its shipped planning
models and how it plans a way back) is a `PlanningWorld`; `data.worlds.WorldKind.planning` names each
built-in world's.

For training (`slowfast-vgen train --stage slow-fast --families retrace`) an episode is the way out, with
its directions as actions, then the way back and one chunk of standing still at the start, all with an
instruction paraphrase as their action: what the world model must learn is where the instruction leads.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..paths import DEFAULT_IDM_DIR, DEFAULT_MAZE_IDM_DIR, DEFAULT_PLANNER_DIR, PACKAGE_DIR
from . import memory_maze, toyworld
from .episodes import MOVES, EpisodePath, place_path
from .memory_maze_episodes import QUARTER, MazeEpisode, MazeStart, _ahead, _free_cells, _is_free_cell, _pose_at
from .toyworld import OPPOSITE, TRAIN_PARAPHRASES, ToyWorld, parse_action

RETRACE_INSTRUCTIONS = ("go back to the start", "return to the start", "retrace your steps",
                        "head back to where you started")
HELD_OUT_INSTRUCTIONS = ("go back to where you started",)  # words of the others, never trained on


@dataclass(frozen=True)
class RetraceTask:
    """One retrace episode: the true way out, and the way back a perfect plan would take.

    `episode` holds the whole true path (out, back, one chunk still) so that its frames and positions are
    known; a planner is given only the outward part and `instruction`.
    """

    episode: EpisodePath | MazeEpisode
    num_outward: int
    instruction: str
    world_name: str = "toyworld"  # which `PLANNING_WORLDS` entry sees, executes and scores it

    @property
    def kind(self) -> "PlanningWorld":
        return PLANNING_WORLDS[self.world_name]

    @property
    def outward_actions(self) -> tuple[str, ...]:
        return self.episode.actions[:self.num_outward]

    @property
    def return_actions(self) -> tuple[str, ...]:
        """The true way back, then one chunk of standing still."""
        return self.episode.actions[self.num_outward:]

    @property
    def start(self) -> Any:
        return self.episode.positions[0]

    @property
    def waypoints(self) -> list[Any]:
        """Where the camera is at the end of each outward chunk, the start first (scored on the way back)."""
        frames = self.episode.chunk_frames
        return [self.episode.positions[index * frames] for index in range(self.num_outward + 1)]

    def outward_frames(self) -> np.ndarray:
        """The start frame and the outward chunks' true frames (1 + outward chunks * chunk_frames, H, W, 3), float32
        in [0, 1] (only those are rendered: a maze view costs a render)."""
        positions = self.episode.positions[:1 + self.num_outward * self.episode.chunk_frames]
        world = self.episode.world
        return np.stack([self.kind.view(world, p) for p in positions]).astype(np.float32) / 255

    def training_labels(self, rng: random.Random) -> list[str]:
        """The actions a training episode is learned with: the outward directions, then an instruction."""
        instruction = rng.choice(RETRACE_INSTRUCTIONS)
        return list(self.outward_actions) + [instruction] * len(self.return_actions)

    def describe(self) -> dict:
        return {**self.episode.describe(), "world": self.world_name, "num_outward": self.num_outward,
                "instruction": self.instruction, "waypoints": [self.kind.pose_list(p) for p in self.waypoints]}


def retrace_reverse_actions(labels: list[str]) -> list[str | None] | None:
    """For a retrace training episode (its labels end with an instruction), what going back through each
    outward chunk means: the instruction itself (a Temp-LoRA memory with `direction="backward"` and
    `action_text=True` learns the way back with it); None for the chunks already on the way back. None for
    an episode of another kind."""
    if not labels or labels[-1] not in RETRACE_INSTRUCTIONS:
        return None
    instruction = labels[-1]
    return [None if label == instruction else instruction for label in labels]


def retrace_directions(rng: random.Random, legs: tuple[int, int], chunks_per_leg: tuple[int, int],
                       min_chunks: int) -> list[str]:
    """Outward directions: legs of random length, each a quarter turn from the one before (never straight
    back), at least `min_chunks` chunks in all."""
    for _ in range(100):
        directions, previous = [], None
        for _ in range(rng.randint(*legs)):
            turns = [d for d in MOVES if previous is None or d not in (previous, OPPOSITE[previous])]
            previous = rng.choice(turns)
            directions += [previous] * rng.randint(*chunks_per_leg)
        if len(directions) >= min_chunks:
            return directions
    raise ValueError(f"no outward path of at least {min_chunks} chunks from legs {legs} of {chunks_per_leg} chunks.")


def make_retrace_task(seed: int, rng_seed: int | None = None, legs: tuple[int, int] = (2, 3),
                      chunks_per_leg: tuple[int, int] = (2, 3), min_chunks: int = 4, chunk_frames: int = 4,
                      view_size: int = 64, instruction: str | None = None) -> RetraceTask:
    """Retrace episode `seed` (its world; the path drawn from `rng_seed`, default the seed), the way out
    at least `min_chunks` chunks (more than the context window), the instruction a training paraphrase
    unless one is given."""
    rng = random.Random(f"retrace:{seed if rng_seed is None else rng_seed}")
    outward = retrace_directions(rng, legs, chunks_per_leg, min_chunks)
    back = [OPPOSITE[d] for d in reversed(outward)] + ["stay"]
    actions = [TRAIN_PARAPHRASES[d][0] for d in outward + back]
    episode = place_path(ToyWorld(seed, view_size=view_size), "retrace", actions, chunk_frames)
    return RetraceTask(episode, len(outward), instruction or rng.choice(RETRACE_INSTRUCTIONS))


def retrace_task_from_actions(seed: int, outward_actions: list[str], instruction: str,
                              start: tuple[int, int] | None = None, chunk_frames: int = 4,
                              view_size: int = 64) -> RetraceTask:
    """A user's retrace task: the way out as ToyWorld actions (one per chunk) in world `seed`; refused with a
    clear error when an action is unknown or the path leaves the world."""
    if len(outward_actions) < 1:
        raise ValueError("outward_actions is empty: give the way out, one action per chunk.")
    directions = [parse_action(action) for action in outward_actions]
    back = [OPPOSITE[d] for d in reversed(directions)] + ["stay"]
    actions = list(outward_actions) + [TRAIN_PARAPHRASES[d][0] for d in back]
    episode = place_path(ToyWorld(seed, view_size=view_size), "retrace", actions, chunk_frames, start)
    return RetraceTask(episode, len(outward_actions), instruction)


# ---------------------------------------------------------------------------------------------- Memory Maze


def maze_retrace_outward(world: memory_maze.MemoryMaze, rng: random.Random, chunks: tuple[int, int] = (4, 6),
                         ) -> tuple[memory_maze.Pose, list[str]]:
    """A start pose and a way out of whole-chunk maze motions (a chunk walks a cell or turns a quarter) that
    never walks into a wall, so that the reversed way out undoes it exactly. It goes somewhere: no motion
    undoes the one before, no more than a half turn at once, at least two walking chunks and a turn, and it
    ends at least a cell from the start (a way out that comes back has nothing to retrace)."""
    cells = _free_cells(world)
    turn = {"left": QUARTER, "right": -QUARTER}
    for _ in range(500):
        cell, heading = rng.choice(cells), rng.randrange(0, memory_maze.HEADINGS, QUARTER)
        start, motions = MazeStart(cell, heading), []
        for _ in range(rng.randint(*chunks)):
            options = [m for m in ("left", "right") if not motions or motions[-1] != memory_maze.OPPOSITE[m]]
            options = [m for m in options if motions[-2:] != [m, m]]
            if _is_free_cell(world, _ahead(cell, heading)) and (not motions or motions[-1] != "back"):
                options += ["forward"] * 3
            if _is_free_cell(world, _ahead(cell, heading + 2 * QUARTER)) and (not motions or motions[-1] != "forward"):
                options += ["back"]
            motion = rng.choice(options)
            if motion in turn:
                heading = (heading + turn[motion]) % memory_maze.HEADINGS
            else:
                cell = _ahead(cell, heading if motion == "forward" else heading + 2 * QUARTER)
            motions.append(motion)
        walks = sum(m in ("forward", "back") for m in motions)
        if walks >= 2 and walks < len(motions) and cell != start.cell:
            return _pose_at(world, start), [memory_maze.TRAIN_PARAPHRASES[m][0] for m in motions]
    raise ValueError(f"Memory Maze {world.seed} has no way out of {chunks[0]}-{chunks[1]} chunks that walks and turns.")


def maze_retrace_task(world: memory_maze.MemoryMaze, start: memory_maze.Pose, outward_actions: list[str],
                      instruction: str, chunk_frames: int = QUARTER) -> RetraceTask:
    """The retrace task of `outward_actions` (maze actions, one per chunk) from `start`: the episode is the way
    out, the reversed way out and a chunk of "stay". Refused (ValueError) for an unknown action, a chunk of
    another length than a quarter turn, or a way out that walks into a wall (reversing it would not undo it)."""
    if chunk_frames != QUARTER:
        raise ValueError(f"Memory Maze chunks turn a quarter: chunk_frames must be {QUARTER}, got {chunk_frames} (a "
                         "world model of context window 8).")
    if not outward_actions:
        raise ValueError("outward_actions is empty: give the way out, one action per chunk.")
    motions = [memory_maze.parse_action(action) for action in outward_actions]  # names the known actions
    problem = world.pose_problem(start)
    if problem:
        raise ValueError(f"Memory Maze {world.seed}: {problem}.")
    pose = start
    for index, (action, motion) in enumerate(zip(outward_actions, motions)):
        for _ in range(chunk_frames):
            moved = pose.moved(motion)
            if world.step(pose, action) != moved:
                raise ValueError(f"the way out walks into a wall in chunk {index + 1} ({action!r}) of Memory Maze "
                                 f"{world.seed}: its reverse would not bring the camera back. Choose another way out "
                                 "(walk only where the corridor is free).")
            pose = moved
    back = [memory_maze.TRAIN_PARAPHRASES[memory_maze.OPPOSITE[m]][0] for m in reversed(motions)] + ["stay"]
    actions = list(outward_actions) + back
    positions = world.path(actions, chunk_frames, start)
    episode = MazeEpisode(world, "retrace", tuple(actions), chunk_frames, tuple(positions))
    return RetraceTask(episode, len(outward_actions), instruction, world_name="memory-maze")


def make_maze_retrace_task(seed: int, rng_seed: int | None = None, chunk_frames: int = QUARTER, view_size: int = 64,
                           instruction: str | None = None, chunks: tuple[int, int] = (4, 6)) -> RetraceTask:
    """Retrace episode `seed` in Memory Maze `seed` (9 x 9 cells): a way out of 4-6 chunks (more than the world
    model's 2-chunk context window) drawn from `rng_seed` (default the seed), the instruction a training
    paraphrase unless one is given."""
    rng = random.Random(f"maze-retrace:{seed if rng_seed is None else rng_seed}")
    world = memory_maze.MemoryMaze(seed, view_size=view_size)
    start, outward = maze_retrace_outward(world, rng, chunks)
    return maze_retrace_task(world, start, outward, instruction or rng.choice(RETRACE_INSTRUCTIONS), chunk_frames)


def maze_retrace_task_from_actions(seed: int, outward_actions: list[str], instruction: str, start: Any = None,
                                   chunk_frames: int = QUARTER, view_size: int = 64) -> RetraceTask:
    """A user's retrace task in Memory Maze `seed`, from the maze's start pose (its longest free corridor ahead)."""
    if start is not None:
        raise ValueError("a start position is ToyWorld's (pixels); in Memory Maze the way out starts at the maze's "
                         "start pose.")
    world = memory_maze.MemoryMaze(seed, view_size=view_size)
    return maze_retrace_task(world, world.start_pose(), list(outward_actions), instruction, chunk_frames)


def maze_distance(world: memory_maze.MemoryMaze, pose: memory_maze.Pose, other: memory_maze.Pose) -> float:
    """How far apart two camera places are, in maze cells (the heading is scored apart)."""
    (x, y), (u, v) = pose.offset(), other.offset()
    return math.hypot(x - u, y - v) / memory_maze.CELL


def maze_heading_error(pose: memory_maze.Pose, other: memory_maze.Pose) -> float:
    """The angle between two headings, in degrees (0-180)."""
    turns = (pose.heading - other.heading) % memory_maze.HEADINGS
    return min(turns, memory_maze.HEADINGS - turns) * 360.0 / memory_maze.HEADINGS


# ---------------------------------------------------------------------------------------------- the worlds


@dataclass(frozen=True)
class PlanningWorld:
    """What planning needs of one world.

    `way_back` says how the planner plans a retrace instruction: "instruction" gives the world model the
    instruction's text (ToyWorld: its task model was trained on it, and the panorama memory recalls the trail
    for it); "reverse" has the decomposer turn it into the reversed way out, one world action per chunk, from
    the model folder's `reverse_actions` (Memory Maze: no maze model was trained on the instruction).
    """

    name: str
    unit: str  # what distances are in
    home_radius: float  # "home": the final distance at most this (and, with headings, facing within 45 degrees)
    make_task: Callable[..., RetraceTask]  # (seed, chunk_frames=, view_size=, instruction=) -> a held-out task
    # (seed, outward_actions, instruction, start, chunk_frames, view_size) -> the user's task
    task_from_actions: Callable[..., RetraceTask]
    parse_action: Callable[[str], str]
    view: Callable[[Any, Any], np.ndarray]  # (world, pose) -> the true frame, (H, W, 3) uint8
    distance: Callable[[Any, Any, Any], float]  # (world, pose, pose) -> distance in `unit`
    heading_error: Callable[[Any, Any], float] | None  # degrees between two poses' headings; None: no heading
    pose_list: Callable[[Any], list]  # a pose as JSON
    true_pair: Callable[[Any, str, np.random.Generator], np.ndarray]  # (world, action, rng) -> 2 true frames, uint8
    generation_context: Callable[[Any, int], np.ndarray]  # (world, frames) -> a true context chunk, uint8
    model_dir: Path  # the world model `plan` and `plan-eval` use by default
    idm_dir: Path  # the inverse dynamics model of its frames
    default_outward: tuple[str, ...]  # `plan`'s way out
    default_memory: str  # `plan`'s memory setting, and the one `plan-eval` compares with none
    way_back: str  # "instruction" or "reverse" (above)


def _toyworld_pair(world: ToyWorld, action: str, rng: np.random.Generator) -> np.ndarray:
    corner = rng.integers(world.step, world.max_position - world.step, 2)
    start = tuple(int(v) // world.step * world.step for v in corner)
    return world.rollout([action], 1, start)


def _maze_pair(world: memory_maze.MemoryMaze, action: str, rng: np.random.Generator) -> np.ndarray:
    """Two true frames of `action` where a plan's frames are: from a cell centre facing along an axis, a few
    quarter cells walked and a few frames turned, as a way out of whole-chunk motions passes; a walk that a wall
    would stop is drawn again (its frames would not show it)."""
    cells = _free_cells(world)
    motion = memory_maze.parse_action(action)
    for _ in range(100):
        cell = cells[int(rng.integers(len(cells)))]
        pose = _pose_at(world, MazeStart(cell, int(rng.integers(4)) * QUARTER))
        for _ in range(int(rng.integers(QUARTER))):
            pose = world.step(pose, "walk forward")
        if motion in ("left", "right"):
            for _ in range(int(rng.integers(QUARTER))):
                pose = pose.moved(motion)
        following = world.step(pose, action)
        if following == pose.moved(motion):
            return np.stack([world.render_pose(pose), world.render_pose(following)])
    raise ValueError(f"Memory Maze {world.seed}: no free place to {action!r}.")


def _maze_context(world: memory_maze.MemoryMaze, frames: int) -> np.ndarray:
    """`frames` true frames of walking forward into a cell with free cells ahead and behind, where every maze
    action can play a whole chunk (the next-chunk evaluation's context, `evaluation.maze_quality`)."""
    from ..evaluation.maze_quality import gate_start  # one definition of that place; imported late (no cycle)

    start = gate_start(world)
    return world.rollout(["walk forward"], frames, start)[1:]


def _toyworld_distance(world: ToyWorld, position: tuple[int, int], other: tuple[int, int]) -> float:
    return math.hypot(position[0] - other[0], position[1] - other[1]) / world.view_size


PLANNING_WORLDS: dict[str, PlanningWorld] = {
    "toyworld": PlanningWorld(
        name="toyworld", unit="views", home_radius=0.5,
        make_task=lambda seed, **kwargs: make_retrace_task(seed, **kwargs),
        task_from_actions=lambda *args, **kwargs: retrace_task_from_actions(*args, **kwargs),
        parse_action=toyworld.parse_action,
        view=lambda world, position: world.render(*position),
        distance=_toyworld_distance, heading_error=None, pose_list=list,
        true_pair=_toyworld_pair,
        generation_context=lambda world, frames: world.rollout(["stay"], frames - 1),
        model_dir=DEFAULT_PLANNER_DIR, idm_dir=DEFAULT_IDM_DIR,
        default_outward=("move right",) * 3 + ("move down",) * 2 + ("move left",) * 2,
        default_memory="panorama", way_back="instruction",
    ),
    "memory-maze": PlanningWorld(
        name="memory-maze", unit="cells", home_radius=0.5,
        make_task=make_maze_retrace_task,
        task_from_actions=maze_retrace_task_from_actions,
        parse_action=memory_maze.parse_action,
        view=lambda world, pose: world.render_pose(pose),
        distance=maze_distance, heading_error=maze_heading_error, pose_list=lambda pose: pose.to_list(),
        true_pair=_maze_pair,
        generation_context=_maze_context,
        model_dir=PACKAGE_DIR / "models" / "memory-maze", idm_dir=DEFAULT_MAZE_IDM_DIR,
        # The maze's start faces its longest free corridor (at least two cells in the 9 x 9 mazes): two cells
        # along it, a half turn, a cell back the way it came: free in every maze, longer than the context.
        default_outward=("walk forward", "walk forward", "turn left", "turn left", "walk forward"),
        default_memory="poses", way_back="reverse",
    ),
}


def closest_distances(task: RetraceTask, positions: list) -> list[float]:
    """For each waypoint of the way out, the closest any of `positions` came to it, in the world's units
    (Table 2's measure)."""
    kind, world = task.kind, task.episode.world
    return [min(kind.distance(world, p, waypoint) for p in positions) for waypoint in task.waypoints]


def retrace_scores(task: RetraceTask, positions: list) -> dict:
    """Scores of an executed return (camera poses, the first where the way out ended): mean closest distance to
    the outward waypoints and the final distance to the start, in the world's units (`units`); where the
    camera turns, the final heading error in degrees, and "home" asks for a heading within 45 degrees too."""
    kind = task.kind
    distances = closest_distances(task, positions)
    final = kind.distance(task.episode.world, positions[-1], task.start)
    scores = {"mean_closest_distance": float(np.mean(distances)), "closest_distances": distances,
              "final_distance": final, "home": final <= kind.home_radius, "units": kind.unit}
    if kind.heading_error is not None:
        heading = kind.heading_error(positions[-1], task.start)
        scores["final_heading_error"] = heading
        scores["home"] = scores["home"] and heading <= 45.0
    return scores
