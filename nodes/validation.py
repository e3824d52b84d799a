"""Checks that run when a workflow is queued (the nodes' `VALIDATE_INPUTS`), before any node executes.

ComfyUI calls `VALIDATE_INPUTS` with the values of the inputs it names (a linked input's value is None
then) and attaches a string answer, the refusal, to EVERY input it names: a check that named two inputs
would show its message twice, on an input that is not at fault too. So each node's check names one
input, the one it reads, and everything else is left to ComfyUI's own checks, which report on the input
at fault:
- link types: ComfyUI checks every link against the input's type unless the check names `input_types`,
  which no check here does;
- ranges (min / max) of the inputs no check names;
- choices: the pack declares its lists (models, conditioning, presets, recall, ...) in the classic form,
  a list of values, also for ComfyUI's V3 schema (`nodes/v3.py`), so that ComfyUI 0.3.64, which checks
  the values of V1 lists but not of V3 combos, refuses a value not in the list.
What needs two inputs at once (`image` and `chunk` both or neither connected, Memory Maze's smallest
frame, no Temp-LoRA steps with the panorama off) is checked as soon as the node runs, before it loads or
computes anything (`start_problem`). A widget converted to an input has no value at queue time: every
check takes None as "decided later". Answers say no absolute path (`errors.public_message`).
"""

from __future__ import annotations

from typing import Any, Callable

from .errors import public_message


def problem_of(check: Callable[..., Any], *args: Any) -> str | None:
    """The message of the ValueError or FileNotFoundError `check(*args)` raises, or None if it passes."""
    try:
        check(*args)
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    return None


def start_problem(image: Any, chunk: Any) -> str | None:
    """Nodes that start or continue an episode need exactly one of 'image' and 'chunk' connected."""
    if image is not None and chunk is not None:
        return ("Both 'image' and 'chunk' are connected: connect 'image' to begin an episode from a start frame, "
                "or 'chunk' to continue one, not both.")
    if image is None and chunk is None:
        return "Neither 'image' nor 'chunk' is connected: connect a start frame to 'image', or a chunk to 'chunk'."
    return None


def check_start(image: Any, chunk: Any) -> None:
    """`start_problem` as a ValueError, first thing when the node runs."""
    problem = start_problem(image, chunk)
    if problem is not None:
        raise ValueError(problem)


def choice_problem(name: str, value: Any, choices: list, where: str = "") -> str | None:
    """A value that is not one of an input's choices (for nodes called directly, and named inputs)."""
    if value is None or value in choices:
        return None
    shown = ", ".join(repr(c) for c in choices[:20]) + (", ..." if len(choices) > 20 else "")
    return f"{name}: {value!r} is not one of {shown}.{where}"


def verdict(*problems: str | None) -> bool | str:
    """ComfyUI's answer: True, or the first problem found, with paths in ComfyUI's folders made relative
    (other paths in it are what the user typed, and stay as typed)."""
    return next((public_message(p, cut_unknown=False) for p in problems if p is not None), True)
