"""The retrace task of planning (paper section 4.2, Table 2), on ToyWorld.

The camera goes out along a path of several legs, each a turn from the last, for longer than the world
model's context window; then it is told, in free text, to go back to the start. A plan succeeds when it
retraces the way out: the score is the closest the executed return comes to each waypoint of the way out
(the camera's place at the end of every outward chunk), in views, and the final distance to the start.

For training (`slowfast-vgen train --stage slow-fast --families retrace`) an episode is the way out, with
its directions as actions, then the way back and one chunk of standing still at the start, all with an
instruction paraphrase as their action: what the world model must learn is where the instruction leads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from .episodes import MOVES, EpisodePath, place_path
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

    episode: EpisodePath
    num_outward: int
    instruction: str

    @property
    def outward_actions(self) -> tuple[str, ...]:
        return self.episode.actions[:self.num_outward]

    @property
    def return_actions(self) -> tuple[str, ...]:
        """The true way back, then one chunk of standing still."""
        return self.episode.actions[self.num_outward:]

    @property
    def start(self) -> tuple[int, int]:
        return self.episode.positions[0]

    @property
    def waypoints(self) -> list[tuple[int, int]]:
        """Where the camera is at the end of each outward chunk, the start first (scored on the way back)."""
        frames = self.episode.chunk_frames
        return [self.episode.positions[index * frames] for index in range(self.num_outward + 1)]

    def outward_frames(self) -> np.ndarray:
        """The start frame and the outward chunks' true frames (1 + outward chunks * chunk_frames, H, W, 3)."""
        return self.episode.frames()[:1 + self.num_outward * self.episode.chunk_frames]

    def training_labels(self, rng: random.Random) -> list[str]:
        """The actions a training episode is learned with: the outward directions, then an instruction."""
        instruction = rng.choice(RETRACE_INSTRUCTIONS)
        return list(self.outward_actions) + [instruction] * len(self.return_actions)

    def describe(self) -> dict:
        return {**self.episode.describe(), "num_outward": self.num_outward, "instruction": self.instruction,
                "waypoints": [list(p) for p in self.waypoints]}


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


def closest_distances(positions: list[tuple[int, int]], waypoints: list[tuple[int, int]], view_size: int) -> list[float]:
    """For each waypoint, the closest any of `positions` came to it, in views (Table 2's measure)."""
    points = np.asarray(positions, dtype=np.float64)
    return [float(np.sqrt(((points - np.asarray(w, dtype=np.float64)) ** 2).sum(1)).min()) / view_size
            for w in waypoints]


def retrace_scores(task: RetraceTask, positions: list[tuple[int, int]]) -> dict:
    """Scores of an executed return (camera positions, the first where the way out ended): mean closest
    distance to the outward waypoints and the final distance to the start, both in views."""
    view = task.episode.world.view_size
    distances = closest_distances(positions, task.waypoints, view)
    final = float(np.hypot(positions[-1][0] - task.start[0], positions[-1][1] - task.start[1])) / view
    return {"mean_closest_distance": float(np.mean(distances)), "closest_distances": distances,
            "final_distance": final, "home": final <= 0.5}
