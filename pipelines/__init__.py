"""The diffusers side of SlowFast-VGen: the chunk pipeline, Temp-LoRA memory and model factory."""

from .factory import WorldModelSpec, build_pipeline, build_tokenizer
from .fingerprint import model_fingerprint
from .inverse_dynamics import InverseDynamicsModel
from .pipeline_slowfast_vgen import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    SCHEDULERS,
    EpisodeChunk,
    EpisodeOutput,
    SlowFastVGenPipeline,
    SlowFastVGenPipelineOutput,
    dtype_argument,
    memory_generator_for,
    scheduler_from_name,
    scheduler_name,
)
from .temp_lora import (
    TARGET_PRESETS,
    TEMP_LORA_DIRECTIONS,
    TEMP_LORA_OBJECTIVES,
    TEMP_LORA_PRESETS,
    EpisodicMemory,
    MemoryMismatchError,
    TempLoRAConfig,
    temp_lora_preset,
)

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "SCHEDULERS",
    "EpisodeChunk",
    "EpisodeOutput",
    "EpisodicMemory",
    "InverseDynamicsModel",
    "MemoryMismatchError",
    "SlowFastVGenPipeline",
    "SlowFastVGenPipelineOutput",
    "TARGET_PRESETS",
    "TEMP_LORA_DIRECTIONS",
    "TEMP_LORA_OBJECTIVES",
    "TEMP_LORA_PRESETS",
    "TempLoRAConfig",
    "WorldModelSpec",
    "build_pipeline",
    "build_tokenizer",
    "dtype_argument",
    "memory_generator_for",
    "model_fingerprint",
    "scheduler_from_name",
    "temp_lora_preset",
    "scheduler_name",
]
