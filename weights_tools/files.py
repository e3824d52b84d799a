"""Reading and writing weight files safely: safetensors only, clear errors, atomic writes.

Every tool in `weights_tools` reads and writes through here, so the rules hold everywhere:

- Only safetensors are read. Pickle-based files (`.bin`, `.pt`, `.ckpt`, `.pth`) can run code when
  loaded; they are refused with a message saying how to convert them, unless the caller passes
  `allow_pickle=True`, and even then they are read with `torch.load(weights_only=True)`.
- A truncated file or one whose header does not match its contents is reported as such, by name.
- Writes go to a temporary file or folder beside the destination and are renamed into place, so a crash
  never leaves a half-written file where a good one was; an existing destination is only replaced when
  `force=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from ..pipelines.atomic_files import partial_path, remove_stale_partials
from ..pipelines.pipeline_slowfast_vgen import drop_source_paths

PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth", ".pkl")


def read_json_object(path: Path, kind: str = "a JSON object") -> dict:
    """The JSON object in `path` (a model index, an adapter config); anything else is a WeightsFileError
    naming the file and, where it holds another JSON value, `kind`, what it should have held."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsFileError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(value, dict):
        raise WeightsFileError(f"{path} holds a {type(value).__name__}, not {kind}.")
    return value


class WeightsFileError(ValueError):
    """A weight file or folder cannot be used: unreadable, corrupted, unsafe or of the wrong kind."""


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors header says, read without touching the tensor data."""

    path: Path
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    header_bytes: int
    file_bytes: int


def is_pickle_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(PICKLE_SUFFIXES)


def refuse_pickle(path: str | os.PathLike) -> None:
    """Raise the error that explains why a pickle-based weight file is not read, and what to do instead."""
    raise WeightsFileError(
        f"{path} is a pickle-based file, which can execute code when loaded, so it is not read. Convert it to "
        "safetensors first, e.g. `python -c \"import torch; from safetensors.torch import save_file; "
        f"save_file(torch.load('{path}', weights_only=True), 'model.safetensors')\"`, or pass --allow-pickle "
        "to read it here with torch.load(weights_only=True)."
    )


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike) -> Iterator:
    """`safe_open` with errors that name the file and say what is wrong with it."""
    path = os.fspath(path)
    if is_pickle_file(path):
        refuse_pickle(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such weight file: {path}")
    try:
        handle = safe_open(path, framework="pt")
    except (SafetensorError, OSError) as error:
        raise WeightsFileError(
            f"{path} is not a valid safetensors file: it is truncated, or its header does not describe its "
            f"contents ({error})."
        ) from None
    with handle:
        yield handle


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Names, shapes, dtypes and metadata of a safetensors file; the tensor data is not read."""
    with open_safetensors(path) as handle:
        shapes, dtypes = {}, {}
        for name in handle.keys():
            view = handle.get_slice(name)
            shapes[name] = tuple(view.get_shape())
            dtypes[name] = view.get_dtype()
        metadata = dict(handle.metadata() or {})
    with open(path, "rb") as file:
        header_bytes = 8 + int.from_bytes(file.read(8), "little")
    return SafetensorsHeader(Path(path), metadata, shapes, dtypes, header_bytes, os.path.getsize(path))


def load_weights(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a weight file: safetensors, or, only with `allow_pickle`, a weights-only torch pickle."""
    if is_pickle_file(path):
        if not allow_pickle:
            refuse_pickle(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            raise WeightsFileError(f"{path} could not be read with torch.load(weights_only=True): {error}") from None
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise WeightsFileError(f"{path} does not hold a flat dict of tensors (a state dict).")
        return state
    with open_safetensors(path) as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def child_path(folder: str | os.PathLike, name: str) -> Path:
    """`folder / name`, refusing names that would land outside `folder` (absolute paths, `..`, symlinks)."""
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise WeightsFileError(f"Refusing to write {name!r}: it would land outside the output folder {root}.")
    return target


def check_apart(source: str | os.PathLike, destination: str | os.PathLike, what: str = "the source") -> None:
    """Refuse an output that is `source`, contains it, or lies inside it (symlinks followed).

    Replacing such an output (with --force) would delete the source it is being made from, and --link would
    leave symlinks pointing at themselves.
    """
    source_path, output_path = Path(source).resolve(), Path(destination).resolve()
    if output_path == source_path:
        relation = "is"
    elif output_path in source_path.parents:
        relation = "contains"
    elif source_path in output_path.parents:
        relation = "lies inside"
    else:
        return
    raise WeightsFileError(f"--output {os.fspath(destination)} {relation} {what} {os.fspath(source)}; writing it "
                           "would destroy what it is made from: choose an output folder outside it.")


def check_destination(path: str | os.PathLike, force: bool) -> None:
    """Refuse to replace an existing file or folder unless `force`."""
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{path} already exists; pass --force (force=True) to replace it.")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str],
                     force: bool = False) -> None:
    """Write a safetensors file atomically (temporary file beside it, then rename)."""
    check_destination(path, force)
    from ..pipelines.temp_lora import atomic_save_safetensors

    atomic_save_safetensors(tensors, path, metadata)


@contextlib.contextmanager
def atomic_folder(destination: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `destination`; on success it becomes `destination`.

    On any error the temporary folder is deleted and `destination` is left as it was. With `force`, an
    existing destination is moved aside, replaced, and only then deleted.
    """
    destination = Path(destination).absolute()
    check_destination(destination, force)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp, whose 0700 mode would make the finished folder private to its writer.
    remove_stale_partials(destination)
    temporary = partial_path(destination)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    previous = None
    if os.path.lexists(destination):
        previous = destination.with_name(f".old-{destination.name}-{os.getpid()}")
        os.replace(destination, previous)
    os.replace(temporary, destination)
    if previous is not None:
        if previous.is_dir() and not previous.is_symlink():
            shutil.rmtree(previous)
        else:
            previous.unlink()


def copy_or_link(source: str | os.PathLike, destination: str | os.PathLike, link: bool) -> None:
    """Copy a file, or make `destination` an absolute symlink to it (to share multi-gigabyte weights)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(Path(source).resolve(), destination)
    else:
        shutil.copy2(source, destination)


def copy_component(source: str | os.PathLike, destination: str | os.PathLike, link: bool) -> None:
    """Copy (or link) a component folder's files; pickle files are never carried over."""
    source = Path(source)
    for file in sorted(source.rglob("*")):
        if file.is_file() and not is_pickle_file(file):
            copy_or_link(file, child_path(destination, str(file.relative_to(source))), link)
    drop_source_paths(destination)

