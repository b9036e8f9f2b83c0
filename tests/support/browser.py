"""A real browser for page tests: Debian's chromium driven by Playwright (never `playwright install`).

The microphone is faked from a WAV file with chromium's own switches. Screenshots go to
``test-artifacts/`` (git-ignored), one per test's final state.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]


def fake_microphone(wav: Path | None, *, granted: bool = True) -> list[str]:
    """Switches for a microphone that plays ``wav`` once (None: no capture device at all)."""
    args = ["--use-fake-ui-for-media-stream"] if granted else ["--deny-permission-prompts"]
    if wav is not None:
        args += ["--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav.resolve()}%noloop"]
    return args


@asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[*BASE_ARGS, *extra_args])
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PageUnderTest:
    page: Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    async def state(self, expression: str = "window.sb") -> Any:
        return await self.page.evaluate(f"() => JSON.parse(JSON.stringify({expression}))")

    async def until(self, predicate: str, timeout_s: float = 15.0) -> None:
        """Wait until the JavaScript ``predicate`` (over ``sb``, the page state) holds."""
        await self.page.wait_for_function(
            f"() => {{ const sb = window.sb; return {predicate}; }}", timeout=timeout_s * 1000
        )

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        await self.page.screenshot(path=path, full_page=True)
        return path


@asynccontextmanager
async def open_page(
    browser: Browser, url: str | None, *, width: int = 1000, height: int = 760
) -> AsyncIterator[PageUnderTest]:
    """A fresh browser context (own storage) with the page at ``url`` (None: navigate later)."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    under_test = PageUnderTest(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            under_test.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: under_test.errors.append(f"uncaught: {error}"))
    if url is not None:
        await page.goto(url)
    try:
        yield under_test
    finally:
        await context.close()
