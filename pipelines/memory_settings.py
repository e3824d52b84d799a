"""The settings of the fast learner (`TempLoRAConfig`), the named presets, and the reading of settings that
older memory files recorded (retired settings are migrated, with a warning where they changed anything)."""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping

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


@dataclass(frozen=True)
class TempLoRAConfig:
    """Settings of the fast learner (paper section 3.2, Algorithm 1 (a)).

    The defaults are the paper's update: rank 32, learning rate 1e-4, Adam, one step per chunk
    (appendix D.1), on the UNet's attention projections. What each setting does and what it was measured
    to change are in docs/evaluation.md ("Memory settings", "The panorama memory").

    Args:
        rank: LoRA rank; the LoRA scale is 1 (peft's alpha = rank), so the learning rate alone sets the step.
        learning_rate: Adam's learning rate; Adam's moments carry over from chunk to chunk.
        target: "all-attention", "temporal-attention", "spatial-attention" (`TARGET_PRESETS`), or a regex over
            module names, matched in full as peft does (only `nn.Linear` modules may match).
        steps_per_update: optimizer steps per chunk; 0 trains nothing (with `panorama`: the panorama alone,
            which falls back to the paper's one step once its panorama is lost).
        objective: "trajectory", the paper's update (Eq. 3: previous + new chunk noised whole, no clean
            conditioning), or "transition" (the previous chunk clean as conditioning, the new one learned).
        direction: "forward" (the clip as played), "backward" (the way back through the same places: the
            clip reversed, or for "transition" the chunks a turn at the end of the clip would give), or "both".
        action_text: learn each example with the text of what it shows (the action forward, the world model's
            `reverse_action` backward) instead of the paper's null text.
        replay: earlier clips rehearsed, drawn at random, at every optimizer step; the memory keeps (and saves)
            the latents of its clips.
        local: True is the paper's local learning rule (each update learns the clip just made); False its
            ablation "without local learning rule" (each step learns one clip drawn from the whole episode).
        panorama: also keep a panorama of what the episode showed (`panorama.Panorama`), from which the
            sampler brings places back into view (not in the paper; assumes a panning camera).
        poses: also keep every frame at the camera pose the actions imply (`pose_memory.PoseViews`) and
            bring it back at that pose; needs the world model's `action_motions`.
        turn_views: with `poses`, a pose with no view of its own also gets the views of the same place facing
            less than a field of view away, turned by the camera's rotation (`turn_views.py`); needs the world
            model's `camera_fovy` (without it, or off, only exact poses come back).
        gradient_checkpointing: recompute the UNet's activations in the backward pass of an update (same
            result, less memory, one more forward); None decides per update from the free memory
            (`needs_checkpointing`).
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
    poses: bool = False
    turn_views: bool = True
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
        for name in ("action_text", "local", "panorama", "poses", "turn_views"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TempLoRAConfig.{name} must be true or false, got {getattr(self, name)!r}.")
        if self.steps_per_update == 0 and not self.panorama and not self.poses:
            raise ValueError("TempLoRAConfig.steps_per_update is 0 and panorama is off: such a memory learns nothing. "
                             "Train it (steps_per_update 1, the paper's update), keep a panorama (panorama on) or "
                             "views by pose (poses on), or use no memory.")
        if self.panorama and self.poses:
            raise ValueError("TempLoRAConfig.panorama and poses are two ways to bring places back (a panning camera, "
                             "a camera that turns and walks): choose one.")
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


# Settings that no longer exist, each fixed at the one value it now always has (docs/evaluation.md, "Which
# settings matter"), with what to say to whoever still names one. Memory files that recorded them still load
# (`legacy_settings`).
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
    values.setdefault("poses", False)
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
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TempLoRAConfig JSON is not valid JSON: {error}.") from None
    if not isinstance(values, dict):
        raise ValueError(f"TempLoRAConfig JSON must be an object of settings, e.g. {{\"rank\": 32}}, not a "
                         f"{type(values).__name__}.")
    values, scale = legacy_settings(values)
    return TempLoRAConfig.from_fields(values), scale


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Named settings, one table for the CLI (`generate --lora-preset`, `evaluate --settings`, `plan
# --memory-setting`), the Temp-LoRA Preset node and the benchmarks. What each costs and does is measured in
# docs/evaluation.md ("Memory settings") and docs/benchmarks.md.
TEMP_LORA_PRESETS: dict[str, TempLoRAConfig] = {
    # Algorithm 1 (a) as the paper gives it (appendix D.1): rank 32, lr 1e-4, one step, no text. The library's
    # and the nodes' default.
    "paper": TempLoRAConfig(),
    # Table 4's "original Temp-LoRA": input -> output, the previous chunk clean as conditioning.
    "transition": TempLoRAConfig(objective="transition"),
    # Table 4's "wo local learning rule": each step learns a clip drawn from the whole episode so far.
    "global": TempLoRAConfig(local=False),
    # The paper's update, stronger: 2 steps at lr 3e-3.
    "strong": TempLoRAConfig(learning_rate=3e-3, steps_per_update=2),
    # Each chunk also learned as the way back through it, with the reverse action's text: 4 steps of 2
    # examples (8 UNet passes a chunk). Planning's retrace memory; needs the model's reverse actions.
    "way-back": TempLoRAConfig(objective="transition", direction="backward", action_text=True,
                               learning_rate=3e-3, steps_per_update=4),
    # The way back, with 3 earlier clips rehearsed at each of 32 steps: the strongest Temp-LoRA on
    # out-and-back paths, and the costliest.
    "replay": TempLoRAConfig(objective="transition", direction="backward", action_text=True, replay=3,
                             learning_rate=3e-3, steps_per_update=32),
    # A panorama of what the episode showed, read back at revisits from any direction (not in the paper;
    # assumes a panning camera), and no Temp-LoRA training until the panorama is lost: the default of
    # `generate` and `plan`.
    "panorama": TempLoRAConfig(panorama=True, steps_per_update=0),
    # The paper's update and the panorama together.
    "paper+panorama": TempLoRAConfig(panorama=True),
    # Every frame kept at the pose the actions imply and brought back at that pose, from any direction (not
    # in the paper; for a camera that turns and walks, with a world model whose folder records its
    # action_motions), and no Temp-LoRA training.
    "poses": TempLoRAConfig(poses=True, steps_per_update=0),
}


def temp_lora_preset(name: str) -> TempLoRAConfig:
    """The `TEMP_LORA_PRESETS` entry `name`, or a clear error listing the names."""
    if name not in TEMP_LORA_PRESETS:
        raise ValueError(f"Unknown Temp-LoRA preset {name!r}; known presets: {', '.join(TEMP_LORA_PRESETS)}.")
    return TEMP_LORA_PRESETS[name]


def settings_from_json(text: str) -> TempLoRAConfig:
    """`TempLoRAConfig` fields given as a JSON object on a command line (ValueError saying what was wrong)."""
    fields = json.loads(text)  # a JSONDecodeError is a ValueError
    if not isinstance(fields, dict):
        raise ValueError("expected a JSON object")
    return TempLoRAConfig.from_fields(fields)
