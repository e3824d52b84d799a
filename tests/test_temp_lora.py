"""Temp-LoRA, the fast learner: updates, immutable episodic memories, files, mismatches, long episodes.

Real peft LoRA layers in the tiny UNet3D of `build_pipeline`; memories with a small rank keep every test fast.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import warnings

import psutil
import pytest
import torch
from diffusers import DDPMScheduler
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file

from slowfast_vgen.pipelines import (
    TARGET_PRESETS,
    EpisodicMemory,
    MemoryMismatchError,
    SlowFastVGenPipeline,
    TempLoRAConfig,
    WorldModelSpec,
    build_pipeline,
)
from slowfast_vgen.pipelines.pipeline_slowfast_vgen import memory_generator_for
from slowfast_vgen.pipelines.temp_lora import MemoryClip, memory_applied, memory_examples, temp_lora_loss

SMALL = TempLoRAConfig(rank=4, learning_rate=1e-3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chunk(pipe, context, memory=None, seed=0, **kwargs):
    kwargs = {"num_frames": 2, "num_inference_steps": 2, "output_type": "latent", **kwargs}
    return pipe("move left", context_latents=context, memory=memory, generator=gen(seed), **kwargs).latents


def clone_memory(memory: EpisodicMemory) -> EpisodicMemory:
    return dataclasses.replace(
        memory,
        lora={k: t.clone() for k, t in memory.lora.items()},
        optimizer_state={k: t.clone() for k, t in memory.optimizer_state.items()},
    )


def flat(memory: EpisodicMemory) -> torch.Tensor:
    return torch.cat([t.flatten() for t in memory.lora.values()])


def assert_memories_equal(a: EpisodicMemory, b: EpisodicMemory) -> None:
    assert a.config == b.config and a.base_fingerprint == b.base_fingerprint
    assert (a.optimizer_steps, a.num_updates, a.frames_seen, a.actions) == (
        b.optimizer_steps, b.num_updates, b.frames_seen, b.actions)
    assert a.lora.keys() == b.lora.keys() and a.optimizer_state.keys() == b.optimizer_state.keys()
    for key in a.lora:
        assert a.lora[key].dtype == b.lora[key].dtype and torch.equal(a.lora[key], b.lora[key]), key
    for key in a.optimizer_state:
        assert torch.equal(a.optimizer_state[key], b.optimizer_state[key]), key
    assert [(c.new_frames, c.text, c.reverse_text) for c in a.clips] == [
        (c.new_frames, c.text, c.reverse_text) for c in b.clips]
    assert all(torch.equal(x.latents, y.latents) for x, y in zip(a.clips, b.clips))


@pytest.fixture(scope="module")
def trained(tiny_pipe, tiny_context_module):
    """One chunk and a memory trained on it with a few updates (shared by the read-only tests below)."""
    context = tiny_context_module
    new = chunk(tiny_pipe, context)
    memory = None
    for step in range(2):
        memory = tiny_pipe.update_memory(memory, context, new, action=f"move left {step}",
                                         config=dataclasses.replace(SMALL, learning_rate=1e-2), generator=gen(step))
    return context, new, memory


@pytest.fixture(scope="module")
def tiny_context_module():
    return torch.randn(1, 4, 2, 16, 16, generator=gen(1234))


# ---------------------------------------------------------------------------------------------------
# The update (Algorithm 1 (a), lines 11-14)


def test_update_lowers_denoising_loss_on_its_sequence_and_changes_next_chunk(tiny_pipe, tiny_context):
    new = chunk(tiny_pipe, tiny_context)
    clip = torch.cat([tiny_context, new], dim=2)
    noise_scheduler = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    null_embeds = tiny_pipe.encode_action([""])
    fixed = [(torch.tensor([t]), torch.randn(clip.shape, generator=gen(100 + t))) for t in (100, 400, 700, 950)]

    def loss_with(memory) -> float:
        with torch.no_grad(), memory_applied(tiny_pipe.unet, memory):
            return sum(temp_lora_loss(tiny_pipe.unet, noise_scheduler, clip[:, :, :0], clip, null_embeds, t, n).item()
                       for t, n in fixed) / len(fixed)

    base_memory = tiny_pipe.new_memory(TempLoRAConfig(rank=8, learning_rate=5e-3, steps_per_update=6))
    before = loss_with(base_memory)
    assert before == pytest.approx(loss_with(None), rel=1e-6), "a new memory (B = 0) is the base model"
    memory = base_memory
    for update in range(3):
        memory = tiny_pipe.update_memory(memory, tiny_context, new, action="move left", generator=gen(update))
    after = loss_with(memory)
    assert after < 0.97 * before, f"the denoising loss on the trained sequence must drop: {before} -> {after}"
    assert memory.num_updates == 3 and memory.frames_seen == 6 and memory.actions == ("move left",) * 3
    assert memory.optimizer_steps == 18

    next_base = chunk(tiny_pipe, new, seed=5)
    next_memory = chunk(tiny_pipe, new, memory, seed=5)
    assert not torch.allclose(next_base, next_memory), "the memory must change the next chunk"


def test_memory_none_is_exactly_the_base_model_after_memories_were_used(tiny_pipe, tiny_context, trained):
    fresh = build_pipeline(WorldModelSpec.tiny(), seed=0)  # never had LoRA layers
    fresh.set_progress_bar_config(disable=True)
    reference = chunk(fresh, tiny_context, seed=3)
    context, new, memory = trained
    with_memory = chunk(tiny_pipe, tiny_context, memory, seed=3)
    assert not any(isinstance(m, LoraLayer) for m in tiny_pipe.unet.modules()), "LoRA layers only inside updates"
    with memory_applied(tiny_pipe.unet, memory):
        assert any(isinstance(m, LoraLayer) for m in tiny_pipe.unet.modules())
    assert not any(isinstance(m, LoraLayer) for m in tiny_pipe.unet.modules())
    assert not torch.equal(with_memory, reference)
    assert torch.equal(chunk(tiny_pipe, tiny_context, None, seed=3), reference)
    assert torch.equal(chunk(tiny_pipe, tiny_context, memory, seed=3), with_memory), "and back again"
    empty = tiny_pipe.new_memory(SMALL)
    assert torch.equal(chunk(tiny_pipe, tiny_context, empty, seed=3), reference), "an empty memory changes nothing"


def test_update_never_mutates_memory_or_latents_so_episodes_can_branch(tiny_pipe, trained):
    context, new, memory = trained
    memory_before, context_before, new_before = clone_memory(memory), context.clone(), new.clone()
    next_with_memory = chunk(tiny_pipe, new, memory, seed=8)

    left = tiny_pipe.update_memory(memory, context, new, action="turn left", generator=gen(1))
    other_chunk = chunk(tiny_pipe, new, seed=9)
    right = tiny_pipe.update_memory(memory, new, other_chunk, action="turn right", generator=gen(1))

    assert_memories_equal(memory, memory_before)
    assert torch.equal(context, context_before) and torch.equal(new, new_before)
    assert left.actions[-1] == "turn left" and right.actions[-1] == "turn right"
    assert left.num_updates == right.num_updates == memory.num_updates + 1
    assert not all(torch.equal(left.lora[k], right.lora[k]) for k in left.lora), "the branches differ"
    assert not all(torch.equal(left.lora[k], memory.lora[k]) for k in left.lora)
    # The earlier memory still generates exactly what it did before the branches were made.
    assert torch.equal(chunk(tiny_pipe, new, memory, seed=8), next_with_memory)
    # The same update from the same memory with the same seed is reproducible.
    assert_memories_equal(left, tiny_pipe.update_memory(memory, context, new, action="turn left", generator=gen(1)))


def test_update_under_inference_mode_like_comfyui(tiny_pipe, trained):
    context, new, memory = trained
    with torch.inference_mode():
        updated = tiny_pipe.update_memory(memory, context, new, generator=gen(2))
        out = chunk(tiny_pipe, new, updated)
    assert updated.num_updates == memory.num_updates + 1
    assert torch.isfinite(out).all()


def test_nan_loss_warns_and_rolls_back(tiny_pipe, trained):
    context, new, memory = trained
    before = clone_memory(memory)
    expected = chunk(tiny_pipe, new, memory, seed=4)
    poisoned = new.clone()
    poisoned[0, 0, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="rolled back"):
        result = tiny_pipe.update_memory(memory, context, poisoned, action="move left", generator=gen(0))
    assert_memories_equal(result, before)
    assert result.num_updates == memory.num_updates, "a rolled-back update is not counted"
    with memory_applied(tiny_pipe.unet, memory):
        lora_parameters = [p for n, p in tiny_pipe.unet.named_parameters() if "lora_" in n]
    assert lora_parameters and not any(p.requires_grad for p in lora_parameters)
    assert torch.equal(chunk(tiny_pipe, new, result, seed=4), expected), "generation carries on as before"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and a good update after it works without warnings
        recovered = tiny_pipe.update_memory(result, context, new, generator=gen(0))
    assert recovered.num_updates == memory.num_updates + 1


# ---------------------------------------------------------------------------------------------------
# Files


def test_memory_save_load_bit_exact_with_metadata(trained, tmp_path):
    _, _, memory = trained
    path = tmp_path / "episode.safetensors"
    memory.save(path)
    loaded = EpisodicMemory.load(path)
    assert_memories_equal(loaded, memory)
    assert loaded == dataclasses.replace(loaded)  # a frozen dataclass, comparable
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "slowfast-vgen-memory"
    assert json.loads(metadata["actions"]) == list(memory.actions)
    assert TempLoRAConfig.from_json(metadata["config"]) == memory.config
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")], "atomic save leaves no temporary file"
    # (Not byte-identical files: safetensors writes the metadata keys in hash-map order.)
    loaded.save(tmp_path / "again.safetensors")
    assert_memories_equal(EpisodicMemory.load(tmp_path / "again.safetensors"), memory)


def test_loaded_memory_generates_bit_identical_chunk(tiny_pipe, trained, tmp_path):
    _, new, memory = trained
    memory.save(tmp_path / "m.safetensors")
    loaded = EpisodicMemory.load(tmp_path / "m.safetensors")
    assert torch.equal(chunk(tiny_pipe, new, loaded, seed=6), chunk(tiny_pipe, new, memory, seed=6))


def test_a_memory_saved_with_retired_settings_loads_as_the_same_memory(trained, tmp_path):
    """A file from before alpha, the timestep range and keep_optimizer_state were retired: alpha = 2 * rank
    (scale 2, so B and Adam's moments of B were stored as they are at scale 2). It loads as the memory it
    was, bit for bit at scale 1, and the warning names what changed."""
    _, _, memory = trained
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    tensors, metadata = {}, None
    with safe_open(path, framework="pt") as handle:
        metadata = dict(handle.metadata())
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    legacy = {}
    for key, tensor in tensors.items():
        factor = {"lora_B.weight": 0.5, "lora_B.weight.exp_avg": 2.0, "lora_B.weight.exp_avg_sq": 4.0}
        legacy[key] = tensor * next((f for suffix, f in factor.items() if key.endswith(suffix)), 1.0)
    config = json.loads(metadata["config"])
    config.update(alpha=2.0 * memory.config.rank, timestep_range=[0.0, 0.5], keep_optimizer_state=True)
    legacy_path = tmp_path / "legacy.safetensors"
    save_file(legacy, str(legacy_path), metadata={**metadata, "config": json.dumps(config)})
    with pytest.warns(UserWarning, match=r"retired Temp-LoRA settings: alpha 8 .*timestep_range") as caught:
        loaded = EpisodicMemory.load(legacy_path)
    assert "keep_optimizer_state" not in str(caught[0].message), "a retired setting at today's value is no news"
    assert_memories_equal(loaded, memory)
    with pytest.raises(ValueError, match="'alpha' is no longer a Temp-LoRA setting"):
        TempLoRAConfig.from_fields({"alpha": 8.0})


def test_truncated_or_foreign_safetensors_are_clear_errors(trained, tmp_path):
    _, _, memory = trained
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted") as error:
        EpisodicMemory.load(truncated)
    assert str(truncated) in str(error.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        EpisodicMemory.load(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(ValueError, match="not a SlowFast-VGen memory"):
        EpisodicMemory.load(foreign)
    broken = tmp_path / "broken_metadata.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(broken), metadata={"format": "slowfast-vgen-memory"})
    with pytest.raises(ValueError, match="corrupted memory metadata"):
        EpisodicMemory.load(broken)
    with pytest.raises(FileNotFoundError):
        EpisodicMemory.load(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------------
# Mismatched adapters


def mismatched_memories(tiny_pipe, memory: EpisodicMemory) -> dict[str, tuple[EpisodicMemory, str]]:
    other_model = build_pipeline(WorldModelSpec.tiny(), seed=1)
    rank8 = tiny_pipe.new_memory(dataclasses.replace(memory.config, rank=8))
    temporal = tiny_pipe.new_memory(dataclasses.replace(memory.config, target="temporal-attention"))
    return {
        # Made on another base model.
        "fingerprint": (other_model.new_memory(memory.config), "fingerprint"),
        # Tensors of rank 8 under a config that says rank 4 (e.g. a file edited or made by another tool).
        "rank": (dataclasses.replace(memory, lora=rank8.lora, optimizer_state={}), "rank 4"),
        # Tensors of the temporal-attention targets under an all-attention config.
        "targets": (dataclasses.replace(memory, lora=temporal.lora, optimizer_state={}),
                    "target modules 'all-attention'"),
    }


@pytest.mark.parametrize("problem", ["fingerprint", "rank", "targets"])
def test_mismatched_memory_is_refused_and_nothing_changes(tiny_pipe, trained, tmp_path, problem):
    context, new, memory = trained
    base_before = chunk(tiny_pipe, new, seed=2)
    memory_before = chunk(tiny_pipe, new, memory, seed=2)
    structure_before = tiny_pipe.unet._temp_lora_structure
    bad, message = mismatched_memories(tiny_pipe, memory)[problem]
    bad.save(tmp_path / "bad.safetensors")
    if problem == "rank":  # a file whose tensors contradict its own settings is damaged: refused on load
        with pytest.raises(ValueError, match="do not agree with its own settings: module .* rank is 4"):
            EpisodicMemory.load(tmp_path / "bad.safetensors")
    else:
        bad = EpisodicMemory.load(tmp_path / "bad.safetensors")  # the way a user meets one: from a file

    with pytest.raises(MemoryMismatchError, match=message):
        chunk(tiny_pipe, new, bad, seed=2)
    with pytest.raises(MemoryMismatchError, match=message):
        tiny_pipe.update_memory(bad, context, new)
    with pytest.raises(MemoryMismatchError, match=message):
        list(tiny_pipe.stream_episode(["move left"], start_latents=context, memory=bad, num_frames=2,
                                      num_inference_steps=1))
    assert issubclass(MemoryMismatchError, ValueError)
    assert tiny_pipe.unet._temp_lora_structure == structure_before
    assert torch.equal(chunk(tiny_pipe, new, seed=2), base_before)
    assert torch.equal(chunk(tiny_pipe, new, memory, seed=2), memory_before)


def test_memory_of_another_rank_or_targets_is_its_own_valid_memory(tiny_pipe, tiny_context, trained):
    """A memory whose config and tensors agree fits, whatever its rank or targets: layers are re-injected."""
    _, new, memory = trained
    reference = chunk(tiny_pipe, new, memory, seed=1)
    for config in (TempLoRAConfig(rank=2, learning_rate=1e-2), TempLoRAConfig(rank=4, target="spatial-attention")):
        other = tiny_pipe.update_memory(None, tiny_context, new, config=config, generator=gen(0))
        assert other.config == config
        assert torch.isfinite(chunk(tiny_pipe, new, other, seed=1)).all()
    assert torch.equal(chunk(tiny_pipe, new, memory, seed=1), reference)


# ---------------------------------------------------------------------------------------------------
# Config and target presets


def test_target_presets_select_the_right_modules(tiny_pipe):
    keys = {name: set(tiny_pipe.new_memory(TempLoRAConfig(rank=2, target=name)).lora) for name in TARGET_PRESETS}
    assert keys["temporal-attention"] and keys["spatial-attention"]
    assert keys["temporal-attention"] | keys["spatial-attention"] == keys["all-attention"]
    assert not keys["temporal-attention"] & keys["spatial-attention"]
    assert all("temp_attentions" in k or "transformer_in" in k for k in keys["temporal-attention"])
    assert not any("temp_attentions" in k or "transformer_in" in k for k in keys["spatial-attention"])
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys["all-attention"])
    memory = tiny_pipe.new_memory(TempLoRAConfig(rank=2))
    assert all(not t.any() for k, t in memory.lora.items() if ".lora_B." in k), "B starts at zero"


def test_memory_examples_play_the_clip_each_way():
    previous, new = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 4, 2, 8, 8)
    clip = MemoryClip(torch.cat([previous, new], dim=2), 2, "go left", "go right")
    [example] = memory_examples(clip, TempLoRAConfig())
    assert example.context.shape[2] == 0 and torch.equal(example.target, clip.latents), "the paper's update: no context"
    [example] = memory_examples(clip, TempLoRAConfig(objective="transition"))
    assert torch.equal(example.context, previous) and torch.equal(example.target, new) and example.text == "go left"
    turn, way_back = memory_examples(clip, TempLoRAConfig(objective="transition", direction="backward"))
    # Turning after the new chunk: the view goes back over the new chunk (its last frame is not shown
    # twice), then over the previous one; each step is conditioned on exactly what a return would show.
    assert torch.equal(turn.context, new)
    assert torch.equal(turn.target, torch.cat([new[:, :, :1], previous[:, :, -1:]], dim=2))
    assert torch.equal(way_back.context, turn.target) and torch.equal(way_back.target, previous[:, :, :2].flip(2))
    assert turn.text == way_back.text == "go right"
    both = memory_examples(clip, TempLoRAConfig(direction="both"))
    assert [torch.equal(e.target, c) for e, c in zip(both, (clip.latents, clip.latents.flip(2)))] == [True, True]
    assert [e.text for e in both] == ["go left", "go right"]
    start = MemoryClip(torch.cat([previous[:, :, :1], new], dim=2), 2)
    [turn] = memory_examples(start, TempLoRAConfig(objective="transition", direction="backward"))
    assert turn.target.shape[2] == 2, "after an image start there is no further way back to learn"


def test_action_text_learns_each_play_with_its_text(tiny_pipe, tiny_context):
    """Forward with the chunk's action, backward with the reverse action: given, or from the model's table."""
    new = chunk(tiny_pipe, tiny_context)
    texts = TempLoRAConfig(rank=4, objective="transition", direction="both", action_text=True)

    def update(config, action="move left", **kwargs):
        return tiny_pipe.update_memory(None, tiny_context, new, action=action, config=config, generator=gen(7), **kwargs)

    explicit = update(texts, reverse_action="move right")
    tiny_pipe.register_to_config(reverse_actions={"Move  LEFT": "move right"})
    try:
        assert tiny_pipe.reverse_action("move left") == "move right" and tiny_pipe.reverse_action("jump") is None
        assert_memories_equal(update(texts), explicit)
    finally:
        tiny_pipe.register_to_config(reverse_actions=None)
    unknown_reverse = update(texts)
    assert not torch.equal(flat(unknown_reverse), flat(explicit)), "no reverse: the backward play has no text"
    forward_only = dataclasses.replace(texts, direction="forward")
    assert not torch.equal(flat(update(forward_only)), flat(update(forward_only, action="move up")))
    text_free = dataclasses.replace(texts, action_text=False)
    assert torch.equal(flat(update(text_free)), flat(update(text_free, action="move up"))), \
        "the paper's update ignores the action"


def test_reverse_actions_are_saved_with_the_model(tiny_pipe, tmp_path):
    tiny_pipe.register_to_config(reverse_actions={"go left": "go right"})
    try:
        tiny_pipe.save_pretrained(tmp_path)
    finally:
        tiny_pipe.register_to_config(reverse_actions=None)
    assert SlowFastVGenPipeline.from_pretrained(tmp_path).reverse_action("Go Left") == "go right"


def test_replay_keeps_the_episodes_clips_and_survives_a_reload(tiny_pipe, tiny_context, tmp_path):
    config = TempLoRAConfig(rank=4, objective="transition", direction="both", action_text=True, replay=2)
    first = chunk(tiny_pipe, tiny_context)
    second = chunk(tiny_pipe, first, seed=1)
    memory = tiny_pipe.update_memory(None, tiny_context, first, action="move left", config=config, generator=gen(1),
                                     reverse_action="move right")
    assert [(c.new_frames, c.text, c.reverse_text) for c in memory.clips] == [(2, "move left", "move right")]
    assert torch.equal(memory.clips[0].latents, torch.cat([tiny_context, first], dim=2))
    memory.save(tmp_path / "memory.safetensors")
    reloaded = EpisodicMemory.load(tmp_path / "memory.safetensors")
    assert_memories_equal(reloaded, memory)
    continued = [tiny_pipe.update_memory(m, first, second, action="move up", config=config, generator=gen(2))
                 for m in (memory, reloaded)]
    assert_memories_equal(*continued)
    assert len(continued[0].clips) == 2 and continued[0].clips[1].reverse_text == "", "no reverse known: null text"
    without = tiny_pipe.update_memory(None, tiny_context, first, action="move left", config=SMALL, generator=gen(1))
    assert without.clips == (), "the paper's update keeps no latents"


def test_replay_keeps_an_early_clip_learned(tiny_pipe, tiny_context):
    """Later updates overwrite what an earlier one learned; rehearsing the episode's clips keeps it."""
    noise_scheduler = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    null_embeds = tiny_pipe.encode_action([""])
    first = torch.randn(tiny_context.shape, generator=gen(300))
    fixed = [(torch.tensor([t]), torch.randn(first.shape, generator=gen(400 + t))) for t in (100, 400, 700, 950)]

    def first_clip_loss(memory) -> float:
        with torch.no_grad(), memory_applied(tiny_pipe.unet, memory):
            return sum(temp_lora_loss(tiny_pipe.unet, noise_scheduler, tiny_context, first, null_embeds, t, n).item()
                       for t, n in fixed) / len(fixed)

    losses = {}
    for replay in (0, 2):
        config = TempLoRAConfig(rank=8, learning_rate=5e-3, steps_per_update=6, objective="transition", replay=replay)
        memory = tiny_pipe.update_memory(None, tiny_context, first, config=config, generator=gen(5))
        learned = first_clip_loss(memory)
        for later in range(4):
            other = torch.randn(tiny_context.shape, generator=gen(500 + later))
            memory = tiny_pipe.update_memory(memory, torch.randn(tiny_context.shape, generator=gen(600 + later)),
                                             other, config=config, generator=gen(later))
        losses[replay] = first_clip_loss(memory) - learned
    assert losses[2] < losses[0], f"forgetting of the first clip (loss increase) with / without replay: {losses}"


def test_backward_transition_update_learns_the_way_back(tiny_pipe, tiny_context):
    """A backward-transition memory lowers the loss of the way back: after the new chunk, the previous one reversed."""
    new = chunk(tiny_pipe, tiny_context)
    noise_scheduler = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    null_embeds = tiny_pipe.encode_action([""])
    context, target = new, torch.cat([tiny_context, new], dim=2).flip(2)[:, :, 1:1 + new.shape[2]]
    fixed = [(torch.tensor([t]), torch.randn(target.shape, generator=gen(200 + t))) for t in (100, 400, 700, 950)]

    def loss_with(memory) -> float:
        with torch.no_grad(), memory_applied(tiny_pipe.unet, memory):
            return sum(temp_lora_loss(tiny_pipe.unet, noise_scheduler, context, target, null_embeds, t, n).item()
                       for t, n in fixed) / len(fixed)

    config = TempLoRAConfig(rank=8, learning_rate=5e-3, steps_per_update=6, objective="transition",
                            direction="backward")
    memory = None
    for update in range(3):
        memory = tiny_pipe.update_memory(memory, tiny_context, new, config=config, generator=gen(update))
    before, after = loss_with(None), loss_with(memory)
    assert after < 0.97 * before, f"the loss of the way back must drop: {before} -> {after}"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"steps_per_update": -1}, "steps_per_update"),
        ({"target": "(unclosed"}, "neither a preset"),
        ({"objective": "reconstruction"}, "objective"),
        ({"direction": "sideways"}, "direction"),
        ({"replay": -1}, "replay"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TempLoRAConfig(**kwargs)


def test_target_matching_nothing_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="matches no module"):
        tiny_pipe.new_memory(TempLoRAConfig(target=r".*no_such_module"))


