"""The pose memory: every frame the episode showed, kept at the camera pose its actions imply, and brought
back whenever the camera stands at that pose again, from whichever direction it returns.

It is the panorama memory generalised from a panning camera to one that turns and walks. Generation never
sees the world's true poses: the pose is integrated from the actions, using what each action does to the
pose per frame as the world model's folder records it (`model_index.json`, `action_motions`: action text ->
[turn, walk], in 1/`pose_headings` turns and lattice steps along the heading). A pose is whole numbers
(the heading, and the steps taken along each of the `pose_headings / 2` axes), so the same place and
heading is the same key whatever path led there.

While a chunk is sampled, its frames whose pose is known are kept RePaint-style (as the panorama keeps
places): the stored latents replace the sample's at every step, noised to that step. A frame whose pose has
no view of its own, but whose place was seen facing less than a field of view away, keeps that view turned
by the heading difference (`turn_views.py`, where the model's folder records its `camera_fovy`) on the
latent pixels it covers. The store is bounded
(`MAX_VIEWS` latent frames, 8 KB each for the shipped 64-pixel models); beyond it the oldest view is
evicted. A walk into a wall, which the actions cannot tell, would move the memory's pose but not the
camera: the world models this memory is made for stop at walls, and such an episode must be started over.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np
import torch

from .panorama import recall_mask
from .turn_views import horizontal_fov, turned_view
from .world_actions import motion_table, normalized_action

MAX_VIEWS = 4096


@dataclass(frozen=True)
class PoseViews:
    """The views of an episode by pose (immutable: every change returns a new object)."""

    motions: Mapping[str, tuple[int, int]]
    headings: int
    pose: tuple[int, ...]  # steps along each axis, then the heading
    keys: tuple[tuple[int, ...], ...] = ()  # the stored poses, oldest first
    views: torch.Tensor | None = None  # (len(keys), C, h, w) latents on the CPU
    max_views: int = MAX_VIEWS

    @classmethod
    def start(cls, motions: Mapping[str, tuple[int, int]], headings: int, last_frame: torch.Tensor,
              max_views: int = MAX_VIEWS) -> "PoseViews":
        """A store whose origin (heading 0, no steps) is the pose of `last_frame` (1, C, 1, h, w)."""
        if headings < 4 or headings % 4:
            raise ValueError(f"pose_headings must be a multiple of 4 (at least 4), got {headings}.")
        origin = (0,) * (headings // 2) + (0,)
        return cls(dict(motions), headings, origin, max_views=max_views).with_views([origin], last_frame)

    def __len__(self) -> int:
        return len(self.keys)

    def motion_of(self, action: str) -> tuple[int, int] | None:
        return self.motions.get(normalized_action(action))

    def step(self, pose: tuple[int, ...], motion: tuple[int, int]) -> tuple[int, ...]:
        """The pose one frame of `motion` (turn, walk) later."""
        turn, walk = motion
        axes = self.headings // 2
        heading = (pose[-1] + turn) % self.headings
        steps = list(pose[:-1])
        if walk:
            steps[heading % axes] += walk if heading < axes else -walk
        return (*steps, heading)

    def poses_after(self, action: str, num_frames: int) -> list[tuple[int, ...]]:
        """The poses of the next `num_frames` frames of `action` (ValueError for an action with no motion)."""
        motion = self.motion_of(action)
        if motion is None:
            raise ValueError(f"The pose memory does not know what {action!r} does to the camera: the world model's "
                             f"action_motions name {', '.join(sorted(self.motions))}. Use one of those actions, or a "
                             "memory without `poses`.")
        poses, pose = [], self.pose
        for _ in range(num_frames):
            pose = self.step(pose, motion)
            poses.append(pose)
        return poses

    def with_views(self, poses: list[tuple[int, ...]], latents: torch.Tensor, paste: bool = True) -> "PoseViews":
        """The camera at the last of `poses`; with `paste`, each frame of `latents` (1, C, F, h, w) stored at its
        pose unless a view is already there (places come back as first seen); the oldest beyond the bound go."""
        keys, views = list(self.keys), self.views
        if paste:
            first: dict[tuple[int, ...], int] = {}
            for index, pose in enumerate(poses):
                if pose not in first and pose not in self.keys:
                    first[pose] = index
            if first:
                frames = latents[0, :, list(first.values())].permute(1, 0, 2, 3).detach().cpu().clone()
                keys += list(first)
                views = frames if views is None else torch.cat([views, frames])
                if len(keys) > self.max_views:
                    keys, views = keys[-self.max_views:], views[-self.max_views:]
        return replace(self, pose=poses[-1], keys=tuple(keys), views=views)

    def recall(self, poses: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(latents (1, C, F, h, w), mask (1, 1, F, 1, 1)) of the stored views at `poses`, or None if none is."""
        index = {key: i for i, key in enumerate(self.keys)}
        found = [index.get(pose) for pose in poses]
        if self.views is None or all(i is None for i in found):
            return None
        blank = torch.zeros_like(self.views[0])
        frames = torch.stack([self.views[i] if i is not None else blank for i in found], dim=1)
        mask = torch.tensor([i is not None for i in found], dtype=frames.dtype).view(1, 1, -1, 1, 1)
        return frames.unsqueeze(0), mask

    def turned_from(self, pose: tuple[int, ...], max_turn: int) -> list[tuple[int, int]]:
        """The stored views at the place of `pose` facing at most `max_turn` headings away from it, nearest
        first (ties: the older view first): [(view index, heading of `pose` minus the view's, in
        -headings/2 .. headings/2)]."""
        found = []
        for index, key in enumerate(self.keys):
            if key[:-1] == pose[:-1]:
                turn = (pose[-1] - key[-1] + self.headings // 2) % self.headings - self.headings // 2
                if 0 < abs(turn) <= max_turn:
                    found.append((abs(turn), index, turn))
        return [(index, turn) for _, index, turn in sorted(found)]

    # ------------------------------------------------------------------ in a memory file

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.views is None else {"poses.views": self.views.contiguous()}

    def metadata(self) -> str:
        return json.dumps({"motions": {k: list(v) for k, v in self.motions.items()}, "headings": self.headings,
                           "pose": list(self.pose), "keys": [list(k) for k in self.keys],
                           "max_views": self.max_views})

    @classmethod
    def from_saved(cls, tensors: Mapping[str, torch.Tensor], metadata: str) -> "PoseViews":
        data = json.loads(metadata)
        views = tensors.get("poses.views")
        keys = tuple(tuple(int(v) for v in key) for key in data["keys"])
        if (views is None) != (not keys) or (views is not None and views.shape[0] != len(keys)):
            raise ValueError(f"the pose memory records {len(keys)} poses but holds "
                             f"{0 if views is None else views.shape[0]} views")
        return cls(motion_table(data["motions"]), int(data["headings"]), tuple(int(v) for v in data["pose"]), keys,
                   views, int(data.get("max_views", MAX_VIEWS)))

    def summary(self) -> str:
        return f"pose memory of {len(self)} views (at most {self.max_views})"


def pose_views_after_chunk(views: PoseViews | None, motions: Mapping[str, tuple[int, int]], headings: int,
                           previous_latents: torch.Tensor, new_latents: torch.Tensor, action: str | None,
                           paste: bool = True) -> PoseViews:
    """The pose memory after the chunk `new_latents` of `action` (started at the previous chunk's last frame
    when there is none yet)."""
    if new_latents.shape[0] != 1:
        raise ValueError(f"The pose memory follows one episode at a time; got a batch of {new_latents.shape[0]} "
                         "chunks. Generate episodes one by one, or use a memory without `poses`.")
    if views is None:
        if not motions:
            raise ValueError("The pose memory needs to know what each action does to the camera, and this world "
                             "model's folder records no action_motions (model_index.json). Use a model trained on "
                             "a world with poses (e.g. memory-maze), or a memory without `poses`.")
        views = PoseViews.start(motions, headings, previous_latents[:, :, -1:])
    if action is None:
        raise ValueError("The pose memory needs each chunk's action to follow the camera.")
    return views.with_views(views.poses_after(action, new_latents.shape[2]), new_latents, paste=paste)


class PoseRecallMixin:
    """The pose memory's step of a chunk call, for `SlowFastVGenPipeline` (with `WorldActionsMixin`)."""

    def recall_poses(self, memory, action, context: torch.Tensor, num_frames: int):
        """The stored views at the poses of the next `num_frames` frames of `action`: (latents, mask) to keep
        while sampling, or None where the memory knows nothing of them. With the memory's `turn_views` and
        the model's `camera_fovy`, a pose with no view of its own gets the views of the same place facing
        nearby, turned (`recall_turned_views`): its mask then covers the latent pixels they show."""
        views = memory.poses
        if views is None:
            return None
        if not isinstance(action, str) or context.shape[0] != 1:
            raise ValueError("The pose memory follows one episode at a time: give one action and a context of "
                             "batch 1, or use a memory without `poses`.")
        poses = views.poses_after(action, num_frames)
        recalled = views.recall(poses)
        if memory.config.turn_views and self.camera_fovy is not None:
            recalled = self.recall_turned_views(views, poses, recalled, context)
        if recalled is None:
            return None
        latents, mask = recalled
        return latents.to(context.device, context.dtype), mask.to(context.device, context.dtype)

    def recall_turned_views(self, views: PoseViews, poses: list[tuple[int, ...]], recalled,
                            context: torch.Tensor):
        """`recalled` (`PoseViews.recall`'s pair, or None) with every frame it lacks filled, where it can be, by
        the views of the same place facing at most a field of view away, nearest first, each decoded, turned
        by the heading difference (`turn_views.turned_view`) and encoded again; the mask becomes per latent
        pixel (1, 1, F, h, w), 1 where a pixel is known whole."""
        if views.views is None:
            return recalled
        fovy, step = self.camera_fovy, 360 / views.headings
        latent_size = views.views.shape[-2:]
        size = (latent_size[0] * self.vae_scale_factor, latent_size[1] * self.vae_scale_factor)
        max_turn = math.ceil(horizontal_fov(fovy, *size) / step) - 1
        have = [False] * len(poses) if recalled is None else [bool(v) for v in recalled[1].flatten().tolist()]
        sources = {i: views.turned_from(pose, max_turn) for i, pose in enumerate(poses) if not have[i]}
        sources = {i: found for i, found in sources.items() if found}
        if not sources:
            return recalled
        needed = sorted({index for found in sources.values() for index, _ in found})
        with torch.no_grad():
            decoded = self.postprocess(views.views[needed].permute(1, 0, 2, 3).unsqueeze(0).to(
                self.vae.device, self.vae.dtype), "np")[0]
        decoded = dict(zip(needed, decoded))
        frames, known = [], []
        for found in sources.values():
            image, shown = None, None
            for index, turn in found:  # a turn of +1 heading is to the left (`PoseViews.step`)
                warped, covered = turned_view(decoded[index], fovy, -turn * step)
                if image is None:
                    image, shown = warped, covered
                else:
                    new = covered & ~shown
                    image[new], shown = warped[new], shown | covered
            frames.append(image)
            known.append(shown)
        with torch.no_grad():
            turned = self.encode_frames(np.clip(np.stack(frames), 0, 1)).cpu()
        turned_mask = recall_mask(np.stack(known), tuple(latent_size))
        channels, frame_count = views.views.shape[1], len(poses)
        latents = torch.zeros(1, channels, frame_count, *latent_size, dtype=views.views.dtype)
        mask = torch.zeros(1, 1, frame_count, *latent_size, dtype=views.views.dtype)
        if recalled is not None:
            latents[:] = recalled[0]
            mask[:] = recalled[1]
        for slot, frame in enumerate(sources):
            latents[:, :, frame] = turned[:, :, slot].to(latents.dtype)
            mask[:, :, frame] = turned_mask[:, :, slot].to(mask.dtype)
        return (latents, mask) if mask.any() else recalled
