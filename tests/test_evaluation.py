"""`slowfast-vgen evaluate`: metrics with known answers, revisit paths, the one-loop rule, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slowfast_vgen.data.episodes import PATH_FAMILIES, RevisitMap, load_path_file, make_episode
from slowfast_vgen.data.toyworld import DIRECTIONS, ToyWorld
from slowfast_vgen.evaluation import metrics
from slowfast_vgen.evaluation.evaluate import (
    EvaluationOptions,
    camera_motion,
    evaluate,
    evaluate_video,
    run_setting,
    score_video,
    src_pairs,
)
from slowfast_vgen.pipelines import TempLoRAConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT.parent)}
FAST = TempLoRAConfig(rank=4, learning_rate=1e-3)


# ---------------------------------------------------------------------------------------------- metrics


def test_one_hard_cut_is_one_scene_cut_and_a_pan_none():
    a, b = ToyWorld(1).rollout(["move right"], 19) / 255, ToyWorld(2).rollout(["move down"], 19) / 255
    assert metrics.scene_cuts(np.concatenate([a, b])) == 1
    assert metrics.scene_cuts(a) == 0


def test_exact_copies_score_the_cap_and_ssim_one():
    frames = np.random.default_rng(0).random((3, 16, 16, 3))
    assert metrics.masked_psnr(frames, frames) == metrics.PSNR_CAP_DB
    assert metrics.masked_ssim(frames, frames) == pytest.approx(1.0)
    assert np.isnan(metrics.masked_psnr(frames, frames, np.zeros((3, 16, 16), bool)))
    noisy = np.clip(frames + 0.1, 0, 1)
    assert 15 < metrics.masked_psnr(noisy, frames) < 25 and metrics.masked_ssim(noisy, frames) < 1


def test_truth_is_shift_consistent_at_the_cap_and_a_frozen_video_is_not():
    world = ToyWorld(3)
    positions = world.path(["move right", "move down"], 4)
    frames = np.stack([world.render(*p) for p in positions]) / 255
    assert np.all(metrics.shift_consistency(frames, positions) == metrics.PSNR_CAP_DB)
    frozen = np.repeat(frames[:1], len(frames), 0)
    assert np.all(metrics.shift_consistency(frozen, positions) < 30)


def test_camera_motion_is_measured_from_the_frames():
    world = ToyWorld(1000)
    for direction, (dx, dy) in DIRECTIONS.items():
        frames = world.rollout([direction], 4).astype(np.float32) / 255
        assert np.abs(camera_motion(frames) - np.array([dx, dy]) * world.step).max() < 0.5, direction


def test_src_of_an_exact_return_is_one_with_random_resnet_weights():
    episode = make_episode(2001, "out-and-back", 8)
    truth, revisits = episode.frames(), RevisitMap(episode)
    scores = score_video(episode, truth, truth, revisits, resnet=metrics.resnet18())
    assert scores["revisit_psnr"] == scores["revisit_psnr_truth"] == metrics.PSNR_CAP_DB
    assert 0.99 < scores["src"] < 1, "nearby views, not the same ones"
    pairs = src_pairs(episode, revisits)
    assert len(pairs) > 8 and all(later > earlier for later, earlier in pairs)
    copied = truth.copy()
    for later, earlier in pairs:  # every revisit a copy of its first visit
        copied[later] = copied[earlier]
    assert score_video(episode, copied, truth, revisits, resnet=metrics.resnet18())["src"] == pytest.approx(1.0, abs=1e-6)
    scrambled = truth.copy()
    scrambled[17:] = truth[17:, ::-1]  # the way back shows its places mirrored
    scores = score_video(episode, scrambled, truth, RevisitMap(episode), resnet=metrics.resnet18())
    assert scores["src"] < 0.999 and scores["revisit_psnr"] < 30


def test_resnet18_loads_from_torchvision_pth_and_safetensors(tmp_path):
    reference = metrics.resnet18()
    state = reference.state_dict()
    # torchvision's names for the same tensors, as its resnet18-f37072fd.pth has them (plus its classifier).
    torchvision_name = metrics.torchvision_to_transformers({key: key for key in _torchvision_keys()})
    assert set(torchvision_name) == set(state), "the mapping covers every tensor, one to one"
    torchvision_state = {torchvision_name[k]: v for k, v in state.items()}
    torchvision_state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(torchvision_state, tmp_path / "resnet18.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    frames = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    expected = metrics.resnet_features(reference, frames)
    for path in (tmp_path / "resnet18.pth", tmp_path / "model.safetensors", tmp_path):
        np.testing.assert_allclose(metrics.resnet_features(metrics.load_resnet18(path), frames), expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="microsoft/resnet-18"):
        metrics.load_resnet18(tmp_path / "absent.pth")
    save_file({"other.weight": torch.zeros(2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not ResNet-18 weights"):
        metrics.load_resnet18(tmp_path / "bad.safetensors")


def _torchvision_keys() -> list[str]:
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    for stage in range(1, 5):
        for block in range(2):
            for conv in (1, 2):
                keys.append(f"layer{stage}.{block}.conv{conv}.weight")
                keys += [f"layer{stage}.{block}.bn{conv}.{p}" for p in
                         ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
            if stage > 1 and block == 0:
                keys.append(f"layer{stage}.{block}.downsample.0.weight")
                keys += [f"layer{stage}.{block}.downsample.1.{p}" for p in
                         ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    return keys


# ---------------------------------------------------------------------------------------------- paths and revisits


@pytest.mark.parametrize("family", PATH_FAMILIES)
def test_every_family_comes_home_inside_the_world_and_revisits(family):
    for seed in range(2000, 2010):
        episode = make_episode(seed, family, 8)
        assert episode.positions[0] == episode.positions[-1], "every family returns to its start"
        xs, ys = zip(*episode.positions)
        assert min(xs + ys) >= 0 and max(xs + ys) <= episode.world.max_position
        revisits = RevisitMap(episode)
        assert sum(revisits.masks(i).sum() for i in range(episode.num_chunks)) > 0, (family, seed)
    if family in ("loop", "detour"):  # the way home is not the way out
        half = episode.num_chunks // 2
        out = set(episode.positions[:episode.chunk_slice(half).start])
        back = episode.positions[episode.chunk_slice(half).start:-1]
        assert sum(p in out for p in back) < len(back) // 2


def test_revisit_masks_in_world_coordinates_on_an_out_and_back():
    episode = make_episode(2001, "out-and-back", 8)
    revisits = RevisitMap(episode)
    assert all(not revisits.masks(i).any() for i in range(4)), "the way out sees nothing twice"
    # The first return chunk retraces its own context: only its last frame shows one step beyond it.
    assert [int(m.sum()) // 64 for m in revisits.masks(4)] == [0, 0, 0, 4]
    assert [int(m.sum()) // 64 for m in revisits.masks(5)] == [4, 8, 12, 16]
    truth = episode.frames()
    assert np.array_equal(revisits.first_sightings(truth), truth), "the truth's first sightings are itself"


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown path family 'spiral'"):
        make_episode(1, "spiral")
    with pytest.raises(ValueError, match="at least 2"):
        make_episode(1, "loop", num_chunks=1)
    far = tmp_path / "far.json"
    far.write_text(json.dumps({"actions": ["move right"] * 50}))  # 800 px in a 704 px range
    with pytest.raises(ValueError, match="leaves the world"):
        load_path_file(far, 1)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"actions": ["move right", "fly"]}))
    with pytest.raises(ValueError, match=r"actions\[1\].*does not know the action 'fly'"):
        load_path_file(unknown, 1)
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"actions": ["move right", "move up", "move left", "move down"], "start": [200, 200]}))
    episode = load_path_file(own, 1)
    assert episode.family == "own" and episode.positions[0] == (200, 200) == episode.positions[-1]


# ---------------------------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def tiny_world_dir(tmp_path_factory):
    from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline

    folder = tmp_path_factory.mktemp("tiny-eval-model")
    build_pipeline(WorldModelSpec.tiny(), seed=0).save_pretrained(folder)
    return folder


def tiny_options(output_dir, model, **changes) -> EvaluationOptions:
    options = dict(output_dir=str(output_dir), model=str(model), episodes=2, families=("out-and-back", "loop"),
                   chunks=4, steps=1, settings=("none", "fast"), custom_settings={"fast": {"rank": 4,
                   "learning_rate": 1e-3}}, strips=False)
    options.update(changes)
    return EvaluationOptions(**options)


def test_evaluation_runs_the_products_loop(tiny_pipe, tiny_world_dir, tmp_path):
    """The one-loop rule: an evaluated episode is `generate_episode` with the same seed and settings."""
    options = tiny_options(tmp_path, tiny_world_dir)
    episode = options.plan(tiny_pipe.native_size, tiny_pipe.context_window // 2)[1]
    start = tiny_pipe.encode_frames(episode.frames()[:1])
    latents = run_setting(tiny_pipe, episode, "fast", options, start)
    product = tiny_pipe.generate_episode(list(episode.actions), start_latents=start, temp_lora=FAST,
                                         num_frames=episode.chunk_frames, num_inference_steps=1, guidance_scale=2.0,
                                         generator=torch.Generator().manual_seed(episode.world.seed))
    assert torch.equal(latents, product.latents)
    plain = run_setting(tiny_pipe, episode, "none", options, start)
    first = episode.chunk_slice(0).stop
    assert torch.equal(latents[:, :, :first], plain[:, :, :first]), "same noise: the first chunk is the same"
    assert not torch.equal(latents, plain)


def test_teacher_forced_reads_memory_from_the_true_context(tiny_pipe, tiny_world_dir, tmp_path):
    """Same noise in every setting: a memory that changes nothing scores exactly what no memory scores, and
    each chunk is generated from the true chunk before it, so the figure does not depend on earlier chunks."""
    from slowfast_vgen.evaluation.evaluate import teacher_forced_revisit
    from slowfast_vgen.data.episodes import RevisitMap

    options = tiny_options(tmp_path, tiny_world_dir, settings=("none", "idle", "fast"), teacher_forced=True,
                           custom_settings={"idle": {"rank": 4, "learning_rate": 1e-30},
                                            "fast": {"rank": 4, "learning_rate": 1e-2, "steps_per_update": 2}})
    episode = options.plan(tiny_pipe.native_size, tiny_pipe.context_window // 2)[0]  # out-and-back: revisits
    truth, revisits = episode.frames(), RevisitMap(episode)
    scores = {name: teacher_forced_revisit(tiny_pipe, episode, name, options, truth, revisits)
              ["teacher_forced_revisit_psnr_truth"] for name in options.settings}
    assert scores["idle"] == scores["none"] and scores["fast"] != scores["none"]
    summary = evaluate(options)
    gain = summary["groups"]["all"]["settings"]["fast"]["gain"]["teacher_forced_revisit_psnr_truth"]
    assert gain["n"] == 2
    assert "teacher-forced PSNR, truth" in (tmp_path / "summary.md").read_text()


def test_a_stopped_evaluation_resumes_to_the_same_summary(tiny_world_dir, tmp_path):
    whole = evaluate(tiny_options(tmp_path / "whole", tiny_world_dir))
    assert whole["episodes"] == 2 and set(whole["groups"]) == {"all", "out-and-back", "loop"}
    gain = whole["groups"]["all"]["settings"]["fast"]["gain"]["revisit_psnr"]
    assert gain["n"] == 2 and 0 <= gain["episodes_improved"] <= 2
    # A run stopped during its second episode: one whole row, then a line cut short by the stop.
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    lines = (tmp_path / "whole" / "episodes-0.jsonl").read_text().splitlines()
    (stopped / "episodes-0.jsonl").write_text(lines[0] + "\n" + lines[1][:100])
    (stopped / "run.json").write_text((tmp_path / "whole" / "run.json").read_text())
    resumed = evaluate(tiny_options(stopped, tiny_world_dir))
    assert without_timings(resumed) == without_timings(whole)
    assert all(json.loads(line) for line in (stopped / "episodes-0.jsonl").read_text().splitlines())
    assert (stopped / "summary.md").is_file() and (stopped / "revisit_and_drift.png").is_file()
    with pytest.raises(ValueError, match="steps differ"):
        evaluate(tiny_options(stopped, tiny_world_dir, steps=2))


def test_a_folder_another_run_is_writing_into_is_refused(tmp_path):
    import subprocess
    import sys

    from slowfast_vgen.evaluation.runs import claim_run_folder

    busy = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from slowfast_vgen.evaluation.runs import claim_run_folder\n"
        f"claim_run_folder(Path({str(busy)!r}), {{'steps': 4}}); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (busy / "run.json").read_text()
        with pytest.raises(ValueError, match="Another run is writing into"):
            claim_run_folder(busy, {"steps": 4})
        assert (busy / "run.json").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    claim_run_folder(busy, {"steps": 4})  # the lock goes with the process that held it
    claim_run_folder(busy, {"steps": 4})  # and this process may resume its own run


def without_timings(value):
    """A summary less its wall-clock figures, which no two runs share."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    return value


