"""Every deprecated alias still works and says, with one DeprecationWarning per use, what replaced it.

Each entry of `ALIASES` is (module, old name, the object it must be); helpers who add an alias add a line.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from slowfast_vgen.pipelines.episode import EpisodeStep
from slowfast_vgen.pipelines.episodic_memory import UpdateClip
from slowfast_vgen.pipelines.fast_learning import DenoisingExample

ALIASES = [
    ("slowfast_vgen.pipelines", "EpisodeChunk", EpisodeStep),
    ("slowfast_vgen.pipelines.pipeline_slowfast_vgen", "EpisodeChunk", EpisodeStep),
    ("slowfast_vgen.pipelines.temp_lora", "MemoryClip", UpdateClip),
    ("slowfast_vgen.pipelines.temp_lora", "MemoryExample", DenoisingExample),
]

# Training, evaluation, planning and data (issue 31, helper B).
from slowfast_vgen.data import streams  # noqa: E402
from slowfast_vgen.training import losses, stages  # noqa: E402
from slowfast_vgen.training.train import _sample_stream  # noqa: E402

ALIASES += [
    ("slowfast_vgen.training.slow_fast", "EpisodeStream", streams.EpisodeStream),
    ("slowfast_vgen.training.slow_fast", "ManifestEpisodeStream", streams.ManifestEpisodeStream),
    ("slowfast_vgen.training.slow_fast", "TRAINING_FAMILIES", streams.TRAINING_FAMILIES),
    ("slowfast_vgen.training.train", "SampleStream", _sample_stream),
    ("slowfast_vgen.training.train", "vae_loss", losses.vae_loss),
    ("slowfast_vgen.training.train", "idm_loss", losses.idm_loss),
    ("slowfast_vgen.training.train", "idm_actions", stages.idm_actions),
    ("slowfast_vgen.training.train", "set_latent_scaling", stages.set_latent_scaling),
]


@pytest.mark.parametrize("module, name, expected", ALIASES, ids=[f"{m}.{n}" for m, n, _ in ALIASES])
def test_a_deprecated_alias_warns_once_and_is_the_new_object(module, name, expected):
    with pytest.warns(DeprecationWarning, match=name) as caught:
        value = getattr(importlib.import_module(module), name)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert value is expected


@pytest.mark.parametrize("module, name, expected", ALIASES, ids=[f"{m}.{n}" for m, n, _ in ALIASES])
def test_from_import_of_a_deprecated_alias_warns_once(module, name, expected):
    with pytest.warns(DeprecationWarning, match=name) as caught:
        namespace: dict = {}
        exec(f"from {module} import {name} as value", namespace)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert namespace["value"] is expected


def test_the_old_record_names_still_build_records():
    latents = torch.zeros(1, 4, 3, 2, 2)
    with pytest.warns(DeprecationWarning):
        from slowfast_vgen.pipelines.temp_lora import MemoryClip, MemoryExample
    assert MemoryClip(latents, 1) == UpdateClip(latents, 1)
    assert isinstance(MemoryExample(latents[:, :, :0], latents, ""), DenoisingExample)


def test_an_unknown_name_is_still_an_attribute_error():
    import slowfast_vgen.pipelines.temp_lora as temp_lora

    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        temp_lora.NoSuchName  # noqa: B018


# ---------------------------------------------------------------------------------------------------
# Deprecated forms of arguments


@pytest.mark.parametrize("temp_lora, learns", [(False, False), (True, True), ("panorama", True)])
def test_stream_episode_temp_lora_warns_once_and_means_what_it_meant(tiny_pipe, tiny_context, temp_lora, learns):
    kwargs = dict(start_latents=tiny_context, num_frames=2, num_inference_steps=1,
                  generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = list(tiny_pipe.stream_episode(["move left"], temp_lora=temp_lora, **kwargs))
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning) and "temp_lora" in str(w.message)]
    assert len(deprecations) == 1, [str(w.message) for w in caught]
    settings = temp_lora if isinstance(temp_lora, str) else None
    kwargs["generator"] = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the random model's frames are no pans (panorama)
        new = list(tiny_pipe.stream_episode(["move left"], memory_settings=settings, update_memory=learns, **kwargs))
    assert torch.equal(old[0].latents, new[0].latents)
    assert (old[0].memory is None) == (not learns) and (new[0].memory is None) == (not learns)
    if learns:
        assert old[0].memory.config == new[0].memory.config


def test_an_unknown_preset_name_is_refused(tiny_pipe, tiny_context):
    with pytest.raises(ValueError, match="Unknown Temp-LoRA preset 'panoramma'; known presets: paper"):
        tiny_pipe.generate_episode(["move left"], start_latents=tiny_context, memory_settings="panoramma")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="Unknown Temp-LoRA preset"):
        tiny_pipe.generate_episode(["move left"], start_latents=tiny_context, temp_lora="panoramma")


def test_settings_without_updates_or_both_forms_are_refused(tiny_pipe, tiny_context):
    with pytest.raises(ValueError, match="update_memory=False runs none"):
        tiny_pipe.generate_episode(["move left"], start_latents=tiny_context, memory_settings="paper",
                                   update_memory=False)
    with pytest.raises(ValueError, match="not both"):
        tiny_pipe.generate_episode(["move left"], start_latents=tiny_context, temp_lora=True, update_memory=False)


def test_the_old_sample_stream_call_still_streams_batches():
    import argparse

    from slowfast_vgen.training import train

    args = argparse.Namespace(data="toyworld", world_seeds=1, batch_size=2, max_generate=None)
    with pytest.warns(DeprecationWarning, match="SampleStream"):
        stream = train.SampleStream(args, 32, 8, seed=0)
    state = stream.state()
    video, num_context, actions = next(iter(stream))
    assert video.shape[0] == 2 and len(actions) == 2 and 1 <= num_context < video.shape[2]
    stream.load_state(state)
    assert torch.equal(next(iter(stream))[0], video), "the stream's state resumes it exactly"
