"""The page's server: aiohttp, one WebSocket per browser tab, one model thread for every tab.

Each tab is its own player with its own episode (`PlaySession`); a second tab is a second player, not a
view of the first. The model runs on a single worker thread shared by all players, since a memory is applied
to the shared UNet for the length of a call; two tabs therefore take turns and each plays at half the rate.

Per player, one task (`Player.pump`) does everything that touches the session, in the order it was asked:
commands (branch, preset, save, load, export, split) first, then the next chunk. Inputs are "latest wins": a
key press or typed action replaces the one waiting, so lag never builds up. While a key is held, the next
chunk is made while the current one plays (the page reports which chunk it plays).

While a player has nothing to make, it makes ahead (`--no-ahead` turns this off): the next chunk of the
action last played, then of every key's action, each kept until the episode moves on (`PlaySession.
make_ahead`). A key pressed then plays at once. A chunk being made ahead gives way, within one denoising
step, to any request that needs the model: another action or command of its player, or any work of
another player.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import cv2
import numpy as np
from aiohttp import WSMsgType, web

from ..pipelines import EpisodicMemory, SlowFastVGenPipeline
from .controls import MAX_ACTION_CHARS, action_problem, key_actions, known_actions
from .memory_view import memory_summary, panorama_png
from .session import Cancelled, PlayError, PlaySession

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger(__name__)


@dataclass
class PlayContext:
    """What every player shares: the model, `generate`'s settings, and where files go."""

    pipe: SlowFastVGenPipeline
    args: argparse.Namespace
    preset: str
    memory: EpisodicMemory | None = None
    output_dir: Path = Path("outputs/play")
    remote: bool = False  # served beyond this machine: files stay inside output_dir
    world_reverse_actions: dict[str, str] | None = None
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="play-model"))
    players: set = field(default_factory=set)
    closing: set = field(default_factory=set)  # players being closed (their tasks, kept from the collector)
    ahead: bool = True  # make each key's next chunk while the world stands still
    waiting: int = 0  # requests of players for the model thread, queued or running (chunks made ahead give way)

    def resolve(self, name: Any, what: str) -> Path:
        """A file name from the page: relative to `output_dir`; outside it only when served on this machine."""
        if not isinstance(name, str) or not name.strip():
            raise PlayError(f"Give a file name for the {what}.")
        path = Path(name.strip()).expanduser()
        path = path if path.is_absolute() else self.output_dir / path
        if self.remote and not path.resolve().is_relative_to(self.output_dir.resolve()):
            raise PlayError(f"{name}: the page is served beyond this machine (--allow-remote), so files stay in "
                            f"{self.output_dir}; give a name inside it.")
        return path


CONTEXT = web.AppKey("play", PlayContext)


def png_url(frame: np.ndarray | bytes) -> str:
    """A frame (H,W,3 uint8 RGB) or PNG bytes as a data URL the page can paint."""
    if isinstance(frame, np.ndarray):
        frame = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
    return "data:image/png;base64," + base64.b64encode(frame).decode("ascii")


def memory_message(session: PlaySession) -> dict:
    state = session.current
    panorama = panorama_png(state.memory)
    return {"memory": memory_summary(state.memory, state.preset), "panorama": png_url(panorama) if panorama else None,
            "chunks": session.chunks, "oldest_branch": session.oldest_kept, "split": session.split}


