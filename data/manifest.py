"""A folder of the user's own videos as training data: a JSON Lines manifest read with OpenCV.

Each line is one clip: `{"video": "clips/a.mp4", "start": 0, "end": 24, "action": "open the drawer",
"context": 8}`. Frames `start` to `end` (exclusive) form the clip; its first `context` frames (default 1,
an image start) condition and the rest are generated. Paths are relative to the manifest's folder.

For the slow-fast stage, consecutive clips of one video form an episode (`manifest_episodes`): lines in a
row whose video is the same and whose `start` is the previous line's `end`. An optional `"episode": "name"`
groups clips explicitly; the clips of one name must then follow each other in one video, without gap or
overlap, or the manifest is refused.
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
    episode: str | None = None


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
        episode = fields.get("episode")
        if episode is not None and (not isinstance(episode, str) or not episode.strip()):
            raise ValueError(f"episode must be a non-empty name, got {episode!r}")
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
    return ManifestRecord(full_path, start, end, action.strip(), context, number, episode and episode.strip())


def load_clip(record: ManifestRecord, size: int) -> Sample:
    """Read a record's frames (RGB, centre-cropped and resized to `size`) as a training sample."""
    clip = read_frames(record.video, record.start, record.end, size, f"line {record.line}")
    return Sample(context=clip[:record.context], action=record.action, target=clip[record.context:])


def read_frames(video: str, start: int, end: int, size: int, where: str) -> np.ndarray:
    """Frames `start`..`end` (exclusive) of `video` as (F, size, size, 3) uint8 RGB, centre-cropped."""
    capture = cv2.VideoCapture(video)
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        for _ in range(end - start):
            ok, frame = capture.read()
            if not ok:
                raise BadRecordError(f"{where}: {video!r} ended before frame {end}.")
            frames.append(_square(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), size))
    finally:
        capture.release()
    return np.stack(frames)


@dataclass
class ManifestEpisode:
    """Consecutive clips of one video: frame `clips[0].start` is the start frame X_0, and the frames after
    it are cut into chunks of `chunk_frames` (trailing frames that fill no chunk are left out). Each chunk's
    action is the action of the clip its first frame lies in."""

    clips: list[ManifestRecord]
    chunk_frames: int

    @property
    def video(self) -> str:
        return self.clips[0].video

    @property
    def start(self) -> int:
        return self.clips[0].start

    @property
    def num_chunks(self) -> int:
        return (self.clips[-1].end - self.start - 1) // self.chunk_frames

    @property
    def lines(self) -> str:
        return f"lines {self.clips[0].line}-{self.clips[-1].line}" if len(self.clips) > 1 else f"line {self.clips[0].line}"

    def _chunk_span(self, index: int) -> tuple[int, int]:
        """Video frames (first, last) of chunk `index`."""
        first = self.start + 1 + index * self.chunk_frames
        return first, first + self.chunk_frames - 1

    def chunk_actions(self) -> list[str]:
        return [next(c.action for c in self.clips if c.start <= self._chunk_span(i)[0] < c.end)
                for i in range(self.num_chunks)]

    def straddling_chunks(self) -> int:
        """Chunks whose frames come from two clips of different actions (labelled by their first frame's)."""
        spans = [self._chunk_span(i) for i in range(self.num_chunks)]
        return sum(len({c.action for c in self.clips if c.start <= last and first < c.end}) > 1 for first, last in spans)

    def frames(self, first_chunk: int, num_chunks: int, size: int) -> np.ndarray:
        """X_0 .. X_n of the window of `num_chunks` chunks from chunk `first_chunk` (its X_0 is the frame
        before it), as (1 + num_chunks * chunk_frames, size, size, 3) floats in [0, 1]."""
        start = self.start + first_chunk * self.chunk_frames
        frames = read_frames(self.video, start, start + 1 + num_chunks * self.chunk_frames, size, self.lines)
        return frames.astype(np.float32) / 255.0


def manifest_episodes(records: list[ManifestRecord], chunk_frames: int, min_chunks: int = 2,
                      on_bad_record: str = "skip") -> list[ManifestEpisode]:
    """Group `records` into episodes (see the module's docstring) of at least `min_chunks` chunks.

    Named episodes whose clips do not follow each other raise `BadRecordError`; episodes too short for
    `min_chunks` are skipped with a warning, or raise with `on_bad_record="fatal"`."""
    groups: list[list[ManifestRecord]] = []
    named: dict[str, list[ManifestRecord]] = {}
    for record in records:
        if record.episode is not None:
            if record.episode not in named:
                named[record.episode] = []
                groups.append(named[record.episode])
            named[record.episode].append(record)
        elif groups and groups[-1][-1].episode is None and _follows(groups[-1][-1], record):
            groups[-1].append(record)
        else:
            groups.append([record])
    for name, clips in named.items():
        clips.sort(key=lambda record: record.start)
        for before, after in zip(clips, clips[1:]):
            if after.video != before.video:
                raise BadRecordError(f"episode {name!r}: line {after.line} is from {after.video!r} but line "
                                     f"{before.line} from {before.video!r}; an episode is one video's consecutive clips.")
            if after.start != before.end:
                raise BadRecordError(
                    f"episode {name!r}: line {after.line} starts at frame {after.start} but line {before.line} ends at "
                    f"frame {before.end}; an episode's clips must follow each other without gap or overlap "
                    "(each start = the previous clip's end). Fix the frames or give the clips different episode names.")
    episodes = []
    for clips in groups:
        episode = ManifestEpisode(clips, chunk_frames)
        if episode.num_chunks < min_chunks:
            frames = clips[-1].end - clips[0].start
            error = BadRecordError(
                f"{clips[0].video!r}, {episode.lines}: an episode of {frames} frames holds {episode.num_chunks} "
                f"chunk(s) of {chunk_frames} frames after its start frame; the slow-fast loop needs at least "
                f"{min_chunks} (1 + {min_chunks * chunk_frames} frames). Join it with the clips that follow it in the video.")
            if on_bad_record == "fatal":
                raise error
            warnings.warn(f"skipped: {error}", stacklevel=2)
            continue
        episodes.append(episode)
    return episodes


def _follows(before: ManifestRecord, after: ManifestRecord) -> bool:
    return after.video == before.video and after.start == before.end


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return cv2.resize(frame[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)
