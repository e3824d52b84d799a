"""Argument checks shared by the pipeline, the command line, the nodes and the benchmarks.

Each check returns a problem (a sentence naming the argument and what to pass instead) or None, so the
caller raises it in its own way: `ValueError` in the library, `SystemExit` in the CLI, a queue-time
message in ComfyUI. One wording everywhere; the caller only says what the argument is called there.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

# A scheduler of 1000 training timesteps cannot take more sampling steps than it has timesteps.
MAX_STEPS = 1000
# Guidance far beyond any useful value only overflows; classifier-free guidance above ~30 is noise.
MAX_GUIDANCE = 100.0


def steps_problem(steps, name: str = "num_inference_steps", parsed: bool | None = None) -> str | None:
    """Sampling steps: a whole number from 1 to `MAX_STEPS`.

    `parsed`: the caller's parser already made `steps` a whole number (argparse's `type=int`, a node's INT
    input), so the message does not say it must be one. By default, true for a command-line option
    (a `name` starting with "--").
    """
    if parsed is None:
        parsed = name.startswith("--")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        kind = "" if parsed else "a whole number of "
        return f"{name} must be {kind}at least 1 and at most {MAX_STEPS}, got {steps!r}."
    return None


def guidance_problem(guidance, name: str = "guidance_scale") -> str | None:
    """Classifier-free guidance: a finite number from 0 to `MAX_GUIDANCE` (1 or less: no guidance)."""
    if (not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not math.isfinite(guidance)
            or not 0 <= guidance <= MAX_GUIDANCE):
        return f"{name} must be a finite number >= 0 and <= {MAX_GUIDANCE:g} (1 or less: no guidance), got {guidance!r}."
    return None


def sampling_problem(steps, guidance, steps_name: str = "num_inference_steps",
                     guidance_name: str = "guidance_scale", parsed: bool | None = None) -> str | None:
    """The first problem of a (steps, guidance) pair, or None (`parsed` as in `steps_problem`)."""
    return steps_problem(steps, steps_name, parsed) or guidance_problem(guidance, guidance_name)


def actions_problem(actions: Iterable[str], parse: Callable[[str], object], name: str = "actions",
                    numbered: bool = True) -> str | None:
    """The first action `parse` refuses, named `name[i]: ...` (or `name: ...` with numbered=False), or None.

    `parse` is a world's action parser (it raises ValueError with a message that lists the known actions).
    """
    for index, action in enumerate(actions):
        try:
            parse(action)
        except ValueError as error:
            return f"{name}[{index}]: {error}" if numbered else f"{name}: {error}"
    return None


def wrong_type(name: str, value, expected: type | tuple[type, ...], what: str) -> str | None:
    """`name` must be None or an instance of `expected` (described as `what` in the message)."""
    if value is None or isinstance(value, expected):
        return None
    return f"{name} must be {what}, got {type(value).__name__}."