class Player:
    """One tab: its session, its inputs, and the task that plays them."""

    def __init__(self, ws: web.WebSocketResponse, context: PlayContext):
        self.ws, self.context = ws, context
        self.session: PlaySession | None = None
        self.pending: str | None = None  # the action waiting (latest wins)
        self.held: str | None = None  # the action of the key held down
        self.last_action: str | None = None
        self.paused = False
        self.step_requested = False
        self.played = 0  # the chunk the page is playing
        self.commands: collections.deque = collections.deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.task: asyncio.Task | None = None
        self.keys: dict[str, str] = {}  # key -> action, as the page maps them
        self.making_ahead: str | None = None  # the action whose chunk is being made ahead
        self.give_way = threading.Event()  # asks the chunk being made ahead to stop
        self.refused_ahead: set[str] = set()  # actions refused from the current state (not tried again)

    async def in_worker(self, function: Callable, *args):
        """Run a request on the model thread (counted, so that chunks made ahead give way to it)."""
        self.context.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.context.worker, function, *args)
        finally:
            self.context.waiting -= 1

    async def send(self, message: dict) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_json(message)
            except (ConnectionError, RuntimeError):  # the tab went away mid-send
                self.closed = True

    # ------------------------------------------------------------------ model-thread work

    def _open(self) -> dict:
        context = self.context
        self.session = PlaySession(context.pipe, context.args, context.preset, context.memory)
        config = context.pipe.config
        self.keys = key_actions(config, context.world_reverse_actions)
        return {"type": "hello", "keys": self.keys,
                "actions": known_actions(config, context.world_reverse_actions), "presets": self.session.presets,
                "preset": context.preset, "fps": context.args.fps, "size": context.pipe.native_size,
                "model": str(context.args.model), "world": None if context.args.image else context.args.world,
                "max_action_chars": MAX_ACTION_CHARS, "output_dir": str(context.output_dir),
                "frames": [png_url(next(iter(self.session.spooled_frames()))[0])], **memory_message(self.session)}

    def _chunk(self, action: str) -> dict:
        chunk = self.session.step(action)
        lane = [png_url(f) for f in chunk.lane_frames] if chunk.lane_frames is not None else None
        return {"type": "chunk", "index": chunk.index, "action": action, "seconds": chunk.seconds, "ahead": chunk.ahead,
                "frames": [png_url(f) for f in chunk.frames], "lane": lane, **memory_message(self.session)}

    def _episode(self, kind: str, frame: np.ndarray, **extra) -> dict:
        return {"type": kind, "frames": [png_url(frame)], **extra, **memory_message(self.session)}

    def _command(self, message: dict) -> dict:
        """A command of the page, run on the model thread; returns the reply."""
        kind, session, context = message["type"], self.session, self.context
        if kind == "branch":
            session.branch(message.get("chunk"))
            frame = next(iter(session._last_frame()))
            return self._episode("branched", frame, index=session.chunks)
        if kind == "preset":
            session.set_preset(message.get("name"))
            return {"type": "info", "message": f"Memory preset {message.get('name')}: a new memory from here on.",
                    **memory_message(session)}
        if kind == "split":
            session.set_split(bool(message.get("on")))
            said = "on: each action is also played without memory." if session.split else "off."
            return {"type": "info", "message": f"Split view {said}", **memory_message(session)}
        if kind == "save":
            path = session.save_memory(context.resolve(message.get("path"), "memory"), bool(message.get("force")))
            return {"type": "info", "message": f"Memory saved to {path}."}
        if kind == "load":
            frame = session.load_memory(context.resolve(message.get("path"), "memory"))[-1]
            return self._episode("episode", frame, message=f"Loaded {message.get('path')}: a new episode with it.")
        if kind == "export":
            video = session.export(context.resolve(message.get("path"), "video"), bool(message.get("force")))
            return {"type": "info", "message": f"Exported {video} (with its memory and summary); continue it with "
                    f"`slowfast-vgen generate --memory {video.with_suffix('.memory.safetensors')}` "
                    f"(the exact command is in {video.with_suffix('.json')})."}
        raise PlayError(f"Unknown request {kind!r}.")

    # ------------------------------------------------------------------ the loop

    def next_action(self) -> str | None:
        if self.step_requested:
            self.step_requested = False
            action, self.pending = self.pending or self.last_action or self.held, None
            return action or key_actions(self.context.pipe.config, self.context.world_reverse_actions).get("stay")
        if self.paused:
            return None
        if self.pending is not None:
            action, self.pending = self.pending, None
            return action
        if self.held is not None and self.session.chunks <= self.played:
            return self.held
        return None

    def ahead_action(self) -> str | None:
        """The action whose next chunk to make ahead now: the key held, the action last played, then each
        key's action in the page's order; None when all are made (or ahead is off)."""
        if not self.context.ahead or self.session is None or self.closed:
            return None
        candidates = [self.held, self.last_action, *self.keys.values()]
        memory = self.session.current.memory
        for action in dict.fromkeys(a for a in candidates if a):
            # An action the panorama has not seen move is made when asked: its first chunk samples a probe
            # chunk, which cannot give way, and would hold up the key that is pressed meanwhile.
            if action not in self.refused_ahead and not self.session.made_ahead(action) and \
                    not self.context.pipe.probes(memory, action):
                return action
        return None

    def _ahead_cancelled(self) -> bool:  # asked on the model thread after every step of a chunk made ahead
        return self.give_way.is_set() or self.context.waiting > 0

    async def make_ahead(self, action: str) -> None:
        self.making_ahead = action
        self.give_way.clear()
        loop = asyncio.get_running_loop()
        try:  # not `in_worker`: it would count as a request, and make itself give way
            await loop.run_in_executor(self.context.worker, self.session.make_ahead, action, self._ahead_cancelled)
        except Cancelled:
            pass
        except PlayError:  # refused (the same refusal reaches the page if the action is asked for)
            self.refused_ahead.add(action)
        except Exception:  # noqa: BLE001 - a bug: logged; the action is then made when asked, as before
            log.exception("play: unexpected error making a chunk ahead")
            self.refused_ahead.add(action)
        finally:
            self.making_ahead = None

    async def pump(self) -> None:
        """Run commands and chunks, one at a time, until the tab closes; make chunks ahead in between."""
        while not self.closed:
            command = self.commands.popleft() if self.commands else None
            action = None if command is not None else self.next_action()
            if command is None and action is None:
                ahead = self.ahead_action()
                if ahead is not None:
                    await self.make_ahead(ahead)
                    continue
                self.wake.clear()
                await self.wake.wait()
                continue
            self.refused_ahead.clear()  # the episode moves on: what was refused may not be any more
            try:
                if command is not None:
                    reply = await self.in_worker(self._command, command)
                    if reply["type"] in ("branched", "episode"):
                        self.played = self.session.chunks
                else:
                    self.last_action = action
                    await self.send({"type": "busy", "action": action})
                    reply = await self.in_worker(self._chunk, action)
            except PlayError as error:
                reply = {"type": "error", "message": str(error)}
            except Exception as error:  # noqa: BLE001 - a bug: reported in the page, the server plays on
                log.exception("play: unexpected error")
                reply = {"type": "error", "message": f"Unexpected error {type(error).__name__}: {error} (a bug; the "
                                                     "traceback is in the server's terminal)."}
            await self.send(reply)

    def receive(self, message: Any) -> str | None:
        """Take one message of the page; returns a refusal to show, or None."""
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return "Malformed request."
        kind = message["type"]
        if kind in ("hold", "action", "step") and (kind != "step" or message.get("action") is not None):
            problem = action_problem(message.get("action"))
            if problem:
                return problem
            self.pending = message["action"].strip()
            if kind == "hold":
                self.held = self.pending
        if kind in ("branch", "preset", "split", "save", "load", "export") or \
                (kind in ("hold", "action", "step") and self.pending != self.making_ahead):
            self.give_way.set()  # the model is asked for something other than the chunk being made ahead
        if kind == "release":
            self.held = None
        elif kind == "pause":
            self.paused = True
        elif kind == "resume":
            self.paused = False
        elif kind == "step":
            self.step_requested = True
        elif kind == "played":
            if isinstance(message.get("chunk"), int):
                self.played = message["chunk"]
        elif kind in ("branch", "preset", "split", "save", "load", "export"):
            self.commands.append(message)
        elif kind not in ("hold", "action"):
            return f"Unknown request {kind!r}."
        self.wake.set()
        return None

    async def close(self) -> None:
        """Stop after the chunk in flight, and free the session (on the model thread, after that chunk)."""
        self.closed = True
        self.give_way.set()
        self.wake.set()
        if self.task is not None:
            await self.task
        if self.session is not None:
            await self.in_worker(self.session.close)
        self.context.players.discard(self)


