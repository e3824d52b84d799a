"""Bad input and interruptions, tried as a user would: a clear message, the documented exit status, and
nothing on disk changed (hashes before and after) or the documented recovery.

To add a case, add a row to `GENERATE_CASES` (flags, words the message must hold); every row runs against
a folder that already holds a finished episode, which must come out of the failed run byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slowfast_vgen.cli import main as cli_main
from slowfast_vgen.pipelines import EpisodicMemory, SlowFastVGenPipeline, TempLoRAConfig
from slowfast_vgen.pipelines.atomic_files import PARTIAL_TAG, partial_path, remove_stale_partials

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
FAST = ["--steps", "1", "--lora-rank", "4"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


@pytest.fixture(scope="module")
def finished(tiny_pipe_dir, tmp_path_factory):
    """A folder holding a finished two-chunk episode of the tiny model (video, memory, summary, sheet)."""
    folder = tmp_path_factory.mktemp("finished")
    code = cli_main(["generate", str(folder / "episode.mp4"), "--model", str(tiny_pipe_dir), "--actions",
                     "move left; stay", "--contact-sheet", str(folder / "sheet.png"), *FAST])
    assert code == 0
    return folder


def nan_memory(tiny_pipe_dir, folder: Path) -> Path:
    pipe = SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir)
    memory = pipe.new_memory(TempLoRAConfig(rank=4))
    key = next(iter(memory.lora))
    memory.lora[key][0, 0] = float("nan")
    path = folder / "nan.memory.safetensors"
    tensors = {k: t.contiguous() for k, t in memory.lora.items()}
    EpisodicMemory(memory.config, memory.lora, memory.base_fingerprint).save(folder / "ok.memory.safetensors")
    from safetensors import safe_open

    with safe_open(folder / "ok.memory.safetensors", "pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, path, metadata=metadata)
    (folder / "ok.memory.safetensors").unlink()
    return path


GENERATE_CASES = [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--seed", "18446744073709551617"], "--seed must be between 0 and 2**64 - 1"),
    (["--seed", "-1"], "--seed must be between 0 and 2**64 - 1"),
    (["--frames-per-chunk", "0"], "--frames-per-chunk must be at least 1"),
    (["--frames-per-chunk", "8"], "--frames-per-chunk must be below the model's context window of 8"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--guidance", "-1"], "--guidance must be a finite number >= 0"),
    (["--fps", "0"], "--fps must be a positive number"),
    (["--lora-lr", "inf"], "--lora-lr: TempLoRAConfig.learning_rate must be a positive finite number"),
    (["--lora-lr", "nan"], "--lora-lr: TempLoRAConfig.learning_rate"),
    (["--lora-lr", "0"], "--lora-lr: TempLoRAConfig.learning_rate"),
    (["--lora-rank", "0"], "--lora-rank: TempLoRAConfig.rank must be at least 1"),
    (["--lora-steps", "-1"], "--lora-steps: TempLoRAConfig.steps_per_update must be 0 (no training) or more"),
    (["--lora-replay", "-1"], "--lora-replay: TempLoRAConfig.replay"),
    (["--lora-target", "("], "--lora-target: TempLoRAConfig.target '(' is neither a preset"),
    (["--lora-target", "nothing_matches_this"], "--lora-target 'nothing_matches_this': Temp-LoRA target"),
    (["--actions", " ; "], "No action given"),
    (["--actions-file", "{tmp}/missing.txt"], "--actions-file"),
    (["--model", "{tmp}/no-model"], "is not a world model folder"),
    (["--memory", "{tmp}/garbage.safetensors"], "--memory"),
    (["--memory", "{tmp}/missing.safetensors"], "No memory adapter at"),
    (["--memory", "{nan}"], "holds NaN or infinite values"),
    (["--image", "{tmp}/tiny.png"], "--image"),
    (["--image", "{tmp}/missing.png"], "cannot be read as an image"),
    (["--output", "{finished}/episode.mp4"], "already exists; pass --force"),
    (["--output", "{finished}/other.mp4", "--contact-sheet", "{finished}/sheet.png"], "sheet.png already exists"),
    (["--output", "{finished}"], "is a folder"),
    (["--output", "{tmp}/episode.avi"], "must end in .mp4"),
    (["--output", "{tmp}/new/folder/out.mp4", "--steps", "0"], "--steps"),  # no folder made for a failed run
    (["--output", "{tmp}/garbage.safetensors/out.mp4"], "is not a writable folder"),
    (["--contact-sheet", "{tmp}/sheet.txt"], "sheet.txt: OpenCV cannot write an image with the extension '.txt'"),
    (["--contact-sheet", "{tmp}/sheet"], "OpenCV cannot write an image with a file name without an extension"),
    (["--contact-sheet", "{tmp}/tiny.png", "--image", "{tmp}/tiny.png", "--force"], "is the --image file"),
    (["--actions-file", "{tmp}/latin1.txt"], "is not UTF-8 text"),
]


@pytest.mark.parametrize("extra, message", GENERATE_CASES, ids=[" ".join(str(a) for a in c[0]) for c in GENERATE_CASES])
def test_generate_refuses_bad_input_and_changes_nothing(tiny_pipe_dir, finished, tmp_path, capsys, extra, message):
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    (tmp_path / "latin1.txt").write_bytes("move left\nfl\xe2ner\n".encode("latin-1"))
    values = {"tmp": str(tmp_path), "finished": str(finished)}
    if "{nan}" in extra:
        values["nan"] = str(nan_memory(tiny_pipe_dir, tmp_path))
    extra = [a.format(**values) for a in extra]
    output = str(tmp_path / "out.mp4")
    if "--output" in extra:
        index = extra.index("--output")
        output = extra[index + 1]
        extra = extra[:index] + extra[index + 2:]
    actions = [] if {"--actions", "--actions-file"} & set(extra) else ["--actions", "move left"]
    argv = ["generate", output, "--model", str(tiny_pipe_dir), *actions, *FAST, *extra]
    before = {"tmp": snapshot(tmp_path), "finished": snapshot(finished)}
    code = run_cli(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    reported = [line for line in error.splitlines() if line.startswith("slowfast-vgen generate: ")]
    assert len(reported) == 1 and message in reported[0] and "Traceback" not in error, error
    assert snapshot(tmp_path) == before["tmp"] and snapshot(finished) == before["finished"]


def model_with_a_nan_weight(tiny_pipe_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the tiny model whose UNet has one NaN; the copy's folder and the damaged tensor's name."""
    import shutil

    from safetensors.torch import load_file

    model = tmp_path / "model"
    shutil.copytree(tiny_pipe_dir, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    key = sorted(tensors)[3]
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, weights)
    return model, key


