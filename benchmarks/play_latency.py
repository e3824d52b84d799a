#!/usr/bin/env python
"""`slowfast-vgen play` as a player feels it, in a real browser: Playwright drives Chromium (the system's,
`apt-get install chromium`) against the product's own command, started here as a process of its own.

1. Latency: taps of the arrow keys from rest, each one waiting for the world to stand still; the time from the
   key press to the first frame of its chunk painted, as the page measures it (`window.playStats`).
2. Held key: a key held for `--hold` seconds; the frames painted per second (playback) and the frames made
   per second (generation: frames per chunk over the seconds a chunk takes), against the model's fps.
3. Soak: keys held in turn (right, down, left, up, a few seconds each) for `--soak` seconds; the server's
   resident memory (RSS) sampled all along.

    python benchmarks/play_latency.py --taps 20 --hold 20 --soak 600 --out outputs/play_latency.json
    python benchmarks/play_latency.py --taps 0 --hold 5 --soak 0 --screenshot docs/images/play.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SOAK_KEYS = ("ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def start_server(extra: list[str], output_dir: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "slowfast_vgen", "play", "--no-browser", "--port", "0", "--output-dir",
               output_dir, *extra]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        line = server.stdout.readline()
        found = re.search(r"(http://\S+/)", line)
        if found:
            return server, found.group(1)
        if server.poll() is not None:
            break
    server.kill()
    raise SystemExit(f"`{' '.join(command)}` did not start.")


def wait_still(page, rest: float = 0.6) -> None:
    """Until nothing is being made or waits to be painted, then `rest` seconds more (the chunk's frames play
    out; the server makes chunks ahead meanwhile)."""
    page.wait_for_function("!document.getElementById('status').className.includes('busy') && "
                           "document.getElementById('status').textContent.startsWith('ready')", timeout=120_000)
    time.sleep(rest)


def taps(page, count: int, rest: float = 0.6) -> tuple[list[float], list[float], list[bool]]:
    """Latencies of `count` taps from rest; of each tap whose chunk was made when asked, the part that is not
    the server making it (sending, decoding, waiting for the next paint); and which were made ahead."""
    keys = ("ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp")
    latencies, overheads, ahead = [], [], []
    for number in range(count):
        wait_still(page, rest)
        seen = page.evaluate("window.playStats.latencies.length")
        page.keyboard.press(keys[number % len(keys)])
        page.wait_for_function(f"window.playStats.latencies.length > {seen}", timeout=120_000)
        latency, made, was_ahead = page.evaluate("[window.playStats.latencies.at(-1), "
                                                 "window.playStats.chunkSeconds.at(-1), window.playStats.madeAhead.at(-1)]")
        latencies.append(latency / 1000)
        ahead.append(was_ahead)
        if not was_ahead:
            overheads.append(latency / 1000 - made)
    return latencies, overheads, ahead


def hold(page, key: str, seconds: float) -> dict:
    wait_still(page)
    chunks_before = page.evaluate("window.playStats.chunkSeconds.length")
    page.keyboard.down(key)
    time.sleep(1.0)  # the first chunk's latency is measured by the taps
    t0, paints0 = page.evaluate("[performance.now(), window.playStats.paints]")
    time.sleep(seconds)
    t1, paints1 = page.evaluate("[performance.now(), window.playStats.paints]")
    page.keyboard.up(key)
    chunk_seconds = page.evaluate("window.playStats.chunkSeconds")[chunks_before:]
    frames_per_chunk = 4
    return {"key": key, "seconds": round((t1 - t0) / 1000, 2),
            "painted_fps": round((paints1 - paints0) / ((t1 - t0) / 1000), 2),
            "chunks": len(chunk_seconds), "chunk_seconds_median": round(statistics.median(chunk_seconds), 3),
            "made_fps": round(frames_per_chunk / statistics.median(chunk_seconds), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taps", type=int, default=20, help="key taps from rest, for the latency (default 20)")
    parser.add_argument("--rest", type=float, default=0.6,
                        help="seconds of rest before each tap, once the last chunk is painted (default 0.6)")
    parser.add_argument("--hold", type=float, default=20, help="seconds of one held key (default 20; 0: none)")
    parser.add_argument("--soak", type=float, default=600, help="seconds of held keys for RSS (default 600; 0: none)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--screenshot", help="also save a screenshot of the page here at the end")
    parser.add_argument("--out", help="also write the measurements as JSON")
    parser.add_argument("play_args", nargs="*", help="arguments for `slowfast-vgen play` (after --)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results: dict = {"play_args": args.play_args, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                     "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as scratch:
        server, url = start_server(args.play_args, str(Path(scratch) / "out"))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch_persistent_context(
                    str(Path(scratch) / "profile"), executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS,
                    viewport={"width": 1200, "height": 800})
                page = browser.new_page()
                page.goto(url)
                page.wait_for_selector(".thumb")
                results["rss_start_mib"] = round(rss_mib(server.pid), 1)
                if args.taps:
                    latencies, overheads, ahead = taps(page, args.taps, args.rest)
                    latency = {"rest_s": args.rest, "median": round(statistics.median(latencies), 3),
                               "p95": round(percentile(latencies, 0.95), 3), "max": round(max(latencies), 3),
                               "all": [round(v, 3) for v in latencies], "made_ahead": sum(ahead)}
                    asked = [v for v, was_ahead in zip(latencies, ahead) if not was_ahead]
                    made = [v for v, was_ahead in zip(latencies, ahead) if was_ahead]
                    if made:
                        latency["made_ahead_median"] = round(statistics.median(made), 3)
                    if asked:
                        latency["made_when_asked_median"] = round(statistics.median(asked), 3)
                        latency["beyond_making_the_chunk_median"] = round(statistics.median(overheads), 3)
                        latency["beyond_making_the_chunk_p95"] = round(percentile(overheads, 0.95), 3)
                    results["latency_s"] = latency
                    print(f"key press -> first frame painted, {args.taps} taps after {args.rest} s of rest: median "
                          f"{latency['median']} s, p95 {latency['p95']} s; {sum(ahead)} made ahead (median "
                          f"{latency.get('made_ahead_median')} s), {len(asked)} made when asked (median "
                          f"{latency.get('made_when_asked_median')} s, of which beyond making the chunk "
                          f"{latency.get('beyond_making_the_chunk_median')} s)", flush=True)
                if args.hold:
                    results["held"] = hold(page, "ArrowRight", args.hold)
                    print(f"held key: {results['held']}", flush=True)
                if args.soak:
                    samples, started, turn = [], time.time(), 0
                    while time.time() - started < args.soak:
                        key = SOAK_KEYS[turn % len(SOAK_KEYS)]
                        page.keyboard.down(key)
                        time.sleep(5)
                        page.keyboard.up(key)
                        turn += 1
                        samples.append((round(time.time() - started, 1), round(rss_mib(server.pid), 1)))
                    chunks = page.evaluate("window.playStats.chunkSeconds.length")
                    results["soak"] = {"seconds": round(time.time() - started, 1), "chunks": chunks,
                                       "rss_mib": samples}
                    rss = [mib for _, mib in samples]
                    third = max(1, len(rss) // 3)
                    print(f"soak: {chunks} chunks in {results['soak']['seconds']} s; RSS {rss[0]} MiB at first, "
                          f"median of the last third {statistics.median(rss[-third:])} MiB, max {max(rss)} MiB",
                          flush=True)
                if args.screenshot:
                    wait_still(page)
                    page.screenshot(path=args.screenshot)
                browser.close()
        finally:
            server.terminate()
            server.wait(60)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
