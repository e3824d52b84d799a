"""What a node's error shows a ComfyUI user: no absolute path of the server, no Python module path.

ComfyUI shows a failed node's exception as `<type>: <message>`, the type with its module unless it is a
builtin (`slowfast_vgen.pipelines.episodic_memory.MemoryMismatchError: ...`), and a queue-time refusal as
the message alone; both reach whoever uses the server, who knows its files as `models/...`, `output/...`
and not as the server's absolute paths. So every node (`public_errors`) and every queue-time check
(`validation.verdict`) says paths relative to ComfyUI's folders (`public_message`), and a failure of the
pack or its libraries is raised as a builtin ValueError or RuntimeError with that message (the original
stays chained to it, for the server's log). Cancel and out-of-memory pass through as they are: ComfyUI
handles them by their type.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from typing import Callable

import torch

from ..paths import PACKAGE_DIR
from . import comfy_services

_PASS_THROUGH = (comfy_services.Interrupted, torch.OutOfMemoryError)
# Absolute paths left after the known folders are replaced: POSIX ones (not inside a URL or a relative
# path) and Windows ones, up to a quote, space or a punctuation mark that ends a sentence.
_POSIX_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"`,;()\[\]]+/)*[^\s'\"`,;()\[\]]*[^\s'\"`,;()\[\].:]")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:[\\/](?:[^\s'\"`,;()\[\]]+[\\/])*[^\s'\"`,;()\[\]]*[^\s'\"`,;()\[\].:]")


def _folders() -> list[tuple[str, str]]:
    """(absolute folder, what the user calls it), the real path beside the given one, longest first."""
    named = [(comfy_services.output_directory(), "output")]
    for name in (comfy_services.WORLD_MODELS_FOLDER, comfy_services.MEMORIES_FOLDER,
                 comfy_services.INVERSE_DYNAMICS_FOLDER):
        named += [(folder, f"models/{name}") for folder in comfy_services.model_folders(name)]
    pack = f"custom_nodes/{PACKAGE_DIR.name}" if comfy_services.IN_COMFYUI else "slowfast_vgen"
    named += [(str(PACKAGE_DIR), pack)]
    if comfy_services.IN_COMFYUI:
        import folder_paths

        named += [(folder_paths.get_input_directory(), "input"), (folder_paths.get_temp_directory(), "temp"),
                  (folder_paths.models_dir, "models"), (folder_paths.base_path, "ComfyUI")]
    else:
        named += [(os.path.join(os.getcwd(), "models"), "models"), (os.getcwd(), ".")]
    pairs = set()
    for folder, label in named:
        for variant in {os.path.abspath(folder), os.path.realpath(folder)}:
            pairs.add((variant.rstrip("/\\"), label))
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def public_message(text: str, keep: tuple[str, ...] = (), cut_unknown: bool = True) -> str:
    """`text` with every path inside ComfyUI's folders (or the pack) relative to them, and (`cut_unknown`)
    any other absolute path cut to its last part, except the strings of `keep` (what the user typed, such
    as an absolute save name that is refused)."""
    typed_paths = (v for v in keep if v and v in text and (v[:1] in "/\\" or re.match(r"[A-Za-z]:", v)))
    kept = {f"\x00{index}\x00": value for index, value in enumerate(typed_paths)}
    for placeholder, value in kept.items():
        text = text.replace(value, placeholder)
    for folder, label in _folders():
        if folder and folder not in ("/", "."):
            text = re.sub(re.escape(folder) + r"(?=[\\/]|\b|$)", label.replace("\\", "/"), text)
    if cut_unknown:
        text = _POSIX_PATH.sub(lambda m: _last_part(m.group(0)), text)
        text = _WINDOWS_PATH.sub(lambda m: _last_part(m.group(0)), text)
    for placeholder, value in kept.items():
        text = text.replace(placeholder, value)
    return text


def _last_part(path: str) -> str:
    part = re.split(r"[\\/]+", path.rstrip("\\/"))[-1]
    return f".../{part}" if part else path


def public_error(error: Exception, keep: tuple[str, ...] = ()) -> Exception:
    """The exception a user is shown for `error` (see the module docstring); `error` itself if nothing changes."""
    message = public_message(str(error), keep)
    if type(error).__module__ == "builtins":
        if message == str(error):
            return error
        try:
            return type(error)(message)
        except Exception:  # an exception type with other constructor arguments
            return RuntimeError(message)
    return (ValueError if isinstance(error, ValueError) else RuntimeError)(message)


def public_errors(node_class: type) -> type:
    """Make the node's function raise `public_error`s (the class is changed in place and returned)."""
    name = node_class.FUNCTION
    function = getattr(node_class, name)

    @functools.wraps(function)
    def run(self, *args, **kwargs):
        try:
            problem = declared_problem(node_class, kwargs)
            if problem is not None:
                raise ValueError(problem)
            return function(self, *args, **kwargs)
        except _PASS_THROUGH:
            raise
        except Exception as error:
            shown = public_error(error, tuple(v for v in (*args, *kwargs.values()) if isinstance(v, str)))
            if shown is error:
                raise
            raise shown from error

    setattr(node_class, name, run)
    return node_class


def declared_problem(node_class: type, values: dict) -> str | None:
    """The first widget value outside what the node declares (a number below its min or above its max, a
    choice not in its list), for nodes called directly (ComfyUI checks this before it runs a node)."""
    declared = node_class.INPUT_TYPES()
    specs = {**declared.get("required", {}), **declared.get("optional", {})}
    check = getattr(node_class, "VALIDATE_INPUTS", None)
    own = set(inspect.signature(check).parameters) if check is not None else set()
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None or value is None or isinstance(value, torch.Tensor) or name in own:
            continue  # as in ComfyUI, an input the node checks itself is not checked here
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, (list, tuple)):
            if isinstance(value, str) and value not in kind:
                shown = ", ".join(repr(c) for c in kind[:20]) + (", ..." if len(kind) > 20 else "")
                return f"{name}: {value!r} is not one of {shown}."
        elif kind in ("INT", "FLOAT") and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = options.get("min"), options.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                return f"{name}={value!r} is out of range: give a value from {low} to {high}."
    return None


def public_check(check: Callable[..., bool | str]) -> Callable[..., bool | str]:
    """A queue-time check (`VALIDATE_INPUTS`) whose answer says no absolute path."""

    @functools.wraps(check)
    def checked(*args, **kwargs):
        answer = check(*args, **kwargs)
        typed = tuple(v for v in (*args, *kwargs.values()) if isinstance(v, str))
        return public_message(answer, typed) if isinstance(answer, str) else answer

    return checked
