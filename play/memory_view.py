"""What the page shows of a memory: a summary (kind, updates, size) and, for a panorama memory, the
panorama with the camera's trail."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..pipelines import EpisodicMemory

# The panorama is drawn at most this wide or tall in the page (whole-pixel scaling keeps it sharp).
PANORAMA_VIEW_PIXELS = 256


def memory_tensors(memory: EpisodicMemory) -> list[torch.Tensor | np.ndarray]:
    """Every array a memory holds (what its size is made of, and what it may share with the memory before)."""
    arrays: list[torch.Tensor | np.ndarray] = [*memory.lora.values(), *memory.optimizer_state.values()]
    arrays += [clip.latents for clip in memory.clips]
    if memory.panorama is not None:
        arrays += [memory.panorama.pixels, memory.panorama.known]
    if memory.poses is not None:
        arrays += list(memory.poses.tensors().values())
    return arrays


def nbytes(array: torch.Tensor | np.ndarray) -> int:
    return array.numel() * array.element_size() if isinstance(array, torch.Tensor) else array.nbytes


def memory_summary(memory: EpisodicMemory | None, preset: str) -> dict:
    """The page's memory panel: preset, kind, updates, frames seen, bytes, and what the memory holds."""
    if memory is None:
        holds = "nothing (the base model alone)" if preset == "none" else "nothing yet (it learns from the next chunk)"
        return {"preset": preset, "updates": 0, "frames_seen": 0, "bytes": 0, "holds": holds, "views": None}
    if memory.poses is not None:
        holds = memory.poses.summary()
    elif memory.panorama is not None:
        height, width = memory.panorama.known.shape
        holds = f"a panorama of {width}x{height} pixels" + (" (lost: Temp-LoRA alone from here)"
                                                          if memory.panorama.lost else "")
    else:
        holds = f"Temp-LoRA weights ({memory.num_parameters:,} parameters)"
    return {"preset": preset, "updates": memory.num_updates, "frames_seen": memory.frames_seen,
            "bytes": sum(nbytes(a) for a in memory_tensors(memory)), "holds": holds,
            "views": len(memory.poses) if memory.poses is not None else None}


def panorama_png(memory: EpisodicMemory | None) -> bytes | None:
    """The panorama (unknown places grey) with the trail of the camera's centre and its current view, as a
    PNG; None for a memory without a panorama."""
    panorama = memory.panorama if memory is not None else None
    if panorama is None:
        return None
    image = np.where(panorama.known[..., None], panorama.pixels, np.uint8(128))
    height, width = image.shape[:2]
    scale = max(1, PANORAMA_VIEW_PIXELS // max(height, width))
    image = cv2.resize(np.ascontiguousarray(image), (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
    view_h, view_w = panorama.view_size
    centres = np.array([((x + view_w / 2) * scale, (y + view_h / 2) * scale) for x, y in panorama.trail], np.int32)
    if len(centres) > 1:
        cv2.polylines(image, [centres.reshape(-1, 1, 2)], False, (255, 220, 0), max(1, scale // 2))
    x, y = panorama.position
    cv2.rectangle(image, (x * scale, y * scale), ((x + view_w) * scale - 1, (y + view_h) * scale - 1), (255, 0, 0),
                  max(1, scale // 2))
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return png.tobytes() if ok else None
