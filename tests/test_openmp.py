"""The `slowfast-vgen` command makes torch's idle OpenMP threads sleep soon (see openmp.py); a value the user
set, or a torch already loaded, is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRINT = "import os; print(os.environ.get('GOMP_SPINCOUNT'))"


def run(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**environment, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(("code", "env", "expected"), [
    ("import slowfast_vgen; " + PRINT, {}, "10000"),  # the package first, as the command imports it
    ("import slowfast_vgen; " + PRINT, {"GOMP_SPINCOUNT": "5"}, "5"),  # the user's value wins
    ("import slowfast_vgen; " + PRINT, {"OMP_WAIT_POLICY": "active"}, "None"),  # so does their policy
    ("import torch, slowfast_vgen; " + PRINT, {}, "None"),  # too late: libgomp has read its environment
])
def test_the_spin_is_set_before_torch_loads_openmp_and_never_over_the_users(code, env, expected):
    assert run(code, **env) == expected
