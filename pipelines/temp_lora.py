"""Temp-LoRA, the fast learner of SlowFast-VGen (paper section 3.2, Algorithm 1 (a)).

An episode's memory is an `EpisodicMemory`: plain data (LoRA tensors, Adam moments, config and
provenance) that goes into a chunk call and that an update returns anew. The UNet itself holds one set
of injected peft LoRA layers; a memory is copied into them only for the duration of a call and the
layers are disabled afterwards, so a call without memory runs the base weights bit for bit, and every
earlier memory stays valid for branching ("what if I had turned left here?").
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic_files import partial_path, remove_stale_partials
from .panorama import Panorama

ADAPTER_NAME = "temp_lora"
MEMORY_FORMAT = "slowfast-vgen-memory"
MEMORY_FORMAT_VERSION = "1"
_PROJECTIONS = r"(to_q|to_k|to_v|to_out\.0)"

TARGET_PRESETS = {
    # Spatial self/cross attention and temporal attention: appearance and motion both.
    "all-attention": rf".*(attentions\.\d+|transformer_in)\..*{_PROJECTIONS}",
    # Only the attention across frames: the cheapest, remembers how things move, less what they look like.
    "temporal-attention": rf".*(temp_attentions\.\d+|transformer_in)\..*{_PROJECTIONS}",
    # Only the per-frame attention: remembers what places look like.
    "spatial-attention": rf".*(?<!temp_)attentions\.\d+\..*{_PROJECTIONS}",
}
TEMP_LORA_OBJECTIVES = ("trajectory", "transition")
TEMP_LORA_DIRECTIONS = ("forward", "backward", "both")


class MemoryMismatchError(ValueError):
    """A memory does not fit the world model it was given to (other base model, rank or targets)."""


@dataclass(frozen=True)
class TempLoRAConfig:
    """Settings of the fast learner.

    The paper fixes rank 32, learning rate 1e-4 and Adam (appendix D.1); it is silent on the rest, so:

    - `target="all-attention"`: the paper adapts "the UNet"; attention projections are where LoRA is
      usually put in diffusion UNets, and both kinds matter for memory: spatial attention holds what a
      place looks like, temporal attention how the trajectory goes. Presets: "all-attention",
      "temporal-attention", "spatial-attention"; any other string is a regex over module names
      (matched in full, as peft does; only `nn.Linear` modules may match).
    - The LoRA scale is 1 (peft's alpha = rank), so that the learning rate alone sets the step.
    - `steps_per_update=1`: Algorithm 1 (a) takes one gradient step per chunk; more steps store a chunk
      more firmly at a proportional cost; 0 trains nothing (with `panorama`, a memory of the panorama alone).
    - Timesteps are drawn uniformly from all training timesteps, as in the slow-learning objective, and
      Adam's moments carry over from chunk to chunk, as one optimizer running over the whole episode
      (what "training a LoRA during inference" means in Temp-LoRA for text, Wang et al., 2024b).
    - `objective="trajectory"`: the paper's update (Eq. 3): the whole previous + new chunk is noised and
      denoised with no clean conditioning, to memorise the trajectory itself. `"transition"` learns the
      clip the way chunks are generated instead: the previous chunk stays clean as conditioning and only
      the new chunk is noised and learned (the input -> output format of the original Temp-LoRA, which
      the paper sets aside). On ToyWorld only the latter, played backward, brought revisited places back
      (model card).
    - `direction="forward"`: learn the clip as it was played; `"backward"` learns what going back through
      the same places shows (a return trip); `"both"` learns both. With the trajectory objective the way
      back is the clip reversed. With the transition objective it is what a turn at the end of the clip
      gives, chunk by chunk: the new chunk as seen, then the way back (the new chunk reversed, without its
      last frame, which a turn does not show twice), then the rest of the way back through the previous
      chunk. So the contexts learned are the ones a return really conditions on, frame for frame (a plain
      reversal is one frame out of step with every return chunk, and never shows the turn).
    - `action_text=False`: the paper's update has no text. With True, each example is learned with the
      text of what it shows: the chunk's action played forward, the reverse action (the world model's
      `reverse_action`) played backward, or no text where the reverse is unknown. Without text, a clip
      and its reverse start from the same places and pull the memory both ways; with it, an outward trip
      and a return through the same places are told apart (on ToyWorld the only setting whose memory
      helped in the real loop; model card).
    - `replay=0`: the paper learns each clip once, when it is made, so later updates overwrite it (on
      ToyWorld, a place learned three chunks earlier was no longer reproduced). With `replay=k` the
      memory keeps the latents of its clips, and every optimizer step also rehearses k of the earlier
      clips, drawn at random, so the whole episode stays learned. The memory then grows by one clip
      (previous + new chunk latents) per update, saved with it.
    - `local=True`: the paper's local learning rule, each update learns the clip just made. `local=False`
      is the paper's ablation "without local learning rule": the memory keeps its clips (as with replay)
      and each step learns one clip drawn at random from the whole sequence so far, the new one included.
    - `panorama=False`: Temp-LoRA alone. With True the memory also keeps a panorama of what the episode
      showed (`panorama.Panorama`: every chunk registered by phase correlation and pasted where the camera
      saw it), and the sampler keeps the places it knows when the requested action brings them back into
      view (`SlowFastVGenPipeline.__call__`, steps 3 and 5). It reads places from any direction, with no training
      pass; it assumes a panning camera and switches itself off (with a warning) when frames stop being
      pans of each other. Not in the paper (docs/evaluation.md, "The panorama memory"). A panorama memory
      that trains no Temp-LoRA (`steps_per_update=0`, the `panorama` preset) falls back to the paper's
      update (one step per chunk) once its panorama is lost, so that it still learns the episode.
    - `gradient_checkpointing=None` (automatic): with True the update recomputes each UNet layer's
      activations in the backward pass instead of keeping them all (the UNet3D of diffusers has no
      checkpointing of its own). Same result; it halves the update's peak memory (measured: 2.1 GB ->
      1.0 GB above the model on the mid-size benchmark model, 4+4 frames of 32x32 latents) for about one
      extra forward pass (+30% update time on the shipped model). None turns it on only when the
      activations the update would keep (`update_activation_bytes`) exceed half the free memory of the
      device; True and False force it.
    """

    rank: int = 32
    learning_rate: float = 1e-4
    target: str = "all-attention"
    steps_per_update: int = 1
    objective: str = "trajectory"
    direction: str = "forward"
    action_text: bool = False
    replay: int = 0
    local: bool = True
    panorama: bool = False
    gradient_checkpointing: bool | None = None

    def __post_init__(self) -> None:
        for name in ("rank", "steps_per_update", "replay"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"TempLoRAConfig.{name} must be a whole number, got {value!r}.")
        if self.rank < 1:
            raise ValueError(f"TempLoRAConfig.rank must be at least 1, got {self.rank}.")
        if not _finite_number(self.learning_rate) or not self.learning_rate > 0:
            raise ValueError(f"TempLoRAConfig.learning_rate must be a positive finite number, got {self.learning_rate!r}.")
        if self.steps_per_update < 0:
            raise ValueError(f"TempLoRAConfig.steps_per_update must be 0 (no training) or more, got "
                             f"{self.steps_per_update}.")
        for name in ("action_text", "local", "panorama"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TempLoRAConfig.{name} must be true or false, got {getattr(self, name)!r}.")
        if self.steps_per_update == 0 and not self.panorama:
            raise ValueError("TempLoRAConfig.steps_per_update is 0 and panorama is off: such a memory learns nothing. "
                             "Train it (steps_per_update 1, the paper's update), keep a panorama (panorama on), or "
                             "use no memory.")
        if self.gradient_checkpointing not in (None, True, False):
            raise ValueError("TempLoRAConfig.gradient_checkpointing must be None (automatic), true or false, "
                             f"got {self.gradient_checkpointing!r}.")
        if self.replay < 0:
            raise ValueError(f"TempLoRAConfig.replay must be 0 (no replay) or a number of clips, got {self.replay}.")
        if self.objective not in TEMP_LORA_OBJECTIVES:
            raise ValueError(f"TempLoRAConfig.objective must be one of {', '.join(TEMP_LORA_OBJECTIVES)}, got {self.objective!r}.")
        if self.direction not in TEMP_LORA_DIRECTIONS:
            raise ValueError(f"TempLoRAConfig.direction must be one of {', '.join(TEMP_LORA_DIRECTIONS)}, got {self.direction!r}.")
        try:
            re.compile(self.target_pattern)
        except re.error as error:
            raise ValueError(f"TempLoRAConfig.target {self.target!r} is neither a preset "
                             f"({', '.join(TARGET_PRESETS)}) nor a valid regex: {error}") from None

    @property
    def target_pattern(self) -> str:
        return TARGET_PRESETS.get(self.target, self.target)

    def structure(self) -> tuple:
        """What decides the shapes and placement of the LoRA layers (and so which memories are compatible)."""
        return (self.rank, self.target_pattern)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_fields(cls, fields: Mapping) -> "TempLoRAConfig":
        """Settings given by name (the JSON of `evaluate --setting` and `train --temp-lora`), checked: an
        unknown or retired name gets an error saying so, before anything runs."""
        for name in fields:
            if name in RETIRED_SETTINGS:
                raise ValueError(f"{name!r} is no longer a Temp-LoRA setting: {RETIRED_SETTINGS[name]}")
            if name not in cls.__dataclass_fields__:
                raise ValueError(f"{name!r} is no Temp-LoRA setting; the settings are "
                                 f"{', '.join(cls.__dataclass_fields__)}.")
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str) -> "TempLoRAConfig":
        """The settings a memory file records; those of older versions are read too (`recorded_settings`)."""
        return recorded_settings(text)[0]


# Settings that screens showed do not matter, fixed at the value every measurement used (docs/evaluation.md,
# "Which settings matter"). Memories saved with them still load (`legacy_settings`).
RETIRED_SETTINGS = {
    "alpha": "the LoRA scale is fixed at 1 (alpha = rank); with Adam the learning rate alone sets the step.",
    "timestep_range": "updates draw timesteps from the whole training range, as slow learning does.",
    "keep_optimizer_state": "Adam's moments always carry over from chunk to chunk.",
}


def legacy_settings(values: dict) -> tuple[dict, float]:
    """A memory file's recorded settings without the retired ones, and the factor its LoRA B tensors must be
    multiplied by so that the memory changes the model exactly as it did (alpha / rank; 1 when alpha was
    the default). Retired settings that held other values than today's fixed ones are named in a warning."""
    values = dict(values)
    values.setdefault("panorama", False)  # memories saved before the field existed
    alpha = values.pop("alpha", None)
    scale = 1.0 if alpha is None else float(alpha) / int(values.get("rank", 32))
    changed = []
    if scale != 1.0:
        changed.append(f"alpha {alpha:g} (its LoRA B tensors are rescaled by {scale:g}, which changes nothing in its "
                       "output; later updates take steps of the learning rate at scale 1)")
    if tuple(values.pop("timestep_range", (0.0, 1.0))) != (0.0, 1.0):
        changed.append("a narrowed timestep_range (updates now draw from all timesteps)")
    if values.pop("keep_optimizer_state", True) is False:
        changed.append("keep_optimizer_state=false (Adam's moments now carry over)")
    if changed:
        warnings.warn("The memory was saved with retired Temp-LoRA settings: " + "; ".join(changed) + ".",
                      UserWarning, stacklevel=4)
    return values, scale


