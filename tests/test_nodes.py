"""The node pack on the tiny model, called as ComfyUI calls nodes (keyword inputs, under inference_mode)."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from comfy_graph import TINY, comfy_dir, tiny_model_dir  # noqa: F401 (fixtures)
from slowfast_vgen import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from slowfast_vgen.pipelines.inverse_dynamics import InverseDynamicsModel
from slowfast_vgen.nodes import comfy_services
from slowfast_vgen.nodes.world_model import EpisodeSoFar, WorldModel, world_model_folder
from slowfast_vgen.pipelines import EpisodicMemory, MemoryMismatchError, TempLoRAConfig
from slowfast_vgen.workflows.convert import input_options, input_type

OUTPUT_CHECKS = {
    "SFV_WORLD_MODEL": lambda value: isinstance(value, WorldModel),
    "SFV_CHUNK": lambda value: isinstance(value, EpisodeSoFar),
    "SFV_MEMORY": lambda value: value is None or isinstance(value, EpisodicMemory),
    "SFV_TEMP_LORA": lambda value: isinstance(value, TempLoRAConfig),
    "SFV_INVERSE_DYNAMICS": lambda value: isinstance(value, InverseDynamicsModel),
    "STRING": lambda value: isinstance(value, str),
    "IMAGE": lambda value: (isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[-1] == 3
                            and value.dtype == torch.float32 and 0.0 <= value.min() and value.max() <= 1.0),
}


def run(key: str, **inputs):
    """Call a node as ComfyUI's executor does, and check what comes back against its RETURN_TYPES."""
    cls = NODE_CLASS_MAPPINGS[f"SlowFastVGen_{key}"]
    with torch.inference_mode():
        result = getattr(cls(), cls.FUNCTION)(**inputs)
    if getattr(cls, "OUTPUT_NODE", False):
        assert isinstance(result, dict) and "ui" in result
        return result
    assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES)
    for kind, value in zip(cls.RETURN_TYPES, result):
        assert OUTPUT_CHECKS[kind](value), f"{key} returned {type(value).__name__} for {kind}"
    return result


SAMPLING = dict(num_frames=2, steps=2, guidance=3.0, seed=0, conditioning="mask")


@pytest.fixture
def world(comfy_dir):
    return run("LoadWorldModel", model_name=TINY, dtype="float32", device="cpu")[0]


@pytest.fixture
def start(world):
    return run("ToyWorldStartFrame", seed=0, size=32)[0]


def tensors_of(memory: EpisodicMemory) -> dict[str, torch.Tensor]:
    return {**{k: v.clone() for k, v in memory.lora.items()},
            **{f"opt.{k}": v.clone() for k, v in memory.optimizer_state.items()}}


