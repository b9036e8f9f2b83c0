"""The page shows the model's tool calls as they happen (name, arguments, outcome) and the reminders they set when
they fall due, in a real chromium, with the real tools worker (JetStream message schedules for reminders)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from tests.support.browser import chromium, fake_microphone, open_page
from tests.support.edge_client import running_edge
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker
from workers.tools.worker import WORKER as TOOLS
from workers.tools.worker import ToolsSettings

PREFIX = "pagetools"


@pytest.fixture(scope="module")
async def edge(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    settings = OrchestratorSettings(
        nats_url=nats_url, llm_base_url=llm.base_url, subject_prefix=PREFIX, memory_timeout_s=0.2
    )
    async with (
        running_worker(TOOLS, ToolsSettings(nats_url=nats_url, subject_prefix=PREFIX)),
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


async def test_a_due_reminder_is_shown_in_the_conversation_without_breaking_the_turn(
    edge: str, llm: ScriptedLLM, browser: Browser
) -> None:
    llm.clear()
    async with open_page(browser, edge) as ui:
        await ui.until("sb.status === 'connected'")
        text = "Take the <b>tea</b> out"  # shown as text, never as markup
        llm.script(tool_calls=[("set_reminder", {"text": text, "delay_s": 1})])
        # A slow reply (about 3 s), so the reminder most likely falls due while it still streams.
        reply = "Sure, I will remind you in a second to take the tea out of the pot, then we can talk again."
        llm.script(reply=reply, delay_ms=150)
        await ui.page.get_by_role("textbox", name="Message").fill("Remind me in a second to take the tea out")
        await ui.page.get_by_role("button", name="Send").click()

        tool = ui.page.get_by_role("list", name="Tools used").locator("li")
        await expect(tool).to_have_count(1)
        await expect(tool).to_contain_text("set_reminder(")
        await expect(tool).to_have_class("tool ok")
        reminder = ui.page.locator(".msg.reminder")
        await expect(reminder).to_have_text(f"⏰ Reminder: {text}", timeout=10_000)
        assert await reminder.locator("b").count() == 0
        # The turn's reply still streams into its own bubble and ends whole, with its tool list.
        assistant = ui.page.locator(".msg.assistant")
        await expect(assistant).to_have_count(1)
        await expect(assistant.locator(".text")).to_have_text(reply)
        await expect(assistant).not_to_have_class("msg assistant streaming")
        assert (await ui.state("sb.reminders"))[0]["text"] == text

        # The next turn renders in a bubble of its own, after the reminder.
        await ui.page.get_by_role("textbox", name="Message").fill("thanks")
        await ui.page.get_by_role("button", name="Send").click()
        await expect(assistant).to_have_count(2)
        await expect(assistant.nth(1).locator(".text")).to_have_text("You said: thanks")
        await expect(reminder).to_have_count(1)  # seen once
        order = await ui.page.locator("#log > li").evaluate_all("items => items.map(li => li.className)")
        assert order[-2:] == ["msg user", "msg assistant"], order
        await ui.screenshot("reminder_due")
        assert ui.errors == []
