"""Memory nodes: the fast learner's settings (by hand or by preset) and one Temp-LoRA update."""

from __future__ import annotations

from ..pipelines import (
    TARGET_PRESETS,
    TEMP_LORA_DIRECTIONS,
    TEMP_LORA_OBJECTIVES,
    TEMP_LORA_PRESETS,
    EpisodicMemory,
    TempLoRAConfig,
    temp_lora_preset,
)
from . import comfy_services
from .inputs import (
    CHUNK,
    MEMORY,
    MEMORY_CATEGORY,
    SEED_MAX,
    SETTINGS_INPUT,
    TEMP_LORA,
    WORLD_MODEL_INPUT,
)
from .world_model import (
    EpisodeSoFar,
    WorldModel,
    check_memory_fits,
    generator_for,
    memory_with_settings,
    update_step_callback,
    update_steps,
)


class TempLoRASettings:
    """Fast-learning settings for Temp-LoRA Update and Run Episode."""

    DESCRIPTION = ("Settings of the fast learner (Temp-LoRA). Rank and target fix a memory's layout; the rest may "
                   "change from one update to the next.")
    CATEGORY = MEMORY_CATEGORY
    RETURN_TYPES = (TEMP_LORA,)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("Temp-LoRA settings.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "rank": ("INT", {"default": 32, "min": 1, "max": 256, "tooltip": "LoRA rank (the paper uses 32)."}),
            "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": 1e-7,
                                        "tooltip": "Adam learning rate of each update (the paper uses 1e-4)."}),
            "target": (list(TARGET_PRESETS), {"default": "all-attention",
                                              "tooltip": "Which attention layers learn: all, only temporal (motion) "
                                                         "or only spatial (appearance)."}),
            "steps_per_update": ("INT", {"default": 1, "min": 0, "max": 100,
                                         "tooltip": "Gradient steps per chunk; more remember more firmly, "
                                                    "slower; 0 trains nothing (with panorama on: the panorama "
                                                    "alone)."}),
        }, "optional": {
            "objective": (list(TEMP_LORA_OBJECTIVES), {"default": TempLoRAConfig.objective,
                                             "tooltip": "trajectory: denoise previous + new chunk as one clip (the "
                                                        "paper); transition: learn the new chunk from the clean "
                                                        "previous one, as chunks are generated."}),
            "direction": (list(TEMP_LORA_DIRECTIONS), {"default": TempLoRAConfig.direction,
                                             "tooltip": "Learn the clip as played, the way back through it (what "
                                                        "a return trip sees), or both."}),
            "action_text": ("BOOLEAN", {"default": TempLoRAConfig.action_text,
                                        "tooltip": "Learn each clip with its action's text (the reverse action's "
                                                   "when played backward), so a trip out and the way back are told "
                                                   "apart; off is the paper's text-free update."}),
            "replay": ("INT", {"default": TempLoRAConfig.replay, "min": 0, "max": 64,
                               "tooltip": "Earlier clips of the episode rehearsed at every step, so that later "
                                          "updates do not overwrite them (the memory keeps their latents); 0 is "
                                          "the paper's update."}),
            "panorama": ("BOOLEAN", {"default": TempLoRAConfig.panorama,
                                     "tooltip": "Also keep a panorama of what the episode showed and bring places "
                                                "back from it when the camera returns, from any direction (no "
                                                "training pass; assumes a panning camera; not in the paper)."}),
            "poses": ("BOOLEAN", {"default": TempLoRAConfig.poses,
                                  "tooltip": "Also keep every frame at the camera pose the actions imply and bring "
                                             "it back at that pose (a camera that turns and walks; needs a world "
                                             "model that records its action motions, e.g. memory-maze; not with "
                                             "panorama; not in the paper)."}),
            "turn_views": ("BOOLEAN", {"default": TempLoRAConfig.turn_views,
                                       "tooltip": "With poses: for a heading not seen at a place, bring back the "
                                                  "views of that place turned by the camera's rotation (needs the "
                                                  "model's camera_fovy); off brings back exact poses only."}),
        }}

    def make(self, rank: int, learning_rate: float, target: str, steps_per_update: int,
             objective: str | None = None, direction: str | None = None, action_text: bool | None = None,
             replay: int | None = None, panorama: bool | None = None, poses: bool | None = None,
             turn_views: bool | None = None) -> tuple[TempLoRAConfig]:
        optional = {"objective": objective, "direction": direction, "action_text": action_text, "replay": replay,
                    "panorama": panorama, "poses": poses, "turn_views": turn_views}
        given = {name: value for name, value in optional.items() if value is not None}
        return (TempLoRAConfig(rank=rank, learning_rate=learning_rate, target=target,
                               steps_per_update=steps_per_update, **given),)


