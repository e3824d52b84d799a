"""Slow learning: ToyWorld, the masked loss, the training entrypoint, the manifest reader and the CLI."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from slowfast_vgen.data.manifest import BadRecordError, load_clip, read_manifest
from slowfast_vgen.data.toyworld import (HELD_OUT_PARAPHRASES, OPPOSITE, TRAIN_PARAPHRASES, ToyWorld,
                                         out_and_back, parse_action, reverse_actions, sample_lengths)
from slowfast_vgen.paths import DEFAULT_MODEL_DIR
from slowfast_vgen.pipelines import EpisodicMemory, SlowFastVGenPipeline, WorldModelSpec, build_pipeline
from slowfast_vgen.training.train import main as train_main
from slowfast_vgen.training.train import masked_diffusion_loss

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ------------------------------------------------------------------------------------------ ToyWorld


def test_toyworld_is_deterministic_and_large():
    first, again, other = ToyWorld(3), ToyWorld(3), ToyWorld(4)
    assert np.array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)
    assert first.size >= 8 * first.view_size


def test_toyworld_actions_move_the_view_by_the_step():
    world = ToyWorld(0)
    step = world.step
    frames = world.rollout(["move right", "go down", "stay", "walk west", "head north"], frames_per_action=2)
    assert frames.shape == (11, 64, 64, 3)
    # Moving right shifts the content left by `step` pixels.
    assert np.array_equal(frames[1][:, :-step], frames[0][:, step:])
    assert np.array_equal(frames[3][:-step], frames[2][step:])
    assert np.array_equal(frames[5], frames[4])
    assert np.array_equal(frames[7][:, step:], frames[6][:, :-step])
    assert np.array_equal(frames[9][step:], frames[8][:-step])


def test_held_out_paraphrases_are_not_in_training_and_parse():
    for direction, phrases in HELD_OUT_PARAPHRASES.items():
        for phrase in phrases:
            assert phrase not in TRAIN_PARAPHRASES[direction]
            assert parse_action(phrase) == direction
    with pytest.raises(ValueError, match="does not know the action"):
        parse_action("fly to the moon")


def test_samples_have_mixed_lengths_inside_the_window_and_match_the_world():
    world = ToyWorld(1)
    rng = random.Random(0)
    lengths = [sample_lengths(rng, context_window=8, max_generate=4) for _ in range(400)]
    assert all(c >= 1 and 1 <= g <= 4 and c + g <= 8 for c, g in lengths)
    assert {g for _, g in lengths} == {1, 2, 3, 4}
    assert 0.15 < sum(c == 1 for c, _ in lengths) / len(lengths) < 0.45, "image starts (f_p = 1) about a quarter"
    assert sum(c >= 4 and g == 4 for c, g in lengths) > 10, "full chunks after a full context are trained too"
    samples = [world.sample(rng, *length) for length in lengths[:200]]
    assert [(len(s.context), len(s.target)) for s in samples] == lengths[:200]
    moving = sum(parse_action(s.action) != "stay" for s in samples)
    assert 0.6 * len(samples) < moving < 0.95 * len(samples)
    assert all(s.action in TRAIN_PARAPHRASES[parse_action(s.action)] for s in samples)
    for s in samples:  # the target continues from the last context frame: unchanged only for "stay"
        assert np.array_equal(s.target[0], s.context[-1]) == (parse_action(s.action) == "stay")


def test_out_and_back_returns_to_the_first_views():
    world = ToyWorld(2)
    frames = world.rollout(out_and_back("left", 3), frames_per_action=4)
    assert np.array_equal(frames[0], frames[-1])
    assert np.array_equal(frames[4], frames[-5])


# ------------------------------------------------------------------------------------------ the masked loss


def test_masked_loss_ignores_context_frames():
    pipe = build_pipeline(WorldModelSpec.tiny())
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(2, 4, 5, 16, 16)
    embeds = pipe.encode_action(["move left", "stay"]).detach()
    captured = {}

    def keep_output(module, inputs, output):
        output.sample.retain_grad()
        captured["prediction"] = output.sample
        captured["input"] = inputs[0]

    pipe.unet.register_forward_hook(keep_output)
    loss = masked_diffusion_loss(pipe.unet, noise_scheduler, latents, 2, embeds, torch.Generator().manual_seed(0))
    loss.backward()
    gradient = captured["prediction"].grad
    assert torch.count_nonzero(gradient[:, :, :2]) == 0
    assert torch.count_nonzero(gradient[:, :, 2:]) > 0
    # The context goes in clean, the rest noised.
    assert torch.equal(captured["input"][:, :, :2], latents[:, :, :2])
    assert not torch.equal(captured["input"][:, :, 2:], latents[:, :, 2:])


def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch():
    pipe = build_pipeline(WorldModelSpec.tiny())
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(2, 4, 4, 16, 16)
    embeds = pipe.encode_action(["move left", "stay"]).detach()
    optimizer = torch.optim.AdamW(pipe.unet.parameters(), lr=1e-3)

    def loss_value():
        return masked_diffusion_loss(pipe.unet, noise_scheduler, latents, 1, embeds, torch.Generator().manual_seed(0))

    with torch.no_grad():
        before = loss_value().item()
    for _ in range(8):
        loss = loss_value()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        after = loss_value().item()
    assert after < 0.9 * before


# ------------------------------------------------------------------------------------------ the entrypoint

TINY_RUN = ["--model", "new:tiny", "--batch-size", "2", "--world-seeds", "2", "--lr-warmup-steps", "1"]


def rank_report(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / "ranks" / f"rank-{rank}.json").read_text())


def test_training_writes_a_loadable_pipeline_log_and_plot(tmp_path):
    assert train_main([*TINY_RUN, "--output-dir", str(tmp_path), "--max-steps", "3", "--ema",
                       "--train-text-encoder", "--checkpointing-steps", "2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "checkpoint-2" / "ema_unet" / "config.json").is_file()
    pipe = SlowFastVGenPipeline.from_pretrained(tmp_path / "model")
    pipe.set_progress_bar_config(disable=True)
    chunk = pipe("move left", context_latents=torch.randn(1, 4, 1, 16, 16), num_frames=2, num_inference_steps=2,
                 output_type="latent").latents
    assert chunk.shape == (1, 4, 2, 16, 16)
    assert pipe.reverse_action("walk west") == "move right", "a ToyWorld model knows its reverse actions"


def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train_main([*TINY_RUN, "--output-dir", str(whole), "--max-steps", "4", "--checkpointing-steps", "2",
                "--checkpoints-total-limit", "0"])
    train_main([*TINY_RUN, "--output-dir", str(resumed), "--max-steps", "4", "--checkpointing-steps", "2",
                "--resume-from-checkpoint", str(whole / "checkpoint-2")])
    assert rank_report(resumed)["steps"] == 4
    assert rank_report(resumed)["weights_sha256"] == rank_report(whole)["weights_sha256"]


def test_two_processes_train_the_same_weights(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "slowfast_vgen.training.train", *TINY_RUN, "--output-dir", str(tmp_path), "--max-steps", "2",
               "--checkpointing-steps", "100", "--cpu"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [rank_report(tmp_path, rank) for rank in (0, 1)]
    assert {r["world_size"] for r in reports} == {2}
    assert [r["steps"] for r in reports] == [2, 2]
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]


def test_bad_model_argument_is_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match="not a pipeline folder"):
        train_main(["--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, match", [("{not json", "cannot read it as JSON"),
                                            ('["move left"]', "expected a JSON object"),
                                            ('{"move left": ""}', "expected a JSON object")])
def test_bad_reverse_actions_are_refused_before_training(tmp_path, content, match):
    table = tmp_path / "reverse.json"
    table.write_text(content)
    with pytest.raises(SystemExit, match=match):
        train_main([*TINY_RUN, "--output-dir", str(tmp_path / "out"), "--reverse-actions", str(table)])
    assert not (tmp_path / "out").exists()


def test_toyworld_reverse_actions_undo_every_known_action():
    table = reverse_actions()
    known = {phrase for phrases in (*TRAIN_PARAPHRASES.values(), *HELD_OUT_PARAPHRASES.values()) for phrase in phrases}
    assert set(table) == known
    for action, reverse in table.items():
        assert parse_action(reverse) == OPPOSITE[parse_action(action)]
        assert reverse in TRAIN_PARAPHRASES[parse_action(reverse)], "the reverse is a phrase the model was trained on"


# ------------------------------------------------------------------------------------------ manifest


def write_video(path: Path, frames: int, size: int = 40) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (size, size))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(np.full((size, size, 3), index * 10, np.uint8))
    writer.release()


def test_manifest_reads_good_records_and_reports_bad_ones(tmp_path):
    write_video(tmp_path / "good.mp4", 12)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    lines = [
        {"video": "good.mp4", "start": 2, "end": 8, "action": "open the door", "context": 2},
        {"video": "missing.mp4", "start": 0, "end": 4, "action": "go"},
        {"video": "broken.mp4", "start": 0, "end": 4, "action": "go"},
        {"video": "good.mp4", "start": 6, "end": 40, "action": "go"},
        {"video": "good.mp4", "start": 0, "end": 4, "action": "  "},
    ]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    with pytest.warns(UserWarning) as caught:
        records = read_manifest(str(manifest), on_bad_record="skip")
    messages = [str(w.message) for w in caught]
    assert len(records) == 1 and len(messages) == 5
    for line_number, fragment in [(2, "does not exist"), (3, "cannot read"), (4, "out of range"),
                                  (5, "empty action"), (6, "not a valid record")]:
        assert any(f"clips.jsonl:{line_number}:" in m and fragment in m for m in messages), (line_number, messages)
    sample = load_clip(records[0], size=32)
    assert sample.context.shape == (2, 32, 32, 3) and sample.target.shape == (4, 32, 32, 3)
    assert sample.action == "open the door"
    with pytest.raises(BadRecordError, match="clips.jsonl:2:"):
        read_manifest(str(manifest), on_bad_record="fatal")


def test_training_on_a_manifest(tmp_path):
    write_video(tmp_path / "clip.mp4", 10)
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"video": "clip.mp4", "start": 0, "end": 6, "action": "go left", "context": 2}))
    assert train_main(["--model", "new:tiny", "--data", "manifest", "--manifest", str(manifest), "--batch-size", "2",
                       "--output-dir", str(tmp_path / "run"), "--max-steps", "2"]) == 0
    assert (tmp_path / "run" / "model" / "model_index.json").is_file()


# ------------------------------------------------------------------------------------------ CLI and shipped model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    build_pipeline(WorldModelSpec.tiny()).save_pretrained(folder)
    return folder


def test_generate_cli_end_to_end(tiny_model_dir, tmp_path):
    video = tmp_path / "episode.mp4"
    command = [sys.executable, "-m", "slowfast_vgen", "generate", str(video), "--model", str(tiny_model_dir),
               "--actions", "move left; stay", "--steps", "2", "--lora-rank", "4", "--lora-replay", "1"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 9
    summary = json.loads(video.with_suffix(".json").read_text())
    assert summary["actions"] == ["move left", "stay"] and summary["frames"] == 9
    memory_path = video.with_suffix(".memory.safetensors")
    assert [clip.new_frames for clip in EpisodicMemory.load(memory_path).clips] == [4, 4], "replay keeps the clips"
    continued = tmp_path / "more.mp4"
    assert summary["scheduler"] == "ddim" and len(summary["seconds"]["chunks"]) == 2
    result = subprocess.run([*command[:4], str(continued), *command[5:], "--memory", str(memory_path),
                             "--scheduler", "dpm++"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    continued_summary = json.loads(continued.with_suffix(".json").read_text())
    assert continued_summary["continued_from"] == str(memory_path) and continued_summary["scheduler"] == "dpm++"
    assert continued_summary["temp_lora"]["rank"] == 4, "the memory's own settings, not the flags' defaults"
    assert continued_summary["temp_lora"]["replay"] == 1


def test_generate_cli_with_and_without_memory_share_the_first_chunk(tiny_model_dir, tmp_path):
    videos = {}
    for name, extra in (("memory", []), ("plain", ["--no-temp-lora"])):
        videos[name] = tmp_path / f"{name}.mp4"
        command = [sys.executable, "-m", "slowfast_vgen", "generate", str(videos[name]), "--model",
                   str(tiny_model_dir), "--actions", "move left; move left; stay", "--steps", "2", "--lora-rank", "4",
                   "--lora-lr", "1e-2", *extra]
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    frames = {}
    for name, path in videos.items():
        capture, read = cv2.VideoCapture(str(path)), []
        while (frame := capture.read())[0]:
            read.append(frame[1])
        frames[name] = np.stack(read)
    assert np.array_equal(frames["memory"][:5], frames["plain"][:5]), "start frame and first chunk"
    assert not np.array_equal(frames["memory"], frames["plain"])


def test_generate_cli_refuses_bad_input_before_writing(tiny_model_dir, tmp_path):
    video = tmp_path / "episode.mp4"
    for extra, message in [(["--actions", " ; "], "No action given"),
                           (["--model", str(tmp_path / "nope")], "not a world model folder")]:
        command = [sys.executable, "-m", "slowfast_vgen", "generate", str(video), "--model", str(tiny_model_dir), *extra]
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and message in result.stderr
    assert not video.exists()


def test_shipped_model_loads_and_generates_a_chunk():
    pipe = SlowFastVGenPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    frame = ToyWorld(0, view_size=pipe.native_size).start_frame()
    out = pipe("move left", image=frame, num_inference_steps=2, output_type="np")
    assert out.frames.shape == (1, pipe.context_window // 2, pipe.native_size, pipe.native_size, 3)
    assert 0.0 <= out.frames.min() and out.frames.max() <= 1.0