def test_defaults_are_the_papers():
    config = TempLoRAConfig()
    assert (config.rank, config.learning_rate) == (32, 1e-4)
    assert (config.objective, config.direction) == ("trajectory", "forward"), "Eq. 3: the clip as played"


# ---------------------------------------------------------------------------------------------------
# Long episodes (Algorithm 1 (a))


def test_stream_episode_is_algorithm_1a_step_by_step(tiny_pipe, tiny_context):
    """The driver equals the manual loop: chunk with the memory so far, then update on previous ⊕ new."""
    kwargs = {"num_frames": 2, "num_inference_steps": 2}
    streamed = list(tiny_pipe.stream_episode(["move left", "move up", "move right"], start_latents=tiny_context,
                                             temp_lora=SMALL, generator=gen(21), **kwargs))
    generator, context, memory = gen(21), tiny_context, None
    memory_generator = memory_generator_for(generator)  # updates draw from their own stream
    for step, action in zip(streamed, ["move left", "move up", "move right"]):
        new = tiny_pipe(action, context_latents=context, memory=memory, generator=generator, output_type="latent",
                        **kwargs).latents
        memory = tiny_pipe.update_memory(memory, context, new, action=action, config=SMALL,
                                         generator=memory_generator)
        assert step.action == action
        assert torch.equal(step.latents, new)
        assert_memories_equal(step.memory, memory)
        context = new
    assert streamed[-1].memory.actions == ("move left", "move up", "move right")
    assert streamed[-1].memory.frames_seen == 6


