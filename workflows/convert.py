"""Generate the API-format (`/prompt`) copies of the UI-format example workflows.

ComfyUI's template browser needs the UI format (the canvas: `nodes`, `links`, `widgets_values`) and reads
it from the pack's `example_workflows/` folder (ComfyUI's convention; it serves every file there, so that
folder holds the workflows and their thumbnails only); scripts POST the API format
(`{id: {"class_type", "inputs"}}`) to `/prompt`. The UI files are the source; this tool derives
`workflows/api/<name>.json` from each the way ComfyUI's frontend does when it queues a graph:

    python -m slowfast_vgen.workflows.convert            # (re)write workflows/api/*.json
    python -m slowfast_vgen.workflows.convert --check    # exit 1 if a copy is missing or out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..nodes import NODE_CLASSES

API_DIR = Path(__file__).resolve().parent / "api"
WORKFLOWS_DIR = EXAMPLE_WORKFLOWS_DIR = API_DIR.parent.parent / "example_workflows"  # the UI-format workflows
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_AFTER_GENERATE = ("fixed", "increment", "decrement", "randomize")
# Canvas-only nodes: the frontend never sends them to the server.
UI_ONLY_NODES = {"Note", "MarkdownNote"}
MODE_ALWAYS = 0  # muted (2) and bypassed (4) nodes need graph rewiring that the shipped workflows never need


@dataclass(frozen=True)
class NodeDefinition:
    """What the converter and the checks need of a node class: INPUT_TYPES, RETURN_TYPES, OUTPUT_NODE, title."""

    input_types: dict
    return_types: tuple[str, ...]
    display_name: str
    output_node: bool = False

    def inputs(self) -> dict[str, tuple]:
        """Every input, required ones first, in declaration order (the order of the node's widgets)."""
        return {**self.input_types.get("required", {}), **self.input_types.get("optional", {})}

    def widget_names(self) -> list[str]:
        return [name for name, spec in self.inputs().items() if is_widget(spec)]

    def socket_names(self) -> list[str]:
        return [name for name, spec in self.inputs().items() if not is_widget(spec)]


def input_type(spec: tuple) -> str:
    """'COMBO' for a list of options, else the declared type name."""
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def input_options(spec: tuple) -> dict:
    return spec[1] if len(spec) > 1 else {}


def is_widget(spec: tuple) -> bool:
    return input_type(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput", False)


def has_control_widget(name: str, spec: tuple) -> bool:
    """Whether the frontend adds a 'control_after_generate' widget (and a widgets_values slot) after this input.

    The frontend's rule: `inputSpec.control_after_generate ?? ['seed', 'noise_seed'].includes(name)` for INT inputs.
    """
    if input_type(spec) != "INT":
        return False
    return bool(input_options(spec).get("control_after_generate", name in ("seed", "noise_seed")))


# Core nodes used by the shipped workflows, as ComfyUI declares them (comfy_extras/nodes_video.py, schema v3):
# they are not importable without ComfyUI.
CORE_NODES = {
    "CreateVideo": NodeDefinition(
        {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
         "optional": {"audio": ("AUDIO",)}},
        ("VIDEO",),
        "Create Video",
    ),
    "SaveVideo": NodeDefinition(
        {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                      "format": (["auto", "mp4"], {"default": "auto"}),
                      "codec": (["auto", "h264"], {"default": "auto"})}},
        (),
        "Save Video",
        output_node=True,
    ),
}


def node_definitions() -> dict[str, NodeDefinition]:
    """The pack's nodes (from their classes) and the core nodes the workflows use."""
    pack = {
        name: NodeDefinition(cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES), display_name,
                             getattr(cls, "OUTPUT_NODE", False))
        for name, (cls, display_name) in NODE_CLASSES.items()
    }
    return {**CORE_NODES, **pack}


def widget_values(node: dict, definition: NodeDefinition) -> dict:
    """A UI node's widgets_values by input name, without the control_after_generate slots."""
    values = node.get("widgets_values", [])
    if not isinstance(values, list):
        raise ValueError(f"Node {node['id']} ({node['type']}): widgets_values must be a list, got {type(values).__name__}.")
    named, position = {}, 0
    inputs = definition.inputs()
    for name in definition.widget_names():
        if position >= len(values):
            raise ValueError(f"Node {node['id']} ({node['type']}): no widget value for {name!r}.")
        named[name] = values[position]
        position += 2 if has_control_widget(name, inputs[name]) else 1
    if position != len(values):
        raise ValueError(
            f"Node {node['id']} ({node['type']}): {len(values)} widget values for widgets "
            f"{definition.widget_names()} (which take {position} values, control_after_generate included)."
        )
    return named


def ui_to_api(workflow: dict, definitions: dict[str, NodeDefinition] | None = None) -> dict:
    """Convert a UI-format workflow into the API format ComfyUI's frontend would queue for it."""
    definitions = definitions or node_definitions()
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        kind = node["type"]
        if kind in UI_ONLY_NODES:
            continue
        if node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            raise ValueError(f"Node {node['id']} ({kind}) is muted or bypassed; only active nodes convert.")
        if kind not in definitions:
            raise ValueError(f"Node {node['id']}: unknown node type {kind!r}.")
        inputs = widget_values(node, definitions[kind])
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        title = node.get("title", definitions[kind].display_name)
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": kind, "_meta": {"title": title}}
    return prompt


def api_path(ui_path: Path) -> Path:
    return API_DIR / ui_path.name


def convert_folder(folder: Path = WORKFLOWS_DIR, check: bool = False) -> list[Path]:
    """Write (or, with `check`, only compare) the API copy of every UI workflow; returns the stale copies."""
    definitions = node_definitions()
    stale = []
    for ui_path in sorted(folder.glob("*.json")):
        text = json.dumps(ui_to_api(json.loads(ui_path.read_text()), definitions), indent=2) + "\n"
        target = api_path(ui_path)
        if target.is_file() and target.read_text() == text:
            continue
        stale.append(target)
        if not check:
            target.parent.mkdir(exist_ok=True)
            target.write_text(text)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report API copies that are missing or stale")
    parser.add_argument("--folder", type=Path, default=WORKFLOWS_DIR,
                        help="folder of UI-format workflows (default: the pack's example_workflows/)")
    args = parser.parse_args(argv)
    stale = convert_folder(args.folder, check=args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
