"""The page shows the model's tool calls as they happen (name, arguments, outcome), in a real chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from tests.support.browser import chromium, fake_microphone, open_page
from tests.support.edge_client import running_edge
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker
from workers.runtime.settings import RuntimeSettings
from workers.tools.worker import WORKER as TOOLS

PREFIX = "pagetools"


@pytest.fixture(scope="module")
async def edge(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    settings = OrchestratorSettings(
        nats_url=nats_url, llm_base_url=llm.base_url, subject_prefix=PREFIX, memory_timeout_s=0.2
    )
    async with (
        running_worker(TOOLS, RuntimeSettings(nats_url=nats_url, subject_prefix=PREFIX)),
        running_worker(WORKER, settings),
        running_edge(nats_url, subject_prefix=PREFIX) as url,
    ):
        yield url


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium(*fake_microphone(None)) as launched:
        yield launched


async def test_tool_calls_are_shown_with_their_arguments_and_results(
    edge: str, llm: ScriptedLLM, browser: Browser
) -> None:
    llm.clear()
    async with open_page(browser, edge) as ui:
        await ui.until("sb.status === 'connected'")
        zone = await ui.page.evaluate("() => Intl.DateTimeFormat().resolvedOptions().timeZone")
        await ui.until(f"sb.zoneSentTo === {await ui.state('sb.sessionId')!r}")
        llm.script(tool_calls=[("calculate", {"expression": "12 * 7"}), ("get_time", {}), ("calculate", "{bad")])
        llm.script(reply="12 times 7 is 84, and I know the time.", delay_ms=30)
        await ui.page.get_by_role("textbox", name="Message").fill("12 times 7, and the time?")
        await ui.page.get_by_role("button", name="Send").click()

        tools = ui.page.get_by_role("list", name="Tools used").locator("li")
        await expect(tools).to_have_count(3)
        await expect(tools.nth(0)).to_have_text("calculate(12 * 7) → 12 * 7 = 84")
        await expect(tools.nth(1)).to_contain_text("get_time() → ")
        await expect(tools.nth(1)).to_contain_text(f"({zone})")  # the browser's own zone, sent on connect
        await expect(tools.nth(2)).to_have_text("calculate({bad) → error: the arguments are not a JSON object")
        await expect(tools.nth(2)).to_have_class("tool failed")
        await expect(ui.page.locator(".msg.assistant .text")).to_have_text("12 times 7 is 84, and I know the time.")
        await ui.screenshot("tool_calls")
        assert ui.errors == []
