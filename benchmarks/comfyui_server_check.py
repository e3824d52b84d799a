"""Check the node pack in a running ComfyUI server as a user meets it: previews, progress, queue-time
refusals, Cancel and error payloads. The figures go in docs/comfyui.md.

    # in ComfyUI's own environment, which has aiohttp (this script needs nothing else, not even the pack)
    ComfyUI/venv/bin/python benchmarks/comfyui_server_check.py --server http://127.0.0.1:8188 --out check.json

What it does, over ComfyUI's HTTP API and websocket:
0. checks that the shipped UI workflows (saved graphs, example_workflows/) fit the server's node
   definitions: ids, inputs, and a widget for each stored value, in order; and that the server lists
   exactly them as the pack's templates (`GET /workflow_templates`), serving nothing else of the pack;
1. runs every workflow of workflows/api/ (and workflow 3 as saved before Temp-LoRA settings were retired,
   with the old Temp-LoRA Settings node and its retired widgets) and records each progress message and binary preview with its time:
   previews per pack node, and the longest wait between two progress messages of a pack node against the
   median wait (one denoising step or one Temp-LoRA step: one UNet forward, or forward and backward);
2. queues graphs with one bad widget or link each and records the HTTP status (400 expected), the time
   to the answer, its size and its errors: exactly one, on the input at fault; and graphs whose fault
   needs two inputs (checked as the node starts), which must fail at once with the node's message;
3. presses Cancel (`POST /interrupt`) during a denoising step, during a Temp-LoRA update of a long
   episode, and during the first step of an update before it reports (a slow update: 256 frames of
   context), and records how long the server took to report `execution_interrupted` (1 s at most);
4. makes a node fail while running and records the size of the `execution_error` message and history
   entry, and that no error message holds an absolute server path or a module path;
5. runs workflows 3 and 4 twice, freeing the models and the cache between the runs (`POST /free`), with
   every decoded frame saved as PNG, and compares the frames: they must be bit-identical.
Exit status 1 if any expectation fails (a workflow fails, a bad graph is accepted, no previews, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import struct
import sys
import time
import uuid
from pathlib import Path

import aiohttp

PACK_DIR = Path(__file__).resolve().parent.parent
API_DIR = PACK_DIR / "workflows" / "api"
UI_DIR = PACK_DIR / "example_workflows"
PACK_PREFIX = "SlowFastVGen_"


class Session:
    """One websocket client of the server, with a log of (time, kind, data) of everything it receives."""

    def __init__(self, http: aiohttp.ClientSession, server: str):
        self.http, self.server, self.client_id = http, server.rstrip("/"), uuid.uuid4().hex
        self.events: list[tuple[float, str, object]] = []

    async def __aenter__(self) -> "Session":
        self.ws = await self.http.ws_connect(f"{self.server}/ws?clientId={self.client_id}".replace("http", "ws", 1))
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self.reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        async for message in self.ws:
            now = time.monotonic()
            if message.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(message.data)
                self.events.append((now, data["type"], data.get("data", {}), len(message.data)))
            elif message.type == aiohttp.WSMsgType.BINARY:
                kind = struct.unpack(">I", message.data[:4])[0]
                self.events.append((now, "binary", kind, len(message.data)))

    async def queue(self, graph: dict) -> tuple[int, dict, float, int]:
        """POST /prompt: (HTTP status, JSON answer, seconds to the answer, bytes of the answer)."""
        started = time.monotonic()
        async with self.http.post(f"{self.server}/prompt", json={"prompt": graph, "client_id": self.client_id}) as r:
            body = await r.read()
            return r.status, json.loads(body), time.monotonic() - started, len(body)

    async def wait_for(self, kinds: set[str], prompt_id: str, timeout: float = 900) -> tuple[float, str, dict]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for event in self.events[seen:]:
                if event[1] in kinds and isinstance(event[2], dict) and event[2].get("prompt_id") == prompt_id:
                    return event[0], event[1], event[2]
            seen = len(self.events)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {kinds} for {prompt_id} in {timeout} s")

    async def history(self, prompt_id: str) -> bytes:
        async with self.http.get(f"{self.server}/history/{prompt_id}") as r:
            return await r.read()


def node_timeline(events: list, graph: dict) -> dict[str, dict]:
    """Per executed pack node: its progress times, previews, and the longest and median waits between updates."""
    nodes: dict[str, dict] = {}
    current = None
    for when, kind, data, _ in events:
        if kind == "executing":
            current = data.get("node")
            if current is not None and graph.get(current, {}).get("class_type", "").startswith(PACK_PREFIX):
                nodes[current] = {"class_type": graph[current]["class_type"], "start": when, "progress": [],
                                  "previews": 0}
        elif kind == "progress" and data.get("node") in nodes:
            nodes[data["node"]]["progress"].append(when)
        elif kind == "binary" and current in nodes:
            nodes[current]["previews"] += 1
    summary = {}
    for node_id, node in nodes.items():
        times = [node["start"]] + node["progress"]
        gaps = [b - a for a, b in zip(times[1:], times[2:])]  # between updates (the first includes set-up)
        longest_at = gaps.index(max(gaps)) + 2 if gaps else None  # the progress value the longest wait ended at
        summary[node_id] = {
            "class_type": node["class_type"], "progress_messages": len(node["progress"]),
            "previews": node["previews"], "first_update_s": round(times[1] - times[0], 3) if len(times) > 1 else None,
            "longest_gap_s": round(max(gaps), 3) if gaps else None,
            "median_gap_s": round(statistics.median(gaps), 4) if gaps else None, "longest_gap_ends_at": longest_at,
        }
    return summary


RETIRED_WIDGETS = {"alpha": 0.0, "timestep_low": 0.0, "timestep_high": 1.0, "keep_optimizer_state": True}


def with_retired_widgets(graph: dict) -> dict:
    """The graph as saved before alpha, the timestep range and keep_optimizer_state were retired: the old
    Temp-LoRA Settings node id, with those widgets at the values every saved graph could hold and run with."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        if node["class_type"] == PACK_PREFIX + "TempLoRASettingsV2":
            node["class_type"] = PACK_PREFIX + "TempLoRASettings"
            node["inputs"].update(RETIRED_WIDGETS)
    return graph


