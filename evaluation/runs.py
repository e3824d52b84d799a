"""The bookkeeping of a resumable run over episodes, shared by `evaluate` and `plan-eval`: one JSON line per
episode in `episodes-<process>.jsonl`, appended as each episode ends, so a stopped run resumes where it
stopped; `run.json` holds the run's settings, so a folder is never resumed with other ones; under
`accelerate launch` / `torchrun` the processes share the episodes out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; runs into one folder are then not kept apart
    fcntl = None


def read_rows(output_dir: Path) -> list[dict]:
    """Every complete row of every process's JSONL; a line cut short by a stop is dropped (and removed)."""
    rows = []
    for shard in sorted(output_dir.glob("episodes-*.jsonl")):
        lines = shard.read_text(encoding="utf-8").split("\n")
        complete, tail = lines[:-1], lines[-1]
        good = []
        for line in complete:
            try:
                rows.append(json.loads(line))
                good.append(line)
            except ValueError:
                pass
        if tail or len(good) != len(complete):  # a torn last write: keep only whole rows
            temporary = shard.with_name(shard.name + ".partial")
            temporary.write_text("".join(line + "\n" for line in good), encoding="utf-8")
            os.replace(temporary, shard)
    return rows


def append_row(shard: Path, row: dict) -> None:
    with open(shard, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def episode_key(described: dict) -> tuple:
    return described["seed"], described["family"]


# The folders this process is writing a run into, each with its open, locked descriptor (held until it ends).
_HELD: dict[Path, int] = {}


def _lock_run_folder(output_dir: Path) -> None:
    """Hold `output_dir`'s lock for the rest of this process, or refuse: two runs appending to one folder at
    once would each write every episode. The operating system lets go of it when the process ends, however
    it ends, so a stopped run never leaves a stale lock."""
    key = output_dir.resolve()
    if fcntl is None or key in _HELD:  # key in _HELD: this process resumes its own run
        return
    handle = os.open(output_dir, os.O_RDONLY)  # the folder itself: a refused run writes nothing there
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(handle)
        raise ValueError(f"Another run is writing into {output_dir} now; wait for it to end (then run the same "
                         "command again to resume), or give another output folder.") from None
    _HELD[key] = handle


def claim_run_folder(output_dir: Path, identity: dict) -> None:
    """Create `output_dir` for a run with these settings, or resume the run it holds if its settings are the
    same; a folder holding a run with other settings, or one that another process is writing into, is
    refused."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"The output folder {output_dir} is a file: give a folder (new, or one to resume).")
    output_dir.mkdir(parents=True, exist_ok=True)
    _lock_run_folder(output_dir)
    run_file = output_dir / "run.json"
    if run_file.is_file():
        try:
            earlier = json.loads(run_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{run_file} is not valid JSON ({error}): it is not a run of this tool; give another "
                             "output folder.") from None
        if earlier != identity:
            changed = sorted(k for k in set(earlier) | set(identity) if earlier.get(k) != identity.get(k))
            raise ValueError(f"{output_dir} holds a run with other settings ({', '.join(changed)} differ); resume it "
                             "with the same options, or give another output folder.")
    temporary = output_dir / ".run.json.partial"
    temporary.write_text(json.dumps(identity, indent=2), encoding="utf-8")
    os.replace(temporary, run_file)


def start_run(output_dir: Path, identity: dict):
    """accelerate's state of this process, once the main process has claimed `output_dir` (see
    `claim_run_folder`), and the rows already done there (read on the main process first, which drops a
    row torn by a stop, then on the others)."""
    from accelerate import PartialState

    # cpu=True where there is no GPU: accelerate then joins CPU processes (torchrun, accelerate launch) over gloo.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        claim_run_folder(output_dir, identity)
        done = read_rows(output_dir)
    state.wait_for_everyone()
    if not state.is_main_process:
        done = read_rows(output_dir)
    return state, done