@pytest.mark.parametrize("changes, match", [
    ({"episodes": 0}, "--episodes must be at least 1"),
    ({"families": ("spiral",)}, "unknown path family 'spiral'"),
    ({"settings": ("none", "magic")}, "unknown memory setting 'magic'"),
    ({"custom_settings": {"fast": {"rank": 0}}}, "--setting fast: TempLoRAConfig.rank"),
    ({"resnet18": "/nonexistent/resnet18.pth"}, "does not exist.*microsoft/resnet-18"),
    ({"steps": 0}, "--steps must be at least 1"),
])
def test_bad_options_are_refused_before_any_work(tiny_world_dir, tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        evaluate(tiny_options(tmp_path / "out", tiny_world_dir, **changes))
    assert not (tmp_path / "out").exists()


def test_a_generated_video_is_scored_and_a_mismatched_json_refused(tiny_world_dir, tmp_path):
    video = tmp_path / "episode.mp4"
    command = [sys.executable, "-m", "slowfast_vgen", "generate", str(video), "--model", str(tiny_world_dir),
               "--actions", "move right; move left", "--steps", "1", "--no-temp-lora", "--world-seed", "7"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = evaluate_video(str(video))
    assert scores["frames"] == 9 and len(scores["revisit_psnr_chunks"]) == 2 and "scuts" in scores
    summary = json.loads(video.with_suffix(".json").read_text())
    summary["frames"] = 12
    video.with_suffix(".json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="has 9 frames but its JSON says 12"):
        evaluate_video(str(video))


def test_two_processes_share_the_episodes_and_agree_with_one(tiny_world_dir, tmp_path):
    single = evaluate(tiny_options(tmp_path / "one", tiny_world_dir))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "slowfast_vgen", "evaluate", str(tmp_path / "two"), "--model", str(tiny_world_dir),
               "--episodes", "2", "--families", "out-and-back,loop", "--chunks", "4", "--steps", "1",
               "--settings", "none,fast", "--setting", 'fast={"rank": 4, "learning_rate": 1e-3}', "--no-strips"]
    result = subprocess.run(command, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted((tmp_path / "two").glob("episodes-*.jsonl"))
    assert [len(s.read_text().splitlines()) for s in shards] == [1, 1], "one episode each"
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["groups"]["all"]["settings"]["fast"]["revisit_psnr"] == single["groups"]["all"]["settings"]["fast"]["revisit_psnr"]