def assert_same(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------------
# Declarations


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_declared_inputs_and_outputs_match_the_function(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("SlowFastVGen_") and node_id in NODE_DISPLAY_NAME_MAPPINGS
    assert cls.CATEGORY in {"SlowFast-VGen/models", "SlowFast-VGen/episode", "SlowFast-VGen/memory",
                            "SlowFast-VGen/planning"} and cls.DESCRIPTION.strip() and cls.__doc__
    assert "SlowFast-VGen" not in NODE_DISPLAY_NAME_MAPPINGS[node_id], "the category says it"
    declared = cls.INPUT_TYPES()
    required, optional = declared.get("required", {}), declared.get("optional", {})
    parameters = dict(inspect.signature(getattr(cls, cls.FUNCTION)).parameters)
    parameters.pop("self")
    assert list(parameters) == [*required, *optional]
    assert all(parameters[name].default is inspect.Parameter.empty for name in required)
    assert all(parameters[name].default is None for name in optional)
    for name, spec in {**required, **optional}.items():
        options = input_options(spec)
        assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        if "default" in options and input_type(spec) == "COMBO":
            assert options["default"] in spec[0]
        elif "default" in options and input_type(spec) in ("INT", "FLOAT"):
            assert options.get("min", options["default"]) <= options["default"] <= options.get("max", options["default"])
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    assert len(names) == len(cls.RETURN_TYPES) == len(getattr(cls, "OUTPUT_TOOLTIPS", cls.RETURN_TYPES))
    assert all(kind in OUTPUT_CHECKS for kind in cls.RETURN_TYPES)


def test_the_builtin_models_are_listed_first_and_folders_after(comfy_dir):
    choices = NODE_CLASS_MAPPINGS["SlowFastVGen_LoadWorldModel"].INPUT_TYPES()["required"]["model_name"][0]
    assert choices == ["toyworld (built-in)", "toyworld-retrace (built-in)", TINY]
    from slowfast_vgen.nodes.world_model import world_model_folder

    assert world_model_folder("toyworld-retrace (built-in)").endswith("toyworld-retrace")


# ---------------------------------------------------------------------------------------------------
# Running


def test_a_chunk_chain_decodes_to_comfy_images(world, start):
    first = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    second = run("ActionChunk", world_model=world, action="move left", chunk=first, **SAMPLING)[0]
    assert second.segments == (1, 2, 2) and second.actions == ("move right", "move left")
    assert torch.equal(second.latents[:, :, :3], first.latents)  # chunks chain without being re-encoded
    episode = run("DecodeChunk", world_model=world, chunk=second, frames="episode")[0]
    last = run("DecodeChunk", world_model=world, chunk=second, frames="last chunk")[0]
    assert episode.shape == (5, 32, 32, 3) and last.shape == (2, 32, 32, 3)
    assert torch.allclose(episode[-2:], last, atol=1e-5)


def test_start_frame_is_a_seeded_comfy_image():
    first = run("ToyWorldStartFrame", seed=3, size=64)[0]
    assert first.shape == (1, 64, 64, 3)
    assert torch.equal(first, run("ToyWorldStartFrame", seed=3, size=64)[0])
    assert not torch.equal(first, run("ToyWorldStartFrame", seed=4, size=64)[0])


def test_episode_returns_every_frame_and_continues(world, start):
    images, memory, chunk = run("RunEpisode", world_model=world, actions="move right\n\n  \nmove up\n",
                                temp_lora="learn", image=start, **SAMPLING)
    assert images.shape == (5, 32, 32, 3) and memory.num_updates == 2 and memory.actions == ("move right", "move up")
    more, memory2, chunk2 = run("RunEpisode", world_model=world, actions="move left", temp_lora="frozen",
                                chunk=chunk, memory=memory, **SAMPLING)
    assert more.shape[0] == 7 and memory2 is memory and chunk2.segments == (1, 2, 2, 2)
    _, none, _ = run("RunEpisode", world_model=world, actions="stay", temp_lora="off", image=start,
                     memory=memory, **SAMPLING)
    assert none is None


def test_recall_input_reaches_the_pipeline_and_way_back_needs_a_panorama_memory(world, start):
    settings = run("TempLoRAPreset", preset="panorama")[0]
    _, memory, chunk = run("RunEpisode", world_model=world, actions="move right\nmove right", temp_lora="learn",
                           image=start, settings=settings, **SAMPLING)
    assert memory.config.panorama and memory.panorama is not None  # (the tiny model's frames are no pans)
    (back,) = run("ActionChunk", world_model=world, action="go back to the start", chunk=chunk, memory=memory,
                  recall="way back", **SAMPLING)
    assert back.segments == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="reads the panorama memory"):  # the input reaches the pipeline
        run("RunEpisode", world_model=world, actions="go back", temp_lora="off", image=start, recall="way back",
            **SAMPLING)
    with pytest.raises(ValueError, match="reads the panorama memory"):
        run("ActionChunk", world_model=world, action="go back", chunk=chunk, recall="way back", **SAMPLING)


def test_the_pack_keeps_no_model_of_its_own(world):
    """ComfyUI's node cache and model manager hold loaded models; once ComfyUI drops one, it is freed."""
    import gc
    import weakref

    other = run("LoadWorldModel", model_name=TINY, dtype="bfloat16", device="cpu")[0]
    assert other is not world and other.pipe.unet.dtype == torch.bfloat16
    assert other.patcher is None  # outside ComfyUI: no model manager to hand it to
    unet = weakref.ref(other.pipe.unet)
    del other
    gc.collect()
    assert unet() is None


def test_temp_lora_update_changes_no_input(world, start):
    first = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    memory = run("TempLoRAUpdate", world_model=world, new_chunk=first, seed=0)[0]
    second = run("ActionChunk", world_model=world, action="move right", chunk=first, memory=memory, **SAMPLING)[0]
    memory_before, chunks_before = tensors_of(memory), (first.latents.clone(), second.latents.clone())
    weights_before = {k: v.clone() for k, v in world.pipe.unet.state_dict().items() if ".lora_" not in k}

    settings = run("TempLoRASettingsV2", rank=32, learning_rate=1e-3, target="all-attention", steps_per_update=2)[0]
    updated = run("TempLoRAUpdate", world_model=world, new_chunk=second, seed=0, memory=memory,
                  previous_chunk=first, settings=settings)[0]

    assert_same(memory_before, tensors_of(memory))
    assert torch.equal(chunks_before[0], first.latents) and torch.equal(chunks_before[1], second.latents)
    weights_after = {k: v for k, v in world.pipe.unet.state_dict().items() if ".lora_" not in k}
    assert_same(weights_before, weights_after)
    assert updated is not memory and updated.num_updates == 2 and updated.optimizer_steps == 3
    assert any(not torch.equal(memory.lora[k], updated.lora[k]) for k in memory.lora)


def test_settings_carry_the_objective_and_default_to_the_papers_update():
    common = dict(rank=8, learning_rate=1e-3, target="all-attention", steps_per_update=1)
    plain = run("TempLoRASettingsV2", **common)[0]
    assert plain == TempLoRAConfig(rank=8, learning_rate=1e-3), "the optional inputs default to the paper's update"
    tuned = run("TempLoRASettingsV2", **common, objective="transition", direction="both", action_text=True, replay=3)[0]
    assert (tuned.objective, tuned.direction, tuned.action_text, tuned.replay) == ("transition", "both", True, 3)
    poses = run("TempLoRASettingsV2", **{**common, "steps_per_update": 0}, poses=True, turn_views=False)[0]
    assert poses == TempLoRAConfig(rank=8, learning_rate=1e-3, steps_per_update=0, poses=True, turn_views=False)
    with pytest.raises(ValueError, match="choose one"):
        run("TempLoRASettingsV2", **common, panorama=True, poses=True)


def test_the_node_with_retired_widgets_keeps_saved_graphs_working():
    """Graphs saved before alpha, timestep_low/high and keep_optimizer_state were retired name the old node
    id with those widgets in place: it makes the same settings at the values every measurement used, hides
    from the node list, and names the retired setting for any other value."""
    legacy = NODE_CLASS_MAPPINGS["SlowFastVGen_TempLoRASettings"]
    assert legacy.DEPRECATED and not getattr(NODE_CLASS_MAPPINGS["SlowFastVGen_TempLoRASettingsV2"], "DEPRECATED", False)
    assert list(legacy.INPUT_TYPES()["required"]) == [
        "rank", "alpha", "learning_rate", "target", "steps_per_update", "timestep_low", "timestep_high",
        "keep_optimizer_state"], "the widget order of saved graphs"
    old = dict(rank=8, alpha=0.0, learning_rate=1e-3, target="all-attention", steps_per_update=2, timestep_low=0.0,
               timestep_high=1.0, keep_optimizer_state=True)
    assert run("TempLoRASettings", **old, replay=2) == run("TempLoRASettingsV2", rank=8, learning_rate=1e-3,
                                                           target="all-attention", steps_per_update=2, replay=2)
    with pytest.raises(ValueError, match="alpha=16.0 is no longer supported: the LoRA scale is fixed at 1"):
        run("TempLoRASettings", **{**old, "alpha": 16.0})


def test_the_preset_node_gives_the_librarys_presets():
    from slowfast_vgen.pipelines import TEMP_LORA_PRESETS

    cls = NODE_CLASS_MAPPINGS["SlowFastVGen_TempLoRAPreset"]
    assert cls.INPUT_TYPES()["required"]["preset"][0] == list(TEMP_LORA_PRESETS)
    for name, config in TEMP_LORA_PRESETS.items():
        assert run("TempLoRAPreset", preset=name)[0] == config
    with pytest.raises(ValueError, match="preset: .fast. is not one of .paper., .transition."):
        run("TempLoRAPreset", preset="fast")


def test_branches_from_one_memory_do_not_disturb_each_other(world, start):
    images, memory, chunk = run("RunEpisode", world_model=world, actions="move right", temp_lora="learn",
                                image=start, **SAMPLING)
    up = run("ActionChunk", world_model=world, action="move up", chunk=chunk, memory=memory, **SAMPLING)[0]
    run("TempLoRAUpdate", world_model=world, new_chunk=up, seed=0, memory=memory)
    down = run("ActionChunk", world_model=world, action="move down", chunk=chunk, memory=memory, **SAMPLING)[0]
    up_again = run("ActionChunk", world_model=world, action="move up", chunk=chunk, memory=memory, **SAMPLING)[0]
    assert torch.equal(up.latents, up_again.latents)  # the same inputs give the same branch, whatever ran between
    assert not torch.equal(up.last, down.last)


def test_cancel_mid_episode_leaves_the_memory_intact(world, start):
    memory = run("RunEpisode", world_model=world, actions="move right", temp_lora="learn", image=start,
                 **SAMPLING)[1]
    before = tensors_of(memory)
    run("SaveMemory", memory=memory, filename_prefix="slowfast_vgen/before_cancel")
    saved = comfy_dir_file("output/slowfast_vgen/before_cancel_00001_.safetensors")

    # Cancel pressed during the third chunk, after two Temp-LoRA updates of this episode.
    comfy_services.set_progress_hook(lambda done, total, preview: done == 10 and comfy_services.request_interrupt())
    try:
        with pytest.raises(comfy_services.Interrupted):
            run("RunEpisode", world_model=world, actions="move left\nmove up\nmove right\nmove down",
                temp_lora="learn", chunk=None, image=start, memory=memory, **SAMPLING)
    finally:
        comfy_services.set_progress_hook(None)

    assert_same(before, tensors_of(memory))
    assert saved == comfy_dir_file("output/slowfast_vgen/before_cancel_00001_.safetensors")
    assert os.listdir("output/slowfast_vgen") == ["before_cancel_00001_.safetensors"]
    # The cancel was consumed: the next run goes through.
    run("RunEpisode", world_model=world, actions="stay", temp_lora="learn", image=start, memory=memory, **SAMPLING)


def comfy_dir_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def test_memories_save_numbered_and_load_back(world, start):
    memory = run("RunEpisode", world_model=world, actions="move right", temp_lora="learn", image=start,
                 **SAMPLING)[1]
    for _ in range(2):
        result = run("SaveMemory", memory=memory, filename_prefix="slowfast_vgen/walk")
    assert result["ui"]["memories"] == [{"filename": "walk_00002_.safetensors", "subfolder": "slowfast_vgen",
                                         "type": "output"}]
    load = NODE_CLASS_MAPPINGS["SlowFastVGen_LoadMemory"]
    names = load.INPUT_TYPES()["required"]["memory_name"][0]
    assert names == ["slowfast_vgen/walk_00001_.safetensors [output]", "slowfast_vgen/walk_00002_.safetensors [output]"]
    loaded = run("LoadMemory", memory_name=names[1])[0]
    assert_same(tensors_of(memory), tensors_of(loaded))
    assert load.VALIDATE_INPUTS(names[0]) is True
    run("ActionChunk", world_model=world, action="move up", image=start, memory=loaded, **SAMPLING)


def test_side_by_side_pads_the_shorter_video():
    left, right = torch.rand(5, 8, 6, 3), torch.rand(3, 8, 4, 3)
    images = run("SideBySide", left=left, right=right, gap=2)[0]
    assert images.shape == (5, 8, 12, 3)
    assert torch.equal(images[4, :, 8:], right[2]) and torch.equal(images[:, :, 6:8], torch.zeros(5, 8, 2, 3))


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error, and nothing written or changed


@pytest.mark.parametrize("script", ["", "   \n\n \t\n"])
def test_a_blank_action_script_is_refused(world, start, script):
    with pytest.raises(ValueError, match="one action per line"):
        run("RunEpisode", world_model=world, actions=script, temp_lora="learn", image=start, **SAMPLING)
    with pytest.raises(ValueError, match="action is empty"):
        run("ActionChunk", world_model=world, action=script, image=start, **SAMPLING)


def test_a_missing_model_folder_names_the_folder_to_use(comfy_dir):
    with pytest.raises(FileNotFoundError, match="world_models"):
        run("LoadWorldModel", model_name="not-there", dtype="float32", device="cpu")


def test_a_corrupted_memory_file_is_refused(comfy_dir):
    folder = comfy_dir / "models" / "temp_lora_memories"
    folder.mkdir()
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="broken.safetensors"):
        run("LoadMemory", memory_name="broken.safetensors")
    message = NODE_CLASS_MAPPINGS["SlowFastVGen_LoadMemory"].VALIDATE_INPUTS("gone.safetensors")
    assert "Save Memory" in message and "temp_lora_memories" in message


