"""The slow-fast learning loop (paper Algorithm 1 (b)) on the tiny model: records, frozen Θ, Φ learning,
exact resume, two processes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from slowfast_vgen.data.streams import EpisodeStream
from slowfast_vgen.pipelines import SlowFastVGenPipeline, TempLoRAConfig, WorldModelSpec, build_pipeline
from slowfast_vgen.pipelines.temp_lora import memory_applied
from slowfast_vgen.training import slow_fast
from slowfast_vgen.training import train as train_module
from slowfast_vgen.training.train import main as train_main
from slowfast_vgen.training.train import masked_diffusion_loss

ENV_RUN = ["--model", "new:tiny", "--world-seeds", "2", "--lr-warmup-steps", "1", "--stage", "slow-fast",
           "--temp-lora", '{"rank": 4, "learning_rate": 1e-3}', "--episode-chunks", "2", "3"]
FAST = TempLoRAConfig(rank=4, learning_rate=1e-2)


def rank_report(folder, rank: int = 0) -> dict:
    return json.loads((folder / "ranks" / f"rank-{rank}.json").read_text())


@pytest.fixture
def pipe():
    """A fresh tiny pipeline (these tests train its UNet)."""
    built = build_pipeline(WorldModelSpec.tiny(), seed=0)
    built.set_progress_bar_config(disable=True)
    return built


def episode(pipe, seed: int = 1, chunks: int = 4):
    stream = EpisodeStream(2, chunks, chunks, pipe.context_window // 2, pipe.native_size, seed=seed)
    frames, actions, path_seed = stream.next_episode()
    return slow_fast.episode_chunks(pipe, frames, pipe.context_window // 2, "cpu"), actions, path_seed


def loss_function(pipe, seed: int):
    noise_scheduler = train_module.DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)

    def loss_of(model, latents, num_context, action):
        embeds = train_module.encode_actions(pipe, pipe.text_encoder, [action], "cpu")
        return masked_diffusion_loss(model, noise_scheduler, latents, num_context, embeds, generator)

    return loss_of


def test_the_inner_loop_records_each_memory_before_its_update(pipe):
    chunks, actions, path_seed = episode(pipe)
    records = list(slow_fast.inner_loop(pipe, chunks, actions, FAST, slow_fast.episode_memory_generator(path_seed)))
    assert len(records) == len(actions) >= 2
    assert [r.memory.num_updates for r in records] == list(range(len(actions))), "Θ_0 is empty; Θ_i saw i updates"
    assert all(torch.all(t == 0) for k, t in records[0].memory.lora.items() if "lora_B" in k), "Θ_0 changes nothing"
    for index, record in enumerate(records):
        assert record.previous is chunks[index] and record.target is chunks[index + 1]
        assert record.action == actions[index]
    assert chunks[0].shape[2] == 1, "X_0 is the start frame, as an episode starts"
    # The memories are those of the product's loop over the true chunks, update for update.
    memory, generator = None, slow_fast.episode_memory_generator(path_seed)
    for index, record in enumerate(records[:-1]):
        memory = pipe.update_memory(memory or pipe.new_memory(FAST), chunks[index], chunks[index + 1],
                                    action=actions[index], generator=generator)
        assert all(torch.equal(memory.lora[k], records[index + 1].memory.lora[k]) for k in memory.lora)


def test_without_fast_learning_every_record_holds_the_empty_memory(pipe):
    """--temp-lora none ("wo Loop"): the same episodes and records, Θ never trained."""
    chunks, actions, path_seed = episode(pipe)
    records = list(slow_fast.inner_loop(pipe, chunks, actions, None, slow_fast.episode_memory_generator(path_seed)))
    assert len(records) == len(actions) and all(r.memory.num_updates == 0 for r in records)
    assert slow_fast.parse_temp_lora("none") is None and slow_fast.parse_temp_lora(" None ") is None


def test_the_loop_trains_on_the_retrace_task(tmp_path):
    assert train_main([*ENV_RUN, "--families", "retrace", "--output-dir", str(tmp_path / "out"),
                       "--max-steps", "1"]) == 0
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["families"] == ["retrace"]


def test_the_outer_step_moves_phi_and_leaves_theta_untouched(pipe):
    chunks, actions, path_seed = episode(pipe)
    records = list(slow_fast.inner_loop(pipe, chunks, actions, FAST, slow_fast.episode_memory_generator(path_seed)))
    thetas = [{k: t.clone() for k, t in r.memory.lora.items()} for r in records]
    with memory_applied(pipe.unet, records[0].memory):
        pass
    phi = {n: p for n, p in pipe.unet.named_parameters() if ".lora_" not in n}
    lora = [p for n, p in pipe.unet.named_parameters() if ".lora_" in n]
    before = {n: p.detach().clone() for n, p in phi.items()}
    for parameter in phi.values():
        parameter.requires_grad_(True)
    accelerator = Accelerator(cpu=True)
    loss = slow_fast.learn_episode(accelerator, pipe.unet, pipe, iter(records), len(records), loss_function(pipe, 0))
    assert loss > 0 and all(p.grad is None for p in lora), "no gradient reaches Θ"
    assert sum(float(p.grad.abs().sum()) for p in phi.values() if p.grad is not None) > 0, "the gradient reaches Φ"
    torch.optim.SGD(list(phi.values()), lr=1e-2).step()
    assert any(not torch.equal(before[n], p) for n, p in phi.items()), "Φ moved"
    for theta, record in zip(thetas, records):
        assert all(torch.equal(theta[k], record.memory.lora[k]) for k in theta), "Θ_i bit-identical"


def test_a_few_loop_rounds_lower_the_loss_on_a_fixed_episode_set(pipe):
    episodes = [episode(pipe, seed) for seed in (1, 2)]
    with memory_applied(pipe.unet, pipe.new_memory(FAST)):
        pass
    phi = [p for n, p in pipe.unet.named_parameters() if ".lora_" not in n]
    for parameter in phi:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(phi, lr=3e-3)
    accelerator = Accelerator(cpu=True)

    def round_loss(train: bool) -> float:
        total = 0.0
        for chunks, actions, path_seed in episodes:  # the inner loops rerun with the current Φ, as in (b)
            records = slow_fast.inner_loop(pipe, chunks, actions, FAST, slow_fast.episode_memory_generator(path_seed))
            total += slow_fast.learn_episode(accelerator, pipe.unet, pipe, records, len(actions),
                                             loss_function(pipe, path_seed))
            if train:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return total / len(episodes)

    first = round_loss(train=False)
    for _ in range(8):
        round_loss(train=True)
    assert round_loss(train=False) < 0.8 * first


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_main([*ENV_RUN, "--output-dir", str(whole), "--max-steps", "2", "--checkpointing-steps", "1",
                       "--checkpoints-total-limit", "0"]) == 0
    train_main([*ENV_RUN, "--output-dir", str(resumed), "--max-steps", "2", "--checkpointing-steps", "1",
                "--resume-from-checkpoint", str(whole / "checkpoint-1")])
    assert rank_report(resumed)["steps"] == 2
    assert rank_report(resumed)["weights_sha256"] == rank_report(whole)["weights_sha256"]
    losses = [json.loads(line)["loss"] for line in (whole / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert (whole / "model" / "model_index.json").is_file()
    saved = json.loads((whole / "model" / "unet" / "config.json").read_text())
    assert "lora" not in json.dumps(saved).lower(), "Temp-LoRA never leaks into the saved world model"


def test_two_processes_end_with_the_same_phi(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "slowfast_vgen.training.train", *ENV_RUN, "--output-dir", str(tmp_path), "--max-steps", "2",
               "--checkpointing-steps", "100", "--cpu"]
    result = subprocess.run(command, env={**train_module.os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [rank_report(tmp_path, rank) for rank in (0, 1)]
    assert {r["world_size"] for r in reports} == {2} and [r["steps"] for r in reports] == [2, 2]
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]


def test_a_nan_step_is_skipped_and_never_written(tmp_path, monkeypatch):
    real = train_module.masked_diffusion_loss
    monkeypatch.setattr(train_module, "masked_diffusion_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    poisoned = tmp_path / "poisoned"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_main([*ENV_RUN, "--output-dir", str(poisoned), "--max-steps", "1"]) == 0
    assert any("was not updated" in str(w.message) for w in caught)
    saved = SlowFastVGenPipeline.from_pretrained(poisoned / "model").unet.state_dict()
    fresh = build_pipeline(WorldModelSpec.tiny()).unet.state_dict()  # what new:tiny starts from
    assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k]) for k in fresh)


@pytest.mark.parametrize("extra, match", [
    (["--episode-chunks", "1", "1"], "at least 2 chunks"),
    (["--temp-lora", '{"rank": 0}'], "TempLoRAConfig.rank"),
    (["--temp-lora", "[1, 2]"], "expected a JSON object"),
    (["--data", "manifest"], "needs --manifest PATH"),
    (["--data", "manifest", "--manifest", "missing.jsonl"], "No manifest at"),
    (["--train-text-encoder"], "drop --train-text-encoder"),
    (["--stage", "unet", "--families", "retrace"], "use it with --stage slow-fast"),
])
def test_bad_slow_fast_settings_are_refused_before_training(tmp_path, extra, match):
    with pytest.raises(SystemExit, match=match):
        train_main([*ENV_RUN, "--output-dir", str(tmp_path / "out"), "--max-steps", "1", *extra])
    assert not (tmp_path / "out" / "checkpoint-1").exists()


# ------------------------------------------------------------------------------------------ manifest episodes


def write_walk(path, frames: int, size: int = 32) -> None:
    """A ToyWorld walk to the right as an MP4 (real content, so chunks differ)."""
    import cv2

    from slowfast_vgen.data.toyworld import ToyWorld

    views = ToyWorld(3, view_size=size).rollout(["move right"], frames - 1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (size, size))
    assert writer.isOpened()
    for view in views:
        writer.write(cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
    writer.release()


def write_manifest(path, lines) -> str:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_consecutive_clips_of_one_video_form_an_episode(tmp_path):
    from slowfast_vgen.data.manifest import manifest_episodes, read_manifest

    write_walk(tmp_path / "walk.mp4", 30)
    write_walk(tmp_path / "other.mp4", 30)
    manifest = write_manifest(tmp_path / "clips.jsonl", [
        {"video": "walk.mp4", "start": 0, "end": 9, "action": "move right"},    # X_0 + 2 chunks of 4
        {"video": "walk.mp4", "start": 9, "end": 17, "action": "move left"},    # 2 more chunks: one episode
        {"video": "walk.mp4", "start": 20, "end": 29, "action": "stay"},        # a gap: a second episode
        {"video": "other.mp4", "start": 0, "end": 5, "action": "go"},           # one chunk only: skipped
    ])
    with pytest.warns(UserWarning, match="line 4: an episode of 5 frames holds 1 chunk"):
        episodes = manifest_episodes(read_manifest(manifest), chunk_frames=4)
    assert [e.num_chunks for e in episodes] == [4, 2] and [e.lines for e in episodes] == ["lines 1-2", "line 3"]
    assert episodes[0].chunk_actions() == ["move right"] * 2 + ["move left"] * 2
    assert episodes[0].straddling_chunks() == 0
    window = episodes[0].frames(1, 2, size=32)
    assert window.shape == (9, 32, 32, 3) and window.dtype == np.float32 and 0 <= window.min() <= window.max() <= 1
    whole = episodes[0].frames(0, 4, size=32)
    assert np.array_equal(window, whole[4:13]), "a window's start frame is the last frame of the chunk before it"


def test_a_named_episode_must_be_consecutive_clips_of_one_video(tmp_path):
    from slowfast_vgen.data.manifest import BadRecordError, manifest_episodes, read_manifest

    write_walk(tmp_path / "walk.mp4", 30)
    write_walk(tmp_path / "other.mp4", 30)
    gap = write_manifest(tmp_path / "gap.jsonl", [
        {"video": "walk.mp4", "start": 12, "end": 20, "action": "move left", "episode": "a"},
        {"video": "walk.mp4", "start": 0, "end": 9, "action": "move right", "episode": "a"},
    ])
    with pytest.raises(BadRecordError, match="episode 'a': line 1 starts at frame 12 but line 2 ends at frame 9"):
        manifest_episodes(read_manifest(gap), chunk_frames=4)
    two_videos = write_manifest(tmp_path / "two.jsonl", [
        {"video": "walk.mp4", "start": 0, "end": 9, "action": "move right", "episode": "a"},
        {"video": "other.mp4", "start": 9, "end": 17, "action": "move right", "episode": "a"},
    ])
    with pytest.raises(BadRecordError, match="one video's consecutive clips"):
        manifest_episodes(read_manifest(two_videos), chunk_frames=4)
    named = write_manifest(tmp_path / "named.jsonl", [  # out of order in the file, consecutive in the video
        {"video": "walk.mp4", "start": 9, "end": 17, "action": "move left", "episode": "a"},
        {"video": "walk.mp4", "start": 0, "end": 9, "action": "move right", "episode": "a"},
        {"video": "walk.mp4", "start": 17, "end": 26, "action": "stay", "episode": "b"},
    ])
    episodes = manifest_episodes(read_manifest(named), chunk_frames=4)  # b: 9 frames, 2 chunks, kept
    assert [e.chunk_actions() for e in episodes] == [["move right"] * 2 + ["move left"] * 2, ["stay"] * 2]


def test_chunks_across_clips_of_different_actions_are_counted(tmp_path):
    from slowfast_vgen.data.manifest import manifest_episodes, read_manifest

    write_walk(tmp_path / "walk.mp4", 30)
    manifest = write_manifest(tmp_path / "clips.jsonl", [
        {"video": "walk.mp4", "start": 0, "end": 8, "action": "move right"},
        {"video": "walk.mp4", "start": 8, "end": 17, "action": "move left"},
    ])
    episode, = manifest_episodes(read_manifest(manifest), chunk_frames=4)
    assert episode.chunk_actions() == ["move right", "move right", "move left", "move left"]
    assert episode.straddling_chunks() == 1  # frames 5-8: three of the first clip, one of the second


def test_the_loop_trains_on_a_manifest_of_consecutive_clips(tmp_path):
    write_walk(tmp_path / "walk.mp4", 40)
    manifest = write_manifest(tmp_path / "clips.jsonl", [
        {"video": "walk.mp4", "start": 0, "end": 17, "action": "move right"},
        {"video": "walk.mp4", "start": 17, "end": 33, "action": "move right"},
    ])
    run = [*ENV_RUN, "--world-seeds", "1", "--data", "manifest", "--manifest", manifest, "--max-steps", "2",
           "--checkpointing-steps", "1", "--checkpoints-total-limit", "0"]
    assert train_main([*run, "--output-dir", str(tmp_path / "whole")]) == 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "whole" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(loss > 0 for loss in losses)
    train_main([*run, "--output-dir", str(tmp_path / "resumed"), "--resume-from-checkpoint",
                str(tmp_path / "whole" / "checkpoint-1")])
    assert rank_report(tmp_path / "resumed")["weights_sha256"] == rank_report(tmp_path / "whole")["weights_sha256"]


def test_bad_manifest_episodes_are_refused_before_training(tmp_path):
    write_walk(tmp_path / "walk.mp4", 30)
    short = write_manifest(tmp_path / "short.jsonl", [{"video": "walk.mp4", "start": 0, "end": 6, "action": "go"}])
    with pytest.warns(UserWarning, match="holds 1 chunk"), pytest.raises(SystemExit, match="no episode of at least 2 chunks"):
        train_main([*ENV_RUN, "--data", "manifest", "--manifest", short, "--output-dir", str(tmp_path / "out"),
                    "--max-steps", "1"])
    with pytest.raises(SystemExit, match="drop --families"):
        train_main([*ENV_RUN, "--data", "manifest", "--manifest", short, "--families", "loop",
                    "--output-dir", str(tmp_path / "out"), "--max-steps", "1"])
    assert not (tmp_path / "out").exists()