def workflow_graphs() -> dict[str, dict]:
    graphs = {path.name: json.loads(path.read_text()) for path in sorted(API_DIR.glob("*.json"))}
    step_by_step = "3 Step by step memory flow.json"
    graphs[f"{step_by_step} (saved with the retired widgets)"] = with_retired_widgets(graphs[step_by_step])
    return graphs


async def run_workflows(http, server: str) -> list[dict]:
    results = []
    for name, graph in workflow_graphs().items():
        async with Session(http, server) as session:
            started = time.monotonic()
            status, answer, _, _ = await session.queue(graph)
            if status != 200:
                results.append({"workflow": name, "ok": False, "error": answer})
                continue
            _, kind, _ = await session.wait_for({"execution_success", "execution_error"}, answer["prompt_id"])
            await asyncio.sleep(0.2)
            results.append({"workflow": name, "ok": kind == "execution_success",
                            "seconds": round(time.monotonic() - started, 2),
                            "nodes": node_timeline(session.events, graph)})
    return results


def find(graph: dict, class_type: str) -> str:
    return next(k for k, v in graph.items() if v["class_type"] == PACK_PREFIX + class_type)


def bad_graphs() -> dict[str, dict]:
    """Graphs with one thing wrong each, all decidable before anything runs."""
    one = json.loads((API_DIR / "1 Long episode with memory.json").read_text())
    three = json.loads((API_DIR / "3 Step by step memory flow.json").read_text())
    cases = {}
    graph = copy.deepcopy(one)
    graph[find(graph, "RunEpisode")]["inputs"]["actions"] = " \n \n"
    cases["empty action script"] = graph
    # Save Memory as the graph's only output: with another valid output, ComfyUI answers 200, runs that
    # one and lists the refused node in `node_errors` (its rule for graphs with several outputs).
    memory_only = {k: v for k, v in one.items() if not v["class_type"].startswith(("SaveVideo", "CreateVideo"))}
    graph = copy.deepcopy(memory_only)
    graph[find(graph, "SaveMemory")]["inputs"]["filename_prefix"] = "../../outside/memory"
    cases["save name with '..'"] = graph
    graph = copy.deepcopy(memory_only)
    graph[find(graph, "SaveMemory")]["inputs"]["filename_prefix"] = "/tmp/memory"
    cases["absolute save name"] = graph
    graph = copy.deepcopy(one)
    graph[find(graph, "SaveMemory")]["inputs"]["filename_prefix"] = "/tmp/memory"
    cases["absolute save name, beside a valid Save Video"] = graph
    graph = copy.deepcopy(three)
    first = next(k for k, v in graph.items() if v["class_type"] == PACK_PREFIX + "ActionChunk" and "image" in v["inputs"])
    graph[first]["inputs"]["action"] = "   "
    cases["empty action"] = graph
    graph = copy.deepcopy(three)
    graph["901"] = copy.deepcopy(graph[first])  # another chunk, made from the start frame
    graph[first]["inputs"]["image"] = ["901", 0]  # a chunk into an image input
    cases["chunk linked into image"] = graph
    graph = copy.deepcopy(three)
    graph[first]["inputs"]["image"] = [find(graph, "LoadWorldModel"), 0]
    cases["world model linked into image"] = graph
    graph = with_retired_widgets(three)
    graph[find(graph, "TempLoRASettings")]["inputs"]["timestep_low"] = 0.8
    cases["a retired widget (timestep_low) at another value than the one kept"] = graph
    for key, name, value in (("LoadWorldModel", "model_name", "no-such-model"), ("LoadWorldModel", "dtype", "float8"),
                             ("ActionChunk", "conditioning", "sideways"), ("ActionChunk", "recall", "forwards"),
                             ("DecodeChunk", "frames", "all")):
        graph = copy.deepcopy(three)
        graph[find(graph, key)]["inputs"][name] = value
        cases[f"unknown {name}"] = graph
    graph = copy.deepcopy(three)
    graph[find(graph, "TempLoRASettingsV2")].update(class_type=PACK_PREFIX + "TempLoRAPreset",
                                                    inputs={"preset": "fastest"})
    cases["unknown preset"] = graph
    graph = copy.deepcopy(one)
    graph[find(graph, "RunEpisode")]["inputs"]["temp_lora"] = "sometimes"
    cases["unknown temp_lora"] = graph
    graph = json.loads((API_DIR / "5 Continue from a saved memory.json").read_text())
    graph[find(graph, "LoadMemory")]["inputs"]["memory_name"] = "gone.safetensors [output]"
    cases["unknown memory"] = graph
    return cases


