"""The ComfyUI node pack, read by ComfyUI from the root package.

Importing it needs no ComfyUI: outside ComfyUI (and in a ComfyUI without the V3 schema) the nodes are
offered as NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS; in a ComfyUI with the V3 schema
(`comfy_api.latest`), as V3 nodes through `comfy_entrypoint` (see `nodes/v3.py`), with the same ids.
Inside ComfyUI it also registers the `world_models`, `temp_lora_memories` and `inverse_dynamics` model
folders (unless extra_model_paths.yaml already did).
"""

from . import comfy_services, nodes_planning, nodes_slowfast
from .errors import public_errors

NODE_ID_PREFIX = "SlowFastVGen_"
NODE_CLASSES = {f"{NODE_ID_PREFIX}{key}": (public_errors(cls), name)
                for key, (cls, name) in {**nodes_slowfast.NODE_CLASSES, **nodes_planning.NODE_CLASSES}.items()}

comfy_services.register_model_folders()

if comfy_services.V3_SCHEMA:
    from .v3 import SlowFastVGenExtension

    async def comfy_entrypoint() -> SlowFastVGenExtension:
        return SlowFastVGenExtension(NODE_CLASSES)

    # ComfyUI reads NODE_CLASS_MAPPINGS in preference to comfy_entrypoint when it is set.
    NODE_CLASS_MAPPINGS = NODE_DISPLAY_NAME_MAPPINGS = None
    __all__ = ["comfy_entrypoint"]
else:
    NODE_CLASS_MAPPINGS = {node_id: cls for node_id, (cls, _) in NODE_CLASSES.items()}
    NODE_DISPLAY_NAME_MAPPINGS = {node_id: name for node_id, (_, name) in NODE_CLASSES.items()}
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