def test_generate_refuses_a_model_with_nan_weights(tiny_pipe_dir, tmp_path, capsys):
    model, key = model_with_a_nan_weight(tiny_pipe_dir, tmp_path)
    before = snapshot(tmp_path)
    code = run_cli(["generate", str(tmp_path / "out.mp4"), "--model", str(model), "--actions", "stay", *FAST])
    error = capsys.readouterr().err
    assert code == 2 and f"unet tensor {key} holds NaN" in error, error
    assert snapshot(tmp_path) == before


def test_generate_with_pickle_only_weights_names_allow_pickle(tiny_pipe_dir, tmp_path, capsys):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_pipe_dir, pickled, ignore=shutil.ignore_patterns("diffusion_pytorch_model.safetensors"))
    SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir).unet.save_pretrained(pickled / "unet", safe_serialization=False)
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = run_cli(["generate", str(tmp_path / "out.mp4"), "--model", str(pickled), "--actions", "stay", *FAST])
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "unet/ holds only pickle weights" in error[0], error
    assert "--allow-pickle" in error[0] and "fetch" not in captured.err + captured.out
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("extra", [[], ["--keep-fp32", "unet"]], ids=["cast", "keep-fp32"])
def test_model_cast_refuses_a_model_with_nan_weights(tiny_pipe_dir, tmp_path, capsys, extra):
    model, key = model_with_a_nan_weight(tiny_pipe_dir, tmp_path)
    before = snapshot(tmp_path)
    code = run_cli(["model", "cast", str(model), "-o", str(tmp_path / "half"), *extra])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and f"tensor {key} holds NaN or infinite values" in error[0], error
    assert snapshot(tmp_path) == before and not (tmp_path / "half").exists()


def test_force_replaces_only_a_finished_run_and_a_failure_keeps_the_old_files(tiny_pipe_dir, tmp_path, capsys,
                                                                             monkeypatch):
    video = tmp_path / "episode.mp4"
    argv = ["generate", str(video), "--model", str(tiny_pipe_dir), "--actions", "move left", *FAST]
    assert cli_main(argv) == 0
    before = snapshot(tmp_path)

    def broken(self, *args, **kwargs):
        yield from ()
        raise RuntimeError("something broke mid-episode")

    monkeypatch.setattr(SlowFastVGenPipeline, "stream_episode", broken)
    assert cli_main([*argv, "--force", "--seed", "1"]) == 2
    error = capsys.readouterr().err
    assert "unexpected error RuntimeError: something broke mid-episode" in error and "--debug" in error
    assert snapshot(tmp_path) == before, "the failed run left the earlier outputs and no temporary"
    with pytest.raises(RuntimeError, match="something broke"):
        cli_main(["--debug", *argv, "--force"])
    monkeypatch.undo()
    assert cli_main([*argv, "--force", "--seed", "1"]) == 0
    after = snapshot(tmp_path)
    assert after.keys() == before.keys() and after["episode.mp4"] != before["episode.mp4"]


