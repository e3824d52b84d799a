"""Run API-format workflows on a running ComfyUI server, through its HTTP API, and report what they made.

    python -m slowfast_vgen.workflows.submit                          # every workflow in workflows/api/, in order
    python -m slowfast_vgen.workflows.submit --server http://127.0.0.1:8188 workflows/api/4_branching.json

Each graph is queued with `POST /prompt`, then `GET /history/<prompt_id>` is polled until the server says it
succeeded or failed. A graph the server refuses (its `node_errors`) or whose run fails (`execution_error`)
makes the command exit with status 1, after all the others ran. The workflows run in name order, since
workflow 5 continues from the memory that workflow 1 saves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .convert import API_DIR


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
    """The files an output node reported in the history ('subfolder/filename' for images, videos, and the rest)."""
    files = []
    for node_output in outputs.values():
        for items in node_output.values():
            if isinstance(items, list):
                files += [f"{item.get('subfolder', '')}/{item['filename']}".lstrip("/")
                          for item in items if isinstance(item, dict) and "filename" in item]
    return files


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
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
