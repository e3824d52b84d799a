"""The metrics of `slowfast-vgen evaluate`, each from the library the field uses for it.

- PSNR on a pixel mask (the revisited pixels), capped at `PSNR_CAP_DB` for an exact copy.
- SSIM: scikit-image's `structural_similarity` (Gaussian window, sigma 1.5, as Wang et al. 2004), its
  map averaged over the same mask.
- SCuts: PySceneDetect's `ContentDetector` (the paper's tool), run on the frames in memory; its default
  threshold 27 and minimum scene length 15 frames unless told otherwise.
- SRC (paper 4.1): cosine similarity of ResNet-18 features of a revisit and of the first visit of its
  place. ResNet-18 is transformers' `ResNetModel`; its weights come from a path the user gives (nothing
  is downloaded), see `load_resnet18`.
- Drift per chunk: shift-consistency (each frame against the previous one moved by the true camera
  motion, on their overlap), colour and sharpness (variance of OpenCV's Laplacian) against the truth.

Frames are float arrays in [0, 1], (frames, H, W, 3).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

PSNR_CAP_DB = 100.0
SCUTS_THRESHOLD = 27.0
SCUTS_MIN_SCENE_FRAMES = 15
# ImageNet statistics, with which torchvision's and microsoft/resnet-18's weights were trained.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNET18_HELP = (
    "SRC needs ResNet-18 weights, and nothing is downloaded here. Give --resnet18 PATH: a transformers folder "
    "(microsoft/resnet-18, e.g. `huggingface-cli download microsoft/resnet-18 --local-dir resnet-18` on a "
    "machine with network), a .safetensors file of it or of torchvision's resnet18, or torchvision's "
    "resnet18-f37072fd.pth (read with weights_only=True)."
)


def masked_psnr(frames: np.ndarray, reference: np.ndarray, masks: np.ndarray | None = None) -> float:
    """PSNR (dB) over the pixels where `masks` (frames, H, W) is true; NaN when there are none."""
    error = ((np.asarray(frames, np.float64) - np.asarray(reference, np.float64)) ** 2).mean(-1)
    error = error[masks] if masks is not None else error.ravel()
    if not error.size:
        return float("nan")
    mse = error.mean()
    return PSNR_CAP_DB if mse <= 10 ** (-PSNR_CAP_DB / 10) else float(10 * np.log10(1.0 / mse))


def masked_ssim(frames: np.ndarray, reference: np.ndarray, masks: np.ndarray | None = None) -> float:
    """Mean SSIM (scikit-image, Gaussian sigma 1.5, data range 1) over the masked pixels; NaN when none."""
    from skimage.metrics import structural_similarity

    values = []
    for index, (a, b) in enumerate(zip(frames, reference)):
        mask = masks[index] if masks is not None else np.ones(a.shape[:2], bool)
        if not mask.any():
            continue
        _, full = structural_similarity(a.astype(np.float64), b.astype(np.float64), channel_axis=-1, data_range=1.0,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
        values.append(full.mean(-1)[mask])
    return float(np.concatenate(values).mean()) if values else float("nan")


def scene_cuts(frames: np.ndarray, threshold: float = SCUTS_THRESHOLD,
               min_scene_frames: int = SCUTS_MIN_SCENE_FRAMES, fps: float = 8.0) -> int:
    """Scene cuts PySceneDetect's ContentDetector finds in the frames (the paper's SCuts)."""
    from scenedetect import ContentDetector, FrameTimecode

    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_frames)
    cuts = []
    timecode = None
    for index, frame in enumerate(frames):
        timecode = FrameTimecode(index, fps=fps)
        bgr = cv2.cvtColor((np.clip(frame, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
        cuts += detector.process_frame(timecode, bgr)
    if timecode is not None:
        cuts += detector.post_process(timecode)
    return len(cuts)


def shift_consistency(frames: np.ndarray, positions: list[tuple[int, int]]) -> np.ndarray:
    """PSNR of each frame (from the second) against the previous frame moved by the true camera motion, on
    their overlap: a world that stays itself from frame to frame scores as high as the VAE allows."""
    size = frames.shape[1]
    scores = []
    for (a, (ax, ay)), (b, (bx, by)) in zip(zip(frames, positions), zip(frames[1:], positions[1:])):
        dx, dy = bx - ax, by - ay
        if abs(dx) >= size or abs(dy) >= size:
            scores.append(float("nan"))
            continue
        # The world pixel at b[y, x] sits at a[y + dy, x + dx].
        b_part = b[max(-dy, 0):size - max(dy, 0), max(-dx, 0):size - max(dx, 0)]
        a_part = a[max(dy, 0):size - max(-dy, 0), max(dx, 0):size - max(-dx, 0)]
        scores.append(masked_psnr(b_part[None], a_part[None]))
    return np.array(scores)


def sharpness(frames: np.ndarray) -> float:
    """Mean variance of OpenCV's Laplacian of the grey frames (blur lowers it)."""
    grey = [cv2.cvtColor(f.astype(np.float32), cv2.COLOR_RGB2GRAY) for f in frames]
    return float(np.mean([cv2.Laplacian(g, cv2.CV_32F).var() for g in grey]))


