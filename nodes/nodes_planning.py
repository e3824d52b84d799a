"""Planning nodes (paper section 3.4): learn a video into memory, read a video plan's actions with the
inverse dynamics model, and walk those actions in the true ToyWorld to see what the plan does.

Small classes over the library (`pipelines.inverse_dynamics`, `planning.planner`); like the other nodes
they never change an input.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import torch

from ..data.toyworld import ToyWorld, parse_action
from ..paths import DEFAULT_IDM_DIR
from ..pipelines import EpisodicMemory, TempLoRAConfig
from ..pipelines.inverse_dynamics import InverseDynamicsModel
from ..planning.planner import execute, learn_trip
from . import comfy_services
from .inputs import (
    CHUNK,
    MEMORY,
    MEMORY_CATEGORY,
    MODELS_CATEGORY,
    PLANNING_CATEGORY,
    SEED_MAX,
    SETTINGS_INPUT,
    WORLD_MODEL_INPUT,
)
from .validation import problem_of, verdict
from .world_model import (
    EpisodeSoFar,
    WorldModel,
    check_memory_fits,
    generator_for,
    image_to_frames,
    memory_with_settings,
    parse_actions,
    update_step_callback,
    update_steps,
)

INVERSE_DYNAMICS = "SFV_INVERSE_DYNAMICS"
BUILTIN_IDM_NAME = "toyworld-idm (built-in)"


def list_inverse_dynamics_models() -> list[str]:
    """The built-in model first, then every folder with a config.json in the inverse_dynamics folders."""
    return [BUILTIN_IDM_NAME] + comfy_services.model_folder_names(comfy_services.INVERSE_DYNAMICS_FOLDER,
                                                                  "config.json")


def inverse_dynamics_folder(name: str) -> str:
    if name == BUILTIN_IDM_NAME:
        return str(DEFAULT_IDM_DIR)
    folders = comfy_services.model_folders(comfy_services.INVERSE_DYNAMICS_FOLDER)
    for base in folders if comfy_services.is_plain_relative(name) else ():
        path = os.path.join(base, name)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    raise FileNotFoundError(f"Inverse dynamics model {name!r} not found in {' or '.join(folders)}. Put a folder "
                            "saved by "
                            "`slowfast-vgen train --stage idm` (inverse_dynamics/) there, then press R to refresh.")


class LoadInverseDynamicsModel:
    """Load an inverse dynamics model: two consecutive frames -> the action taken."""

    DESCRIPTION = ("Loads the inverse dynamics model that reads actions off a video plan: the built-in one of the "
                   "ToyWorld models, or one trained with `slowfast-vgen train --stage idm` and put in "
                   "models/inverse_dynamics.")
    CATEGORY = MODELS_CATEGORY
    RETURN_TYPES = (INVERSE_DYNAMICS,)
    RETURN_NAMES = ("inverse_dynamics",)
    OUTPUT_TOOLTIPS = ("The inverse dynamics model, for Video Plan To Actions.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"idm_name": (list_inverse_dynamics_models(), {
            "default": BUILTIN_IDM_NAME, "tooltip": "Inverse dynamics model folder (models/inverse_dynamics/...)."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, idm_name: str | None = None) -> bool | str:
        # Named here (not left to ComfyUI's list check) to say where inverse dynamics models go.
        return verdict(None if idm_name is None else problem_of(inverse_dynamics_folder, idm_name))

    def load(self, idm_name: str) -> tuple[InverseDynamicsModel]:
        return (InverseDynamicsModel.from_pretrained(inverse_dynamics_folder(idm_name)).eval(),)


class VideoPlanToActions:
    """Turn a video plan into actions with the inverse dynamics model (UniPi / AVDC style)."""

    DESCRIPTION = ("Reads the action between every two consecutive frames of a video plan with the inverse dynamics "
                   "model, from frame 'skip_frames' on (skip frames that were context, not plan). With "
                   "frames_per_action above 1, each group of that many reads becomes one action (the most common).")
    CATEGORY = PLANNING_CATEGORY
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("actions", "plan")
    OUTPUT_TOOLTIPS = ("The actions, one per line.", "The frames that were read (the plan, from skip_frames on).")
    FUNCTION = "read"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "inverse_dynamics": (INVERSE_DYNAMICS, {"tooltip": "From Load Inverse Dynamics Model."}),
            "images": ("IMAGE", {"tooltip": "The video plan (frames of the world model's size)."}),
            "skip_frames": ("INT", {"default": 0, "min": 0, "max": 100000,
                                    "tooltip": "Frames at the start that are not part of the plan; reading starts "
                                               "at this frame (the last one observed)."}),
            "frames_per_action": ("INT", {"default": 1, "min": 1, "max": 64,
                                          "tooltip": "1: one action per frame. 4: one per 4-frame chunk."}),
        }}

    def read(self, inverse_dynamics: InverseDynamicsModel, images: torch.Tensor, skip_frames: int,
             frames_per_action: int) -> tuple[str, torch.Tensor]:
        plan = images[skip_frames:]
        if len(plan) < 2:
            raise ValueError(f"The video plan has {len(images)} frames and skip_frames is {skip_frames}: "
                             f"{len(plan)} frame(s) are left, and actions are read between two consecutive frames. "
                             "Lower skip_frames or give a longer plan.")
        reads = inverse_dynamics.predict_actions(plan[..., :3].float())
        if frames_per_action > 1:
            reads = [Counter(reads[start:start + frames_per_action]).most_common(1)[0][0]
                     for start in range(0, len(reads), frames_per_action)]
        return "\n".join(reads), plan


class ToyWorldWalk:
    """Walk a list of actions in the true ToyWorld: what executing a plan really shows."""

    DESCRIPTION = ("Renders the true views of a ToyWorld walk: first 'way_there' (not shown), then each action for "
                   "frames_per_action frames. The first frame is where the walk starts. The camera stops at the "
                   "world's edge. Connect 'plan_actions' (from Video Plan To Actions) to walk a plan instead of the "
                   "typed actions.")
    CATEGORY = PLANNING_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The start view, then one frame per step walked.",)
    FUNCTION = "walk"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "Which world (as in ToyWorld Start Frame): give it the start frame's "
                                        "seed, to walk the world the episode began in."}),
            "size": ("INT", {"default": 64, "min": 8, "max": 1024, "step": 8, "tooltip": "Frame size in pixels."}),
            "actions": ("STRING", {"multiline": True, "default": "move left",
                                   "tooltip": "One ToyWorld action per line, e.g. from Video Plan To Actions."}),
            "frames_per_action": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Frames each action lasts."}),
            "way_there": ("STRING", {"multiline": True, "default": "",
                                     "tooltip": "Actions walked first, from the world's start view, 4 frames each "
                                                "(one chunk); empty: start at the start view."}),
        }, "optional": {
            "plan_actions": ("STRING", {"forceInput": True,
                                        "tooltip": "Actions to walk instead of the typed ones, one per line."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, way_there: str | None = None) -> bool | str:
        # Only way_there: the typed actions are walked only when plan_actions is not connected, which a
        # check that names one input cannot see (validation.py); they are checked as the node starts.
        return verdict(None if way_there is None else problem_of(toyworld_actions, way_there, "way_there", True))

    def walk(self, seed: int, size: int, actions: str, frames_per_action: int, way_there: str,
             plan_actions: str | None = None) -> tuple[torch.Tensor]:
        source = "plan_actions" if plan_actions is not None else "actions"
        steps = toyworld_actions(plan_actions or actions, source)
        there = toyworld_actions(way_there, "way_there", may_be_empty=True)
        world = ToyWorld(seed=seed, view_size=size)
        start = world.path(there, 4)[-1]
        positions = [start] + execute(world, start, [a for a in steps for _ in range(frames_per_action)])
        frames = np.stack([world.render(*p) for p in positions])
        return (torch.from_numpy(frames).float().div(255.0),)


def toyworld_actions(script: str, where: str, may_be_empty: bool = False) -> list[str]:
    """The ToyWorld actions of a script, one per line (blank lines skipped); an unknown one is an error."""
    lines = [line for line in script.splitlines() if line.strip()] if may_be_empty else parse_actions(script)
    return [check_toyworld_action(line, where) for line in lines]


def check_toyworld_action(action: str, where: str) -> str:
    try:
        parse_action(action)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return action.strip()


class LearnVideo:
    """Fast learning over a whole video: the episodic memory of a recording, chunk by chunk."""

    DESCRIPTION = ("Learns a video into an episodic memory (Temp-LoRA), one update per chunk on the previous chunk "
                   "and this one, as the episode loop does: e.g. a trip the agent really made, before planning the "
                   "way back. The video is its first frame, then num_frames frames per action. Returns the new "
                   "memory and the video as a chunk to continue from.")
    CATEGORY = MEMORY_CATEGORY
    RETURN_TYPES = (MEMORY, CHUNK)
    RETURN_NAMES = ("memory", "chunk")
    OUTPUT_TOOLTIPS = ("The memory after the last chunk (a new one).", "The video as an episode, to continue.")
    FUNCTION = "learn"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "world_model": WORLD_MODEL_INPUT,
                "images": ("IMAGE", {"tooltip": "The video: 1 + actions x num_frames frames of the model's size."}),
                "actions": ("STRING", {"multiline": True, "default": "move right",
                                       "tooltip": "The action of each chunk, one per line."}),
                "num_frames": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Frames per chunk."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                                 "tooltip": "Seed of the training noise; the same seed and inputs give the "
                                            "same memory."}),
            },
            "optional": {"memory": (MEMORY, {"tooltip": "A memory to add to; empty: a new one."}),
                         "settings": SETTINGS_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, actions: str | None = None) -> bool | str:
        return verdict(None if actions is None else problem_of(parse_actions, actions))

    def learn(self, world_model: WorldModel, images: torch.Tensor, actions: str, num_frames: int, seed: int,
              memory: EpisodicMemory | None = None,
              settings: TempLoRAConfig | None = None) -> tuple[EpisodicMemory, EpisodeSoFar]:
        script = parse_actions(actions)
        expected = 1 + len(script) * num_frames
        if len(images) != expected:
            raise ValueError(f"The video has {len(images)} frames but {len(script)} actions of {num_frames} frames "
                             f"need 1 + {len(script)} x {num_frames} = {expected} (its first frame, then the chunks).")
        check_memory_fits(world_model, memory, makes_memory=True)
        memory = memory_with_settings(memory, settings)
        bar = comfy_services.ProgressBar(len(script) * update_steps(memory, settings))
        generator = generator_for(seed)
        with world_model.running() as pipe:
            frames = image_to_frames(images, pipe)
            latents = pipe.encode_frames(frames, argument="images").to("cpu", torch.float32)
            chunks = [latents[:, :, :1]] + list(latents[:, :, 1:].split(num_frames, dim=2))
            comfy_services.throw_if_interrupted()
            for memory in learn_trip(pipe, chunks, script, settings, generator, memory=memory,
                                     callback_on_step_end=update_step_callback(bar)):
                pass
        return memory, EpisodeSoFar(latents, (1,) + (num_frames,) * len(script), tuple(script))


NODE_CLASSES = {
    "LoadInverseDynamicsModel": (LoadInverseDynamicsModel, "Load Inverse Dynamics Model"),
    "VideoPlanToActions": (VideoPlanToActions, "Video Plan To Actions"),
    "ToyWorldWalk": (ToyWorldWalk, "ToyWorld Walk"),
    "LearnVideo": (LearnVideo, "Temp-LoRA Learn Video"),
}
