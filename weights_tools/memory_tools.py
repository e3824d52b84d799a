"""Episodic memories (Temp-LoRA adapters) as files: inspect, check, merge, fuse, convert and cast.

A memory's update to a target module is the low-rank delta B @ A added to its weight.
Merging sums those deltas and refactorises the sum; fusing adds them to the base weights for good (the
paper's slow-fast consolidation, section 3.5).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from diffusers import UNet3DConditionModel
from peft import LoraConfig

from ..pipelines.fingerprint import model_fingerprint
from ..pipelines.temp_lora import (
    MEMORY_FORMAT,
    EpisodicMemory,
    MemoryMismatchError,
    TempLoRAConfig,
    check_memory,
    first_non_finite,
    lora_layout_problem,
    recorded_settings,
)
from .files import (
    WeightsFileError,
    atomic_folder,
    check_apart,
    check_destination,
    copy_component,
    is_pickle_file,
    open_safetensors,
    read_header,
    read_json_object,
    refuse_pickle,
)
from .fingerprint import empty_unet, file_fingerprint, unet_folder

OPTIMIZER_PREFIX = "optimizer."
PEFT_PREFIX = "base_model.model."
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
# Beside the peft files: what peft has no place for (optimizer moments, provenance), as a memory file.
PEFT_SIDECAR_NAME = "slowfast_vgen_memory.safetensors"
FUSED_RECORD_NAME = "slowfast_vgen_fused.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------- reading


def load_memory(path: str | os.PathLike) -> EpisodicMemory:
    """`EpisodicMemory.load`, refusing pickle files first."""
    if is_pickle_file(path):
        refuse_pickle(path)
    return EpisodicMemory.load(path)


def save_memory(memory: EpisodicMemory, path: str | os.PathLike, force: bool = False) -> None:
    """`EpisodicMemory.save` (atomic), refusing to replace an existing file unless `force`."""
    check_destination(path, force)
    memory.save(path)


def _header_metadata(path: str | os.PathLike) -> tuple:
    """The header of a memory file, its parsed config and the factor of its B tensors (`recorded_settings`),
    checking it is a memory at all."""
    header = read_header(path)
    if header.metadata.get("format") != MEMORY_FORMAT:
        raise WeightsFileError(f"{path} is not a SlowFast-VGen memory (no format={MEMORY_FORMAT!r} in its metadata); "
                               "a peft adapter folder can be converted with `slowfast-vgen memory convert`.")
    try:
        config, scale = recorded_settings(header.metadata["config"])
    except (KeyError, ValueError, TypeError) as error:
        raise WeightsFileError(f"{path} has a corrupted memory config ({error!r}).") from None
    problem = lora_layout_problem({k: tuple(s) for k, s in header.shapes.items() if is_lora_key(k)}, config.rank)
    if problem is not None:
        raise WeightsFileError(f"{path}: its tensors do not agree with its own settings: {problem}.")
    return header, config, scale


def is_lora_key(key: str) -> bool:
    """A memory file's LoRA tensors, as opposed to its optimizer moments, replay clips and panorama."""
    return not key.startswith((OPTIMIZER_PREFIX, "clip.", "panorama."))


def check_finite(path: str | os.PathLike, keys) -> None:
    """Read `keys` of a safetensors file one by one; refuse the first holding NaN or infinity, by name."""
    with open_safetensors(path) as handle:
        for key in keys:
            if first_non_finite({key: handle.get_tensor(key)}) is not None:
                raise WeightsFileError(f"{path}: tensor {key} holds NaN or infinite values; the memory is damaged.")


def module_names(lora_keys) -> list[str]:
    """Target module names of a memory's LoRA tensor keys."""
    return sorted({key.rsplit(".lora_", 1)[0] for key in lora_keys})