# The input each bad graph's one error must be on (None: any, e.g. the four retired widgets).
AT_FAULT = {"empty action script": "actions", "save name with '..'": "filename_prefix",
            "absolute save name": "filename_prefix", "absolute save name, beside a valid Save Video": "filename_prefix",
            "empty action": "action", "chunk linked into image": "image", "world model linked into image": "image",
            "unknown model_name": "model_name", "unknown dtype": "dtype", "unknown conditioning": "conditioning",
            "unknown recall": "recall", "unknown frames": "frames", "unknown preset": "preset",
            "unknown temp_lora": "temp_lora", "unknown memory": "memory_name"}


def run_time_refusals_graphs() -> dict[str, tuple[dict, str]]:
    """Faults that need two inputs, refused as the node starts: (graph, words of the message)."""
    three = json.loads((API_DIR / "3 Step by step memory flow.json").read_text())
    cases = {}
    graph = copy.deepcopy(three)
    chunks = [k for k, v in graph.items() if v["class_type"] == PACK_PREFIX + "ActionChunk" and "chunk" in v["inputs"]]
    graph[chunks[0]]["inputs"]["image"] = [find(graph, "ToyWorldStartFrame"), 0]
    graph[chunks[0]]["inputs"]["seed"] = int(time.time())
    cases["image and chunk both connected"] = (graph, "Both 'image' and 'chunk' are connected")
    graph = copy.deepcopy(three)
    graph[find(graph, "TempLoRASettingsV2")]["inputs"].update(steps_per_update=0, panorama=False)
    cases["a memory that learns nothing (no steps, no panorama)"] = (graph, "learns nothing")
    return cases


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_names(info: dict) -> list[str]:
    """The node's widgets in the order a saved UI graph stores their values (`widgets_values`); a seed
    widget with control_after_generate stores its control mode right after its value."""
    names = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            kind, options = (info["input"][section][name] + [{}])[:2]
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput"):
                names.append(name)
                if options.get("control_after_generate"):
                    names.append(f"{name} (control after generate)")
    return names


