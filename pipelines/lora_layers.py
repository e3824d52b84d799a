"""The LoRA layers in the UNet: which modules a memory adapts, attaching and detaching peft's LoRA layers
around them, and folding a memory into the weights for sampling.

The UNet holds one set of injected peft LoRA layers per layout. A memory (`EpisodicMemory`) is copied into
them only for the duration of a call (`memory_applied`), or folded into the base weights (`memory_folded`),
and the base modules are back in place afterwards: a call without memory runs the base weights bit for bit,
and every earlier memory stays valid for branching an episode.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from .episodic_memory import EpisodicMemory, MemoryMismatchError
from .memory_settings import TempLoRAConfig

ADAPTER_NAME = "temp_lora"


def lora_target_modules(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, torch.nn.Linear]:
    """The base modules a config's target pattern selects, by name."""
    # Kept per pattern: the base modules stay the same objects when LoRA layers are injected around them.
    cache = unet.__dict__.setdefault("_temp_lora_targets", {})
    if config.target_pattern not in cache:
        cache[config.target_pattern] = _find_lora_targets(unet, config)
    return cache[config.target_pattern]


def _find_lora_targets(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, torch.nn.Linear]:
    pattern = re.compile(config.target_pattern)
    targets = {}
    for name, module in unet.named_modules():
        if ".base_layer" in name or ".lora_" in name:
            continue
        if isinstance(module, LoraLayer):
            module = module.get_base_layer()
        if pattern.fullmatch(name):
            if not isinstance(module, torch.nn.Linear):
                raise ValueError(
                    f"Temp-LoRA target {config.target!r} matches {name}, a {type(module).__name__}; "
                    "only nn.Linear modules (attention projections) can be targeted."
                )
            targets[name] = module
    if not targets:
        raise ValueError(f"Temp-LoRA target {config.target!r} matches no module of this UNet.")
    return targets


