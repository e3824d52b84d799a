"""The ComfyUI node pack: NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS, read by ComfyUI from the root package.

Importing it needs no ComfyUI; inside ComfyUI it registers the `world_models`, `temp_lora_memories` and
`inverse_dynamics` model folders (unless extra_model_paths.yaml already did).
"""

from . import comfy_services, nodes_planning, nodes_slowfast

NODE_CLASSES = {**nodes_slowfast.NODE_CLASSES, **nodes_planning.NODE_CLASSES}
NODE_CLASS_MAPPINGS = {f"SlowFastVGen_{key}": cls for key, (cls, _) in NODE_CLASSES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {f"SlowFastVGen_{key}": f"{name} (SlowFast-VGen)" for key, (cls, name) in NODE_CLASSES.items()}

comfy_services.register_model_folders()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
