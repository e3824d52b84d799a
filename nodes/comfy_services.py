"""ComfyUI's services when the pack runs inside ComfyUI, plain-Python stand-ins when it does not.

Every use of `comfy.*` and `folder_paths` in the pack goes through this module, so that the nodes
import and run without ComfyUI (tests, diffusers users) and follow ComfyUI's settings (`--cpu`,
`--lowvram`, `--output-directory`, extra_model_paths.yaml, cancel, progress) when it is there.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from tqdm.auto import tqdm

try:  # ComfyUI puts these on sys.path before it imports custom nodes.
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    model_management = comfy_utils = folder_paths = None

IN_COMFYUI = folder_paths is not None

try:  # ComfyUI's V3 node schema, in the ComfyUI versions that have it
    from comfy_api.latest import io

    V3_SCHEMA = IN_COMFYUI and hasattr(io, "ComfyNode")
except ImportError:
    V3_SCHEMA = False

WORLD_MODELS_FOLDER = "world_models"
MEMORIES_FOLDER = "temp_lora_memories"
INVERSE_DYNAMICS_FOLDER = "inverse_dynamics"
MEMORY_EXTENSIONS = {".safetensors"}

# ---------------------------------------------------------------------------------------------------
# Cancel


if model_management is not None:
    Interrupted = model_management.InterruptProcessingException
else:

    class Interrupted(Exception):
        """The run was cancelled (plain-Python stand-in for ComfyUI's InterruptProcessingException)."""


_interrupt_requested = threading.Event()


def request_interrupt() -> None:
    """Ask the running node to stop at its next denoising step (ComfyUI's Cancel button, in plain Python)."""
    if model_management is not None:
        model_management.interrupt_current_processing(True)
    else:
        _interrupt_requested.set()


def throw_if_interrupted() -> None:
    """Raise `Interrupted` if the user cancelled; called once per denoising step."""
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()
    elif _interrupt_requested.is_set():
        _interrupt_requested.clear()
        raise Interrupted("Cancelled by the user.")


# ---------------------------------------------------------------------------------------------------
# Progress and previews

ProgressHook = Callable[[int, int, "Image.Image | None"], None]
_progress_hook: ProgressHook | None = None
# A preview shows at most this many frames, as a grid: a long strip would come out a few pixels high once
# ComfyUI fits it into --preview-size.
PREVIEW_MAX_FRAMES = 9


def set_progress_hook(hook: ProgressHook | None) -> None:
    """Plain Python: call `hook(current, total, preview)` on every progress update (what ComfyUI's server
    does; `preview` is a PIL image or None)."""
    global _progress_hook
    _progress_hook = hook


def preview_size() -> int:
    """ComfyUI's `--preview-size` (the longest side of a preview it sends), 512 outside it."""
    if IN_COMFYUI:
        from comfy.cli_args import args

        return args.preview_size
    return 512


def preview_frames(count: int, limit: int = PREVIEW_MAX_FRAMES) -> list[int]:
    """Which of `count` frames a preview shows: all of up to `limit`, else `limit` evenly spaced ones
    from the first to the last."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def preview_image(frames: torch.Tensor, size: int | None = None) -> Image.Image:
    """Frames F,H,W,3 in [0, 1] as a near-square grid (2x2 for a 4-frame chunk, at most
    `PREVIEW_MAX_FRAMES` frames), left to right then top to bottom, with white lines between them,
    enlarged (nearest, by a whole factor) to fill `size` (ComfyUI's --preview-size) without exceeding it."""
    size = size or preview_size()
    frames = frames[..., :3].clamp(0, 1)[preview_frames(len(frames))]
    count, height, width = frames.shape[:3]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    line = max(1, min(height, width) // 32)
    grid = frames.new_ones(rows * height + (rows - 1) * line, columns * width + (columns - 1) * line, 3)
    for index, frame in enumerate(frames):
        top, left = (index // columns) * (height + line), (index % columns) * (width + line)
        grid[top:top + height, left:left + width] = frame
    pixels = (grid * 255).round().to(torch.uint8).cpu().numpy()
    image = Image.fromarray(pixels)
    scale = max(1, size // max(image.width, image.height))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def temp_directory() -> str:
    return folder_paths.get_temp_directory() if IN_COMFYUI else os.path.join(os.getcwd(), "temp")


def text_card(lines: list[str], prefix: str) -> dict:
    """`lines` drawn on a small image in ComfyUI's temp folder, as an output node's ui "images" entry:
    what the node shows after it ran (ComfyUI shows an output node's images, not its text)."""
    from PIL import ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow before 10.1: the small bitmap font
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.textbbox((0, 0), line, font=font) for line in lines]
    line_height = max(box[3] for box in boxes) + 8
    card = Image.new("RGB", (max(box[2] for box in boxes) + 24, line_height * len(lines) + 16), (32, 32, 32))
    draw = ImageDraw.Draw(card)
    for index, line in enumerate(lines):
        draw.text((12, 8 + index * line_height), line, fill=(230, 230, 230), font=font)
    folder = temp_directory()
    os.makedirs(folder, exist_ok=True)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
    card.save(os.path.join(folder, name))
    return {"filename": name, "subfolder": "", "type": "temp"}


class ProgressBar:
    """`comfy.utils.ProgressBar` inside ComfyUI (the bar on the node, and its preview), a tqdm bar outside it."""

    def __init__(self, total: int):
        self.total, self.current = total, 0
        self._comfy_bar = comfy_utils.ProgressBar(total) if comfy_utils is not None else None
        self._tqdm = None if self._comfy_bar is not None else tqdm(total=total, leave=False)

    def update(self, value: int = 1, preview: Image.Image | None = None) -> None:
        """Advance by `value`; `preview` (a PIL image) is shown on the node, as core samplers show theirs."""
        self.current = min(self.current + value, self.total)
        if self._comfy_bar is not None:
            # ComfyUI's hook also raises if the user cancelled, at every update.
            self._comfy_bar.update_absolute(self.current, self.total,
                                            None if preview is None else ("JPEG", preview, preview_size()))
            return
        self._tqdm.update(value)
        if self.current >= self.total:
            self._tqdm.close()
        if _progress_hook is not None:
            _progress_hook(self.current, self.total, preview)


# ---------------------------------------------------------------------------------------------------
# Devices


def compute_device() -> torch.device:
    """Where models run: ComfyUI's device (so `--cpu` is respected), else the best one available."""
    if model_management is not None:
        return model_management.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def offload_device() -> torch.device:
    """Where models wait between runs: the CPU in ComfyUI unless `--highvram`; outside ComfyUI they stay put."""
    if model_management is not None:
        return model_management.unet_offload_device()
    return compute_device()


def model_patcher(module: torch.nn.Module, load_device: torch.device, offload_device: torch.device) -> Any:
    """ComfyUI's `ModelPatcher` around `module`, through which its model manager loads, offloads and evicts
    it with its other models; None outside ComfyUI."""
    if not IN_COMFYUI:
        return None
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)


def load_models(patchers: list, memory_required: int = 0) -> None:
    """Have ComfyUI load `patchers` onto their device, unloading its other models as needed.

    Whole models: the pack's layers are plain torch ones, which ComfyUI cannot run partly offloaded."""
    model_management.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)


# ---------------------------------------------------------------------------------------------------
# Folders


def _models_dir() -> str:
    return folder_paths.models_dir if IN_COMFYUI else os.path.join(os.getcwd(), "models")


def register_model_folders() -> None:
    """Register `world_models`, `temp_lora_memories` and `inverse_dynamics` with folder_paths, unless the
    user already did (extra_model_paths.yaml is read before custom nodes are imported), and create them in
    ComfyUI's models folder, so that a user sees where to put files."""
    if not IN_COMFYUI:
        return
    for name, extensions in ((WORLD_MODELS_FOLDER, set()), (MEMORIES_FOLDER, MEMORY_EXTENSIONS),
                             (INVERSE_DYNAMICS_FOLDER, set())):
        if name not in folder_paths.folder_names_and_paths:
            path = os.path.join(_models_dir(), name)
            folder_paths.folder_names_and_paths[name] = ([path], extensions)
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as error:  # a read-only install: the folder can still be made by hand
                logging.getLogger(__name__).warning("SlowFast-VGen: could not create %s: %s", path, error)


def model_folders(name: str) -> list[str]:
    """Every folder registered under a model folder name (outside ComfyUI: ./models/<name>)."""
    if IN_COMFYUI:
        return folder_paths.get_folder_paths(name)
    return [os.path.join(_models_dir(), name)]


def model_folder_names(name: str, marker: str) -> list[str]:
    """Every folder holding a `marker` file (e.g. model_index.json) under the folders registered as `name`,
    relative to them, sorted."""
    names = []
    for base in model_folders(name):
        for root, _dirs, files in os.walk(base, followlinks=True):
            if marker in files:
                names.append(os.path.relpath(root, base))
    return sorted(set(names))


def output_directory() -> str:
    return folder_paths.get_output_directory() if IN_COMFYUI else os.path.join(os.getcwd(), "output")


def files_under(folder: str, extensions: set[str]) -> list[str]:
    """Files with one of `extensions` anywhere under `folder`, as sorted paths relative to it."""
    found = []
    for root, _dirs, files in os.walk(folder, followlinks=True):
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files if Path(f).suffix.lower() in extensions]
    return sorted(found)


def model_files(name: str, extensions: set[str]) -> list[str]:
    """Files of a model folder (all its registered paths), relative to their folder, like folder_paths lists them."""
    if IN_COMFYUI:
        return [f for f in folder_paths.get_filename_list(name) if Path(f).suffix.lower() in extensions]
    return files_under(model_folders(name)[0], extensions)


def _is_absolute(name: str) -> bool:
    return os.path.isabs(name) or re.match(r"^[A-Za-z]:", name) is not None or name[:1] in ("\\", "/")


def _climbs(name: str) -> bool:
    return ".." in re.split(r"[\\/]+", name)


def is_plain_relative(filename: str) -> bool:
    """A name that stays inside the folder it is joined to: not absolute, no drive, no `..` part."""
    return bool(filename) and not _is_absolute(filename) and not _climbs(filename)


def file_inside(folder: str, filename: str) -> str | None:
    """`folder/filename` if it is a file that really lies inside `folder` (symlinks resolved), else None."""
    if not is_plain_relative(filename):
        return None
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, filename))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    return path


