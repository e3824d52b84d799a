"""Planning (paper section 3.4): the inverse dynamics model, the retrace task and its scores, the planner in
open and closed loop, the `plan` command and its bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from slowfast_vgen.cli import main as cli
from slowfast_vgen.data.retrace import (
    HELD_OUT_INSTRUCTIONS,
    RETRACE_INSTRUCTIONS,
    make_retrace_task,
    retrace_scores,
    retrace_task_from_actions,
)
from slowfast_vgen.data.toyworld import TRAIN_PARAPHRASES
from slowfast_vgen.paths import DEFAULT_IDM_DIR, DEFAULT_PLANNER_DIR
from slowfast_vgen.pipelines.inverse_dynamics import InverseDynamicsModel, action_index, frame_pairs
from slowfast_vgen.planning import plan_retrace, scripted_decomposer
from slowfast_vgen.planning.evaluate import idm_accuracy_true, true_pairs
from slowfast_vgen.planning.planner import execute, recall_for, untrained_instruction
from slowfast_vgen.pipelines import SlowFastVGenPipeline, TempLoRAConfig, temp_lora_preset
from slowfast_vgen.data.streams import EpisodeStream


@pytest.fixture(scope="module")
def tiny_idm():
    torch.manual_seed(0)
    return InverseDynamicsModel(sample_size=32, block_channels=(4, 8)).eval()


def tiny_task(seed: int = 3, **kwargs):
    return make_retrace_task(seed, view_size=32, chunk_frames=4, **kwargs)


# ---------------------------------------------------------------------------------------------- the task


def test_the_true_way_back_scores_zero_and_ends_home():
    task = make_retrace_task(2000)
    end = task.episode.positions[task.num_outward * task.episode.chunk_frames]
    walked = execute(task.episode.world, end, list(np.repeat(task.return_actions, task.episode.chunk_frames)))
    scores = retrace_scores(task, [end] + walked)
    assert scores["mean_closest_distance"] == 0 and scores["final_distance"] == 0 and scores["home"]


def test_staying_put_scores_the_distance_to_each_waypoint():
    task = retrace_task_from_actions(0, ["move right"] * 4, "go back to the start")
    end = task.waypoints[-1]
    scores = retrace_scores(task, [end])
    # Waypoints 0, 1/4, ... 1 view to the left of where the camera stays: distances 1, 3/4, ..., 0.
    assert scores["closest_distances"] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert scores["final_distance"] == 1.0 and not scores["home"]


def test_retrace_tasks_are_longer_than_the_context_window_and_turn_at_every_leg():
    for seed in range(20):
        task = make_retrace_task(seed)
        assert task.num_outward >= 4  # the context window holds 2 chunks
        legs = [a for i, a in enumerate(task.outward_actions) if i == 0 or a != task.outward_actions[i - 1]]
        assert len(legs) >= 2
        assert task.return_actions[-1] == "stay"
        assert len(task.waypoints) == task.num_outward + 1


def test_training_episodes_learn_the_way_back_with_an_instruction():
    task = make_retrace_task(7)
    labels = task.training_labels(random.Random(0))
    assert labels[:task.num_outward] == list(task.outward_actions)
    assert len(set(labels[task.num_outward:])) == 1 and labels[-1] in RETRACE_INSTRUCTIONS
    assert not set(HELD_OUT_INSTRUCTIONS) & set(RETRACE_INSTRUCTIONS)
    stream = EpisodeStream(4, 2, 3, 4, 32, seed=1, families=("retrace",))
    frames, actions, _ = stream.next_episode()
    assert len(frames) == 1 + 4 * len(actions) and actions[-1] in RETRACE_INSTRUCTIONS


def test_an_outward_path_that_leaves_the_world_is_refused():
    with pytest.raises(ValueError, match="leaves the world"):
        retrace_task_from_actions(0, ["move right"] * 60, "go back to the start")
    with pytest.raises(ValueError, match="does not know the action 'fly'"):
        retrace_task_from_actions(0, ["fly"], "go back to the start")


# ---------------------------------------------------------------------------------------------- the IDM


def test_the_shipped_inverse_dynamics_model_reads_true_actions():
    """The card's figure, on fewer pairs: held-out worlds, every direction and stay."""
    idm = InverseDynamicsModel.from_pretrained(DEFAULT_IDM_DIR).eval()
    result = idm_accuracy_true(idm, seeds=range(1000, 1004), pairs_per_world=25)
    assert result["accuracy"] >= 0.99, result


