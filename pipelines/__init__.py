"""The diffusers side of SlowFast-VGen: the chunk pipeline, Temp-LoRA episodic memory and the model factory.

Where things live:
- `pipeline_slowfast_vgen`: `SlowFastVGenPipeline`, one chunk per call (diffusers' custom-pipeline file);
- `episode`: the episode loop of Algorithm 1 (a) (`stream_episode`, `generate_episode`);
- `fast_learning`: the memory update, Algorithm 1 (a) lines 11-14;
- `memory_settings`, `episodic_memory`, `memory_file`, `lora_layers`: the memory's settings, data, file and
  LoRA layers in the UNet (`temp_lora` re-exports them all, as before);
- `panorama`, `panorama_recall`: the panorama memory and its steps in the pipeline;
- `schedulers`, `model_folder`, `environment`, `checks`: samplers by name, model folders, what the host
  allows, and argument checks shared with the CLI and the nodes.
"""

from ._deprecation import deprecated_aliases
from .episode import EpisodeOutput, EpisodeStep, memory_generator_for
from .episodic_memory import EpisodicMemory, MemoryMismatchError
from .environment import dtype_argument
from .factory import WorldModelSpec, build_pipeline, build_tokenizer
from .fingerprint import model_fingerprint
from .inverse_dynamics import InverseDynamicsModel
from .memory_settings import (
    TARGET_PRESETS,
    TEMP_LORA_DIRECTIONS,
    TEMP_LORA_OBJECTIVES,
    TEMP_LORA_PRESETS,
    TempLoRAConfig,
    temp_lora_preset,
)
from .pipeline_slowfast_vgen import DEFAULT_GUIDANCE, DEFAULT_STEPS, SlowFastVGenPipeline, SlowFastVGenPipelineOutput
from .schedulers import SCHEDULERS, scheduler_from_name, scheduler_name

__getattr__ = deprecated_aliases(__name__, {
    "EpisodeChunk": (EpisodeStep, "slowfast_vgen.pipelines.EpisodeStep"),
})

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "SCHEDULERS",
    "EpisodeOutput",
    "EpisodeStep",
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
    "scheduler_name",
    "temp_lora_preset",
]
