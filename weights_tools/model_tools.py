"""World-model folders: import a ModelScope text-to-video folder, export a training checkpoint, cast a copy.

A world-model folder is the diffusers layout of `SlowFastVGenPipeline`: `model_index.json` (with
`_class_name` "SlowFastVGenPipeline" and `context_window`) and the unet, vae, text_encoder, tokenizer and
scheduler folders of a ModelScope text-to-video model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet3DConditionModel
from safetensors.torch import save_file

from .files import (
    WeightsFileError,
    atomic_folder,
    check_apart,
    child_path,
    copy_component,
    copy_or_link,
    is_pickle_file,
    load_weights,
    read_header,
    read_json_object,
    refuse_pickle,
)
from .fingerprint import file_fingerprint, unet_config, weight_files

PIPELINE_CLASS = "SlowFastVGenPipeline"
MODELSCOPE_CLASS = "TextToVideoSDPipeline"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder")
KNOWN_VARIANTS = ("fp16", "bf16", "fp32", "ema", "non_ema")
# Pickle weights with the safetensors name diffusers / transformers look for after conversion.
CONVERTED_NAMES = {"diffusion_pytorch_model.bin": "diffusion_pytorch_model.safetensors",
                   "pytorch_model.bin": "model.safetensors"}
DEFAULT_CONTEXT_WINDOW = 16  # ModelScope T2V was trained on 16-frame clips


def read_model_index(folder: str | os.PathLike, expected_classes: tuple[str, ...]) -> dict:
    """model_index.json of a pipeline folder, checking its class and that every component folder exists."""
    folder = Path(folder)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise WeightsFileError(f"{folder} is not a diffusers pipeline folder (no model_index.json).")
    index = read_json_object(index_file)
    if index.get("_class_name") not in expected_classes:
        raise WeightsFileError(f"{folder} holds a {index.get('_class_name')}, not one of {', '.join(expected_classes)}.")
    missing = [name for name in COMPONENTS if name not in index or not (folder / name).is_dir()]
    if missing:
        raise WeightsFileError(f"{folder} lacks the component folder(s) {', '.join(missing)}.")
    return index


def _variant_of(name: str) -> str | None:
    return next((v for v in KNOWN_VARIANTS if f".{v}." in name), None)


def plan_component(folder: Path, variant: str | None, allow_pickle: bool) -> list[tuple[Path, str]]:
    """(source file, name in the world-model folder) for one component, after checking every weight file.

    Variant weights (`*.fp16.safetensors`) are taken only when `variant` asks for them, and then under the
    plain name diffusers loads by default; shards keep their names (the index names them). Pickle weights
    are skipped where safetensors weights exist (diffusers and transformers load those and ignore them),
    and otherwise refused, or with `allow_pickle` planned for conversion to their safetensors name.
    """
    candidates = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        file_variant = next((v for v in KNOWN_VARIANTS if f".{v}." in file.name), None)
        if file_variant != variant and (file_variant is not None or _has_variant_twin(file, variant)):
            continue
        name = str(file.relative_to(folder))
        if file_variant is not None and "-of-" not in file.name:
            name = name.replace(f".{file_variant}.", ".")
        candidates.append((file, name))
    has_safetensors = any(name.endswith(".safetensors") for _, name in candidates)
    plan = []
    for file, name in candidates:
        if is_pickle_file(file) or name.endswith(".bin.index.json"):
            if has_safetensors:
                continue
            if not allow_pickle:
                refuse_pickle(file)
            converted = CONVERTED_NAMES.get(Path(name).name)
            if converted is None:
                raise WeightsFileError(f"{file}: only single-file pickle weights ({', '.join(CONVERTED_NAMES)}) "
                                       "can be converted here.")
            name = str(Path(name).with_name(converted))
        elif file.suffix == ".safetensors":
            read_header(file)  # a truncated or lying file fails here, before anything is written
        plan.append((file, name))
    return plan


def _has_variant_twin(file: Path, variant: str | None) -> bool:
    """Whether a plain file is replaced by its `variant` twin (e.g. model.safetensors by model.fp16.safetensors)."""
    if variant is None:
        return False
    stem, _, suffix = file.name.partition(".")
    return (file.parent / f"{stem}.{variant}.{suffix}").is_file()


def write_component(plan: list[tuple[Path, str]], destination: Path, link: bool, allow_pickle: bool) -> None:
    for source, name in plan:
        target = child_path(destination, name)
        if is_pickle_file(source):
            target.parent.mkdir(parents=True, exist_ok=True)
            state = load_weights(source, allow_pickle=allow_pickle)
            save_file({k: t.contiguous() for k, t in state.items()}, str(target), metadata={"format": "pt"})
        else:
            copy_or_link(source, target, link)


def import_modelscope(source: str | os.PathLike, out_dir: str | os.PathLike, link: bool = False,
                      context_window: int = DEFAULT_CONTEXT_WINDOW, variant: str | None = None,
                      allow_pickle: bool = False, force: bool = False) -> str:
    """Make a world-model folder from a diffusers-format ModelScope text-to-video folder; returns its fingerprint.

    With `link`, weight files are symlinked instead of copied (the source must then stay where it is).
    """
    source = Path(source)
    check_apart(source, out_dir, "the ModelScope folder")
    index = read_model_index(source, (MODELSCOPE_CLASS, PIPELINE_CLASS))
    if variant is not None and variant not in KNOWN_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(KNOWN_VARIANTS)}, got {variant!r}.")
    if context_window < 2:
        raise ValueError(f"context_window must be at least 2 frames, got {context_window}.")
    plans = {name: plan_component(source / name, variant, allow_pickle) for name in COMPONENTS}
    with atomic_folder(out_dir, force) as folder:
        for name, plan in plans.items():
            write_component(plan, folder / name, link, allow_pickle)
        model_index = {**index, "_class_name": PIPELINE_CLASS, "context_window": context_window}
        (folder / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True))
        fingerprint = file_fingerprint(folder).value
    return fingerprint


# --------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportResult:
    """A world model exported from a training checkpoint."""

    path: Path
    used_ema: bool
    fingerprint: str
    trained_text_encoder: bool = False


def run_config_of(checkpoint_dir: str | os.PathLike) -> tuple[Path, dict | None]:
    """The `run_config.json` the training entrypoint wrote beside its checkpoints: (its path, its contents or
    None where there is none)."""
    path = Path(checkpoint_dir).absolute().parent / "run_config.json"
    if not path.is_file():
        return path, None
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WeightsFileError(f"{path} is not valid JSON ({error}); repair or remove it.") from None


def checkpoint_base_model(checkpoint_dir: str | os.PathLike) -> Path:
    """The base world model a training run started from, as its `run_config.json` records it."""
    path, run_config = run_config_of(checkpoint_dir)
    if run_config is None:
        raise WeightsFileError(f"No {path} to say which world model {checkpoint_dir} was trained from; "
                               "pass the base model folder explicitly.")
    base = run_config.get("base_model")
    if not base:
        raise WeightsFileError(f"{path} has no 'base_model'; pass the base model folder explicitly.")
    return Path(base)


def checkpoint_world_config(checkpoint_dir: str | os.PathLike) -> dict:
    """What the training run set on the model's config about its world (its actions' reverses and motions,
    the camera's field of view), as its `run_config.json` records it; {} for runs that record none."""
    path, run_config = run_config_of(checkpoint_dir)
    world_config = (run_config or {}).get("world_config") or {}
    if not isinstance(world_config, dict):
        raise WeightsFileError(f"{path}: 'world_config' should be an object, got {type(world_config).__name__}.")
    return world_config


