"""Episodic memories and world models as files: inspect, check, merge, fuse, convert, import, export, cast.

Library API below; the same tools on the command line as `slowfast-vgen memory ...` and
`slowfast-vgen model ...` (see `weights_tools.cli`). Only safetensors are read; writes are atomic.
"""

from .files import WeightsFileError, atomic_folder, load_weights, read_header
from .fingerprint import FileFingerprint, file_fingerprint
from .memory_tools import (
    FuseResult,
    MergeResult,
    cast_memory,
    check_memory_file,
    fuse_memory,
    inspect_memory,
    load_memory,
    memory_from_peft,
    memory_to_peft,
    merge_memories,
    save_memory,
)
from .model_tools import (
    CastResult,
    ExportResult,
    cast_quality,
    cast_world_model,
    export_checkpoint,
    import_modelscope,
)

__all__ = [
    "CastResult",
    "ExportResult",
    "FileFingerprint",
    "FuseResult",
    "MergeResult",
    "WeightsFileError",
    "atomic_folder",
    "cast_memory",
    "cast_quality",
    "cast_world_model",
    "check_memory_file",
    "export_checkpoint",
    "file_fingerprint",
    "fuse_memory",
    "import_modelscope",
    "inspect_memory",
    "load_memory",
    "load_weights",
    "memory_from_peft",
    "memory_to_peft",
    "merge_memories",
    "read_header",
    "save_memory",
]
