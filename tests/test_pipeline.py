"""SlowFastVGenPipeline: one masked-conditional chunk per call, diffusers conventions, loading and saving.

Real diffusers / transformers / peft / safetensors on the tiny random model of `build_pipeline`; every
test runs in well under a few seconds on one CPU core.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from safetensors import safe_open

from slowfast_vgen.pipelines import (
    SlowFastVGenPipeline,
    SlowFastVGenPipelineOutput,
    TempLoRAConfig,
    WorldModelSpec,
    build_pipeline,
)
from slowfast_vgen.pipelines.fingerprint import base_state_dict

PIPELINE_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines",
                             "pipeline_slowfast_vgen.py")
STEPS = 3


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chunk(pipe, context, seed=0, **kwargs):
    kwargs = {"num_frames": 2, "num_inference_steps": STEPS, "output_type": "latent", **kwargs}
    return pipe("move left", context_latents=context, generator=gen(seed), **kwargs)


def with_scheduler(pipe, scheduler) -> SlowFastVGenPipeline:
    """A pipeline sharing `pipe`'s models but with its own scheduler (the shared fixture stays untouched)."""
    other = SlowFastVGenPipeline(**{**pipe.components, "scheduler": scheduler},
                                 context_window=pipe.context_window)
    other.set_progress_bar_config(disable=True)
    return other


class UNetRecorder:
    """Forward pre-hook on the UNet: records every call's sample (a copy) and timestep."""

    def __init__(self, unet):
        self.samples: list[torch.Tensor] = []
        self.timesteps: list[torch.Tensor] = []
        self.handle = unet.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.samples.append(sample.detach().clone())
        self.timesteps.append(torch.as_tensor(timestep).clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------------------------------------------
# Conditioning (paper Eq. 1)


def test_mask_mode_context_reaches_unet_bit_identical_at_every_step(tiny_pipe, tiny_context):
    given = tiny_context.clone()
    with UNetRecorder(tiny_pipe.unet) as recorder:
        out = chunk(tiny_pipe, tiny_context, guidance_scale=3.0, conditioning="mask")
    assert len(recorder.samples) == STEPS
    for sample in recorder.samples:
        assert sample.shape == (2, 4, 4, 16, 16)  # CFG batch of 2, 2 context + 2 new frames
        for half in sample.chunk(2):
            assert torch.equal(half[:, :, :2], given), "the clean context must reach the UNet exactly as given"
        assert not torch.equal(sample[:, :, 2:], sample[:, :, :2])
    assert torch.equal(tiny_context, given), "the caller's context latents must not be modified"
    assert out.latents.shape == (1, 4, 2, 16, 16)


def test_mask_mode_context_identical_with_scaling_scheduler(tiny_pipe, tiny_context):
    """Euler scales its model input by 1/sqrt(sigma^2+1); the clean context must not be scaled with it."""
    euler = with_scheduler(tiny_pipe, EulerDiscreteScheduler.from_config(tiny_pipe.scheduler.config))
    with UNetRecorder(euler.unet) as recorder:
        out = chunk(euler, tiny_context, guidance_scale=1.0)
    assert len(recorder.samples) == STEPS
    for sample in recorder.samples:
        assert torch.equal(sample[:, :, :2], tiny_context)
    assert torch.isfinite(out.latents).all()


def test_num_context_frames_takes_the_last_frames(tiny_pipe):
    context = torch.randn(1, 4, 3, 16, 16, generator=gen(5))
    with UNetRecorder(tiny_pipe.unet) as recorder:
        chunk(tiny_pipe, context, num_context_frames=1, guidance_scale=1.0)
    for sample in recorder.samples:
        assert sample.shape[2] == 3  # 1 context + 2 new frames
        assert torch.equal(sample[:, :, :1], context[:, :, -1:])


def test_replace_mode_renoises_context_to_each_timestep(tiny_pipe, tiny_context):
    with UNetRecorder(tiny_pipe.unet) as recorder:
        chunk(tiny_pipe, tiny_context, seed=7, guidance_scale=1.0, conditioning="replace")
    assert len(recorder.samples) == STEPS
    # The pipeline draws the new frames' noise first, then the context noise, from the same generator.
    generator = gen(7)
    randn_tensor((1, 4, 2, 16, 16), generator=generator)
    context_noise = randn_tensor(tiny_context.shape, generator=generator)
    distances = []
    for sample, timestep in zip(recorder.samples, recorder.timesteps):
        seen = sample[:, :, :2]
        assert not torch.equal(seen, tiny_context), "replace mode must re-noise the context"
        expected = tiny_pipe.scheduler.add_noise(tiny_context, context_noise, timestep.reshape(1))
        torch.testing.assert_close(seen, expected, rtol=0, atol=1e-6)
        distances.append((seen - tiny_context).abs().mean().item())
    assert distances == sorted(distances, reverse=True), "less noise on the context as the timestep decreases"


# ---------------------------------------------------------------------------------------------------
# Reproducibility and schedulers


def test_same_seed_bit_identical_different_seed_different(tiny_pipe, tiny_context):
    first = chunk(tiny_pipe, tiny_context, seed=3).latents
    again = chunk(tiny_pipe, tiny_context, seed=3).latents
    other = chunk(tiny_pipe, tiny_context, seed=4).latents
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        pytest.param(lambda config: DDIMScheduler.from_config(config), id="ddim"),
        pytest.param(lambda config: DDPMScheduler.from_config(config), id="ddpm"),
        pytest.param(lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
                     id="dpmsolver++"),
    ],
)
@pytest.mark.parametrize("conditioning", ["mask", "replace"])
def test_schedulers_run_and_are_reproducible(tiny_pipe, tiny_context, make_scheduler, conditioning):
    pipe = with_scheduler(tiny_pipe, make_scheduler(tiny_pipe.scheduler.config))
    first = chunk(pipe, tiny_context, seed=11, conditioning=conditioning).latents
    again = chunk(pipe, tiny_context, seed=11, conditioning=conditioning).latents
    assert first.shape == (1, 4, 2, 16, 16)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    if isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
        assert pipe.scheduler.config.algorithm_type == "dpmsolver++"