def recorded_settings(text: str) -> tuple[TempLoRAConfig, float]:
    """The settings a memory file records (its `config` JSON), and the factor of `legacy_settings` for its LoRA
    B tensors."""
    values, scale = legacy_settings(json.loads(text))
    return TempLoRAConfig.from_fields(values), scale


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Named settings, one table for the CLI (`generate --lora-preset`, `evaluate --settings`, `plan
# --memory-setting`), the Temp-LoRA Preset node and the benchmarks. What each does on ToyWorld is measured
# in docs/evaluation.md and the model card.
TEMP_LORA_PRESETS: dict[str, TempLoRAConfig] = {
    # Algorithm 1 (a) as the paper gives it (appendix D.1): rank 32, lr 1e-4, one step, no text. The library's
    # and the nodes' default.
    "paper": TempLoRAConfig(),
    # Table 4's "original Temp-LoRA": input -> output, the previous chunk clean as conditioning.
    "transition": TempLoRAConfig(objective="transition"),
    # Table 4's "wo local learning rule": each step learns a clip drawn from the whole episode so far.
    "global": TempLoRAConfig(local=False),
    # The paper's update, stronger: 2 steps at lr 3e-3 (the first slow-fast loop screens).
    "strong": TempLoRAConfig(learning_rate=3e-3, steps_per_update=2),
    # Each chunk also learned as the way back through it, with the reverse action's text: 4 steps of 2
    # examples (8 UNet passes a chunk). Planning's retrace memory; needs the model's reverse actions.
    "way-back": TempLoRAConfig(objective="transition", direction="backward", action_text=True,
                               learning_rate=3e-3, steps_per_update=4),
    # The strongest memory measured on out-and-back paths: the way back, 3 earlier clips rehearsed at each
    # of 32 steps (about 30 times the paper's update).
    "replay": TempLoRAConfig(objective="transition", direction="backward", action_text=True, replay=3,
                             learning_rate=3e-3, steps_per_update=32),
    # A panorama of what the episode showed, read back at revisits from any direction (not in the paper;
    # assumes a panning camera), and no Temp-LoRA training until the panorama is lost: the default of
    # `generate` and `plan`. All of the measured revisit gain is the panorama's, at x1.09 the time of a
    # chunk without memory (docs/benchmarks.md).
    "panorama": TempLoRAConfig(panorama=True, steps_per_update=0),
    # The paper's update and the panorama together (x1.65 at the default 4 sampling steps).
    "paper+panorama": TempLoRAConfig(panorama=True),
}


