"""Episode nodes: load a world model, start an episode, generate it chunk by chunk or all at once, decode
it, and compare two videos."""

from __future__ import annotations

import numpy as np
import torch

from ..data.memory_maze import MAX_SEED as MAX_MAZE_SEED
from ..data.toyworld import ToyWorld
from ..data.worlds import WORLDS, world_kind
from ..pipelines import EpisodicMemory, TempLoRAConfig
from . import comfy_services
from .inputs import (
    CHUNK,
    EPISODE_CATEGORY,
    MEMORY,
    MEMORY_INPUT,
    MODELS_CATEGORY,
    RECALL_INPUT,
    SAMPLER_INPUTS,
    SEED_MAX,
    SETTINGS_INPUT,
    START_INPUTS,
    WORLD_MODEL,
    WORLD_MODEL_INPUT,
)
from .validation import check_start, problem_of, verdict
from .world_model import (
    BUILTIN_MODEL_NAME,
    DEVICES,
    DTYPES,
    EpisodeSoFar,
    WorldModel,
    check_action,
    check_memory_fits,
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
    world_model_folder,
)


class LoadWorldModel:
    """Load a SlowFast-VGen world model (a diffusers folder) once, and reuse it across runs."""

    DESCRIPTION = ("Loads a SlowFast-VGen world model: the built-in ToyWorld model, or a diffusers-format folder "
                   "put in models/world_models. ComfyUI's model manager loads it onto the GPU when a node needs it "
                   "and unloads it when other models need the room, as for its own models.")
    CATEGORY = MODELS_CATEGORY
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

    @classmethod
    def VALIDATE_INPUTS(cls, model_name: str | None = None) -> bool | str:
        # Named here (not left to ComfyUI's list check) to say where world models go.
        return verdict(None if model_name is None else problem_of(world_model_folder, model_name))

    def load(self, model_name: str, dtype: str, device: str) -> tuple[WorldModel]:
        return (load_world_model(model_name, dtype, device),)


class ToyWorldStartFrame:
    """A start frame from a built-in world: ToyWorld (the built-in model's) or Memory Maze (3-D)."""

    DESCRIPTION = ("Renders the start view of a seeded built-in world, ToyWorld (the world the built-in model "
                   "learned) or Memory Maze (a 3-D maze seen in first person, for the memory-maze model), so the "
                   "example workflows need no image of yours. Any IMAGE of the model's size works as a start.")
    CATEGORY = EPISODE_CATEGORY
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
                             "tooltip": "Frame size in pixels; the built-in models were trained at 64."}),
        }, "optional": {
            "world": (list(WORLDS), {"default": "toyworld",
                                     "tooltip": "Which built-in world. Memory Maze takes the seed modulo 2**31 "
                                                "and frames of at least 16 pixels, and needs the memory-maze "
                                                "extra installed."}),
        }}

    def render(self, seed: int, size: int, world: str | None = None) -> tuple[torch.Tensor]:
        if world is not None and world not in WORLDS:
            raise ValueError(f"world: unknown world {world!r}; choose one of {', '.join(WORLDS)}.")
        if world == "memory-maze" and size < 16:
            raise ValueError(f"size: Memory Maze renders frames of at least 16 pixels, got {size}.")
        if world == "memory-maze":
            frame = world_kind(world).build(seed % (MAX_MAZE_SEED + 1), size).start_frame()
        else:
            frame = ToyWorld(seed=seed, view_size=size).start_frame()
        return (torch.from_numpy(np.ascontiguousarray(frame)).float().div(255.0).unsqueeze(0),)


class ActionChunk:
    """Generate the next chunk of an episode from an action."""

    DESCRIPTION = ("Generates the next chunk of frames from the current world state (a start image or the previous "
                   "chunk) and a free-text action, with an optional episodic memory. Chain chunks without decoding; "
                   "decode with Decode Chunk.")
    CATEGORY = EPISODE_CATEGORY
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
    def VALIDATE_INPUTS(cls, action: str | None = None) -> bool | str:
        return verdict(None if action is None else problem_of(check_action, action))

    def generate(self, world_model: WorldModel, action: str, num_frames: int, steps: int, guidance: float,
                 seed: int, conditioning: str, image: torch.Tensor | None = None, chunk: EpisodeSoFar | None = None,
                 memory: EpisodicMemory | None = None, recall: str | None = None) -> tuple[EpisodeSoFar]:
        check_start(image, chunk)
        action = check_action(action)
        check_memory_fits(world_model, memory)
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


class DecodeChunk:
    """Decode a chunk into frames for the image and video nodes."""

    DESCRIPTION = ("Decodes a chunk's latents into an IMAGE batch (frames, height, width, RGB in [0, 1]) for core "
                   "Create Video / Save Video, Video Helper Suite's Video Combine or any image node.")
    CATEGORY = EPISODE_CATEGORY
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

    def decode(self, world_model: WorldModel, chunk: EpisodeSoFar, frames: str) -> tuple[torch.Tensor]:
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
    CATEGORY = EPISODE_CATEGORY
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
    def VALIDATE_INPUTS(cls, actions: str | None = None) -> bool | str:
        return verdict(None if actions is None else problem_of(parse_actions, actions))

    def run(self, world_model: WorldModel, actions: str, num_frames: int, steps: int, guidance: float, seed: int,
            conditioning: str, temp_lora: str, image: torch.Tensor | None = None, chunk: EpisodeSoFar | None = None,
            memory: EpisodicMemory | None = None, settings: TempLoRAConfig | None = None,
            recall: str | None = None) -> tuple[torch.Tensor, EpisodicMemory | None, EpisodeSoFar]:
        check_start(image, chunk)
        script = parse_actions(actions)
        if temp_lora != "off":
            check_memory_fits(world_model, memory, makes_memory=temp_lora == "learn")
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
                script, start_latents=state.last, memory=memory, memory_settings=settings if learning else None,
                update_memory=bool(learning), num_frames=num_frames,
                generator=generator_for(seed), num_inference_steps=steps, guidance_scale=guidance,
                conditioning=conditioning, recall=recall or "action", callback_on_step_end=step_callback(bar),
                callback_on_update_step=update_step_callback(bar),
            )
            for step in episode:
                state, memory = state.extended(step.latents, step.action), step.memory
                videos.append(decode_and_preview(pipe, step.latents, bar))
        return (torch.cat(videos), memory, state)


class SideBySide:
    """Put two videos next to each other, to compare them."""

    DESCRIPTION = ("Places two IMAGE batches side by side (left | right), frame by frame; the shorter one holds its "
                   "last frame. Use it to compare episodes, e.g. with and without memory.")
    CATEGORY = EPISODE_CATEGORY
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
