"""weights_tools: memories and world models as files (issue 5). Real diffusers / peft / safetensors, tiny models."""

from __future__ import annotations

import argparse
import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import TextToVideoSDPipeline, UNet3DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel

from slowfast_vgen.pipelines import SlowFastVGenPipeline, TempLoRAConfig, WorldModelSpec, build_pipeline, model_fingerprint
from slowfast_vgen.pipelines.temp_lora import memory_applied
from slowfast_vgen.weights_tools import (
    WeightsFileError,
    cast_memory,
    cast_quality,
    cast_world_model,
    export_checkpoint,
    file_fingerprint,
    fuse_memory,
    inspect_memory,
    load_memory,
    memory_from_peft,
    memory_to_peft,
    merge_memories,
)
from slowfast_vgen.weights_tools.cli import add_weights_commands
from slowfast_vgen.weights_tools.memory_tools import PEFT_SIDECAR_NAME

# Fusing adds the update to the weights in float64 and rounds once to float32, where the LoRA path
# computes x A^T B^T in float32: the UNet outputs (magnitude ~1.5) agree to float32 rounding (measured 1e-6).
FUSE_ATOL = 1e-5


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_weights_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.run(args)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes: to show a failed command left the disk as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def latents(seed: int, frames: int = 2) -> torch.Tensor:
    return torch.randn(1, 4, frames, 16, 16, generator=torch.Generator().manual_seed(seed))


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(1, 4, 3, 16, 16, generator=generator)
    states = torch.randn(1, 16, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, 500, encoder_hidden_states=states).sample


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny world model folder, its pipeline and two trained memories (rank 4) made on it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("world") / "tiny"
    pipe = build_pipeline(WorldModelSpec.tiny())
    pipe.save_pretrained(folder)
    config = TempLoRAConfig(rank=4, learning_rate=1e-3)
    generator = torch.Generator().manual_seed(0)
    first = pipe.update_memory(None, latents(1), latents(2), action="move left", config=config, generator=generator)
    first = pipe.update_memory(first, latents(2), latents(3), action="move up", generator=generator)
    second = pipe.update_memory(None, latents(4), latents(5), action="move right", config=config, generator=generator)
    return folder, pipe, first, second


@pytest.fixture
def memory_file(world, tmp_path):
    path = tmp_path / "episode.safetensors"
    world[2].save(path)
    return path


def assert_same_memory(a, b) -> None:
    assert a.config == b.config and a.base_fingerprint == b.base_fingerprint
    assert (a.optimizer_steps, a.num_updates, a.frames_seen, a.actions) == (
        b.optimizer_steps, b.num_updates, b.frames_seen, b.actions)
    for mine, theirs in ((a.lora, b.lora), (a.optimizer_state, b.optimizer_state)):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key


def lora_deltas(memory) -> dict[str, torch.Tensor]:
    return {key[:-len(".lora_A.weight")]: memory.lora[key.replace("lora_A", "lora_B")].double()
            @ memory.lora[key].double() for key in memory.lora if key.endswith("lora_A.weight")}


# ------------------------------------------------------------------------------------------ round trips


def test_save_load_round_trip_is_bit_exact(world, memory_file):
    assert_same_memory(load_memory(memory_file), world[2])


def test_peft_round_trip_is_bit_exact(world, tmp_path):
    assert run_cli("memory", "convert", world[0] / "../x.safetensors", "-o", tmp_path / "p") == 2  # no such file
    world[2].save(tmp_path / "m.safetensors")
    assert run_cli("memory", "convert", tmp_path / "m.safetensors", "-o", tmp_path / "peft") == 0
    assert run_cli("memory", "convert", tmp_path / "peft", "-o", tmp_path / "back.safetensors") == 0
    assert_same_memory(load_memory(tmp_path / "back.safetensors"), world[2])


def test_peft_loads_the_exported_folder_with_the_same_unet_output(world, tmp_path):
    from peft import PeftModel

    folder, _, memory, _ = world
    memory_to_peft(memory, tmp_path / "peft")
    ours = UNet3DConditionModel.from_pretrained(folder / "unet")
    with memory_applied(ours, memory):
        expected = unet_output(ours)
    theirs = PeftModel.from_pretrained(UNet3DConditionModel.from_pretrained(folder / "unet"), tmp_path / "peft")
    base = unet_output(UNet3DConditionModel.from_pretrained(folder / "unet"))
    assert not torch.allclose(expected, base, atol=1e-6)  # the memory does change the output
    torch.testing.assert_close(unet_output(theirs), expected, rtol=0, atol=1e-6)


