"""ToyWorld: a seeded 2-D world seen through a moving camera, with every frame of every path known.

It is the project's ground truth. The world is a large picture (by default 12 x 12 views) of coloured
regions, soft texture and landmarks (shapes of contrasting colours), so a place can be recognised when
it comes back into view. Free-text actions move the camera by a fixed step per frame; every action has
several paraphrases, some of which are held out of training to test generalisation over wording.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "stay": (0, 0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "stay": "stay"}

# Paraphrases seen in training, then the held-out ones (made of words seen in other paraphrases).
TRAIN_PARAPHRASES = {
    "left": ("move left", "go left", "walk west", "pan left", "head west"),
    "right": ("move right", "go right", "walk east", "pan right", "head east"),
    "up": ("move up", "go up", "walk north", "pan up", "head north"),
    "down": ("move down", "go down", "walk south", "pan down", "head south"),
    "stay": ("stay", "stay still", "wait", "hold position", "don't move"),
}
HELD_OUT_PARAPHRASES = {
    "left": ("walk left",),
    "right": ("head right",),
    "up": ("go north",),
    "down": ("move south",),
    "stay": ("hold still",),
}
_PHRASE_TO_DIRECTION = {
    phrase: direction
    for table in (TRAIN_PARAPHRASES, HELD_OUT_PARAPHRASES)
    for direction, phrases in table.items()
    for phrase in phrases
}


def parse_action(action: str) -> str:
    """The direction ("left", "right", "up", "down", "stay") a free-text ToyWorld action means."""
    key = " ".join(action.lower().split())
    if key in DIRECTIONS:
        return key
    if key in _PHRASE_TO_DIRECTION:
        return _PHRASE_TO_DIRECTION[key]
    raise ValueError(
        f"ToyWorld does not know the action {action!r}; known actions: {', '.join(sorted(_PHRASE_TO_DIRECTION))}."
    )


def reverse_actions() -> dict[str, str]:
    """Every action ToyWorld knows -> the training phrase of the opposite move (a world model's
    `reverse_actions`: what Temp-LoRA learns a clip played backward with)."""
    return {phrase: TRAIN_PARAPHRASES[OPPOSITE[direction]][0] for phrase, direction in _PHRASE_TO_DIRECTION.items()}


@dataclass
class Sample:
    """One training sample in the paper's format: (input chunk, action, output chunk), frames uint8 HWC."""

    context: np.ndarray
    action: str
    target: np.ndarray


