"""What travels on the pack's links, and the library calls the nodes delegate to.

- `WorldModel` (SFV_WORLD_MODEL): a loaded pipeline. Inside ComfyUI its models are one module managed by
  ComfyUI's `ModelPatcher`, so that ComfyUI loads them onto the device, evicts them when other models need
  the room, and frees them with its "Unload models" action, like its own models; the loaded model is
  kept by ComfyUI's node cache, not by the pack. Outside ComfyUI it moves to its device for a run.
- `EpisodeSoFar` (SFV_CHUNK, the "chunk" sockets): the clean latents of an episode so far, split into
  the segments it was made of (the start frame(s), then one segment per generated chunk), so that chunks
  chain without decoding. Its old name `Chunk` still imports, with a deprecation warning.
- `EpisodicMemory` (SFV_MEMORY) and `TempLoRAConfig` (SFV_TEMP_LORA) are the pipeline's own immutable
  types, passed as they are.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..paths import DEFAULT_MODEL_DIR, DEFAULT_PLANNER_DIR
from ..pipelines import (
    EpisodicMemory,
    SlowFastVGenPipeline,
    TempLoRAConfig,
    dtype_argument,
)
from . import comfy_services

BUILTIN_MODEL_NAME = "toyworld (built-in)"
BUILTIN_PLANNER_NAME = "toyworld-retrace (built-in)"  # the same world, trained for planning's retrace task
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu")


class PipelineModules(torch.nn.Module):
    """The pipeline's models as one module: what ComfyUI's ModelPatcher moves, sizes and evicts."""

    def __init__(self, pipe: SlowFastVGenPipeline):
        super().__init__()
        self.unet, self.vae, self.text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
        self.device = pipe.device  # kept up to date by the ModelPatcher as it moves the models


@dataclass(eq=False)
class WorldModel:
    """A loaded world model: the pipeline, where it computes and where it waits between runs, and inside
    ComfyUI the ModelPatcher through which ComfyUI manages it."""

    pipe: SlowFastVGenPipeline
    name: str
    device: torch.device
    offload_device: torch.device
    patcher: Any = None  # comfy.model_patcher.ModelPatcher inside ComfyUI, None outside

    def __repr__(self) -> str:  # not the whole pipeline: error reports print their inputs
        return f"WorldModel({self.name!r}, device={self.device}, offload_device={self.offload_device})"

    @contextlib.contextmanager
    def running(self) -> Iterator[SlowFastVGenPipeline]:
        """The pipeline on its compute device for the block.

        Inside ComfyUI, its model manager loads it (unloading other models if room is needed) and keeps it
        there afterwards until it needs the room, as for its own models. Outside ComfyUI it is moved back
        to its offload device after the block (also on error or cancel).

        The block runs outside ComfyUI's `torch.inference_mode()`: tensors made inside it (moved weights,
        Temp-LoRA layers injected on first use, chunks) must stay usable by Temp-LoRA's gradient steps,
        which inference tensors are not. The pipeline's own `no_grad` keeps generation gradient-free.
        """
        comfy_services.throw_if_interrupted()  # before the model is moved
        with torch.inference_mode(False):
            if self.patcher is not None:
                # Room for the weights and as much again for activations (a Temp-LoRA step's backward pass).
                comfy_services.load_models([self.patcher], memory_required=self.patcher.model_size())
                usable_for_training(self.pipe, self.device)
                with cancel_points(self.pipe.unet):
                    yield self.pipe
                return
            self.pipe.to(self.device)
            try:
                with cancel_points(self.pipe.unet):
                    yield self.pipe
            finally:
                if self.offload_device != self.device:
                    self.pipe.to(self.offload_device)


# The UNet's layers at whose start (forward) and gradient (backward) Cancel is checked: a few dozen per UNet
# call, so that a long call (a Temp-LoRA step's forward and backward pass above all) stops within a layer.
CANCEL_POINT_LAYERS = ("ResnetBlock2D", "Transformer2DModel", "TransformerTemporalModel", "TemporalConvLayer")


def _check_cancel_in_backward(gradient: torch.Tensor) -> None:
    comfy_services.throw_if_interrupted()


def _check_cancel_before(module: torch.nn.Module, args: tuple) -> None:
    comfy_services.throw_if_interrupted()


def _check_cancel_after(module: torch.nn.Module, args: tuple, output: Any) -> None:
    tensor = output[0] if isinstance(output, (tuple, list)) and output else getattr(output, "sample", output)
    if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
        tensor.register_hook(_check_cancel_in_backward)  # runs as this layer's gradient is computed


@contextlib.contextmanager
def cancel_points(unet: torch.nn.Module) -> Iterator[None]:
    """Cancel checked at every layer of `CANCEL_POINT_LAYERS`, forward and backward, for the block.

    A denoising step and a Temp-LoRA step report progress (and check Cancel) only once they end; a
    Temp-LoRA step on a big model or a loaded machine takes seconds, so Cancel is also checked inside them."""
    handles = []
    for module in unet.modules():
        if type(module).__name__ in CANCEL_POINT_LAYERS:
            handles += [module.register_forward_pre_hook(_check_cancel_before),
                        module.register_forward_hook(_check_cancel_after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def usable_for_training(pipe: SlowFastVGenPipeline, device: torch.device) -> None:
    """Weights moved by ComfyUI under its inference mode are inference tensors, through which Temp-LoRA
    cannot backpropagate: copy those (only those) into ordinary tensors; with any weight left on another
    device (ComfyUI's --novram loads nothing), move the models to the compute device."""
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_inference():
                tensor.data = tensor.data.clone()
    if pipe.unet.device != device:
        pipe.to(device)


# Fingerprint -> name of every world model loaded in this process, so that a memory of another model can be
# named by the model it was made with, not only by its fingerprint (names only: no model is kept).
_LOADED_NAMES: dict[str, str] = {}


def model_called(fingerprint: str) -> str:
    """'<name>' (fingerprint ...) for a model loaded here, else the fingerprint alone."""
    name = _LOADED_NAMES.get(fingerprint)
    if name:
        return f"{name!r} (fingerprint {fingerprint})"
    return f"a world model not loaded here (fingerprint {fingerprint})"


def check_memory_fits(world_model: WorldModel, memory: EpisodicMemory | None, makes_memory: bool = False) -> None:
    """Refuse a memory made with another world model, naming both models. Nodes that make memories pass
    `makes_memory`, so that the name of their model is known to later checks."""
    if not makes_memory and not isinstance(memory, EpisodicMemory):
        return
    fingerprint = world_model.pipe.base_fingerprint
    _LOADED_NAMES.setdefault(fingerprint, world_model.name)
    if not isinstance(memory, EpisodicMemory):
        return
    if memory.base_fingerprint != fingerprint:
        raise ValueError(
            f"This memory was made with the world model {model_called(memory.base_fingerprint)}, but the "
            f"world_model input is {world_model.name!r} (fingerprint {fingerprint}). Load the world model it was "
            "made with in Load World Model, or start a new memory (leave 'memory' empty)."
        )


def list_world_models() -> list[str]:
    """The built-in model first, then every diffusers folder (with model_index.json) in the world_models folders."""
    return [BUILTIN_MODEL_NAME, BUILTIN_PLANNER_NAME] + comfy_services.model_folder_names(
        comfy_services.WORLD_MODELS_FOLDER, "model_index.json")


def world_model_folder(name: str) -> str:
    """The folder of a listed world model, or a FileNotFoundError saying where models go."""
    builtin = {BUILTIN_MODEL_NAME: DEFAULT_MODEL_DIR, BUILTIN_PLANNER_NAME: DEFAULT_PLANNER_DIR}.get(name)
    if builtin is not None:
        if not (builtin / "model_index.json").is_file():
            raise FileNotFoundError(
                f"The built-in model {name!r} is missing from the pack ({builtin}). Update or reinstall the "
                "SlowFast-VGen node pack (the model ships with it), or pick another world model."
            )
        return str(builtin)
    folders = comfy_services.model_folders(comfy_services.WORLD_MODELS_FOLDER)
    for base in folders if comfy_services.is_plain_relative(name) else ():  # never outside the folders
        path = os.path.join(base, name)
        if os.path.isfile(os.path.join(path, "model_index.json")):
            return path
    raise FileNotFoundError(
        f"World model {name!r} not found: no folder {name!r} with a model_index.json in "
        f"{' or '.join(folders)}. Put a diffusers-format world model folder there (as saved by "
        "`save_pretrained`), then press R to refresh, or pick a listed model."
    )


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}.")
    return comfy_services.compute_device() if device == "auto" else torch.device("cpu")