def test_memory_and_no_memory_share_the_sampling_noise(tiny_pipe, tiny_context):
    """One loop, two streams: the first chunk is bit-identical with or without memory, and a memory that
    learns (almost) nothing changes later chunks (almost) not at all. When updates drew from the sampling
    generator, such a memory moved chunk 2 by up to 8.6 (latents are about 1.5 in size)."""
    actions = ["move left", "move up", "move right"]
    kwargs = {"num_frames": 2, "num_inference_steps": 2, "start_latents": tiny_context}
    without = list(tiny_pipe.stream_episode(actions, temp_lora=False, generator=gen(5), **kwargs))
    learned = list(tiny_pipe.stream_episode(actions, temp_lora=SMALL, generator=gen(5), **kwargs))
    inert = list(tiny_pipe.stream_episode(actions, temp_lora=dataclasses.replace(SMALL, learning_rate=1e-12),
                                          generator=gen(5), **kwargs))
    assert torch.equal(without[0].latents, learned[0].latents) and torch.equal(without[0].latents, inert[0].latents)
    assert not torch.equal(without[2].latents, learned[2].latents)
    for a, b in zip(without[1:], inert[1:]):
        assert (a.latents - b.latents).abs().max() < 1e-3
    # The derived stream is a function of the seed alone: another generator object, the same memories.
    again = list(tiny_pipe.stream_episode(actions, temp_lora=SMALL, generator=gen(5), **kwargs))
    assert_memories_equal(again[-1].memory, learned[-1].memory)
    assert memory_generator_for(gen(5)).initial_seed() != memory_generator_for(gen(6)).initial_seed()
    assert memory_generator_for([gen(5)]).initial_seed() == memory_generator_for(gen(5)).initial_seed()