def test_file_inputs_resolve_only_inside_comfyuis_folders(world, start, comfy_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    memory = run("RunEpisode", world_model=world, actions="move right", temp_lora="learn", image=start, **SAMPLING)[1]
    memory.save(outside / "secret.safetensors")
    saved = comfy_dir / "output" / "slowfast_vgen"
    saved.mkdir(parents=True, exist_ok=True)
    (saved / "link.safetensors").symlink_to(outside / "secret.safetensors")
    models = comfy_dir / "models" / "temp_lora_memories"
    models.mkdir(parents=True, exist_ok=True)
    load = NODE_CLASS_MAPPINGS["SlowFastVGen_LoadMemory"]
    relative_up = os.path.relpath(outside / "secret.safetensors", comfy_dir / "output")
    for name in (f"{relative_up} [output]", f"{outside / 'secret.safetensors'} [output]",
                 "slowfast_vgen/link.safetensors [output]", str(outside / "secret.safetensors"),
                 os.path.relpath(outside / "secret.safetensors", models)):
        assert load.VALIDATE_INPUTS(name) is not True, name
        with pytest.raises(FileNotFoundError, match="not found"):
            run("LoadMemory", memory_name=name)
    with pytest.raises(FileNotFoundError, match="not found"):
        world_model_folder(os.path.relpath(outside, comfy_dir / "models" / "world_models"))


def test_a_memory_of_another_model_or_layout_is_refused(world, start, tiny_model_dir):
    other = world.pipe.new_memory(TempLoRAConfig(rank=4))
    other = EpisodicMemory(config=other.config, lora=other.lora, base_fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="made with the world model a world model not loaded here \\(fingerprint "
                                         "0123456789abcdef\\), but the world_model input is 'tiny'") as refused:
        run("ActionChunk", world_model=world, action="move up", image=start, memory=other, **SAMPLING)
    assert type(refused.value) is ValueError  # shown as "ValueError: ...", no module path
    memory = world.pipe.new_memory(TempLoRAConfig(rank=4))
    settings = TempLoRAConfig(rank=8)
    chunk = run("ActionChunk", world_model=world, action="move up", image=start, **SAMPLING)[0]
    with pytest.raises(ValueError, match="rank 4") as refused:
        run("TempLoRAUpdate", world_model=world, new_chunk=chunk, seed=0, memory=memory, settings=settings)
    assert isinstance(refused.value.__cause__, MemoryMismatchError) and type(refused.value) is ValueError


def test_run_episode_with_and_without_memory_share_the_first_chunk(world, start):
    """The same seed samples the same noise: the first chunk is bit-identical, later ones differ by memory."""
    script = "move right\nmove right\nmove left"
    learned = run("RunEpisode", world_model=world, actions=script, temp_lora="learn", image=start, **SAMPLING)[0]
    plain = run("RunEpisode", world_model=world, actions=script, temp_lora="off", image=start, **SAMPLING)[0]
    first = 1 + SAMPLING["num_frames"]  # the start frame and the first chunk
    assert torch.equal(learned[:first], plain[:first])
    assert not torch.equal(learned[first:], plain[first:])


def test_a_start_image_is_read_like_any_float_image(world, start):
    """ComfyUI IMAGE conventions: alpha (4th channel) dropped, grey repeated, overshoot clipped; pixels as given."""
    from slowfast_vgen.nodes.world_model import start_chunk

    expected = world.pipe.encode_frames(start.permute(0, 3, 1, 2).contiguous()).cpu()
    with_alpha = torch.cat([start, torch.rand_like(start[..., :1])], dim=-1)
    overshot = start * 1.02
    clipped = world.pipe.encode_frames(overshot.clamp(0, 1).permute(0, 3, 1, 2).contiguous()).cpu()
    before = overshot.clone()
    torch.testing.assert_close(start_chunk(world.pipe, with_alpha, None).latents, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(start_chunk(world.pipe, overshot, None).latents, clipped, atol=1e-5, rtol=0)
    assert torch.equal(overshot, before)
    grey = start[..., :1]
    torch.testing.assert_close(start_chunk(world.pipe, grey, None).latents,
                               world.pipe.encode_frames(grey.expand(-1, -1, -1, 3).permute(0, 3, 1, 2)).cpu(),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(30, 30), (64, 64), (32, 64)])
def test_a_start_image_of_another_size_than_the_models_is_refused(world, size):
    native = world.pipe.native_size
    with pytest.raises(ValueError, match=f"is {size[1]}x{size[0]}.*trained on {native}x{native}.*Upscale Image"):
        run("ActionChunk", world_model=world, action="move up", image=torch.rand(1, *size, 3), **SAMPLING)


@pytest.mark.parametrize("prefix", ["../escape", "slowfast_vgen/../../escape", "/tmp/escape", "\\escape"])
def test_saving_outside_the_output_folder_is_refused(world, start, comfy_dir, prefix):
    memory = world.pipe.new_memory()
    with pytest.raises(ValueError, match="output folder"):
        run("SaveMemory", memory=memory, filename_prefix=prefix)
    assert not (comfy_dir / "output").exists() and not os.path.exists("/tmp/escape_00001_.safetensors")


def test_saving_no_memory_is_refused(comfy_dir):
    with pytest.raises(ValueError, match="no memory to save"):
        run("SaveMemory", memory=None, filename_prefix="slowfast_vgen/memory")
    assert not (comfy_dir / "output").exists()


# ---------------------------------------------------------------------------------------------- planning nodes


def test_plan_nodes_learn_a_walk_read_a_plan_and_walk_it(world):
    """The planning workflow's chain on the tiny model: a true walk learned into memory, a plan from it, its
    actions read by the inverse dynamics model and walked in the true world; every output as declared."""
    from comfy_graph import TINY_IDM

    out = "move right\nmove down"
    walk = run("ToyWorldWalk", seed=3, size=32, actions=out, frames_per_action=4, way_there="")[0]
    assert walk.shape == (1 + 2 * 4, 32, 32, 3)
    untouched = walk.clone()
    memory, chunk = run("LearnVideo", world_model=world, images=walk, actions=out, num_frames=4, seed=0)
    assert torch.equal(walk, untouched) and memory.num_updates == 2 and chunk.segments == (1, 4, 4)
    images = run("RunEpisode", world_model=world, actions="go back to the start", chunk=chunk, memory=memory,
                 temp_lora="learn", **SAMPLING)[0]
    idm = run("LoadInverseDynamicsModel", idm_name=TINY_IDM)[0]
    assert len(images) == 9 + 2
    actions, plan = run("VideoPlanToActions", inverse_dynamics=idm, images=images, skip_frames=8, frames_per_action=1)
    assert len(actions.splitlines()) == len(plan) - 1 == 2 and torch.equal(plan, images[8:])
    per_chunk = run("VideoPlanToActions", inverse_dynamics=idm, images=images, skip_frames=0, frames_per_action=2)[0]
    assert len(per_chunk.splitlines()) == 5  # 10 reads, 2 per action
    executed = run("ToyWorldWalk", seed=3, size=32, actions="stay", frames_per_action=1, way_there=out,
                   plan_actions=actions)[0]
    assert executed.shape == (3, 32, 32, 3)
    assert torch.equal(executed[0], walk[-1])  # the execution starts where the way there ended


def test_plan_nodes_bad_input(world):
    from comfy_graph import TINY_IDM

    idm = run("LoadInverseDynamicsModel", idm_name=TINY_IDM)[0]
    frames = torch.zeros(5, 32, 32, 3)
    with pytest.raises(ValueError, match="1 frame\\(s\\) are left"):
        NODE_CLASS_MAPPINGS["SlowFastVGen_VideoPlanToActions"]().read(idm, frames, 4, 1)
    with pytest.raises(ValueError, match="plan_actions: ToyWorld does not know the action 'jump'"):
        NODE_CLASS_MAPPINGS["SlowFastVGen_ToyWorldWalk"]().walk(0, 32, "stay", 1, "", plan_actions="jump")
    with pytest.raises(ValueError, match="need 1 \\+ 2 x 4 = 9"):
        NODE_CLASS_MAPPINGS["SlowFastVGen_LearnVideo"]().learn(world, frames, "move left\nstay", 4, 0)
    with pytest.raises(FileNotFoundError, match="models/inverse_dynamics"):
        NODE_CLASS_MAPPINGS["SlowFastVGen_LoadInverseDynamicsModel"]().load("../elsewhere")


@pytest.fixture
def progress():
    """Every progress update the nodes send: (done, total, preview image or None)."""
    updates = []
    comfy_services.set_progress_hook(lambda done, total, preview: updates.append((done, total, preview)))
    yield updates
    comfy_services.set_progress_hook(None)


def test_run_episode_progress_counts_denoising_and_temp_lora_steps_and_previews_every_chunk(world, start, progress):
    settings = run("TempLoRASettingsV2", rank=4, learning_rate=1e-4, target="all-attention",
                   steps_per_update=3)[0]
    images = run("RunEpisode", world_model=world, actions="move right\nmove left", temp_lora="learn", image=start,
                 settings=settings, **SAMPLING)[0]
    per_chunk = SAMPLING["steps"] + 3 + 1  # denoising steps, Temp-LoRA steps, the decoded chunk
    total = 1 + 2 * per_chunk
    assert [done for done, _, _ in progress] == list(range(1, total + 1))  # one unit at a time, no gap
    assert {t for _, t, _ in progress} == {total}
    previews = [(done, preview) for done, _, preview in progress if preview is not None]
    assert [done for done, _ in previews] == [1, 1 + per_chunk, total]  # the start, then each chunk when made
    # The chunk's 2 frames side by side, enlarged to fill ComfyUI's default --preview-size of 512 (not more).
    assert all(max(p.size) <= 512 and p.height >= 200 and p.width <= 2.1 * p.height for _, p in previews[1:])
    assert len(images) == 1 + 2 * SAMPLING["num_frames"]


def test_cancel_during_a_temp_lora_update_stops_within_one_step(world, start, progress):
    settings = run("TempLoRASettingsV2", rank=4, learning_rate=1e-4, target="all-attention",
                   steps_per_update=50)[0]
    chunk = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    progress.clear()
    comfy_services.set_progress_hook(
        lambda done, total, preview: (progress.append(done), done == 2 and comfy_services.request_interrupt()))
    with pytest.raises(comfy_services.Interrupted):
        run("TempLoRAUpdate", world_model=world, new_chunk=chunk, seed=0, settings=settings)
    assert progress == [1, 2]  # of 50 steps: stopped right after the one during which Cancel was pressed


def test_temp_lora_update_and_decode_report_progress(world, start, progress):
    chunk = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    assert [(d, t) for d, t, _ in progress] == [(1, 3), (2, 3), (3, 3)]  # 2 steps, then the preview
    assert progress[-1][2] is not None
    progress.clear()
    run("TempLoRAUpdate", world_model=world, new_chunk=chunk, seed=0)
    assert [(d, t) for d, t, _ in progress] == [(1, 1)]
    progress.clear()
    run("DecodeChunk", world_model=world, chunk=chunk, frames="episode")
    assert [(d, t) for d, t, _ in progress] == [(1, 2), (2, 2)]  # the start frame, then the chunk


def validate(key: str, **values):
    """The node's queue-time check as ComfyUI's V3 schema runs it (nodes/v3.py): the classmethod bound to
    another class, which answers INPUT_TYPES and nothing else of the node's."""
    cls = NODE_CLASS_MAPPINGS[f"SlowFastVGen_{key}"]
    v3_node = type(f"{cls.__name__}V3", (), {"INPUT_TYPES": cls.INPUT_TYPES,
                                             "VALIDATE_INPUTS": cls.__dict__["VALIDATE_INPUTS"]})
    return v3_node.VALIDATE_INPUTS(**values)


def api_graph(name: str) -> dict:
    import json

    from slowfast_vgen.workflows.convert import API_DIR

    return json.loads((API_DIR / f"{name}.json").read_text())


def node_of(graph: dict, key: str, which: int = 0) -> dict:
    return [n for n in graph.values() if n["class_type"] == f"SlowFastVGen_{key}"][which]


def queue_errors(graph: dict) -> dict:
    from comfy_graph import CORE_STUBS, validate_prompt

    return validate_prompt(graph, {**NODE_CLASS_MAPPINGS, **CORE_STUBS})


def _three():
    return api_graph("3 Step by step memory flow")


def _one():
    return api_graph("1 Long episode with memory")


def _bad_graphs():
    """(case, graph, the input at fault, words of its message): one thing wrong each, as a user would queue it."""
    cases = []

    def case(name, base, edit, key, which, input_name, words):
        graph = base()
        node = node_of(graph, key, which)
        edit(graph, node)
        node_id = next(i for i, n in graph.items() if n is node)
        cases.append(pytest.param(graph, node_id, input_name, words, id=name))

    case("unknown world model", _three, lambda g, n: n["inputs"].update(model_name="no-such-model"),
         "LoadWorldModel", 0, "model_name", "World model 'no-such-model' not found")
    case("unknown dtype", _three, lambda g, n: n["inputs"].update(dtype="float8"), "LoadWorldModel", 0, "dtype",
         "float8")
    case("unknown conditioning", _three, lambda g, n: n["inputs"].update(conditioning="sideways"),
         "ActionChunk", 0, "conditioning", "sideways")
    case("unknown recall", _three, lambda g, n: n["inputs"].update(recall="forwards"), "ActionChunk", 1, "recall",
         "forwards")
    case("unknown temp_lora mode", _one, lambda g, n: n["inputs"].update(temp_lora="sometimes"), "RunEpisode", 0,
         "temp_lora", "sometimes")
    case("unknown frames", _three, lambda g, n: n["inputs"].update(frames="all"), "DecodeChunk", 0, "frames", "all")
    case("unknown target", _three, lambda g, n: n["inputs"].update(target="everything"), "TempLoRASettingsV2", 0,
         "target", "everything")

    def preset(graph, node):
        node["class_type"], node["inputs"] = "SlowFastVGen_TempLoRAPreset", {"preset": "fastest"}
    case("unknown preset", _three, preset, "TempLoRASettingsV2", 0, "preset", "fastest")

    def memory(graph, node):
        node["class_type"], node["inputs"] = "SlowFastVGen_LoadMemory", {"memory_name": "gone.safetensors [output]"}
    case("unknown memory", lambda: api_graph("5 Continue from a saved memory"), memory, "LoadMemory", 0,
         "memory_name", "Memory adapter 'gone.safetensors [output]' not found")
    case("a world model linked into image", _three, lambda g, n: n["inputs"].update(image=["2", 0]), "ActionChunk",
         0, "image", "received_type(SFV_WORLD_MODEL) mismatch input_type(IMAGE)")
    case("a chunk linked into memory", _three, lambda g, n: n["inputs"].update(memory=["5", 0]), "ActionChunk", 1,
         "memory", "received_type(SFV_CHUNK) mismatch")
    case("empty action", _three, lambda g, n: n["inputs"].update(action="  "), "ActionChunk", 0, "action",
         "The action is empty")
    case("empty action script", _one, lambda g, n: n["inputs"].update(actions=" \n \n"), "RunEpisode", 0, "actions",
         "The action script is empty")
    case("save name with '..'", _one, lambda g, n: n["inputs"].update(filename_prefix="../out/memory"),
         "SaveMemory", 0, "filename_prefix", "contains '..'")
    case("absolute save name", _one, lambda g, n: n["inputs"].update(filename_prefix="/tmp/memory"), "SaveMemory", 0,
         "filename_prefix", "is an absolute path")
    case("unknown way there", lambda: api_graph("6 Plan vs execution"),
         lambda g, n: n["inputs"].update(way_there="fly"), "ToyWorldWalk", 1, "way_there", "way_there: ")
    case("steps out of range", _three, lambda g, n: n["inputs"].update(steps=0), "ActionChunk", 0, "steps",
         "value_smaller_than_min")
    return cases


@pytest.mark.parametrize("graph, node_id, input_name, words", _bad_graphs())
def test_a_bad_graph_is_refused_at_queue_time_once_on_the_input_at_fault(graph, node_id, input_name, words):
    errors = queue_errors(graph)
    assert list(errors) == [node_id], errors
    assert [e["input_name"] for e in errors[node_id]] == [input_name], errors[node_id]
    assert words in errors[node_id][0]["details"] or words == errors[node_id][0]["type"]


def test_the_shipped_graphs_pass_the_queue_time_checks(world, comfy_dir):
    from slowfast_vgen.workflows.convert import API_DIR

    for path in sorted(API_DIR.glob("*.json")):
        graph = api_graph(path.stem)
        for node in graph.values():  # what workflow 1 saves, listed once it ran
            if node["class_type"] == "SlowFastVGen_LoadMemory":
                world.pipe.new_memory().save(comfy_dir / "output" / node["inputs"]["memory_name"].removesuffix(
                    " [output]"))
        assert queue_errors(graph) == {}, path.name


def test_a_retired_widget_at_another_value_is_refused_on_the_retired_widgets():
    graph = _three()
    node = node_of(graph, "TempLoRASettingsV2")
    node["class_type"] = "SlowFastVGen_TempLoRASettings"
    for name in ("poses", "turn_views"):  # settings added after that node was retired: no old graph has them
        node["inputs"].pop(name)
    node["inputs"].update(alpha=0.0, timestep_low=0.8, timestep_high=1.0, keep_optimizer_state=True)
    errors = next(iter(queue_errors(graph).values()))
    assert {e["input_name"] for e in errors} == {"alpha", "timestep_low", "timestep_high", "keep_optimizer_state"}
    assert all("timestep_low=0.8 is no longer supported" in e["details"] for e in errors)


@pytest.mark.parametrize("key, values, message", [
    ("ActionChunk", dict(action="  "), "The action is empty"),
    ("RunEpisode", dict(actions=" \n\n "), "The action script is empty"),
    ("TempLoRASettings", dict(timestep_low=0.6, timestep_high=0.2), "timestep_low=0.6 is no longer supported"),
    ("TempLoRASettings", dict(keep_optimizer_state=False), "keep_optimizer_state=False is no longer supported"),
    ("SaveMemory", dict(filename_prefix="../outside/memory"), "contains '..'"),
    ("SaveMemory", dict(filename_prefix="/tmp/memory"), "is an absolute path"),
    ("SaveMemory", dict(filename_prefix="  "), "filename_prefix is empty"),
    ("ToyWorldWalk", dict(way_there="fly"), "way_there: "),
    ("LearnVideo", dict(actions=""), "The action script is empty"),
    ("LoadWorldModel", dict(model_name="no-such-model"), "press R to refresh"),
    ("LoadInverseDynamicsModel", dict(idm_name="no-such-idm"), "Inverse dynamics model 'no-such-idm' not found"),
])
def test_bad_widgets_are_refused_at_queue_time(key, values, message):
    result = validate(key, **values)
    assert result is not True and message in result


@pytest.mark.parametrize("key, values", [
    ("ActionChunk", dict(action="move right")),
    ("ActionChunk", dict(action=None)),  # linked: decided when it runs
    ("RunEpisode", dict(actions="move right\n\nmove left")),
    ("TempLoRASettings", dict(alpha=0.0, timestep_low=0.0, timestep_high=1.0, keep_optimizer_state=True)),
    ("TempLoRASettings", dict()),
    ("SaveMemory", dict(filename_prefix="slowfast_vgen/memory")),
    ("ToyWorldWalk", dict(way_there="move up")),
    ("LearnVideo", dict(actions="stay")),
    ("LoadWorldModel", dict(model_name="toyworld (built-in)")),
])
def test_good_widgets_pass_queue_time_checks(key, values):
    assert validate(key, **values) is True


def test_no_queue_time_check_names_more_than_one_input_but_the_retired_node():
    """ComfyUI shows a check's refusal on every input the check names (nodes/validation.py)."""
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        check = cls.__dict__.get("VALIDATE_INPUTS")
        if check is None or node_id.endswith("_TempLoRASettings"):
            continue
        names = list(inspect.signature(check.__get__(None, cls)).parameters)
        assert len(names) == 1 and names[0] != "input_types", (node_id, names)


def test_what_needs_two_inputs_is_refused_as_the_node_starts(world, start, comfy_dir, monkeypatch):
    chunk = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    monkeypatch.setattr(WorldModel, "running", lambda self: pytest.fail("the model was loaded before refusing"))
    for key, extra in (("ActionChunk", dict(action="stay")), ("RunEpisode", dict(actions="stay", temp_lora="learn"))):
        with pytest.raises(ValueError, match="Both 'image' and 'chunk' are connected"):
            run(key, world_model=world, image=start, chunk=chunk, **extra, **SAMPLING)
        with pytest.raises(ValueError, match="Neither 'image' nor 'chunk' is connected"):
            run(key, world_model=world, **extra, **SAMPLING)
    with pytest.raises(ValueError, match="such a memory learns nothing"):
        run("TempLoRASettingsV2", rank=4, learning_rate=1e-4, target="all-attention", steps_per_update=0,
            panorama=False)
    with pytest.raises(ValueError, match="size: Memory Maze renders frames of at least 16 pixels, got 8"):
        run("ToyWorldStartFrame", seed=0, size=8, world="memory-maze")


@pytest.mark.parametrize("key, inputs, message", [
    ("ToyWorldStartFrame", dict(seed=-1, size=64), "seed=-1 is out of range: give a value from 0 to"),
    ("SideBySide", dict(left=torch.zeros(1, 8, 8, 3), right=torch.zeros(1, 8, 8, 3), gap=-5),
     "gap=-5 is out of range: give a value from 0 to 256"),
    ("ToyWorldStartFrame", dict(seed=0, size=64, world="mars"), "world: 'mars' is not one of 'toyworld'"),
    ("TempLoRAPreset", dict(preset="fastest"), "preset: 'fastest' is not one of 'paper'"),
])
def test_nodes_called_directly_name_the_input_at_fault(key, inputs, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        run(key, **inputs)


def test_no_error_shows_a_server_path_or_a_module_path(world, start, comfy_dir, tiny_model_dir):
    """What a ComfyUI user is shown of a failed node or a refused graph names files relative to ComfyUI's
    folders and raises builtin exceptions (ComfyUI shows `<module>.<type>` for others)."""
    folder = comfy_dir / "models" / "temp_lora_memories"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    other = world.pipe.new_memory()
    other = EpisodicMemory(config=other.config, lora=other.lora, base_fingerprint="0123456789abcdef")
    chunk = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    failures = [
        lambda: run("LoadWorldModel", model_name="not-there", dtype="float32", device="cpu"),
        lambda: run("LoadMemory", memory_name="broken.safetensors"),
        lambda: run("LoadMemory", memory_name="gone.safetensors"),
        lambda: run("ActionChunk", world_model=world, action="up", image=start, memory=other, **SAMPLING),
        lambda: run("TempLoRAUpdate", world_model=world, new_chunk=chunk, seed=0, memory=other),
        lambda: run("LoadInverseDynamicsModel", idm_name="../elsewhere"),
    ]
    messages = []
    for failure in failures:
        with pytest.raises(Exception) as raised:
            failure()
        assert type(raised.value).__module__ == "builtins", type(raised.value)
        messages.append(str(raised.value))
    messages += [validate("LoadMemory", memory_name="broken.safetensors"),
                 validate("LoadWorldModel", model_name="not-there")]
    for message in messages:
        assert str(comfy_dir) not in message and os.path.realpath(comfy_dir) not in message, message
        assert tiny_model_dir not in message and "/tmp" not in message, message
    assert any("models/temp_lora_memories/broken.safetensors" in m for m in messages), messages
    assert any("models/world_models" in m for m in messages), messages
    assert any("'tiny' (fingerprint" in m for m in messages), messages


def test_public_message_makes_paths_relative_to_comfyuis_folders(comfy_dir):
    from slowfast_vgen.nodes.errors import public_message
    from slowfast_vgen.paths import DEFAULT_MODEL_DIR

    output = os.path.join(os.getcwd(), "output", "slowfast_vgen", "m.safetensors")
    assert public_message(f"{output} is broken") == "output/slowfast_vgen/m.safetensors is broken"
    assert public_message(f"missing from {DEFAULT_MODEL_DIR}.") == "missing from slowfast_vgen/models/toyworld."
    assert public_message("see /srv/secret/place/file.bin, or C:\\Users\\me\\x.json") == \
        "see .../file.bin, or .../x.json"
    assert public_message("https://example.org/a/b and ./relative/path") == "https://example.org/a/b and ./relative/path"


def test_a_file_that_is_no_memory_is_refused_at_queue_time(comfy_dir):
    from safetensors.torch import save_file

    folder = comfy_dir / "models" / "temp_lora_memories"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(2)}, folder / "some_lora.safetensors", metadata={"format": "pt"})
    message = validate("LoadMemory", memory_name="some_lora.safetensors")
    assert "is not a SlowFast-VGen memory adapter" in message


