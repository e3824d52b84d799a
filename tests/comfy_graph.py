"""Shared by the node and workflow tests: a tiny world model in a ComfyUI-like folder, and a small executor
that runs API-format graphs through the node classes the way ComfyUI's execution.py does."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from slowfast_vgen.nodes import NODE_CLASS_MAPPINGS
from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline
from slowfast_vgen.pipelines.inverse_dynamics import InverseDynamicsModel
from slowfast_vgen.workflows.convert import input_options, input_type

TINY = "tiny"
TINY_IDM = "tiny-idm"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny_model") / TINY
    build_pipeline(WorldModelSpec.tiny()).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def comfy_dir(tmp_path, monkeypatch, tiny_model_dir):
    """A working folder laid out as the nodes expect outside ComfyUI: ./models/world_models/tiny,
    ./models/inverse_dynamics/tiny-idm, ./output."""
    world_models = tmp_path / "models" / "world_models"
    world_models.mkdir(parents=True)
    os.symlink(tiny_model_dir, world_models / TINY)
    torch.manual_seed(0)  # an untrained inverse dynamics model for the tiny model's 32-pixel frames
    InverseDynamicsModel(sample_size=32, block_channels=(4, 8)).save_pretrained(
        tmp_path / "models" / "inverse_dynamics" / TINY_IDM)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Stand-ins for the two core output-side video nodes, which only exist inside ComfyUI (they need PyAV and
# comfy_api): they record what they are given instead of encoding an MP4. Everything else runs for real.
class StubCreateVideo:
    FUNCTION = "create"
    RETURN_TYPES = ("VIDEO",)

    def create(self, images, fps, audio=None):
        return ({"images": images, "fps": fps},)


class StubSaveVideo:
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    saved: list = []

    def save(self, video, filename_prefix, format, codec):
        StubSaveVideo.saved.append({"video": video, "filename_prefix": filename_prefix, "format": format})
        return {"ui": {}}


CORE_STUBS = {"CreateVideo": StubCreateVideo, "SaveVideo": StubSaveVideo}


def validate_prompt(prompt: dict, classes: dict) -> dict[str, list[dict]]:
    """The checks ComfyUI 0.3.64's `validate_inputs` makes before it runs anything, with its rules, and the
    errors it would report, by node id (empty when the graph would be queued):
    - a link whose type differs from the input's, unless VALIDATE_INPUTS names `input_types`;
    - for inputs VALIDATE_INPUTS does not name: min / max, and a value not in a classic (list) combo;
    - VALIDATE_INPUTS gets the named inputs that are present (linked ones as None) and `input_types`, and
      ComfyUI attaches a refusal to EVERY named input that is present (`extra_info.input_name`)."""
    node_errors: dict[str, list[dict]] = {}
    for node_id, node in prompt.items():
        cls = classes[node["class_type"]]
        declared = cls.INPUT_TYPES() if hasattr(cls, "INPUT_TYPES") else None
        if declared is None:  # a core stub: its inputs are checked by the UI-format tests
            continue
        errors = node_errors.setdefault(node_id, [])
        specs = {**declared.get("required", {}), **declared.get("optional", {})}
        custom = getattr(cls, "VALIDATE_INPUTS", None)
        named = set(inspect.signature(custom).parameters) if custom is not None else set()
        for name in declared.get("required", {}):
            if name not in node["inputs"]:
                errors.append({"type": "required_input_missing", "details": name, "input_name": name})
        received_types, values = {}, {}
        for name, value in node["inputs"].items():
            spec = specs[name]
            if isinstance(value, list):
                origin = prompt[value[0]]
                received = classes[origin["class_type"]].RETURN_TYPES[value[1]]
                received_types[name] = received
                if "input_types" not in named and received != input_type(spec):
                    errors.append({"type": "return_type_mismatch", "input_name": name,
                                   "details": f"{name}, received_type({received}) mismatch input_type({spec[0]})"})
                    continue
                if name in named:
                    values[name] = None
                continue
            if name in named:
                values[name] = value
                continue
            options = input_options(spec)
            if input_type(spec) == "COMBO" and value not in spec[0]:
                errors.append({"type": "value_not_in_list", "input_name": name, "details": f"{name}: {value!r}"})
            elif "min" in options and value < options["min"]:
                errors.append({"type": "value_smaller_than_min", "input_name": name, "details": name})
            elif "max" in options and value > options["max"]:
                errors.append({"type": "value_bigger_than_max", "input_name": name, "details": name})
        if named:
            if "input_types" in named:
                values["input_types"] = received_types
            result = custom(**values)
            if result is not True:
                errors += [{"type": "custom_validation_failed", "input_name": name, "details": f"{name} - {result}"}
                           for name in values]
        if not errors:
            del node_errors[node_id]
    return node_errors


def run_prompt(prompt: dict) -> dict:
    """Run an API-format graph: validate it, then execute every node in dependency order under
    `torch.inference_mode()`, as ComfyUI does; returns each node's raw return value by id."""
    classes = {**NODE_CLASS_MAPPINGS, **CORE_STUBS}
    node_errors = validate_prompt(prompt, classes)
    assert not node_errors, node_errors
    results: dict = {}

    def execute(node_id: str):
        if node_id in results:
            return results[node_id]
        node = prompt[node_id]
        cls = classes[node["class_type"]]
        inputs = {}
        for name, value in node["inputs"].items():
            inputs[name] = execute(value[0])[value[1]] if isinstance(value, list) else value
        with torch.inference_mode():
            results[node_id] = getattr(cls(), cls.FUNCTION)(**inputs)
        return results[node_id]

    for node_id, node in prompt.items():
        if getattr(classes[node["class_type"]], "OUTPUT_NODE", False):
            execute(node_id)
    return results