def delta_norm(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """||scale * B @ A||_F through the rank x rank Gram matrices, without forming the full delta."""
    a, b = a.double(), b.double()
    return scale * float(torch.trace((a @ a.T) @ (b.T @ b)).clamp(min=0).sqrt())


def inspect_memory(path: str | os.PathLike, norms: bool = True) -> dict:
    """A summary of a memory file; with `norms`, the Frobenius norm of each target module's update.

    Only the header is read, plus the LoRA tensors (never the optimizer state) when `norms` is true.
    """
    header, config, scale = _header_metadata(path)
    metadata = header.metadata
    lora_keys = [k for k in header.shapes if is_lora_key(k)]
    optimizer_keys = [k for k in header.shapes if k.startswith(OPTIMIZER_PREFIX)]
    count = lambda keys: sum(int(torch.Size(header.shapes[k]).numel()) for k in keys)  # noqa: E731
    summary = {
        "path": str(path),
        "file_bytes": header.file_bytes,
        "rank": config.rank,
        "scale": scale,  # of the file's B tensors: 1, or alpha / rank for a memory saved with a retired alpha
        "target": config.target,
        "target_pattern": config.target_pattern,
        "target_modules": module_names(lora_keys),
        "num_tensors": len(lora_keys),
        "num_parameters": count(lora_keys),
        "optimizer_tensors": len(optimizer_keys),
        "optimizer_parameters": count(optimizer_keys),
        "dtypes": sorted({header.dtypes[k] for k in lora_keys}),
        "base_fingerprint": metadata.get("base_fingerprint"),
        "num_updates": int(metadata.get("num_updates", 0)),
        "frames_seen": int(metadata.get("frames_seen", 0)),
        "optimizer_steps": int(metadata.get("optimizer_steps", 0)),
        "actions": json.loads(metadata.get("actions", "[]")),
        "created_with": metadata.get("created_with"),
        "config": asdict(config),
        "panorama": _panorama_summary(header),
        "bytes_read": header.header_bytes,
    }
    if norms:
        layer_norms = {}
        with open_safetensors(path) as handle:
            for name in summary["target_modules"]:
                a, b = handle.get_tensor(f"{name}.lora_A.weight"), handle.get_tensor(f"{name}.lora_B.weight")
                damaged = first_non_finite({f"{name}.lora_A.weight": a, f"{name}.lora_B.weight": b})
                if damaged is not None:
                    raise WeightsFileError(f"{path}: tensor {damaged} holds NaN or infinite values; the memory is "
                                           "damaged.")
                summary["bytes_read"] += a.numel() * a.element_size() + b.numel() * b.element_size()
                layer_norms[name] = delta_norm(a, b, scale)
        summary["layer_norms"] = dict(sorted(layer_norms.items(), key=lambda item: -item[1]))
    return summary


def check_memory_file(memory_path: str | os.PathLike, model_path: str | os.PathLike) -> None:
    """Raise `MemoryMismatchError` naming what differs if a memory file does not fit a world-model folder.

    Reads the memory's header, the model's config, header and fingerprint samples; no weights are loaded.
    """
    header, config, _ = _header_metadata(memory_path)
    lora_keys = [k for k in header.shapes if is_lora_key(k)]
    check_finite(memory_path, lora_keys)
    shapes_only = EpisodicMemory(
        config=config,
        lora={k: torch.empty(header.shapes[k], device="meta") for k in lora_keys},
        base_fingerprint=header.metadata.get("base_fingerprint", ""),
    )
    try:
        unet = empty_unet(model_path)
    except (ValueError, TypeError) as error:
        raise WeightsFileError(f"{model_path}: the UNet config cannot be read ({error}).") from None
    fingerprint = file_fingerprint(model_path).value  # an unreadable model is an error, not a "no"
    try:
        check_memory(unet, shapes_only, fingerprint)
    except MemoryMismatchError:
        raise
    except ValueError as error:  # the target pattern matches nothing (or a non-Linear) in this UNet
        raise MemoryMismatchError(str(error)) from None


# --------------------------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeResult:
    """A merged memory and how well the chosen rank represents the weighted sum of the updates.

    `relative_error` is ||sum - refactorised||_F / ||sum||_F over all target modules together;
    `layer_errors` gives the same ratio per module.
    """

    memory: EpisodicMemory
    relative_error: float
    layer_errors: dict[str, float]


def _panorama_summary(header) -> dict | None:
    """Size, camera motions learned and state of a memory file's panorama (None without one)."""
    if "panorama" not in header.metadata or "panorama.known" not in header.shapes:
        return None
    values = json.loads(header.metadata["panorama"])
    height, width = header.shapes["panorama.known"]
    return {"width": width, "height": height, "lost": values.get("lost", False), "motions": values.get("motions", {})}


def merge_memories(memories: list[EpisodicMemory], weights: list[float] | None = None,
                   rank: int | None = None) -> MergeResult:
    """Sum the weighted low-rank updates of memories made on the same model with the same targets, and
    refactorise each module's sum to `rank` (default: the largest input rank) by truncated SVD.

    The result has no optimizer state (Adam's moments describe the old factors,
    not the new ones) and no panorama (places of different episodes do not share one map), except that a single memory with weight 1 at its own rank is returned
    as it is: there is nothing to refactorise.
    """
    if not memories:
        raise ValueError("merge needs at least one memory.")
    weights = [1.0] * len(memories) if weights is None else list(weights)
    if len(weights) != len(memories):
        raise ValueError(f"Got {len(weights)} weights for {len(memories)} memories.")
    first = memories[0]
    for index, memory in enumerate(memories[1:], start=1):
        if memory.config.target_pattern != first.config.target_pattern or set(memory.lora) != set(first.lora):
            raise MemoryMismatchError(
                f"Memory {index} targets {memory.config.target!r} ({len(memory.lora)} tensors) but memory 0 targets "
                f"{first.config.target!r} ({len(first.lora)} tensors); only memories with the same targets merge."
            )
        if memory.base_fingerprint != first.base_fingerprint:
            raise MemoryMismatchError(
                f"Memory {index} was made on world model {memory.base_fingerprint}, memory 0 on "
                f"{first.base_fingerprint}; memories of different world models cannot be merged."
            )
        for key, tensor in memory.lora.items():  # the module's side of each factor; the rank side may differ
            side = 1 if ".lora_A." in key else 0
            if tensor.dim() != 2 or first.lora[key].dim() != 2 or tensor.shape[side] != first.lora[key].shape[side]:
                raise MemoryMismatchError(
                    f"Memory {index}'s {key} has shape {tuple(tensor.shape)} but memory 0's has "
                    f"{tuple(first.lora[key].shape)}: they do not adapt the same layers, so they cannot be merged."
                )
    if rank is None:
        rank = max(m.config.rank for m in memories)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a whole number of at least 1, got {rank!r}.")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {weights}.")
    if len(memories) == 1 and weights[0] == 1.0 and rank == first.config.rank:
        return MergeResult(memory=first, relative_error=0.0, layer_errors=dict.fromkeys(module_names(first.lora), 0.0))

    lora, layer_errors, error_sq, norm_sq = {}, {}, 0.0, 0.0
    for name in module_names(first.lora):
        # sum_i w_i s_i B_i A_i = B_cat @ A_cat; its SVD comes from the small factors' QR decompositions.
        b_cat = torch.cat([w * m.lora[f"{name}.lora_B.weight"].double()
                           for m, w in zip(memories, weights)], dim=1)
        a_cat = torch.cat([m.lora[f"{name}.lora_A.weight"].double() for m in memories], dim=0)
        q_b, r_b = torch.linalg.qr(b_cat)
        q_a, r_a = torch.linalg.qr(a_cat.T)
        u, s, vh = torch.linalg.svd(r_b @ r_a.T)
        kept = min(rank, s.numel())
        root = s[:kept].sqrt()
        b = torch.zeros(b_cat.shape[0], rank, dtype=torch.float64)
        a = torch.zeros(rank, a_cat.shape[1], dtype=torch.float64)
        b[:, :kept] = (q_b @ u[:, :kept]) * root
        a[:kept] = root[:, None] * (vh[:kept] @ q_a.T)
        lora[f"{name}.lora_A.weight"], lora[f"{name}.lora_B.weight"] = a.float(), b.float()
        layer_error_sq, layer_norm_sq = float((s[kept:] ** 2).sum()), float((s ** 2).sum())
        layer_errors[name] = (layer_error_sq / layer_norm_sq) ** 0.5 if layer_norm_sq > 0 else 0.0
        error_sq, norm_sq = error_sq + layer_error_sq, norm_sq + layer_norm_sq
    merged = EpisodicMemory(
        config=replace(first.config, rank=rank),
        lora=lora,
        base_fingerprint=first.base_fingerprint,
        num_updates=sum(m.num_updates for m in memories),
        frames_seen=sum(m.frames_seen for m in memories),
        actions=tuple(action for m in memories for action in m.actions),
    )
    relative_error = (error_sq / norm_sq) ** 0.5 if norm_sq > 0 else 0.0
    return MergeResult(memory=merged, relative_error=relative_error, layer_errors=layer_errors)


