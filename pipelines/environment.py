"""What the installed diffusers and the host allow: the dtype keyword of `from_pretrained`, `torch.compile`."""

from __future__ import annotations

import os
import sys
import warnings

import torch


def dtype_argument(dtype: torch.dtype | None) -> dict:
    """The keyword that sets the weights' dtype in `from_pretrained`, for the installed diffusers.

    Newer diffusers deprecate `torch_dtype` for `dtype` (huggingface/diffusers#14205); older releases know
    only `torch_dtype`.
    """
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype": dtype}


def compile_unavailable(device: torch.device) -> str | None:
    """Why `torch.compile` cannot run on `device` here, or None. Its CPU backend builds C++ and needs a compiler."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu" and sys.platform != "win32":  # other failures surface at the first call (`predict`)
        import shutil

        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None:
            return f"no C++ compiler ({compiler!r}) on PATH for the CPU backend; install g++ or set CXX"
    return None


class CompileMixin:
    """`compile_unet` for `SlowFastVGenPipeline` (its `predict` samples with the compiled UNet once set)."""

    def compile_unet(self, **compile_kwargs) -> bool:
        """Sample with `torch.compile(unet)` from now on (the Temp-LoRA update stays eager: compiling its
        backward costs more than it saves). Returns False, with a warning saying why, where compiling
        cannot work; generation then runs uncompiled. Compiling takes a while on the first chunk (and
        again when the number of context frames changes), and pays on long episodes only (docs/benchmarks.md)."""
        reason = compile_unavailable(self._execution_device)
        if reason:
            warnings.warn(f"torch.compile is not available here: {reason}; generating uncompiled.",
                          RuntimeWarning, stacklevel=2)
            return False
        self._compiled_unet = torch.compile(self.unet, **compile_kwargs)
        return True
