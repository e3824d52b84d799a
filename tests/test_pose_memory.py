"""The pose memory (`poses` preset): views kept at the pose the actions imply and brought back there, in
Memory Maze; and the evaluation's scoring, the same code for both worlds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slowfast_vgen.data.memory_maze import action_motions
from slowfast_vgen.data.memory_maze_episodes import PoseRevisits, make_maze_episode
from slowfast_vgen.data.episodes import RevisitMap, make_episode
from slowfast_vgen.evaluation import metrics
from slowfast_vgen.evaluation.scoring import score_video
from slowfast_vgen.pipelines import EpisodicMemory, SlowFastVGenPipeline, TempLoRAConfig, temp_lora_preset
from slowfast_vgen.pipelines.memorize import memory_of
from slowfast_vgen.pipelines.pose_memory import PoseViews

SEED = 2000
FAST = dict(num_inference_steps=2, guidance_scale=1.0)


@pytest.fixture(scope="module")
def maze_pipe(tiny_pipe):
    """The tiny model with Memory Maze's action motions in its config (a new pipeline: the shared one is
    left as it is)."""
    parts = {name: getattr(tiny_pipe, name) for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    pipe = SlowFastVGenPipeline(**parts, context_window=tiny_pipe.config.context_window,
                                action_motions=action_motions(), pose_headings=16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def full_turn(maze_pipe):
    episode = make_maze_episode(SEED, "full-turn", num_chunks=6, view_size=maze_pipe.native_size)
    return episode, episode.frames()


def test_a_memory_of_the_true_frames_brings_back_the_true_view(maze_pipe, full_turn):
    episode, truth = full_turn
    chunks = [maze_pipe.encode_frames(truth[:1])] + [maze_pipe.encode_frames(truth[episode.chunk_slice(i)])
                                                     for i in range(4)]
    memory = memory_of(maze_pipe, chunks, episode.actions[:4], settings=temp_lora_preset("poses"),
                       generator=torch.Generator().manual_seed(0))
    assert len(memory.poses) == 16  # a full turn: every heading once
    # Chunk 4 turns on to the headings chunk 0 showed, beyond the context (chunk 3): only memory has them.
    frames = maze_pipe(episode.actions[4], context_latents=chunks[4], memory=memory, output_type="np",
                       generator=torch.Generator().manual_seed(1), **FAST).frames[0]
    target = truth[episode.chunk_slice(4)]
    ceiling = metrics.masked_psnr(maze_pipe.postprocess(maze_pipe.encode_frames(target), "np")[0], target)
    assert metrics.masked_psnr(frames, target) >= ceiling - 1.0
    without = maze_pipe(episode.actions[4], context_latents=chunks[4], output_type="np",
                        generator=torch.Generator().manual_seed(1), **FAST).frames[0]
    assert not np.array_equal(without, frames)  # what came back is the memory's, not the model's


def test_memory_off_is_the_base_model_bit_for_bit(maze_pipe, full_turn):
    episode, truth = full_turn
    start = maze_pipe.encode_frames(truth[:1])
    actions = list(episode.actions[:2])
    base = [s.latents for s in maze_pipe.stream_episode(actions, start_latents=start, update_memory=False,
                                                        generator=torch.Generator().manual_seed(3), **FAST)]
    alone = []
    generator = torch.Generator().manual_seed(3)
    context = start
    for action in actions:
        context = maze_pipe(action, context_latents=context, generator=generator, output_type="latent", **FAST).latents
        alone.append(context.cpu())
    assert all(torch.equal(a, b) for a, b in zip(base, alone))
    # With a pose memory that has seen none of the new poses yet, the first chunk is also the base model's.
    first = next(iter(maze_pipe.stream_episode(actions, start_latents=start, memory_settings="poses",
                                               generator=torch.Generator().manual_seed(3), **FAST)))
    assert torch.equal(first.latents, base[0])


def test_branch_and_save_load_continue_equal_continuing(maze_pipe, full_turn, tmp_path):
    episode, truth = full_turn
    start = maze_pipe.encode_frames(truth[:1])
    steps = list(maze_pipe.stream_episode(list(episode.actions[:3]), start_latents=start, memory_settings="poses",
                                          generator=torch.Generator().manual_seed(5), **FAST))
    branch_point = steps[1]

    def continued(memory):
        return [s.latents for s in maze_pipe.stream_episode(
            list(episode.actions[2:]), start_latents=branch_point.latents, memory=memory,
            generator=torch.Generator().manual_seed(9), **FAST)]

    direct = continued(branch_point.memory)
    assert all(torch.equal(a, b) for a, b in zip(direct, continued(branch_point.memory)))  # a branch is a replay
    path = tmp_path / "poses.safetensors"
    branch_point.memory.save(path)
    loaded = EpisodicMemory.load(path)
    assert loaded.poses.keys == branch_point.memory.poses.keys and loaded.poses.pose == branch_point.memory.poses.pose
    assert all(torch.equal(a, b) for a, b in zip(direct, continued(loaded)))
    assert direct[-1].shape == steps[-1].latents.shape


def test_bad_input_is_named(maze_pipe, tiny_pipe, full_turn, tmp_path):
    episode, truth = full_turn
    start = maze_pipe.encode_frames(truth[:1])
    memory = memory_of(maze_pipe, [start, maze_pipe.encode_frames(truth[1:5])], episode.actions[:1],
                       settings=temp_lora_preset("poses"))
    with pytest.raises(ValueError, match="does not know what 'jump' does to the camera"):
        maze_pipe("jump", context_latents=start, memory=memory, **FAST)
    with pytest.raises(ValueError, match="records no action_motions"):
        tiny_pipe.update_memory(None, start, maze_pipe.encode_frames(truth[1:5]), action="turn left",
                                config=temp_lora_preset("poses"))
    with pytest.raises(ValueError, match="choose one"):
        TempLoRAConfig(panorama=True, poses=True)
    damaged = memory.poses.views.clone()
    damaged[0, 0, 0, 0] = float("nan")
    from dataclasses import replace

    bad = tmp_path / "bad.safetensors"
    replace(memory, poses=replace(memory.poses, views=damaged)).save(bad)
    with pytest.raises(ValueError, match="poses.views holds NaN"):
        EpisodicMemory.load(bad)
    assert not (tmp_path / "never.safetensors").exists()


def test_the_store_is_bounded_and_evicts_the_oldest():
    views = PoseViews.start({"walk forward": (0, 1)}, 16, torch.zeros(1, 2, 1, 3, 3), max_views=5)
    latents = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1).expand(1, 2, 8, 3, 3)
    views = views.with_views(views.poses_after("walk forward", 8), latents)
    assert len(views) == 5 and views.views.shape[0] == 5
    assert views.keys[-1][0] == 8  # eight quarter-cell steps along axis 0
    assert float(views.views[0, 0, 0, 0]) == 3.0  # the start and the first three steps were evicted


@pytest.mark.parametrize("world", ["toyworld", "memory-maze"])
def test_the_truth_scores_no_gain_and_the_psnr_cap(world):
    if world == "toyworld":
        episode = make_episode(SEED, "loop", 8)
        revisits = RevisitMap(episode)
    else:
        episode = make_maze_episode(SEED, "loop", 9)
        revisits = PoseRevisits(episode)
    truth = episode.frames()
    scores = score_video(episode, truth, truth, revisits)
    assert scores["revisit_psnr_truth"] == metrics.masked_psnr(truth, truth)  # the cap
    assert scores["revisit_psnr"] == scores["revisit_psnr_truth"]  # a revisit equals its first sighting
    assert sum(scores["revisit_pixels"]) > 0


def test_generate_defaults_to_the_pose_memory_for_a_model_with_action_motions(maze_pipe, tiny_pipe_dir, tmp_path):
    from slowfast_vgen.generate import default_preset

    maze_pipe.save_pretrained(tmp_path / "maze-model")
    assert default_preset(str(tmp_path / "maze-model")) == "poses"
    assert default_preset(str(tiny_pipe_dir)) == "panorama"  # ToyWorld-like: a panning camera