def expected_lora_shapes(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor a memory of this config must have for this UNet (peft's key names)."""
    shapes = {}
    for name, module in lora_target_modules(unet, config).items():
        shapes[f"{name}.lora_A.weight"] = (config.rank, module.in_features)
        shapes[f"{name}.lora_B.weight"] = (module.out_features, config.rank)
    return shapes


def new_memory(unet: torch.nn.Module, config: TempLoRAConfig, base_fingerprint: str, seed: int = 0) -> EpisodicMemory:
    """An empty memory: peft's own initialisation (A as nn.Linear, B = 0), so it starts as the base model."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for key, shape in expected_lora_shapes(unet, config).items():
        tensor = torch.zeros(shape)
        if ".lora_A." in key:
            torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)
        lora[key] = tensor
    return EpisodicMemory(config=config, lora=lora, base_fingerprint=base_fingerprint)


def check_memory(unet: torch.nn.Module, memory: EpisodicMemory, base_fingerprint: str) -> None:
    """Raise `MemoryMismatchError`, naming what differs, if `memory` was not made for this UNet."""
    if memory.base_fingerprint != base_fingerprint:
        raise MemoryMismatchError(
            f"This memory was made on a world model with fingerprint {memory.base_fingerprint}, but the loaded "
            f"model's fingerprint is {base_fingerprint}. Load the world model it was made with "
            "(`slowfast-vgen memory inspect` shows it), or start a new memory."
        )
    expected = expected_lora_shapes(unet, memory.config)
    missing = sorted(set(expected) - set(memory.lora))
    unexpected = sorted(set(memory.lora) - set(expected))
    if missing or unexpected:
        raise MemoryMismatchError(
            f"The memory's LoRA tensors do not match its target modules {memory.config.target!r} on this UNet: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})."
        )
    for key, shape in expected.items():
        if tuple(memory.lora[key].shape) != shape:
            raise MemoryMismatchError(
                f"Memory tensor {key} has shape {tuple(memory.lora[key].shape)}, but rank {memory.config.rank} on "
                f"this UNet needs {shape}: the adapter was made with another rank or for another model."
            )


# The UNet holds peft LoRA layers only inside `memory_applied` (an update, or training through a memory).
# They are made once per layout and kept aside in between, so that sampling, with or without a memory,
# runs the plain base modules: no extra module in every walk diffusers makes per forward, and nothing to
# disable. State, in the UNet's __dict__: the layers by name, whether they are in place, and peft's config.


def _lora_layers(unet: torch.nn.Module) -> dict[str, LoraLayer]:
    return unet.__dict__.get("_temp_lora_layers", {})


def _set_layers_attached(unet: torch.nn.Module, attached: bool) -> None:
    """Attach the kept LoRA layers to the UNet (`attached`), or detach them: put their base layers back."""
    layers = _lora_layers(unet)
    if not layers or unet.__dict__.get("_temp_lora_attached") is attached:
        return
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child,
                layer if attached else layer.get_base_layer())
    if attached:
        unet.peft_config = unet.__dict__["_temp_lora_peft_config"]
    else:
        unet.__dict__.pop("peft_config", None)
    unet.__dict__["_temp_lora_attached"] = attached


def _ensure_adapter(unet: torch.nn.Module, config: TempLoRAConfig) -> dict[str, torch.nn.Parameter]:
    """LoRA layers shaped for `config` in place in the UNet (made once per layout); their parameters by key."""
    if getattr(unet, "_temp_lora_structure", None) != config.structure():
        _remove_adapter(unet)
        lora_config = LoraConfig(
            r=config.rank, lora_alpha=config.rank, lora_dropout=0.0,
            target_modules=config.target_pattern, init_lora_weights=True,
        )
        inject_adapter_in_model(lora_config, unet, adapter_name=ADAPTER_NAME)
        unet.__dict__["_temp_lora_layers"] = {
            name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}
        unet.__dict__["_temp_lora_peft_config"] = unet.peft_config
        unet.__dict__["_temp_lora_attached"] = True
        unet._temp_lora_structure = config.structure()
    _set_layers_attached(unet, attached=True)
    parameters = {}
    for name, layer in _lora_layers(unet).items():
        parameters[f"{name}.lora_A.weight"] = layer.lora_A[ADAPTER_NAME].weight
        parameters[f"{name}.lora_B.weight"] = layer.lora_B[ADAPTER_NAME].weight
    return parameters


def _remove_adapter(unet: torch.nn.Module) -> None:
    _set_layers_attached(unet, attached=False)
    for key in ("_temp_lora_layers", "_temp_lora_attached", "_temp_lora_peft_config"):
        unet.__dict__.pop(key, None)
    unet._temp_lora_structure = None


@contextlib.contextmanager
def memory_applied(unet: torch.nn.Module, memory: EpisodicMemory | None) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Run the UNet as base + `memory` through peft's LoRA layers inside the block (trainable); as the exact
    base model outside it (and for None)."""
    if memory is None:
        _set_layers_attached(unet, attached=False)
        yield {}
        return
    # Outside inference mode, so that LoRA layers first made under ComfyUI's inference mode stay trainable.
    with torch.inference_mode(False), torch.no_grad():
        parameters = _ensure_adapter(unet, memory.config)
        reference = next(unet.parameters())
        for key, parameter in parameters.items():
            parameter.data = memory.lora[key].to(device=reference.device, dtype=torch.float32).clone()
    try:
        yield parameters
    finally:
        _set_layers_attached(unet, attached=False)


def foldable(unet: torch.nn.Module, memory: EpisodicMemory) -> bool:
    """Whether `memory_folded` can run `memory`: every target a plain float `nn.Linear` with its weight in
    place. Quantised layers (bitsandbytes and the like subclass `nn.Linear` with integer weights), weights
    on the meta device and weights an accelerate hook swaps in at each forward (offloading) cannot take a
    folded weight; those run the LoRA layers instead (`memory_applied`)."""
    for name, module in lora_target_modules(unet, memory.config).items():
        weight = module.weight
        if (type(module) is not torch.nn.Linear or not weight.is_floating_point() or weight.is_meta
                or hasattr(module, "_hf_hook") or weight.requires_grad and torch.is_grad_enabled()):
            return False
    return True


@contextlib.contextmanager
def memory_folded(unet: torch.nn.Module, memory: EpisodicMemory) -> Iterator[None]:
    """Run the UNet as base + `memory` inside the block at the base model's cost: each target's weight is
    replaced by W + B A, computed once, and the base weight is put back afterwards exactly
    (the very tensor, never written to). For generation only: gradients through a folded weight would not
    reach the base weights' storage. Check `foldable` first."""
    swapped = []
    _set_layers_attached(unet, attached=False)
    try:
        with torch.no_grad():
            for name, module in lora_target_modules(unet, memory.config).items():
                base = module.weight.data
                a = memory.lora[f"{name}.lora_A.weight"].to(base.device, torch.float32)
                b = memory.lora[f"{name}.lora_B.weight"].to(base.device, torch.float32)
                folded = torch.addmm(base.float(), b, a).to(base.dtype)
                module.weight.data = folded
                swapped.append((module, base))
        yield
    finally:
        for module, base in swapped:
            module.weight.data = base


def memory_for_sampling(unet: torch.nn.Module, memory: EpisodicMemory | None):
    """The context a chunk is sampled in: folded at base cost where `foldable`, else the LoRA layers."""
    if memory is not None and foldable(unet, memory):
        return memory_folded(unet, memory)
    return memory_applied(unet, memory)


@contextlib.contextmanager
def temp_lora_detached(unet: torch.nn.Module) -> Iterator[None]:
    """The plain base UNet for the block, whatever state it was in (so `save_pretrained` writes the base only)."""
    attached = unet.__dict__.get("_temp_lora_attached", False)
    _set_layers_attached(unet, attached=False)
    try:
        yield
    finally:
        _set_layers_attached(unet, attached=attached)
