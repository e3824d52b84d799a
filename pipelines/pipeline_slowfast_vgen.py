"""SlowFastVGenPipeline: action-driven, chunk-by-chunk video generation with Temp-LoRA episodic memory.

One call generates one chunk (paper Eq. 1): the clean latents of the previous chunk are concatenated with
noisy latents along the frame axis, the UNet sees the whole sequence, and only the new frames are
denoised. The episode loop of Algorithm 1 (a) (`stream_episode`, `generate_episode`) is in `episode.py`,
the update of lines 11-14 in `fast_learning.py`, the panorama memory's steps in `panorama_recall.py`.

This file only imports its sibling modules, so diffusers can load it as a custom pipeline:
`DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_slowfast_vgen.py", trust_remote_code=True)`.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet3DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPTextModel, CLIPTokenizer

# Names marked F401 are imported from here by other modules and tests, as they always were.
from ._deprecation import deprecated_aliases
from .checks import guidance_problem, steps_problem, wrong_type
from .environment import CompileMixin, compile_unavailable, dtype_argument  # noqa: F401
from .episode import EpisodeMixin, EpisodeOutput, EpisodeStep, memory_generator_for  # noqa: F401
from .episodic_memory import EpisodicMemory
from .fingerprint import model_fingerprint, weights_version
from .image_input import ImageInput
from .lora_layers import check_memory, memory_for_sampling, temp_lora_detached
from .model_folder import REQUIRED_COMPONENTS, check_model_folder, drop_source_paths  # noqa: F401
from .panorama_recall import RECALL_MODES, PanoramaRecallMixin
from .pose_memory import PoseRecallMixin
from .schedulers import SCHEDULERS, scheduler_from_name, scheduler_name  # noqa: F401
from .video_latents import VideoLatentsMixin
from .world_actions import WorldActionsMixin

# diffusers copies to its custom-pipeline cache only the siblings this file imports: the rest are named here.
from .atomic_files import write_text_atomically  # noqa: F401,I001
from .fast_learning import update_memory  # noqa: F401
from .memory_file import read_safetensors  # noqa: F401
from .memory_settings import TempLoRAConfig  # noqa: F401
from .panorama import Panorama  # noqa: F401
from .turn_views import turned_view  # noqa: F401

CONDITIONING_MODES = ("mask", "replace")

# The sampling settings the CLI, the nodes, `evaluate` and the benchmarks start from (docs/benchmarks.md,
# "Sampling steps"); the pipeline's own `__call__` keeps diffusers' usual 20 steps for any model.
DEFAULT_STEPS = 4
DEFAULT_GUIDANCE = 2.0

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from slowfast_vgen import SlowFastVGenPipeline, TempLoRAConfig
        >>> from slowfast_vgen.paths import DEFAULT_MODEL_DIR

        >>> pipe = SlowFastVGenPipeline.from_pretrained(DEFAULT_MODEL_DIR)
        >>> start = torch.rand(3, 64, 64)  # the first frame, C x H x W in [0, 1]

        >>> # One chunk: the next frames after `start` when the camera moves left.
        >>> chunk = pipe("move left", image=start, num_inference_steps=4, guidance_scale=2.0)
        >>> chunk.frames.shape  # (batch, frames, height, width, channels)

        >>> # A whole episode with Temp-LoRA memory, updated after every chunk (Algorithm 1 (a)).
        >>> episode = pipe.generate_episode(["move left", "move left", "move right"], image=start,
        ...                                 memory_settings=TempLoRAConfig(), num_inference_steps=4)
        >>> video = next(pipe.iter_decode([episode.latents]))
        ```
"""


@dataclass
class SlowFastVGenPipelineOutput(BaseOutput):
    """Output of one chunk call.

    Args:
        frames: the new frames in `output_type` (for "latent", the same tensor as `latents`).
        latents: the clean latents of the new frames, (batch, channels, frames, height, width): pass them as
            `context_latents` of the next call to chain chunks without decoding.
    """

    frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]]
    latents: torch.Tensor


