"""The panorama memory: what an episode showed, pasted where the camera saw it, readable from any direction.

Temp-LoRA stores the transitions an episode played: on ToyWorld it brings a place back only when the way
home retraces the way out and the memory learned the way back (docs/evaluation.md). A place seen long ago
comes back from other directions too (a loop, a detour) when the memory keeps the place itself. This module
keeps it as a 2-D panorama: every generated frame is registered against the one before it (phase
correlation, refined to the whole pixel of least error on the overlap) and pasted where the camera was,
the first sighting of each pixel kept. Before a chunk is generated, the frames the requested action will
show are cut from the panorama, and the sampler keeps the places they already know
(`panorama_recall`: `prepare_recall` and `recall_places`, steps 4 and 7 of the pipeline's `__call__`).

What it assumes: the camera pans (every frame is its predecessor shifted by whole pixels), as in ToyWorld
and top-down or side-scrolling games. A frame that is no such shift of the one before (a cut, a zoom, a
turn of a 3-D camera) loses the panorama: it warns once and is neither written nor read any more, and the
memory carries on as Temp-LoRA alone. What an action does (its motion in pixels per frame) is learned from
the episode: measured on every chunk the action played, or, for an action not played yet, on a probe chunk
the pipeline samples once without recall; an action that moved differently on different chunks is probed
every time it is asked for. No table of actions is needed. The camera's trail (where it was at every
frame) is kept as well: `way_back` retraces it, which is how a plan finds its way home (`recall="way back"`,
docs/planning.md).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

# Whole pixels searched around the phase-correlation peak for the shift of least error.
REFINE_RADIUS = 2
# Two frames whose best-aligned overlap is below this PSNR are no pan of each other: the panorama is lost.
# It lies well between what generated chunks align at and what a cut scores (docs/evaluation.md, "The
# panorama memory").
LOST_BELOW_DB = 18.0
# A frame decoded from the same latents as the stored last frame differs from it by uint8 rounding only.
SAME_FRAME_MSE = 1e-4
# `locate` only considers views the panorama knows this much of.
LOCATE_KNOWN = 0.9
# A latent pixel is recalled when every image pixel under it is known.
KNOWN_FRACTION = 0.999


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame, np.float32), cv2.COLOR_RGB2GRAY)


def camera_shift(previous: np.ndarray, frame: np.ndarray) -> tuple[tuple[int, int], float]:
    """The camera's motion (dx, dy), whole pixels, from `previous` to `frame` (H,W,3 float in [0, 1]), and
    the PSNR (dB) of their overlap at that shift. OpenCV's phase correlation gives the peak; the whole
    pixels around it are searched for the least squared error, since sub-pixel estimates drift when summed."""
    a, b = _gray(previous), _gray(frame)
    window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
    (sx, sy), _ = cv2.phaseCorrelate(a, b, window)
    height, width = a.shape
    best = None
    for dy in range(int(round(-sy)) - REFINE_RADIUS, int(round(-sy)) + REFINE_RADIUS + 1):
        for dx in range(int(round(-sx)) - REFINE_RADIUS, int(round(-sx)) + REFINE_RADIUS + 1):
            h, w = height - abs(dy), width - abs(dx)
            if h < height // 2 or w < width // 2:  # too little overlap to judge
                continue
            # frame[y, x] shows what previous[y + dy, x + dx] showed
            seen = previous[max(dy, 0):max(dy, 0) + h, max(dx, 0):max(dx, 0) + w]
            shown = frame[max(-dy, 0):max(-dy, 0) + h, max(-dx, 0):max(-dx, 0) + w]
            error = float(np.mean((seen - shown) ** 2))
            if best is None or error < best[0]:
                best = (error, dx, dy)
    if best is None:
        return (0, 0), 0.0
    error, dx, dy = best
    return (dx, dy), 100.0 if error <= 1e-10 else float(10 * np.log10(1.0 / error))


def _as_float_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    return frames.astype(np.float32) / 255 if frames.dtype == np.uint8 else frames.astype(np.float32)


@dataclass(frozen=True, eq=False)  # arrays: equal by identity, not element-wise
class Panorama:
    """What an episode showed, in world pixels. Immutable: `with_frames` returns a new panorama.

    `pixels` (H,W,3 uint8) and `known` (H,W bool) cover every place seen; `position` is the top-left corner
    of the last frame in them; `trail` is the corner of every frame pasted, the start first (the way the
    camera came, which `way_back` retraces); `motions` maps each action text to its measured motion (dx, dy)
    in pixels per frame, or to None when it moved differently on different chunks; `lost` is set when a
    frame could not be registered (the panorama is then neither read nor written).
    """

    pixels: np.ndarray
    known: np.ndarray
    position: tuple[int, int]
    last_frame: np.ndarray
    motions: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    lost: bool = False
    trail: tuple[tuple[int, int], ...] = ()
    # The latent frame `last_frame` was decoded from, when the pipeline wrote it (not saved): a context that
    # is that very frame continues the panorama without being decoded again.
    last_latents: torch.Tensor | None = None

    @classmethod
    def start(cls, frames) -> "Panorama":
        """A panorama of `frames` (F,H,W,3, float in [0, 1] or uint8): the start of an episode."""
        frames = _as_float_frames(frames)
        first = (frames[0] * 255).round().astype(np.uint8)
        panorama = cls(pixels=first.copy(), known=np.ones(first.shape[:2], bool), position=(0, 0),
                       last_frame=first, trail=((0, 0),))
        return panorama.with_frames(frames[1:]) if len(frames) > 1 else panorama

    @property
    def view_size(self) -> tuple[int, int]:
        return self.last_frame.shape[:2]

    def _registered(self, frames: np.ndarray) -> tuple[list[tuple[int, int]], float | None]:
        """The camera shift of each of `frames` from the one before (the first from the last frame); stops at
        the first frame that is no pan of its predecessor and returns its PSNR as the second value."""
        previous, shifts = self.last_frame.astype(np.float32) / 255, []
        for frame in frames:
            shift, psnr = camera_shift(previous, frame)
            if psnr < LOST_BELOW_DB:
                return shifts, psnr
            shifts.append(shift)
            previous = frame
        return shifts, None

    def motion_of(self, frames) -> tuple[int, int] | None:
        """The mean motion (dx, dy) per frame of `frames` continuing from the last frame (None if lost)."""
        shifts, failed = self._registered(_as_float_frames(frames))
        return None if failed is not None or not shifts else _mean_motion(shifts)

    def with_frames(self, frames, action: str | None = None, paste: bool = True) -> "Panorama":
        """This panorama with `frames` (the episode's next frames) registered and pasted; with `action`, the
        motion they show is recorded as what that action does. `paste=False` only follows the camera (a
        frozen memory: nothing new is written, places are still recalled where the camera now is). A frame
        that cannot be registered loses the panorama (one warning)."""
        if self.lost or not len(frames):
            return self
        frames = _as_float_frames(frames)
        shifts, failed = self._registered(frames)
        if failed is not None:
            warnings.warn(
                f"The panorama memory lost track of the camera (a frame matches no pan of the one before it: "
                f"{failed:.1f} dB < {LOST_BELOW_DB} dB). It is no longer read or written; the memory carries on "
                "as Temp-LoRA alone (the paper's update where it trained none). It assumes a panning camera (docs/evaluation.md).",
                RuntimeWarning, stacklevel=2)
            return replace(self, lost=True)
        pixels, known, (x, y), trail = self.pixels, self.known, self.position, list(self.trail)
        height, width = self.view_size
        if paste:  # copied first: the panorama given stays as it was
            pixels, known = pixels.copy(), known.copy()
        for frame, (dx, dy) in zip(frames, shifts):
            x, y = x + dx, y + dy
            if paste:
                pixels, known, (grown_x, grown_y) = _grown(pixels, known, x, y, width, height)
                if (grown_x, grown_y) != (x, y):  # the canvas grew up or left: every place moved with it
                    trail = [(tx + grown_x - x, ty + grown_y - y) for tx, ty in trail]
                x, y = grown_x, grown_y
                trail.append((x, y))
                window = (slice(y, y + height), slice(x, x + width))
                new = ~known[window]
                pixels[window][new] = (frame[new] * 255).round().astype(np.uint8)
                known[window] |= new
        motions = dict(self.motions)
        if action is not None:
            measured = _mean_motion(shifts)
            # An action whose motion depends on where it is played ("go back to the start") is marked None:
            # it is measured afresh, on a probe chunk, every time it is asked for.
            motions[action] = measured if motions.get(action, measured) == measured else None
        return Panorama(pixels=pixels, known=known, position=(x, y),
                        last_frame=(frames[-1] * 255).round().astype(np.uint8), motions=motions, trail=tuple(trail))

    def following(self, frame) -> "Panorama | None":
        """This panorama with the camera at `frame` (H,W,3): itself when `frame` is its last frame, else the
        camera moved to where the panorama shows `frame` (`locate`), or None when it shows it nowhere (the
        episode went on elsewhere, or continues from another image)."""
        if self.lost:
            return None
        frame = _as_float_frames(frame)
        if float(np.mean((frame - self.last_frame.astype(np.float32) / 255) ** 2)) <= SAME_FRAME_MSE:
            return self
        position = self.locate(frame)
        if position is None:
            return None
        return replace(self, position=position, last_frame=(frame * 255).round().astype(np.uint8),
                       last_latents=None)

    def locate(self, frame: np.ndarray) -> tuple[int, int] | None:
        """Where in the panorama a view looks like `frame` (its top-left corner), among the places it knows
        at least `LOCATE_KNOWN` of; None if the best match is below `LOST_BELOW_DB` on the known pixels."""
        height, width = self.view_size
        if self.known.shape[0] < height or self.known.shape[1] < width:
            return None
        known = self.known.astype(np.float32)
        pixels = self.pixels.astype(np.float32) / 255 * known[..., None]
        template = np.ascontiguousarray(frame, np.float32)
        ones = np.ones((height, width), np.float32)
        # Squared error over the known pixels of every window: sum K P^2 - 2 sum K P T + sum K T^2.
        count = cv2.matchTemplate(known, ones, cv2.TM_CCORR)
        error = cv2.matchTemplate(np.ascontiguousarray((pixels ** 2).sum(-1)), ones, cv2.TM_CCORR)
        error -= 2 * cv2.matchTemplate(pixels, template, cv2.TM_CCORR)
        error += cv2.matchTemplate(known, np.ascontiguousarray((template ** 2).sum(-1)), cv2.TM_CCORR)
        usable = count >= LOCATE_KNOWN * height * width
        if not usable.any():
            return None
        mse = np.where(usable, np.maximum(error, 0) / np.maximum(count, 1) / 3, np.inf)
        y, x = np.unravel_index(int(np.argmin(mse)), mse.shape)
        if mse[y, x] > 10 ** (-LOST_BELOW_DB / 10):
            return None
        return int(x), int(y)

    def recall(self, motion: tuple[int, int], num_frames: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The next `num_frames` frames of a camera moving `motion` pixels a frame (`recall_along`)."""
        return self.recall_along([motion] * num_frames)

    def recall_along(self, steps: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray] | None:
        """The next frames of a camera moving `steps[i]` pixels (dx, dy) before frame i, as far as the panorama
        knows them: (frames F,H,W,3 float in [0, 1], known F,H,W bool), or None when it knows none of them."""
        if self.lost:
            return None
        height, width = self.view_size
        frames = np.zeros((len(steps), height, width, 3), np.float32)
        known = np.zeros((len(steps), height, width), bool)
        x, y = self.position
        for index, (dx, dy) in enumerate(steps):
            x, y = x + dx, y + dy
            top, left = max(y, 0), max(x, 0)
            bottom, right = min(y + height, self.known.shape[0]), min(x + width, self.known.shape[1])
            if top >= bottom or left >= right:
                continue
            inside = (slice(top - y, bottom - y), slice(left - x, right - x))
            frames[index][inside] = self.pixels[top:bottom, left:right].astype(np.float32) / 255
            known[index][inside] = self.known[top:bottom, left:right]
        return (frames, known) if known.any() else None

    def way_back(self, num_frames: int) -> list[tuple[int, int]]:
        """The camera's steps (dx, dy) for the next `num_frames` frames going back the way the episode came: to
        the nearest place of the trail (the earliest of those as near), then back along the trail to the start,
        then still. The steps off the trail are as long as the trail's own (its median step)."""
        trail = np.asarray(self.trail or (self.position,))
        moves = np.abs(np.diff(trail, axis=0)).max(axis=1) if len(trail) > 1 else np.zeros(0)
        speed = int(np.median(moves[moves > 0])) if (moves > 0).any() else 1
        nearest = int(np.argmin(np.abs(trail - np.asarray(self.position)).sum(axis=1)))  # in whole steps
        route, (x, y) = [], self.position
        for target in map(tuple, trail[nearest::-1].tolist()):
            while (x, y) != target and len(route) < num_frames:  # whole steps, along x first
                dx = int(np.clip(target[0] - x, -speed, speed))
                dy = 0 if dx else int(np.clip(target[1] - y, -speed, speed))
                route.append((dx, dy))
                x, y = x + dx, y + dy
        return route[:num_frames] + [(0, 0)] * (num_frames - len(route))

    # ---------------------------------------------------------------- saving with the memory

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"panorama.pixels": torch.from_numpy(np.ascontiguousarray(self.pixels)),
                "panorama.known": torch.from_numpy(self.known.astype(np.uint8)),
                "panorama.last_frame": torch.from_numpy(np.ascontiguousarray(self.last_frame))}

    def metadata(self) -> str:
        return json.dumps({"position": list(self.position), "lost": self.lost, "trail": [list(p) for p in self.trail],
                           "motions": {text: None if m is None else list(m) for text, m in self.motions.items()}})

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], metadata: str) -> "Panorama":
        values = json.loads(metadata)
        pixels, known = tensors["panorama.pixels"].numpy(), tensors["panorama.known"].numpy().astype(bool)
        last = tensors["panorama.last_frame"].numpy()
        if pixels.ndim != 3 or known.shape != pixels.shape[:2] or last.ndim != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"panorama tensors of shapes {tuple(pixels.shape)}, {tuple(known.shape)} and "
                             f"{tuple(last.shape)} do not fit together")
        position = tuple(int(v) for v in values["position"])
        motions = {str(text): None if m is None else (int(m[0]), int(m[1])) for text, m in values["motions"].items()}
        trail = tuple((int(p[0]), int(p[1])) for p in values.get("trail", [position]))  # older saves: none
        return cls(pixels=pixels, known=known, position=position, last_frame=last, motions=motions,
                   lost=bool(values["lost"]), trail=trail)


