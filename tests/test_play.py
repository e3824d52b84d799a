"""`slowfast-vgen play` at the server level: the page's WebSocket driven by aiohttp's test client on the tiny
model, without a browser (tests/test_play_browser.py drives a real one)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

aiohttp = pytest.importorskip("aiohttp")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from slowfast_vgen.cli import ArgumentParser  # noqa: E402
from slowfast_vgen.cli import main as cli_main  # noqa: E402
from slowfast_vgen.data.worlds import world_kind  # noqa: E402
from slowfast_vgen.pipelines import (  # noqa: E402
    DEFAULT_GUIDANCE,
    EpisodicMemory,
    SlowFastVGenPipeline,
    WorldModelSpec,
    build_pipeline,
    memory_generator_for,
)
from slowfast_vgen.play.command import add_play_command, bind, check_play_arguments  # noqa: E402
from slowfast_vgen.play.server import PlayContext, make_app  # noqa: E402
from slowfast_vgen.video_files import read_video  # noqa: E402

FAST = ["--steps", "1"]


def play_args(model: Path, output_dir: Path, *extra: str):
    parser = ArgumentParser(prog="slowfast-vgen")
    add_play_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["play", "--model", str(model), "--output-dir", str(output_dir), *FAST, *extra])
    return args, check_play_arguments(args)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    pipe = SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def serve(pipe, model: Path, output_dir: Path, scenario, *extra: str):
    """Run `scenario(client, context)` against a fresh server of the page; returns its result."""
    args, preset = play_args(model, output_dir, *extra)
    context = PlayContext(pipe, args, preset, output_dir=output_dir,
                          world_reverse_actions=world_kind("toyworld").reverse_actions())

    async def main():
        async with TestServer(make_app(context)) as server, TestClient(server) as client:
            return await scenario(client, context)

    try:
        return asyncio.run(main())
    finally:
        context.worker.shutdown(wait=True)


async def until(ws, kind: str, timeout: float = 60) -> dict:
    """The next message of `kind`, skipping progress ("busy"); an unexpected error fails the test."""
    while True:
        message = await ws.receive_json(timeout=timeout)
        if message["type"] == kind:
            return message
        assert message["type"] in ("busy", "info", "chunk"), message


def frames_of(message: dict) -> np.ndarray:
    decoded = [cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
               for url in message["frames"]]
    return np.stack([cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in decoded])


async def play(ws, *actions: str) -> list[dict]:
    chunks = []
    for action in actions:
        await ws.send_json({"type": "action", "action": action})
        chunks.append(await until(ws, "chunk"))
    return chunks


def test_an_action_gets_a_chunk_and_keys_come_from_the_model(pipe, tiny_pipe_dir, tmp_path):
    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        hello = await ws.receive_json()
        chunk = (await play(ws, hello["keys"]["left"]))[0]
        await ws.close()
        return hello, chunk

    hello, chunk = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    # The tiny model's folder has no action table: the keys come from its world's (ToyWorld) reverse actions.
    assert hello["keys"] == {"up": "move up", "down": "move down", "left": "move left", "right": "move right",
                             "stay": "stay"}
    assert hello["preset"] == "panorama" and "none" in hello["presets"] and "poses" not in hello["presets"]
    assert chunk["index"] == 1 and chunk["action"] == "move left" and chunk["chunks"] == 1
    assert frames_of(chunk).shape == (4, pipe.native_size, pipe.native_size, 3)
    assert chunk["memory"]["updates"] == 1 and chunk["memory"]["bytes"] > 0


def test_held_key_stays_one_chunk_ahead_of_playback_and_latest_input_wins(pipe, tiny_pipe_dir, tmp_path):
    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        await ws.receive_json()
        await ws.send_json({"type": "hold", "action": "move left"})
        first = await until(ws, "chunk")
        await ws.send_json({"type": "played", "chunk": 1})  # chunk 1 plays: chunk 2 is made meanwhile
        second = await until(ws, "chunk")
        with pytest.raises(asyncio.TimeoutError):  # chunk 2 not played yet: nothing more is made
            await until(ws, "chunk", timeout=1.5)
        # Two inputs while nothing plays: the latest wins, the earlier one is never made.
        await ws.send_json({"type": "release"})
        await ws.send_json({"type": "action", "action": "move up"})
        await ws.send_json({"type": "action", "action": "stay"})
        third = await until(ws, "chunk")
        await ws.send_json({"type": "played", "chunk": 3})
        extra = None
        try:
            extra = await until(ws, "chunk", timeout=1.5)
        except asyncio.TimeoutError:
            pass
        await ws.close()
        return first, second, third, extra

    first, second, third, extra = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    assert (first["index"], second["index"], third["index"]) == (1, 2, 3)
    assert third["action"] == "stay" and extra is None


def test_branch_at_chunk_k_equals_regenerating_from_memory_k(pipe, tiny_pipe_dir, tmp_path):
    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        hello = await ws.receive_json()
        played = await play(ws, "move left", "move up", "move right")
        await ws.send_json({"type": "branch", "chunk": 1})
        branched = await until(ws, "branched")
        await ws.send_json({"type": "save", "path": "k1.memory.safetensors"})
        await until(ws, "info")
        again = await play(ws, "move up")  # the same action as before the branch: the same chunk
        await ws.send_json({"type": "branch", "chunk": 1})
        await until(ws, "branched")
        other = await play(ws, "move down")
        await ws.close()
        return hello, played, branched, again[0], other[0]

    hello, played, branched, again, other = serve(pipe, tiny_pipe_dir, tmp_path, scenario, "--lora-preset", "paper")
    assert branched["chunks"] == 1 and np.array_equal(frames_of(branched)[-1], frames_of(played[0])[-1])
    assert again["index"] == 2 and np.array_equal(frames_of(again), frames_of(played[1]))

    # Regenerated outside the server, as `generate` samples: chunk 1 from the start, then chunk 2 from memory 1
    # as saved to its file (the generators go on from where chunk 1 left them).
    generator = torch.Generator().manual_seed(0)
    settings = {"num_inference_steps": 1, "guidance_scale": DEFAULT_GUIDANCE}
    memory_generator = memory_generator_for(generator)
    start = pipe.start_latents(world_kind("toyworld").demo(0, pipe.native_size)[0], resize=True)
    first = next(pipe.stream_episode(["move left"], start_latents=start, memory_settings="paper", generator=generator,
                                     memory_generator=memory_generator, **settings))
    saved = EpisodicMemory.load(tmp_path / "k1.memory.safetensors")
    assert all(torch.equal(saved.lora[key], first.memory.lora[key]) for key in saved.lora)
    second = next(pipe.stream_episode(["move down"], start_latents=first.latents, memory=saved, generator=generator,
                                      memory_generator=memory_generator, **settings))
    regenerated = (pipe.postprocess(second.latents, "np")[0] * 255).round().astype(np.uint8)
    assert other["index"] == 2 and np.array_equal(frames_of(other), regenerated)
    assert not np.array_equal(frames_of(other), frames_of(played[1]))


def test_export_then_generate_memory_continues_bit_identically(pipe, tiny_pipe_dir, tmp_path):
    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        await ws.receive_json()
        await play(ws, "move left", "stay")
        await ws.send_json({"type": "export", "path": "ep.mp4"})
        exported = await until(ws, "info")
        await ws.send_json({"type": "load", "path": "ep.memory.safetensors"})
        episode = await until(ws, "episode")
        await play(ws, "move right", "move up")
        await ws.send_json({"type": "export", "path": "cont.mp4"})
        await until(ws, "info")
        await ws.close()
        return exported, episode

    exported, episode = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    assert "Exported" in exported["message"] and episode["chunks"] == 0
    summary = json.loads((tmp_path / "ep.json").read_text())
    assert summary["actions"] == ["move left", "stay"] and summary["interrupted"] is False
    assert summary["frames"] == 9 and len(read_video(tmp_path / "ep.mp4")) == 9
    assert (tmp_path / "ep.last.png").is_file() and "--image" in summary["play"]["continue_with"]

    code = cli_main(["generate", str(tmp_path / "gen.mp4"), "--model", str(tiny_pipe_dir), "--memory",
                     str(tmp_path / "ep.memory.safetensors"), "--image", str(tmp_path / "ep.last.png"),
                     "--actions", "move right; move up", *FAST])
    assert code == 0
    assert np.array_equal(read_video(tmp_path / "gen.mp4"), read_video(tmp_path / "cont.mp4"))
    ours, theirs = load_file(tmp_path / "cont.memory.safetensors"), load_file(tmp_path / "gen.memory.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_bad_actions_are_refused_and_the_server_plays_on(pipe, tiny_pipe_dir, tmp_path):
    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        await ws.receive_json()
        errors = []
        for action in ("", "   ", "x" * 10_000):
            await ws.send_json({"type": "action", "action": action})
            errors.append(await until(ws, "error"))
        await ws.send_json({"type": "branch", "chunk": 7})
        errors.append(await until(ws, "error"))
        await ws.send_str("not json")
        errors.append(await until(ws, "error"))
        chunk = (await play(ws, "stay"))[0]
        await ws.close()
        return errors, chunk

    errors, chunk = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    assert "empty" in errors[0]["message"] and "empty" in errors[1]["message"]
    assert "10,000 characters" in errors[2]["message"]
    assert "no chunk 7" in errors[3]["message"] and "Malformed" in errors[4]["message"]
    assert chunk["index"] == 1


def test_a_memory_of_another_model_is_refused_with_generates_message(pipe, tiny_pipe_dir, tmp_path, capsys):
    other = build_pipeline(WorldModelSpec.tiny(), seed=1)
    foreign = tmp_path / "foreign.memory.safetensors"
    other.new_memory().save(foreign)

    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        await ws.receive_json()
        await ws.send_json({"type": "load", "path": str(foreign)})
        error = await until(ws, "error")
        chunk = (await play(ws, "stay"))[0]
        await ws.close()
        return error, chunk

    error, chunk = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    assert cli_main(["generate", str(tmp_path / "g.mp4"), "--model", str(tiny_pipe_dir), "--memory", str(foreign),
                     "--actions", "stay", *FAST]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == f"slowfast-vgen generate: {error['message']}" and "fingerprint" in said
    assert chunk["index"] == 1  # refused before anything changed


def test_each_tab_is_its_own_player_and_a_closed_tab_leaves_nothing(pipe, tiny_pipe_dir, tmp_path):
    async def scenario(client, context):
        one, two = await client.ws_connect("/ws"), await client.ws_connect("/ws")
        await one.receive_json(), await two.receive_json()
        first = (await play(one, "move left"))[0]
        second = (await play(two, "move up"))[0]
        sessions = [player.session for player in context.players]
        await one.send_json({"type": "hold", "action": "move left"})
        await until(one, "busy")
        await one.close()  # mid-chunk
        await two.close()
        for _ in range(200):
            if not context.players:
                break
            await asyncio.sleep(0.05)
        players_left = len(context.players)
        again = await client.ws_connect("/ws")
        await again.receive_json()
        third = (await play(again, "stay"))[0]
        await again.close()
        return first, second, sessions, players_left, third

    first, second, sessions, players_left, third = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    assert first["index"] == second["index"] == 1  # separate episodes
    assert players_left == 0 and all(s.spool.closed and not s.states for s in sessions)
    assert third["index"] == 1


def test_a_socket_from_another_site_is_refused(pipe, tiny_pipe_dir, tmp_path):
    async def scenario(client, context):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
        page = await client.get("/")
        return refused.value.status, page.status, await page.text()

    status, page_status, page = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    assert status == 403 and page_status == 200 and "/static/play.js" in page


def test_port_in_use_and_remote_host_are_refused_before_the_model_loads(tiny_pipe_dir, tmp_path, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(SystemExit, match=rf"--port {port}: the port is already in use.*--port"):
            bind("127.0.0.1", port)
        code = cli_main(["play", "--model", str(tiny_pipe_dir), "--port", str(port), "--no-browser",
                         "--output-dir", str(tmp_path)])
    finally:
        taken.close()
    assert code == 2 and "already in use" in capsys.readouterr().err
    code = cli_main(["play", "--model", str(tiny_pipe_dir), "--host", "0.0.0.0", "--no-browser"])
    error = capsys.readouterr().err
    assert code == 2 and "no authentication" in error and "--allow-remote" in error
    args, _ = play_args(tiny_pipe_dir, tmp_path, "--host", "0.0.0.0", "--allow-remote")
    context = PlayContext(None, args, "none", output_dir=tmp_path, remote=True)
    assert context.resolve("a.mp4", "video") == tmp_path / "a.mp4"
    with pytest.raises(ValueError, match="stay in"):
        context.resolve("/etc/passwd", "video")
    assert not list(tmp_path.iterdir())


def test_ctrl_c_saves_the_episode_so_far_as_an_interrupted_run(tiny_pipe_dir, tmp_path):
    server = subprocess.Popen(
        [sys.executable, "-m", "slowfast_vgen", "play", "--model", str(tiny_pipe_dir), "--port", "0", "--no-browser",
         "--output-dir", str(tmp_path), *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = server.stdout.readline()
            found = re.search(r"(http://\S+)/", line)
            url = found.group(1) if found else None
        assert url, server.stderr.read()

        async def two_chunks():
            async with aiohttp.ClientSession() as client, client.ws_connect(f"{url}/ws") as ws:
                await ws.receive_json()
                await play(ws, "move left", "stay")
                await ws.send_json({"type": "hold", "action": "move up"})  # a chunk in flight at Ctrl-C
                await until(ws, "busy")
                server.send_signal(signal.SIGINT)
                while not ws.closed and (await ws.receive()).type != aiohttp.WSMsgType.CLOSED:
                    pass

        asyncio.run(two_chunks())
        out, err = server.communicate(timeout=120)
    finally:
        server.kill()
    assert server.returncode == 128 + signal.SIGINT, err
    saved = Path(re.search(r"Saved the episode so far to (\S+\.mp4)", out).group(1))
    summary = json.loads(saved.with_suffix(".json").read_text())
    assert summary["interrupted"] is True and summary["actions"][:2] == ["move left", "stay"]
    assert saved.with_suffix(".memory.safetensors").is_file()
    assert len(read_video(saved)) == summary["frames"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name or p.name.endswith(".lock")]


def test_keys_come_from_the_models_folder_not_a_toyworld_table():
    from slowfast_vgen.paths import PACKAGE_DIR
    from slowfast_vgen.play.controls import key_actions

    def config(world):
        return json.loads((PACKAGE_DIR / "models" / world / "model_index.json").read_text())

    assert key_actions(config("toyworld")) == {"up": "move up", "down": "move down", "left": "move left",
                                               "right": "move right", "stay": "stay"}
    assert key_actions(config("memory-maze")) == {"up": "walk forward", "down": "walk back", "left": "turn left",
                                                  "right": "turn right", "stay": "stay"}
    chosen = {**config("toyworld"), "play_controls": {"up": "pan up", "stay": "wait"}}
    assert key_actions(chosen)["up"] == "pan up" and key_actions(chosen)["stay"] == "wait"
    assert key_actions({}) == {}  # a model that names no action: the page offers the text box alone


def test_a_long_session_keeps_its_frames_but_only_the_latest_branch_points(pipe, tiny_pipe_dir, tmp_path):
    from slowfast_vgen.play.session import PlayError, PlaySession

    args, _ = play_args(tiny_pipe_dir, tmp_path)
    probe = PlaySession(pipe, args, "paper")
    probe.step("stay")
    probe.step("stay")
    budget = int(probe.current.own_bytes * 2.5)  # room for two chunks' states and a half
    probe.close()
    session = PlaySession(pipe, args, "paper", branch_budget_bytes=budget)
    for action in ("move left", "move up", "move right", "move down", "stay"):
        session.step(action)
    assert [s.branchable for s in session.states] == [True, False, False, False, True, True]
    assert session.oldest_kept == 4 and session.kept_bytes <= budget
    with pytest.raises(PlayError, match="too old to branch"):
        session.branch(2)
    session.branch(0)  # the start is always kept
    assert session.chunks == 0 and session.kept_bytes == 0
    for action in ("move left", "move up"):
        session.step(action)
    video = session.export(tmp_path / "long.mp4")
    assert len(read_video(video)) == session.current.frames == 9
    session.close()


def test_a_chunk_made_ahead_is_the_chunk_the_key_would_make(pipe, tiny_pipe_dir, tmp_path):
    """Made ahead (each key's chunk while the world stands still), a chunk is bit for bit the chunk made when
    asked; chunks made for other keys, and a chunk abandoned half way, change nothing."""
    from slowfast_vgen.play.session import Cancelled, PlayError, PlaySession

    args, _ = play_args(tiny_pipe_dir, tmp_path, "--steps", "2")
    actions = ("move left", "move up", "stay")

    def episode(ahead: bool, split: bool = False) -> list[np.ndarray]:
        session = PlaySession(pipe, args, "paper")
        session.set_split(split)
        chunks = []
        for action in actions:
            if ahead:
                asked = []  # abandoned after its first denoising step: nothing is kept of it
                with pytest.raises(Cancelled):
                    session.make_ahead(action, lambda: asked.append(1) or True)
                assert len(asked) == 1 and not session.made_ahead(action)
                for other in ("move right", "move down", action):
                    session.make_ahead(other)
                assert session.made_ahead(action)
            chunk = session.step(action)
            chunks.append(chunk.frames if not split else np.concatenate([chunk.frames, chunk.lane_frames]))
            assert not session.ahead  # made from the state before: all dropped
        chunks.append(session.current.memory.lora[next(iter(session.current.memory.lora))].numpy().copy())
        if ahead:  # a chunk made from another state is refused, not played
            made = session.make("move left")
            session.step("stay")
            with pytest.raises(PlayError, match="another state"):
                session.play(made)
        session.close()
        return chunks

    for split in (False, True):
        asked, ahead = episode(False, split), episode(True, split)
        for made_when_asked, made_ahead in zip(asked, ahead):
            np.testing.assert_array_equal(made_when_asked, made_ahead)


def test_the_server_makes_each_keys_chunk_while_the_world_stands_still(pipe, tiny_pipe_dir, tmp_path, monkeypatch):
    """Idle, the server makes the next chunk of the last action and of every key; a key then plays what was
    made (nothing is made for it when asked), and a request for another action stops the chunk being made."""
    from slowfast_vgen.play.session import PlaySession

    made: list[tuple[int, str]] = []  # (chunks played when it was made, action)
    original = PlaySession.make

    def counted(self, action, cancelled=None):
        made.append((self.chunks, action))
        return original(self, action, cancelled)

    monkeypatch.setattr(PlaySession, "make", counted)

    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        hello = await ws.receive_json()
        (player,) = context.players
        await play(ws, "move left")
        deadline = time.monotonic() + 60
        while not all(player.session.made_ahead(a) for a in hello["keys"].values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        second = (await play(ws, "move up"))[0]
        await ws.close()
        return hello, second

    hello, second = serve(pipe, tiny_pipe_dir, tmp_path, scenario)
    after_first = [action for chunks, action in made if chunks == 1]
    # The last action first, then each key's, each once; "move up" was played as made, not made again.
    assert after_first == list(dict.fromkeys(["move left", *hello["keys"].values()]))
    assert second["index"] == 2 and second["action"] == "move up"


def test_a_chunk_being_made_ahead_gives_way_to_another_action(pipe, tiny_pipe_dir, tmp_path, monkeypatch):
    from slowfast_vgen.play.session import Cancelled, PlaySession

    outcomes: list[tuple[str, str]] = []
    original = PlaySession.make

    def recorded(self, action, cancelled=None):
        try:
            made = original(self, action, cancelled)
        except Cancelled:
            outcomes.append((action, "gave way"))
            raise
        outcomes.append((action, "made"))
        return made

    monkeypatch.setattr(PlaySession, "make", recorded)

    async def scenario(client, context):
        ws = await client.ws_connect("/ws")
        await ws.receive_json()
        await asyncio.sleep(0.2)  # the start's first key chunk is being made ahead (200 steps: seconds)
        return (await play(ws, "stay"))[0]

    chunk = serve(pipe, tiny_pipe_dir, tmp_path, scenario, "--steps", "200")
    assert chunk["index"] == 1 and chunk["action"] == "stay"
    assert outcomes[:2] == [("move up", "gave way"), ("stay", "made")]


def test_an_action_the_panorama_has_not_seen_move_is_not_made_ahead(pipe):
    """Its first chunk samples a probe chunk, which cannot give way to a key pressed meanwhile."""
    from dataclasses import replace

    from slowfast_vgen.pipelines import TEMP_LORA_PRESETS
    from slowfast_vgen.pipelines.panorama import Panorama

    panorama = replace(Panorama.start(np.zeros((1, 16, 16, 3), np.float32)), motions={"move left": (-4, 0)})
    memory = replace(pipe.new_memory(TEMP_LORA_PRESETS["panorama"]), panorama=panorama)
    assert pipe.probes(memory, "move up") and not pipe.probes(memory, "move left")
    assert not pipe.probes(replace(memory, panorama=replace(panorama, lost=True)), "move up")
    assert not pipe.probes(None, "move up")
    assert not pipe.probes(pipe.new_memory(TEMP_LORA_PRESETS["poses"]), "move up")
