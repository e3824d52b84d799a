"""Run API-format workflows on a running ComfyUI server, through its HTTP API, and report what they made.

    python -m slowfast_vgen.workflows.submit                          # every workflow in workflows/api/, in order
    python -m slowfast_vgen.workflows.submit --server http://127.0.0.1:8188 "workflows/api/4 Branching from one memory.json"
    python -m slowfast_vgen.workflows.submit --thumbnails             # and make each template's thumbnail

Each graph is queued with `POST /prompt`, then `GET /history/<prompt_id>` is polled until the server says it
succeeded or failed. A graph the server refuses (its `node_errors`) or whose run fails (`execution_error`)
makes the command exit with status 1, after all the others ran. The workflows run in name order, since
workflow 5 continues from the memory that workflow 1 saves.

With `--thumbnails`, the video each workflow saved is fetched from the server and four of its frames (a
quarter, half, three quarters of the way and the last) are written as `<workflow name>.jpg` beside the UI
workflow in example_workflows/: the picture ComfyUI's template browser shows for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..video_files import read_video
from .convert import API_DIR, WORKFLOWS_DIR

THUMBNAIL_MIN_SIZE = 384  # pixels on the short side: ToyWorld's 64-pixel frames are enlarged to be seen


@dataclass
class RunReport:
    """What one workflow's run on the server gave: its status, time, output files and error, if any."""

    workflow: str
    ok: bool
    seconds: float
    outputs: list[str] = field(default_factory=list)
    error: str = ""


def _request(server: str, path: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(server.rstrip("/") + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        # ComfyUI answers a refused prompt with 400 and a JSON body naming the node and the input at fault.
        body = error.read().decode(errors="replace")
        try:
            return {"http_error": error.code, **json.loads(body)}
        except json.JSONDecodeError:
            return {"http_error": error.code, "error": body}


def output_files(outputs: dict) -> list[str]:
    """The files of the output folder an output node reported in the history ('subfolder/filename' for images,
    videos, and the rest; not the temp folder's previews, such as the card Save Memory shows)."""
    files = []
    for node_output in outputs.values():
        for items in node_output.values():
            if isinstance(items, list):
                files += [f"{item.get('subfolder', '')}/{item['filename']}".lstrip("/")
                          for item in items if isinstance(item, dict) and "filename" in item
                          and item.get("type", "output") == "output"]
    return files


def fetch_output(server: str, name: str) -> bytes:
    """The bytes of an output file of the server ('subfolder/filename'), through its /view endpoint."""
    subfolder, _, filename = name.rpartition("/")
    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": "output"})
    with urllib.request.urlopen(f"{server.rstrip('/')}/view?{query}", timeout=60) as response:
        return response.read()


def thumbnail_from_video(video: bytes) -> np.ndarray:
    """A 2x2 grid of four frames of a video (BGR), enlarged (nearest) to THUMBNAIL_MIN_SIZE on its short side."""
    import tempfile

    import cv2

    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
        file.write(video)
        file.flush()
        frames = [frame[..., ::-1] for frame in read_video(file.name)]  # RGB to OpenCV's BGR
    if not frames:
        raise ValueError("the workflow's video has no frame that OpenCV can read")
    picks = [frames[min(len(frames) - 1, round(len(frames) * q))] for q in (0.25, 0.5, 0.75, 1.0)]
    grid = np.concatenate([np.concatenate(picks[:2], axis=1), np.concatenate(picks[2:], axis=1)], axis=0)
    scale = max(1, -(-THUMBNAIL_MIN_SIZE // min(grid.shape[:2])))
    return cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def write_thumbnail(server: str, report: RunReport, folder: Path = WORKFLOWS_DIR) -> Path:
    """`<workflow>.jpg` beside the UI workflow, from the first video its run saved (written atomically)."""
    import cv2

    videos = [name for name in report.outputs if name.lower().endswith((".mp4", ".webm", ".mov"))]
    if not videos:
        raise ValueError(f"{report.workflow} saved no video to make a thumbnail from")
    image = thumbnail_from_video(fetch_output(server, videos[0]))
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise ValueError(f"OpenCV could not encode the thumbnail of {report.workflow}")
    target = folder / (Path(report.workflow).stem + ".jpg")
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(encoded.tobytes())
    partial.replace(target)
    return target


def run_workflow(server: str, path: Path, timeout: float) -> RunReport:
    graph = json.loads(path.read_text())
    started = time.monotonic()
    queued = _request(server, "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
    if "prompt_id" not in queued:
        return RunReport(path.name, False, 0.0, error=json.dumps(queued)[:2000])
    prompt_id = queued["prompt_id"]
    while time.monotonic() - started < timeout:
        entry = _request(server, f"/history/{prompt_id}").get(prompt_id)
        if entry:  # a prompt enters the history once it has finished, well or not
            seconds = time.monotonic() - started
            status = entry["status"]
            if status.get("status_str") == "success":
                return RunReport(path.name, True, seconds, output_files(entry.get("outputs", {})))
            errors = [message[1] for message in status.get("messages", []) if message[0] == "execution_error"]
            detail = "; ".join(f"{e.get('node_type')}: {e.get('exception_message', '').strip()}" for e in errors)
            return RunReport(path.name, False, seconds, error=detail or json.dumps(status)[:2000])
        time.sleep(0.5)
    _request(server, "/interrupt", {})
    return RunReport(path.name, False, time.monotonic() - started, error=f"no result after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slowfast_vgen.workflows.submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflows", nargs="*", type=Path, help="API-format workflow files (default: workflows/api/)")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="the ComfyUI server's address")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for each workflow")
    parser.add_argument("--thumbnails", action="store_true",
                        help="write each workflow's template thumbnail (<name>.jpg in example_workflows/) from its video")
    args = parser.parse_args(argv)
    paths = args.workflows or sorted(API_DIR.glob("*.json"))
    try:
        stats = _request(args.server, "/system_stats")
    except urllib.error.URLError as error:
        raise SystemExit(f"No ComfyUI server answers at {args.server} ({error.reason}). Start one "
                         "(python main.py --cpu) or pass --server.") from None
    print(f"ComfyUI {stats.get('system', {}).get('comfyui_version', '?')} at {args.server}")
    reports = []
    for path in paths:
        report = run_workflow(args.server, path, args.timeout)
        reports.append(report)
        verdict = "ok" if report.ok else "FAILED"
        print(f"{verdict:6} {report.workflow} in {report.seconds:.1f} s"
              + (f": {', '.join(report.outputs)}" if report.outputs else "")
              + (f"\n       {report.error}" if report.error else ""), flush=True)
        if report.ok and args.thumbnails:
            try:
                print(f"       thumbnail {write_thumbnail(args.server, report)}", flush=True)
            except (ValueError, OSError) as error:
                report.ok, report.error = False, f"no thumbnail: {error}"
                print(f"FAILED {report.workflow}: {report.error}", flush=True)
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