class ToyWorld:
    """A deterministic world of `world_views` x `world_views` views of `view_size` pixels.

    Args:
        seed: picks the world; the same seed renders the same pixels everywhere, always.
        view_size: camera window in pixels (square).
        step: pixels the camera moves per frame.
        world_views: world width and height, in views.
    """

    def __init__(self, seed: int = 0, view_size: int = 64, step: int = 4, world_views: int = 12):
        if view_size < 8 or step < 1 or world_views < 8:
            raise ValueError("ToyWorld needs view_size >= 8, step >= 1 and world_views >= 8.")
        self.seed, self.view_size, self.step = seed, view_size, step
        self.size = view_size * world_views
        self.image = _paint_world(np.random.default_rng(seed), self.size, view_size)

    @property
    def max_position(self) -> int:
        return self.size - self.view_size

    def center(self) -> tuple[int, int]:
        middle = (self.max_position // 2) // self.step * self.step
        return middle, middle

    def render(self, x: int, y: int) -> np.ndarray:
        """The view whose top-left corner is (x, y), as an (H, W, 3) uint8 array (a copy)."""
        if not (0 <= x <= self.max_position and 0 <= y <= self.max_position):
            raise ValueError(f"Camera position ({x}, {y}) is outside the world (0..{self.max_position}).")
        return self.image[y:y + self.view_size, x:x + self.view_size].copy()

    def start_frame(self, position: tuple[int, int] | None = None) -> np.ndarray:
        return self.render(*(position or self.center()))

    def path(self, actions: list[str], frames_per_action: int, start: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Camera positions: the start, then one per frame; the camera stops at the world's edge."""
        x, y = start or self.center()
        positions = [(x, y)]
        for action in actions:
            dx, dy = DIRECTIONS[parse_action(action)]
            for _ in range(frames_per_action):
                x = min(max(x + dx * self.step, 0), self.max_position)
                y = min(max(y + dy * self.step, 0), self.max_position)
                positions.append((x, y))
        return positions

    def rollout(self, actions: list[str], frames_per_action: int, start: tuple[int, int] | None = None) -> np.ndarray:
        """The exact frames (1 + len(actions) * frames_per_action, H, W, 3) of an action sequence."""
        return np.stack([self.render(x, y) for x, y in self.path(actions, frames_per_action, start)])

    def sample(self, rng: random.Random, num_context: int, num_generate: int, stay_probability: float = 0.2,
               paraphrases: dict = TRAIN_PARAPHRASES) -> Sample:
        """A random training sample: `num_context` frames of one motion, then `num_generate` of a new action.

        Most samples move, since motion is what the model must learn; "stay" teaches it to copy its context.
        """
        moving = [d for d in DIRECTIONS if d != "stay"]
        direction = "stay" if rng.random() < stay_probability else rng.choice(moving)
        previous = rng.choice(list(DIRECTIONS))
        reach = (num_context + num_generate) * self.step
        low, high = reach, self.max_position - reach
        start = (rng.randrange(low, high, self.step), rng.randrange(low, high, self.step))
        before = self.path([previous], num_context - 1, start)
        frames_before = [self.render(*p) for p in before]
        after = self.path([direction], num_generate, before[-1])[1:]
        return Sample(
            context=np.stack(frames_before),
            action=rng.choice(paraphrases[direction]),
            target=np.stack([self.render(*p) for p in after]),
        )


def sample_lengths(rng: random.Random, context_window: int, max_generate: int,
                   image_start_probability: float = 0.25) -> tuple[int, int]:
    """(f_p, f_g) of a training batch: mixed inside the context window (paper D.1), with f_p = 1 (an image
    start) a quarter of the time. Drawn once per batch, since a batch's clips must have one length."""
    num_generate = rng.randint(1, max_generate)
    num_context = 1 if rng.random() < image_start_probability else rng.randint(1, context_window - num_generate)
    return num_context, num_generate


def out_and_back(direction: str, chunks_out: int) -> list[str]:
    """An out-and-back action script (one action per chunk) whose return revisits the outward views."""
    return [TRAIN_PARAPHRASES[direction][0]] * chunks_out + [TRAIN_PARAPHRASES[OPPOSITE[direction]][0]] * chunks_out


def loop(chunks_per_side: int) -> list[str]:
    """A square loop (right, down, left, up) that ends where it started."""
    return [TRAIN_PARAPHRASES[d][0] for d in ("right", "down", "left", "up") for _ in range(chunks_per_side)]


def _paint_world(rng: np.random.Generator, size: int, view_size: int) -> np.ndarray:
    """Voronoi regions of distinct colours, a soft texture, roads and many landmarks, drawn with OpenCV."""
    num_regions = max(24, (size // view_size) ** 2 // 2)
    seeds = rng.uniform(0, size, (num_regions, 2)).astype(np.float32)
    hues = rng.permutation(np.linspace(0, 179, num_regions, endpoint=False))
    palette = np.stack([hues, rng.uniform(90, 200, num_regions), rng.uniform(110, 230, num_regions)], 1)
    palette = cv2.cvtColor(palette.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.float32)

    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)), -1)
    nearest = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf, np.float32)
    for index, point in enumerate(seeds):
        distance = ((grid - point) ** 2).sum(-1)
        closer = distance < best
        nearest[closer], best[closer] = index, distance[closer]
    image = palette[nearest]

    texture = cv2.resize(rng.normal(0, 1, (size // 16, size // 16)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    image += 18 * texture[..., None]
    image = np.clip(image, 0, 255).astype(np.uint8)

    for _ in range(size // view_size * 2):
        start = tuple(int(v) for v in rng.integers(0, size, 2))
        end = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(image, start, end, (40, 40, 40), int(rng.integers(3, 6)), cv2.LINE_AA)

    for _ in range((size // view_size) ** 2 * 3):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        radius = int(rng.integers(5, 12))
        shape = rng.integers(0, 3)
        if shape == 0:
            cv2.circle(image, center, radius, color, -1, cv2.LINE_AA)
        elif shape == 1:
            cv2.rectangle(image, (center[0] - radius, center[1] - radius), (center[0] + radius, center[1] + radius),
                          color, -1)
        else:
            points = np.array([[center[0], center[1] - radius], [center[0] - radius, center[1] + radius],
                               [center[0] + radius, center[1] + radius]], np.int32)
            cv2.fillPoly(image, [points], color, cv2.LINE_AA)
        cv2.circle(image, center, 2, (255, 255, 255) if sum(color) < 380 else (0, 0, 0), -1)
    return image
