"""The video files `generate` writes: an MP4 written chunk by chunk with a journal beside it (so that a run
killed with SIGKILL can be rebuilt), the recovery of such runs, and the contact sheet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from .pipelines.atomic_files import partial_path, stale_partials


JOURNAL_MAGIC = b"slowfast-vgen frame journal 1\n"


class VideoSink:
    """An MP4 written frame by frame with OpenCV, and beside it a journal of the same frames (raw 8-bit BGR)
    flushed to disk after each chunk: an MP4 has no index until it is closed, so a run killed with SIGKILL
    leaves an unplayable file, but the next run to the same output rebuilds the video from the journal
    (`recover_killed_runs`). Refuses to start if the writer cannot open."""

    def __init__(self, path: str, fps: float, size: int, journal: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
        if not self.writer.isOpened():
            raise SystemExit(f"OpenCV could not open a video writer for {path!r} (codec mp4v).")
        self.journal_path = journal
        self.journal = open(journal, "wb")
        self.journal.write(JOURNAL_MAGIC + json.dumps({"fps": fps, "width": size, "height": size}).encode() + b"\n")
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            bgr = cv2.cvtColor((frame * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
            self.writer.write(bgr)
            self.journal.write(bgr.tobytes())
            self.frames += 1
        self.journal.flush()
        os.fsync(self.journal.fileno())

    def close(self) -> None:
        self.writer.release()
        self.journal.close()
        self.journal_path.unlink(missing_ok=True)  # the MP4 is complete: the journal is no longer needed


def recover_killed_runs(video: Path) -> list[tuple[Path, int]]:
    """Rebuild, from their journals, the videos of earlier runs to `video` that were killed (SIGKILL):
    `NAME.recovered.mp4` (then `-2`, `-3`, ...) with every whole frame written; the journal and the
    unplayable MP4 are removed. Returns the recovered videos and their frame counts."""
    recovered = []
    for journal in stale_partials(video.with_suffix(".frames")):
        with open(journal, "rb") as handle:
            if handle.readline() != JOURNAL_MAGIC:
                continue
            header = json.loads(handle.readline())
            width, height, fps = header["width"], header["height"], header["fps"]
            data = handle.read()
        frame_bytes = width * height * 3
        frames = np.frombuffer(data[:len(data) - len(data) % frame_bytes], np.uint8).reshape(-1, height, width, 3)
        index, target = 1, video.with_name(f"{video.stem}.recovered.mp4")
        while target.exists():
            index += 1
            target = video.with_name(f"{video.stem}.recovered-{index}.mp4")
        temporary = partial_path(target)
        writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for frame in frames:
            writer.write(frame)
        writer.release()
        os.replace(temporary, target)
        journal.unlink()
        recovered.append((target, len(frames)))
    return recovered


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Every frame OpenCV reads from `path`, as (F, H, W, 3) uint8 RGB; (0,) when it reads none."""
    capture, frames = cv2.VideoCapture(os.fspath(path)), []
    try:
        while (read := capture.read())[0]:
            frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return np.stack(frames) if frames else np.zeros((0,), np.uint8)


def write_contact_sheet(frames: list[np.ndarray], path: str, every: int = 4, columns: int = 8) -> None:
    """A grid of every `every`-th frame, the way the README shows an episode."""
    picked = frames[::every]
    rows = [picked[i:i + columns] for i in range(0, len(picked), columns)]
    blank = np.ones_like(picked[0])
    grid = np.concatenate([np.concatenate(row + [blank] * (columns - len(row)), 1) for row in rows], 0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    try:
        if not cv2.imwrite(str(temporary), cv2.cvtColor((grid * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)):
            raise OSError(f"OpenCV could not write the contact sheet {path} (is its extension an image format?).")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
