"""The ComfyUI node pack: NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS, read by ComfyUI from the root package.

Importing it needs no ComfyUI; inside ComfyUI it registers the `world_models` and `temp_lora_memories`
model folders (unless extra_model_paths.yaml already did).
"""

from . import comfy_services
from .nodes_slowfast import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

comfy_services.register_model_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