def test_a_foreign_peft_adapter_needs_its_base_model(world, tmp_path):
    folder, _, memory, _ = world
    memory_to_peft(memory, tmp_path / "peft")
    (tmp_path / "peft" / PEFT_SIDECAR_NAME).unlink()
    with pytest.raises(WeightsFileError, match="--base"):
        memory_from_peft(tmp_path / "peft")
    converted = memory_from_peft(tmp_path / "peft", base_model=folder)
    assert converted.base_fingerprint == memory.base_fingerprint
    assert all(torch.equal(converted.lora[k], memory.lora[k]) for k in memory.lora)


def test_a_foreign_peft_adapter_with_its_own_alpha_changes_the_unet_as_peft_does(world, tmp_path):
    """Memories have a LoRA scale of 1; an adapter trained elsewhere with lora_alpha = 4 * r is imported with
    its B tensors scaled by 4, so that it changes the UNet's output exactly as peft applies it."""
    from peft import PeftModel

    folder, _, memory, _ = world
    memory_to_peft(memory, tmp_path / "peft")
    (tmp_path / "peft" / PEFT_SIDECAR_NAME).unlink()
    config_file = tmp_path / "peft" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "lora_alpha": 4 * memory.config.rank}))
    theirs = PeftModel.from_pretrained(UNet3DConditionModel.from_pretrained(folder / "unet"), tmp_path / "peft")
    converted = memory_from_peft(tmp_path / "peft", base_model=folder)
    ours = UNet3DConditionModel.from_pretrained(folder / "unet")
    with memory_applied(ours, converted):
        expected = unet_output(ours)
    with memory_applied(ours, memory):
        at_scale_one = unet_output(ours)
    assert not torch.allclose(expected, at_scale_one, atol=1e-5), "the adapter's alpha does matter"
    torch.testing.assert_close(unet_output(theirs), expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ inspect / check


def test_inspect_reports_the_memory(world, memory_file, capsys):
    memory = world[2]
    summary = inspect_memory(memory_file)
    assert (summary["rank"], summary["scale"], summary["num_tensors"]) == (4, 1.0, len(memory.lora))
    assert summary["num_parameters"] == memory.num_parameters
    assert summary["base_fingerprint"] == memory.base_fingerprint
    assert summary["actions"] == ["move left", "move up"] and summary["num_updates"] == 2
    assert summary["frames_seen"] == memory.frames_seen and summary["dtypes"] == ["F32"]
    norms = list(summary["layer_norms"].values())
    assert len(norms) == len(memory.lora) // 2 and norms == sorted(norms, reverse=True) and norms[0] > 0
    name = next(iter(summary["layer_norms"]))
    assert norms[0] == pytest.approx(float(lora_deltas(memory)[name].norm()), rel=1e-6)
    assert run_cli("memory", "inspect", memory_file, "--json") == 0
    assert json.loads(capsys.readouterr().out)["layer_norms"] == summary["layer_norms"]
    assert run_cli("memory", "inspect", memory_file) == 0
    assert "move left, move up" in capsys.readouterr().out


def test_check_says_whether_a_memory_fits(world, memory_file, tmp_path, capsys):
    folder, _, memory, _ = world
    assert run_cli("memory", "check", memory_file, folder) == 0
    other = tmp_path / "other"
    build_pipeline(WorldModelSpec.tiny(), seed=1).save_pretrained(other)
    assert run_cli("memory", "check", memory_file, other) == 1
    assert "fingerprint" in capsys.readouterr().out
    # An adapter of another rank that claims rank 4: the shapes give it away, and it is damaged, not foreign.
    lying = replace(memory, lora={k: torch.cat([t, t], dim=0 if "lora_A" in k else 1) for k, t in memory.lora.items()},
                    optimizer_state={})
    lying.save(tmp_path / "rank8.safetensors")
    assert run_cli("memory", "check", tmp_path / "rank8.safetensors", folder) == 2
    assert "do not agree with its own settings" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ merge


def test_merge_of_one_memory_with_weight_one_is_that_memory(world, tmp_path):
    memory = world[2]
    assert_same_memory(merge_memories([memory], [1.0]).memory, memory)
    assert run_cli("memory", "merge", world[0] / "nothing.safetensors", "-o", tmp_path / "m.safetensors") == 2
    # Refactorised at a larger rank, the update is still the same one.
    result = merge_memories([memory], [1.0], rank=6)
    assert result.relative_error < 1e-6
    for name, delta in lora_deltas(memory).items():
        torch.testing.assert_close(lora_deltas(result.memory)[name], delta, rtol=0, atol=1e-6)


def test_merge_of_two_reports_an_error_that_shrinks_as_rank_grows(world, tmp_path, capsys):
    _, _, first, second = world
    errors = [merge_memories([first, second], [0.7, 0.3], rank=rank).relative_error for rank in (1, 2, 4, 8)]
    assert errors[0] > errors[1] > errors[2] > 0 and errors[3] < 1e-6
    exact = merge_memories([first, second], [0.7, 0.3], rank=8).memory
    for name, delta in lora_deltas(exact).items():
        expected = 0.7 * lora_deltas(first)[name] + 0.3 * lora_deltas(second)[name]
        torch.testing.assert_close(delta, expected, rtol=0, atol=1e-6)
    assert exact.actions == ("move left", "move up", "move right") and exact.optimizer_state == {}
    first.save(tmp_path / "a.safetensors")
    second.save(tmp_path / "b.safetensors")
    assert run_cli("memory", "merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--weights", "0.7",
                   "0.3", "--rank", "2", "-o", tmp_path / "ab.safetensors", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["relative_error"] == pytest.approx(errors[1], rel=1e-6)
    assert load_memory(tmp_path / "ab.safetensors").config.rank == 2


def test_merge_of_different_targets_is_refused_and_writes_nothing(world, tmp_path, capsys):
    folder, pipe, first, _ = world
    temporal = pipe.update_memory(None, latents(1), latents(2), config=TempLoRAConfig(rank=4, target="temporal-attention"))
    first.save(tmp_path / "a.safetensors")
    temporal.save(tmp_path / "t.safetensors")
    before = snapshot(tmp_path)
    assert run_cli("memory", "merge", tmp_path / "a.safetensors", tmp_path / "t.safetensors",
                   "-o", tmp_path / "out.safetensors") == 2
    assert "same targets" in capsys.readouterr().err and snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------ fuse


def test_fuse_equals_base_plus_memory(world, tmp_path):
    folder, _, memory, _ = world
    result = fuse_memory(memory, folder, tmp_path / "fused")
    fused = UNet3DConditionModel.from_pretrained(tmp_path / "fused" / "unet")
    base = UNet3DConditionModel.from_pretrained(folder / "unet")
    with memory_applied(base, memory):
        expected = unet_output(base)
    torch.testing.assert_close(unet_output(fused), expected, rtol=0, atol=FUSE_ATOL)
    assert result.fused_fingerprint != result.base_fingerprint
    assert file_fingerprint(tmp_path / "fused").value == result.fused_fingerprint == model_fingerprint(fused)
    pipe = SlowFastVGenPipeline.from_pretrained(tmp_path / "fused")
    assert pipe.context_window == WorldModelSpec.tiny().context_window
    assert json.loads((tmp_path / "fused" / "slowfast_vgen_fused.json").read_text())[0]["actions"] == list(memory.actions)


def test_fuse_of_a_memory_of_another_model_writes_nothing(world, memory_file, tmp_path, capsys):
    other = tmp_path / "other"
    build_pipeline(WorldModelSpec.tiny(), seed=1).save_pretrained(other)
    assert run_cli("memory", "fuse", memory_file, other, "-o", tmp_path / "fused") == 2
    assert "fingerprint" in capsys.readouterr().err and not (tmp_path / "fused").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


# ------------------------------------------------------------------------------------------ cast


def test_cast_memory_is_smaller_and_still_generates(world, memory_file, tmp_path, capsys):
    folder, pipe, memory, _ = world
    assert run_cli("memory", "cast", memory_file, "--dtype", "bf16", "-o", tmp_path / "half.safetensors") == 0
    assert "bytes saved" in capsys.readouterr().out
    half = load_memory(tmp_path / "half.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in half.lora.values())
    assert all(t.dtype == torch.float32 for t in half.optimizer_state.values())
    assert os.path.getsize(tmp_path / "half.safetensors") < os.path.getsize(memory_file)
    small = cast_memory(memory, torch.float16, drop_optimizer=True)
    assert small.optimizer_state == {} and small.actions == memory.actions
    out = pipe("move left", context_latents=latents(3), num_frames=2, memory=half, num_inference_steps=2,
               output_type="latent", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.latents).all()


def test_cast_world_model_keeps_bf16_fingerprint_and_reports_psnr(world, tmp_path):
    folder = world[0]
    result = cast_world_model(folder, tmp_path / "bf16", torch.bfloat16)
    assert result.bytes_after < 0.6 * result.bytes_before
    assert result.fingerprint_after == result.fingerprint_before
    assert 20 < cast_quality(folder, tmp_path / "bf16", num_inference_steps=2) < float("inf")


# ------------------------------------------------------------------------------------------ fingerprint


def test_fingerprint_from_files_equals_the_loaded_model_and_is_stable(world, tmp_path):
    folder, pipe, _, _ = world
    on_disk = file_fingerprint(folder)
    assert on_disk.value == model_fingerprint(UNet3DConditionModel.from_pretrained(folder / "unet")) == pipe.base_fingerprint
    assert on_disk.bytes_read < on_disk.bytes_total
    pipe.save_pretrained(tmp_path / "again")
    assert file_fingerprint(tmp_path / "again").value == on_disk.value
    # config.json without the defaults a loaded model fills in: same fingerprint.
    config_file = tmp_path / "again" / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k not in ("act_fn", "norm_eps")}))
    assert file_fingerprint(tmp_path / "again").value == on_disk.value