def test_a_second_run_to_the_same_output_is_refused_while_the_first_runs(tiny_pipe_dir, tmp_path, capsys):
    output = tmp_path / "new" / "episode.mp4"
    argv = ["generate", str(output), "--model", str(tiny_pipe_dir), "--actions", "move left", *FAST]
    lock = output.with_name(".episode.mp4.lock")
    lock.parent.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the first run, still going
    try:
        lock.write_text(str(other.pid))
        before = snapshot(tmp_path)
        assert run_cli(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"Another run (process {other.pid}) is writing" in error[0], error
        assert snapshot(tmp_path) == before and not output.exists()
        assert run_cli([*argv, "--force"]) == 2, "--force does not take a live run's output"
    finally:
        other.kill()
        other.wait()
    capsys.readouterr()
    assert run_cli(argv) == 0, "the lock of a run that has ended is taken over"
    assert output.is_file() and not lock.exists()
    assert run_cli(argv) == 2 and "already exists" in capsys.readouterr().err
    assert not lock.exists(), "a refused run leaves no lock behind"


def test_stale_temporaries_of_ended_processes_are_removed_and_live_ones_kept(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    target = tmp_path / "episode.mp4"
    stale = target.with_name(f".episode{PARTIAL_TAG}{ended.pid}-0123abcd.mp4")
    live = partial_path(target)
    other = tmp_path / f".other{PARTIAL_TAG}{ended.pid}-0123abcd.mp4"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert remove_stale_partials(target) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_sigterm_keeps_a_playable_video_the_memory_and_an_interrupted_summary(tiny_pipe_dir, tmp_path):
    video = tmp_path / "episode.mp4"
    command = [sys.executable, "-m", "slowfast_vgen", "generate", str(video), "--model", str(tiny_pipe_dir),
               "--actions", "; ".join(["move left"] * 500), *FAST]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and "chunks:   0%" not in (process.stderr.readline() or ""):
        pass
    time.sleep(2.0)  # a few chunks
    process.send_signal(signal.SIGTERM)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, error[-2000:]
    summary = json.loads(video.with_suffix(".json").read_text())
    assert summary["interrupted"] is True and 1 <= len(summary["actions"]) < 500
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames"]
    assert summary["frames"] == 1 + 4 * len(summary["actions"])
    assert EpisodicMemory.load(video.with_suffix(".memory.safetensors")).num_updates == len(summary["actions"])
    assert not list(tmp_path.glob(f".*{PARTIAL_TAG}*")), "no temporary left"


def test_after_sigkill_the_next_run_recovers_a_playable_video_and_cleans_up(tiny_pipe_dir, tmp_path, capsys):
    video = tmp_path / "episode.mp4"
    command = [sys.executable, "-m", "slowfast_vgen", "generate", str(video), "--model", str(tiny_pipe_dir),
               "--actions", "; ".join(["move left"] * 500), *FAST]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    frame_bytes, deadline = 32 * 32 * 3, time.time() + 120
    journal = []
    while time.time() < deadline and not (journal and journal[0].stat().st_size > 200 + 9 * frame_bytes):
        journal = list(tmp_path.glob(f".episode{PARTIAL_TAG}*.frames"))
        time.sleep(0.2)
    process.kill()
    process.wait()
    assert journal and not video.exists(), "killed before the end: no output yet, only temporaries"
    assert run_cli(["generate", str(video), "--model", str(tiny_pipe_dir), "--actions", "stay", *FAST]) == 0
    recovered = tmp_path / "episode.recovered.mp4"
    assert f"were recovered into {recovered}" in capsys.readouterr().out
    capture = cv2.VideoCapture(str(recovered))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) >= 9
    ok, frame = capture.read()
    assert ok and frame.shape == (32, 32, 3)
    assert not list(tmp_path.glob(f".*{PARTIAL_TAG}*")), "the killed run's temporaries are gone"
    assert int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT)) == 5, "and the new run's video is whole"