class TempLoRAPreset:
    """Named fast-learning settings (`TEMP_LORA_PRESETS`), for Temp-LoRA Update and Run Episode."""

    DESCRIPTION = ("Named Temp-LoRA settings: paper (Algorithm 1 (a), the default), transition and global (the "
                   "paper's Table 4 ablations), strong (lr 3e-3, 2 steps), way-back (learns the way back through each "
                   "chunk; planning's memory), replay (the strongest Temp-LoRA measured on out-and-back paths, "
                   "and by far the slowest), panorama (a panorama of the places seen, brought back from any "
                   "direction, with no Temp-LoRA training unless the camera is no pan), paper+panorama (both) and "
                   "poses (every frame kept at the pose the actions imply and brought back there, and turned to "
                   "nearby headings where the model records its camera's field of view: for a camera that turns "
                   "and walks, with a model that records its action motions, e.g. memory-maze). "
                   "Temp-LoRA Settings sets every field by hand.")
    CATEGORY = MEMORY_CATEGORY
    RETURN_TYPES = (TEMP_LORA,)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("Temp-LoRA settings.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "preset": (list(TEMP_LORA_PRESETS), {"default": "paper", "tooltip": "Which named settings to use."}),
        }}

    def make(self, preset: str) -> tuple[TempLoRAConfig]:
        return (temp_lora_preset(preset),)


class TempLoRAUpdate:
    """Fast learning: train the episodic memory on the previous chunk and the new one."""

    DESCRIPTION = ("Trains Temp-LoRA on the previous chunk followed by the new chunk and returns a NEW memory. The "
                   "memory, chunks and model that come in are never changed, so any earlier memory can be reused "
                   "to branch the episode.")
    CATEGORY = MEMORY_CATEGORY
    RETURN_TYPES = (MEMORY,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The memory after this update (a new one; the input memory is untouched).",)
    FUNCTION = "update"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "world_model": WORLD_MODEL_INPUT,
                "new_chunk": (CHUNK, {"tooltip": "The chunk just generated (its newest segment is learned)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                                 "tooltip": "Seed of the training noise and timesteps."}),
            },
            "optional": {
                "memory": (MEMORY, {"tooltip": "The memory to update. Leave empty to start a new one."}),
                "previous_chunk": (CHUNK, {"tooltip": "The chunk before new_chunk. Leave empty to use the one "
                                                      "new_chunk continued from."}),
                "settings": SETTINGS_INPUT,
            },
        }

    def update(self, world_model: WorldModel, new_chunk: EpisodeSoFar, seed: int,
               memory: EpisodicMemory | None = None, previous_chunk: EpisodeSoFar | None = None,
               settings: TempLoRAConfig | None = None) -> tuple[EpisodicMemory]:
        previous = previous_chunk.last if previous_chunk is not None else new_chunk.previous
        check_memory_fits(world_model, memory, makes_memory=True)
        memory = memory_with_settings(memory, settings)
        bar = comfy_services.ProgressBar(update_steps(memory, settings))
        with world_model.running() as pipe:
            comfy_services.throw_if_interrupted()
            updated = pipe.update_memory(memory, previous, new_chunk.last, action=new_chunk.actions[-1],
                                         config=settings, generator=generator_for(seed),
                                         callback_on_step_end=update_step_callback(bar))
        return (updated,)