def temp_lora_preset(name: str) -> TempLoRAConfig:
    """The `TEMP_LORA_PRESETS` entry `name`, or a clear error listing the names."""
    if name not in TEMP_LORA_PRESETS:
        raise ValueError(f"Unknown Temp-LoRA preset {name!r}; known presets: {', '.join(TEMP_LORA_PRESETS)}.")
    return TEMP_LORA_PRESETS[name]


def lora_layout_problem(shapes: Mapping[str, tuple[int, ...]], rank: int) -> str | None:
    """What is wrong with a memory's LoRA tensor shapes for its own `rank`, or None: every module must
    have an A (rank x in) and a B (out x rank), and nothing else may be there."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        name, dot, part = key.rpartition(".lora_")
        if not dot or part not in ("A.weight", "B.weight"):
            return f"tensor {key} is no LoRA tensor (expected MODULE.lora_A.weight or MODULE.lora_B.weight)"
        modules.setdefault(name, {})[part[0]] = tuple(shape)
    if not modules:
        return "it holds no LoRA tensor"
    for name, parts in sorted(modules.items()):
        if set(parts) != {"A", "B"}:
            missing = "B" if "A" in parts else "A"
            return f"module {name} has no lora_{missing}.weight"
        a, b = parts["A"], parts["B"]
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            return (f"module {name} has lora_A {a} and lora_B {b}, but the memory's rank is {rank} "
                    f"(expected ({rank}, in) and (out, {rank}))")
    return None


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return key
    return None


class MemoryClip(NamedTuple):
    """What one update learns from: a previous + new chunk of latents and the texts of its two plays."""

    latents: torch.Tensor  # B,C,F,H,W: the previous chunk, then the new one
    new_frames: int
    text: str = ""  # forward play: the chunk's action (with `action_text`), else the null text
    reverse_text: str = ""  # backward play: the reverse action, else the null text


@dataclass(frozen=True)
class EpisodicMemory:
    """The memory of one episode: Temp-LoRA weights, optimizer moments, settings and provenance.

    Immutable by contract: `update_memory` returns a new memory and never touches the tensors of the one
    it was given, so any earlier memory can be reused to branch an episode.
    """

    config: TempLoRAConfig
    lora: dict[str, torch.Tensor]
    base_fingerprint: str
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_steps: int = 0
    num_updates: int = 0
    frames_seen: int = 0
    actions: tuple[str, ...] = ()
    clips: tuple[MemoryClip, ...] = ()  # kept for replay (`TempLoRAConfig.replay`), else empty
    panorama: Panorama | None = None  # with `TempLoRAConfig.panorama`, from the first update on

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.lora.values())

    def __repr__(self) -> str:
        # A summary, not the tensors: error reports (ComfyUI's `current_inputs`, tracebacks) print it.
        c = self.config
        return (f"EpisodicMemory(rank={c.rank}, target={c.target!r}, objective={c.objective!r}, "
                f"{self.num_parameters:,} parameters, {self.num_updates} updates, {self.frames_seen} frames seen, "
                f"{len(self.clips)} clips, {self._panorama_summary()}, base {self.base_fingerprint})")

    def _panorama_summary(self) -> str:
        if self.panorama is None:
            return "no panorama"
        height, width = self.panorama.known.shape
        return f"panorama {width}x{height}{' (lost)' if self.panorama.lost else ''}"

    def with_config(self, config: TempLoRAConfig) -> "EpisodicMemory":
        """This memory, trained with `config` from now on (a new object; tensors shared, never modified).

        The training settings (learning rate, steps, timesteps, objective, ...) may change mid-episode and
        are recorded; the layout (rank, target modules) is the memory's shape and cannot.
        """
        if config == self.config:
            return self
        if config.structure() != self.config.structure():
            old, new = self.config, config
            raise MemoryMismatchError(
                f"The memory was made with rank {old.rank} and target {old.target!r}, but the Temp-LoRA settings "
                f"ask for rank {new.rank} and target {new.target!r}. Give the same rank and target, or no settings "
                "to keep the memory's own."
            )
        return replace(self, config=config)

    def to(self, device: torch.device | str) -> "EpisodicMemory":
        """The same memory with its tensors on `device` (an update leaves them on the model's device)."""
        return replace(
            self,
            lora={key: t.to(device) for key, t in self.lora.items()},
            optimizer_state={key: t.to(device) for key, t in self.optimizer_state.items()},
            clips=tuple(clip._replace(latents=clip.latents.to(device)) for clip in self.clips),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the memory as a `.safetensors` adapter, atomically (temporary file, then rename)."""
        tensors = {key: t.detach().contiguous().cpu() for key, t in self.lora.items()}
        tensors.update({f"optimizer.{k}": t.detach().contiguous().cpu() for k, t in self.optimizer_state.items()})
        tensors.update({f"clip.{i}": clip.latents.detach().contiguous().cpu() for i, clip in enumerate(self.clips)})
        if self.panorama is not None:
            tensors.update(self.panorama.tensors())
        metadata = {
            "format": MEMORY_FORMAT,
            "format_version": MEMORY_FORMAT_VERSION,
            "config": self.config.to_json(),
            "base_fingerprint": self.base_fingerprint,
            "optimizer_steps": str(self.optimizer_steps),
            "num_updates": str(self.num_updates),
            "frames_seen": str(self.frames_seen),
            "actions": json.dumps(list(self.actions)),
            "clips": json.dumps([[c.new_frames, c.text, c.reverse_text] for c in self.clips]),
            "created_with": _package_version(),
        }
        if self.panorama is not None:
            metadata["panorama"] = self.panorama.metadata()
        atomic_save_safetensors(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, check_layout: bool = True) -> "EpisodicMemory":
        """Read a memory written by `save`; a truncated, foreign or damaged file gets a clear error.

        `check_layout=False` skips `layout_problem` (for a file that holds part of a memory only)."""
        tensors, metadata = read_safetensors(path)
        damaged = first_non_finite(tensors)
        if damaged is not None:
            raise ValueError(f"{path}: tensor {damaged} holds NaN or infinite values; the memory is damaged and "
                             "cannot be used.")
        config, scale = _settings_from_metadata(path, metadata)
        if scale != 1.0:
            tensors = _rescaled_b(tensors, scale)
        try:
            clip_texts = json.loads(metadata.get("clips", "[]"))  # absent from memories made without replay
            clips = tuple(MemoryClip(tensors[f"clip.{i}"], int(new_frames), text, reverse_text)
                          for i, (new_frames, text, reverse_text) in enumerate(clip_texts))
            memory = cls(
                config=config,
                lora={k: t for k, t in tensors.items() if not k.startswith(("optimizer.", "clip.", "panorama."))},
                base_fingerprint=metadata["base_fingerprint"],
                optimizer_state={k[len("optimizer."):]: t for k, t in tensors.items() if k.startswith("optimizer.")},
                optimizer_steps=int(metadata["optimizer_steps"]),
                num_updates=int(metadata["num_updates"]),
                frames_seen=int(metadata["frames_seen"]),
                actions=tuple(json.loads(metadata["actions"])),
                clips=clips,
                panorama=Panorama.from_saved(tensors, metadata["panorama"]) if "panorama" in metadata else None,
            )
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{path} has corrupted memory metadata ({error!r}); it cannot be loaded.") from None
        problem = memory.layout_problem() if check_layout else None
        if problem is not None:
            raise ValueError(f"{path}: its tensors do not agree with its own settings: {problem}.")
        return memory

    def layout_problem(self) -> str | None:
        """What is wrong with the shapes of this memory's tensors for its own settings, or None."""
        problem = lora_layout_problem({k: tuple(t.shape) for k, t in self.lora.items()}, self.config.rank)
        for key, moment in self.optimizer_state.items():
            lora_key, _, kind = key.rpartition(".")
            if problem is None and (kind not in ("exp_avg", "exp_avg_sq") or lora_key not in self.lora
                                    or moment.shape != self.lora[lora_key].shape):
                problem = f"optimizer tensor {key} matches no LoRA tensor of the same shape"
        return problem


def config_from_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> TempLoRAConfig:
    """The settings recorded in a memory file's metadata, or a ValueError saying why it is no memory."""
    return _settings_from_metadata(path, metadata)[0]


def _settings_from_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> tuple[TempLoRAConfig, float]:
    """`config_from_metadata`, and the factor of `legacy_settings` for the file's LoRA B tensors."""
    if metadata.get("format") != MEMORY_FORMAT:
        raise ValueError(
            f"{path} is not a SlowFast-VGen memory adapter (its metadata has no format={MEMORY_FORMAT!r}). "
            "A peft adapter folder can be converted with `slowfast-vgen memory convert`."
        )
    try:
        return recorded_settings(metadata["config"])
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} has corrupted memory metadata ({error!r}); it cannot be loaded.") from None


def _rescaled_b(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A memory saved with LoRA scale `scale` (alpha / rank) as the same memory at scale 1: each B times
    `scale`, and Adam's moments of B as they would be for that parametrisation (gradients divide by it)."""
    powers = {"lora_B.weight": 1, "lora_B.weight.exp_avg": -1, "lora_B.weight.exp_avg_sq": -2}
    rescaled = {}
    for key, tensor in tensors.items():
        power = next((p for suffix, p in powers.items() if key.endswith(suffix)), 0)
        rescaled[key] = tensor * scale ** power if power else tensor
    return rescaled


def memory_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is no loadable memory, judged from its header alone (no tensor is read); None if it looks
    like one. For checks before anything runs (ComfyUI's queue-time validation); `load` checks everything."""
    try:
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        config_from_metadata(path, metadata)
    except (SafetensorError, OSError, RuntimeError) as error:
        return f"{path} is not a readable safetensors file (truncated or corrupted?): {error}"
    except ValueError as error:
        return str(error)
    return None


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return f"slowfast-vgen {version('slowfast-vgen')}"
    except Exception:
        return "slowfast-vgen (not installed)"


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` into a temporary file beside `path`, then an atomic rename."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    remove_stale_partials(path)
    temporary = partial_path(path)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with errors that say which file is broken."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No memory adapter at {path!r}.")
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(path), metadata
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {error}") from None


# ---------------------------------------------------------------------------------------------------
# The LoRA layers in the UNet


def lora_target_modules(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, torch.nn.Linear]:
    """The base modules a config's target pattern selects, by name."""
    # Kept per pattern: the base modules stay the same objects when LoRA layers are injected around them.
    cache = unet.__dict__.setdefault("_temp_lora_targets", {})
    if config.target_pattern not in cache:
        cache[config.target_pattern] = _find_lora_targets(unet, config)
    return cache[config.target_pattern]


def _find_lora_targets(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, torch.nn.Linear]:
    pattern = re.compile(config.target_pattern)
    targets = {}
    for name, module in unet.named_modules():
        if ".base_layer" in name or ".lora_" in name:
            continue
        if isinstance(module, LoraLayer):
            module = module.get_base_layer()
        if pattern.fullmatch(name):
            if not isinstance(module, torch.nn.Linear):
                raise ValueError(
                    f"Temp-LoRA target {config.target!r} matches {name}, a {type(module).__name__}; "
                    "only nn.Linear modules (attention projections) can be targeted."
                )
            targets[name] = module
    if not targets:
        raise ValueError(f"Temp-LoRA target {config.target!r} matches no module of this UNet.")
    return targets


def expected_lora_shapes(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor a memory of this config must have for this UNet (peft's key names)."""
    shapes = {}
    for name, module in lora_target_modules(unet, config).items():
        shapes[f"{name}.lora_A.weight"] = (config.rank, module.in_features)
        shapes[f"{name}.lora_B.weight"] = (module.out_features, config.rank)
    return shapes


def new_memory(unet: torch.nn.Module, config: TempLoRAConfig, base_fingerprint: str, seed: int = 0) -> EpisodicMemory:
    """An empty memory: peft's own initialisation (A as nn.Linear, B = 0), so it starts as the base model."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for key, shape in expected_lora_shapes(unet, config).items():
        tensor = torch.zeros(shape)
        if ".lora_A." in key:
            torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)
        lora[key] = tensor
    return EpisodicMemory(config=config, lora=lora, base_fingerprint=base_fingerprint)


def check_memory(unet: torch.nn.Module, memory: EpisodicMemory, base_fingerprint: str) -> None:
    """Raise `MemoryMismatchError`, naming what differs, if `memory` was not made for this UNet."""
    if memory.base_fingerprint != base_fingerprint:
        raise MemoryMismatchError(
            f"This memory was made on a world model with fingerprint {memory.base_fingerprint}, but the loaded "
            f"model's fingerprint is {base_fingerprint}. Load the world model it was made with "
            "(`slowfast-vgen memory inspect` shows it), or start a new memory."
        )
    expected = expected_lora_shapes(unet, memory.config)
    missing = sorted(set(expected) - set(memory.lora))
    unexpected = sorted(set(memory.lora) - set(expected))
    if missing or unexpected:
        raise MemoryMismatchError(
            f"The memory's LoRA tensors do not match its target modules {memory.config.target!r} on this UNet: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})."
        )
    for key, shape in expected.items():
        if tuple(memory.lora[key].shape) != shape:
            raise MemoryMismatchError(
                f"Memory tensor {key} has shape {tuple(memory.lora[key].shape)}, but rank {memory.config.rank} on "
                f"this UNet needs {shape}: the adapter was made with another rank or for another model."
            )


# The UNet holds peft LoRA layers only inside `memory_applied` (an update, or training through a memory).
# They are made once per layout and kept aside in between, so that sampling, with or without a memory,
# runs the plain base modules: no extra module in every walk diffusers makes per forward, and nothing to
# disable. State, in the UNet's __dict__: the layers by name, whether they are in place, and peft's config.


def _lora_layers(unet: torch.nn.Module) -> dict[str, LoraLayer]:
    return unet.__dict__.get("_temp_lora_layers", {})


def _place(unet: torch.nn.Module, attached: bool) -> None:
    """Put the kept LoRA layers into the UNet (`attached`) or their base layers back."""
    layers = _lora_layers(unet)
    if not layers or unet.__dict__.get("_temp_lora_attached") is attached:
        return
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child,
                layer if attached else layer.get_base_layer())
    if attached:
        unet.peft_config = unet.__dict__["_temp_lora_peft_config"]
    else:
        unet.__dict__.pop("peft_config", None)
    unet.__dict__["_temp_lora_attached"] = attached


def _ensure_adapter(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, torch.nn.Parameter]:
    """LoRA layers shaped for `config` in place in the UNet (made once per layout); their parameters by key."""
    if getattr(unet, "_temp_lora_structure", None) != config.structure():
        _remove_adapter(unet)
        lora_config = LoraConfig(
            r=config.rank, lora_alpha=config.rank, lora_dropout=0.0,
            target_modules=config.target_pattern, init_lora_weights=True,
        )
        inject_adapter_in_model(lora_config, unet, adapter_name=ADAPTER_NAME)
        unet.__dict__["_temp_lora_layers"] = {
            name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}
        unet.__dict__["_temp_lora_peft_config"] = unet.peft_config
        unet.__dict__["_temp_lora_attached"] = True
        unet._temp_lora_structure = config.structure()
    _place(unet, attached=True)
    parameters = {}
    for name, layer in _lora_layers(unet).items():
        parameters[f"{name}.lora_A.weight"] = layer.lora_A[ADAPTER_NAME].weight
        parameters[f"{name}.lora_B.weight"] = layer.lora_B[ADAPTER_NAME].weight
    return parameters


def _remove_adapter(unet: torch.nn.Module) -> None:
    _place(unet, attached=False)
    for key in ("_temp_lora_layers", "_temp_lora_attached", "_temp_lora_peft_config"):
        unet.__dict__.pop(key, None)
    unet._temp_lora_structure = None


@contextlib.contextmanager
def memory_applied(unet: torch.nn.Module, memory: EpisodicMemory | None) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Run the UNet as base + `memory` through peft's LoRA layers inside the block (trainable); as the exact
    base model outside it (and for None)."""
    if memory is None:
        _place(unet, attached=False)
        yield {}
        return
    # Outside inference mode, so that LoRA layers first made under ComfyUI's inference mode stay trainable.
    with torch.inference_mode(False), torch.no_grad():
        parameters = _ensure_adapter(unet, memory.config)
        reference = next(unet.parameters())
        for key, parameter in parameters.items():
            parameter.data = memory.lora[key].to(device=reference.device, dtype=torch.float32).clone()
    try:
        yield parameters
    finally:
        _place(unet, attached=False)


def foldable(unet: torch.nn.Module, memory: EpisodicMemory) -> bool:
    """Whether `memory_folded` can run `memory`: every target a plain float `nn.Linear` with its weight in
    place. Quantised layers (bitsandbytes and the like subclass `nn.Linear` with integer weights), weights
    on the meta device and weights an accelerate hook swaps in at each forward (offloading) cannot take a
    folded weight; those run the LoRA layers instead (`memory_applied`)."""
    for name, module in lora_target_modules(unet, memory.config).items():
        weight = module.weight
        if (type(module) is not torch.nn.Linear or not weight.is_floating_point() or weight.is_meta
                or hasattr(module, "_hf_hook") or weight.requires_grad and torch.is_grad_enabled()):
            return False
    return True


@contextlib.contextmanager
def memory_folded(unet: torch.nn.Module, memory: EpisodicMemory) -> Iterator[None]:
    """Run the UNet as base + `memory` inside the block at the base model's cost: each target's weight is
    replaced by W + B A, computed once, and the base weight is put back afterwards exactly
    (the very tensor, never written to). For generation only: gradients through a folded weight would not
    reach the base weights' storage. Check `foldable` first."""
    swapped = []
    _place(unet, attached=False)
    try:
        with torch.no_grad():
            for name, module in lora_target_modules(unet, memory.config).items():
                base = module.weight.data
                a = memory.lora[f"{name}.lora_A.weight"].to(base.device, torch.float32)
                b = memory.lora[f"{name}.lora_B.weight"].to(base.device, torch.float32)
                folded = torch.addmm(base.float(), b, a).to(base.dtype)
                module.weight.data = folded
                swapped.append((module, base))
        yield
    finally:
        for module, base in swapped:
            module.weight.data = base


def memory_for_sampling(unet: torch.nn.Module, memory: EpisodicMemory | None):
    """The context a chunk is sampled in: folded at base cost where `foldable`, else the LoRA layers."""
    if memory is not None and foldable(unet, memory):
        return memory_folded(unet, memory)
    return memory_applied(unet, memory)


@contextlib.contextmanager
def temp_lora_detached(unet: torch.nn.Module) -> Iterator[None]:
    """The plain base UNet for the block, whatever state it was in (so `save_pretrained` writes the base only)."""
    attached = unet.__dict__.get("_temp_lora_attached", False)
    _place(unet, attached=False)
    try:
        yield
    finally:
        _place(unet, attached=attached)


# ---------------------------------------------------------------------------------------------------
# The fast-learning update (Algorithm 1 (a), lines 11-14)


class MemoryExample(NamedTuple):
    """One thing an update learns: `target` frames denoised after the clean `context` frames, with `text`."""

    context: torch.Tensor
    target: torch.Tensor
    text: str


def memory_examples(clip: MemoryClip, config: TempLoRAConfig) -> list[MemoryExample]:
    """What one update learns from `clip`, forward play first (see `TempLoRAConfig.direction`)."""
    latents, new_frames = clip.latents, clip.new_frames
    previous, new = latents[:, :, :-new_frames], latents[:, :, -new_frames:]
    if config.objective == "trajectory":
        forward = [MemoryExample(latents[:, :, :0], latents, clip.text)]
        backward = [MemoryExample(latents[:, :, :0], latents.flip(2), clip.reverse_text)]
    else:
        way_back = latents.flip(2)[:, :, 1:]
        forward = [MemoryExample(previous, new, clip.text)]
        backward = [MemoryExample(new, way_back[:, :, :new_frames], clip.reverse_text),
                    MemoryExample(way_back[:, :, :new_frames], way_back[:, :, new_frames:], clip.reverse_text)]
    examples = {"forward": forward, "backward": backward, "both": forward + backward}[config.direction]
    return [example for example in examples if example.target.shape[2]]


def temp_lora_loss(unet, noise_scheduler, context: torch.Tensor, target: torch.Tensor, text_embeds: torch.Tensor,
                   timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Denoising loss on `target` after the clean `context` frames (none in the paper's update)."""
    noisy = noise_scheduler.add_noise(target, noise, timesteps)
    prediction = unet(torch.cat([context, noisy], dim=2), timesteps, encoder_hidden_states=text_embeds).sample
    prediction = prediction[:, :, context.shape[2]:]
    return F.mse_loss(prediction.float(), denoising_target(noise_scheduler, target, noise, timesteps).float())


def denoising_target(noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict under the scheduler's `prediction_type` (epsilon, v or the sample)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(clean, noise, timesteps)
    return clean


def update_memory(
    unet: torch.nn.Module,
    noise_scheduler,
    memory: EpisodicMemory,
    clip: MemoryClip,
    text_embeds: Mapping[str, torch.Tensor],
    action: str | None = None,
    generator: torch.Generator | None = None,
    callback_on_step_end: Callable[[int, int], None] | None = None,
) -> EpisodicMemory:
    """Train Temp-LoRA on `clip` (and, with replay, on earlier clips of `memory`); return the new memory.

    `text_embeds` maps every text of `clip` and of the memory's clips to its text-encoder states (1,L,D);
    the paper's update uses the null text only. `action` is recorded in the memory.
    `callback_on_step_end(step, steps_per_update)` is called after every optimizer step (progress bars;
    raising from it, e.g. to cancel, abandons the update and leaves `memory` as it was).

    Runs outside inference mode with grad enabled (ComfyUI runs nodes under `torch.inference_mode()`),
    touches neither the inputs nor `memory`, and on a NaN or infinite loss returns `memory` unchanged.
    """
    config = memory.config
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    if generator is not None and generator.device.type != "cpu":
        # Timesteps and noise are drawn on the CPU (bit-identical on every device); a device generator
        # cannot draw there, so derive a CPU one from it, reproducibly.
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator,
                                                                    device=generator.device).item()))
    if config.steps_per_update == 0:  # no Temp-LoRA training: a memory of its panorama only
        result = (dict(memory.lora), dict(memory.optimizer_state))
    else:
        result = _trained(unet, noise_scheduler, memory, clip, text_embeds, generator, callback_on_step_end)
    if result is None:
        return memory
    lora, optimizer_state = result
    keeps_clips = config.replay or not config.local
    kept = clip._replace(latents=clip.latents.detach().clone()) if keeps_clips else None
    return replace(
        memory,
        lora=lora,
        optimizer_state=optimizer_state,
        optimizer_steps=memory.optimizer_steps + config.steps_per_update,
        num_updates=memory.num_updates + 1,
        frames_seen=memory.frames_seen + clip.new_frames,
        actions=memory.actions + ((action,) if action is not None else ()),
        clips=memory.clips + (kept,) if kept is not None else (),
    )


def _trained(unet, noise_scheduler, memory, clip, text_embeds, generator, callback_on_step_end):
    """`update_memory`'s optimizer steps on `clip` (and replayed clips): (lora, optimizer_state), or None."""
    config = memory.config
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = needs_checkpointing(unet, clip, config, clip.latents.device)
    checkpointed = _checkpointed(unet) if checkpointing else contextlib.nullcontext()
    with torch.inference_mode(False), torch.enable_grad(), memory_applied(unet, memory) as parameters, checkpointed:
        # Copies made here, outside inference mode, so that autograd may save them (ComfyUI's inputs are
        # inference tensors), and so that neither the inputs nor the memory can be touched.
        def copied(source: MemoryClip) -> MemoryClip:
            latents = source.latents.detach().to(clip.latents.device, clip.latents.dtype, copy=True)
            return source._replace(latents=latents)

        embeds = {text: e.detach().clone() for text, e in text_embeds.items()}
        current = memory_examples(copied(clip), config)

        @functools.cache  # only the clips a step draws are copied to the device, once each
        def replayed(index: int) -> list[MemoryExample]:
            return memory_examples(copied(memory.clips[index]), config)

        trainable = list(parameters.values())
        for parameter in trainable:
            parameter.requires_grad_(True)
        try:
            result = _train_steps(unet, noise_scheduler, embeds, memory, current, replayed, parameters, trainable,
                                  generator, callback_on_step_end)
        finally:
            for parameter in trainable:
                parameter.requires_grad_(False)
                parameter.grad = None
    return result


def _examples_loss(unet, noise_scheduler, embeds, examples, generator) -> torch.Tensor:
    """Mean loss of `examples`, those of one shape run through the UNet as one batch (each its own timestep)."""
    batches: dict[tuple[int, int], list[MemoryExample]] = {}
    for example in examples:
        batches.setdefault((example.context.shape[2], example.target.shape[2]), []).append(example)
    total = 0.0
    for batch in batches.values():
        context = torch.cat([e.context for e in batch])
        target = torch.cat([e.target for e in batch])
        text_embeds = torch.cat([embeds[e.text].expand(e.target.shape[0], -1, -1) for e in batch])
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (target.shape[0],),
                                  generator=generator).to(target.device)
        noise = torch.randn(target.shape, generator=generator, dtype=torch.float32).to(target.device, target.dtype)
        loss = temp_lora_loss(unet, noise_scheduler, context, target, text_embeds, timesteps, noise)
        total = total + loss * len(batch)
    return total / len(examples)


# Floats a UNet3D keeps for its backward pass per latent element (frame x height x width) per channel of
# its blocks (sum of `block_out_channels`), with the LoRA trainable and the base frozen. Measured with
# `torch.autograd.graph.saved_tensors_hooks` on diffusers' UNet3DConditionModel: 133-197 over the tiny,
# shipped and mid-size models at 8-16 frames of 8x8-32x32 latents; the estimate takes the top of that range.
_SAVED_FLOATS_PER_ELEMENT_CHANNEL = 200


def update_activation_bytes(unet: torch.nn.Module, clip: MemoryClip, config: TempLoRAConfig) -> int:
    """Estimated bytes of activations an update without gradient checkpointing keeps, per optimizer step."""
    frames = sum(e.context.shape[2] + e.target.shape[2] for e in memory_examples(clip, config))
    frames *= 1 + config.replay
    batch, _, _, height, width = clip.latents.shape
    channels = sum(unet.config.block_out_channels)
    element_size = torch.finfo(clip.latents.dtype).bits // 8 if clip.latents.is_floating_point() else 4
    return _SAVED_FLOATS_PER_ELEMENT_CHANNEL * batch * frames * height * width * channels * element_size


def needs_checkpointing(unet: torch.nn.Module, clip: MemoryClip, config: TempLoRAConfig,
                        device: torch.device) -> bool:
    """The automatic choice: checkpoint when the update's activations would take over half the free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return update_activation_bytes(unet, clip, config) > free // 2


# The UNet3D layers whose activations the update recomputes in the backward pass instead of storing them.
_CHECKPOINTED_LAYERS = ("Transformer2DModel", "TransformerTemporalModel", "ResnetBlock2D", "TemporalConvLayer")


@contextlib.contextmanager
def _checkpointed(unet: torch.nn.Module) -> Iterator[None]:
    """Gradient checkpointing of every attention / resnet / temporal-conv layer of the UNet, for the block."""
    from torch.utils.checkpoint import checkpoint

    wrapped = []
    for module in unet.modules():
        if type(module).__name__ in _CHECKPOINTED_LAYERS:
            previous = module.__dict__.get("forward")  # an accelerate hook may already sit there
            forward = module.forward
            module.forward = functools.partial(_checkpoint_call, checkpoint, forward)
            wrapped.append((module, previous))
    try:
        yield
    finally:
        for module, previous in wrapped:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _checkpoint_call(checkpoint, forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _train_steps(unet, noise_scheduler, embeds, memory, current, replayed, parameters, trainable, generator,
                 callback_on_step_end=None):
    """The optimizer steps of one update: (lora, optimizer_state) of the new memory, or None to roll back."""
    config = memory.config
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)
    if memory.optimizer_state:
        for key, parameter in parameters.items():
            optimizer.state[parameter] = {
                "step": torch.tensor(float(memory.optimizer_steps)),
                "exp_avg": memory.optimizer_state[f"{key}.exp_avg"].to(parameter.device).clone(),
                "exp_avg_sq": memory.optimizer_state[f"{key}.exp_avg_sq"].to(parameter.device).clone(),
            }
    for step in range(config.steps_per_update):
        if config.local:
            examples = list(current)
        else:  # one clip of the whole sequence so far, the new one as likely as any other
            drawn = int(torch.randint(0, len(memory.clips) + 1, (1,), generator=generator))
            examples = list(current) if drawn == len(memory.clips) else list(replayed(drawn))
        if memory.clips:
            for index in torch.randint(0, len(memory.clips), (config.replay,), generator=generator).tolist():
                examples += replayed(index)
        loss = _examples_loss(unet, noise_scheduler, embeds, examples, generator)
        if not torch.isfinite(loss):
            warnings.warn(
                f"Temp-LoRA update skipped: the loss was {loss.item()}; the memory was rolled back to its last "
                "good state and generation carries on.", RuntimeWarning, stacklevel=2,
            )
            return None
        gradients = torch.autograd.grad(loss, trainable)
        for parameter, gradient in zip(trainable, gradients):
            parameter.grad = gradient
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if callback_on_step_end is not None:
            callback_on_step_end(step, config.steps_per_update)
    # The new memory stays on the model's device: no host round trip per chunk (`EpisodicMemory.to` moves it).
    lora = {key: p.detach().clone() for key, p in parameters.items()}
    if not torch.stack([torch.isfinite(t).all() for t in lora.values()]).all():
        warnings.warn("Temp-LoRA update produced non-finite weights; the memory was rolled back.",
                      RuntimeWarning, stacklevel=2)
        return None
    optimizer_state = {}
    for key, parameter in parameters.items():
        state = optimizer.state[parameter]
        optimizer_state[f"{key}.exp_avg"] = state["exp_avg"].detach().clone()
        optimizer_state[f"{key}.exp_avg_sq"] = state["exp_avg_sq"].detach().clone()
    return lora, optimizer_state