def test_true_pairs_show_the_action_they_are_labelled_with():
    frames, actions = true_pairs(range(5, 6), 5, 32)
    for pair, action in zip(frames, actions):
        if action == "stay":
            assert np.array_equal(pair[0], pair[1])
        else:
            assert not np.array_equal(pair[0], pair[1])


def test_idm_checks_its_frames(tiny_idm):
    with pytest.raises(ValueError, match="at least 2"):
        tiny_idm.predict_actions(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="reads 32x32 frames"):
        tiny_idm.predict_actions(np.zeros((3, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="divide uint8"):
        tiny_idm.predict_actions(np.zeros((3, 32, 32, 3), np.uint8))
    assert len(tiny_idm.predict_actions(np.zeros((300, 32, 32, 3), np.float32))) == 299  # across batches


def test_idm_saves_and_loads_as_safetensors(tiny_idm, tmp_path):
    tiny_idm.save_pretrained(tmp_path / "idm")
    assert (tmp_path / "idm" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = InverseDynamicsModel.from_pretrained(tmp_path / "idm")
    frames = np.random.default_rng(0).random((5, 32, 32, 3), dtype=np.float32)
    assert torch.equal(loaded.action_probabilities(frames), tiny_idm.action_probabilities(frames))


def test_frame_pairs_start_at_the_last_context_frame():
    video = torch.arange(2 * 5, dtype=torch.float32).view(1, 1, 10, 1, 1).expand(1, 3, 10, 2, 2)
    previous, following = frame_pairs(video, num_context=4)
    assert previous[:, 0, 0, 0].tolist() == [3, 4, 5, 6, 7, 8] and following[:, 0, 0, 0].tolist() == [4, 5, 6, 7, 8, 9]


def test_action_index_reads_paraphrases_and_refuses_unknown_actions():
    classes = InverseDynamicsModel().config.actions
    assert classes[action_index(classes, "walk west")] == TRAIN_PARAPHRASES["left"][0]
    with pytest.raises(ValueError, match="not one this inverse dynamics model knows"):
        action_index(classes, "jump")


def test_the_idm_stage_trains_and_saves_an_inverse_dynamics_model(tiny_pipe_dir, tmp_path):
    from slowfast_vgen.training.train import main as train

    output = tmp_path / "idm-run"
    assert train(["--stage", "idm", "--model", str(tiny_pipe_dir), "--output-dir", str(output), "--max-steps", "3",
                  "--batch-size", "2", "--world-seeds", "2", "--lr-warmup-steps", "1"]) == 0
    idm = InverseDynamicsModel.from_pretrained(output / "inverse_dynamics")
    assert idm.config.sample_size == 32 and len(idm.config.actions) == 5
    assert len((output / "loss.jsonl").read_text().splitlines()) == 3
    with pytest.raises(SystemExit, match="trained world model folder"):
        train(["--stage", "idm", "--model", "new:tiny", "--output-dir", str(tmp_path / "x"), "--max-steps", "1"])


# ---------------------------------------------------------------------------------------------- the planner


def test_scripted_decomposer_splits_at_then():
    assert scripted_decomposer("go back to the start") == ["go back to the start"]
    assert scripted_decomposer("move left, then go back to the start") == ["move left", "go back to the start"]
    assert scripted_decomposer("move up and then move left; stay") == ["move up", "move left", "stay"]


def test_untrained_instructions_are_named():
    assert untrained_instruction("go back to the start", scripted_decomposer) is None
    assert untrained_instruction("walk left then go back to where you started", scripted_decomposer) is None
    assert "fetch the key" in untrained_instruction("fetch the key", scripted_decomposer)


@pytest.mark.parametrize("closed_loop", [False, True], ids=["open", "closed"])
def test_a_plan_is_reproducible_and_executed_frame_by_frame(tiny_pipe, tiny_idm, closed_loop):
    task = tiny_task()
    memory = TempLoRAConfig(rank=2)
    kwargs = dict(temp_lora=memory, closed_loop=closed_loop, num_chunks=2, seed=5, num_inference_steps=2)
    first = plan_retrace(tiny_pipe, tiny_idm, task, **kwargs)
    again = plan_retrace(tiny_pipe, tiny_idm, task, **kwargs)
    assert first.actions == again.actions and np.array_equal(first.plan_frames, again.plan_frames)
    assert len(first.actions) == 2 * 4 and len(first.positions) == 1 + 2 * 4
    assert first.plan_frames.shape == first.executed_frames.shape == (1 + 2 * 4, 32, 32, 3)
    world = task.episode.world
    for position, frame in zip(first.positions, first.executed_frames):  # the execution is the true world
        assert np.allclose(frame, world.render(*position) / 255)
    assert first.scores == retrace_scores(task, first.positions)


def test_plans_with_and_without_memory_share_their_noise(tiny_pipe, tiny_idm):
    """Without a trip to remember (the first chunk planned before any update differs by memory alone): a
    memory whose updates change nothing plans exactly what no memory plans."""
    task = tiny_task()
    still = TempLoRAConfig(rank=2, learning_rate=1e-30)
    kwargs = dict(num_chunks=2, seed=9, num_inference_steps=2)
    plain = plan_retrace(tiny_pipe, tiny_idm, task, temp_lora=None, **kwargs)
    remembered = plan_retrace(tiny_pipe, tiny_idm, task, temp_lora=still, **kwargs)
    assert np.allclose(plain.plan_frames, remembered.plan_frames, atol=1e-4)


@pytest.mark.parametrize("closed_loop", [False, True], ids=["open", "closed"])
def test_a_panorama_memory_plans_the_true_way_back_on_the_shipped_models(closed_loop):
    """The panorama remembers the way the trip came; the way-back subgoal's chunks recall it backward, the
    inverse dynamics model reads the recalled frames, and the execution retraces every waypoint to the start
    and stops there. The same model without memory does not find the way (docs/planning.md)."""
    pipe = SlowFastVGenPipeline.from_pretrained(DEFAULT_PLANNER_DIR)
    pipe.set_progress_bar_config(disable=True)
    idm = InverseDynamicsModel.from_pretrained(DEFAULT_IDM_DIR)
    task = make_retrace_task(2001)
    kwargs = dict(closed_loop=closed_loop, num_chunks=task.num_outward + 2, seed=1)
    remembered = plan_retrace(pipe, idm, task, temp_lora=temp_lora_preset("panorama"), **kwargs)
    assert remembered.scores["mean_closest_distance"] == 0.0 and remembered.scores["final_distance"] == 0.0
    assert remembered.actions[-8:] == ["stay"] * 8  # home: the plan stands still
    plain = plan_retrace(pipe, idm, task, temp_lora=None, **kwargs)
    assert plain.scores["mean_closest_distance"] > 0.05


def test_only_way_back_subgoals_recall_the_way_back():
    panorama = temp_lora_preset("panorama")
    assert recall_for("Retrace your steps", panorama) == {"recall": "way back"}
    assert recall_for("move left", panorama) == {} and recall_for("go back to the start", None) == {}
    assert recall_for("go back to the start", temp_lora_preset("way-back")) == {}


def test_a_users_decomposer_is_used(tiny_pipe, tiny_idm):
    asked = []

    def decomposer(text):
        asked.append(text)
        return ["move left", "go back to the start"]

    result = plan_retrace(tiny_pipe, tiny_idm, tiny_task(), num_chunks=3, num_inference_steps=1,
                          decomposer=decomposer)
    assert asked == [tiny_task().instruction] and result.subgoals == ["move left", "go back to the start"]
    assert len(result.actions) == 3 * 4
    with pytest.raises(ValueError, match="decomposer gave"):
        plan_retrace(tiny_pipe, tiny_idm, tiny_task(), num_inference_steps=1, decomposer=lambda text: [])


def test_an_idm_of_another_frame_size_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="reads 64-pixel frames but the world model makes 32-pixel"):
        plan_retrace(tiny_pipe, InverseDynamicsModel(sample_size=64), tiny_task())


# ---------------------------------------------------------------------------------------------- the command


def test_plan_command_writes_video_and_scores_and_refuses_to_overwrite(tiny_pipe_dir, tiny_idm, tmp_path, capsys):
    tiny_idm.save_pretrained(tmp_path / "idm")
    output = tmp_path / "out" / "plan.mp4"
    args = ["plan", str(output), "--model", str(tiny_pipe_dir), "--idm", str(tmp_path / "idm"), "--steps", "1",
            "--outward", "move right; move right; move down", "--chunks", "2"]
    assert cli(args) == 0
    summary = json.loads(output.with_suffix(".json").read_text())
    assert len(summary["executed_actions"]) == 8 and "mean_closest_distance" in summary["scores"]
    import cv2

    capture = cv2.VideoCapture(str(output))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 9 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 64
    capture.release()
    before = output.read_bytes()
    assert cli(args) == 2
    assert "already exists" in capsys.readouterr().err and output.read_bytes() == before


@pytest.mark.parametrize("flags, message", [
    (["--outward", "move right; fly"], "--outward, action 2"),
    (["--outward", ";".join(["move right"] * 60)], "leaves the world"),
    (["--instruction", " "], "--instruction is empty"),
    (["--idm", "nowhere"], "not an inverse dynamics model folder"),
    (["--chunks", "0"], "--chunks must be at least 1"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_plan_command_bad_input(flags, message, tiny_pipe_dir, tiny_idm, tmp_path, capsys):
    tiny_idm.save_pretrained(tmp_path / "idm")
    output = tmp_path / "plan.mp4"
    args = ["plan", str(output), "--model", str(tiny_pipe_dir), "--idm", str(tmp_path / "idm")] + flags
    assert cli(args) == 2
    assert message in capsys.readouterr().err
    assert not output.exists() and not output.with_suffix(".json").exists()


def test_plan_command_refuses_an_idm_of_another_size(tiny_pipe_dir, tmp_path, capsys):
    InverseDynamicsModel(sample_size=64, block_channels=(4,)).save_pretrained(tmp_path / "idm64")
    assert cli(["plan", str(tmp_path / "p.mp4"), "--model", str(tiny_pipe_dir), "--idm", str(tmp_path / "idm64"),
                "--outward", "move right; move down"]) == 2
    assert "use the inverse dynamics model of this world model" in capsys.readouterr().err


def test_plan_eval_scores_every_row_and_resumes(tiny_pipe_dir, tiny_idm, tmp_path):
    from slowfast_vgen.planning.evaluate import PlanningOptions, evaluate_planning

    tiny_idm.save_pretrained(tmp_path / "idm")
    options = PlanningOptions(output_dir=str(tmp_path / "table"), models={"tiny": str(tiny_pipe_dir)},
                              idm=str(tmp_path / "idm"), episodes=1, steps=1, loops=("open",))
    first = evaluate_planning(options)
    assert first["episodes"] == 1 and set(first["rows"]) == {"tiny/none/open", "tiny/panorama/open"}
    options.episodes = 2
    second = evaluate_planning(options)  # the first episode is read back, not planned again
    rows = [json.loads(line) for line in (tmp_path / "table" / "episodes-0.jsonl").read_text().splitlines()]
    assert [row["episode"]["seed"] for row in rows] == [2000, 2001] and second["episodes"] == 2
    assert second["rows"]["tiny/panorama/open"]["vs_no_memory"]["episodes_improved"] in (0, 1, 2)
    assert "| tiny/none/open |" in (tmp_path / "table" / "summary.md").read_text()
    options.steps = 2
    with pytest.raises(ValueError, match="other settings"):
        evaluate_planning(options)


def test_plan_command_from_an_image_reads_the_plan_without_a_world(tiny_pipe_dir, tiny_idm, tmp_path):
    import cv2

    tiny_idm.save_pretrained(tmp_path / "idm")
    picture = tmp_path / "start.png"
    cv2.imwrite(str(picture), (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8))
    output = tmp_path / "own.mp4"
    assert cli(["plan", str(output), "--model", str(tiny_pipe_dir), "--idm", str(tmp_path / "idm"), "--steps", "1",
                "--image", str(picture), "--outward", "open the door; walk in", "--chunks", "1"]) == 0
    summary = json.loads(output.with_suffix(".json").read_text())
    assert len(summary["plan_actions"]) == 4 and summary["right"].startswith("the imagined way out")


def test_plan_command_warns_about_an_instruction_it_was_not_trained_for(tiny_pipe_dir, tiny_idm, tmp_path):
    tiny_idm.save_pretrained(tmp_path / "idm")
    with pytest.warns(UserWarning, match="not trained on the subgoal\\(s\\) \\['fetch the key'\\]; it plans anyway"):
        assert cli(["plan", str(tmp_path / "p.mp4"), "--model", str(tiny_pipe_dir), "--idm", str(tmp_path / "idm"),
                    "--steps", "1", "--outward", "move right; move down", "--chunks", "1",
                    "--instruction", "fetch the key"]) == 0
