"""Outputs are written beside their target under a temporary name, then renamed into place.

A temporary is named after its target and the process writing it, `.{stem}.slowfast-partial-{pid}-{id}{suffix}`
(`.episode.slowfast-partial-4242-1a2b3c4d.mp4` for `episode.mp4`), so an orphan left by a killed process
says what it was, keeps its file type for the writers that pick a format by extension (OpenCV), and is
removed by the next run that writes the same target once its process is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

PARTIAL_TAG = ".slowfast-partial-"


def partial_path(target: str | os.PathLike) -> Path:
    """A fresh temporary path beside `target`, named after it and this process."""
    target = Path(target)
    return target.with_name(f".{target.stem}{PARTIAL_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}{target.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_partials(target: str | os.PathLike) -> list[Path]:
    """The temporaries of `target` whose writing process has ended, oldest first."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{target.stem}{PARTIAL_TAG}") + r"(\d+)-[0-9a-f]{8}" + re.escape(target.suffix) + "$")
    found = [c for c in target.parent.iterdir() if (m := pattern.match(c.name)) and not _alive(int(m.group(1)))]
    return sorted(found, key=lambda path: path.stat().st_mtime)


def remove_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of `target` whose writing process has ended; return what was removed."""
    removed = []
    for candidate in stale_partials(target):
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), since setting it
    to read it back would briefly change it for every thread of the process."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(path: str | os.PathLike) -> None:
    """Give a finished temporary the mode a newly created file gets (0644 under the usual umask 022):
    writers that create it through `mkstemp` (safetensors) make it 0600, readable by its owner only."""
    os.chmod(path, 0o666 & ~umask())


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary beside it and an atomic rename."""
    temporary = partial_path(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
