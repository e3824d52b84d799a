"""Memory file nodes: save an episodic memory in the output folder, and load one back."""

from __future__ import annotations

import os

from ..pipelines import EpisodicMemory
from ..pipelines.temp_lora import memory_file_problem
from . import comfy_services
from .inputs import MEMORY, MEMORY_CATEGORY
from .validation import problem_of, verdict

MEMORY_SAVE_FOLDER = "slowfast_vgen"  # in the output folder; Load Memory lists what is saved there


class SaveMemory:
    """Save an episodic memory as a .safetensors adapter in the output folder."""

    DESCRIPTION = (f"Saves the memory (Temp-LoRA weights, optimizer state and provenance) as a .safetensors adapter "
                   f"in ComfyUI's output folder. Memories saved under {MEMORY_SAVE_FOLDER}/ appear in Load Memory.")
    CATEGORY = MEMORY_CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "memory": (MEMORY, {"tooltip": "The memory to save."}),
            "filename_prefix": ("STRING", {"default": f"{MEMORY_SAVE_FOLDER}/memory",
                                           "tooltip": "Name inside the output folder; a counter is appended. "
                                                      "Absolute paths and '..' are refused."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str | None = None) -> bool | str:
        return verdict(None if filename_prefix is None else
                       problem_of(comfy_services.check_relative_name, filename_prefix))

    def save(self, memory: EpisodicMemory | None, filename_prefix: str) -> dict:
        if memory is None:
            raise ValueError("There is no memory to save: the connected memory is empty (Run Episode with temp_lora "
                             "'off' outputs none). Connect a memory from Temp-LoRA Update or a learning episode.")
        path, file, subfolder = comfy_services.save_path(filename_prefix, ".safetensors")
        memory.save(path)
        name = f"{subfolder}/{file}" if subfolder else file
        lines = [f"Saved output/{name}",
                 f"{memory.num_updates} updates, {memory.frames_seen} frames learned, rank {memory.config.rank}"]
        if subfolder.replace("\\", "/").split("/")[0] == MEMORY_SAVE_FOLDER:
            lines.append(f"Load Memory lists it as {name}{comfy_services.OUTPUT_ANNOTATION} (press R)")
        return {"ui": {"memories": [{"filename": file, "subfolder": subfolder, "type": "output"}],
                       "text": ["\n".join(lines)],
                       # What the node shows: ComfyUI shows an output node's "images" on it, and no text.
                       "images": [comfy_services.text_card(lines, f"{MEMORY_SAVE_FOLDER}_saved")]}}


def memory_files() -> list[str]:
    """Memories in models/temp_lora_memories, then those saved in the output folder (as 'name [output]')."""
    saved = comfy_services.files_under(os.path.join(comfy_services.output_directory(), MEMORY_SAVE_FOLDER),
                                       comfy_services.MEMORY_EXTENSIONS)
    return (comfy_services.model_files(comfy_services.MEMORIES_FOLDER, comfy_services.MEMORY_EXTENSIONS)
            + [f"{MEMORY_SAVE_FOLDER}/{name}{comfy_services.OUTPUT_ANNOTATION}" for name in saved])


def memory_path(memory_name: str) -> str | None:
    """The file of a memory listed by `memory_files`, or None if there is none by that name."""
    if memory_name.endswith(comfy_services.OUTPUT_ANNOTATION):
        return comfy_services.output_file_path(memory_name)
    return comfy_services.model_file_path(comfy_services.MEMORIES_FOLDER, memory_name)


class LoadMemory:
    """Load an episodic memory adapter saved by Save Memory."""

    DESCRIPTION = ("Loads an episodic memory (.safetensors adapter) from models/temp_lora_memories, or one saved by "
                   f"Save Memory under output/{MEMORY_SAVE_FOLDER}/, to continue or branch an episode. It must have "
                   "been made with the same world model.")
    CATEGORY = MEMORY_CATEGORY
    RETURN_TYPES = (MEMORY,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The loaded memory.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"memory_name": (memory_files(), {"tooltip": "The memory adapter file."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, memory_name: str) -> bool | str:
        # Validated here rather than against the list, to say where memories come from when one is missing.
        path = memory_path(memory_name)
        if path is None:
            return verdict(f"Memory adapter {memory_name!r} not found. Save one with Save Memory (the long-episode "
                           f"example workflow saves {MEMORY_SAVE_FOLDER}/toyworld_memory_00001_.safetensors), or put "
                           "a .safetensors adapter in models/temp_lora_memories, then press R to refresh.")
        return verdict(memory_file_problem(path))

    @classmethod
    def IS_CHANGED(cls, memory_name: str) -> float:
        # A file saved again under the same name must be read again.
        path = memory_path(memory_name)
        return os.path.getmtime(path) if path else float("nan")

    def load(self, memory_name: str) -> tuple[EpisodicMemory]:
        path = memory_path(memory_name)
        if path is None:
            raise FileNotFoundError(self.VALIDATE_INPUTS(memory_name))
        return (EpisodicMemory.load(path),)
