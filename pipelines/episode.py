"""The episode loop of `SlowFastVGenPipeline`, paper Algorithm 1 (a) lines 2-15: generate a chunk (line 8),
then update the memory on the previous chunk ⊕ the new one (lines 11-14, `update_memory`), and go on.

`EpisodeMixin` gives the pipeline `new_memory` and `update_memory` (the memory between two chunks),
`stream_episode` (chunk by chunk: the loop of `generate`, the nodes and `evaluate`) and `generate_episode`
(the whole episode at once).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.utils import BaseOutput

from ._deprecation import warn_deprecated
from .episodic_memory import EpisodicMemory, UpdateClip
from .fast_learning import update_memory as fast_update  # the function; `update_memory` is also a keyword here
from .image_input import ImageInput
from .lora_layers import check_memory, new_memory
from .memory_settings import TempLoRAConfig, temp_lora_preset
from .pose_memory import pose_views_after_chunk


class _NotGiven:
    def __repr__(self) -> str:
        return "<not given>"


_NOT_GIVEN = _NotGiven()


def memory_generator_for(generator: torch.Generator | list[torch.Generator] | None) -> torch.Generator:
    """The CPU generator an episode's Temp-LoRA updates draw from, derived from the sampling `generator`.

    Seeded with NumPy's `SeedSequence([seed, 1])` of the generator's initial seed (the first one of a list;
    `torch.initial_seed()` without one), so it draws nothing from the sampling stream and its numbers are
    independent of any sampling stream, this episode's or another seed's.
    """
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    seed = generator.initial_seed() if generator is not None else torch.initial_seed()
    derived = np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(derived) & (2**63 - 1))


@dataclass
class EpisodeStep:
    """One step of an episode: the action taken, the latents of the chunk it generated, and the memory after
    the step's update (None where the memory is not kept).

    A step of the episode, as `stream_episode` yields it; not the clip an update learns from (`UpdateClip`).
    """

    index: int
    action: str
    latents: torch.Tensor
    memory: EpisodicMemory | None


@dataclass
class EpisodeOutput(BaseOutput):
    """A whole episode: the first frame's latent and every step, in order, and the final memory."""

    latents: torch.Tensor
    chunks: list[EpisodeStep]
    memory: EpisodicMemory | None


def memory_learning(temp_lora=_NOT_GIVEN, memory_settings: TempLoRAConfig | str | None = None,
                    update_memory: bool = True) -> tuple[bool, TempLoRAConfig | None]:
    """Whether an episode updates its memory, and with which settings (None: the memory's own, or the
    defaults for a new memory), from `stream_episode`'s arguments, the deprecated `temp_lora` included.

    `memory_settings` may be a `TempLoRAConfig` or the name of a preset (`TEMP_LORA_PRESETS`).
    """
    if temp_lora is not _NOT_GIVEN:
        if memory_settings is not None or update_memory is not True:
            raise ValueError("Pass memory_settings / update_memory, or the deprecated temp_lora, not both.")
        warn_deprecated("stream_episode(temp_lora=...) is deprecated: pass memory_settings=<TempLoRAConfig or "
                        "preset name> to learn with those settings, or update_memory=False to keep the memory "
                        "as it is.", stacklevel=4)
        if isinstance(temp_lora, (str, TempLoRAConfig)):
            memory_settings = temp_lora
        else:
            update_memory = bool(temp_lora)
    if isinstance(memory_settings, str):
        memory_settings = temp_lora_preset(memory_settings)
    if memory_settings is not None and not isinstance(memory_settings, TempLoRAConfig):
        raise ValueError(f"memory_settings must be a TempLoRAConfig, a preset name or None, got {memory_settings!r}.")
    if memory_settings is not None and not update_memory:
        raise ValueError("memory_settings are the settings of memory updates, and update_memory=False runs none: "
                         "drop one of them.")
    return update_memory, memory_settings