# ---------------------------------------------------------------------------------------------------
# diffusers conventions


def test_output_types_shapes_and_ranges(tiny_pipe, tiny_context):
    outputs = {kind: chunk(tiny_pipe, tiny_context, seed=2, output_type=kind) for kind in ("latent", "pt", "np", "pil")}
    latents = outputs["latent"].latents
    assert isinstance(outputs["latent"], SlowFastVGenPipelineOutput)
    assert torch.equal(outputs["latent"].frames, latents)
    for kind in ("pt", "np", "pil"):
        assert torch.equal(outputs[kind].latents, latents), f"{kind}: same seed, same latents"

    pt = outputs["pt"].frames
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 2, 3, 32, 32)
    assert pt.min() >= 0 and pt.max() <= 1

    np_frames = outputs["np"].frames
    assert isinstance(np_frames, np.ndarray) and np_frames.shape == (1, 2, 32, 32, 3)
    assert np_frames.min() >= 0 and np_frames.max() <= 1
    np.testing.assert_allclose(np_frames, pt.permute(0, 1, 3, 4, 2).numpy(), atol=1e-6)

    pil = outputs["pil"].frames
    assert len(pil) == 1 and len(pil[0]) == 2
    assert all(isinstance(frame, PIL.Image.Image) and frame.size == (32, 32) for frame in pil[0])
    np.testing.assert_allclose(np.asarray(pil[0][1]) / 255.0, np_frames[0, 1], atol=1 / 255 + 1e-6)


def test_return_dict_false_gives_frames_latents_tuple(tiny_pipe, tiny_context):
    as_tuple = chunk(tiny_pipe, tiny_context, seed=2, output_type="np", return_dict=False)
    as_dict = chunk(tiny_pipe, tiny_context, seed=2, output_type="np")
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    np.testing.assert_array_equal(as_tuple[0], as_dict.frames)
    assert torch.equal(as_tuple[1], as_dict.latents)