def _mean_motion(shifts: list[tuple[int, int]]) -> tuple[int, int]:
    mean = np.mean(np.asarray(shifts, np.float64), axis=0)
    return int(round(mean[0])), int(round(mean[1]))


def _grown(pixels: np.ndarray, known: np.ndarray, x: int, y: int, width: int, height: int):
    """The canvas padded (by at least a view, so it grows rarely) to hold a frame at (x, y); (x, y) shifted."""
    pad_top, pad_left = max(-y, 0), max(-x, 0)
    pad_bottom, pad_right = max(y + height - known.shape[0], 0), max(x + width - known.shape[1], 0)
    if not (pad_top or pad_left or pad_bottom or pad_right):
        return pixels, known, (x, y)
    pads = [p and p + side for p, side in ((pad_top, height), (pad_bottom, height), (pad_left, width),
                                           (pad_right, width))]
    pixels = np.pad(pixels, ((pads[0], pads[1]), (pads[2], pads[3]), (0, 0)))
    known = np.pad(known, ((pads[0], pads[1]), (pads[2], pads[3])))
    return pixels, known, (x + pads[2], y + pads[0])


def recall_mask(known: np.ndarray, latent_size: tuple[int, int]) -> torch.Tensor:
    """Known (F,H,W) image pixels -> (1,1,F,h,w) float mask of the latent pixels all of whose pixels are known."""
    fraction = torch.nn.functional.adaptive_avg_pool3d(
        torch.from_numpy(known.astype(np.float32))[None, None], (known.shape[0], *latent_size))
    return (fraction >= KNOWN_FRACTION).float()
