"""The SlowFast-VGen nodes' registry: node id -> (class, display name).

The nodes are small classes that delegate to the library, declared in ComfyUI's classic form (which runs
without ComfyUI) and offered to a ComfyUI with the V3 schema as V3 nodes (`nodes/v3.py`). They live by
theme:
- `nodes_episode.py`: load a world model, start, generate, decode and compare episodes;
- `nodes_memory.py`: the fast learner's settings and presets, and one Temp-LoRA update;
- `nodes_memory_files.py`: save and load a memory;
- `nodes_retired.py`: retired nodes kept so that old workflows load;
- `inputs.py`: the socket types and the input specs several nodes share.
Every name this module used to define is still importable from it.

ComfyUI caches node outputs and hands the same objects to every node linked to them, so no node
changes an input: episodes are extended into new episodes, memories are updated into new memories (the
pipeline's contract), and the cached world model only ever gains disabled Temp-LoRA layers.
"""

from __future__ import annotations

from .inputs import (  # noqa: F401 (re-exported)
    CATEGORY,
    CHUNK,
    MEMORY,
    MEMORY_INPUT,
    RECALL_INPUT,
    SAMPLER_INPUTS,
    SEED_MAX,
    SETTINGS_INPUT,
    START_INPUTS,
    TEMP_LORA,
    WORLD_MODEL,
    WORLD_MODEL_INPUT,
)
from .nodes_episode import (
    ActionChunk,
    DecodeChunk,
    LoadWorldModel,
    RunEpisode,
    SideBySide,
    ToyWorldStartFrame,
)
from .nodes_memory import TempLoRAPreset, TempLoRASettings, TempLoRAUpdate
from .nodes_memory_files import (  # noqa: F401
    MEMORY_SAVE_FOLDER,
    LoadMemory,
    SaveMemory,
    memory_files,
    memory_path,
)
from .nodes_retired import TempLoRASettingsLegacy

NODE_CLASSES = {
    "LoadWorldModel": (LoadWorldModel, "Load World Model"),
    "ToyWorldStartFrame": (ToyWorldStartFrame, "ToyWorld Start Frame"),
    "ActionChunk": (ActionChunk, "Action Chunk"),
    "TempLoRASettings": (TempLoRASettingsLegacy, "Temp-LoRA Settings (retired widgets)"),
    "TempLoRASettingsV2": (TempLoRASettings, "Temp-LoRA Settings"),
    "TempLoRAPreset": (TempLoRAPreset, "Temp-LoRA Preset"),
    "TempLoRAUpdate": (TempLoRAUpdate, "Temp-LoRA Update"),
    "DecodeChunk": (DecodeChunk, "Decode Chunk"),
    "RunEpisode": (RunEpisode, "Run Episode"),
    "SaveMemory": (SaveMemory, "Save Memory"),
    "LoadMemory": (LoadMemory, "Load Memory"),
    "SideBySide": (SideBySide, "Side by Side"),
}