async def saved_graphs_load(http, server: str) -> list[dict]:
    """Every pack node of the shipped UI workflows, against the server's node definitions: the same id, a
    widget for every stored value in the same order, and every linked input name known."""
    async with http.get(f"{server}/object_info") as r:
        definitions = await r.json()
    results = []
    for path in sorted(UI_DIR.glob("*.json")):
        problems = []
        for node in json.loads(path.read_text())["nodes"]:
            if not node["type"].startswith(PACK_PREFIX):
                continue
            info = definitions.get(node["type"])
            if info is None:
                problems.append(f"{node['type']}: unknown to the server")
                continue
            names = widget_names(info)
            values = node.get("widgets_values", [])
            if len(values) != len(names):
                problems.append(f"{node['type']}: {len(values)} stored widget values for widgets {names}")
            known = set(info["input"].get("required", {})) | set(info["input"].get("optional", {}))
            problems += [f"{node['type']}: input {i['name']!r} unknown" for i in node.get("inputs", [])
                         if i["name"] not in known]
            for name, value in zip(names, values):
                section = "required" if name in info["input"].get("required", {}) else "optional"
                kind, options = (info["input"].get(section, {}).get(name, ["?"]) + [{}])[:2]
                choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
                if choices is not None and value not in choices and node["type"] != PACK_PREFIX + "LoadMemory":
                    problems.append(f"{node['type']}.{name}: stored {value!r} is not one of {choices}")
        results.append({"workflow": path.name, "problems": problems})
    return results


async def queue_time_refusals(http, server: str) -> list[dict]:
    results = []
    async with Session(http, server) as session:
        for name, graph in bad_graphs().items():
            status, answer, seconds, size = await session.queue(graph)
            errors = [e.get("details", "") for node in answer.get("node_errors", {}).values()
                      for e in node.get("errors", [])]
            inputs = [e.get("extra_info", {}).get("input_name") for node in answer.get("node_errors", {}).values()
                      for e in node.get("errors", [])]
            results.append({"case": name, "status": status, "seconds": round(seconds, 3), "bytes": size,
                            "refused_nodes": sorted(answer.get("node_errors", {})), "error_inputs": inputs,
                            "expected_input": AT_FAULT.get(name),
                            "message": (errors or [answer.get("error", {}).get("message", "")])[0][:300]})
            if status == 200:  # the valid part runs: wait for it, so that it does not overlap the next checks
                await session.wait_for({"execution_success", "execution_error"}, answer["prompt_id"])
    return results


def long_episode(steps_per_update: int) -> dict:
    graph = json.loads((API_DIR / "1 Long episode with memory.json").read_text())
    episode = find(graph, "RunEpisode")
    graph[episode]["inputs"]["actions"] = "\n".join(["move right", "move left"] * 10)
    graph["900"] = {"class_type": PACK_PREFIX + "TempLoRASettingsV2", "inputs": {
        "rank": 32, "learning_rate": 1e-4, "target": "all-attention", "steps_per_update": steps_per_update}}
    graph[episode]["inputs"]["settings"] = ["900", 0]
    graph[episode]["inputs"]["seed"] = int(time.time())  # not cached from an earlier run
    return graph


async def cancel_latency(http, server: str, phase: str) -> dict:
    """Cancel during the third chunk's denoising ('denoising') or its Temp-LoRA update ('temp-lora')."""
    updates = 20
    graph = long_episode(updates)
    episode = find(graph, "RunEpisode")
    steps = graph[episode]["inputs"]["steps"]
    per_chunk = steps + updates + 1
    target = 1 + 2 * per_chunk + {"denoising": steps // 2, "temp-lora": steps + updates // 2,
                                   "temp-lora first step": steps}[phase]
    async with Session(http, server) as session:
        status, answer, _, _ = await session.queue(graph)
        prompt_id = answer["prompt_id"]
        pressed = None
        while pressed is None:
            progress = [e for e in session.events if e[1] == "progress" and e[2].get("node") == episode]
            if progress and progress[-1][2]["value"] >= target:
                async with http.post(f"{server}/interrupt") as r:
                    await r.read()
                pressed = time.monotonic()
            await asyncio.sleep(0.005)
        when, kind, _ = await session.wait_for({"execution_interrupted", "execution_success", "execution_error"},
                                               prompt_id)
        progress = [e[0] for e in session.events if e[1] == "progress" and e[2].get("node") == episode]
        gaps = [b - a for a, b in zip(progress, progress[1:])]
        return {"phase": phase, "result": kind, "seconds_to_stop": round(when - pressed, 3),
                "median_progress_gap_s": round(statistics.median(gaps), 4),
                "longest_progress_gap_s": round(max(gaps), 4),
                "value_at_press": target, "of": 1 + 20 * per_chunk}