def model_file_path(name: str, filename: str) -> str | None:
    """Full path of a file listed by `model_files`, or None (for names that would leave the folder too).

    Inside ComfyUI, `folder_paths` decides, as for core's loaders (so symlinked model folders keep working)."""
    if not is_plain_relative(filename):
        return None
    if IN_COMFYUI:
        return folder_paths.get_full_path(name, filename)
    return file_inside(model_folders(name)[0], filename)


OUTPUT_ANNOTATION = " [output]"


def output_file_path(annotated_name: str) -> str | None:
    """The path of a 'relative/name [output]' file, ComfyUI's notation for files of the output folder; None
    unless it is a file inside the output folder (`..`, absolute paths and symlinks out of it refused)."""
    return file_inside(output_directory(), annotated_name.removesuffix(OUTPUT_ANNOTATION))


def check_relative_name(filename_prefix: str) -> None:
    """Refuse a save name that is absolute or climbs out of the output folder, before anything is written."""
    if not filename_prefix.strip():
        raise ValueError("filename_prefix is empty: give a name such as 'slowfast_vgen/memory'.")
    if _is_absolute(filename_prefix):
        raise ValueError(
            f"filename_prefix {filename_prefix!r} is an absolute path; files are saved inside ComfyUI's output "
            "folder only. Use a relative name such as 'slowfast_vgen/memory'."
        )
    if _climbs(filename_prefix):
        raise ValueError(
            f"filename_prefix {filename_prefix!r} contains '..'; files are saved inside ComfyUI's output folder "
            "only. Remove the '..' parts, e.g. 'slowfast_vgen/memory'."
        )


def save_path(filename_prefix: str, extension: str, width: int = 0, height: int = 0) -> tuple[str, str, str]:
    """(full path, file name, subfolder) of the next numbered file for `filename_prefix` in the output folder.

    Inside ComfyUI this is `folder_paths.get_save_image_path` (the %date% variables, the counter and its
    own refusal to leave the output folder); outside it, the same `<prefix>_<counter:05>_` naming.
    """
    check_relative_name(filename_prefix)
    output_dir = output_directory()
    if IN_COMFYUI:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output_dir, width, height
        )
    else:
        subfolder, filename = os.path.split(os.path.normpath(filename_prefix))
        folder = os.path.join(output_dir, subfolder)
        os.makedirs(folder, exist_ok=True)
        pattern = re.compile(re.escape(filename) + r"_(\d+)_")
        numbers = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))]
        counter = max(numbers, default=0) + 1
    file = f"{filename}_{counter:05}_{extension}"
    return os.path.join(folder, file), file, subfolder