# ---------------------------------------------------------------------------------------------------
# Cancel inside a Temp-LoRA step, determinism, saved files


def test_cancel_is_checked_inside_every_unet_call_forward_and_backward(world, start, monkeypatch):
    """A Temp-LoRA step (one forward and backward pass) checks Cancel at every layer both ways, so a long
    step stops within a layer, not at its end; pressed during the first step, no step is reported."""
    chunk = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    layers = [m for m in world.pipe.unet.modules() if type(m).__name__ in
              ("ResnetBlock2D", "Transformer2DModel", "TransformerTemporalModel", "TemporalConvLayer")]
    checks = []
    real = comfy_services.throw_if_interrupted
    monkeypatch.setattr(comfy_services, "throw_if_interrupted", lambda: (checks.append(1), real()))
    run("TempLoRAUpdate", world_model=world, new_chunk=chunk, seed=0)  # one step
    assert len(checks) >= 2 * len(layers) > 0, (len(checks), len(layers))  # forward and backward

    # Cancel pressed while the first step's backward pass runs: stopped there, the step never reported.
    backward_checks = []

    def press_in_backward(gradient):
        backward_checks.append(1)
        comfy_services.request_interrupt()

    def arm(module, args, output):
        if output.requires_grad:
            output.register_hook(press_in_backward)

    hook = layers[len(layers) // 2].register_forward_hook(arm)
    steps = []
    comfy_services.set_progress_hook(lambda done, total, preview: steps.append(done))
    try:
        with pytest.raises(comfy_services.Interrupted):
            run("TempLoRAUpdate", world_model=world, new_chunk=chunk, seed=0,
                settings=TempLoRAConfig(steps_per_update=5))
    finally:
        hook.remove()
        comfy_services.set_progress_hook(None)
    assert backward_checks and steps == []
    assert not world.pipe.unet._forward_pre_hooks and not layers[0]._forward_pre_hooks  # hooks removed after


def test_cancel_inside_a_long_update_stops_within_a_second(world, start):
    """Bounded wait: Cancel pressed from another thread (as ComfyUI's server does) during a 200-step update."""
    import threading
    import time

    chunk = run("ActionChunk", world_model=world, action="move right", image=start, **SAMPLING)[0]
    pressed = []
    timer = threading.Timer(0.5, lambda: (pressed.append(time.monotonic()), comfy_services.request_interrupt()))
    timer.start()
    try:
        with pytest.raises(comfy_services.Interrupted):
            run("TempLoRAUpdate", world_model=world, new_chunk=chunk, seed=0,
                settings=TempLoRAConfig(steps_per_update=200))
        stopped = time.monotonic()
    finally:
        timer.cancel()
    assert pressed and stopped - pressed[0] < 1.0


def test_the_same_graph_twice_gives_the_same_frames(comfy_dir, tiny_model_dir):
    """Workflow 3 (chunks, Temp-LoRA updates, chunks with memory) queued twice on fresh models: bit-identical."""
    from comfy_graph import StubSaveVideo, run_prompt
    from test_workflows import for_tiny_model

    graph = for_tiny_model(api_graph("3 Step by step memory flow"))
    videos = []
    for _ in range(2):
        StubSaveVideo.saved.clear()
        run_prompt(graph)
        videos.append(StubSaveVideo.saved[0]["video"]["images"])
    assert torch.equal(videos[0], videos[1])


def test_run_episode_gives_the_librarys_episode_bit_for_bit(world, start):
    """The node and the library (what `slowfast-vgen generate` runs) with the same settings and seed."""
    from slowfast_vgen.nodes.world_model import decode_to_image, start_chunk

    settings = TempLoRAConfig()
    actions = "move right\nmove right\nmove left"
    images, memory, _ = run("RunEpisode", world_model=world, actions=actions, temp_lora="learn", image=start,
                            settings=settings, **SAMPLING)
    with torch.inference_mode():
        with world.running() as pipe:
            begin = start_chunk(pipe, start, None).last
            steps = list(pipe.stream_episode(actions.splitlines(), start_latents=begin, memory_settings=settings,
                                             num_frames=SAMPLING["num_frames"], num_inference_steps=SAMPLING["steps"],
                                             guidance_scale=SAMPLING["guidance"], generator=torch.Generator().manual_seed(0),
                                             conditioning="mask"))
            library = torch.cat([decode_to_image(pipe, begin)] + [decode_to_image(pipe, s.latents) for s in steps])
    assert torch.equal(images, library)
    assert_same(tensors_of(memory), tensors_of(steps[-1].memory))


def test_saved_memories_are_readable_like_videos_and_the_node_shows_the_file(world, comfy_dir):
    previous = os.umask(0o022)
    try:
        result = run("SaveMemory", memory=world.pipe.new_memory(), filename_prefix="slowfast_vgen/shown")
    finally:
        os.umask(previous)
    assert oct(os.stat("output/slowfast_vgen/shown_00001_.safetensors").st_mode & 0o777) == "0o644"
    ui = result["ui"]
    assert ui["memories"] == [{"filename": "shown_00001_.safetensors", "subfolder": "slowfast_vgen", "type": "output"}]
    assert "output/slowfast_vgen/shown_00001_.safetensors" in ui["text"][0]
    assert "slowfast_vgen/shown_00001_.safetensors [output]" in ui["text"][0]
    card = ui["images"][0]
    assert card["type"] == "temp" and os.path.isfile(os.path.join("temp", card["filename"]))


def test_a_path_the_user_typed_is_shown_as_typed(world, comfy_dir):
    with pytest.raises(ValueError, match="filename_prefix '/tmp/escape' is an absolute path"):
        run("SaveMemory", memory=world.pipe.new_memory(), filename_prefix="/tmp/escape")
    assert "'/tmp/escape' is an absolute path" in validate("SaveMemory", filename_prefix="/tmp/escape")
