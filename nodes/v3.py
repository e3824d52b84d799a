"""The nodes in ComfyUI's V3 schema (`comfy_api.latest.io.ComfyNode`), for a ComfyUI that has it.

Each node is written once, as a small class over the library that runs without ComfyUI (the pack is also
a diffusers package, and its tests and users call the nodes directly). Inside a ComfyUI with the V3
schema, `comfy_entrypoint` hands ComfyUI a V3 node made from each class's declaration: an `io.Schema`
with the same node id, inputs in the same order (so saved graphs' widget values still line up), outputs,
category and description; `execute` calls the class's function, `validate_inputs` is its
`VALIDATE_INPUTS` and `fingerprint_inputs` its `IS_CHANGED`. This module imports ComfyUI's API, so only
`nodes/__init__.py` imports it, and only inside ComfyUI.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import ComfyExtension, io

# Options of a V1 input spec that V3's widget inputs take as keyword arguments, by V1 name.
_WIDGET_OPTIONS = {
    "INT": ("default", "min", "max", "step", "control_after_generate"),
    "FLOAT": ("default", "min", "max", "step", "round"),
    "STRING": ("default", "multiline", "placeholder"),
    "BOOLEAN": ("default", "label_on", "label_off"),
}
_WIDGETS = {"INT": io.Int, "FLOAT": io.Float, "STRING": io.String, "BOOLEAN": io.Boolean}
_SOCKETS = {"IMAGE": io.Image, "MASK": io.Mask, "STRING": io.String}


class ListCombo(io.Combo.Input):
    """A V3 combo that ComfyUI's executor and frontend see in the classic form, its list of values as its
    type: ComfyUI 0.3.64 checks a value against such a list when a prompt is queued (and reports a wrong
    one once, on the input), but not against a V3 "COMBO"'s options. Later ComfyUIs check both."""

    def get_io_type(self):
        return list(self.options)


def v3_input(name: str, spec: tuple, optional: bool) -> io.Input:
    """A V3 input from a V1 input spec `(type or options list, {options})`."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    common = {"optional": optional, "tooltip": options.get("tooltip")}
    if isinstance(kind, (list, tuple)):
        return ListCombo(name, options=list(kind), default=options.get("default"), **common)
    if kind in _WIDGETS:
        given = {key: options[key] for key in _WIDGET_OPTIONS[kind] if key in options}
        if "forceInput" in options:
            given["force_input"] = options["forceInput"]
        return _WIDGETS[kind].Input(name, **given, **common)
    return (_SOCKETS.get(kind) or io.Custom(kind)).Input(name, **common)


def v3_output(kind: str, name: str, tooltip: str | None) -> io.Output:
    # V3 ids are unique across a node's inputs and outputs (Action Chunk takes a chunk and makes one);
    # links and saved graphs refer to outputs by position and show the display name.
    template = _SOCKETS.get(kind) or io.Custom(kind)
    return template.Output(f"{name}_output", display_name=name, tooltip=tooltip)


def v3_node(node_id: str, display_name: str, node_class: type) -> type[io.ComfyNode]:
    """The V3 node of a pack node class (see the module docstring)."""
    declared = node_class.INPUT_TYPES  # called per schema request: model lists stay fresh, as in V1

    def define_schema(cls) -> io.Schema:
        spec = declared()
        inputs = ([v3_input(name, s, False) for name, s in spec.get("required", {}).items()]
                  + [v3_input(name, s, True) for name, s in spec.get("optional", {}).items()])
        names = getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES)
        tooltips = getattr(node_class, "OUTPUT_TOOLTIPS", (None,) * len(names))
        return io.Schema(
            node_id=node_id, display_name=display_name, category=node_class.CATEGORY,
            description=node_class.DESCRIPTION, inputs=inputs,
            outputs=[v3_output(k, n, t) for k, n, t in zip(node_class.RETURN_TYPES, names, tooltips)],
            is_output_node=getattr(node_class, "OUTPUT_NODE", False),
            is_deprecated=getattr(node_class, "DEPRECATED", False),
        )

    def execute(cls, **inputs: Any) -> io.NodeOutput:
        result = getattr(node_class(), node_class.FUNCTION)(**inputs)
        if isinstance(result, dict):  # an output node's {"ui": ..., "result": ...}
            return io.NodeOutput(*result.get("result", ()), ui=result.get("ui"))
        return io.NodeOutput(*result)

    members = {"define_schema": classmethod(define_schema), "execute": classmethod(execute),
               "__doc__": node_class.__doc__, "__module__": __name__}
    # The V1 classmethods themselves: ComfyUI reads their argument names to know what to pass (widget
    # values, `input_types`), and they refer to the node's declaration through `cls.INPUT_TYPES`, which
    # V3 nodes answer in the V1 form.
    for v1_name, v3_name in (("VALIDATE_INPUTS", "validate_inputs"), ("IS_CHANGED", "fingerprint_inputs")):
        if v1_name in node_class.__dict__:
            members[v3_name] = node_class.__dict__[v1_name]
    return type(node_class.__name__, (io.ComfyNode,), members)


class SlowFastVGenExtension(ComfyExtension):
    """The pack's nodes, as ComfyUI's V3 extension."""

    def __init__(self, node_classes: dict[str, tuple[type, str]]):
        self.nodes = [v3_node(node_id, name, cls) for node_id, (cls, name) in node_classes.items()]

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return self.nodes