def test_without_the_local_rule_steps_learn_clips_from_the_whole_sequence(tiny_pipe, tiny_context, tmp_path):
    """The paper's ablation: the memory keeps every clip and each step learns one drawn from all of them."""
    actions = ["move left", "move up", "move right"]
    kwargs = {"num_frames": 2, "num_inference_steps": 1, "start_latents": tiny_context, "generator": gen(3)}
    spread = dataclasses.replace(SMALL, local=False, steps_per_update=4)
    memory = list(tiny_pipe.stream_episode(actions, temp_lora=spread, **kwargs))[-1].memory
    local = list(tiny_pipe.stream_episode(actions, temp_lora=dataclasses.replace(spread, local=True), **kwargs))[-1].memory
    assert [clip.new_frames for clip in memory.clips] == [2, 2, 2] and local.clips == ()
    assert any(not torch.equal(memory.lora[k], local.lora[k]) for k in memory.lora)
    memory.save(tmp_path / "global.safetensors")
    assert EpisodicMemory.load(tmp_path / "global.safetensors").config.local is False


def test_stream_episode_with_lazy_actions_that_read_the_last_chunk(tiny_pipe, tiny_context):
    seen = []
    decisions = []

    def policy():
        yield "move left"
        while len(seen) < 4:
            # Decide the next action only after seeing the chunk just generated.
            action = "move right" if seen[-1].latents.mean() > 0 else "move left"
            decisions.append((len(seen), action))
            yield action

    for step in tiny_pipe.stream_episode(policy(), start_latents=tiny_context, temp_lora=SMALL, num_frames=2,
                                         num_inference_steps=1, generator=gen(0)):
        seen.append(step)
    assert len(seen) == 4
    assert [index for index, _ in decisions] == [1, 2, 3], "each decision saw exactly the chunks so far"
    assert [s.action for s in seen[1:]] == [a for _, a in decisions]
    assert [s.index for s in seen] == [0, 1, 2, 3]
    assert seen[-1].memory.num_updates == 4


