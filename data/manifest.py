"""A folder of the user's own videos as training data: a JSON Lines manifest read with OpenCV.

Each line is one clip: `{"video": "clips/a.mp4", "start": 0, "end": 24, "action": "open the drawer",
"context": 8}`. Frames `start` to `end` (exclusive) form the clip; its first `context` frames (default 1,
an image start) condition and the rest are generated. Paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from .toyworld import Sample


class BadRecordError(ValueError):
    """A manifest record that cannot be used; the message names the file and line."""


@dataclass
class ManifestRecord:
    """One clip of the manifest, with where it was declared."""

    video: str
    start: int
    end: int
    action: str
    context: int
    line: int


def read_manifest(path: str, on_bad_record: str = "skip") -> list[ManifestRecord]:
    """Parse and validate every record; bad ones are skipped with a warning or raise, as asked."""
    if on_bad_record not in ("skip", "fatal"):
        raise ValueError(f"on_bad_record must be 'skip' or 'fatal', got {on_bad_record!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No manifest at {path!r}: expected a JSON Lines file, one clip per line.")
    root = os.path.dirname(os.path.abspath(path))
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(_parse_record(line, root, f"{path}:{number}", number))
            except BadRecordError as error:
                if on_bad_record == "fatal":
                    raise
                warnings.warn(f"skipped: {error}", stacklevel=2)
    if not records:
        raise ValueError(f"{path} has no usable record.")
    return records


def _parse_record(line: str, root: str, where: str, number: int) -> ManifestRecord:
    try:
        fields = json.loads(line)
        video, start, end = fields["video"], int(fields["start"]), int(fields["end"])
        action, context = str(fields.get("action", "")), int(fields.get("context", 1))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise BadRecordError(f"{where}: not a valid record ({error!r}); need video, start, end, action.") from None
    if not action.strip():
        raise BadRecordError(f"{where}: empty action text.")
    full_path = video if os.path.isabs(video) else os.path.join(root, video)
    if not os.path.isfile(full_path):
        raise BadRecordError(f"{where}: video file {full_path!r} does not exist.")
    capture = cv2.VideoCapture(full_path)
    try:
        if not capture.isOpened():
            raise BadRecordError(f"{where}: OpenCV cannot read {full_path!r}.")
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if not 0 <= start < end <= frame_count:
        raise BadRecordError(f"{where}: frames {start}..{end} are out of range for {full_path!r} ({frame_count} frames).")
    if not 1 <= context < end - start:
        raise BadRecordError(f"{where}: context={context} must leave at least one frame of the {end - start} to generate.")
    return ManifestRecord(full_path, start, end, action.strip(), context, number)


def load_clip(record: ManifestRecord, size: int) -> Sample:
    """Read a record's frames (RGB, centre-cropped and resized to `size`) as a training sample."""
    capture = cv2.VideoCapture(record.video)
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, record.start)
        frames = []
        for _ in range(record.end - record.start):
            ok, frame = capture.read()
            if not ok:
                raise BadRecordError(f"line {record.line}: {record.video!r} ended before frame {record.end}.")
            frames.append(_square(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), size))
    finally:
        capture.release()
    clip = np.stack(frames)
    return Sample(context=clip[:record.context], action=record.action, target=clip[record.context:])


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return cv2.resize(frame[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)