def test_callback_on_step_end_called_each_step_and_can_change_latents(tiny_pipe, tiny_context):
    calls = []

    def callback(pipe, step, timestep, tensors):
        calls.append((step, int(timestep), sorted(tensors)))
        if step == pipe.num_timesteps - 1:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return {}

    out = chunk(tiny_pipe, tiny_context, callback_on_step_end=callback)
    assert [c[0] for c in calls] == list(range(STEPS))
    assert [c[1] for c in calls] == [int(t) for t in tiny_pipe.scheduler.timesteps]
    assert all(c[2] == ["latents"] for c in calls)
    assert torch.equal(out.latents, torch.zeros(1, 4, 2, 16, 16)), "the callback's latents must be returned"

    seen = []
    chunk(tiny_pipe, tiny_context, callback_on_step_end=lambda p, i, t, k: seen.append(sorted(k)) or {},
          callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert seen == [["latents", "prompt_embeds"]] * STEPS
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        chunk(tiny_pipe, tiny_context, callback_on_step_end=lambda *a: {},
              callback_on_step_end_tensor_inputs=["noise_pred_secret"])


def test_progress_bar_follows_set_progress_bar_config(tiny_pipe, tiny_context, capsys):
    pipe = with_scheduler(tiny_pipe, DDIMScheduler.from_config(tiny_pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=False)
    chunk(pipe, tiny_context)
    shown = capsys.readouterr().err
    assert f"{STEPS}/{STEPS}" in shown
    pipe.set_progress_bar_config(disable=True)
    chunk(pipe, tiny_context)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("guidance_scale, batch", [(3.0, 2), (1.0, 1)])
def test_classifier_free_guidance_is_one_batched_unet_call_per_step(tiny_pipe, tiny_context, guidance_scale, batch):
    with UNetRecorder(tiny_pipe.unet) as recorder:
        chunk(tiny_pipe, tiny_context, guidance_scale=guidance_scale)
    assert len(recorder.samples) == STEPS
    assert all(sample.shape[0] == batch for sample in recorder.samples)


def test_guidance_and_action_change_the_chunk(tiny_pipe, tiny_context):
    base = chunk(tiny_pipe, tiny_context, guidance_scale=3.0).latents
    assert not torch.equal(base, chunk(tiny_pipe, tiny_context, guidance_scale=1.0).latents)
    other = tiny_pipe("move right", context_latents=tiny_context, num_frames=2, num_inference_steps=STEPS,
                      output_type="latent", generator=gen(0)).latents
    assert not torch.equal(base, other)


def test_first_chunk_from_image_and_chunk_by_chunk_decoding(tiny_pipe):
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    start = tiny_pipe.encode_frames(image)
    assert start.shape == (1, 4, 1, 16, 16)
    from_image = tiny_pipe("move left", image=image, num_frames=2, num_inference_steps=2, output_type="latent",
                           generator=gen(0)).latents
    from_latents = tiny_pipe("move left", context_latents=start, num_frames=2, num_inference_steps=2,
                             output_type="latent", generator=gen(0)).latents
    assert torch.equal(from_image, from_latents)

    video = torch.cat([start, from_latents], dim=2)
    whole = tiny_pipe.postprocess(video, "np")
    parts = list(tiny_pipe.iter_decode([start, from_latents], output_type="np", frames_per_batch=1))
    assert len(parts) == 3 and all(part.shape == (1, 1, 32, 32, 3) for part in parts)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5)


def test_batch_of_two_with_two_actions(tiny_pipe):
    context = torch.randn(2, 4, 2, 16, 16, generator=gen(9))
    out = tiny_pipe(["move left", "move right"], context_latents=context, num_frames=2, num_inference_steps=2,
                    output_type="latent", generator=gen(0))
    assert out.latents.shape == (2, 4, 2, 16, 16)
    assert torch.isfinite(out.latents).all()


# ---------------------------------------------------------------------------------------------------
# Saving and loading


def unet_safetensors_keys(folder) -> list[str]:
    files = [f for f in os.listdir(os.path.join(folder, "unet")) if f.endswith(".safetensors")]
    assert files, "the UNet must be saved as safetensors"
    keys = []
    for name in files:
        with safe_open(os.path.join(folder, "unet", name), framework="pt") as handle:
            keys.extend(handle.keys())
    return keys


def test_save_pretrained_from_pretrained_bit_exact_without_lora_keys(tmp_path, tiny_context):
    pipe = build_pipeline(WorldModelSpec.tiny(), seed=0)
    pipe.set_progress_bar_config(disable=True)
    base = chunk(pipe, tiny_context).latents
    memory = pipe.update_memory(None, tiny_context, base, action="move left",
                                config=TempLoRAConfig(rank=4, learning_rate=1e-2), generator=gen(0))
    with_memory = chunk(pipe, tiny_context, memory=memory).latents
    assert not torch.equal(with_memory, base)
    fingerprint = pipe.base_fingerprint

    pipe.save_pretrained(tmp_path)
    keys = unet_safetensors_keys(tmp_path)
    assert not [k for k in keys if "lora" in k.lower()], "Temp-LoRA layers must never leak into the saved base model"
    assert not [k for k in keys if "base_layer" in k]
    assert not [f for f in os.listdir(tmp_path / "unet") if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "SlowFastVGenPipeline"
    # Saving did not take the memory out of the live pipeline.
    assert torch.equal(chunk(pipe, tiny_context, memory=memory).latents, with_memory)

    loaded = SlowFastVGenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.context_window == pipe.context_window
    original_state, loaded_state = base_state_dict(pipe.unet), loaded.unet.state_dict()
    assert original_state.keys() == loaded_state.keys()
    assert all(torch.equal(original_state[k], loaded_state[k]) for k in original_state)
    assert loaded.base_fingerprint == fingerprint
    assert torch.equal(chunk(loaded, tiny_context, output_type="latent").latents, base)
    np.testing.assert_array_equal(chunk(loaded, tiny_context, output_type="np").frames,
                                  chunk(pipe, tiny_context, output_type="np").frames)
    # A memory made before saving works on the reloaded model, bit for bit.
    assert torch.equal(chunk(loaded, tiny_context, memory=memory).latents, with_memory)


def test_saved_folders_carry_no_path_of_the_saving_machine(tiny_pipe_dir, tmp_path):
    from slowfast_vgen.paths import DEFAULT_MODEL_DIR

    resaved = tmp_path / "resaved"
    SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir).save_pretrained(resaved)  # diffusers records the source
    for folder in (resaved, DEFAULT_MODEL_DIR):
        for config in folder.rglob("*.json"):
            text = config.read_text()
            assert "_name_or_path" not in text and str(tiny_pipe_dir) not in text, config


def test_saved_fixture_folder_matches_session_pipeline(tiny_pipe, tiny_pipe_dir, tiny_context):
    loaded = SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(chunk(loaded, tiny_context).latents, chunk(tiny_pipe, tiny_context).latents)


def test_loads_as_diffusers_custom_pipeline(tiny_pipe, tiny_pipe_dir, tiny_context, tmp_path, monkeypatch):
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    modules = tmp_path / "hf_modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(modules))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(modules))
    for name in [n for n in sys.modules if n == "diffusers_modules" or n.startswith("diffusers_modules.")]:
        monkeypatch.delitem(sys.modules, name)
    pipe = DiffusionPipeline.from_pretrained(tiny_pipe_dir, custom_pipeline=PIPELINE_FILE, trust_remote_code=True)
    assert type(pipe).__name__ == "SlowFastVGenPipeline"
    assert type(pipe).__module__.startswith("diffusers_modules"), "must be the dynamically loaded file"
    assert (modules / "diffusers_modules").is_dir()
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(chunk(pipe, tiny_context).latents, chunk(tiny_pipe, tiny_context).latents)


def test_modelscope_layout_folder_loads_unchanged(tiny_pipe, tiny_context, tmp_path):
    try:
        from diffusers import TextToVideoSDPipeline
    except ImportError:  # pragma: no cover - diffusers removed it: write the ModelScope index by hand
        TextToVideoSDPipeline = None
    fresh = build_pipeline(WorldModelSpec.tiny(), seed=0)
    components = {k: v for k, v in fresh.components.items()}
    if TextToVideoSDPipeline is not None:
        TextToVideoSDPipeline(**components).save_pretrained(tmp_path)
    else:  # pragma: no cover
        fresh.save_pretrained(tmp_path)
        index = json.loads((tmp_path / "model_index.json").read_text())
        index["_class_name"] = "TextToVideoSDPipeline"
        index.pop("context_window", None)
        (tmp_path / "model_index.json").write_text(json.dumps(index))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    assert "context_window" not in index

    pipe = SlowFastVGenPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, SlowFastVGenPipeline)
    assert pipe.context_window == 16  # the ModelScope window, as the default
    assert torch.equal(chunk(pipe, tiny_context).latents, chunk(tiny_pipe, tiny_context).latents)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="enable_model_cpu_offload needs an accelerator (torch.cuda.is_available() is False here); "
                           "it moves each model to the GPU in turn, which cannot be exercised on a CPU-only machine")
