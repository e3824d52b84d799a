"""A world-model folder: what it must hold (checked before diffusers loads anything), and what a saved one
must not carry."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .atomic_files import write_text_atomically

# What a world-model folder must hold: component -> a file its subfolder must contain (None: any file).
REQUIRED_COMPONENTS = {
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": None,
    "unet": "config.json",
    "scheduler": "scheduler_config.json",
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_model_folder(pretrained_model_name_or_path, provided: dict | None = None) -> None:
    """Raise `FileNotFoundError` naming the problem when a local model folder is missing or incomplete.

    Hub repo ids ("owner/name") that are not local folders are left to diffusers. Components passed
    to `from_pretrained` as objects (`provided`) need not be in the folder.
    """
    path = os.fspath(pretrained_model_name_or_path)
    expected = ", ".join(f"{name}/" for name in REQUIRED_COMPONENTS)
    if not os.path.isdir(path):
        if isinstance(pretrained_model_name_or_path, os.PathLike) or not _REPO_ID.match(path) or os.path.exists(path):
            raise FileNotFoundError(
                f"pretrained_model_name_or_path: there is no model folder at {path!r}. Expected a folder holding "
                f"model_index.json and the subfolders {expected} (a diffusers-format SlowFast-VGen or ModelScope "
                "text-to-video model)."
            )
        return
    index_file = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_file):
        raise FileNotFoundError(
            f"pretrained_model_name_or_path: {path!r} has no model_index.json, so it is not a diffusers pipeline "
            f"folder. Expected model_index.json and the subfolders {expected}."
        )
    try:
        with open(index_file, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{index_file} is not valid JSON ({error}).") from None
    provided = provided or {}
    problems = []
    for name, required_file in REQUIRED_COMPONENTS.items():
        if name in provided:
            continue
        entry = index.get(name)
        folder = os.path.join(path, name)
        if not entry or entry[0] is None:
            problems.append(f"{name} (not listed in model_index.json)")
        elif not os.path.isdir(folder):
            problems.append(f"{name} (no {name}/ subfolder)")
        elif required_file and not os.path.isfile(os.path.join(folder, required_file)):
            problems.append(f"{name} (no {name}/{required_file})")
        elif not os.listdir(folder):
            problems.append(f"{name} ({name}/ is empty)")
    if problems:
        raise FileNotFoundError(
            f"pretrained_model_name_or_path: the model folder {path!r} lacks {len(problems)} component(s): "
            f"{'; '.join(problems)}. A world model needs {expected}."
        )


def drop_source_paths(folder: str | os.PathLike) -> None:
    """Remove `_name_or_path` from every config JSON under a saved model folder.

    diffusers records there where a component was loaded from, a path on the machine that saved it, which
    a shared model must not carry. Each file is replaced whole (a hard link to another folder's file is
    broken, not written through).
    """
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a config this function should touch
        if not isinstance(config, dict) or "_name_or_path" not in config:
            continue
        config.pop("_name_or_path")
        write_text_atomically(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
