"""Temp-LoRA, the fast learner of SlowFast-VGen (paper section 3.2, Algorithm 1 (a)): the names this module
has always offered, from the modules that now hold them.

- `memory_settings`: `TempLoRAConfig`, the presets and the reading of retired settings;
- `episodic_memory`: `EpisodicMemory` and `UpdateClip`, the memory as data;
- `memory_file`: the memory's `.safetensors` file;
- `lora_layers`: the LoRA layers in the UNet (attach, detach, fold);
- `fast_learning`: the update, Algorithm 1 (a) lines 11-14 (`update_memory`).

Import from those modules in new code.
"""

from __future__ import annotations

from ._deprecation import deprecated_aliases
from .episodic_memory import EpisodicMemory, MemoryMismatchError, UpdateClip, lora_layout_problem
from .fast_learning import (
    DenoisingExample,
    denoising_target,
    memory_examples,
    needs_checkpointing,
    temp_lora_loss,
    update_activation_bytes,
    update_memory,
)
from .lora_layers import (
    ADAPTER_NAME,
    check_memory,
    expected_lora_shapes,
    foldable,
    lora_target_modules,
    memory_applied,
    memory_folded,
    memory_for_sampling,
    new_memory,
    temp_lora_detached,
)
from .memory_file import (
    MEMORY_FORMAT,
    MEMORY_FORMAT_VERSION,
    atomic_save_safetensors,
    config_from_metadata,
    first_non_finite,
    memory_file_problem,
    read_safetensors,
)
from .memory_settings import (
    RETIRED_SETTINGS,
    TARGET_PRESETS,
    TEMP_LORA_DIRECTIONS,
    TEMP_LORA_OBJECTIVES,
    TEMP_LORA_PRESETS,
    TempLoRAConfig,
    legacy_settings,
    recorded_settings,
    temp_lora_preset,
)

__getattr__ = deprecated_aliases(__name__, {
    "MemoryClip": (UpdateClip, "slowfast_vgen.pipelines.episodic_memory.UpdateClip"),
    "MemoryExample": (DenoisingExample, "slowfast_vgen.pipelines.fast_learning.DenoisingExample"),
})

__all__ = [
    "ADAPTER_NAME",
    "MEMORY_FORMAT",
    "MEMORY_FORMAT_VERSION",
    "RETIRED_SETTINGS",
    "TARGET_PRESETS",
    "TEMP_LORA_DIRECTIONS",
    "TEMP_LORA_OBJECTIVES",
    "TEMP_LORA_PRESETS",
    "DenoisingExample",
    "EpisodicMemory",
    "MemoryMismatchError",
    "TempLoRAConfig",
    "UpdateClip",
    "atomic_save_safetensors",
    "check_memory",
    "config_from_metadata",
    "denoising_target",
    "expected_lora_shapes",
    "first_non_finite",
    "foldable",
    "legacy_settings",
    "lora_layout_problem",
    "lora_target_modules",
    "memory_applied",
    "memory_examples",
    "memory_file_problem",
    "memory_folded",
    "memory_for_sampling",
    "needs_checkpointing",
    "new_memory",
    "read_safetensors",
    "recorded_settings",
    "temp_lora_detached",
    "temp_lora_loss",
    "temp_lora_preset",
    "update_activation_bytes",
    "update_memory",
]
