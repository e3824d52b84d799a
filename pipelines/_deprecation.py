"""Deprecated aliases: old public names that still work and say, once per use, what to use instead."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Mapping


def deprecated_aliases(module: str, aliases: Mapping[str, tuple[Any, str]]) -> Callable[[str], Any]:
    """A module `__getattr__` that serves each old name of `aliases` (old name -> (object, new dotted name))
    with a `DeprecationWarning`, and raises `AttributeError` for any other missing name."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value, new_name = aliases[name]
        if sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
            # `from package import name` asks importlib's `hasattr` first, then gets the name: warn once, there.
            return value
        warnings.warn(f"{module}.{name} is deprecated; use {new_name}.", DeprecationWarning, stacklevel=2)
        return value

    return __getattr__


def warn_deprecated(message: str, stacklevel: int = 3) -> None:
    """A `DeprecationWarning` for a deprecated argument or form, pointing at the caller's caller by default."""
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)
