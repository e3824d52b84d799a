"""A cheap, stable identifier of a UNet's weights, recorded by every episodic memory.

Hashing every byte of a multi-gigabyte model would take longer than loading it, so the fingerprint
hashes the model config plus, for every tensor, its name, shape and a few sampled rows. The rows are
read through `safetensors`' lazy slices when fingerprinting a file, so only those bytes leave the disk,
and the same rows are taken from a loaded model: the two ways give the same value for the same
weights. Values are rounded to bfloat16 before hashing, so an fp32 model and its fp16 / bf16 copy share
a fingerprint and a memory made on one loads on the other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable

import torch

ROWS_SAMPLED = 4
VALUES_PER_ROW = 8


def sampled_row_indices(num_rows: int) -> list[int]:
    """Which rows of a tensor's first dimension enter the fingerprint."""
    if num_rows <= ROWS_SAMPLED:
        return list(range(num_rows))
    return sorted({round(i * (num_rows - 1) / (ROWS_SAMPLED - 1)) for i in range(ROWS_SAMPLED)})


def fingerprint(
    config: dict,
    tensor_names: Iterable[str],
    shape_of: Callable[[str], tuple[int, ...]],
    row_of: Callable[[str, int], torch.Tensor],
) -> str:
    """Fingerprint from a config and accessors, shared by the in-memory and the on-disk versions."""
    digest = hashlib.sha256()
    public_config = {k: v for k, v in config.items() if not k.startswith("_")}
    digest.update(json.dumps(public_config, sort_keys=True, default=str).encode())
    for name in sorted(tensor_names):
        shape = tuple(shape_of(name))
        digest.update(f"{name}{shape}".encode())
        rows = sampled_row_indices(shape[0]) if shape else []
        samples = [row_of(name, r).reshape(-1)[:VALUES_PER_ROW] for r in rows]
        if samples:
            values = torch.cat(samples).to(torch.bfloat16).to(torch.float32)
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights, without Temp-LoRA layers and under the names they are saved with."""
    return {
        name.replace(".base_layer", ""): tensor
        for name, tensor in model.state_dict().items()
        if ".lora_" not in name
    }


def model_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a loaded model (a diffusers `ModelMixin`), ignoring any Temp-LoRA injected into it."""
    state = base_state_dict(model)
    return fingerprint(
        dict(model.config),
        state.keys(),
        lambda name: tuple(state[name].shape),
        lambda name, row: state[name][row].detach().cpu(),
    )


def weights_version(model: torch.nn.Module) -> tuple:
    """A cheap key that changes whenever the model's base weights may have changed (in-place updates bump a
    tensor's version counter; replacing or moving a tensor changes its storage), used to cache
    `model_fingerprint` between calls. Temp-LoRA tensors are left out, as in the fingerprint itself."""
    return tuple(
        (name, tensor.data_ptr(), tensor._version, tensor.dtype, tuple(tensor.shape))
        for named in (model.named_parameters(), model.named_buffers())
        for name, tensor in named
        if ".lora_" not in name
    )