@pytest.mark.parametrize("fields, message", [
    ({"rank": 2.5}, "rank must be a whole number"),
    ({"rank": True}, "rank must be a whole number"),
    ({"learning_rate": float("inf")}, "learning_rate must be a positive finite number"),
    ({"steps_per_update": 1.5}, "steps_per_update must be a whole number"),
    ({"alpha": 32.0}, "'alpha' is no longer a Temp-LoRA setting: the LoRA scale is fixed at 1"),
    ({"timestep_range": [0.0, 1.0]}, "'timestep_range' is no longer a Temp-LoRA setting"),
    ({"keep_optimizer_state": False}, "'keep_optimizer_state' is no longer a Temp-LoRA setting"),
    ({"lerning_rate": 1e-3}, "'lerning_rate' is no Temp-LoRA setting; the settings are rank, learning_rate"),
    ({"local": "yes"}, "local must be true or false"),
    ({"steps_per_update": 0}, "steps_per_update is 0 and panorama is off: such a memory learns nothing"),
    ({"gradient_checkpointing": "auto"}, "gradient_checkpointing must be None"),
])
def test_temp_lora_settings_refuse_garbage(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        TempLoRAConfig.from_fields(fields)


def test_a_memory_with_nan_weights_is_refused_naming_the_tensor(tiny_pipe_dir, tmp_path):
    path = nan_memory(tiny_pipe_dir, tmp_path)
    with pytest.raises(ValueError, match=r"tensor .*lora_A\.weight holds NaN or infinite values"):
        EpisodicMemory.load(path)


def test_update_with_a_memory_and_another_config_applies_and_records_it_or_refuses_another_shape(tiny_pipe,
                                                                                               tiny_context):
    from slowfast_vgen.pipelines import MemoryMismatchError

    memory = tiny_pipe.new_memory(TempLoRAConfig(rank=4))
    new = torch.zeros(1, 4, 2, 16, 16)
    faster = TempLoRAConfig(rank=4, learning_rate=1e-2)
    updated = tiny_pipe.update_memory(memory, tiny_context, new, config=faster, generator=torch.Generator())
    assert updated.config == faster and memory.config == TempLoRAConfig(rank=4)
    plain = tiny_pipe.update_memory(memory, tiny_context, new, generator=torch.Generator())
    moved = max((updated.lora[k] - memory.lora[k]).abs().max() for k in memory.lora)
    assert moved > 2 * max((plain.lora[k] - memory.lora[k]).abs().max() for k in memory.lora), "the new rate applied"
    with pytest.raises(MemoryMismatchError, match="made with rank 4.*ask for rank 8"):
        tiny_pipe.update_memory(memory, tiny_context, new, config=TempLoRAConfig(rank=8))


# ----------------------------------------------------------------------------------------- memory tools


def damaged_copy(source: Path, destination: Path, change) -> Path:
    """A copy of a memory file with its tensors or metadata changed by `change(tensors, metadata)`."""
    from safetensors import safe_open

    with safe_open(source, "pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    change(tensors, metadata)
    save_file(tensors, destination, metadata=metadata)
    return destination


def first_lora_key(tensors: dict, part: str = "A") -> str:
    return next(k for k in sorted(tensors) if k.endswith(f".lora_{part}.weight") and not k.startswith("optimizer."))


def nan_in_b(tensors, metadata):
    tensors[first_lora_key(tensors, "B")][0, 0] = float("inf")


def missing_b(tensors, metadata):
    key = first_lora_key(tensors, "B")
    for name in [key, f"optimizer.{key}.exp_avg", f"optimizer.{key}.exp_avg_sq"]:
        tensors.pop(name, None)


def rank_lie(tensors, metadata):
    config = json.loads(metadata["config"])
    config["rank"] = 8
    metadata["config"] = json.dumps(config)


DAMAGE = {"nan": (nan_in_b, "holds NaN or infinite values"), "missing-b": (missing_b, "has no lora_B.weight"),
          "rank-lie": (rank_lie, "but the memory's rank is 8")}
MEMORY_COMMANDS = {
    "inspect": lambda memory, model, out: ["memory", "inspect", memory],
    "check": lambda memory, model, out: ["memory", "check", memory, model],
    "merge": lambda memory, model, out: ["memory", "merge", memory, "-o", out],
    "fuse": lambda memory, model, out: ["memory", "fuse", memory, model, "-o", out],
    "convert": lambda memory, model, out: ["memory", "convert", memory, "-o", out],
    "cast": lambda memory, model, out: ["memory", "cast", memory, "-o", out],
}


@pytest.mark.parametrize("command", list(MEMORY_COMMANDS))
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_memory_tools_refuse_damaged_memories_with_exit_2_and_write_nothing(finished, tmp_path, tiny_pipe_dir,
                                                                           capsys, command, damage):
    change, message = DAMAGE[damage]
    memory = damaged_copy(finished / "episode.memory.safetensors", tmp_path / "damaged.safetensors", change)
    before = snapshot(tmp_path)
    code = run_cli(MEMORY_COMMANDS[command](str(memory), str(tiny_pipe_dir), str(tmp_path / "out")))
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error, error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, message", [
    (["memory", "merge", "{memory}", "-o", "{tmp}/merged.safetensors", "--rank", "0"], "rank must be a whole number"),
    (["memory", "merge", "{memory}", "-o", "{tmp}/merged.safetensors", "--weights", "nan"], "weights must be finite"),
    (["memory", "fuse", "{memory}", "{model}", "-o", "{tmp}/fused", "--strength", "nan"], "strength must be a finite"),
    (["memory", "check", "{memory}", "{tmp}"], "is not a world-model folder"),
    (["memory", "inspect", "{tmp}"], ""),
    (["memory", "merge", "{memory}", "-o", "{tmp}"], "already exists"),
])
def test_memory_tools_refuse_bad_arguments_with_exit_2(finished, tmp_path, tiny_pipe_dir, capsys, argv, message):
    values = {"memory": str(finished / "episode.memory.safetensors"), "model": str(tiny_pipe_dir), "tmp": str(tmp_path)}
    before = snapshot(tmp_path)
    code = run_cli([a.format(**values) for a in argv])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error, error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, message", [
    (["memory", "fuse", "{memory}", "{world}", "-o", "{world}", "--link", "--force"], "is the model folder"),
    (["model", "import", "{world}", "-o", "{world}", "--link", "--force"], "is the ModelScope folder"),
    (["model", "import", "{world}", "-o", "{world}/inner", "--link", "--force"], "lies inside the ModelScope folder"),
    (["model", "import", "{world}", "-o", "{tmp}", "--force"], "contains the ModelScope folder"),
    (["model", "cast", "{world}", "-o", "{world}", "--force"], "is the model folder"),
    (["memory", "fuse", "{world}/episode.memory.safetensors", "{model}", "-o", "{world}", "--force"],
     "contains the memory"),
])
def test_weights_tools_refuse_an_output_that_overlaps_the_source(finished, tmp_path, tiny_pipe_dir, capsys, argv,
                                                                 message):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(tiny_pipe_dir, world)
    shutil.copy(finished / "episode.memory.safetensors", world / "episode.memory.safetensors")
    values = {"memory": str(finished / "episode.memory.safetensors"), "model": str(tiny_pipe_dir),
              "tmp": str(tmp_path), "world": str(world)}
    before = snapshot(tmp_path)
    code = run_cli([a.format(**values) for a in argv])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "choose an output folder outside it" in error, error
    assert len(error.strip().splitlines()) == 1, error
    assert snapshot(tmp_path) == before
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_merging_memories_of_other_layer_shapes_is_refused_in_one_line(finished, tmp_path, capsys):
    def wider_a(tensors, metadata):
        key = first_lora_key(tensors, "A")
        tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
        for moment in ("exp_avg", "exp_avg_sq"):
            tensors.pop(f"optimizer.{key}.{moment}", None)

    memory = str(finished / "episode.memory.safetensors")
    wider = damaged_copy(finished / "episode.memory.safetensors", tmp_path / "wider.safetensors", wider_a)
    before = snapshot(tmp_path)
    code = run_cli(["memory", "merge", memory, str(wider), "-o", str(tmp_path / "merged.safetensors")])
    error = capsys.readouterr().err
    assert code == 2 and "lora_A.weight" in error and "cannot be merged" in error and "bug" not in error, error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("change, message", [
    (lambda config: {**config, "r": 0}, "adapter_config.json: r must be a whole number of at least 1, got 0"),
    (lambda config: {k: v for k, v in config.items() if k != "r"}, "r must be a whole number of at least 1, got None"),
    (lambda config: {**config, "lora_alpha": "x"}, "lora_alpha must be a finite number"),
    (lambda config: "{bad", "adapter_config.json is not valid JSON"),
    (lambda config: [1], "adapter_config.json holds a list"),
])
def test_a_bad_peft_adapter_config_is_refused_naming_the_file(finished, tmp_path, tiny_pipe_dir, capsys, change,
                                                              message):
    peft = tmp_path / "peft"
    assert run_cli(["memory", "convert", str(finished / "episode.memory.safetensors"), "-o", str(peft)]) == 0
    config_file = peft / "adapter_config.json"
    changed = change(json.loads(config_file.read_text()))
    config_file.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = run_cli(["memory", "convert", str(peft), "-o", str(tmp_path / "back.safetensors"), "--base",
                    str(tiny_pipe_dir)])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "bug" not in error and len(error.strip().splitlines()) == 1, error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv", [
    ["model", "cast", "{bad}", "-o", "{tmp}/out"],
    ["memory", "fuse", "{memory}", "{bad}", "-o", "{tmp}/out"],
    ["train", "--model", "{bad}", "--output-dir", "{tmp}/out", "--max-steps", "1"],
    ["generate", "{tmp}/out.mp4", "--model", "{bad}", "--actions", "move left", *FAST],
], ids=lambda argv: " ".join(argv[:2]))
def test_a_broken_model_index_is_reported_naming_the_file(finished, tmp_path, tiny_pipe_dir, capsys, argv):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_pipe_dir, bad)
    (bad / "model_index.json").write_text("{bad")
    before = snapshot(tmp_path)
    values = {"bad": str(bad), "tmp": str(tmp_path), "memory": str(finished / "episode.memory.safetensors")}
    code = run_cli([a.format(**values) for a in argv])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "model_index.json is not valid JSON" in error[0], error
    assert "bug" not in error[0] and snapshot(tmp_path) == before


