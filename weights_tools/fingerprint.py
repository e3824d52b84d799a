"""The world-model fingerprint computed from the files, without loading the model.

The fingerprint is `pipelines.fingerprint.fingerprint`: SHA-256 over the UNet config (every `__init__`
argument, defaults included, private `_` keys left out) and, for every tensor in name order, its name,
its shape and the first 8 values of up to 4 evenly spaced rows, rounded to bfloat16; the first 16 hex
digits are kept. Here the config comes from `unet/config.json` completed with the defaults diffusers
fills in when it loads the model, and the values come from the safetensors files through lazy slices, so
only the header and a few bytes per tensor are read (how much, on a ModelScope-sized UNet:
docs/weights_tools.md, "The fingerprint").
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import UNet3DConditionModel

from ..pipelines.fingerprint import VALUES_PER_ROW, fingerprint
from .files import WeightsFileError, child_path, is_pickle_file, open_safetensors, read_header, refuse_pickle

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
_UNET_PARAMETERS = dict(list(inspect.signature(UNet3DConditionModel.__init__).parameters.items())[1:])


@dataclass(frozen=True)
class FileFingerprint:
    """A fingerprint computed from files, with how much of them it read."""

    value: str
    bytes_read: int
    bytes_total: int
    num_tensors: int


def unet_folder(path: str | os.PathLike) -> Path:
    """The UNet folder of a world-model folder (or the UNet folder itself)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        path = path / "unet"
    if not (path / "config.json").is_file():
        raise WeightsFileError(f"{path} is neither a world-model folder (model_index.json) nor a UNet folder "
                               "(config.json).")
    return path


def weight_files(component: str | os.PathLike) -> dict[str, Path]:
    """Tensor name -> safetensors file of a diffusers component folder, single-file or sharded."""
    component = Path(component)
    index = component / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        # Shard names come from the file: one that points outside the folder is refused, not followed.
        files = {shard: child_path(component, shard) for shard in set(weight_map.values())}
        headers = {shard: read_header(file).shapes for shard, file in files.items()}
        for name, shard in weight_map.items():
            if name not in headers[shard]:
                raise WeightsFileError(f"{index} maps {name} to {shard}, which has no such tensor.")
        return {name: files[shard] for name, shard in weight_map.items()}
    single = component / WEIGHTS_NAME
    if single.is_file():
        return {name: single for name in read_header(single).shapes}
    pickles = [f for f in component.glob("*") if is_pickle_file(f)]
    if pickles:
        refuse_pickle(pickles[0])
    raise WeightsFileError(f"{component} has no {WEIGHTS_NAME} (nor a sharded {WEIGHTS_INDEX_NAME}).")


def unet_config(path: str | os.PathLike) -> dict:
    """The UNet config as a loaded model's `.config` has it: config.json plus every default it leaves out."""
    config = json.loads((unet_folder(path) / "config.json").read_text())
    # diffusers keeps only known __init__ arguments, and records the defaults of missing ones when it
    # builds the model: do both, so that the file and the loaded model hash the same config.
    init_arguments, _unused, _private = UNet3DConditionModel.extract_init_dict(config)
    defaults = {name: parameter.default for name, parameter in _UNET_PARAMETERS.items()
                if parameter.default is not inspect.Parameter.empty}
    return {**defaults, **init_arguments}


def empty_unet(path: str | os.PathLike) -> UNet3DConditionModel:
    """The UNet of a folder built without weights (meta tensors): its module names and shapes, for free."""
    with init_empty_weights():
        return UNet3DConditionModel.from_config(unet_config(path))


def file_fingerprint(path: str | os.PathLike) -> FileFingerprint:
    """Fingerprint of a world model (or UNet) folder, equal to `model_fingerprint` of the loaded UNet."""
    folder = unet_folder(path)
    files = weight_files(folder)
    headers = {file: read_header(file) for file in set(files.values())}
    bytes_read = sum(header.header_bytes for header in headers.values())
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(open_safetensors(file)) for file in headers}

        def row_of(name: str, row: int) -> torch.Tensor:
            nonlocal bytes_read
            view = handles[files[name]].get_slice(name)
            shape = view.get_shape()
            if len(shape) == 1:
                values = view[row:row + 1]
            else:
                # Only the row's first VALUES_PER_ROW values enter the hash: read just the leading
                # sub-rows of the second dimension that hold them.
                values = view[row:row + 1, :math.ceil(VALUES_PER_ROW / math.prod(shape[2:]))]
            bytes_read += values.numel() * values.element_size()
            return values

        value = fingerprint(unet_config(folder), files.keys(), lambda name: headers[files[name]].shapes[name], row_of)
    total = sum(header.file_bytes for header in headers.values())
    return FileFingerprint(value=value, bytes_read=bytes_read, bytes_total=total, num_tensors=len(files))

