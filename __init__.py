"""SlowFast-VGen for ComfyUI and diffusers.

Imported by ComfyUI as a custom-node package (it reads `comfy_entrypoint` where ComfyUI has the V3 node
schema, NODE_CLASS_MAPPINGS elsewhere; see nodes/__init__.py), and by Python as `slowfast_vgen` once
installed with `pip install -e .`. Nothing here needs ComfyUI.
"""

from .openmp import spin_briefly

spin_briefly()  # before anything imports torch (see openmp)

from .host_compat import hide_broken_optional_packages

hide_broken_optional_packages()  # before transformers' models are imported (see host_compat)

from .pipelines import (
    EpisodicMemory,
    SlowFastVGenPipeline,
    TempLoRAConfig,
    WorldModelSpec,
    build_pipeline,
)
from .paths import DEFAULT_MODEL_DIR

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.comfy_services import V3_SCHEMA

WEB_DIRECTORY = None

__all__ = [
    "DEFAULT_MODEL_DIR",
    "EpisodicMemory",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "SlowFastVGenPipeline",
    "TempLoRAConfig",
    "WorldModelSpec",
    "build_pipeline",
]

if V3_SCHEMA:  # read by ComfyUI (see nodes/__init__.py)
    from .nodes import comfy_entrypoint

    __all__ += ["comfy_entrypoint"]