def test_memory_check_answers_1_only_for_a_memory_that_does_not_fit(finished, tiny_pipe_dir, tmp_path, capsys):
    from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline

    other = tmp_path / "other-model"
    build_pipeline(WorldModelSpec.tiny(), seed=1).save_pretrained(other)
    memory = str(finished / "episode.memory.safetensors")
    assert run_cli(["memory", "check", memory, str(tiny_pipe_dir)]) == 0
    assert run_cli(["memory", "check", memory, str(other)]) == 1
    assert "does not fit" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    ({"num_inference_steps": 0}, "num_inference_steps must be a whole number of at least 1"),
    ({"num_inference_steps": 2.5}, "num_inference_steps must be a whole number"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
    ({"num_frames": 8}, "num_frames=8 leaves no room for context: this world model sees 8 frames at once"),
])
def test_pipeline_refuses_bad_sampling_settings_before_running(tiny_pipe, tiny_context, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe("stay", context_latents=tiny_context, **{"num_frames": 2, "output_type": "latent", **kwargs})


@pytest.mark.parametrize("kwargs, error, message", [
    ({"context_latents": "latents"}, TypeError, "context_latents must be a torch.Tensor"),
    ({"memory": "memory.safetensors"}, TypeError, "memory must be an EpisodicMemory"),
    ({"generator": "seed"}, TypeError, "generator must be a torch.Generator"),
    ({"generator": [0]}, TypeError, "generator must be a torch.Generator"),
])
def test_pipeline_refuses_arguments_of_the_wrong_type(tiny_pipe, tiny_context, kwargs, error, message):
    with pytest.raises(error, match=message):
        tiny_pipe("stay", **{"context_latents": tiny_context, "num_frames": 2, "output_type": "latent",
                             "num_inference_steps": 1, **kwargs})


@pytest.mark.parametrize("args, error, message", [
    (("memory", None, None), TypeError, "memory must be an EpisodicMemory or None, got str"),
    ((None, "context", None), TypeError, "previous_latents must be a torch.Tensor"),
    ((None, None, torch.zeros(1, 3, 2, 16, 16)), ValueError,
     r"new_latents must be \(batch, 4, frames, height, width\)"),
    ((None, None, torch.zeros(4, 2, 16, 16)), ValueError, r"new_latents must be .* got \(4, 2, 16, 16\)"),
])
def test_update_memory_refuses_arguments_of_the_wrong_type_or_shape(tiny_pipe, tiny_context, args, error, message):
    memory, previous, new = args
    with pytest.raises(error, match=message):
        tiny_pipe.update_memory(memory, tiny_context if previous is None else previous,
                                torch.zeros(1, 4, 2, 16, 16) if new is None else new, generator=torch.Generator())
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got str"):
        tiny_pipe.update_memory(None, tiny_context, torch.zeros(1, 4, 2, 16, 16), generator="seed")


@pytest.mark.parametrize("text, message", [
    ("{bad", "TempLoRAConfig JSON is not valid JSON: Expecting property name enclosed in double quotes"),
    ("[1]", "TempLoRAConfig JSON must be an object of settings.*not a list"),
])
def test_temp_lora_config_from_json_names_the_json_problem(text, message):
    with pytest.raises(ValueError, match=message):
        TempLoRAConfig.from_json(text)


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "{tmp}/eval", "--episodes", "0"], "--episodes must be at least 1"),
    (["evaluate", "{tmp}/eval", "--guidance", "nan"], "--guidance must be a finite number"),
    (["evaluate", "--next-chunk", "0"], "--next-chunk must be at least 1"),
    (["evaluate", "--video", "{tmp}/missing.mp4"], "does not exist"),
    (["train", "--model", "{tmp}/missing", "--output-dir", "{tmp}/run"], "not a pipeline folder"),
    (["train", "--model", "new:tiny", "--output-dir", "{tmp}/run", "--max-steps", "-1"],
     "--max-steps must be at least 1"),
    (["train", "--model", "new:tiny", "--output-dir", "{tmp}/run", "--batch-size", "0"],
     "--batch-size must be at least 1"),
    (["train", "--model", "new:tiny", "--output-dir", "{tmp}/run", "--checkpointing-steps", "0"],
     "--checkpointing-steps must be at least 1"),
    (["train", "--model", "new:tiny", "--output-dir", "{tmp}/run", "--learning-rate", "nan"],
     "--learning-rate must be"),
    (["model", "fingerprint", "{tmp}/missing"], ""),
])
def test_other_commands_report_errors_in_one_line_with_exit_2(tmp_path, capsys, argv, message):
    before = snapshot(tmp_path)
    code = run_cli([a.format(tmp=tmp_path) for a in argv])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error, error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "{tmp}/afile", "--model", "{model}"], "afile is a file"),
    (["evaluate", "{tmp}/run", "--model", "{model}"], "run.json is not valid JSON"),
    (["evaluate", "{tmp}/new", "--model", "{tmp}/corrupt", "--episodes", "1"],
     "--model '{tmp}/corrupt' cannot be loaded"),
    (["evaluate", "--video", "{tmp}/list.mp4"], "list.json holds a list, not the object"),
    (["evaluate", "--video", "{tmp}/broken.mp4"], "broken.json is not valid JSON"),
])
def test_evaluate_reports_bad_folders_models_and_summaries_in_one_line(tiny_pipe_dir, finished, tmp_path, capsys, argv,
                                                                        message):
    import shutil

    (tmp_path / "afile").write_text("")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{bad")
    shutil.copytree(tiny_pipe_dir, tmp_path / "corrupt")
    weights = tmp_path / "corrupt" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    for name, text in (("list", "[1]"), ("broken", "{bad")):
        shutil.copy(finished / "episode.mp4", tmp_path / f"{name}.mp4")
        (tmp_path / f"{name}.json").write_text(text)
    before = snapshot(tmp_path)
    code = run_cli([a.format(tmp=tmp_path, model=tiny_pipe_dir) for a in argv])
    error = capsys.readouterr().err
    reported = [line for line in error.splitlines() if line.startswith("slowfast-vgen evaluate: ")]
    assert code == 2 and len(reported) == 1 and message.format(tmp=tmp_path) in reported[0], error
    assert "This is a bug" not in error and "evaluate: evaluate:" not in error, error
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_train_into_an_earlier_run_is_refused_unless_resumed_or_forced(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "new:tiny", "--output-dir", str(run), "--max-steps", "1", "--batch-size", "1",
            "--world-seeds", "1", "--lr-warmup-steps", "0"]
    assert run_cli(argv) == 0
    capsys.readouterr()
    (run / "notes.txt").write_text("the earlier run's")
    before = snapshot(run)
    assert run_cli(argv) == 2
    error = capsys.readouterr().err
    assert "--output-dir" in error and "--resume-from-checkpoint latest" in error and "--force" in error, error
    assert len(error.strip().splitlines()) == 1, error
    assert snapshot(run) == before
    (tmp_path / "file").write_text("")
    assert run_cli([*argv[:4], str(tmp_path / "file"), *argv[5:]]) == 2
    assert "is a file" in capsys.readouterr().err
    assert run_cli([*argv, "--force"]) == 0
    assert not (run / "notes.txt").exists(), "--force replaces the earlier run"
    assert [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()] == [1]


def test_train_on_bad_record_fatal_is_the_users_data_not_a_bug(tmp_path, capsys):
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"video": "missing.mp4", "start": 0, "end": 6, "action": "go left"}) + "\n")
    before = snapshot(tmp_path)
    code = run_cli(["train", "--model", "new:tiny", "--data", "manifest", "--manifest", str(manifest),
                    "--on-bad-record", "fatal", "--output-dir", str(tmp_path / "run"), "--max-steps", "1"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "clips.jsonl:1:" in error[0] and "does not exist" in error[0], error
    assert error[0].startswith("slowfast-vgen train: --manifest: ") and "bug" not in error[0]
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["generate", "out.mp4", "--steps", "1e12"], "slowfast-vgen generate: argument --steps: invalid int value: '1e12'"),
    (["generate", "out.mp4", "--world", "mars"], "slowfast-vgen generate: argument --world: invalid choice: 'mars'"),
    (["memory", "fuse"], "slowfast-vgen memory fuse: the following arguments are required: memory, model"),
    (["model", "cast", "a", "-o", "b", "--dtype", "fp8"], "slowfast-vgen model cast: argument --dtype"),
    (["train", "--output-dir", "x", "--stage", "nope"], "slowfast-vgen train: argument --stage: invalid choice"),
    ([], "slowfast-vgen: the following arguments are required: command"),
])
def test_argparse_errors_are_one_line_naming_the_command(tmp_path, capsys, argv, message):
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(message) and error[0].endswith("--help)"), error
    assert "usage:" not in captured.err + captured.out


