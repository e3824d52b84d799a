"""Checks that run when a workflow is queued (the nodes' `VALIDATE_INPUTS`), before any node executes.

ComfyUI calls `VALIDATE_INPUTS` with the widget values it names (linked inputs have no value yet) and,
when it names `input_types`, with the type of every linked input; a string answer refuses the prompt
with HTTP 400. Two rules of that call shape the helpers here:
- an input named by `VALIDATE_INPUTS` is no longer range-checked by ComfyUI, so a node names only inputs
  whose own checks it does (and the checks here run the same code the node runs, for the same message);
- naming `input_types` turns off ComfyUI's own link type check, so `linked_type_problem` does it instead.
A widget converted to an input has no value at queue time: every check takes None as "decided later".
"""

from __future__ import annotations

from typing import Any, Callable


def problem_of(check: Callable[..., Any], *args: Any) -> str | None:
    """The message of the ValueError or FileNotFoundError `check(*args)` raises, or None if it passes."""
    try:
        check(*args)
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    return None


def linked_type_problem(node_class: type, input_types: dict[str, str] | None) -> str | None:
    """ComfyUI's check that every link carries the type its input takes (see the module docstring)."""
    declared = node_class.INPUT_TYPES()
    expected = {**declared.get("required", {}), **declared.get("optional", {})}
    for name, received in (input_types or {}).items():
        kind = expected.get(name, ("*",))[0]  # a list of options, or "COMBO" in V3's form: any value may come
        if isinstance(kind, str) and kind != "COMBO" and "*" not in (kind, received) and received != kind:
            return f"The input '{name}' takes {kind}, but the link brings {received}. Connect an output of type {kind}."
    return None


def start_problem(input_types: dict[str, str] | None) -> str | None:
    """Nodes that start or continue an episode need exactly one of 'image' and 'chunk' connected."""
    linked = {"image", "chunk"} & set(input_types or {})
    if len(linked) == 2:
        return ("Both 'image' and 'chunk' are connected: connect 'image' to begin an episode from a start frame, "
                "or 'chunk' to continue one, not both.")
    if not linked:
        return "Neither 'image' nor 'chunk' is connected: connect a start frame to 'image', or a chunk to 'chunk'."
    return None


def verdict(*problems: str | None) -> bool | str:
    """ComfyUI's answer: True, or the first problem found."""
    return next((p for p in problems if p is not None), True)