def load_world_model(name: str, dtype: str = "float32", device: str = "auto") -> WorldModel:
    """Load a listed world model; inside ComfyUI, hand it to ComfyUI's model manager (see `WorldModel`)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    folder = os.path.realpath(world_model_folder(name))
    compute = resolve_device(device)
    offload = compute if device == "cpu" else comfy_services.offload_device()
    try:
        # Weights loaded under ComfyUI's inference_mode would be inference tensors, through which Temp-LoRA
        # cannot backpropagate.
        with torch.inference_mode(False):
            pipe = SlowFastVGenPipeline.from_pretrained(folder, **dtype_argument(DTYPES[dtype]))
            pipe.to(offload)
    except Exception as error:
        raise RuntimeError(
            f"Could not load the world model {name!r} from {folder}: {error}. The folder must be a complete "
            "diffusers SlowFastVGenPipeline (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."
        ) from error
    pipe.set_progress_bar_config(disable=True)  # the node's own progress bar reports instead
    patcher = comfy_services.model_patcher(PipelineModules(pipe), compute, offload)
    return WorldModel(pipe=pipe, name=name, device=compute, offload_device=offload, patcher=patcher)


@dataclass(frozen=True)
class EpisodeSoFar:
    """SFV_CHUNK: clean latents B,C,F,h,w (on the CPU) of an episode so far, the frames of each segment and
    the action of each generated segment.

    It travels on the sockets named "chunk" (their type string SFV_CHUNK is kept: saved workflows name it),
    but holds the whole episode up to and including the newest chunk, not one chunk.

    The last segment is the newest chunk (the context of the next one); the one before it is what that
    chunk continued from (what Temp-LoRA trains on together with it).
    """

    latents: torch.Tensor
    segments: tuple[int, ...]
    actions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if sum(self.segments) != self.latents.shape[2] or not all(n > 0 for n in self.segments):
            raise ValueError(f"Episode segments {self.segments} do not split the {self.latents.shape[2]} latent frames.")

    def __repr__(self) -> str:  # not the latents: error reports print their inputs
        return f"EpisodeSoFar(latents {tuple(self.latents.shape)}, segments={self.segments}, actions={self.actions})"

    @property
    def last(self) -> torch.Tensor:
        return self.latents[:, :, -self.segments[-1]:]

    @property
    def previous(self) -> torch.Tensor | None:
        if len(self.segments) < 2:
            return None
        end = self.latents.shape[2] - self.segments[-1]
        return self.latents[:, :, end - self.segments[-2]:end]

    def extended(self, new_latents: torch.Tensor, action: str) -> "EpisodeSoFar":
        """A new EpisodeSoFar with `new_latents`, made by `action`, as the newest segment (this one is left as it is)."""
        new_latents = new_latents.detach().to("cpu", torch.float32)
        return EpisodeSoFar(
            torch.cat([self.latents, new_latents], dim=2), self.segments + (new_latents.shape[2],), self.actions + (action,)
        )


def image_to_frames(image: torch.Tensor, pipe: SlowFastVGenPipeline) -> torch.Tensor:
    """A ComfyUI IMAGE (B,H,W,C in [0,1]) -> frames B,C,H,W for `encode_frames`, refusing sizes the model was
    not trained at (it would make poor frames there, silently).

    ComfyUI keeps transparency in a separate MASK, so a 4th channel is dropped here, and values a resampling
    node overshot are clipped to IMAGE's [0, 1]; `encode_frames` does the rest of the conversion and checks.
    """
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be a ComfyUI IMAGE batch (frames, height, width, channels), got {tuple(image.shape)}.")
    height, width = image.shape[1:3]
    native = pipe.native_size
    if (height, width) != (native, native):
        raise ValueError(
            f"The image is {width}x{height}, but this world model was trained on {native}x{native} frames and "
            f"makes poor frames at other sizes. Resize it first, e.g. with the core 'Upscale Image' node set to "
            f"{native}x{native} (crop: center)."
        )
    return image[..., :3].permute(0, 3, 1, 2).float().clamp(0, 1)


def start_chunk(pipe: SlowFastVGenPipeline, image: torch.Tensor | None,
                chunk: EpisodeSoFar | None) -> EpisodeSoFar:
    """What an episode continues from: a given chunk, or the start image(s) encoded as the first segment."""
    if (image is None) == (chunk is None):
        raise ValueError(
            "Connect exactly one of 'image' (a start frame, to begin an episode) and 'chunk' (to continue one)."
        )
    if chunk is not None:
        return chunk
    latents = pipe.encode_frames(image_to_frames(image, pipe), argument="image").to("cpu", torch.float32)
    return EpisodeSoFar(latents, (latents.shape[2],))


def decode_to_image(pipe: SlowFastVGenPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Latents B,C,F,h,w -> a ComfyUI IMAGE (B*F,H,W,3 float32 in [0,1] on the CPU), a few frames at a time."""
    parts = [part.cpu() for part in pipe.iter_decode([latents], output_type="pt")]  # each B,f,3,H,W
    video = torch.cat(parts, dim=1)
    return video.flatten(0, 1).permute(0, 2, 3, 1).float().contiguous()


