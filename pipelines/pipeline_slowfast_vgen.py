"""SlowFastVGenPipeline: action-driven, chunk-by-chunk video generation with Temp-LoRA episodic memory.

One call generates one chunk (paper Eq. 1): the clean latents of the previous chunk are concatenated with
noisy latents along the frame axis, the UNet sees the whole sequence, and only the new frames are
denoised. `generate_episode` / `stream_episode` run Algorithm 1 (a): generate a chunk, then train the
Temp-LoRA memory on the previous and the new chunk, and go on.

This file only imports its sibling modules, so diffusers can load it as a custom pipeline:
`DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_slowfast_vgen.py", trust_remote_code=True)`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import sys
import warnings
import zlib
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet3DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPTextModel, CLIPTokenizer

from .atomic_files import write_text_atomically
from .fingerprint import model_fingerprint, weights_version
from .image_input import ImageInput, frames_to_tensor
from .panorama import Panorama, recall_mask
from .temp_lora import (
    EpisodicMemory,
    MemoryClip,
    TempLoRAConfig,
    check_memory,
    memory_for_sampling,
    new_memory,
    temp_lora_detached,
    update_memory,
)

CONDITIONING_MODES = ("mask", "replace")
# Where a panorama memory's camera goes in the places it brings back (`__call__`'s `recall`).
RECALL_MODES = ("action", "way back")

# Where the command line, the nodes, `evaluate` and the benchmarks start: the shipped model's sampling
# settings, picked by measurement (docs/benchmarks.md, "Sampling steps"): its x0-predicting UNet is at its
# best in few DDIM steps (next-chunk PSNR 20.76 dB at 4 steps, 20.78 at 5, 20.48 at 10, 20.18 at 20;
# revisits and drift at 4 equal to 5 and better than at 10). The fewest steps within 0.2 dB of the best.
# The pipeline's own `__call__` keeps diffusers' usual 20 steps for any model.
DEFAULT_STEPS = 4
DEFAULT_GUIDANCE = 2.0

# Samplers by the names the CLI, the nodes and `evaluate` take. Each is built from the model's own
# scheduler config (betas, prediction type), as diffusers users swap schedulers.
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
}


def scheduler_from_name(name: str, config) -> "KarrasDiffusionSchedulers":
    """A sampler of `SCHEDULERS` made from a scheduler config (`pipe.scheduler.config`)."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}.")
    scheduler_class, settings = SCHEDULERS[name]
    return scheduler_class.from_config(config, **settings)


def scheduler_name(scheduler) -> str | None:
    """The `SCHEDULERS` name of a scheduler instance, or None for another sampler."""
    for name, (scheduler_class, settings) in SCHEDULERS.items():
        if type(scheduler) is scheduler_class and all(scheduler.config.get(k) == v for k, v in settings.items()):
            return name
    return None