async def run_time_refusals(http, server: str) -> list[dict]:
    results = []
    for name, (graph, words) in run_time_refusals_graphs().items():
        async with Session(http, server) as session:
            started = time.monotonic()
            status, answer, _, _ = await session.queue(graph)
            if status != 200:
                results.append({"case": name, "status": status, "ok": False})
                continue
            when, kind, data = await session.wait_for({"execution_success", "execution_error"}, answer["prompt_id"])
            message = data.get("exception_message", "")
            results.append({"case": name, "status": status, "result": kind, "seconds": round(when - started, 2),
                            "message": message[:300], "exception_type": data.get("exception_type"),
                            "ok": kind == "execution_error" and words in message})
    return results


async def templates(http, server: str) -> dict:
    """What the template browser gets: the pack's templates, and whether the pack's other files are served."""
    async with http.get(f"{server}/workflow_templates") as r:
        every = await r.json()
    # The pack's folder name in custom_nodes/ (a link there may have another name than this checkout).
    pack = next((name for name in every if "slowfast" in name.lower()), PACK_DIR.name)
    listed = every.get(pack, [])
    served = {}
    for path in ("workflows/submit.py", "workflows/convert.py", "workflows/api/1 Long episode with memory.json",
                 "submit.py", "api/1 Long episode with memory.json"):
        async with http.get(f"{server}/api/workflow_templates/{pack}/{path}") as r:
            served[path] = r.status
    expected = sorted(p.stem for p in UI_DIR.glob("*.json"))
    return {"pack": pack, "listed": listed, "expected": expected, "ok": sorted(listed) == expected,
            "other_files_served": [p for p, status in served.items() if status == 200]}


async def run_saving_frames(http, server: str, graph: dict, tag: str) -> dict[str, list[bytes]]:
    """Run `graph` with every decoded frame of the pack saved as PNG; the PNG files' bytes by node."""
    graph = copy.deepcopy(graph)
    for node_id, node in list(graph.items()):
        if node["class_type"] in (PACK_PREFIX + "DecodeChunk", PACK_PREFIX + "RunEpisode"):
            graph[f"9{node_id}"] = {"class_type": "SaveImage",
                                    "inputs": {"images": [node_id, 0], "filename_prefix": f"determinism/{tag}_{node_id}"}}
    async with Session(http, server) as session:
        status, answer, _, _ = await session.queue(graph)
        _, kind, _ = await session.wait_for({"execution_success", "execution_error"}, answer["prompt_id"])
        history = json.loads(await session.history(answer["prompt_id"]))[answer["prompt_id"]]
    frames = {}
    for node_id, output in history["outputs"].items():
        for image in output.get("images", []):
            if not image["filename"].endswith(".png"):  # Save Video's file
                continue
            async with http.get(f"{server}/view", params=image) as r:
                frames.setdefault(node_id, []).append(await r.read())
    return frames


async def determinism(http, server: str) -> list[dict]:
    """Workflows 3 and 4 twice, models and cache freed between the runs: the frames must be the same."""
    import io

    import numpy as np
    from PIL import Image

    results = []
    for name in ("3 Step by step memory flow.json", "4 Branching from one memory.json"):
        graph = json.loads((API_DIR / name).read_text())
        runs = []
        for attempt in range(2):
            async with http.post(f"{server}/free", json={"unload_models": True, "free_memory": True}) as r:
                await r.read()
            await asyncio.sleep(2)
            runs.append(await run_saving_frames(http, server, graph, f"{Path(name).stem[:1]}_{attempt}"))
        differences = []
        for node_id, first in runs[0].items():
            for a, b in zip(first, runs[1].get(node_id, [])):
                pa, pb = (np.asarray(Image.open(io.BytesIO(x)), dtype=np.float64) for x in (a, b))
                differences.append(float(np.abs(pa - pb).max()))
        results.append({"workflow": name, "frames": sum(len(v) for v in runs[0].values()),
                        "max_difference": max(differences, default=None),
                        "ok": bool(differences) and max(differences) == 0.0})
    return results


