"""The SlowFast-VGen nodes: small classes that delegate to the library, declared in ComfyUI's classic
form (which runs without ComfyUI) and offered to a ComfyUI with the V3 schema as V3 nodes (`nodes/v3.py`).

ComfyUI caches node outputs and hands the same objects to every node linked to them, so no node here
changes an input: chunks are extended into new chunks, memories are updated into new memories (the
pipeline's contract), and the cached world model only ever gains disabled Temp-LoRA layers.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..data.toyworld import ToyWorld
from ..pipelines import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    TARGET_PRESETS,
    TEMP_LORA_DIRECTIONS,
    TEMP_LORA_OBJECTIVES,
    TEMP_LORA_PRESETS,
    EpisodicMemory,
    TempLoRAConfig,
    temp_lora_preset,
)
from ..pipelines.pipeline_slowfast_vgen import RECALL_MODES
from ..pipelines.temp_lora import RETIRED_SETTINGS, memory_file_problem
from . import comfy_services
from .validation import linked_type_problem, problem_of, start_problem, verdict
from .world_model import (
    BUILTIN_MODEL_NAME,
    DEVICES,
    DTYPES,
    Chunk,
    WorldModel,
    check_action,
    decode_and_preview,
    generator_for,
    list_world_models,
    load_world_model,
    memory_with_settings,
    parse_actions,
    start_chunk,
    step_callback,
    update_step_callback,
    update_steps,
)

CATEGORY = "SlowFast-VGen"
WORLD_MODEL, CHUNK, MEMORY, TEMP_LORA = "SFV_WORLD_MODEL", "SFV_CHUNK", "SFV_MEMORY", "SFV_TEMP_LORA"
MEMORY_SAVE_FOLDER = "slowfast_vgen"  # in the output folder; Load Memory lists what is saved there
SEED_MAX = 0xFFFFFFFFFFFFFFFF

WORLD_MODEL_INPUT = (WORLD_MODEL, {"tooltip": "The world model, from Load World Model."})
START_INPUTS = {
    "image": ("IMAGE", {"tooltip": "Start frame (or several frames, used as context) to begin an episode. "
                                   "Connect this or 'chunk', not both."}),
    "chunk": (CHUNK, {"tooltip": "The episode so far, to continue it without decoding. Connect this or 'image'."}),
}
SAMPLER_INPUTS = {
    "num_frames": ("INT", {"default": 4, "min": 1, "max": 64,
                           "tooltip": "Frames per chunk. Context frames + new frames must fit the model's context "
                                      "window (8 for the built-in ToyWorld model)."}),
    "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": 1000, "tooltip": "Denoising steps per chunk."}),
    "guidance": ("FLOAT", {"default": DEFAULT_GUIDANCE, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                           "tooltip": "Classifier-free guidance on the action; 1.0 or less turns it off."}),
    "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                     "tooltip": "Seed of the noise; the same seed and inputs give the same frames."}),
    "conditioning": (["mask", "replace"], {"default": "mask",
                                           "tooltip": "mask: context frames stay clean (the paper's, for models "
                                                      "trained with masked conditioning such as ToyWorld). replace: "
                                                      "context is re-noised every step (plain text-to-video models)."}),
}
MEMORY_INPUT = (MEMORY, {"tooltip": "Episodic memory (Temp-LoRA) to generate with. Leave empty for the base model."})
RECALL_INPUT = (list(RECALL_MODES), {"default": "action",
                                     "tooltip": "With a panorama memory: where the camera goes in the places it "
                                                "brings back. action: as the action moved it earlier in the episode. "
                                                "way back: back the way the episode came, to its start (planning "
                                                "a return). Needs a memory made with the panorama on."})
SETTINGS_INPUT = (TEMP_LORA, {"tooltip": "Fast-learning settings, from Temp-LoRA Settings. Leave empty for the "
                                         "memory's own settings (defaults for a new memory)."})


class LoadWorldModel:
    """Load a SlowFast-VGen world model (a diffusers folder) once, and reuse it across runs."""

    DESCRIPTION = ("Loads a SlowFast-VGen world model: the built-in ToyWorld model, or a diffusers-format folder "
                   "put in models/world_models. ComfyUI's model manager loads it onto the GPU when a node needs it "
                   "and unloads it when other models need the room, as for its own models.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (WORLD_MODEL,)
    RETURN_NAMES = ("world_model",)
    OUTPUT_TOOLTIPS = ("The loaded world model, for the other SlowFast-VGen nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model_name": (list_world_models(), {"default": BUILTIN_MODEL_NAME,
                                                 "tooltip": "World model folder (models/world_models/...)."}),
            "dtype": (list(DTYPES), {"default": "float32",
                                     "tooltip": "Weights precision. float32 is safest for Temp-LoRA learning; "
                                                "bfloat16/float16 halve the memory of large models on a GPU."}),
            "device": (list(DEVICES), {"default": "auto",
                                       "tooltip": "auto: ComfyUI's device (the CPU with --cpu). cpu: always the CPU."}),
        }}

    def load(self, model_name: str, dtype: str, device: str) -> tuple[WorldModel]:
        return (load_world_model(model_name, dtype, device),)


class ToyWorldStartFrame:
    """A start frame from the ToyWorld the built-in model was trained on."""

    DESCRIPTION = ("Renders the start view of a seeded ToyWorld (the world the built-in model learned), so the "
                   "example workflows need no image of yours. Any IMAGE of the model's size works as a start.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("One frame, size x size.",)
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "Which world: each seed paints a different map."}),
            "size": ("INT", {"default": 64, "min": 8, "max": 1024, "step": 8,
                             "tooltip": "Frame size in pixels; the built-in model was trained at 64."}),
        }}

    def render(self, seed: int, size: int) -> tuple[torch.Tensor]:
        frame = ToyWorld(seed=seed, view_size=size).start_frame()
        return (torch.from_numpy(np.ascontiguousarray(frame)).float().div(255.0).unsqueeze(0),)


class ActionChunk:
    """Generate the next chunk of an episode from an action."""

    DESCRIPTION = ("Generates the next chunk of frames from the current world state (a start image or the previous "
                   "chunk) and a free-text action, with an optional episodic memory. Chain chunks without decoding; "
                   "decode with Decode Chunk.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (CHUNK,)
    RETURN_NAMES = ("chunk",)
    OUTPUT_TOOLTIPS = ("The episode so far with the new chunk appended (latents).",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "world_model": WORLD_MODEL_INPUT,
                "action": ("STRING", {"default": "move right", "tooltip": "What to do in this chunk, e.g. 'move left'."}),
                **SAMPLER_INPUTS,
            },
            "optional": {**START_INPUTS, "memory": MEMORY_INPUT, "recall": RECALL_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, input_types: dict[str, str], action: str | None = None) -> bool | str:
        return verdict(linked_type_problem(cls, input_types), start_problem(input_types),
                       None if action is None else problem_of(check_action, action))

    def generate(self, world_model: WorldModel, action: str, num_frames: int, steps: int, guidance: float,
                 seed: int, conditioning: str, image: torch.Tensor | None = None, chunk: Chunk | None = None,
                 memory: EpisodicMemory | None = None, recall: str | None = None) -> tuple[Chunk]:
        action = check_action(action)
        bar = comfy_services.ProgressBar(steps + 1)
        with world_model.running() as pipe:
            state = start_chunk(pipe, image, chunk)
            latents = pipe(
                action, context_latents=state.last, num_frames=num_frames, conditioning=conditioning,
                memory=memory, recall=recall or "action", num_inference_steps=steps, guidance_scale=guidance,
                generator=generator_for(seed), output_type="latent", callback_on_step_end=step_callback(bar),
            ).latents
            decode_and_preview(pipe, latents, bar)  # what the chunk shows, on the node
        return (state.extended(latents, action),)


class TempLoRASettings:
    """Fast-learning settings for Temp-LoRA Update and Run Episode."""

    DESCRIPTION = ("Settings of the fast learner (Temp-LoRA). Rank, alpha and target fix a memory's layout; learning "
                   "rate, steps and timesteps may change from one update to the next.")
    CATEGORY = CATEGORY
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
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, steps_per_update: int | None = None, panorama: bool | None = None) -> bool | str:
        if steps_per_update is None:  # linked, known only when it runs
            return True
        return verdict(problem_of(lambda: TempLoRAConfig(steps_per_update=steps_per_update,
                                                         panorama=bool(panorama))))

    def make(self, rank: int, learning_rate: float, target: str, steps_per_update: int,
             objective: str | None = None, direction: str | None = None, action_text: bool | None = None,
             replay: int | None = None, panorama: bool | None = None) -> tuple[TempLoRAConfig]:
        optional = {"objective": objective, "direction": direction, "action_text": action_text, "replay": replay,
                    "panorama": panorama}
        given = {name: value for name, value in optional.items() if value is not None}
        return (TempLoRAConfig(rank=rank, learning_rate=learning_rate, target=target,
                               steps_per_update=steps_per_update, **given),)


class TempLoRASettingsLegacy(TempLoRASettings):
    """Temp-LoRA Settings as saved before alpha, the timestep range and keeping the optimizer state were
    retired: kept, hidden from the node list, so that saved graphs still load with their widget values in
    place (the UI stores widget values by position). It takes the values every measurement used, and
    names the retired setting otherwise."""

    DEPRECATED = True
    DESCRIPTION = ("Temp-LoRA Settings with the retired widgets alpha, timestep_low, timestep_high and "
                   "keep_optimizer_state; replace it with Temp-LoRA Settings.")
    # Retired widget: (its spec, the one value accepted, the retired setting it was). Read by name of this
    # class, not through `cls`: in ComfyUI's V3 schema `VALIDATE_INPUTS` runs on a V3 class made from this one.
    RETIRED_WIDGETS = {
        "alpha": (("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 1.0,
                             "tooltip": "Retired: must be 0 (alpha = rank)."}), 0.0, "alpha"),
        "timestep_low": (("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Retired: must be 0 (all timesteps)."}), 0.0, "timestep_range"),
        "timestep_high": (("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Retired: must be 1 (all timesteps)."}), 1.0, "timestep_range"),
        "keep_optimizer_state": (("BOOLEAN", {"default": True, "tooltip": "Retired: must be on."}), True,
                                 "keep_optimizer_state"),
    }
    WIDGET_ORDER = ("rank", "alpha", "learning_rate", "target", "steps_per_update", "timestep_low", "timestep_high",
                    "keep_optimizer_state")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        spec = super().INPUT_TYPES()
        retired = TempLoRASettingsLegacy.RETIRED_WIDGETS
        widgets = {**spec["required"], **{name: widget[0] for name, widget in retired.items()}}
        return {**spec, "required": {name: widgets[name] for name in TempLoRASettingsLegacy.WIDGET_ORDER}}

    @classmethod
    def VALIDATE_INPUTS(cls, alpha: float | None = None, timestep_low: float | None = None,
                        timestep_high: float | None = None, keep_optimizer_state: bool | None = None,
                        steps_per_update: int | None = None, panorama: bool | None = None) -> bool | str:
        given = {"alpha": alpha, "timestep_low": timestep_low, "timestep_high": timestep_high,
                 "keep_optimizer_state": keep_optimizer_state}
        for name, value in given.items():
            _, accepted, setting = TempLoRASettingsLegacy.RETIRED_WIDGETS[name]
            if value is not None and value != accepted:
                return (f"{name}={value!r} is no longer supported: {RETIRED_SETTINGS[setting]} Set it to "
                        f"{accepted!r}, or replace this node with Temp-LoRA Settings.")
        return TempLoRASettings.VALIDATE_INPUTS(steps_per_update, panorama)

    def make(self, rank: int, alpha: float, learning_rate: float, target: str, steps_per_update: int,
             timestep_low: float, timestep_high: float, keep_optimizer_state: bool, objective: str | None = None,
             direction: str | None = None, action_text: bool | None = None, replay: int | None = None,
             panorama: bool | None = None) -> tuple[TempLoRAConfig]:
        problem = self.VALIDATE_INPUTS(alpha, timestep_low, timestep_high, keep_optimizer_state)
        if problem is not True:
            raise ValueError(problem)
        return super().make(rank, learning_rate, target, steps_per_update, objective, direction, action_text,
                            replay, panorama)


class TempLoRAPreset:
    """Named fast-learning settings (`TEMP_LORA_PRESETS`), for Temp-LoRA Update and Run Episode."""

    DESCRIPTION = ("Named Temp-LoRA settings: paper (Algorithm 1 (a), the default), transition and global (the "
                   "paper's Table 4 ablations), strong (lr 3e-3, 2 steps), way-back (learns the way back through each "
                   "chunk; planning's memory), replay (the strongest Temp-LoRA measured on out-and-back paths, "
                   "about 30 times the paper's cost), panorama (a panorama of the places seen, brought back from any "
                   "direction, with no Temp-LoRA training unless the camera is no pan) and paper+panorama (both). "
                   "Temp-LoRA Settings sets every field by hand.")
    CATEGORY = CATEGORY
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
    CATEGORY = CATEGORY
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

    @classmethod
    def VALIDATE_INPUTS(cls, input_types: dict[str, str]) -> bool | str:
        return verdict(linked_type_problem(cls, input_types))

    def update(self, world_model: WorldModel, new_chunk: Chunk, seed: int, memory: EpisodicMemory | None = None,
               previous_chunk: Chunk | None = None, settings: TempLoRAConfig | None = None) -> tuple[EpisodicMemory]:
        previous = previous_chunk.last if previous_chunk is not None else new_chunk.previous
        memory = memory_with_settings(memory, settings)
        bar = comfy_services.ProgressBar(update_steps(memory, settings))
        with world_model.running() as pipe:
            updated = pipe.update_memory(memory, previous, new_chunk.last, action=new_chunk.actions[-1],
                                         config=settings, generator=generator_for(seed),
                                         callback_on_step_end=update_step_callback(bar))
        return (updated,)


class DecodeChunk:
    """Decode a chunk into frames for the image and video nodes."""

    DESCRIPTION = ("Decodes a chunk's latents into an IMAGE batch (frames, height, width, RGB in [0, 1]) for core "
                   "Create Video / Save Video, Video Helper Suite's Video Combine or any image node.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The decoded frames, in order.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "world_model": WORLD_MODEL_INPUT,
            "chunk": (CHUNK, {"tooltip": "A chunk from Action Chunk or Run Episode."}),
            "frames": (["episode", "last chunk"], {"default": "episode",
                                                   "tooltip": "episode: every frame so far, start frame included. "
                                                              "last chunk: only the newest chunk's frames."}),
        }}

    def decode(self, world_model: WorldModel, chunk: Chunk, frames: str) -> tuple[torch.Tensor]:
        latents = chunk.latents if frames == "episode" else chunk.last
        segments = chunk.segments if frames == "episode" else chunk.segments[-1:]
        bar = comfy_services.ProgressBar(len(segments))
        with world_model.running() as pipe:  # segment by segment: progress, and cancel between them
            return (torch.cat([decode_and_preview(pipe, part, bar) for part in latents.split(segments, dim=2)]),)


class RunEpisode:
    """A whole action-driven episode in one node (a ComfyUI graph cannot loop)."""

    DESCRIPTION = ("Runs one chunk per line of the action script, learning the episodic memory (Temp-LoRA) after "
                   "every chunk, and returns every frame, the final memory and the final chunk (to continue in "
                   "another node). Cancel stops at the next denoising step and changes no memory.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", MEMORY, CHUNK)
    RETURN_NAMES = ("images", "memory", "chunk")
    OUTPUT_TOOLTIPS = (
        "Every frame of the episode so far, start frame included.",
        "The memory after the last chunk (empty when temp_lora is off).",
        "The episode so far, to continue with Action Chunk or another Run Episode.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "world_model": WORLD_MODEL_INPUT,
                "actions": ("STRING", {"multiline": True, "default": "move right\nmove right\nmove left\nmove left",
                                       "tooltip": "One action per line, one chunk per action; blank lines are skipped."}),
                **SAMPLER_INPUTS,
                "temp_lora": (["learn", "frozen", "off"], {"default": "learn",
                                                           "tooltip": "learn: update the memory after every chunk. "
                                                                      "frozen: use the connected memory as it is. "
                                                                      "off: the base model only, no memory."}),
            },
            "optional": {**START_INPUTS, "memory": MEMORY_INPUT, "settings": SETTINGS_INPUT, "recall": RECALL_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, input_types: dict[str, str], actions: str | None = None) -> bool | str:
        return verdict(linked_type_problem(cls, input_types), start_problem(input_types),
                       None if actions is None else problem_of(parse_actions, actions))

    def run(self, world_model: WorldModel, actions: str, num_frames: int, steps: int, guidance: float, seed: int,
            conditioning: str, temp_lora: str, image: torch.Tensor | None = None, chunk: Chunk | None = None,
            memory: EpisodicMemory | None = None, settings: TempLoRAConfig | None = None,
            recall: str | None = None) -> tuple[torch.Tensor, EpisodicMemory | None, Chunk]:
        script = parse_actions(actions)
        memory = None if temp_lora == "off" else memory_with_settings(memory, settings)
        learning = (settings or True) if temp_lora == "learn" else False
        # One unit per denoising step, per Temp-LoRA step and per decoded chunk (the start's included), so
        # the bar never waits longer than one UNet call and every chunk is previewed as soon as it is made.
        per_chunk = steps + (update_steps(memory, settings) if learning else 0) + 1
        bar = comfy_services.ProgressBar(len(script) * per_chunk + 1)
        with world_model.running() as pipe:
            state = start_chunk(pipe, image, chunk)
            videos = [decode_and_preview(pipe, state.latents, bar)]
            episode = pipe.stream_episode(
                script, start_latents=state.last, memory=memory, temp_lora=learning, num_frames=num_frames,
                generator=generator_for(seed), num_inference_steps=steps, guidance_scale=guidance,
                conditioning=conditioning, recall=recall or "action", callback_on_step_end=step_callback(bar),
                callback_on_update_step=update_step_callback(bar),
            )
            for step in episode:
                state, memory = state.extended(step.latents, step.action), step.memory
                videos.append(decode_and_preview(pipe, step.latents, bar))
        return (torch.cat(videos), memory, state)


class SaveMemory:
    """Save an episodic memory as a .safetensors adapter in the output folder."""

    DESCRIPTION = (f"Saves the memory (Temp-LoRA weights, optimizer state and provenance) as a .safetensors adapter "
                   f"in ComfyUI's output folder. Memories saved under {MEMORY_SAVE_FOLDER}/ appear in Load Memory.")
    CATEGORY = CATEGORY
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
        return {"ui": {"memories": [{"filename": file, "subfolder": subfolder, "type": "output"}]}}


def memory_files() -> list[str]:
    """Memories in models/temp_lora_memories, then those saved in the output folder (as 'name [output]')."""
    saved = comfy_services.files_under(os.path.join(comfy_services.output_directory(), MEMORY_SAVE_FOLDER),
                                       comfy_services.MEMORY_EXTENSIONS)
    return (comfy_services.model_files(comfy_services.MEMORIES_FOLDER, comfy_services.MEMORY_EXTENSIONS)
            + [f"{MEMORY_SAVE_FOLDER}/{name}{comfy_services.OUTPUT_ANNOTATION}" for name in saved])


def memory_path(memory_name: str) -> str | None:
    if memory_name.endswith(comfy_services.OUTPUT_ANNOTATION):
        return comfy_services.output_file_path(memory_name)
    return comfy_services.model_file_path(comfy_services.MEMORIES_FOLDER, memory_name)


class LoadMemory:
    """Load an episodic memory adapter saved by Save Memory."""

    DESCRIPTION = ("Loads an episodic memory (.safetensors adapter) from models/temp_lora_memories, or one saved by "
                   f"Save Memory under output/{MEMORY_SAVE_FOLDER}/, to continue or branch an episode. It must have "
                   "been made with the same world model.")
    CATEGORY = CATEGORY
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
            return (f"Memory adapter {memory_name!r} not found. Save one with Save Memory (the long-episode example "
                    f"workflow saves {MEMORY_SAVE_FOLDER}/toyworld_memory_00001_.safetensors), or put a .safetensors "
                    "adapter in models/temp_lora_memories, then press R to refresh.")
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


class SideBySide:
    """Put two videos next to each other, to compare them."""

    DESCRIPTION = ("Places two IMAGE batches side by side (left | right), frame by frame; the shorter one holds its "
                   "last frame. Use it to compare episodes, e.g. with and without memory.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The combined frames.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "left": ("IMAGE", {"tooltip": "Frames shown on the left."}),
            "right": ("IMAGE", {"tooltip": "Frames shown on the right."}),
            "gap": ("INT", {"default": 4, "min": 0, "max": 256, "tooltip": "Black pixels between the two."}),
        }}

    def combine(self, left: torch.Tensor, right: torch.Tensor, gap: int) -> tuple[torch.Tensor]:
        if left.shape[1] != right.shape[1] or left.shape[3] != right.shape[3]:
            raise ValueError(f"left is {tuple(left.shape[1:])} and right is {tuple(right.shape[1:])} (height, width, "
                             "channels): the heights and channels must match. Resize one with 'Upscale Image'.")
        length = max(len(left), len(right))
        left, right = (torch.cat([x, x[-1:].expand(length - len(x), -1, -1, -1)]) for x in (left, right))
        spacer = left.new_zeros(length, left.shape[1], gap, left.shape[3])
        return (torch.cat([left, spacer, right], dim=2),)


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