def parse_actions(script: str) -> list[str]:
    """One action per line; blank lines are skipped. An empty script is an error, not an empty episode."""
    actions = [line.strip() for line in script.splitlines() if line.strip()]
    if not actions:
        raise ValueError(
            "The action script is empty: write one action per line (one line = one chunk), e.g. 'move right'."
        )
    return actions


def check_action(action: str) -> str:
    """The action of one chunk, stripped; empty text is an error."""
    if not action.strip():
        raise ValueError("The action is empty: type what happens in this chunk, e.g. 'move right'.")
    return action.strip()


def memory_with_settings(memory: EpisodicMemory | None, settings: TempLoRAConfig | None) -> EpisodicMemory | None:
    """The memory trained on with `settings` from now on (see `EpisodicMemory.with_config`)."""
    return memory if memory is None or settings is None else memory.with_config(settings)


def _advance(bar: comfy_services.ProgressBar) -> None:
    comfy_services.throw_if_interrupted()
    bar.update(1)


def step_callback(bar: comfy_services.ProgressBar):
    """A diffusers `callback_on_step_end` that honours Cancel and moves the progress bar, once per step."""

    def callback(pipe, step, timestep, tensors):
        _advance(bar)
        return tensors

    return callback


def update_step_callback(bar: comfy_services.ProgressBar):
    """`update_memory`'s `callback_on_step_end`: Cancel and the progress bar, once per Temp-LoRA step."""
    return lambda step, steps: _advance(bar)