def test_memory_check_of_a_truncated_or_pickle_model_is_an_error_not_a_no(finished, tiny_pipe_dir, tmp_path, capsys):
    import shutil

    memory = str(finished / "episode.memory.safetensors")
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_pipe_dir, truncated)
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert run_cli(["memory", "check", memory, str(truncated)]) == 2
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_pipe_dir, pickled, ignore=shutil.ignore_patterns("diffusion_pytorch_model.safetensors"))
    SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir).unet.save_pretrained(pickled / "unet", safe_serialization=False)
    assert run_cli(["memory", "check", memory, str(pickled)]) == 2
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = run_cli(["generate", str(tmp_path / "out.mp4"), "--model", str(pickled), "--actions", "stay", *FAST])
    error = capsys.readouterr().err
    assert code == 2 and "--model" in error and "Traceback" not in error, error
    assert snapshot(tmp_path) == before


def test_the_packs_objects_print_as_short_summaries(tiny_pipe, tiny_pipe_dir):
    """ComfyUI puts a failed node's inputs (repr) in its error report; a memory once printed 294 KB of tensors."""
    from slowfast_vgen.nodes.world_model import Chunk, WorldModel

    memory = tiny_pipe.new_memory(TempLoRAConfig(rank=4))
    world = WorldModel(tiny_pipe, "tiny", torch.device("cpu"), torch.device("cpu"))
    chunk = Chunk(torch.zeros(1, 4, 5, 16, 16), (1, 4), ("move left",))
    for value, words in ((memory, "rank=4"), (world, "'tiny'"), (chunk, "(1, 4, 5, 16, 16)")):
        assert len(repr(value)) < 300 and words in repr(value), repr(value)