def colour_shift(frames: np.ndarray, truth: np.ndarray) -> float:
    """Distance between the mean RGB colours of two sets of frames (0-1 scale)."""
    return float(np.linalg.norm(frames.reshape(-1, 3).mean(0) - truth.reshape(-1, 3).mean(0)))


# ---------------------------------------------------------------------------------------------- SRC


def resnet18(weights: dict[str, torch.Tensor] | None = None):
    """transformers' ResNet-18 (basic blocks, 2-2-2-2), with `weights` in its own layout, or random ones."""
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                          embedding_size=64)
    model = ResNetModel(config)
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        unexpected = [k for k in unexpected if not k.startswith(("classifier.", "fc."))]  # ImageNet heads
        if missing or unexpected:
            raise ValueError(f"These are not ResNet-18 weights: {len(missing)} tensors missing (e.g. "
                             f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}). {RESNET18_HELP}")
    return model.eval()


def torchvision_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision resnet18 keys (conv1, bn1, layerN.B.convK / bnK / downsample) -> transformers' ResNet keys."""
    def norm(prefix: str, target: str) -> dict[str, str]:
        return {f"{prefix}.{p}": f"{target}.{p}" for p in ("weight", "bias", "running_mean", "running_var",
                                                             "num_batches_tracked")}

    names = {"conv1.weight": "embedder.embedder.convolution.weight", **norm("bn1", "embedder.embedder.normalization")}
    for stage in range(4):
        for block in range(2):
            source, target = f"layer{stage + 1}.{block}", f"encoder.stages.{stage}.layers.{block}"
            for conv in (1, 2):
                names[f"{source}.conv{conv}.weight"] = f"{target}.layer.{conv - 1}.convolution.weight"
                names.update(norm(f"{source}.bn{conv}", f"{target}.layer.{conv - 1}.normalization"))
            names[f"{source}.downsample.0.weight"] = f"{target}.shortcut.convolution.weight"
            names.update(norm(f"{source}.downsample.1", f"{target}.shortcut.normalization"))
    return {names.get(key, key): value for key, value in state.items()}


def load_resnet18(path: str | os.PathLike):
    """ResNet-18 for SRC from a transformers folder, a .safetensors file (either layout) or torchvision's .pth
    (`torch.load(weights_only=True)`: no pickle code runs)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--resnet18 {str(path)!r} does not exist. {RESNET18_HELP}")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"--resnet18 {str(path)!r} holds no .safetensors weights. {RESNET18_HELP}")
        path = files[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif path.suffix in (".pth", ".pt", ".bin"):
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"--resnet18 {str(path)!r}: expected a folder, .safetensors or .pth. {RESNET18_HELP}")
    state = {key.removeprefix("resnet."): value for key, value in state.items()}  # ResNetForImageClassification
    if "conv1.weight" in state:
        state = torchvision_to_transformers(state)
    return resnet18(state)


@torch.no_grad()
def resnet_features(model, frames: np.ndarray, batch: int = 32) -> np.ndarray:
    """Pooled ResNet features (frames, 512) of [0, 1] frames, ImageNet-normalised at 224 x 224."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(frames), batch):
        pixels = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch])).float().permute(0, 3, 1, 2)
        pixels = torch.nn.functional.interpolate(pixels, size=(224, 224), mode="bilinear", antialias=True,
                                                 align_corners=False)
        out.append(model(pixel_values=(pixels - mean) / std).pooler_output.flatten(1))
    return torch.cat(out).numpy()


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) feature arrays."""
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