def update_steps(memory: EpisodicMemory | None, settings: TempLoRAConfig | None) -> int:
    """Optimizer steps of one memory update with these settings (the memory's own, else the defaults)."""
    return (settings or (memory.config if memory is not None else TempLoRAConfig())).steps_per_update


def decode_and_preview(pipe: SlowFastVGenPipeline, latents: torch.Tensor,
                       bar: comfy_services.ProgressBar) -> torch.Tensor:
    """`decode_to_image`, shown on the node as a preview (one progress unit)."""
    comfy_services.throw_if_interrupted()
    images = decode_to_image(pipe, latents)
    bar.update(1, preview=comfy_services.preview_image(images))
    return images


def generator_for(seed: int) -> torch.Generator:
    """A CPU generator, so that a seed gives the same result on every device."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"seed={seed!r} is out of range: give a whole number from 0 to {0xFFFFFFFFFFFFFFFF}.")
    return torch.Generator("cpu").manual_seed(seed)


# Old name -> new name. `Chunk` held the whole episode so far, not one chunk.
_DEPRECATED_NAMES = {"Chunk": "EpisodeSoFar"}


def __getattr__(name: str) -> Any:
    if name not in _DEPRECATED_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new_name = _DEPRECATED_NAMES[name]
    # Not cached in the module, so that every use warns (Python's filters show it once per place of use).
    warnings.warn(f"{__name__}.{name} is deprecated; use {__name__}.{new_name} (it holds the episode so far, "
                  "not one chunk).", DeprecationWarning, stacklevel=2)
    return globals()[new_name]
