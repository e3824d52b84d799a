"""The panorama memory inside the pipeline: what a chunk recalls of the places the episode has shown, the
recalled places kept while sampling, and the panorama following and pasting each new chunk.

`PanoramaRecallMixin` gives `SlowFastVGenPipeline` these steps; the panorama itself is `panorama.Panorama`.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import replace
from typing import Sequence

import torch

from .episodic_memory import EpisodicMemory
from .panorama import Panorama, recall_mask

# Where a panorama memory's camera goes in the places it brings back (`__call__`'s `recall`).
RECALL_MODES = ("action", "way back")


class PanoramaRecallMixin:
    """The panorama memory's steps of a chunk call and of a memory update."""

    @staticmethod
    def panorama_only(memory: EpisodicMemory) -> bool:
        """A memory of its panorama alone, one that trains no Temp-LoRA (the `panorama` preset)."""
        return memory.config.panorama and memory.config.steps_per_update == 0

    # ------------------------------------------------------------------ writing: after each chunk

    def updated_panorama(self, panorama: Panorama | None, previous_latents: torch.Tensor,
                         new_latents: torch.Tensor, action: str | None) -> Panorama:
        """The panorama memory with the new chunk pasted in (started from the previous chunk if there is none)."""
        if new_latents.shape[0] != 1:
            raise ValueError(f"The panorama memory follows one episode at a time; got a batch of "
                             f"{new_latents.shape[0]} chunks. Generate episodes one by one, or use a memory "
                             "without `panorama`.")
        if panorama is None:
            panorama = Panorama.start(self.postprocess(previous_latents, "np")[0])
        elif not panorama.lost:
            followed = self.panorama_at(panorama, previous_latents)
            if followed is None:
                warnings.warn("The previous chunk is nowhere in the panorama memory; it is lost (no longer read or "
                              "written). Continue an episode from a chunk of it.", RuntimeWarning, stacklevel=3)
                return replace(panorama, lost=True)
            panorama = followed
        return self.panorama_with_chunk(panorama, new_latents, action)

    def panorama_at(self, panorama: Panorama, latents: torch.Tensor) -> Panorama | None:
        """`panorama` with its camera at the last frame of `latents` (`Panorama.following`), or None where it
        shows that frame nowhere. The chunk the panorama last wrote is recognised without decoding it again."""
        last = latents[:, :, -1:]
        written = panorama.last_latents
        if written is not None and written.shape == last.shape and torch.equal(written, last.detach().cpu()):
            return panorama
        return panorama.following(self.postprocess(last, "np")[0, 0])

    def panorama_with_chunk(self, panorama: Panorama, latents: torch.Tensor, action: str | None,
                            paste: bool = True) -> Panorama:
        """`Panorama.with_frames` of the decoded chunk `latents`, remembering the latents of its last frame."""
        updated = panorama.with_frames(self.postprocess(latents, "np")[0], action, paste=paste)
        return replace(updated, last_latents=latents[:, :, -1:].detach().cpu().clone())

    # ------------------------------------------------------------------ reading: during a chunk call

    def prepare_recall(self, memory: EpisodicMemory | None, action, context: torch.Tensor, num_frames: int,
                       prompt_embeds: torch.Tensor, num_inference_steps: int, conditioning: str,
                       recall: str | Sequence[tuple[int, int]] = "action"):
        """What the panorama memory knows of the frames about to be shown: (latents, mask) to keep while
        sampling, or None. The camera goes as `recall` says (see `__call__`); with "action", an action the
        episode has not played yet is first measured on a probe chunk sampled without recall (its own fixed
        noise, so the caller's generator is not touched), as is, every time, an action whose motion changed
        from chunk to chunk. `context` is the prepared context (the frames that condition, on the device)."""
        if memory is not None and memory.config.poses:
            return self.recall_poses(memory, action, context, num_frames)
        panorama = memory.panorama if memory is not None and memory.config.panorama else None
        if panorama is None or panorama.lost:
            return None
        if not isinstance(action, str) or context.shape[0] != 1:
            raise ValueError("The panorama memory follows one episode at a time: give one action and a context "
                             "of batch 1, or use a memory without `panorama`.")
        panorama = self.panorama_at(panorama, context)
        if panorama is None:
            warnings.warn("The context's last frame is nowhere in the panorama memory; nothing is recalled for this "
                          "chunk. Continue an episode from one of its chunks, or from a place it has seen.",
                          RuntimeWarning, stacklevel=3)
            return None
        if recall == "way back":
            steps = panorama.way_back(num_frames)
        elif recall != "action":
            steps = [tuple(step) for step in recall]
        elif panorama.motions.get(action) is not None:
            steps = [panorama.motions[action]] * num_frames
        else:
            motion = panorama.motion_of(self._probe_frames(action, context, num_frames, prompt_embeds,
                                                           num_inference_steps, conditioning, memory))
            if motion is None:
                return None
            steps = [motion] * num_frames
        recalled = panorama.recall_along(steps)
        if recalled is None:
            return None
        frames, known = recalled
        mask = recall_mask(known, tuple(context.shape[-2:]))
        if not mask.any():
            return None
        latents = self.encode_frames(frames).to(context.device, context.dtype)
        return latents, mask.to(latents.device, latents.dtype)

    @staticmethod
    def probes(memory: EpisodicMemory | None, action: str) -> bool:
        """Whether a chunk of `action` with `memory` (recalling along the action) first samples a probe
        chunk to measure the action's motion: a panorama memory that has not seen `action` move yet."""
        if memory is None or memory.config.poses or not memory.config.panorama:
            return False
        panorama = memory.panorama
        return panorama is not None and not panorama.lost and panorama.motions.get(action) is None

    def _probe_frames(self, action: str, context: torch.Tensor, num_frames: int, prompt_embeds: torch.Tensor,
                      num_inference_steps: int, conditioning: str, memory: EpisodicMemory):
        """The decoded frames (F,H,W,C) of a probe chunk: `action` sampled with the memory but without its
        panorama, from noise of its own (seeded by the action), to see how the action moves the camera."""
        generator = torch.Generator().manual_seed(zlib.crc32(action.encode()))
        latents = self._sample_chunk(context, prompt_embeds, num_frames, conditioning, replace(memory, panorama=None),
                                     None, num_inference_steps, generator)
        return self.postprocess(latents, "np")[0]

    def recall_places(self, latents: torch.Tensor, recalled, noise: torch.Tensor, step: int) -> torch.Tensor:
        """The sample after denoising step `step`, its known places replaced by the panorama's, noised to the
        next timestep with the sample's own initial noise (clean after the last step), so that the UNet
        blends the rest of the frame into them at every later step. `recalled`: `prepare_recall`'s pair."""
        known, mask = recalled
        timesteps = self.scheduler.timesteps
        if step + 1 < len(timesteps):
            known = self.scheduler.add_noise(known, noise, timesteps[step + 1:step + 2])
        return mask * known + (1 - mask) * latents