def accelerate_model_weights(checkpoint_dir: Path, index: int, allow_pickle: bool) -> dict | None:
    """The state dict of the `index`-th model an accelerate checkpoint holds, or None if it has no such model."""
    suffix = f"_{index}" if index else ""
    for name in (f"model{suffix}.safetensors", f"pytorch_model{suffix}.bin"):  # safe or pickle serialisation
        if (checkpoint_dir / name).is_file():
            state = load_weights(checkpoint_dir / name, allow_pickle=allow_pickle)
            # DDP and torch.compile wrappers prefix the names they save.
            return {key.removeprefix("module.").removeprefix("_orig_mod."): t for key, t in state.items()}
    return None


def checkpoint_unet_weights(checkpoint_dir: Path, use_ema: bool, allow_pickle: bool) -> tuple[dict, bool]:
    """The UNet state dict of an accelerate checkpoint (EMA weights when present and asked for)."""
    ema_folder = checkpoint_dir / "ema_unet"
    if use_ema and ema_folder.is_dir():
        files = weight_files(ema_folder)
        state = {}
        for file in set(files.values()):
            state.update(load_weights(file))
        return state, True
    state = accelerate_model_weights(checkpoint_dir, 0, allow_pickle)
    if state is not None:
        return state, False
    raise WeightsFileError(f"{checkpoint_dir} has neither ema_unet/ nor model.safetensors: not an accelerate "
                           "checkpoint of the training entrypoint.")


