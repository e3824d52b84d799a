"""Memory Maze, the 3-D world: exact views at a pose, invertible actions, families that revisit, the
episode cache, and bad input. The smallest maze (9 x 9) and a few frames keep it fast; one maze is built
once per process (building takes seconds) and reused."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from slowfast_vgen.data import memory_maze_episodes as episodes
from slowfast_vgen.data.memory_maze import (
    HEADINGS, MemoryMaze, Pose, parse_action, reverse_actions, sample_from_episode,
)

SEED = 2000


@pytest.fixture(scope="module")
def maze() -> MemoryMaze:
    return MemoryMaze(SEED)


def test_view_at_a_pose_is_exact_whatever_came_before(maze):
    pose = maze.start_pose()
    first = maze.render_pose(pose)
    maze.rollout(["turn left", "walk forward"], 4)  # render elsewhere in between
    assert np.array_equal(maze.render_pose(pose), first)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert first.std() > 5  # a real view, not a blank frame


def test_camera_view_is_the_frame_in_3d(maze):
    """`camera_view`: the frame is `render_pose`'s; the camera looks along its heading, a step forward moves it
    half a unit along its view, a turn moves it a little (it sits 0.15 units ahead of its turning axis); and a
    pixel lifted to 3-D by its depth lands, in another view, on a pixel of its colour (the depth is along the
    optical axis, in world units)."""
    pose = maze.start_pose()
    view = maze.camera_view(pose)
    assert np.array_equal(view.frame, maze.render_pose(pose))
    assert view.depth.shape == (64, 64) and np.all(view.depth > 0) and view.fovy == pytest.approx(80.0)
    assert np.allclose(view.rotation @ view.rotation.T, np.eye(3), atol=1e-6)
    look = -view.rotation[:, 2]
    flat = look[:2] / np.linalg.norm(look[:2])
    ahead = maze.camera_view(maze.step(pose, "walk forward"))
    assert np.allclose(ahead.position - view.position, [*(0.5 * flat), 0.0], atol=1e-6)
    turned = maze.camera_view(maze.step(pose, "turn left"))
    turned_flat = -turned.rotation[:2, 2] / np.linalg.norm(turned.rotation[:2, 2])
    turn = np.arctan2(flat[0] * turned_flat[1] - flat[1] * turned_flat[0], flat @ turned_flat)
    assert np.degrees(turn) == pytest.approx(22.5, abs=1e-4)  # counter-clockwise seen from above: left
    assert np.linalg.norm(turned.position - view.position) == pytest.approx(2 * 0.15 * np.sin(np.radians(11.25)), abs=1e-4)
    focal = 32 / np.tan(np.radians(view.fovy) / 2)

    def lifted(camera, row, column):
        depth = float(camera.depth[row, column])
        return camera.position + camera.rotation @ [(column - 31.5) / focal * depth, -(row - 31.5) / focal * depth, -depth]

    # Floor pixels, at the centre and near the corners, lie on one plane (a depth along the ray would not).
    assert all(abs(lifted(view, row, column)[2]) < 0.05 for row, column in ((55, 32), (60, 5), (60, 58), (48, 20)))
    point = lifted(ahead, 48, 20)
    local = view.rotation.T @ (point - view.position)
    u, v = 31.5 + focal * local[0] / -local[2], 31.5 - focal * local[1] / -local[2]
    assert 0 <= u < 64 and 0 <= v < 64 and (round(u), round(v)) != (20, 48)
    assert np.abs(view.frame[int(round(v)), int(round(u))].astype(float) - ahead.frame[48, 20]).max() < 40


def test_actions_are_invertible(maze):
    out_and_back = maze.rollout(["walk forward", "walk forward", "walk back", "walk back"], 4)
    assert np.array_equal(out_and_back[0], out_and_back[-1])
    assert np.array_equal(out_and_back[4], out_and_back[12])
    full_turn = maze.rollout(["turn left"] * 4, 4)
    assert np.array_equal(full_turn[0], full_turn[HEADINGS])
    left_right = maze.rollout(["turn left", "turn right"], 4)
    assert np.array_equal(left_right[0], left_right[-1])
    assert not np.array_equal(full_turn[0], full_turn[4])  # a quarter turn shows something else


def test_walls_stop_the_camera(maze):
    pose = maze.start_pose()
    ahead = maze.free_run(maze.start_cell, maze.start_heading)
    poses = maze.path(["walk forward"] * (ahead + 2), 4, pose)
    assert maze.pose_problem(poses[-1]) is None
    assert poses[-1] == poses[-5]  # the last chunk walked into the wall and stayed
    inside = Pose((0,) * 8, 0)
    for _ in range(maze.size * 8):  # walk the pose straight through walls, without the world's collisions
        inside = inside.moved("forward")
        if maze.pose_problem(inside):
            break
    with pytest.raises(ValueError, match="inside or against a wall"):
        maze.render_pose(inside)


def test_same_seed_same_frames_in_another_process(maze):
    code = ("import numpy as np, sys; from slowfast_vgen.data.memory_maze import MemoryMaze; "
            f"w = MemoryMaze({SEED}); sys.stdout.buffer.write(w.rollout(['turn left', 'walk forward'], 2).tobytes())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=300)
    other = np.frombuffer(result.stdout, np.uint8).reshape(5, 64, 64, 3)
    assert np.array_equal(other, maze.rollout(["turn left", "walk forward"], 2))


def test_actions_in_words_with_held_out_paraphrases():
    assert parse_action("Walk  Forward") == "forward"
    assert parse_action("rotate to the left") == "left"  # held out of training
    assert reverse_actions()["turn left"] == "turn right"
    assert reverse_actions()["walk ahead"] == "walk back"
    with pytest.raises(ValueError, match="Memory Maze does not know the action 'fly up'"):
        parse_action("fly up")


@pytest.mark.parametrize("family", episodes.PATH_FAMILIES_3D)
def test_every_family_revisits_poses_beyond_the_context(family):
    episode = episodes.make_maze_episode(SEED, family, num_chunks=10)
    revisits = episodes.PoseRevisits(episode)
    revisited = sum(int(revisits.masks(c)[:, 0, 0].sum()) for c in range(episode.num_chunks))
    assert revisited >= 1, family
    truth = episode.frames()
    sightings = revisits.first_sightings(truth)
    for chunk in range(episode.num_chunks):
        frames = episode.chunk_slice(chunk)
        mask = revisits.masks(chunk)
        # a revisited pose shows exactly the pixels of its first sighting
        assert np.array_equal(truth[frames][mask], sightings[frames][mask])


def test_loop_comes_back_from_the_other_side():
    episode = episodes.make_maze_episode(SEED, "loop", num_chunks=10)
    keys = [p.key() for p in episode.positions]
    assert keys[0] in keys[1:]  # back at the start pose...
    turns = [a for a in episode.actions if "turn" in a]
    assert len(turns) == 4 and len(set(turns)) == 1  # ...after four quarter turns the same way


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="seed must be a whole number from 0"):
        MemoryMaze(-1)
    with pytest.raises(ValueError, match="seed must be a whole number from 0"):
        MemoryMaze(2**31)
    with pytest.raises(ValueError, match="size must be one of"):
        MemoryMaze(1, size=10)
    with pytest.raises(ValueError, match="Unknown Memory Maze path family 'spiral'"):
        episodes.make_maze_episode(SEED, "spiral")


def test_missing_package_names_the_install_command():
    code = ("import sys; sys.modules['memory_maze'] = None\n"
            "from slowfast_vgen.data.memory_maze import MemoryMaze, MemoryMazeUnavailable\n"
            "try:\n    MemoryMaze(123)\nexcept MemoryMazeUnavailable as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert 'pip install -e ".[memory-maze]"' in result.stdout, result.stdout + result.stderr


def test_missing_opengl_names_mujoco_gl_and_the_package():
    code = ("from slowfast_vgen.data.memory_maze import MemoryMaze, MemoryMazeUnavailable\n"
            "try:\n    MemoryMaze(124)\nexcept MemoryMazeUnavailable as e:\n    print(e)\n")
    env = {**os.environ, "MUJOCO_GL": "no-such-backend"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "MUJOCO_GL" in result.stdout and "libosmesa6" in result.stdout, result.stdout + result.stderr


def test_cache_is_resumable_and_a_truncated_episode_is_recorded_again(tmp_path):
    kwargs = dict(per_maze=2, num_chunks=3)
    assert episodes.write_cache(tmp_path, range(SEED, SEED + 1), processes=1, **kwargs) == 2
    assert episodes.write_cache(tmp_path, range(SEED, SEED + 1), processes=1, **kwargs) == 0  # kept
    first = episodes.load_cache(tmp_path, range(SEED, SEED + 1), **kwargs)
    path = tmp_path / f"maze-{SEED:06d}-001.npz"
    path.write_bytes(path.read_bytes()[:1000])  # a run killed while writing (or a damaged disk)
    again = episodes.load_cache(tmp_path, range(SEED, SEED + 1), **kwargs)
    assert np.array_equal(again[1]["frames"], first[1]["frames"])
    assert again[0]["frames"].shape == (1 + 3 * 4, 64, 64, 3)  # exploring: as long as asked
    assert again[1]["frames"].shape[0] == 1 + 4 * len(again[1]["actions"])  # a family: as long as its path
    assert not list(tmp_path.glob("*.tmp"))


def test_ten_recorded_episodes_a_maze_hold_every_family_with_revisits(tmp_path):
    assert {episodes.recorded_family(index) for index in range(1, 10, 2)} == set(episodes.PATH_FAMILIES_3D)
    assert {episodes.recorded_family(index) for index in range(0, 10, 2)} == {"explore"}
    episodes.write_cache(tmp_path, range(SEED, SEED + 1), per_maze=2, num_chunks=3, processes=1)
    path = tmp_path / f"maze-{SEED:06d}-001.npz"
    with np.load(path) as data:  # an episode recorded under an older family plan is recorded again
        record = {key: data[key] for key in data.files}
    record["meta"] = np.array(str(record["meta"]).replace("out-and-back", "loop"))
    with open(path, "wb") as handle:
        np.savez(handle, **record)
    again = episodes.load_cache(tmp_path, range(SEED, SEED + 1), per_maze=2, num_chunks=3)
    assert [episode["family"] for episode in again] == ["explore", "out-and-back"]


def test_the_slow_fast_loop_trains_on_memory_maze_episodes(tmp_path):
    from slowfast_vgen.training.train import main as train_main

    run = ["--model", "new:tiny", "--stage", "slow-fast", "--data", "memory-maze", "--maze-cache",
           str(tmp_path / "cache"), "--world-seeds", "1", "--episodes-per-maze", "2", "--lr-warmup-steps", "1",
           "--temp-lora", '{"rank": 4, "learning_rate": 1e-3}', "--episode-chunks", "2", "3",
           "--families", "out-and-back", "--output-dir", str(tmp_path / "out"), "--max-steps", "1"]
    assert train_main(run) == 0
    index = json.loads((tmp_path / "out" / "model" / "model_index.json").read_text())
    recorded = json.loads((tmp_path / "out" / "run_config.json").read_text())["world_config"]
    assert recorded["camera_fovy"] == index["camera_fovy"] == 80.0 and recorded["pose_headings"] == 16
    assert recorded["action_motions"] == index["action_motions"]  # for `model export` of its checkpoints
    with pytest.raises(SystemExit, match="not a path family of --data memory-maze"):
        train_main([*run[:-4], "--families", "retrace", "--output-dir", str(tmp_path / "other")])


def test_training_samples_keep_the_action_of_their_frames():
    episode = episodes.make_maze_episode(SEED, "random-walk", num_chunks=6)
    frames = np.stack([episode.world.render_pose(p) for p in episode.positions])
    rng = random.Random(0)
    for _ in range(20):
        sample = sample_from_episode(rng, frames, list(episode.actions), 4, num_context=3, num_generate=2)
        assert sample.context.shape[0] == 3 and sample.target.shape[0] == 2
        places = [i for i in range(3, len(frames) - 1) if np.array_equal(frames[i - 3:i], sample.context)
                  and np.array_equal(frames[i:i + 2], sample.target) and (i - 1) % 4 <= 2]
        assert any(parse_action(sample.action) == parse_action(episode.actions[(i - 1) // 4]) for i in places)
    assert sample_from_episode(rng, frames, list(episode.actions), 4, num_context=3, num_generate=5) is None


def test_generate_in_memory_maze(tiny_pipe_dir, tmp_path):
    import json

    from slowfast_vgen.cli import main as cli_main

    video = tmp_path / "maze.mp4"
    code = cli_main(["generate", str(video), "--model", str(tiny_pipe_dir), "--world", "memory-maze",
                     "--world-seed", str(SEED), "--steps", "1", "--no-temp-lora", "--actions",
                     "walk forward; rotate to the left"])
    assert code == 0
    summary = json.loads(video.with_suffix(".json").read_text())
    assert summary["world"] == "memory-maze" and summary["world_seed"] == SEED and summary["frames"] == 9


def test_generate_refuses_a_maze_seed_out_of_range(tiny_pipe_dir, tmp_path, capsys):
    from slowfast_vgen.cli import main as cli_main

    code = cli_main(["generate", str(tmp_path / "x.mp4"), "--model", str(tiny_pipe_dir), "--world", "memory-maze",
                     "--world-seed", "-1", "--actions", "stay"])
    assert code == 2
    assert "--world-seed must be a whole number from 0 to 2147483647 for memory-maze, got -1." in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_start_frame_node_renders_either_world():
    from slowfast_vgen.nodes.nodes_episode import ToyWorldStartFrame

    node = ToyWorldStartFrame()
    maze = node.render(seed=SEED, size=64, world="memory-maze")[0]
    assert maze.shape == (1, 64, 64, 3) and 0 <= float(maze.min()) and float(maze.max()) <= 1
    expected = MemoryMaze(SEED).start_frame().astype(np.float32) / 255
    assert np.array_equal(maze[0].numpy(), expected)
    assert node.render(seed=SEED + 2**31, size=64, world="memory-maze")[0].equal(maze)  # the seed modulo 2**31
    assert not node.render(seed=SEED, size=64)[0].equal(maze)  # ToyWorld stays the default
    with pytest.raises(ValueError, match="Memory Maze renders frames of at least 16"):
        node.render(seed=SEED, size=8, world="memory-maze")
    with pytest.raises(ValueError, match="world: 'mars' is not one of"):
        node.render(seed=SEED, size=64, world="mars")


def test_gate_1_scores_every_motion_and_per_frame(tiny_pipe_dir):
    """Gate 1 (`evaluation.maze_quality`) on one maze: every motion and wording scored, the baselines, and
    with --samples the per-frame split; staying put, repeating the last frame is the truth itself."""
    from slowfast_vgen.data.memory_maze import MOTIONS
    from slowfast_vgen.evaluation.maze_quality import maze_next_chunk_quality
    from slowfast_vgen.pipelines import SlowFastVGenPipeline

    pipe = SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    result = maze_next_chunk_quality(pipe, range(SEED, SEED + 1), steps=1, samples=2)
    chunk = pipe.context_window // 2
    for motion in MOTIONS:
        assert {"psnr", "ssim"} <= set(result[f"{motion}/seen"]) and result[f"{motion}/held_out"]["psnr"]["n"] == 1
        per_frame = result[f"{motion}/per_frame"]
        assert len(per_frame) == 3 * chunk + 1 and per_frame["mean_of_2_frame1"]["n"] == 1
        assert per_frame["mean_of_2_chunk"]["n"] == 1
    assert all(result["stay/per_frame"][f"repeat_last_frame{i + 1}"]["mean"] == 100.0 for i in range(chunk))
    assert result["forward/per_frame"]["repeat_last_frame1"]["mean"] < 100.0


def test_gate_1_with_the_pose_memory_brings_back_the_way_back(tiny_pipe_dir):
    """`maze_quality --memory poses`: the memory learned the start frame and the context (a walk forward), so
    walking back comes back as the truth's own frames through the VAE (the ceiling); without it the tiny model
    guesses."""
    from slowfast_vgen.data.memory_maze import action_motions
    from slowfast_vgen.evaluation.maze_quality import maze_next_chunk_quality
    from slowfast_vgen.pipelines import SlowFastVGenPipeline, temp_lora_preset

    pipe = SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir)
    pipe.register_to_config(action_motions=action_motions(), pose_headings=16)
    pipe.set_progress_bar_config(disable=True)
    with_memory = maze_next_chunk_quality(pipe, range(SEED, SEED + 1), steps=1, memory=temp_lora_preset("poses"))
    alone = maze_next_chunk_quality(pipe, range(SEED, SEED + 1), steps=1)
    ceiling = with_memory["back/baselines"]["vae_ceiling_psnr"]["mean"]
    assert with_memory["back/seen"]["psnr"]["mean"] == pytest.approx(ceiling, abs=0.01)
    assert with_memory["back/held_out"]["psnr"]["mean"] == pytest.approx(ceiling, abs=0.01)
    assert abs(alone["back/seen"]["psnr"]["mean"] - ceiling) > 0.1
    assert with_memory["forward/seen"] == alone["forward/seen"]  # nothing known ahead: the model alone


def test_the_3_level_spec_is_the_larger_model_the_card_measures():
    """`WorldModelSpec.memory_maze_3_levels` differs from the shipped size in its UNet only: 3 levels (the
    variant `benchmarks/bench_unet_sizes.py` times), Memory Maze's words in the vocabulary."""
    from slowfast_vgen.data.memory_maze import EXTRA_WORDS
    from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline

    spec, shipped = WorldModelSpec.memory_maze_3_levels(), WorldModelSpec.memory_maze()
    assert spec.unet_channels == (32, 64, 128) and spec.extra_words == EXTRA_WORDS
    assert {k: v for k, v in spec.to_dict().items() if k != "unet_channels"} == \
        {k: v for k, v in shipped.to_dict().items() if k != "unet_channels"}
    unet = build_pipeline(spec).unet
    assert unet.config.down_block_types == ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == 5.14