def test_fingerprint_changes_with_one_tensor(world, tmp_path):
    folder = world[0]
    pipe = SlowFastVGenPipeline.from_pretrained(folder)
    with torch.no_grad():
        pipe.unet.conv_out.bias[0] += 0.5
    pipe.save_pretrained(tmp_path / "changed")
    assert file_fingerprint(tmp_path / "changed").value != file_fingerprint(folder).value


# ------------------------------------------------------------------------------------------ import / export


@pytest.fixture
def modelscope_folder(world, tmp_path):
    """A tiny model in the exact diffusers layout of text-to-video-ms-1.7b (TextToVideoSDPipeline)."""
    pipe = SlowFastVGenPipeline.from_pretrained(world[0])
    folder = tmp_path / "text-to-video-ms-tiny"
    TextToVideoSDPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                          scheduler=pipe.scheduler).save_pretrained(folder)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "TextToVideoSDPipeline"
    return folder


@pytest.mark.parametrize("link", [False, True])
def test_import_a_modelscope_folder(world, modelscope_folder, tmp_path, link):
    out = tmp_path / "world"
    assert run_cli("model", "import", modelscope_folder, "-o", out, "--context-window", "8", *(["--link"] if link else [])) == 0
    pipe = SlowFastVGenPipeline.from_pretrained(out)
    assert pipe.context_window == 8 and pipe.base_fingerprint == world[1].base_fingerprint
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.is_symlink() == link
    assert run_cli("memory", "check", tmp_path / "none.safetensors", out) == 2