def checkpoint_text_encoder(checkpoint_dir: Path, base: Path, allow_pickle: bool):
    """The text encoder trained alongside the UNet (`--train-text-encoder`), or None if the run kept it frozen.

    The training entrypoint prepares the UNet first and the text encoder second, so accelerate saves the
    latter as `model_1`.
    """
    state = accelerate_model_weights(checkpoint_dir, 1, allow_pickle)
    if state is None:
        return None
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    try:
        text_encoder.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsFileError(f"{checkpoint_dir} does not hold weights of {base}'s text encoder: {error}") from None
    return text_encoder


def export_checkpoint(checkpoint_dir: str | os.PathLike, base_model_dir: str | os.PathLike | None,
                      out_dir: str | os.PathLike, use_ema: bool = True, link: bool = False,
                      allow_pickle: bool = False, force: bool = False) -> ExportResult:
    """Write the world model of a training checkpoint: its UNet (EMA weights when present and `use_ema`),
    with the other components of the base model the run started from (`base_model_dir`, or the one in
    `run_config.json` beside the checkpoint). A text encoder trained in the same run replaces the base one,
    and what the run set on the model's config about its world (`run_config.json`'s "world_config") is
    written into the new folder's model_index.json."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"No checkpoint folder {checkpoint_dir}.")
    base = Path(base_model_dir) if base_model_dir is not None else checkpoint_base_model(checkpoint_dir)
    check_apart(base, out_dir, "the base model folder")
    check_apart(checkpoint_dir, out_dir, "the checkpoint folder")
    read_model_index(base, (PIPELINE_CLASS,))
    state, used_ema = checkpoint_unet_weights(checkpoint_dir, use_ema, allow_pickle)
    unet = UNet3DConditionModel.from_config(unet_config(base))
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise WeightsFileError(f"{checkpoint_dir} does not hold weights of {base}'s UNet: {error}") from None
    if missing or unexpected:
        raise WeightsFileError(f"{checkpoint_dir} does not hold weights of {base}'s UNet: {len(missing)} missing "
                               f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}).")
    text_encoder = checkpoint_text_encoder(checkpoint_dir, base, allow_pickle)
    world_config = checkpoint_world_config(checkpoint_dir)
    trained = {"unet": unet, **({"text_encoder": text_encoder} if text_encoder is not None else {})}
    with atomic_folder(out_dir, force) as folder:
        for name in COMPONENTS:
            if name not in trained:
                copy_component(base / name, folder / name, link)
        index = json.loads((base / "model_index.json").read_text())
        index.pop("_name_or_path", None)  # where the base model lay on the trainer's machine
        index.update(world_config)
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for name, module in trained.items():
            module.save_pretrained(folder / name)
        fingerprint = file_fingerprint(folder).value
    return ExportResult(path=Path(out_dir), used_ema=used_ema, fingerprint=fingerprint,
                        trained_text_encoder=text_encoder is not None)


# --------------------------------------------------------------------------------------------- cast / prune


@dataclass(frozen=True)
class CastResult:
    """Sizes and fingerprints of a world model and its cast copy."""

    path: Path
    bytes_before: int
    bytes_after: int
    fingerprint_before: str
    fingerprint_after: str


def cast_world_model(source: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype,
                     keep_fp32: tuple[str, ...] = (), force: bool = False) -> CastResult:
    """A copy of a world model with its floating-point weights in `dtype`, one weight file at a time.

    The copy holds only what loading needs: pickle files and anything outside the five component folders
    and `model_index.json` are left behind (that is the "prune"). Components named in `keep_fp32` (say the
    VAE, whose fp16 decode can overflow) are copied unchanged.
    """
    source = Path(source)
    check_apart(source, out_dir, "the model folder")
    index = read_model_index(source, (PIPELINE_CLASS,))
    plans = {name: plan_component(source / name, None, allow_pickle=False) for name in COMPONENTS}
    bytes_before = sum(f.stat().st_size for f in source.rglob("*") if f.is_file())
    with atomic_folder(out_dir, force) as folder:
        for name, plan in plans.items():
            if name not in WEIGHTED_COMPONENTS or name in keep_fp32:
                for file, _ in plan:
                    if name in WEIGHTED_COMPONENTS and file.suffix == ".safetensors":
                        _refuse_non_finite(file, load_weights(file))
                write_component(plan, folder / name, link=False, allow_pickle=False)
                continue
            for file, relative in plan:
                target = child_path(folder / name, relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                if file.suffix == ".safetensors":
                    header = read_header(file)
                    state = load_weights(file)
                    _refuse_non_finite(file, state)
                    save_file({k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()},
                              str(target), metadata=header.metadata)
                elif file.name == "config.json":
                    target.write_text(json.dumps(_with_dtype(json.loads(file.read_text()), dtype), indent=2))
                elif file.name.endswith(".index.json"):
                    target.write_text(file.read_text())  # rewritten below, once the shards are
                else:
                    copy_or_link(file, target, link=False)
            _update_index_sizes(folder / name)
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        bytes_after = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        fingerprint_after = file_fingerprint(folder).value
    return CastResult(path=Path(out_dir), bytes_before=bytes_before, bytes_after=bytes_after,
                      fingerprint_before=file_fingerprint(source).value, fingerprint_after=fingerprint_after)


def _refuse_non_finite(file: Path, state: dict[str, torch.Tensor]) -> None:
    """A damaged model is not copied: generate and fuse refuse it too."""
    from ..pipelines.memory_file import first_non_finite

    damaged = first_non_finite(state)
    if damaged is not None:
        raise WeightsFileError(f"{file}: tensor {damaged} holds NaN or infinite values; the model is damaged, so it is "
                               "not copied.")


def _with_dtype(config: dict, dtype: torch.dtype) -> dict:
    """transformers configs record the weights' dtype; keep it true for the cast copy."""
    name = str(dtype).removeprefix("torch.")
    return {**config, **{key: name for key in ("torch_dtype", "dtype") if key in config}}