async def error_payload(http, server: str) -> dict:
    """Save Memory fed an empty memory (Run Episode with temp_lora 'off'): known only once it runs."""
    graph = json.loads((API_DIR / "1 Long episode with memory.json").read_text())
    episode = find(graph, "RunEpisode")
    graph[episode]["inputs"]["temp_lora"] = "off"
    graph[episode]["inputs"]["actions"] = "move right"
    graph[episode]["inputs"]["seed"] = int(time.time())
    async with Session(http, server) as session:
        status, answer, _, _ = await session.queue(graph)
        await session.wait_for({"execution_error", "execution_success"}, answer["prompt_id"])
        error = next(e for e in session.events if e[1] == "execution_error")
        history = await session.history(answer["prompt_id"])
        return {"status": status, "execution_error_bytes": error[3], "history_entry_bytes": len(history),
                "message": error[2].get("exception_message", "")[:300],
                "exception_type": error[2].get("exception_type")}


async def main_async(server: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server}/system_stats") as r:
            stats = (await r.json())["system"]
        report = {"comfyui_version": stats.get("comfyui_version"), "pytorch_version": stats.get("pytorch_version"),
                  "argv": stats.get("argv")}
        report["saved_graphs"] = await saved_graphs_load(http, server)
        report["templates"] = await templates(http, server)
        report["workflows"] = await run_workflows(http, server)
        report["queue_time"] = await queue_time_refusals(http, server)
        report["run_time_refusals"] = await run_time_refusals(http, server)
        report["cancel"] = [await cancel_latency(http, server, phase)
                            for phase in ("denoising", "temp-lora", "temp-lora first step")]
        report["error_payload"] = await error_payload(http, server)
        report["determinism"] = await determinism(http, server)
    return report


def failures(report: dict) -> list[str]:
    found = [f"{w['workflow']} failed" for w in report["workflows"] if not w["ok"]]
    found += [f"saved graph {g['workflow']}: {p}" for g in report["saved_graphs"] for p in g["problems"]]
    for w in report["workflows"]:
        for node in w.get("nodes", {}).values():
            if node["class_type"].endswith(("RunEpisode", "ActionChunk", "DecodeChunk")) and not node["previews"]:
                found.append(f"{w['workflow']}: no preview from {node['class_type']}")
    found += [f"queue time: {c['case']} answered {c['status']}" for c in report["queue_time"]
              if c["status"] != 400 and "beside" not in c["case"]]
    found += [f"queue time: {c['case']}: no node refused" for c in report["queue_time"] if not c["refused_nodes"]]
    found += [f"queue time: {c['case']}: errors on {c['error_inputs']}, not once on {c['expected_input']}"
              for c in report["queue_time"] if c["expected_input"] and c["error_inputs"] != [c["expected_input"]]]
    found += [f"run time: {c['case']}: {c.get('result')} {c.get('message')}" for c in report["run_time_refusals"]
              if not c["ok"]]
    if not report["templates"]["ok"] or report["templates"]["other_files_served"]:
        found.append(f"templates: {report['templates']}")
    found += [f"determinism: {d['workflow']} differs by {d['max_difference']}" for d in report["determinism"]
              if not d["ok"]]
    message = report["error_payload"]["message"]
    if "/" + PACK_DIR.parts[1] in message or str(PACK_DIR) in message or "." in (report["error_payload"].get(
            "exception_type") or ""):
        found.append(f"error payload shows a server path or module path: {report['error_payload']}")
    found += [f"cancel during {c['phase']}: {c['result']}" for c in report["cancel"]
              if c["result"] != "execution_interrupted"]
    # Cancel is checked at every layer of the UNet, forward and backward: under a second in every phase.
    found += [f"cancel during {c['phase']} took {c['seconds_to_stop']} s" for c in report["cancel"]
              if c["seconds_to_stop"] > 1.0]
    if report["error_payload"]["execution_error_bytes"] > 10_000:
        found.append(f"error payload of {report['error_payload']['execution_error_bytes']} bytes")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--out", type=Path, help="write the whole report here (JSON)")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args.server.rstrip("/")))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    problems = failures(report)
    for problem in problems:
        print("FAILED:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