def test_import_refuses_pickles_unless_asked_and_then_loads_weights_only(world, modelscope_folder, tmp_path, capsys):
    unet_dir = modelscope_folder / "unet"
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), unet_dir / "diffusion_pytorch_model.bin")
    weights.unlink()
    assert run_cli("model", "import", modelscope_folder, "-o", tmp_path / "w") == 2
    assert "--allow-pickle" in capsys.readouterr().err and not (tmp_path / "w").exists()
    assert run_cli("model", "import", modelscope_folder, "-o", tmp_path / "w", "--allow-pickle") == 0
    assert file_fingerprint(tmp_path / "w").value == world[1].base_fingerprint


def test_export_a_training_checkpoint(world, tmp_path):
    from accelerate import Accelerator

    folder = world[0]
    unet = UNet3DConditionModel.from_pretrained(folder / "unet")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    with torch.no_grad():
        unet.conv_out.bias.add_(1.0)
        text_encoder.get_input_embeddings().weight.add_(1.0)
    accelerator = Accelerator(cpu=True)
    checkpoint = tmp_path / "run" / "checkpoint-10"
    accelerator.prepare(unet)
    accelerator.save_state(str(checkpoint))
    frozen_text_export = export_checkpoint(checkpoint, folder, tmp_path / "frozen-text")
    assert not frozen_text_export.trained_text_encoder
    accelerator.prepare(text_encoder)  # as --train-text-encoder does: the UNet first, the text encoder second
    accelerator.save_state(str(checkpoint))
    ema = UNet3DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        ema.conv_out.bias.add_(0.5)
    ema.save_pretrained(checkpoint / "ema_unet")
    world_config = {"camera_fovy": 80.0, "pose_headings": 16, "action_motions": {"turn left": [1, 0]}}
    (tmp_path / "run" / "run_config.json").write_text(json.dumps({"base_model": str(folder),
                                                                  "world_config": world_config}))

    result = export_checkpoint(checkpoint, None, tmp_path / "exported")
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert {key: index[key] for key in world_config} == world_config  # what the run set on the model's config
    assert json.loads((tmp_path / "frozen-text" / "model_index.json").read_text()).get("camera_fovy") is None
    exported = UNet3DConditionModel.from_pretrained(tmp_path / "exported" / "unet")
    assert result.used_ema and torch.equal(exported.conv_out.bias, ema.conv_out.bias)
    exported_text = CLIPTextModel.from_pretrained(tmp_path / "exported" / "text_encoder")
    assert result.trained_text_encoder and torch.equal(exported_text.get_input_embeddings().weight,
                                                       text_encoder.get_input_embeddings().weight)
    assert (tmp_path / "exported" / "text_encoder" / "model.safetensors").is_file()
    assert result.fingerprint == model_fingerprint(ema) != file_fingerprint(folder).value
    assert run_cli("model", "export", checkpoint, "--no-ema", "-o", tmp_path / "trained") == 0
    trained = SlowFastVGenPipeline.from_pretrained(tmp_path / "trained").unet
    assert torch.equal(trained.conv_out.bias, unet.conv_out.bias)
    other = tmp_path / "other"
    build_pipeline(WorldModelSpec(image_size=32, vae_channels=(8, 16), unet_channels=(8, 16), unet_head_dim=4,
                                  norm_num_groups=4, text_hidden_size=32, text_layers=1)).save_pretrained(other)
    with pytest.raises(WeightsFileError, match="does not hold weights"):
        export_checkpoint(checkpoint, other, tmp_path / "mismatch")
    assert not (tmp_path / "mismatch").exists()
    for broken, problem in (("{not json", "is not valid JSON"), (json.dumps({"base_model": str(folder), "world_config": [1]}),
                                                                 "'world_config' should be an object")):
        (tmp_path / "run" / "run_config.json").write_text(broken)
        with pytest.raises(WeightsFileError, match=problem):
            export_checkpoint(checkpoint, folder, tmp_path / "broken")
        assert not (tmp_path / "broken").exists()