def test_generate_presets_and_single_field_overrides(tiny_pipe_dir):
    import argparse

    from slowfast_vgen.generate import add_generate_command, check_arguments
    from slowfast_vgen.pipelines import TEMP_LORA_PRESETS

    commands = argparse.ArgumentParser().add_subparsers()
    add_generate_command(commands)
    parser = commands.choices["generate"]
    model = ["--model", str(tiny_pipe_dir)]
    assert check_arguments(parser.parse_args(model)) == TempLoRAConfig(panorama=True, steps_per_update=0), \
        "the panorama alone by default"
    assert check_arguments(parser.parse_args([*model, "--lora-preset", "paper"])) == TempLoRAConfig()
    assert check_arguments(parser.parse_args([*model, "--lora-preset", "paper+panorama"])) == \
        TempLoRAConfig(panorama=True)
    assert check_arguments(parser.parse_args([*model, "--lora-preset", "paper+panorama", "--no-panorama"])) == \
        TempLoRAConfig()
    with pytest.raises(SystemExit, match="--lora-steps: .*such a memory learns nothing"):
        check_arguments(parser.parse_args([*model, "--no-panorama"]))  # the default preset trains nothing
    assert check_arguments(parser.parse_args([*model, "--lora-preset", "replay"])) == TEMP_LORA_PRESETS["replay"]
    tuned = check_arguments(parser.parse_args([*model, "--lora-preset", "way-back", "--lora-steps", "2",
                                               "--no-lora-action-text"]))
    assert tuned == TempLoRAConfig(objective="transition", direction="backward", action_text=False,
                                   learning_rate=3e-3, steps_per_update=2)
    with pytest.raises(SystemExit):  # argparse names the choices
        parser.parse_args([*model, "--lora-preset", "fast"])
