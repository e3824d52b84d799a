"""The fast paths of generation and fast learning give the same results as the plain ones.

Folded memory (W + scale B A for the duration of a chunk) against peft's LoRA layers; automatic gradient
checkpointing against forced settings; samplers by name, through `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from slowfast_vgen.pipelines import (
    SCHEDULERS,
    EpisodicMemory,
    SlowFastVGenPipeline,
    TempLoRAConfig,
    scheduler_from_name,
    scheduler_name,
)
from slowfast_vgen.pipelines import lora_layers as temp_lora  # where memory_for_sampling reads foldable
from slowfast_vgen.pipelines.temp_lora import (
    MemoryClip,
    foldable,
    memory_examples,
    needs_checkpointing,
    update_activation_bytes,
)

TRAINED = TempLoRAConfig(rank=4, learning_rate=3e-2, steps_per_update=3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chunk(pipe, context, memory=None, **kwargs):
    kwargs = {"num_frames": 2, "num_inference_steps": 3, "output_type": "latent", **kwargs}
    return pipe("move left", context_latents=context, memory=memory, generator=gen(0), **kwargs).latents


@pytest.fixture
def trained_memory(tiny_pipe, tiny_context) -> EpisodicMemory:
    new = chunk(tiny_pipe, tiny_context)
    return tiny_pipe.update_memory(None, tiny_context, new, config=TRAINED, generator=gen(1))


def base_state(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items() if "lora_" not in k}


def test_folded_generation_equals_lora_layers_and_restores_the_base_exactly(tiny_pipe, tiny_context, trained_memory,
                                                                          monkeypatch):
    base_before = base_state(tiny_pipe)
    without_before = chunk(tiny_pipe, tiny_context)
    with torch.no_grad():
        assert foldable(tiny_pipe.unet, trained_memory)
    folded = chunk(tiny_pipe, tiny_context, trained_memory)
    monkeypatch.setattr(temp_lora, "foldable", lambda unet, memory: False)
    layered = chunk(tiny_pipe, tiny_context, trained_memory)
    monkeypatch.undo()
    assert (folded - without_before).abs().max() > 1e-2, "the memory changes the chunk"
    torch.testing.assert_close(folded, layered, rtol=0, atol=1e-5)
    base_after = base_state(tiny_pipe)
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before), "base weights bit-identical"
    assert torch.equal(chunk(tiny_pipe, tiny_context), without_before), "no memory: the base model bit for bit"


def test_folding_is_refused_where_it_would_be_wrong(tiny_pipe, trained_memory):
    target = next(iter(temp_lora.lora_target_modules(tiny_pipe.unet, trained_memory.config).values()))
    with torch.no_grad():
        assert foldable(tiny_pipe.unet, trained_memory)
    target.weight.requires_grad_(True)
    try:
        with torch.enable_grad():  # training the base through the memory (the slow-fast loop's outer step)
            assert not foldable(tiny_pipe.unet, trained_memory)
    finally:
        target.weight.requires_grad_(False)
    target._hf_hook = object()  # accelerate swaps offloaded weights in at each forward
    try:
        assert not foldable(tiny_pipe.unet, trained_memory)
    finally:
        del target._hf_hook


def test_automatic_checkpointing_estimate_bounds_what_the_update_keeps(tiny_pipe, tiny_context):
    new = chunk(tiny_pipe, tiny_context)
    clip = MemoryClip(torch.cat([tiny_context, new], dim=2), new.shape[2])
    config = TempLoRAConfig(rank=4)
    (example,) = memory_examples(clip, config)
    memory = tiny_pipe.new_memory(config)
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.enable_grad(), temp_lora.memory_applied(tiny_pipe.unet, memory) as parameters:
        for parameter in parameters.values():
            parameter.requires_grad_(True)
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                tiny_pipe.unet(example.target, torch.tensor([500]),
                               encoder_hidden_states=tiny_pipe.encode_action([""])).sample.sum()
        finally:
            for parameter in parameters.values():
                parameter.requires_grad_(False)
    estimate = update_activation_bytes(tiny_pipe.unet, clip, config)
    assert saved[0] <= estimate <= 3 * saved[0], (saved[0], estimate)


def test_automatic_checkpointing_follows_free_memory_and_gives_the_forced_result(tiny_pipe, tiny_context,
                                                                                 monkeypatch):
    import psutil

    new = chunk(tiny_pipe, tiny_context)
    clip = MemoryClip(torch.cat([tiny_context, new], dim=2), new.shape[2])
    needed = update_activation_bytes(tiny_pipe.unet, clip, TempLoRAConfig(rank=4))
    real = psutil.virtual_memory()
    for free, expected in ((needed, True), (4 * needed, False)):
        monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=free))
        assert needs_checkpointing(tiny_pipe.unet, clip, TempLoRAConfig(rank=4), torch.device("cpu")) is expected
    monkeypatch.undo()
    memories = {flag: tiny_pipe.update_memory(None, tiny_context, new, generator=gen(3),
                                              config=TempLoRAConfig(rank=4, learning_rate=1e-2,
                                                                    gradient_checkpointing=flag))
                for flag in (None, True, False)}
    for key in memories[None].lora:
        torch.testing.assert_close(memories[None].lora[key], memories[False].lora[key], rtol=0, atol=1e-7)
        torch.testing.assert_close(memories[None].lora[key], memories[True].lora[key], rtol=0, atol=1e-7)


def test_memory_to_moves_a_copy(trained_memory):
    moved = trained_memory.to("meta")
    assert all(t.is_meta for t in moved.lora.values()) and all(t.is_meta for t in moved.optimizer_state.values())
    assert not any(t.is_meta for t in trained_memory.lora.values()), "the original memory is untouched"
    assert dataclasses.replace(moved, lora={}, optimizer_state={}) == dataclasses.replace(
        trained_memory, lora={}, optimizer_state={})


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_sampler_switch_round_trips_and_generates(tiny_pipe, tiny_context, tmp_path, name):
    pipe = SlowFastVGenPipeline(**tiny_pipe.components, context_window=tiny_pipe.context_window)
    pipe.scheduler = scheduler_from_name(name, tiny_pipe.scheduler.config)
    assert scheduler_name(pipe.scheduler) == name
    assert pipe.scheduler.config.prediction_type == tiny_pipe.scheduler.config.prediction_type
    pipe.save_pretrained(tmp_path)
    loaded = SlowFastVGenPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is type(pipe.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert scheduler_name(loaded.scheduler) == name
    latents = chunk(pipe, tiny_context)
    assert latents.shape == (1, 4, 2, 16, 16) and torch.isfinite(latents).all()
    torch.testing.assert_close(chunk(loaded, tiny_context), latents, rtol=0, atol=1e-6)


def test_unknown_sampler_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="Unknown scheduler 'euler-a'; known: ddim, dpm\\+\\+, unipc"):
        scheduler_from_name("euler-a", tiny_pipe.scheduler.config)


def test_compile_without_a_cpp_compiler_says_why_and_runs_uncompiled(tiny_pipe, tiny_context, monkeypatch):
    pipe = SlowFastVGenPipeline(**tiny_pipe.components, context_window=tiny_pipe.context_window)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler \\('no-such-compiler-here'\\)"):
        assert pipe.compile_unet() is False
    assert torch.equal(chunk(pipe, tiny_context), chunk(tiny_pipe, tiny_context))


def test_a_compiled_unet_that_fails_falls_back_to_eager_with_a_warning(tiny_pipe, tiny_context):
    pipe = SlowFastVGenPipeline(**tiny_pipe.components, context_window=tiny_pipe.context_window)

    def broken(*args, **kwargs):
        raise RuntimeError("inductor: C++ build failed")

    pipe._compiled_unet = broken
    with pytest.warns(RuntimeWarning, match="torch.compile of the UNet failed \\(RuntimeError: inductor"):
        latents = chunk(pipe, tiny_context)
    assert pipe._compiled_unet is None
    assert torch.equal(latents, chunk(tiny_pipe, tiny_context))
