"""The page of `slowfast-vgen play` in a real browser: Playwright drives Debian's Chromium (`apt-get install
chromium`; .ci/run installs it) against the server on the tiny model. Skipped, with the reason, only where no
Chromium or no Playwright can be had; Playwright's own browser download is never used."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading

import pytest

pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from slowfast_vgen.data.worlds import world_kind  # noqa: E402
from slowfast_vgen.pipelines import SlowFastVGenPipeline  # noqa: E402
from slowfast_vgen.play.server import PlayContext, make_app  # noqa: E402

CHROMIUM = os.environ.get("SLOWFAST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright is not installed (pip install playwright; its browser download is not needed)")
    if CHROMIUM is None:
        pytest.skip("no Chromium here (apt-get install chromium); the page is tested at the server level only")
    return sync_playwright


class ServerThread:
    """The page's server on its own event loop in a thread, on a free port of 127.0.0.1."""

    def __init__(self, context: PlayContext):
        self.context, self.loop = context, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _start(self) -> int:
        self.runner = web.AppRunner(make_app(self.context))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> str:
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return f"http://127.0.0.1:{port}/"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.context.worker.shutdown(wait=True)


def canvas(page) -> str:
    return page.evaluate("document.getElementById('screen').toDataURL()")


def thumbs(page) -> int:
    return page.locator(".thumb").count()


def test_keys_play_the_world_and_the_timeline_branches_saves_and_exports(tiny_pipe_dir, tmp_path):
    sync_playwright = browser_or_skip()
    from tests.test_play import play_args

    pipe = SlowFastVGenPipeline.from_pretrained(tiny_pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    args, preset = play_args(tiny_pipe_dir, tmp_path / "out")
    context = PlayContext(pipe, args, preset, output_dir=tmp_path / "out",
                          world_reverse_actions=world_kind("toyworld").reverse_actions())
    with ServerThread(context) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 800})
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector(".thumb")
            assert page.locator(".key").count() == 5 and "move left" in page.inner_text("#keys")
            start = canvas(page)

            # Holding a key keeps the world going: frames change and the timeline grows.
            page.keyboard.down("ArrowLeft")
            page.wait_for_function("document.querySelectorAll('.thumb').length >= 4", timeout=60_000)
            page.keyboard.up("ArrowLeft")
            page.wait_for_function("window.playStats.paints >= 8", timeout=30_000)
            assert canvas(page) != start
            page.keyboard.press("d")  # a tap: one chunk of 'move right'
            page.wait_for_function("[...document.querySelectorAll('.thumb')].some(t => t.title.includes('move right'))",
                                   timeout=60_000)

            # A typed action; an empty one and one of 10,000 characters are refused in the page.
            for text, said in (("", "empty"), ("x" * 10_000, "10,000 characters")):
                page.fill("#action", text)
                page.click("#action-form button")
                page.wait_for_function(f"document.getElementById('message').textContent.includes('{said}')")
                assert "error" in page.get_attribute("#message", "class")
            before = thumbs(page)
            page.fill("#action", "go up")
            page.click("#action-form button")
            page.wait_for_function(f"document.querySelectorAll('.thumb').length > {before}", timeout=60_000)

            # Branch at chunk 1: the timeline is cut back there and the episode goes on from it.
            page.click(".thumb[data-index='1']")
            page.wait_for_function("document.getElementById('message').textContent.includes('Branched at chunk 1')")
            assert thumbs(page) == 2
            page.keyboard.press("ArrowUp")
            page.wait_for_function("document.querySelectorAll('.thumb').length === 3", timeout=60_000)

            # Save the memory and export the episode, as generate writes them.
            page.fill("#save-path", "saved.memory.safetensors")
            page.click("#save-form button")
            page.wait_for_function("document.getElementById('message').textContent.includes('Memory saved')")
            page.fill("#export-path", "browser.mp4")
            page.click("#export-form button")
            page.wait_for_function("/Exported|exists/.test(document.getElementById('message').textContent)",
                                   timeout=30_000)
            assert "Exported" in page.inner_text("#message"), page.inner_text("#message")
            assert (tmp_path / "out" / "saved.memory.safetensors").is_file()
            assert {"browser.mp4", "browser.json", "browser.memory.safetensors", "browser.last.png"} <= {
                p.name for p in (tmp_path / "out").iterdir()}

            # Switch the memory off during play; split view shows the second canvas.
            page.select_option("#preset", "none")
            page.wait_for_function("document.getElementById('memory-summary').textContent.includes('base model')")
            page.check("#split")
            page.wait_for_selector("#lane-view:not([hidden])")
            page.screenshot(path=str(tmp_path / "play.png"))
            assert (tmp_path / "play.png").stat().st_size > 10_000 and not errors
        finally:
            browser.close()