def test_temp_lora_off_keeps_memory_frozen(tiny_pipe, tiny_context, trained):
    _, _, memory = trained
    frozen = list(tiny_pipe.stream_episode(["move left", "move up"], start_latents=tiny_context, memory=memory,
                                           temp_lora=False, num_frames=2, num_inference_steps=1))
    assert all(step.memory is memory for step in frozen)
    off = list(tiny_pipe.stream_episode(["move left"], start_latents=tiny_context, temp_lora=False, num_frames=2,
                                        num_inference_steps=1))
    assert off[0].memory is None


def test_generate_episode_concatenates_and_keeps_the_last_memory(tiny_pipe, tiny_context):
    episode = tiny_pipe.generate_episode(["move left", "move up", "move right"], start_latents=tiny_context,
                                         temp_lora=SMALL, num_frames=2, num_inference_steps=1, generator=gen(0))
    assert episode.latents.shape == (1, 4, 2 + 3 * 2, 16, 16)
    assert torch.equal(episode.latents[:, :, :2], tiny_context), "the start frames come out bit-identical"
    assert torch.equal(episode.latents[:, :, -2:], episode.chunks[-1].latents)
    assert episode.memory is episode.chunks[-1].memory and episode.memory.num_updates == 3
    assert [c.memory for c in episode.chunks[:-1]] == [None, None]
    kept = tiny_pipe.generate_episode(["move left", "move up"], start_latents=tiny_context, temp_lora=SMALL,
                                      num_frames=2, num_inference_steps=1, keep_memories=True, generator=gen(0))
    assert [c.memory.num_updates for c in kept.chunks] == [1, 2]