class SlowFastVGenPipeline(DiffusionPipeline, VideoLatentsMixin, EpisodeMixin, PanoramaRecallMixin, PoseRecallMixin,
                           WorldActionsMixin, CompileMixin):
    """Masked-conditional chunk generation with Temp-LoRA episodic memory (SlowFast-VGen).

    Components are those of a ModelScope text-to-video checkpoint: `vae` (AutoencoderKL), `text_encoder`
    (CLIPTextModel), `tokenizer` (CLIPTokenizer), `unet` (UNet3DConditionModel) and `scheduler` (DDIM,
    DDPM, DPM-Solver++ and the other diffusers schedulers). `context_window` is the most frames the UNet
    sees at once (context + new frames). `reverse_actions` (optional) maps an action to the one that
    undoes it ("move left" -> "move right"): what Temp-LoRA with `action_text=True` learns a clip played
    backward with (see `reverse_action`).

    Conditioning modes:
        - "mask" (the paper's): context latents stay clean at every step. Use it with models trained with
          masked conditioning, such as those of this project's training entrypoint.
        - "replace": context latents are re-noised to the current timestep at every step, so that a plain
          text-to-video model never trained on clean context frames (e.g. ModelScope T2V as released) sees
          inputs like those it was trained on and still continues the video.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet3DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        context_window: int = 16,
        reverse_actions: dict[str, str] | None = None,
        action_motions: dict[str, list[int]] | None = None,
        pose_headings: int = 16,
        camera_fovy: float | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(context_window=context_window, reverse_actions=reverse_actions,
                                action_motions=action_motions, pose_headings=pose_headings,
                                camera_fovy=camera_fovy)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`DiffusionPipeline.from_pretrained`, with a clear error for a local folder that is missing or lacks a
        component (checked before anything is loaded). A diffusers-format ModelScope text-to-video folder
        (`_class_name: TextToVideoSDPipeline`) loads as it is."""
        check_model_folder(pretrained_model_name_or_path, provided=kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ properties

    @property
    def context_window(self) -> int:
        return self.config.context_window

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this (VAE and UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def base_fingerprint(self) -> str:
        """Fingerprint of the UNet weights (without Temp-LoRA), recorded by memories made with it.

        Cached while the weights stay the same (see `weights_version`): every chunk and update with a
        memory checks it, and hashing the weights each time would cost more than a small model's step.
        """
        key = (id(self.unet), weights_version(self.unet))
        cached = self.__dict__.get("_fingerprint_cache")
        if cached is None or cached[0] != key:
            cached = (key, model_fingerprint(self.unet))
            self.__dict__["_fingerprint_cache"] = cached
        return cached[1]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------ encoding and decoding

    def encode_action(self, action: str | list[str], device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
        """Text-encoder hidden states of free-text actions (an empty string is the null action), in `dtype`
        (default: the UNet's)."""
        actions = [action] if isinstance(action, str) else list(action)
        tokens = self.tokenizer(
            actions, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        device = device or self._execution_device
        return self.text_encoder(tokens.input_ids.to(device))[0].to(dtype or self.unet.dtype)

    # ------------------------------------------------------------------ checks

    def check_inputs(self, action, context_latents, num_frames, num_context_frames, conditioning,
                     output_type, callback_on_step_end_tensor_inputs, memory, num_inference_steps: int = 1,
                     guidance_scale: float = 1.0, recall: str | Sequence[tuple[int, int]] = "action",
                     generator=None) -> None:
        problem = steps_problem(num_inference_steps) or guidance_problem(guidance_scale)
        if problem:
            raise ValueError(problem)
        generators = generator if isinstance(generator, (list, tuple)) else [generator]
        problem = (wrong_type("memory", memory, EpisodicMemory, "an EpisodicMemory (pipe.new_memory(), "
                              "EpisodicMemory.load(path)) or None")
                   or next(filter(None, (wrong_type("generator", g, torch.Generator, "a torch.Generator, a list of "
                                                    "them (one per batch item) or None") for g in generators)), None)
                   or wrong_type("context_latents", context_latents, torch.Tensor, "a torch.Tensor"))
        if problem:
            raise TypeError(problem)
        if isinstance(action, str):
            actions = [action]
        elif isinstance(action, (list, tuple)) and action and all(isinstance(a, str) for a in action):
            actions = list(action)
        else:
            raise ValueError(f"action must be a string or a non-empty list of strings, got {action!r}.")
        if context_latents is None:
            raise ValueError("Pass either `image` (to start an episode) or `context_latents` (to continue one).")
        if context_latents.ndim != 5 or context_latents.shape[1] != self.unet.config.in_channels:
            raise ValueError(
                f"context_latents must be (batch, {self.unet.config.in_channels}, frames, height, width), got "
                f"{tuple(context_latents.shape)}."
            )
        if len(actions) not in (1, context_latents.shape[0]):
            raise ValueError(f"Got {len(actions)} actions for a batch of {context_latents.shape[0]}.")
        self._check_frames(context_latents, num_frames, num_context_frames)
        if conditioning not in CONDITIONING_MODES:
            raise ValueError(f"conditioning must be one of {CONDITIONING_MODES}, got {conditioning!r}.")
        if output_type not in ("latent", "pt", "np", "pil"):
            raise ValueError(f"output_type must be 'latent', 'pt', 'np' or 'pil', got {output_type!r}.")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, "
                             f"not {sorted(unknown)}.")
        if memory is not None:
            check_memory(self.unet, memory, self.base_fingerprint)
        if isinstance(recall, str):
            if recall not in RECALL_MODES:
                raise ValueError(f"recall must be one of {RECALL_MODES} or the camera's steps (dx, dy), one per new "
                                 f"frame; got {recall!r}.")
        elif (len(recall) != num_frames or not all(len(step) == 2 and all(isinstance(v, int) for v in step)
                                                   for step in recall)):
            raise ValueError(f"recall as camera steps needs {num_frames} (dx, dy) pairs of whole pixels, one per new "
                             f"frame; got {recall!r}.")
        if recall != "action" and (memory is None or not memory.config.panorama):
            raise ValueError(f"recall={recall!r} reads the panorama memory: pass a memory made with "
                             "TempLoRAConfig(panorama=True) (the 'panorama' preset), or leave recall='action'.")

    def _check_frames(self, context_latents: torch.Tensor, num_frames: int, num_context_frames: int) -> None:
        """New and context frames must fit the context window together."""
        if not 1 <= num_context_frames <= context_latents.shape[2]:
            raise ValueError(
                f"num_context_frames must be between 1 and the {context_latents.shape[2]} frames of context given, "
                f"got {num_context_frames}."
            )
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
        if num_frames >= self.context_window:
            raise ValueError(
                f"num_frames={num_frames} leaves no room for context: this world model sees {self.context_window} "
                f"frames at once, context included, so give num_frames <= {self.context_window - 1}."
            )
        if num_frames + num_context_frames > self.context_window:
            raise ValueError(
                f"num_frames={num_frames} with {num_context_frames} context frames exceeds the context window of "
                f"{self.context_window} frames; use num_frames <= {self.context_window - num_context_frames} or "
                "fewer num_context_frames."
            )

    # ------------------------------------------------------------------ one chunk

    def prepare_latents(self, context_latents: torch.Tensor, num_frames: int, generator,
                        latents: torch.Tensor | None) -> torch.Tensor:
        """Initial noise for the new frames, on the device and in the dtype of the (prepared) context."""
        # The context's device and dtype, not `_execution_device` / `unet.dtype`: diffusers finds those by
        # walking every module, which costs more than a denoising step of a small model.
        batch, channels, _, height, width = context_latents.shape
        shape = (batch, channels, num_frames, height, width)
        device, dtype = context_latents.device, context_latents.dtype
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(device, dtype) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        action: str | list[str],
        image: ImageInput | None = None,
        context_latents: torch.Tensor | None = None,
        num_frames: int | None = None,
        num_context_frames: int | None = None,
        conditioning: str = "mask",
        memory: EpisodicMemory | None = None,
        recall: str | Sequence[tuple[int, int]] = "action",
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        negative_action: str = "",
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        resize: bool = False,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> SlowFastVGenPipelineOutput | tuple:
        """Generate the next chunk of an episode.

        Args:
            action: free-text action(s), e.g. "move left".
            image: a start frame (f_p = 1), for the first chunk of an episode: PIL, uint8 or float NumPy, or a
                torch tensor (see `encode_frames`).
            context_latents: clean latents B,C,F,H,W of the previous chunk (its `latents` output), to continue.
            num_frames: frames to generate (f_g); default: half the context window.
            num_context_frames: how many of the last context frames condition (f_p); default: all given,
                capped by what the context window leaves.
            conditioning: "mask" (clean context, the paper's) or "replace" (context re-noised every step).
            memory: an `EpisodicMemory` (Temp-LoRA; with `panorama`, also the places it brings back) to
                generate with; None runs the base model.
            recall: with a panorama memory, where the camera goes in the places it brings back: "action" (as
                the action moved the camera earlier in the episode), "way back" (back along the way the episode
                came, to its start: `Panorama.way_back`), or the camera's step (dx, dy) in pixels before each
                new frame.
            num_inference_steps, guidance_scale, negative_action, generator, latents, output_type,
            return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs: as in diffusers.
            resize: resize `image` to the model's native size instead of refusing a size that does not fit.

        Examples:

        Returns:
            `SlowFastVGenPipelineOutput` (or, with `return_dict=False`, the tuple (frames, latents)).
        """
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs (a start image is encoded first: its latents are the context)
        if image is not None:
            if context_latents is not None:
                raise ValueError("Pass `image` or `context_latents`, not both.")
            context_latents = self.encode_frames(image, resize=resize, argument="image")
        if context_latents is not None and not isinstance(context_latents, torch.Tensor):
            raise TypeError(f"context_latents must be a torch.Tensor (batch, channels, frames, height, width), got "
                            f"{type(context_latents).__name__}.")
        if num_frames is None:
            num_frames = self.context_window // 2
        if not isinstance(num_frames, int) or isinstance(num_frames, bool):
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}.")
        if num_context_frames is None and context_latents is not None:
            num_context_frames = max(1, min(context_latents.shape[2], self.context_window - num_frames))
        self.check_inputs(action, context_latents, num_frames, num_context_frames, conditioning, output_type,
                          callback_on_step_end_tensor_inputs, memory, num_inference_steps, guidance_scale, recall,
                          generator=generator)
        self._guidance_scale = guidance_scale
        self._interrupt = False

        # 2. Define call parameters: the context is the last f_p clean frames, kept exactly as given
        device = self._execution_device
        context = context_latents[:, :, -num_context_frames:].to(device, self.unet.dtype)
        batch = context.shape[0]

        # 3. Encode the action, unconditional first, for one batched UNet call per step
        actions = [action] * batch if isinstance(action, str) else list(action) * (batch // len(action))
        prompt_embeds = self.encode_action(actions, device, context.dtype)
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([self.encode_action([negative_action] * batch, device, context.dtype),
                                       prompt_embeds])

        # 4. What the panorama memory knows of the new frames (None without one), kept at every step
        recalled = self.prepare_recall(memory, action, context, num_frames, prompt_embeds, num_inference_steps,
                                       conditioning, recall)

        # 5.-7. Timesteps, initial noise and the denoising loop
        latents = self._sample_chunk(context, prompt_embeds, num_frames, conditioning, memory, recalled,
                                     num_inference_steps, generator, latents, callback_on_step_end,
                                     callback_on_step_end_tensor_inputs)

        # 8. Post-processing
        frames = self.postprocess(latents, output_type)

        # 9. Offload all models
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames, latents)
        return SlowFastVGenPipelineOutput(frames=frames, latents=latents)

    def _sample_chunk(self, context: torch.Tensor, prompt_embeds: torch.Tensor, num_frames: int, conditioning: str,
                      memory: EpisodicMemory | None, recalled, num_inference_steps: int, generator,
                      latents: torch.Tensor | None = None, callback_on_step_end=None,
                      callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)) -> torch.Tensor:
        """The clean latents of `num_frames` new frames after the prepared `context`: steps 5 to 7 of
        `__call__`, and the probe chunk of `prepare_recall` (which takes no callback and no recall)."""
        device = context.device

        # 5. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 6. Prepare the noise of the new frames (and, in "replace" mode, of the context)
        latents = self.prepare_latents(context, num_frames, generator, latents)
        initial_noise = latents / self.scheduler.init_noise_sigma if recalled is not None else None
        context_noise = None
        if conditioning == "replace":
            context_noise = randn_tensor(context.shape, generator=generator, device=device, dtype=context.dtype)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 7. Denoising loop: the UNet sees context + new frames, the scheduler steps the new frames only
        num_context_frames = context.shape[2]
        with memory_for_sampling(self.unet, memory), self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if context_noise is None:
                    # "mask": the clean context is no sample of the scheduler's noisy distribution, so the
                    # scheduler's input scaling (a no-op for DDIM/DDPM/DPM, not for Euler-type) only applies
                    # to the new frames, and the context reaches the UNet exactly as given.
                    model_input = torch.cat([context, self.scheduler.scale_model_input(latents, t)], dim=2)
                else:
                    model_input = torch.cat([self.condition_frames(context, context_noise, t), latents], dim=2)
                    model_input = self.scheduler.scale_model_input(model_input, t)
                if self.do_classifier_free_guidance:
                    model_input = torch.cat([model_input] * 2)
                prediction = self.predict(model_input, t, prompt_embeds)[:, :, num_context_frames:]
                if self.do_classifier_free_guidance:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + self.guidance_scale * (conditional - unconditional)
                latents = self.scheduler.step(prediction, t, latents, **extra_step_kwargs).prev_sample
                if recalled is not None:
                    latents = self.recall_places(latents, recalled, initial_noise, i)

                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds}
                    outputs = callback_on_step_end(
                        self, i, t, {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()
        return latents

    def predict(self, model_input: torch.Tensor, t, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """One UNet call of the sampler: the compiled UNet after `compile_unet`, else the UNet itself."""
        compiled = self.__dict__.get("_compiled_unet")
        if compiled is not None:
            try:
                return compiled(model_input, t, encoder_hidden_states=prompt_embeds).sample
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
                self._compiled_unet = None
                warnings.warn(f"torch.compile of the UNet failed ({type(error).__name__}: {str(error)[:300]}); "
                              "generating uncompiled.", RuntimeWarning, stacklevel=2)
        return self.unet(model_input, t, encoder_hidden_states=prompt_embeds).sample

    def condition_frames(self, context: torch.Tensor, context_noise: torch.Tensor | None, t) -> torch.Tensor:
        """The context as the UNet sees it at step t: clean ("mask") or re-noised to t ("replace")."""
        if context_noise is None:
            return context
        return self.scheduler.add_noise(context, context_noise, t.reshape(1))

    def prepare_extra_step_kwargs(self, generator) -> dict:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {"generator": generator} if "generator" in accepted else {}

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`DiffusionPipeline.save_pretrained` of the base model: Temp-LoRA layers never leak into it."""
        with temp_lora_detached(self.unet):
            super().save_pretrained(save_directory, *args, **kwargs)
        drop_source_paths(save_directory)


__getattr__ = deprecated_aliases(__name__, {
    "EpisodeChunk": (EpisodeStep, "slowfast_vgen.pipelines.episode.EpisodeStep"),
})

