"""Images users hand over -> one float tensor the VAE can encode: the one place an image enters the library.

diffusers' `VaeImageProcessor.preprocess` reads NumPy images as floats in [0, 1] whatever their dtype, so a
uint8 frame (what OpenCV, imageio and ToyWorld give) is normalised as if 255 were 1 and encodes to
garbage. `frames_to_tensor` reads every common format by its own convention first:

| input | layout | values |
|---|---|---|
| `PIL.Image` | any size | modes RGB, L, 1, P, CMYK, YCbCr (converted to RGB by PIL) |
| NumPy uint8 | H×W×C, N×H×W×C or H×W | 0-255 |
| NumPy float16/32/64 | H×W×C, N×H×W×C or H×W | [0, 1], or [-1, 1] when any value is negative |
| torch uint8 (torchvision) | C×H×W or N×C×H×W | 0-255 |
| torch float | C×H×W or N×C×H×W | [0, 1], or [-1, 1] when any value is negative (diffusers' rule) |
| a list of the above | one frame each (or a batch) | each by its own rule |

C is 3 (RGB) or 1 (grey, repeated to RGB). Refused, with a message naming the argument and the fix:
other dtypes (uint16, int64, bool, ...), 16/32-bit or alpha PIL modes and 4-channel arrays (drop or
composite the alpha channel yourself: which background is right is yours to say), float values above 1
or below -1 (an image in 0-255 stored as float: divide by 255), NaN or infinity, empty images, and
frames of different sizes in one list.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import PIL.Image
import torch

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[PIL.Image.Image | np.ndarray | torch.Tensor]

ACCEPTED = (
    "a PIL image, a NumPy array (uint8 0-255 or float in [0, 1] / [-1, 1], H×W×C or N×H×W×C, C = 3 or 1), a "
    "torch tensor (float in [0, 1] / [-1, 1] or uint8, C×H×W or N×C×H×W), or a list of these"
)
PIL_RGB_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr")
PIL_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Floats a hair outside the range (resampling, fp16 rounding) are clipped, not refused.
RANGE_TOLERANCE = 1e-3


def frames_to_tensor(image: ImageInput, argument: str = "image") -> torch.Tensor:
    """Any accepted image input -> float32 frames (N, 3, H, W) in [0, 1] on the CPU, or a ValueError naming
    `argument`, what was wrong and what is accepted. Inputs are never modified."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError(f"{argument} is an empty list; give at least one frame: {ACCEPTED}.")
        parts = [_one_input(item, f"{argument}[{index}]") for index, item in enumerate(image)]
        sizes = {tuple(part.shape[-2:]) for part in parts}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
            raise ValueError(f"{argument}: the frames of one list must share one size, got {listed}.")
        return torch.cat(parts)
    return _one_input(image, argument)


def _one_input(image, argument: str) -> torch.Tensor:
    if isinstance(image, PIL.Image.Image):
        return _from_pil(image, argument)
    if isinstance(image, np.ndarray):
        return _from_array(torch.from_numpy(np.ascontiguousarray(image)), argument, channels_last=True,
                           kind="NumPy array")
    if isinstance(image, torch.Tensor):
        return _from_array(image.detach().cpu(), argument, channels_last=False, kind="torch tensor")
    hint = " (a file path: load it first, e.g. with diffusers.utils.load_image)" if isinstance(image, str) else ""
    raise ValueError(f"{argument} is a {type(image).__name__}{hint}; expected {ACCEPTED}.")


def _from_pil(image: PIL.Image.Image, argument: str) -> torch.Tensor:
    if image.mode in PIL_ALPHA_MODES:
        raise ValueError(
            f"{argument} is a PIL image with an alpha channel (mode {image.mode}); convert it first, e.g. "
            "image.convert('RGB') to drop the alpha, or paste it on a background of your choice."
        )
    if image.mode not in PIL_RGB_MODES:
        raise ValueError(
            f"{argument} is a PIL image of mode {image.mode} (16/32-bit or float pixels), whose range cannot be "
            f"told; give an 8-bit image (modes {', '.join(PIL_RGB_MODES)}) or a float array in [0, 1]."
        )
    array = np.asarray(image.convert("RGB"))
    return _from_array(torch.from_numpy(array.copy()), argument, channels_last=True, kind="PIL image")


def _from_array(values: torch.Tensor, argument: str, channels_last: bool, kind: str) -> torch.Tensor:
    layout = "H×W×C or N×H×W×C" if channels_last else "C×H×W or N×C×H×W"
    if values.dtype != torch.uint8 and not values.is_floating_point():
        raise ValueError(
            f"{argument} is a {kind} of dtype {str(values.dtype).removeprefix('torch.')}; accepted are uint8 (0-255) "
            "and float ([0, 1], or [-1, 1]). Convert it, e.g. (x / 65535).astype('float32') for 16-bit images "
            "or x.astype('uint8') for 0-255 integers."
        )
    if values.ndim == 2:  # one grey frame
        values = values.unsqueeze(-1 if channels_last else 0)
    if values.ndim == 3:
        values = values.unsqueeze(0)
    if values.ndim != 4:
        raise ValueError(f"{argument} is a {kind} of shape {tuple(values.shape)}; expected {layout} (C = 3 or 1).")
    shape = tuple(values.shape)
    if channels_last:
        values = values.permute(0, 3, 1, 2)
    channels = values.shape[1]
    if channels == 4:
        raise ValueError(
            f"{argument} is a {kind} of shape {shape}, with 4 channels (RGBA?); "
            "drop or composite the alpha channel first (which background is right is yours to say), e.g. "
            + ("x[..., :3]." if channels_last else "x[:3] (or x[:, :3] for a batch).")
        )
    if channels not in (1, 3):
        other = "C×H×W: use x.transpose(1, 2, 0)" if channels_last else "H×W×C: use x.permute(2, 0, 1)"
        raise ValueError(
            f"{argument} is a {kind} of shape {shape}, "
            f"read as {layout} with {channels} channels; expected 3 (RGB) or 1 (grey). If it is {other}."
        )
    if 0 in values.shape:
        raise ValueError(f"{argument} is an empty {kind} (shape {shape}).")
    if values.dtype == torch.uint8:
        frames = values.float() / 255
    else:
        frames = values.float()
        if not torch.isfinite(frames).all():
            raise ValueError(f"{argument} holds NaN or infinite values; an image must be finite.")
        low, high = frames.min().item(), frames.max().item()
        if high > 1 + RANGE_TOLERANCE or low < -1 - RANGE_TOLERANCE:
            hint = " It looks like 0-255 values stored as floats: divide by 255." if high > 1.5 else ""
            raise ValueError(
                f"{argument} is a float {kind} with values in [{low:.4g}, {high:.4g}]; float images must lie in "
                f"[0, 1] (or [-1, 1]).{hint}"
            )
        if low < 0:  # diffusers' rule: a float image with a negative value is in [-1, 1]
            frames = (frames + 1) / 2
        frames = frames.clamp(0, 1)
    return frames.expand(-1, 3, -1, -1).contiguous() if channels == 1 else frames.contiguous()