# --------------------------------------------------------------------------------------------- fuse


@dataclass(frozen=True)
class FuseResult:
    """Where a fused world model was written and the fingerprints before and after."""

    path: Path
    base_fingerprint: str
    fused_fingerprint: str


def fuse_into_unet(unet: UNet3DConditionModel, memory: EpisodicMemory, strength: float = 1.0) -> None:
    """Add strength * B @ A to each target module's weight (computed in float64)."""
    with torch.no_grad():
        for name in module_names(memory.lora):
            weight = unet.get_submodule(name).weight
            delta = memory.lora[f"{name}.lora_B.weight"].double() @ memory.lora[f"{name}.lora_A.weight"].double()
            weight.copy_((weight.double() + strength * delta).to(weight.dtype))


def fuse_memory(memory: EpisodicMemory, model_path: str | os.PathLike, out_dir: str | os.PathLike,
                strength: float = 1.0, link: bool = False, force: bool = False) -> FuseResult:
    """Write a world-model folder whose UNet is base + memory; the other components are copied (or linked).

    The new model has its own fingerprint, so memories of the base are not silently applied on top of
    a model that already contains one. A record of what was fused is kept in `slowfast_vgen_fused.json`.
    """
    model_path = Path(model_path)
    check_apart(model_path, out_dir, "the model folder")
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength}.")
    if not (model_path / "model_index.json").is_file():
        raise WeightsFileError(f"{model_path} is not a world-model folder (no model_index.json).")
    read_json_object(model_path / "model_index.json")  # checked before the slow UNet load
    base_fingerprint = file_fingerprint(model_path).value
    unet = UNet3DConditionModel.from_pretrained(unet_folder(model_path), use_safetensors=True)
    check_memory(unet, memory, base_fingerprint)
    damaged = first_non_finite(memory.lora) or first_non_finite(unet.state_dict())
    if damaged is not None:
        raise WeightsFileError(f"tensor {damaged} of the memory or of {model_path} holds NaN or infinite values.")
    fuse_into_unet(unet, memory, strength)
    damaged = first_non_finite(unet.state_dict())
    if damaged is not None:
        raise WeightsFileError(f"Fusing at strength {strength} overflows {damaged} in the UNet's "
                               f"{next(unet.parameters()).dtype}; use a smaller strength or a float32 model.")
    fused_fingerprint = model_fingerprint(unet)
    if fused_fingerprint == base_fingerprint:
        warnings.warn(
            "The fused weights differ from the base only below the fingerprint's bfloat16 resolution in the rows it "
            "samples, so the fused model keeps the base fingerprint and memories of the base will load on it.",
            RuntimeWarning, stacklevel=2,
        )
    record_file = model_path / FUSED_RECORD_NAME
    record = json.loads(record_file.read_text()) if record_file.is_file() else []
    record.append({
        "base_fingerprint": base_fingerprint, "fused_fingerprint": fused_fingerprint, "strength": strength,
        "config": json.loads(memory.config.to_json()), "num_updates": memory.num_updates,
        "frames_seen": memory.frames_seen, "actions": list(memory.actions),
    })
    with atomic_folder(out_dir, force) as folder:
        for item in sorted(model_path.iterdir()):
            if item.is_dir() and item.name != "unet":
                copy_component(item, folder / item.name, link)
        (folder / "model_index.json").write_text((model_path / "model_index.json").read_text())
        (folder / FUSED_RECORD_NAME).write_text(json.dumps(record, indent=2))
        unet.save_pretrained(folder / "unet")
    return FuseResult(path=Path(out_dir), base_fingerprint=base_fingerprint, fused_fingerprint=fused_fingerprint)