def live_tensor_bytes() -> int:
    gc.collect()
    total, seen = 0, set()
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and not obj.is_meta:
                storage = obj.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
        except Exception:  # noqa: BLE001 - objects gc hands out may be half-built
            continue
    return total


def test_long_episode_memory_stays_flat(tiny_pipe, tiny_context):
    """22 chunks with Temp-LoRA: live tensors, RSS and the memory object do not grow with the chunk count."""
    process = psutil.Process()
    config = TempLoRAConfig(rank=4, learning_rate=1e-4)
    kept_latents = []
    sizes, tensor_bytes, rss = [], {}, {}
    for step in tiny_pipe.stream_episode((f"move {d}" for d in ["left", "right", "up", "down"] * 6),
                                         start_latents=tiny_context, temp_lora=config, num_frames=2,
                                         num_inference_steps=1, guidance_scale=3.0, generator=gen(0)):
        kept_latents.append(step.latents)  # a caller keeps the chunks, as a long video needs
        memory = step.memory
        sizes.append((memory.num_parameters, sum(t.numel() for t in memory.optimizer_state.values()),
                       len(memory.lora)))
        if step.index in (4, 21):
            tensor_bytes[step.index] = live_tensor_bytes()
            rss[step.index] = process.memory_info().rss
        del step
    assert len(kept_latents) == 24 and memory.num_updates == 24 and memory.frames_seen == 48
    assert len(set(sizes)) == 1, "the memory object must have a constant size"
    latents_growth = sum(t.nbytes for t in kept_latents[5:22])
    tensor_growth = tensor_bytes[21] - tensor_bytes[4]
    assert tensor_growth <= latents_growth + 64 * 1024, (
        f"live tensors grew by {tensor_growth} bytes between chunk 5 and 22; the kept latents explain "
        f"{latents_growth}")
    assert rss[21] - rss[4] < 32 * 2**20, f"RSS grew by {(rss[21] - rss[4]) / 2**20:.1f} MiB over 17 chunks"