def same_origin(request: web.Request) -> bool:
    """A page of another site must not drive the model (nor write files) through this socket."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    if not same_origin(request):
        raise web.HTTPForbidden(text="This page's socket takes requests from its own page only.")
    context = request.app[CONTEXT]
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=2**20)
    await ws.prepare(request)
    player = Player(ws, context)
    context.players.add(player)
    try:
        await player.send(await player.in_worker(player._open))
        player.task = asyncio.create_task(player.pump())
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                refusal = player.receive(message.json())
            except ValueError:
                refusal = "Malformed request (not JSON)."
            if refusal:
                await player.send({"type": "error", "message": refusal})
    finally:
        # aiohttp cancels this handler when the tab goes away: the player is closed in a task of its own, which
        # finishes the chunk in flight and frees the session whether or not this handler is cancelled again.
        closing = asyncio.ensure_future(player.close())
        context.closing.add(closing)
        closing.add_done_callback(context.closing.discard)
        await asyncio.shield(closing)
    return ws


def make_app(context: PlayContext) -> web.Application:
    """The aiohttp application of the page."""
    app = web.Application()
    app[CONTEXT] = context
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_static("/static", STATIC_DIR)

    async def close_players(app: web.Application) -> None:
        for player in list(context.players):
            await player.ws.close()

    app.on_shutdown.append(close_players)
    return app


async def save_episodes(context: PlayContext, stamp: str | None = None) -> list[Path]:
    """Stop every player after its chunk in flight and export each episode of at least one chunk, marked
    interrupted, as `generate` keeps an interrupted run; returns the videos written."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    saved = []
    for number, player in enumerate(sorted(context.players, key=id), start=1):
        player.closed = True
        player.give_way.set()
        player.wake.set()
        if player.task is not None:
            await player.task
        session = player.session
        if session is None or session.chunks == 0:
            continue
        video = context.output_dir / f"play-{stamp}-{number}.mp4"
        loop = asyncio.get_running_loop()
        try:
            saved.append(await loop.run_in_executor(context.worker, lambda: session.export(video, interrupted=True)))
        except (ValueError, OSError) as error:
            print(f"slowfast-vgen play: could not save an episode to {video}: {error}", file=sys.stderr)
    await asyncio.gather(*context.closing)
    return saved
