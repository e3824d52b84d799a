"""The socket types of the pack and the input specs that several nodes share.

The type strings are what saved workflows store on every link: they never change, even where a type's
Python name does (SFV_CHUNK carries an `EpisodeSoFar`).
"""

from __future__ import annotations

from ..pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..pipelines.checks import MAX_STEPS
from ..pipelines.pipeline_slowfast_vgen import RECALL_MODES

CATEGORY = "SlowFast-VGen"  # the pack's top category; its nodes are in these subcategories:
MODELS_CATEGORY = f"{CATEGORY}/models"
EPISODE_CATEGORY = f"{CATEGORY}/episode"
MEMORY_CATEGORY = f"{CATEGORY}/memory"
PLANNING_CATEGORY = f"{CATEGORY}/planning"
WORLD_MODEL, CHUNK, MEMORY, TEMP_LORA = "SFV_WORLD_MODEL", "SFV_CHUNK", "SFV_MEMORY", "SFV_TEMP_LORA"
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
    "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": MAX_STEPS, "tooltip": "Denoising steps per chunk."}),
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
