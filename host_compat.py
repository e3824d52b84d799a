"""Optional packages that are installed but cannot load: hidden from transformers and diffusers.

ComfyUI's `requirements.txt` lists torchvision and torchaudio unpinned. On a CPU-only machine the package
registry's wheels of both are built against CUDA torch and fail to load next to a CPU torch
(`operator torchvision::nms does not exist`, `Could not load this library: _torchaudio.so`). transformers
and diffusers decide whether a package is usable from its presence on disk, not from whether it imports,
so `transformers.CLIPTextModel` (which the world models' text encoder is) then fails to import and the
node pack would show IMPORT FAILED. Nothing of this pack uses either package: when one is present but
does not import, it is marked unavailable in those two libraries (with a warning saying how to repair the
install) so that they take the paths they take when it is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

logger = logging.getLogger(__name__)

OPTIONAL_PACKAGES = ("torchvision", "torchaudio")


def import_problem(package: str) -> str | None:
    """Why `package` is installed but does not import; None if it imports or is not installed."""
    if package in sys.modules:
        return None
    if importlib.util.find_spec(package) is None:
        return None
    try:
        importlib.import_module(package)
    except Exception as error:  # a binary built for another torch raises OSError, RuntimeError, ImportError
        sys.modules.pop(package, None)
        return f"{type(error).__name__}: {error}"
    return None


def _unavailable() -> bool:
    return False


def mark_unavailable(package: str) -> None:
    """Make transformers and diffusers treat `package` as not installed: their `_<package>_available` flags
    and `is_<package>_available()` checks, wherever a module of theirs holds one."""
    flag, checker = f"_{package}_available", f"is_{package}_available"
    for module_name in ("transformers.utils.import_utils", "transformers.utils", "transformers",
                        "diffusers.utils.import_utils", "diffusers.utils", "diffusers"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, flag):
            setattr(module, flag, False)
        if hasattr(module, checker):
            setattr(module, checker, _unavailable)


def hide_broken_optional_packages() -> list[str]:
    """Mark every optional package that is installed but does not import as unavailable; returns their names."""
    hidden = []
    for package in OPTIONAL_PACKAGES:
        problem = import_problem(package)
        if problem is None:
            continue
        mark_unavailable(package)
        hidden.append(package)
        logger.warning(
            "SlowFast-VGen: %s is installed but does not load (%s); it was probably built for another torch "
            "(the package registry's wheels are CUDA builds). The pack does not need it and carries on without "
            "it. To repair the environment, install the %s build that matches your torch, or uninstall it "
            "(`pip uninstall %s`); see docs/comfyui.md.", package, problem.splitlines()[0][:200], package, package,
        )
    return hidden
