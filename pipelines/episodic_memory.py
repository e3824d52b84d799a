"""The memory of an episode as data: `EpisodicMemory` (Temp-LoRA weights, Adam's moments, settings,
provenance, kept clips and panorama) and `UpdateClip`, what one update learns from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping, NamedTuple

import torch

from .memory_file import atomic_save_safetensors, memory_fields, memory_file_contents, read_safetensors
from .memory_settings import TempLoRAConfig
from .panorama import Panorama
from .pose_memory import PoseViews


class MemoryMismatchError(ValueError):
    """A memory does not fit the world model it was given to (other base model, rank or targets)."""


class UpdateClip(NamedTuple):
    """What one memory update learns from (paper Algorithm 1 (a), line 11: X_i = X_i ⊕ Y_i): the previous
    chunk's latents followed by the new chunk's, and the texts of its two plays.

    Not a chunk of the episode (`EpisodeStep`) nor one denoising problem made from it (`DenoisingExample`).
    A memory with replay keeps its update clips (`EpisodicMemory.clips`).
    """

    latents: torch.Tensor  # B,C,F,H,W: the previous chunk, then the new one
    new_frames: int
    text: str = ""  # forward play: the chunk's action (with `action_text`), else the null text
    reverse_text: str = ""  # backward play: the reverse action, else the null text


@dataclass(frozen=True)
class EpisodicMemory:
    """The memory of one episode: Temp-LoRA weights, optimizer moments, settings and provenance.

    Immutable by contract: `update_memory` returns a new memory and never touches the tensors of the one
    it was given, so any earlier memory can be reused to branch an episode. A memory is plain data; the
    UNet runs it through the LoRA layers of `lora_layers` only for the length of a call.
    """

    config: TempLoRAConfig
    lora: dict[str, torch.Tensor]
    base_fingerprint: str
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_steps: int = 0
    num_updates: int = 0
    frames_seen: int = 0
    actions: tuple[str, ...] = ()
    clips: tuple[UpdateClip, ...] = ()  # kept for replay (`TempLoRAConfig.replay`), else empty
    panorama: Panorama | None = None  # with `TempLoRAConfig.panorama`, from the first update on
    poses: PoseViews | None = None  # with `TempLoRAConfig.poses`, from the first update on

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
        if self.poses is not None:
            return self.poses.summary()
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
        """Write the memory as a `.safetensors` adapter (`memory_file`), atomically (temporary file, then rename)."""
        tensors, metadata = memory_file_contents(self)
        atomic_save_safetensors(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, check_layout: bool = True) -> "EpisodicMemory":
        """Read a memory written by `save`; a truncated, foreign or damaged file gets a clear error.

        `check_layout=False` skips `layout_problem` (for a file that holds part of a memory only)."""
        fields = memory_fields(path, *read_safetensors(path))
        memory = cls(**{**fields, "clips": tuple(UpdateClip(*clip) for clip in fields["clips"])})
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