# --------------------------------------------------------------------------------------------- peft


def peft_config(config: TempLoRAConfig) -> dict:
    """The `adapter_config.json` content peft needs to rebuild the memory's LoRA layers."""
    lora_config = LoraConfig(r=config.rank, lora_alpha=config.rank, lora_dropout=0.0,
                             target_modules=config.target_pattern, init_lora_weights=True)
    return lora_config.to_dict()


def memory_to_peft(memory: EpisodicMemory, out_dir: str | os.PathLike, force: bool = False) -> None:
    """Write a peft adapter folder (`adapter_config.json` + `adapter_model.safetensors`) that
    `peft.PeftModel.from_pretrained(unet, out_dir)` loads; optimizer moments and provenance go in a
    side file so that converting back gives the same memory, bit for bit."""
    from safetensors.torch import save_file

    with atomic_folder(out_dir, force) as folder:
        (folder / PEFT_CONFIG_NAME).write_text(json.dumps(peft_config(memory.config), indent=2, sort_keys=True))
        tensors = {PEFT_PREFIX + key: t.detach().contiguous().cpu() for key, t in memory.lora.items()}
        save_file(tensors, str(folder / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
        replace(memory, lora={}).save(folder / PEFT_SIDECAR_NAME)


def _config_from_peft(adapter_config: dict, path: Path) -> tuple[TempLoRAConfig, float]:
    """A peft LoRA config as Temp-LoRA settings, and its scale lora_alpha / r (a memory's scale is 1, so the
    adapter's B tensors are multiplied by it on import)."""
    unsupported = {key: adapter_config.get(key) for key in ("rank_pattern", "alpha_pattern", "modules_to_save")
                   if adapter_config.get(key)}
    unsupported.update({key: True for key in ("use_dora", "use_rslora") if adapter_config.get(key)})
    if adapter_config.get("bias", "none") != "none":
        unsupported["bias"] = adapter_config["bias"]
    if adapter_config.get("peft_type", "LORA") != "LORA" or unsupported:
        raise WeightsFileError(f"{path} uses peft features a Temp-LoRA memory does not have: "
                               f"{unsupported or adapter_config.get('peft_type')}.")
    targets = adapter_config.get("target_modules")
    if isinstance(targets, list):
        # peft's list semantics: a module matches if its name is, or ends with ".", one of the entries.
        targets = rf"(?:.*\.)?(?:{'|'.join(re.escape(t) for t in targets)})"
    if not isinstance(targets, str):
        raise WeightsFileError(f"{path} has no usable target_modules ({targets!r}).")
    rank = adapter_config.get("r")
    if isinstance(rank, float) and rank.is_integer():
        rank = int(rank)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise WeightsFileError(f"{path / PEFT_CONFIG_NAME}: r must be a whole number of at least 1, got {rank!r}.")
    alpha = adapter_config.get("lora_alpha", 8)  # peft's default lora_alpha is 8
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise WeightsFileError(f"{path / PEFT_CONFIG_NAME}: lora_alpha must be a finite number, got {alpha!r}.")
    return TempLoRAConfig(rank=rank, target=targets), float(alpha) / rank


def memory_from_peft(folder: str | os.PathLike, base_model: str | os.PathLike | None = None) -> EpisodicMemory:
    """Read a peft LoRA adapter folder as a memory.

    A folder written by `memory_to_peft` carries the memory's provenance; for any other, `base_model` (the
    world-model folder the adapter was trained on) supplies the fingerprint and the shapes are checked.
    """
    folder = Path(folder)
    config_file, weights_file = folder / PEFT_CONFIG_NAME, folder / PEFT_WEIGHTS_NAME
    if not config_file.is_file():
        raise WeightsFileError(f"{folder} is not a peft adapter folder (no {PEFT_CONFIG_NAME}).")
    if not weights_file.is_file():
        pickles = [f for f in folder.glob("adapter_model.*") if is_pickle_file(f)]
        if pickles:
            refuse_pickle(pickles[0])
        raise WeightsFileError(f"{folder} has no {PEFT_WEIGHTS_NAME}.")
    adapter_config = read_json_object(config_file, "a peft LoRA config object")
    config, scale = _config_from_peft(adapter_config, folder)
    base_fingerprint = file_fingerprint(base_model).value if base_model is not None else None
    with open_safetensors(weights_file) as handle:
        lora = {}
        for key in handle.keys():
            name = key.removeprefix(PEFT_PREFIX).removeprefix("unet.")
            if not name.endswith((".lora_A.weight", ".lora_B.weight")):
                raise WeightsFileError(f"{weights_file} holds {key}, which is not a LoRA A/B weight.")
            lora[name] = handle.get_tensor(key)
            if scale != 1.0 and name.endswith(".lora_B.weight"):
                lora[name] = lora[name] * scale
    sidecar = folder / PEFT_SIDECAR_NAME
    if sidecar.is_file():
        memory = replace(EpisodicMemory.load(sidecar, check_layout=False), lora=lora)  # the sidecar has no LoRA
        if memory.config.structure() != config.structure():
            raise WeightsFileError(f"{folder}: {PEFT_CONFIG_NAME} (rank {config.rank}, target {config.target!r}) "
                                   f"disagrees with {PEFT_SIDECAR_NAME} (rank {memory.config.rank}, target "
                                   f"{memory.config.target!r}); was it edited?")
    elif base_model is None:
        raise WeightsFileError(f"{folder} does not say which world model it was made on; pass the base model folder "
                               "(--base) so that its fingerprint can be recorded.")
    else:
        memory = EpisodicMemory(config=config, lora=lora, base_fingerprint=base_fingerprint)
    problem = memory.layout_problem()
    if problem is not None:
        raise WeightsFileError(f"{folder}: the adapter's tensors do not agree with its settings: {problem}.")
    damaged = first_non_finite(memory.lora)
    if damaged is not None:
        raise WeightsFileError(f"{folder}: tensor {damaged} holds NaN or infinite values; the adapter is damaged.")
    if base_model is not None:
        check_memory(empty_unet(base_model), memory, base_fingerprint)
    return memory


# --------------------------------------------------------------------------------------------- cast


def cast_memory(memory: EpisodicMemory, dtype: torch.dtype, drop_optimizer: bool = False) -> EpisodicMemory:
    """The memory with its LoRA tensors in `dtype`; Adam's moments stay float32 (their tiny second moments
    underflow in fp16), or are dropped with `drop_optimizer` when the episode will not be continued."""
    return replace(
        memory,
        lora={key: t.to(dtype) for key, t in memory.lora.items()},
        optimizer_state={} if drop_optimizer else memory.optimizer_state,
        optimizer_steps=0 if drop_optimizer else memory.optimizer_steps,
    )