def _update_index_sizes(component: Path) -> None:
    for index_file in component.glob("*.index.json"):
        index = json.loads(index_file.read_text())
        shards = set(index["weight_map"].values())
        index.setdefault("metadata", {})["total_size"] = sum((component / s).stat().st_size for s in shards)
        index_file.write_text(json.dumps(index, indent=2))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two videos with values in [0, 1] (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def cast_quality(source: str | os.PathLike, cast: str | os.PathLike, dtype: torch.dtype | None = None,
                 device: str = "cpu", num_inference_steps: int = 10, seed: int = 0) -> float:
    """PSNR (dB) between one ToyWorld chunk generated by a world model and by its cast copy.

    Both run from the same ToyWorld start frame, action and noise. The copy runs in `dtype` when given
    (on a GPU); otherwise in float32 (the way to run on a CPU), so that the figure measures the rounding
    of the weights alone.
    """
    from ..data.toyworld import ToyWorld
    from ..pipelines import SlowFastVGenPipeline, dtype_argument

    outputs = []
    for folder, torch_dtype in ((source, None), (cast, dtype)):
        pipe = SlowFastVGenPipeline.from_pretrained(folder, **dtype_argument(torch_dtype)).to(device)
        pipe.set_progress_bar_config(disable=True)
        frame = ToyWorld(seed=seed, view_size=pipe.native_size).start_frame()
        generator = torch.Generator().manual_seed(seed)
        outputs.append(pipe("move left", image=frame.astype(np.float32) / 255.0, generator=generator,
                            num_inference_steps=num_inference_steps, output_type="np").frames)
    return psnr(outputs[0], outputs[1])
