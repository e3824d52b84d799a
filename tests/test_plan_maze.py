"""Planning in Memory Maze (`plan --world memory-maze`, `plan-eval --world memory-maze`): the maze's retrace task
and its scores in cells and degrees, the way back as the reversed way out, the planner end to end on a tiny
world model, the inverse dynamics model's maze data, and bad input. The smallest maze (9 x 9), 32-pixel frames
and tiny random models keep it fast; skipped where Memory Maze is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("memory_maze")

from slowfast_vgen.cli import main as cli  # noqa: E402
from slowfast_vgen.data import memory_maze  # noqa: E402
from slowfast_vgen.data.retrace import (  # noqa: E402
    PLANNING_WORLDS, make_maze_retrace_task, maze_retrace_task_from_actions, retrace_scores,
)
from slowfast_vgen.evaluation.protocols import decode  # noqa: E402
from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline, temp_lora_preset  # noqa: E402
from slowfast_vgen.pipelines.inverse_dynamics import MAZE_ACTIONS, InverseDynamicsModel, action_index  # noqa: E402
from slowfast_vgen.planning import plan_retrace  # noqa: E402
from slowfast_vgen.planning.evaluate import PlanningOptions, evaluate_planning, true_pairs  # noqa: E402
from slowfast_vgen.planning.planner import execute, reversing_decomposer  # noqa: E402

SEED = 2000


@pytest.fixture(scope="module")
def maze_pipe():
    """A tiny random world model that knows what Memory Maze's actions do to the camera and how to undo them
    (what `train --data memory-maze` records in a model folder)."""
    pipe = build_pipeline(WorldModelSpec.tiny(), seed=0)
    pipe.register_to_config(action_motions=memory_maze.action_motions(), pose_headings=memory_maze.HEADINGS,
                            reverse_actions=memory_maze.reverse_actions())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def maze_idm():
    torch.manual_seed(0)
    return InverseDynamicsModel(actions=MAZE_ACTIONS, sample_size=32, block_channels=(4, 8)).eval()


@pytest.fixture(scope="module")
def maze_folders(maze_pipe, maze_idm, tmp_path_factory):
    root = tmp_path_factory.mktemp("maze_models")
    maze_pipe.save_pretrained(root / "model")
    maze_idm.save_pretrained(root / "idm")
    InverseDynamicsModel(sample_size=32, block_channels=(4,)).save_pretrained(root / "toyworld-idm")
    return root


def task(**kwargs):
    return make_maze_retrace_task(SEED, view_size=32, **kwargs)


# ---------------------------------------------------------------------------------------------- the task and scores


def test_the_true_reversed_way_out_scores_zero_and_ends_home_facing_the_start():
    retrace = task()
    assert retrace.world_name == "memory-maze" and 4 <= retrace.num_outward <= 6
    assert retrace.return_actions[-1] == "stay" and len(retrace.waypoints) == retrace.num_outward + 1
    end = retrace.episode.positions[retrace.num_outward * 4]
    walked = execute(retrace.episode.world, end, list(np.repeat(retrace.return_actions, 4)))
    scores = retrace_scores(retrace, [end] + walked)
    assert scores == {**scores, "mean_closest_distance": 0.0, "final_distance": 0.0, "final_heading_error": 0.0,
                      "home": True, "units": "cells"}


def test_maze_scores_are_in_cells_and_degrees():
    retrace = maze_retrace_task_from_actions(SEED, ["walk forward", "turn left", "turn left"], "go back to the start",
                                             view_size=32)
    end = retrace.waypoints[-1]  # a cell ahead of the start, facing back
    scores = retrace_scores(retrace, [end])
    assert scores["closest_distances"] == [1.0, 0.0, 0.0, 0.0]  # positions only: the heading is scored apart
    assert scores["final_distance"] == 1.0 and scores["final_heading_error"] == 180.0 and not scores["home"]
    turned = retrace_scores(retrace, [retrace.episode.positions[4]])  # a cell ahead, still facing the start's way
    assert turned["final_heading_error"] == 0.0
    home_facing_back = retrace_scores(retrace, [retrace.start.moved("left").moved("left").moved("left")])
    assert home_facing_back["final_distance"] == 0.0 and home_facing_back["final_heading_error"] == 67.5
    assert not home_facing_back["home"]  # at the start but facing 67.5 degrees off: another view


def test_held_out_way_outs_go_somewhere_and_never_walk_into_a_wall():
    for seed in range(SEED, SEED + 4):
        retrace = make_maze_retrace_task(seed, view_size=32)
        walks = [a for a in retrace.outward_actions if a in ("walk forward", "walk back")]
        assert len(walks) >= 2 and len(walks) < retrace.num_outward
        assert retrace.waypoints[-1].offset() != retrace.start.offset()
        assert retrace.episode.positions[-1] == retrace.start  # the true way back undoes it exactly


def test_the_way_back_is_the_way_out_reversed_from_the_model_folders_table():
    decompose = reversing_decomposer(["walk forward", "spin left", "walk back"], memory_maze.reverse_actions())
    assert decompose("go back to the start") == ["walk forward", "turn right", "walk back", "stay"]
    assert decompose("turn left, then retrace your steps") == ["turn left", "walk forward", "turn right", "walk back",
                                                               "stay"]
    with pytest.raises(ValueError, match="records no reverse of 'fly'"):
        reversing_decomposer(["fly"], memory_maze.reverse_actions())


def test_true_maze_pairs_show_their_action():
    frames, actions = true_pairs(range(SEED, SEED + 1), 10, 32, world="memory-maze")
    assert frames.shape == (10, 2, 32, 32, 3) and actions == list(MAZE_ACTIONS) * 2
    for pair, action in zip(frames, actions):
        assert np.array_equal(pair[0], pair[1]) == (action == "stay")
    assert action_index(MAZE_ACTIONS, "spin left") == MAZE_ACTIONS.index("turn left")


# ---------------------------------------------------------------------------------------------- the planner


@pytest.mark.parametrize("closed_loop", [False, True], ids=["open", "closed"])
def test_a_maze_plan_is_the_reversed_way_out_imagined_then_executed_frame_by_frame(maze_pipe, maze_idm,
                                                                                   closed_loop):
    retrace = task()
    result = plan_retrace(maze_pipe, maze_idm, retrace, temp_lora=temp_lora_preset("poses"), closed_loop=closed_loop,
                          seed=3, num_inference_steps=1)
    assert result.subgoals == list(retrace.return_actions)  # the reversed way out, then "stay"
    frames = 4 * (retrace.num_outward + 1)
    assert len(result.actions) == frames and len(result.positions) == 1 + frames
    assert result.plan_frames.shape == result.executed_frames.shape == (1 + frames, 32, 32, 3)
    assert set(result.actions) <= set(MAZE_ACTIONS)
    world = retrace.episode.world
    for pose, frame in zip(result.positions, result.executed_frames):  # executed in the true maze
        assert np.allclose(frame, world.render_pose(pose) / 255)
    assert result.scores == retrace_scores(retrace, result.positions) and result.scores["units"] == "cells"


def test_the_pose_memory_brings_back_the_way_out_in_the_plan(maze_pipe, maze_idm):
    """The first planned chunk walks back through the last outward chunk: with the pose memory its frames are the
    views seen there (through the VAE), whatever the world model would draw; without memory they are not."""
    retrace = task()
    outward = retrace.outward_frames()
    end = retrace.num_outward * 4
    seen = decode(maze_pipe, maze_pipe.encode_frames(outward[[end - 1, end - 2, end - 3, end - 4]]))
    kwargs = dict(seed=3, num_inference_steps=2)
    remembered = plan_retrace(maze_pipe, maze_idm, retrace, temp_lora=temp_lora_preset("poses"), **kwargs)
    plain = plan_retrace(maze_pipe, maze_idm, retrace, temp_lora=None, **kwargs)
    assert np.abs(remembered.plan_frames[1:5] - seen).max() < 1e-3
    assert np.abs(plain.plan_frames[1:5] - seen).max() > 0.1


def test_plan_command_in_memory_maze_writes_the_plan_in_cells(maze_folders, tmp_path, capsys):
    output = tmp_path / "maze-plan.mp4"
    code = cli(["plan", str(output), "--world", "memory-maze", "--world-seed", str(SEED), "--model",
                str(maze_folders / "model"), "--idm", str(maze_folders / "idm"), "--steps", "1"])
    assert code == 0 and output.stat().st_size > 0
    summary = json.loads(output.with_suffix(".json").read_text())
    assert summary["world"] == "memory-maze" and summary["temp_lora"]["poses"]  # the maze's default memory
    assert summary["subgoals"] == ["walk back", "turn right", "turn right", "walk back", "walk back", "stay"]
    assert summary["scores"]["units"] == "cells" and "final_heading_error" in summary["scores"]
    assert all(len(pose) == 9 for pose in summary["positions"])  # 8 axes' steps and the heading
    assert "cells" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--outward", "walk forward; fly up"], "--outward, action 2 (--world memory-maze): Memory Maze does not know "
                                             "the action 'fly up'"),
    (["--outward", "move left; move up"], "Memory Maze does not know the action 'move left'"),
    (["--outward", "; ".join(["walk forward"] * 12)], "walks into a wall"),
    (["--start", "0", "0"], "--start is ToyWorld's"),
    (["--idm", "TOYWORLD_IDM"], "which memory-maze cannot execute"),
    (["--world-seed", "-1"], "--world-seed must be a whole number from 0 to 2147483647 for memory-maze"),
], ids=["unknown-action", "toyworld-action", "into-a-wall", "start", "toyworld-idm", "seed"])
def test_plan_command_in_memory_maze_bad_input(flags, message, maze_folders, tmp_path, capsys):
    output = tmp_path / "bad.mp4"
    flags = [str(maze_folders / "toyworld-idm") if flag == "TOYWORLD_IDM" else flag for flag in flags]
    args = ["plan", str(output), "--world", "memory-maze", "--world-seed", str(SEED), "--model",
            str(maze_folders / "model"), "--idm", str(maze_folders / "idm"), "--steps", "1"] + flags
    assert cli(args) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_plan_eval_in_memory_maze_compares_memories_in_cells(maze_folders, tmp_path):
    options = PlanningOptions(output_dir=str(tmp_path / "table"), world="memory-maze",
                              models={"tiny": str(maze_folders / "model")}, idm=str(maze_folders / "idm"),
                              episodes=1, first_seed=SEED, settings=("none", "poses"), loops=("open",), steps=1)
    summary = evaluate_planning(options)
    assert summary["world"] == "memory-maze" and summary["units"] == "cells" and summary["episodes"] == 1
    assert set(summary["rows"]) == {"tiny/none/open", "tiny/poses/open"}
    assert "distances in cells" in (tmp_path / "table" / "summary.md").read_text()


def test_plan_eval_refuses_an_idm_of_another_world_before_writing(maze_folders, tmp_path, capsys):
    output = tmp_path / "table"
    assert cli(["plan-eval", str(output), "--world", "memory-maze", "--models", f"tiny={maze_folders / 'model'}",
                "--idm", str(maze_folders / "toyworld-idm"), "--episodes", "1"]) == 2
    assert "which memory-maze cannot execute" in capsys.readouterr().err and not output.exists()


# ---------------------------------------------------------------------------------------------- training the IDM


def test_the_idm_stage_trains_on_memory_maze_episodes(maze_folders, tmp_path):
    from slowfast_vgen.training.train import main as train

    output = tmp_path / "idm-run"
    assert train(["--stage", "idm", "--data", "memory-maze", "--model", str(maze_folders / "model"), "--maze-cache",
                  str(tmp_path / "cache"), "--world-seeds", "1", "--episodes-per-maze", "2", "--output-dir",
                  str(output), "--max-steps", "2", "--batch-size", "2", "--lr-warmup-steps", "1"]) == 0
    idm = InverseDynamicsModel.from_pretrained(output / "inverse_dynamics")
    assert tuple(idm.config.actions) == MAZE_ACTIONS and idm.config.sample_size == 32
    assert PLANNING_WORLDS["memory-maze"].parse_action(idm.config.actions[2]) == "left"