# What a world-model folder must hold: component -> a file its subfolder must contain (None: any file).
REQUIRED_COMPONENTS = {
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": None,
    "unet": "config.json",
    "scheduler": "scheduler_config.json",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def dtype_argument(dtype: torch.dtype | None) -> dict:
    """The keyword that sets the weights' dtype in `from_pretrained`, for the installed diffusers.

    diffusers deprecated `torch_dtype` for `dtype` in 2026 (huggingface/diffusers#14205); older releases
    know only `torch_dtype`.
    """
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype": dtype}


def _normalized(action: str) -> str:
    return " ".join(action.lower().split())


def check_model_folder(pretrained_model_name_or_path, provided: dict | None = None) -> None:
    """Raise `FileNotFoundError` naming the problem when a local model folder is missing or incomplete.

    Hub repo ids ("owner/name") that are not local folders are left to diffusers. Components passed
    to `from_pretrained` as objects (`provided`) need not be in the folder.
    """
    path = os.fspath(pretrained_model_name_or_path)
    expected = ", ".join(f"{name}/" for name in REQUIRED_COMPONENTS)
    if not os.path.isdir(path):
        if isinstance(pretrained_model_name_or_path, os.PathLike) or not _REPO_ID.match(path) or os.path.exists(path):
            raise FileNotFoundError(
                f"pretrained_model_name_or_path: there is no model folder at {path!r}. Expected a folder holding "
                f"model_index.json and the subfolders {expected} (a diffusers-format SlowFast-VGen or ModelScope "
                "text-to-video model)."
            )
        return
    index_file = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_file):
        raise FileNotFoundError(
            f"pretrained_model_name_or_path: {path!r} has no model_index.json, so it is not a diffusers pipeline "
            f"folder. Expected model_index.json and the subfolders {expected}."
        )
    try:
        with open(index_file, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{index_file} is not valid JSON ({error}).") from None
    provided = provided or {}
    problems = []
    for name, required_file in REQUIRED_COMPONENTS.items():
        if name in provided:
            continue
        entry = index.get(name)
        folder = os.path.join(path, name)
        if not entry or entry[0] is None:
            problems.append(f"{name} (not listed in model_index.json)")
        elif not os.path.isdir(folder):
            problems.append(f"{name} (no {name}/ subfolder)")
        elif required_file and not os.path.isfile(os.path.join(folder, required_file)):
            problems.append(f"{name} (no {name}/{required_file})")
        elif not os.listdir(folder):
            problems.append(f"{name} ({name}/ is empty)")
    if problems:
        raise FileNotFoundError(
            f"pretrained_model_name_or_path: the model folder {path!r} lacks {len(problems)} component(s): "
            f"{'; '.join(problems)}. A world model needs {expected}."
        )


def drop_source_paths(folder: str | os.PathLike) -> None:
    """Remove `_name_or_path` from every config JSON under a saved model folder.

    diffusers records there where a component was loaded from, a path on the machine that saved it, which
    a shared model must not carry. Each file is replaced whole (a hard link to another folder's file is
    broken, not written through).
    """
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a config this function should touch
        if not isinstance(config, dict) or "_name_or_path" not in config:
            continue
        config.pop("_name_or_path")
        write_text_atomically(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def compile_unavailable(device: torch.device) -> str | None:
    """Why `torch.compile` cannot run on `device` here, or None. Its CPU backend builds C++ and needs a compiler."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu" and sys.platform != "win32":  # other failures surface at the first call (`predict`)
        import shutil

        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None:
            return f"no C++ compiler ({compiler!r}) on PATH for the CPU backend; install g++ or set CXX"
    return None


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
class SlowFastVGenPipelineOutput(BaseOutput):
    """Output of one chunk call.

    Args:
        frames: the new frames in `output_type` (for "latent", the same tensor as `latents`).
        latents: the clean latents of the new frames, (batch, channels, frames, height, width): pass them as
            `context_latents` of the next call to chain chunks without decoding.
    """

    frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]]
    latents: torch.Tensor


@dataclass
class EpisodeChunk:
    """One step of an episode: the action taken, the new chunk's latents and the memory after it."""

    index: int
    action: str
    latents: torch.Tensor
    memory: EpisodicMemory | None


@dataclass
class EpisodeOutput(BaseOutput):
    """A whole episode: the first frame's latent and every chunk, in order, and the final memory."""

    latents: torch.Tensor
    chunks: list[EpisodeChunk]
    memory: EpisodicMemory | None


class SlowFastVGenPipeline(DiffusionPipeline):
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
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(context_window=context_window, reverse_actions=reverse_actions)
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

    def reverse_action(self, action: str) -> str | None:
        """The action that undoes `action` in this world model's `reverse_actions` (case and spacing
        ignored), or None where it has none."""
        table = {_normalized(key): value for key, value in (self.config.reverse_actions or {}).items()}
        return table.get(_normalized(action))

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

    @torch.no_grad()
    def encode_frames(self, frames: ImageInput, resize: bool = False, argument: str = "frames") -> torch.Tensor:
        """Frames -> latents B,C,F,H,W (B = 1): a list or a batch of frames is one clip, its frames the frame axis.

        Accepts PIL images, NumPy arrays (uint8 0-255 or float in [0, 1], H×W×C or N×H×W×C), torch tensors
        (float in [0, 1] or [-1, 1], uint8; C×H×W or N×C×H×W) and lists of them; see `image_input` for the
        whole table and what is refused. `argument` names the input in error messages.
        """
        images = frames_to_tensor(frames, argument)
        height, width = images.shape[-2:]
        multiple, native = self.size_multiple, self.native_size
        if height < multiple or width < multiple:
            raise ValueError(
                f"{argument}: a {width}x{height} image is too small for this world model, which needs at least "
                f"{multiple}x{multiple} (native size {native}x{native}); give a larger image."
            )
        if (height % multiple or width % multiple) and not resize:
            raise ValueError(
                f"{argument}: size {width}x{height} does not fit this world model; width and height must be multiples "
                f"of {multiple} (native size {native}x{native}). Resize the image, or pass resize=True to resize it "
                "to the native size."
            )
        if resize and (height, width) != (native, native):
            # Antialiased: a large photo shrunk to 64x64 without it would alias into noise.
            images = torch.nn.functional.interpolate(images, size=(native, native), mode="bilinear",
                                                     antialias=True, align_corners=False).clamp(0, 1)
        images = self.image_processor.normalize(images).to(device=self._execution_device, dtype=self.vae.dtype)
        return self.encode_pixels(images.permute(1, 0, 2, 3).unsqueeze(0))

    def encode_pixels(self, video: torch.Tensor) -> torch.Tensor:
        """Video B,3,F,H,W in [-1, 1] on the VAE's device -> scaled latents B,C,F,h,w (the posterior's mode).

        The one encoder path: `encode_frames`, the trainer and the slow-fast loop all go through it.
        """
        batch, _, num_frames = video.shape[:3]
        frames = video.permute(0, 2, 1, 3, 4).flatten(0, 1).to(self.vae.dtype)
        latents = self.vae.encode(frames).latent_dist.mode() * self.vae.config.scaling_factor
        return latents.reshape(batch, num_frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, frames_per_batch: int = 16) -> torch.Tensor:
        """Latents B,C,F,H,W -> video B,3,F,H,W in [-1, 1], decoding `frames_per_batch` frames at a time."""
        batch, channels, num_frames, height, width = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, channels, height, width)
        decoded = [
            self.vae.decode(part.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor).sample.float()
            for part in flat.split(frames_per_batch)
        ]
        video = torch.cat(decoded).reshape(batch, num_frames, *decoded[0].shape[1:])
        return video.permute(0, 2, 1, 3, 4)

    def postprocess(self, latents: torch.Tensor, output_type: str = "np", frames_per_batch: int = 16):
        """Decode latents into "np" (B,F,H,W,C in [0,1]), "pt" (B,F,C,H,W in [0,1]) or "pil" frames."""
        if output_type == "latent":
            return latents
        return self.video_processor.postprocess_video(self.decode_latents(latents, frames_per_batch), output_type)

    def iter_decode(self, chunks: Iterable[torch.Tensor], output_type: str = "np",
                    frames_per_batch: int = 16) -> Iterator:
        """Decode a long video chunk by chunk, so that it never sits decoded in memory at once."""
        for chunk in chunks:
            for part in chunk.split(frames_per_batch, dim=2):
                yield self.postprocess(part, output_type, frames_per_batch)

    # ------------------------------------------------------------------ checks

    def check_inputs(self, action, context_latents, num_frames, num_context_frames, conditioning,
                     output_type, callback_on_step_end_tensor_inputs, memory, num_inference_steps: int = 1,
                     guidance_scale: float = 1.0, recall: str | Sequence[tuple[int, int]] = "action") -> None:
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a whole number of at least 1, got {num_inference_steps!r}.")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0 (1 or less: no guidance), got "
                             f"{guidance_scale!r}.")
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
        """
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if image is not None:
            if context_latents is not None:
                raise ValueError("Pass `image` or `context_latents`, not both.")
            context_latents = self.encode_frames(image, resize=resize, argument="image")
        if num_frames is None:
            num_frames = self.context_window // 2
        if not isinstance(num_frames, int) or isinstance(num_frames, bool):
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}.")
        if num_context_frames is None and context_latents is not None:
            num_context_frames = max(1, min(context_latents.shape[2], self.context_window - num_frames))
        self.check_inputs(action, context_latents, num_frames, num_context_frames, conditioning, output_type,
                          callback_on_step_end_tensor_inputs, memory, num_inference_steps, guidance_scale, recall)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device

        # 1. Context: the last f_p clean frames, kept exactly as given.
        context = context_latents[:, :, -num_context_frames:].to(device, self.unet.dtype)
        batch = context.shape[0]

        # 2. Action embeddings, unconditional first, for one batched UNet call per step.
        actions = [action] * batch if isinstance(action, str) else list(action) * (batch // len(action))
        prompt_embeds = self.encode_action(actions, device, context.dtype)
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([self.encode_action([negative_action] * batch, device, context.dtype),
                                       prompt_embeds])

        # 3. What the panorama memory knows of the new frames (None without one), kept at every step. Before
        #    the timesteps are set: a probe chunk samples with the same scheduler.
        recall = self.prepare_recall(memory, action, context, num_frames, num_context_frames, num_inference_steps,
                                     guidance_scale, negative_action, conditioning, recall)

        # 4. Timesteps and noise for the new frames (and, in "replace" mode, for the context).
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(context, num_frames, generator, latents)
        initial_noise = latents / self.scheduler.init_noise_sigma if recall is not None else None
        context_noise = None
        if conditioning == "replace":
            context_noise = randn_tensor(context.shape, generator=generator, device=device, dtype=context.dtype)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 5. Denoising loop: the UNet sees context + new frames, the scheduler steps the new frames only.
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
                prediction = self.predict(model_input, t, prompt_embeds)
                prediction = prediction[:, :, num_context_frames:]
                if self.do_classifier_free_guidance:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + guidance_scale * (conditional - unconditional)
                latents = self.scheduler.step(prediction, t, latents, **extra_step_kwargs).prev_sample
                if recall is not None:
                    latents = self.recall_places(latents, recall, initial_noise, i)

                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds}
                    outputs = callback_on_step_end(
                        self, i, t, {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()

        frames = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames, latents)
        return SlowFastVGenPipelineOutput(frames=frames, latents=latents)

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

    def compile_unet(self, **compile_kwargs) -> bool:
        """Sample with `torch.compile(unet)` from now on (the Temp-LoRA update stays eager: compiling its
        backward costs more than it saves). Returns False, with a warning saying why, where compiling
        cannot work; generation then runs uncompiled. Compiling takes a while on the first chunk (and
        again when the number of context frames changes), and pays on long episodes only (docs/benchmarks.md)."""
        reason = compile_unavailable(self._execution_device)
        if reason:
            warnings.warn(f"torch.compile is not available here: {reason}; generating uncompiled.",
                          RuntimeWarning, stacklevel=2)
            return False
        self._compiled_unet = torch.compile(self.unet, **compile_kwargs)
        return True

    def condition_frames(self, context: torch.Tensor, context_noise: torch.Tensor | None, t) -> torch.Tensor:
        """The context as the UNet sees it at step t: clean ("mask") or re-noised to t ("replace")."""
        if context_noise is None:
            return context
        return self.scheduler.add_noise(context, context_noise, t.reshape(1))

    def prepare_extra_step_kwargs(self, generator) -> dict:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {"generator": generator} if "generator" in accepted else {}

    # ------------------------------------------------------------------ fast learning (Temp-LoRA)

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
        """Algorithm 1 (a), lines 11-14: train Temp-LoRA on previous ⊕ new chunk; returns a NEW memory.

        `memory=None` starts a memory with `config` (default `TempLoRAConfig()`); with a memory, a `config`
        changes its training settings from now on and is recorded in the new memory (its rank and
        targets cannot change: `MemoryMismatchError`). The given memory, the latents and the base weights
        are left untouched. `action` is recorded in the memory, and with
        `action_text=True` it is the text the clip is learned with; played backward, the clip is learned
        with `reverse_action` (default: the world model's `reverse_action(action)`).
        `callback_on_step_end(step, steps_per_update)` runs after every optimizer step (progress, cancel).
        """
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
        clip = MemoryClip(torch.cat([previous_latents, new_latents], dim=2).to(device, dtype),
                          new_latents.shape[2], text, reverse_text)
        texts = sorted({t for c in (*memory.clips, clip) for t in (c.text, c.reverse_text)})
        with torch.no_grad():  # the texts are inputs of the update, not trained
            text_embeds = dict(zip(texts, self.encode_action(texts, device, dtype).split(1)))
        noise_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        updated = update_memory(self.unet, noise_scheduler, memory, clip, text_embeds, action, generator,
                                callback_on_step_end)
        if updated.config.panorama:
            updated = replace(updated, panorama=self.updated_panorama(memory.panorama, previous_latents,
                                                                      new_latents, action))
            if self.panorama_only(updated) and updated.panorama.lost:
                warnings.warn("Without its panorama the memory learns the episode with the paper's Temp-LoRA update "
                              "(one step per chunk) from the next chunk on.", RuntimeWarning, stacklevel=2)
        return updated

    @staticmethod
    def panorama_only(memory: EpisodicMemory) -> bool:
        """A memory of its panorama alone, one that trains no Temp-LoRA (the `panorama` preset)."""
        return memory.config.panorama and memory.config.steps_per_update == 0

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

    def prepare_recall(self, memory: EpisodicMemory | None, action, context_latents: torch.Tensor,
                       num_frames: int, num_context_frames: int, num_inference_steps: int, guidance_scale: float,
                       negative_action: str, conditioning: str, recall: str | Sequence[tuple[int, int]] = "action"):
        """What the panorama memory knows of the frames about to be shown: (latents, mask) to keep while
        sampling, or None. The camera goes as `recall` says (see `__call__`); with "action", an action the
        episode has not played yet is first measured on a probe chunk sampled without recall (its own fixed
        noise, so the caller's generator is not touched), as is, every time, an action whose motion changed
        from chunk to chunk."""
        panorama = memory.panorama if memory is not None and memory.config.panorama else None
        if panorama is None or panorama.lost:
            return None
        if not isinstance(action, str) or context_latents.shape[0] != 1:
            raise ValueError("The panorama memory follows one episode at a time: give one action and a context "
                             "of batch 1, or use a memory without `panorama`.")
        panorama = self.panorama_at(panorama, context_latents)
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
            probe = self(action, context_latents=context_latents, num_frames=num_frames,
                         num_context_frames=num_context_frames, conditioning=conditioning,
                         memory=replace(memory, panorama=None), num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, negative_action=negative_action,
                         generator=torch.Generator().manual_seed(zlib.crc32(action.encode())), output_type="np")
            motion = panorama.motion_of(probe.frames[0])
            if motion is None:
                return None
            steps = [motion] * num_frames
        recalled = panorama.recall_along(steps)
        if recalled is None:
            return None
        frames, known = recalled
        mask = recall_mask(known, tuple(context_latents.shape[-2:]))
        if not mask.any():
            return None
        latents = self.encode_frames(frames).to(context_latents.device, context_latents.dtype)
        return latents, mask.to(latents.device, latents.dtype)

    def recall_places(self, latents: torch.Tensor, recall, noise: torch.Tensor, step: int) -> torch.Tensor:
        """The sample after denoising step `step`, its known places replaced by the panorama's, noised to the
        next timestep with the sample's own initial noise (clean after the last step), so that the UNet
        blends the rest of the frame into them at every later step."""
        known, mask = recall
        timesteps = self.scheduler.timesteps
        if step + 1 < len(timesteps):
            known = self.scheduler.add_noise(known, noise, timesteps[step + 1:step + 2])
        return mask * known + (1 - mask) * latents

    # ------------------------------------------------------------------ long videos (Algorithm 1 (a))

    def stream_episode(
        self,
        actions: Iterable[str],
        image: ImageInput | None = None,
        start_latents: torch.Tensor | None = None,
        memory: EpisodicMemory | None = None,
        temp_lora: TempLoRAConfig | bool = True,
        num_frames: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        memory_generator: torch.Generator | None = None,
        callback_on_update_step: Callable[[int, int], None] | None = None,
        **chunk_kwargs,
    ) -> Iterator[EpisodeChunk]:
        """Yield the episode chunk by chunk; `actions` may be a lazy iterator that looks at the last chunk.

        With `temp_lora` true (or a `TempLoRAConfig`), the memory is updated after every chunk on the
        previous chunk ⊕ the new one; with False, `memory` (if any) is used as it is and never updated
        (a panorama memory still follows the camera, writing nothing: `Panorama.with_frames(paste=False)`).
        Only the current context stays on the device; each yielded chunk's latents are on the CPU.

        Sampling noise comes from `generator` only, and memory updates draw from `memory_generator` (by
        default `memory_generator_for(generator)`, derived from its seed without drawing from it), so that
        with the same generator the first chunk is bit-identical with or without memory and later chunks
        differ by memory alone. This is the episode loop of `generate`, the nodes and `evaluate`.
        `callback_on_update_step` is `update_memory`'s `callback_on_step_end`; `callback_on_step_end`
        (in `chunk_kwargs`) that of every chunk's denoising, as in `__call__`.
        """
        context = self.start_latents(image, start_latents, chunk_kwargs.pop("resize", False))
        config = temp_lora if isinstance(temp_lora, TempLoRAConfig) else None
        if temp_lora and memory_generator is None:
            memory_generator = memory_generator_for(generator)
        chunk_kwargs = {"output_type": "latent", **chunk_kwargs}
        if isinstance(actions, str):
            raise ValueError("actions must be a list or an iterator of action strings (one per chunk), not a string.")
        if isinstance(actions, (list, tuple)) and not actions:
            raise ValueError("actions is empty: give at least one action (one per chunk).")
        index = -1
        for index, action in enumerate(actions):
            if not isinstance(action, str) or not action.strip():
                raise ValueError(f"actions[{index}] is {action!r}; every action must be non-empty text.")
            chunk = self(action, context_latents=context, num_frames=num_frames, memory=memory, generator=generator,
                         **chunk_kwargs).latents
            if temp_lora:
                memory = self.update_memory(memory, context, chunk, action=action, config=config,
                                            generator=memory_generator, callback_on_step_end=callback_on_update_step)
            elif memory is not None and memory.config.panorama and memory.panorama is not None:
                # A frozen memory still follows the camera, so that it recalls places where the camera is now.
                memory = replace(memory, panorama=self.panorama_with_chunk(memory.panorama, chunk, action,
                                                                           paste=False))
            context = chunk
            yield EpisodeChunk(index=index, action=action, latents=chunk.cpu(), memory=memory)
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
        """Run a whole episode (see `stream_episode`) and return all latents, the start frame's included.

        Only the last chunk keeps its memory unless `keep_memories=True`: every memory holds the whole
        Temp-LoRA (and Adam moments), so keeping one per chunk would make memory use grow with the episode.
        Keep them (or use `stream_episode`) to branch the episode at any chunk.
        """
        if isinstance(actions, (list, tuple)) and not actions:
            raise ValueError("actions is empty: give at least one action (one per chunk).")
        start = self.start_latents(image, start_latents, resize)
        chunks = []
        for chunk in self.stream_episode(actions, start_latents=start, memory=memory, **kwargs):
            if chunks and not keep_memories:
                chunks[-1].memory = None
            chunks.append(chunk)
        latents = torch.cat([start.cpu()] + [chunk.latents for chunk in chunks], dim=2)
        return EpisodeOutput(latents=latents, chunks=chunks, memory=chunks[-1].memory if chunks else memory)

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """`DiffusionPipeline.save_pretrained` of the base model: Temp-LoRA layers never leak into it."""
        with temp_lora_detached(self.unet):
            super().save_pretrained(save_directory, *args, **kwargs)
        drop_source_paths(save_directory)
