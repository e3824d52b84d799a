"""The memory file: an `EpisodicMemory` as one `.safetensors` adapter, and safetensors reading with errors
that name the broken file.

Layout: the LoRA tensors under peft's key names (`MODULE.lora_A.weight`, `MODULE.lora_B.weight`), Adam's
moments under `optimizer.`, the kept clips' latents under `clip.N`, the panorama under `panorama.`; the
metadata holds `format`, `format_version`, the settings (`config`, JSON) and the provenance.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic_files import as_created, partial_path, remove_stale_partials
from .memory_settings import TempLoRAConfig, recorded_settings
from .panorama import Panorama
from .pose_memory import PoseViews

MEMORY_FORMAT = "slowfast-vgen-memory"
MEMORY_FORMAT_VERSION = "1"
_NOT_LORA = ("optimizer.", "clip.", "panorama.", "poses.")


# ---------------------------------------------------------------------------------------------------
# safetensors files


@contextlib.contextmanager
def _readable(path: str) -> Iterator[None]:
    """Turn what safetensors raises on a truncated or foreign file into a ValueError naming the file."""
    try:
        yield
    except (SafetensorError, OSError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {error}") from None


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file, read from its header alone (no tensor is read)."""
    path = os.fspath(path)
    with _readable(path), safe_open(path, framework="pt") as handle:
        return dict(handle.metadata() or {})


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with errors that say which file is broken."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No memory adapter at {path!r}.")
    metadata = read_safetensors_metadata(path)
    with _readable(path):
        return load_file(path), metadata


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` into a temporary file beside `path`, then an atomic rename."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    remove_stale_partials(path)
    temporary = partial_path(path)
    try:
        save_file(tensors, temporary, metadata=metadata)
        as_created(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, or None."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return key
    return None


# ---------------------------------------------------------------------------------------------------
# A memory in and out of a file


def memory_file_contents(memory) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata a file of `memory` (an `EpisodicMemory`) holds, all on the CPU."""
    tensors = {key: t.detach().contiguous().cpu() for key, t in memory.lora.items()}
    tensors.update({f"optimizer.{k}": t.detach().contiguous().cpu() for k, t in memory.optimizer_state.items()})
    tensors.update({f"clip.{i}": clip.latents.detach().contiguous().cpu() for i, clip in enumerate(memory.clips)})
    if memory.panorama is not None:
        tensors.update(memory.panorama.tensors())
    if memory.poses is not None:
        tensors.update(memory.poses.tensors())
    metadata = {
        "format": MEMORY_FORMAT,
        "format_version": MEMORY_FORMAT_VERSION,
        "config": memory.config.to_json(),
        "base_fingerprint": memory.base_fingerprint,
        "optimizer_steps": str(memory.optimizer_steps),
        "num_updates": str(memory.num_updates),
        "frames_seen": str(memory.frames_seen),
        "actions": json.dumps(list(memory.actions)),
        "clips": json.dumps([[c.new_frames, c.text, c.reverse_text] for c in memory.clips]),
        "created_with": _package_version(),
    }
    if memory.panorama is not None:
        metadata["panorama"] = memory.panorama.metadata()
    if memory.poses is not None:
        metadata["poses"] = memory.poses.metadata()
    return tensors, metadata


def memory_fields(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: Mapping[str, str]) -> dict:
    """The fields of the `EpisodicMemory` a file holds (its clips as (latents, new_frames, text, reverse_text)
    tuples), or a ValueError saying why the file is no memory or a damaged one."""
    damaged = first_non_finite(tensors)
    if damaged is not None:
        raise ValueError(f"{path}: tensor {damaged} holds NaN or infinite values; the memory is damaged and "
                         "cannot be used.")
    config, scale = _settings_from_metadata(path, metadata)
    if scale != 1.0:
        tensors = _rescaled_b(tensors, scale)
    try:
        clip_texts = json.loads(metadata.get("clips", "[]"))  # absent from memories made without replay
        return dict(
            config=config,
            lora={k: t for k, t in tensors.items() if not k.startswith(_NOT_LORA)},
            base_fingerprint=metadata["base_fingerprint"],
            optimizer_state={k[len("optimizer."):]: t for k, t in tensors.items() if k.startswith("optimizer.")},
            optimizer_steps=int(metadata["optimizer_steps"]),
            num_updates=int(metadata["num_updates"]),
            frames_seen=int(metadata["frames_seen"]),
            actions=tuple(json.loads(metadata["actions"])),
            clips=tuple((tensors[f"clip.{i}"], int(new_frames), text, reverse_text)
                        for i, (new_frames, text, reverse_text) in enumerate(clip_texts)),
            panorama=Panorama.from_saved(tensors, metadata["panorama"]) if "panorama" in metadata else None,
            poses=PoseViews.from_saved(tensors, metadata["poses"]) if "poses" in metadata else None,
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} has corrupted memory metadata ({error!r}); it cannot be loaded.") from None


def config_from_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> TempLoRAConfig:
    """The settings recorded in a memory file's metadata, or a ValueError saying why it is no memory."""
    return _settings_from_metadata(path, metadata)[0]


def memory_file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is no loadable memory, judged from its header alone (no tensor is read); None if it looks
    like one. For checks before anything runs (ComfyUI's queue-time validation); `load` checks everything."""
    try:
        config_from_metadata(path, read_safetensors_metadata(path))
    except ValueError as error:
        return str(error)
    return None


def _settings_from_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> tuple[TempLoRAConfig, float]:
    """`config_from_metadata`, and the factor of `legacy_settings` for the file's LoRA B tensors."""
    if metadata.get("format") != MEMORY_FORMAT:
        raise ValueError(
            f"{path} is not a SlowFast-VGen memory adapter (its metadata has no format={MEMORY_FORMAT!r}). "
            "A peft adapter folder can be converted with `slowfast-vgen memory convert`."
        )
    try:
        return recorded_settings(metadata["config"])
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} has corrupted memory metadata ({error!r}); it cannot be loaded.") from None


def _rescaled_b(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A memory saved with LoRA scale `scale` (alpha / rank) as the same memory at scale 1: each B times
    `scale`, and Adam's moments of B as they would be for that parametrisation (gradients divide by it)."""
    powers = {"lora_B.weight": 1, "lora_B.weight.exp_avg": -1, "lora_B.weight.exp_avg_sq": -2}
    rescaled = {}
    for key, tensor in tensors.items():
        power = next((p for suffix, p in powers.items() if key.endswith(suffix)), 0)
        rescaled[key] = tensor * scale ** power if power else tensor
    return rescaled


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return f"slowfast-vgen {version('slowfast-vgen')}"
    except Exception:
        return "slowfast-vgen (not installed)"
