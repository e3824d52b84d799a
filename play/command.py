"""`slowfast-vgen play`: play a world model live in a local web page.

Arrow keys or WASD play the model's actions (read from its folder), a text box any action; holding a key
keeps the world going. The memory is in view (its panorama and trail, its updates and size), can be switched,
saved and loaded as the `.safetensors` files of `generate`, and the episode branches from any chunk of its
timeline and exports as `generate` writes one, so `generate --memory` continues it. Ctrl-C (or SIGTERM) saves
every episode played so far, marked interrupted, as `generate` keeps an interrupted run.

The page has no authentication: it is served on this machine only (127.0.0.1) unless --allow-remote.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import os
import signal
import socket
import sys
import threading
import webbrowser
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..data.worlds import world_kind
from ..generate import add_model_and_start_arguments, check_arguments, load_memory, load_pipeline
from ..pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS, TEMP_LORA_PRESETS
from .session import NO_MEMORY, PlayError, PlaySession

DEFAULT_PORT = 8765


def add_play_command(commands) -> None:
    parser = commands.add_parser("play", help="play a world model live in a local web page",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_start_arguments(parser, "the built-in world of the first frame")
    parser.add_argument("--memory", help="start with this memory adapter (.safetensors), as generate --memory")
    parser.add_argument("--lora-preset", choices=(NO_MEMORY, *TEMP_LORA_PRESETS), default=None,
                        help="the memory preset to start with (default: the model's, as in generate); switch it "
                             "in the page")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="(default %(default)s; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="serve on a --host other machines can reach; the page has no authentication")
    parser.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    parser.add_argument("--output-dir", default="outputs/play",
                        help="where the page's exports and saved memories go, and Ctrl-C saves episodes "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="denoising steps per chunk (default %(default)s)")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                        help="classifier-free guidance scale (default %(default)s)")
    parser.add_argument("--frames-per-chunk", type=int, default=None, help="default: half the context window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=float, default=8.0, help="playback rate (default %(default)s, as generate)")
    parser.add_argument("--no-ahead", action="store_true",
                        help="do not make each key's next chunk while the world stands still (that uses the CPU "
                             "between key presses; without it a key waits for its whole chunk)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also load model weights stored as pickle (.bin); only for files you trust")
    parser.set_defaults(run=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_play_arguments(args: argparse.Namespace) -> str:
    """`generate`'s checks of the shared settings, then play's own; returns the starting memory preset."""
    if not (is_loopback(args.host) or args.allow_remote):
        raise SystemExit(f"--host {args.host} is reachable from other machines and the page has no authentication "
                         "(anyone who reaches it can drive the model and write files in --output-dir); pass "
                         "--allow-remote to serve it anyway, or leave --host out for this machine only.")
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"--port must be from 0 to 65535, got {args.port}.")
    # Fields of generate's namespace that play does not offer: its defaults.
    for name in ("rank", "lr", "steps", "target", "objective", "direction", "action_text", "replay"):
        setattr(args, f"lora_{name}", None)
    args.panorama, args.no_temp_lora, args.actions, args.actions_file = None, False, None, None
    preset, args.lora_preset = args.lora_preset, None if args.lora_preset == NO_MEMORY else args.lora_preset
    check_arguments(args)  # also picks the model's default preset into args.lora_preset
    output_dir = Path(args.output_dir)
    existing = next(folder for folder in [output_dir, *output_dir.parents] if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise SystemExit(f"--output-dir {args.output_dir}: {existing} is not a writable folder.")
    return preset or args.lora_preset


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made before the model loads, so that a port in use is said at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise SystemExit(f"--host {host}: not an address of this machine ({error.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise SystemExit(f"--port {port}: the port is already in use on {host} (another `slowfast-vgen play`?); "
                             f"choose another with --port {port + 1}, or --port 0 for any free one.") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise SystemExit(f"--host {host}: not an address of this machine.") from None
        raise SystemExit(f"--host {host} --port {port}: cannot listen there: {error.strerror}.") from None
    sock.setblocking(False)
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import aiohttp  # noqa: F401 - the optional dependency, named when missing
    except ImportError:
        raise SystemExit("the page needs aiohttp: pip install 'slowfast-vgen[play]' (or pip install aiohttp).") \
            from None
    preset = check_play_arguments(args)
    sock = bind(args.host, args.port)
    # All of the model's work, loading included, on one thread: once a second thread has run torch's
    # parallel operations, its OpenMP threads slow the model thread's by about 1.6x on 2 cores
    # (docs/benchmarks.md, "Playing live").
    worker = ThreadPoolExecutor(1, thread_name_prefix="play-model")
    try:
        pipe, memory, preset = worker.submit(load_model, args, preset).result()
        return asyncio.run(serve(sock, pipe, args, preset, memory, worker))
    finally:
        worker.shutdown(wait=True)
        sock.close()


def load_model(args: argparse.Namespace, preset: str) -> tuple:
    """The pipeline, the starting memory and its preset; refuses a start frame no episode can start from."""
    pipe = load_pipeline(args)
    memory = load_memory(args.memory, pipe)
    if memory is not None:
        preset = PlaySession._preset_of(memory)
    try:  # the start frame, refused here if it cannot start an episode (each tab makes its own)
        PlaySession(pipe, args, preset, memory).close()
    except PlayError as error:
        raise SystemExit(f"--image {args.image!r}: {error}" if args.image else str(error)) from None
    return pipe, memory, preset


async def serve(sock: socket.socket, pipe, args: argparse.Namespace, preset: str, memory,
                worker: ThreadPoolExecutor) -> int:
    from aiohttp import web

    from .server import PlayContext, make_app, save_episodes

    context = PlayContext(pipe, args, preset, memory, Path(args.output_dir), not is_loopback(args.host),
                          world_kind(args.world).reverse_actions(), ahead=not args.no_ahead, worker=worker)
    runner = web.AppRunner(make_app(context), handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    if context.remote:
        print(f"slowfast-vgen play: serving on {host}:{port} for other machines too; the page has NO "
              "authentication: anyone who reaches it can drive the model and write files in "
              f"{args.output_dir}.", file=sys.stderr)
    print(f"slowfast-vgen play: {url} (Ctrl-C saves the episodes and stops)", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    stopped = asyncio.Event()
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        stopped.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            loop.add_signal_handler(signum, stop, signum)
    await stopped.wait()
    print("\nslowfast-vgen play: stopping after the chunks in flight; saving the episodes.", file=sys.stderr)
    for path in await save_episodes(context):
        print(f"Saved the episode so far to {path} (with its memory and summary, marked interrupted).")
    await runner.cleanup()
    await asyncio.gather(*context.closing)  # the tabs' players, freed on the model thread
    context.worker.shutdown(wait=True)
    return 128 + received[0]