def test_enable_model_cpu_offload(tiny_context):  # pragma: no cover - needs a GPU
    reference = build_pipeline(WorldModelSpec.tiny(), seed=0)
    reference.set_progress_bar_config(disable=True)
    pipe = build_pipeline(WorldModelSpec.tiny(), seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload()
    out = pipe("move left", context_latents=tiny_context, num_frames=2, num_inference_steps=2, output_type="np",
               generator=gen(0))
    assert out.frames.shape == (1, 2, 32, 32, 3)
    assert pipe.unet.device.type == "cpu", "offloaded back to the CPU after the call"
    expected = reference("move left", context_latents=tiny_context, num_frames=2, num_inference_steps=2,
                         output_type="latent", generator=gen(0)).latents
    torch.testing.assert_close(out.latents.cpu(), expected, rtol=1e-3, atol=1e-3)
    memory = pipe.update_memory(None, tiny_context, out.latents.cpu(), config=TempLoRAConfig(rank=4))
    assert memory.num_updates == 1


# ---------------------------------------------------------------------------------------------------
# What bad input gets


def test_missing_model_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no model folder") as error:
        SlowFastVGenPipeline.from_pretrained(missing)
    assert str(missing) in str(error.value)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        SlowFastVGenPipeline.from_pretrained(tmp_path)  # exists, but empty


def test_model_folder_lacking_a_component_names_it(tiny_pipe_dir, tmp_path):
    import shutil

    folder = tmp_path / "incomplete"
    shutil.copytree(tiny_pipe_dir, folder)
    shutil.rmtree(folder / "unet")
    os.remove(folder / "scheduler" / "scheduler_config.json")
    with pytest.raises(FileNotFoundError) as error:
        SlowFastVGenPipeline.from_pretrained(folder)
    message = str(error.value)
    assert "unet" in message and "scheduler_config.json" in message and "vae (" not in message


def test_image_size_must_fit_or_be_resized(tiny_pipe):
    image = PIL.Image.new("RGB", (30, 30), (120, 40, 200))
    with pytest.raises(ValueError) as error:
        tiny_pipe("move left", image=image, num_frames=2, num_inference_steps=1, output_type="latent")
    message = str(error.value)
    assert "30x30" in message and "multiples of 4" in message and "32x32" in message and "resize=True" in message
    out = tiny_pipe("move left", image=image, resize=True, num_frames=2, num_inference_steps=1, output_type="np")
    assert out.frames.shape == (1, 2, 32, 32, 3)
    assert tiny_pipe.encode_frames(image, resize=True).shape == (1, 4, 1, 16, 16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": 8}, "sees 8 frames at once, context included, so give num_frames <= 7"),
        ({"num_frames": 7, "num_context_frames": 2}, "context window of 8"),
        ({"num_frames": 0}, "num_frames must be at least 1"),
        ({"num_frames": 2.5}, "num_frames must be a positive integer"),
        ({"conditioning": "inpaint"}, "conditioning must be one of"),
        ({"num_context_frames": 3}, "num_context_frames"),
        ({"output_type": "mp4"}, "output_type"),
        ({"action": []}, "action must be"),
        ({"context_latents": torch.zeros(1, 4, 16, 16)}, "context_latents must be"),
        ({"context_latents": torch.zeros(1, 3, 2, 16, 16)}, "context_latents must be"),
        ({"context_latents": None}, "Pass either `image`"),
        ({"image": PIL.Image.new("RGB", (32, 32))}, "not both"),
        ({"latents": torch.zeros(1, 4, 3, 16, 16)}, "latents must have shape"),
    ],
)
def test_bad_chunk_arguments_are_refused(tiny_pipe, tiny_context, kwargs, match):
    call = {"action": "move left", "context_latents": tiny_context, "num_frames": 2, "num_inference_steps": 1,
            "output_type": "latent", **kwargs}
    with pytest.raises(ValueError, match=match):
        tiny_pipe(**call)


def test_empty_actions_are_refused(tiny_pipe, tiny_context):
    with pytest.raises(ValueError, match="actions is empty"):
        tiny_pipe.generate_episode([], start_latents=tiny_context)
    with pytest.raises(ValueError, match="actions is empty"):
        list(tiny_pipe.stream_episode([], start_latents=tiny_context))
    with pytest.raises(ValueError, match="actions is empty"):
        list(tiny_pipe.stream_episode(iter(()), start_latents=tiny_context))
    with pytest.raises(ValueError, match=r"actions\[1\]"):
        list(tiny_pipe.stream_episode(["move left", "  "], start_latents=tiny_context, temp_lora=False,
                                      num_frames=2, num_inference_steps=1))
    with pytest.raises(ValueError, match="not a string"):
        list(tiny_pipe.stream_episode("move left", start_latents=tiny_context))
    with pytest.raises(ValueError, match="exactly one"):
        list(tiny_pipe.stream_episode(["move left"]))