# ------------------------------------------------------------------------------------------ bad input


def test_truncated_lying_and_pickle_memories_get_clear_errors_and_nothing_is_written(memory_file, tmp_path, capsys):
    data = memory_file.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-100])
    header_length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] + 1, *header[name]["shape"][1:]]
    lie = json.dumps(header).encode()
    (tmp_path / "lying.safetensors").write_bytes(struct.pack("<Q", len(lie)) + lie + data[8 + header_length:])
    torch.save({"x": torch.zeros(2)}, tmp_path / "old.pt")
    before = snapshot(tmp_path)
    for bad, message in (("truncated", "truncated"), ("lying", "header"), ("old", "pickle")):
        path = tmp_path / (f"{bad}.pt" if bad == "old" else f"{bad}.safetensors")
        for argv in (("inspect", path), ("merge", path, memory_file, "-o", tmp_path / "out.safetensors"),
                     ("cast", path, "-o", tmp_path / "out.safetensors"), ("convert", path, "-o", tmp_path / "peft")):
            assert run_cli("memory", *argv) == 2, (bad, argv)
            assert message in capsys.readouterr().err, (bad, argv)
    assert snapshot(tmp_path) == before


def test_existing_outputs_are_only_replaced_with_force(world, memory_file, tmp_path, capsys):
    target = tmp_path / "half.safetensors"
    target.write_bytes(b"precious")
    assert run_cli("memory", "cast", memory_file, "-o", target) == 2
    assert "--force" in capsys.readouterr().err and target.read_bytes() == b"precious"
    assert run_cli("memory", "cast", memory_file, "-o", target, "--force") == 0
    assert load_memory(target).num_updates == 2
    (tmp_path / "peft").mkdir()
    assert run_cli("memory", "convert", memory_file, "-o", tmp_path / "peft") == 2
    assert run_cli("memory", "convert", memory_file, "-o", tmp_path / "peft", "--force") == 0
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


def test_filenames_escaping_the_output_folder_are_refused(world, modelscope_folder, tmp_path, capsys):
    unet_dir = modelscope_folder / "unet"
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    escaped = tmp_path / "escaped.safetensors"
    weights.rename(escaped)
    with safe_open(escaped, "pt") as handle:
        index = {"metadata": {}, "weight_map": {name: "../../escaped.safetensors" for name in handle.keys()}}
    (unet_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert run_cli("model", "import", modelscope_folder, "-o", tmp_path / "w") == 2
    assert "outside" in capsys.readouterr().err and not (tmp_path / "w").exists()
