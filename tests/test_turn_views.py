"""Turned views (`turn_views.py`, the pose memory's `turn_views`): a view seen at a place, warped by a turn on
the spot, is the world's view after the turn where it covers it; the pose memory recalls such views for
poses it has no view of, with a mask per latent pixel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slowfast_vgen.data.memory_maze import MemoryMaze, action_motions, camera_fovy
from slowfast_vgen.data.memory_maze_episodes import make_maze_episode
from slowfast_vgen.pipelines import SlowFastVGenPipeline, TempLoRAConfig, temp_lora_preset
from slowfast_vgen.pipelines.memorize import memory_of
from slowfast_vgen.pipelines.pose_memory import PoseViews
from slowfast_vgen.pipelines.turn_views import horizontal_fov, turned_view

SEED = 2000
FAST = dict(num_inference_steps=2, guidance_scale=1.0)


def psnr_on(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / max(float(((a - b)[mask] ** 2).mean()), 1e-10))


def test_a_view_turned_by_the_pose_memory_is_the_world_after_the_turn():
    """The sign and size of the turn come from the pose keys as the memory computes them (`turned_from`),
    the field of view from the package's camera; the world renders the truth."""
    world = MemoryMaze(SEED, view_size=64)
    fovy = camera_fovy()
    step = 360 / 16
    for action in ("turn right", "turn left"):
        frames = world.rollout([action], 3).astype(np.float32) / 255  # the start and 3 turned frames
        views = PoseViews.start(action_motions(), 16, torch.zeros(1, 1, 1, 2, 2))
        poses = views.poses_after(action, 3)
        for i, pose in enumerate(poses):
            (index, turn), = views.turned_from(pose, max_turn=3)
            assert index == 0 and abs(turn) == i + 1
            warped, known = turned_view(frames[0], fovy, -turn * step)
            assert 0.1 < known.mean() < 0.9
            wrong, wrong_known = turned_view(frames[0], fovy, turn * step)
            both = known & wrong_known
            if both.any():
                assert psnr_on(both, warped, frames[i + 1]) > psnr_on(both, wrong, frames[i + 1]) + 3
            if i == 0:  # one heading: close to exact (the camera sits a little ahead of the axis it turns about)
                assert psnr_on(known, warped, frames[1]) > 24
                assert psnr_on(known, warped, frames[1]) > psnr_on(known, frames[0], frames[1]) + 3
        # Past the field of view nothing is left of the old view.
        assert not turned_view(frames[0], fovy, horizontal_fov(fovy, 64, 64))[1].any()


def test_turned_from_finds_the_nearest_views_at_the_same_place():
    views = PoseViews.start(action_motions(), 16, torch.zeros(1, 1, 1, 2, 2))
    views = views.with_views(views.poses_after("turn left", 2), torch.ones(1, 1, 2, 2, 2))  # headings 1, 2
    views = views.with_views(views.poses_after("walk forward", 1), torch.ones(1, 1, 1, 2, 2))
    here = views.pose
    assert views.turned_from(here, 3) == []  # a new place: nothing stored there
    origin = (0,) * 8
    assert views.turned_from((*origin, 15), 3) == [(0, -1), (1, -2), (2, -3)]
    assert views.turned_from((*origin, 4), 3) == [(2, 2), (1, 3)]
    assert views.turned_from((*origin, 4), 1) == []
    assert views.turned_from((*origin, 1), 3) == [(0, 1), (2, -1)]  # a tie: the older view first


@pytest.fixture(scope="module")
def fovy_pipe(tiny_pipe):
    parts = {name: getattr(tiny_pipe, name) for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    pipe = SlowFastVGenPipeline(**parts, context_window=tiny_pipe.config.context_window,
                                action_motions=action_motions(), pose_headings=16, camera_fovy=camera_fovy())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_pose_memory_recalls_turned_views_per_latent_pixel(fovy_pipe):
    episode = make_maze_episode(SEED, "full-turn", num_chunks=2, view_size=fovy_pipe.native_size)
    truth = episode.frames()
    chunks = [fovy_pipe.encode_frames(truth[:1]), fovy_pipe.encode_frames(truth[episode.chunk_slice(0)])]
    memory = memory_of(fovy_pipe, chunks, episode.actions[:1], settings=temp_lora_preset("poses"))
    assert memory.config.turn_views
    context = chunks[1]
    # Turning on: the next 3 headings are 1-3 turns from the last one seen, the 4th is a quarter turn away.
    latents, mask = fovy_pipe.recall_poses(memory, episode.actions[1], context, 4)
    assert latents.shape == (1, context.shape[1], 4, *context.shape[-2:]) and mask.shape == (1, 1, 4, *context.shape[-2:])
    covered = mask.mean(dim=(0, 1, 3, 4)).tolist()
    assert covered[0] > covered[1] > covered[2] > 0 and covered[3] == 0
    assert covered[0] > 0.3
    # Turning back: every pose was seen, so every frame comes back whole, as without turned views.
    back = "turn left" if episode.actions[0] == "turn right" else "turn right"
    latents_back, mask_back = fovy_pipe.recall_poses(memory, back, context, 3)
    assert bool(mask_back.all())
    exact = fovy_pipe.recall_poses(memory.with_config(TempLoRAConfig(poses=True, steps_per_update=0,
                                                                     turn_views=False)), back, context, 3)
    assert torch.equal(latents_back, exact[0])
    # Off, or with a model that records no field of view, only exact poses come back.
    off = memory.with_config(TempLoRAConfig(poses=True, steps_per_update=0, turn_views=False))
    assert fovy_pipe.recall_poses(off, episode.actions[1], context, 4) is None
    sampled = [fovy_pipe(episode.actions[1], context_latents=context, memory=m, output_type="latent",
                         generator=torch.Generator().manual_seed(4), **FAST).latents for m in (memory, off)]
    assert not torch.equal(*sampled)
    kept = mask[:, :, 0:1].expand_as(sampled[0][:, :, 0:1]).bool()
    assert torch.allclose(sampled[0][:, :, 0:1][kept], latents[:, :, 0:1][kept], atol=1e-4)  # kept as recalled


def test_turn_views_is_a_checked_setting_and_old_memories_have_it_on():
    with pytest.raises(ValueError, match="turn_views must be true or false"):
        TempLoRAConfig(poses=True, steps_per_update=0, turn_views="yes")
    assert TempLoRAConfig.from_json('{"poses": true, "steps_per_update": 0}').turn_views
