"""Every metric of one generated episode against its truth and its own first sightings.

The scores read an episode and its revisit map through their methods only: `episode.num_chunks`,
`episode.chunk_slice(i)`, `revisits.masks(chunk)` (the pixels only memory can bring back) and
`revisits.first_sightings(video)`, so that any world whose episodes have them is scored the same way.
What needs a camera panning over a flat world, in world pixels (shift-consistency and SRC's frame pairs),
is in one place below, `pan_positions`, and is left out (NaN) for other cameras.

- revisit PSNR and SSIM: the revisited pixels against their first sighting in the same video (the pixel
  SRC) and against the truth; per chunk and pooled over the episode;
- SRC (with a ResNet-18): cosine similarity of ResNet-18 features of each revisit frame and the earliest
  frame before its context that saw most of the same place (at least half of the view);
- SCuts (PySceneDetect) and drift per chunk: shift-consistency, full-frame PSNR against the truth, colour
  shift and sharpness against the truth's.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..data.episodes import EpisodePath
from . import metrics

SRC_MIN_OVERLAP = 0.5  # a frame counts for SRC when an earlier frame, before its context, saw half its view


def score_video(episode, video: np.ndarray, truth: np.ndarray, revisits, resnet=None,
                scuts_threshold: float = metrics.SCUTS_THRESHOLD) -> dict:
    """Every metric of one generated episode (`video`: the episode's frames, start frame first)."""
    first = revisits.first_sightings(video)
    chunk_frames, chunk_masks = [], []
    result: dict = {"revisit_pixels": [], "revisit_psnr_chunks": [], "psnr_truth_chunks": [],
                    "shift_consistency_chunks": [], "colour_shift_chunks": [], "sharpness_chunks": [],
                    "truth_sharpness_chunks": []}
    shift = shift_consistency(episode, video)  # frame i against frame i - 1
    for index in range(episode.num_chunks):
        frames = episode.chunk_slice(index)
        masks = revisits.masks(index)
        chunk_frames.append(frames)
        chunk_masks.append(masks)
        result["revisit_pixels"].append(int(masks.sum()))
        result["revisit_psnr_chunks"].append(metrics.masked_psnr(video[frames], first[frames], masks))
        result["psnr_truth_chunks"].append(metrics.masked_psnr(video[frames], truth[frames]))
        result["shift_consistency_chunks"].append(_nanmean(shift[frames.start - 1:frames.stop - 1]))
        result["colour_shift_chunks"].append(metrics.colour_shift(video[frames], truth[frames]))
        result["sharpness_chunks"].append(metrics.sharpness(video[frames]))
        result["truth_sharpness_chunks"].append(metrics.sharpness(truth[frames]))
    all_frames = np.concatenate([np.arange(s.start, s.stop) for s in chunk_frames])
    all_masks = np.concatenate(chunk_masks)
    result["revisit_psnr"] = metrics.masked_psnr(video[all_frames], first[all_frames], all_masks)
    result["revisit_psnr_truth"] = metrics.masked_psnr(video[all_frames], truth[all_frames], all_masks)
    result["revisit_ssim"] = metrics.masked_ssim(video[all_frames], first[all_frames], all_masks)
    result["revisit_ssim_truth"] = metrics.masked_ssim(video[all_frames], truth[all_frames], all_masks)
    result["scuts"] = metrics.scene_cuts(video, threshold=scuts_threshold)
    result["scuts_per_100_frames"] = 100.0 * result["scuts"] / len(video)
    if resnet is not None:
        result["src"] = scene_revisit_consistency(resnet, video, src_pairs(episode, revisits))
    return result


def scene_revisit_consistency(resnet, video: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """SRC: mean cosine similarity of the ResNet features of each (revisit, first visit) frame pair."""
    if not pairs:
        return float("nan")
    later, earlier = (np.array(p) for p in zip(*pairs))
    features = metrics.resnet_features(resnet, np.concatenate([video[later], video[earlier]]))
    return float(metrics.cosine_similarity(features[:len(later)], features[len(later):]).mean())


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():  # a chunk without a score (a camera that does not pan) is NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


# ---------------------------------------------------------------------------------------------- a panning camera


def pan_positions(episode) -> list[tuple[int, int]] | None:
    """The camera's top-left corner in world pixels at every frame, for a camera panning over a flat world
    (ToyWorld's `EpisodePath`); None for any other camera, whose frames do not shift into each other."""
    return list(episode.positions) if isinstance(episode, EpisodePath) else None


def shift_consistency(episode, video: np.ndarray) -> np.ndarray:
    """Per frame from the second: its PSNR against the previous frame moved by the true camera motion
    (`metrics.shift_consistency`); NaN for a camera that does not pan."""
    positions = pan_positions(episode)
    if positions is None:
        return np.full(len(video) - 1, np.nan)
    return metrics.shift_consistency(video, positions)


def src_pairs(episode, revisits) -> list[tuple[int, int]]:
    """(revisit, first visit) frame pairs for SRC: each frame with the earliest frame before its chunk's context
    that shows most of the same place, when that is at least `SRC_MIN_OVERLAP` of the view (a panning
    camera's views overlap by their offset in world pixels); none for a camera that does not pan."""
    positions = pan_positions(episode)
    if positions is None:
        return []
    size, pairs = episode.world.view_size, []
    for chunk in range(episode.num_chunks):
        frames, context = episode.chunk_slice(chunk), revisits.context_range(chunk)
        for index in range(frames.start, frames.stop):
            x, y = positions[index]
            overlaps = [max(0, size - abs(px - x)) * max(0, size - abs(py - y)) for px, py in positions[:context.start]]
            if overlaps and max(overlaps) >= SRC_MIN_OVERLAP * size * size:
                pairs.append((index, int(np.argmax(overlaps))))
    return pairs
