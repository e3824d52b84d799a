"""Shared fixtures: a tiny random world model built offline, and the same model saved to a folder.

Everything runs offline (no model hub): `HF_HUB_OFFLINE=1` is set before any test imports diffusers.
Tests must not mutate the shared pipelines' components (swap schedulers on a new pipeline built from
`tiny_pipe.components` instead); running with or without a Temp-LoRA memory is fine, that is the point.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pipe():
    """A session-wide tiny `SlowFastVGenPipeline` (random weights, seed 0, CPU, progress bar off)."""
    from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline

    pipe = build_pipeline(WorldModelSpec.tiny(), seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    """A folder holding `save_pretrained` of a fresh tiny pipeline (the same weights as `tiny_pipe`)."""
    from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline

    folder = tmp_path_factory.mktemp("tiny_world_model")
    build_pipeline(WorldModelSpec.tiny(), seed=0).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_context():
    """Context latents (1, 4, 2, 16, 16) of the tiny model, from a fixed seed."""
    return torch.randn(1, 4, 2, 16, 16, generator=torch.Generator().manual_seed(1234))