class EpisodeMixin:
    """Whole episodes for `SlowFastVGenPipeline`: the loop over chunks, and the memory updated between them."""

    # ------------------------------------------------------------------ the memory between chunks

    def new_memory(self, config: TempLoRAConfig | None = None, seed: int = 0) -> EpisodicMemory:
        """An empty episodic memory for this world model (it changes nothing until updated)."""
        return new_memory(self.unet, config or TempLoRAConfig(), self.base_fingerprint, seed)

    def update_memory(
        self,
        memory: EpisodicMemory | None,
        previous_latents: torch.Tensor,
        new_latents: torch.Tensor,
        action: str | None = None,
        config: TempLoRAConfig | None = None,
        generator: torch.Generator | None = None,
        reverse_action: str | None = None,
        callback_on_step_end: Callable[[int, int], None] | None = None,
    ) -> EpisodicMemory:
        """Algorithm 1 (a), lines 11-14 (`fast_learning.update_memory`): train Temp-LoRA on previous ⊕ new
        chunk; returns a NEW memory.

        `memory=None` starts a memory with `config` (default `TempLoRAConfig()`); with a memory, a `config`
        changes its training settings from now on and is recorded in the new memory (its rank and
        targets cannot change: `MemoryMismatchError`). The given memory, the latents and the base weights
        are left untouched. `action` is recorded in the memory, and with
        `action_text=True` it is the text the clip is learned with; played backward, the clip is learned
        with `reverse_action` (default: the world model's `reverse_action(action)`).
        `callback_on_step_end(step, steps_per_update)` runs after every optimizer step (progress, cancel).
        """
        if memory is not None and not isinstance(memory, EpisodicMemory):
            raise TypeError(f"memory must be an EpisodicMemory or None, got {type(memory).__name__}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        channels = self.unet.config.in_channels
        for name, latents in (("previous_latents", previous_latents), ("new_latents", new_latents)):
            if not isinstance(latents, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor (batch, {channels}, frames, height, width), got "
                                f"{type(latents).__name__}.")
            if latents.ndim != 5 or latents.shape[1] != channels:
                raise ValueError(f"{name} must be (batch, {channels}, frames, height, width) latents of this world "
                                 f"model, got {tuple(latents.shape)}.")
        if memory is None:
            memory = self.new_memory(config)
        else:
            check_memory(self.unet, memory, self.base_fingerprint)
            if config is not None:
                memory = memory.with_config(config)
        if previous_latents.shape[0] != new_latents.shape[0] or previous_latents.shape[3:] != new_latents.shape[3:]:
            raise ValueError(
                f"previous_latents {tuple(previous_latents.shape)} and new_latents {tuple(new_latents.shape)} must "
                "share batch, height and width to be concatenated along frames."
            )
        if self.panorama_only(memory) and memory.panorama is not None and memory.panorama.lost:
            # Without its panorama such a memory would hold nothing: it learns with the paper's update instead.
            memory = memory.with_config(replace(memory.config, steps_per_update=TempLoRAConfig.steps_per_update))
        device, dtype = self._execution_device, self.unet.dtype
        text = reverse_text = ""
        if memory.config.action_text and action is not None:
            text, reverse_text = action, reverse_action or self.reverse_action(action) or ""
        # Line 11: X_i = X_i ⊕ Y_i, the previous chunk and the new one along frames.
        clip = UpdateClip(torch.cat([previous_latents, new_latents], dim=2).to(device, dtype),
                          new_latents.shape[2], text, reverse_text)
        texts = sorted({t for c in (*memory.clips, clip) for t in (c.text, c.reverse_text)})
        with torch.no_grad():  # the texts are inputs of the update, not trained
            text_embeds = dict(zip(texts, self.encode_action(texts, device, dtype).split(1)))
        noise_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        updated = fast_update(self.unet, noise_scheduler, memory, clip, text_embeds, action, generator,
                              callback_on_step_end)
        if updated.config.poses:
            updated = replace(updated, poses=pose_views_after_chunk(
                memory.poses, self.action_motions, self.pose_headings, previous_latents, new_latents, action))
        if updated.config.panorama:
            updated = replace(updated, panorama=self.updated_panorama(memory.panorama, previous_latents,
                                                                      new_latents, action))
            if self.panorama_only(updated) and updated.panorama.lost:
                warnings.warn("Without its panorama the memory learns the episode with the paper's Temp-LoRA update "
                              "(one step per chunk) from the next chunk on.", RuntimeWarning, stacklevel=2)
        return updated

    # ------------------------------------------------------------------ the episode loop

    def stream_episode(
        self,
        actions: Iterable[str],
        image: ImageInput | None = None,
        start_latents: torch.Tensor | None = None,
        memory: EpisodicMemory | None = None,
        temp_lora: TempLoRAConfig | bool | str = _NOT_GIVEN,
        num_frames: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        memory_generator: torch.Generator | None = None,
        callback_on_update_step: Callable[[int, int], None] | None = None,
        memory_settings: TempLoRAConfig | str | None = None,
        update_memory: bool = True,
        **chunk_kwargs,
    ) -> Iterator[EpisodeStep]:
        """Yield the episode step by step; `actions` may be a lazy iterator that looks at the last chunk.

        With `update_memory` (the default) the memory is updated after every chunk on the previous chunk ⊕
        the new one, with `memory_settings` (a `TempLoRAConfig` or a preset name; None: the memory's own
        settings, or the paper's for a new memory). With `update_memory=False`, `memory` (if any) is used
        as it is and never updated (a panorama memory still follows the camera, writing nothing:
        `Panorama.with_frames(paste=False)`). `temp_lora` is the deprecated form of both: a settings
        object or preset name to learn with them, True to learn, False not to.
        Only the current context stays on the device; each yielded step's latents are on the CPU.

        Sampling noise comes from `generator` only, and memory updates draw from `memory_generator` (by
        default `memory_generator_for(generator)`, derived from its seed without drawing from it), so that
        with the same generator the first chunk is bit-identical with or without memory and later chunks
        differ by memory alone. `callback_on_update_step` is `update_memory`'s `callback_on_step_end`;
        `callback_on_step_end` (in `chunk_kwargs`) that of every chunk's denoising, as in `__call__`.
        """
        learns, config = memory_learning(temp_lora, memory_settings, update_memory)
        context = self.start_latents(image, start_latents, chunk_kwargs.pop("resize", False))
        if learns and memory_generator is None:
            memory_generator = memory_generator_for(generator)
        chunk_kwargs = {"output_type": "latent", **chunk_kwargs}
        if isinstance(actions, str):
            raise ValueError("actions must be a list or an iterator of action strings (one per chunk), not a string.")
        if isinstance(actions, (list, tuple)) and not actions:
            raise ValueError("actions is empty: give at least one action (one per chunk).")
        index = -1
        for index, action in enumerate(actions):  # Algorithm 1 (a), line 2; line 7: the action
            if not isinstance(action, str) or not action.strip():
                raise ValueError(f"actions[{index}] is {action!r}; every action must be non-empty text.")
            # Line 8: Y_i = (Φ + Θ_i)(X_i, C_i), the next chunk from the context with the memory.
            chunk = self(action, context_latents=context, num_frames=num_frames, memory=memory, generator=generator,
                         **chunk_kwargs).latents
            if learns:  # Lines 11-14: Θ_{i+1} from X_i ⊕ Y_i.
                memory = self.update_memory(memory, context, chunk, action=action, config=config,
                                            generator=memory_generator, callback_on_step_end=callback_on_update_step)
            elif memory is not None and memory.config.poses and memory.poses is not None:
                # A frozen pose memory still follows the camera, so that it recalls the views where it is now.
                memory = replace(memory, poses=pose_views_after_chunk(memory.poses, {}, 0, context, chunk, action,
                                                                      paste=False))
            elif memory is not None and memory.config.panorama and memory.panorama is not None:
                # A frozen memory still follows the camera, so that it recalls places where the camera is now.
                memory = replace(memory, panorama=self.panorama_with_chunk(memory.panorama, chunk, action,
                                                                           paste=False))
            context = chunk  # Line 5: X_{i+1} <- Y_i.
            yield EpisodeStep(index=index, action=action, latents=chunk.cpu(), memory=memory)
        if index < 0:
            raise ValueError("actions is empty: the action iterator gave no action (give at least one per chunk).")

    def start_latents(self, image: ImageInput | None = None, start_latents: torch.Tensor | None = None,
                      resize: bool = False) -> torch.Tensor:
        """The latents an episode starts from: the encoded start image (f_p = 1), or latents given as they are."""
        if (image is None) == (start_latents is None):
            raise ValueError("Pass exactly one of `image` (a start frame) and `start_latents` to start an episode.")
        return self.encode_frames(image, resize=resize, argument="image") if image is not None else start_latents

    def generate_episode(
        self, actions: Iterable[str], image: ImageInput | None = None, start_latents: torch.Tensor | None = None,
        resize: bool = False, memory: EpisodicMemory | None = None, keep_memories: bool = False, **kwargs,
    ) -> EpisodeOutput:
        """Run a whole episode (see `stream_episode`, which takes `kwargs`) and return all latents, the start
        frame's included.

        Only the last step keeps its memory unless `keep_memories=True`: every memory holds the whole
        Temp-LoRA (and Adam moments), so keeping one per step would make memory use grow with the episode.
        Keep them (or use `stream_episode`) to branch the episode at any chunk.
        """
        if isinstance(actions, (list, tuple)) and not actions:
            raise ValueError("actions is empty: give at least one action (one per chunk).")
        start = self.start_latents(image, start_latents, resize)
        steps = []
        for step in self.stream_episode(actions, start_latents=start, memory=memory, **kwargs):
            if steps and not keep_memories:
                steps[-1].memory = None
            steps.append(step)
        latents = torch.cat([start.cpu()] + [step.latents for step in steps], dim=2)
        return EpisodeOutput(latents=latents, chunks=steps, memory=steps[-1].memory if steps else memory)