def test_gradient_checkpointing_gives_the_same_update_and_unwraps(tiny_pipe, tiny_context):
    new = chunk(tiny_pipe, tiny_context)
    results = {}
    for flag in (True, False):
        config = TempLoRAConfig(rank=4, learning_rate=1e-2, gradient_checkpointing=flag)
        results[flag] = tiny_pipe.update_memory(None, tiny_context, new, config=config, generator=gen(3))
        assert not [n for n, m in tiny_pipe.unet.named_modules() if "forward" in m.__dict__], "wrappers removed"
    for key in results[True].lora:
        torch.testing.assert_close(results[True].lora[key], results[False].lora[key], rtol=0, atol=1e-7)
    assert not all(torch.equal(results[True].lora[k], tiny_pipe.new_memory(results[True].config).lora[k])
                   for k in results[True].lora), "the update did train"
    old_file_config = json.loads(TempLoRAConfig().to_json())
    del old_file_config["gradient_checkpointing"]  # memories saved before the option existed still load
    assert TempLoRAConfig.from_json(json.dumps(old_file_config)) == TempLoRAConfig()


def test_base_fingerprint_cache_follows_weight_changes():
    pipe = build_pipeline(WorldModelSpec.tiny(), seed=0)
    before = pipe.base_fingerprint
    memory = pipe.new_memory(SMALL)
    assert pipe.base_fingerprint == before, "injecting LoRA layers does not change the base fingerprint"
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)
    assert pipe.base_fingerprint != before
    with pytest.raises(MemoryMismatchError, match="fingerprint"):
        pipe.update_memory(memory, torch.zeros(1, 4, 1, 16, 16), torch.zeros(1, 4, 1, 16, 16))


def test_presets_are_checked_configs_and_the_paper_is_the_default():
    from slowfast_vgen.pipelines import TEMP_LORA_PRESETS, temp_lora_preset

    assert temp_lora_preset("paper") == TempLoRAConfig()
    assert temp_lora_preset("transition").objective == "transition" and temp_lora_preset("global").local is False
    way_back = temp_lora_preset("way-back")
    assert (way_back.direction, way_back.action_text, way_back.steps_per_update) == ("backward", True, 4)
    assert all(isinstance(config, TempLoRAConfig) for config in TEMP_LORA_PRESETS.values())
    with pytest.raises(ValueError, match="known presets: paper, transition, global, strong, way-back, replay"):
        temp_lora_preset("Paper")
