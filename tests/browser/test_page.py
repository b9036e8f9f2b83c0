"""The browser client in a real chromium: typed turns, reconnects, and what the page says when things fail."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from ops.servers import free_port
from tests.support.browser import PageUnderTest, chromium, fake_microphone, open_page
from tests.support.edge_client import running_edge
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker

PREFIX = "page"


@pytest.fixture(scope="module")
async def orchestrator(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[None]:
    settings = OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=llm.base_url,
        subject_prefix=PREFIX,
        memory_timeout_s=0.2,
        retrieval_timeout_s=0.2,
    )
    async with running_worker(WORKER, settings):
        yield


@pytest.fixture(scope="module")
async def edge(nats_url: str, orchestrator: None) -> AsyncIterator[str]:
    async with running_edge(nats_url, subject_prefix=PREFIX) as url:
        yield url


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium(*fake_microphone(None)) as launched:
        yield launched


async def type_turn(ui: PageUnderTest, text: str) -> None:
    await ui.page.get_by_role("textbox", name="Message").fill(text)
    await ui.page.get_by_role("button", name="Send").click()


async def test_typed_turn_streams_the_reply_into_the_page(edge: str, browser: Browser) -> None:
    async with open_page(browser, edge) as ui:
        await ui.until("sb.status === 'connected'")
        await type_turn(ui, "[delay:60] tell me something")

        assistant = ui.page.locator(".msg.assistant")
        await expect(assistant).to_have_class("msg assistant streaming")  # seen while text is still arriving
        await expect(assistant.locator(".text")).to_have_text("You said: tell me something")
        await expect(assistant).not_to_have_class("msg assistant streaming")
        await expect(ui.page.locator(".msg.user .text")).to_have_text("[delay:60] tell me something")

        turns = list((await ui.state("sb.turns")).values())
        assert len(turns) == 1 and turns[0]["done"]["finish_reason"] == "stop"
        assert 0 <= turns[0]["latency"]["toFirstText"] < 5000  # readout from the events' own timestamps
        await expect(assistant.locator(".meta")).to_contain_text("sent → first text")
        await ui.screenshot("typed_turn")
        assert ui.errors == []


async def test_phone_sized_screen_keeps_every_control_reachable(edge: str, browser: Browser) -> None:
    async with open_page(browser, edge, width=390, height=740) as ui:
        await ui.until("sb.status === 'connected'")
        await type_turn(ui, "hi from a phone")
        await expect(ui.page.locator(".msg.assistant .text")).to_have_text("You said: hi from a phone")
        for name in ("Start microphone", "Mute", "Stop the assistant", "Add a document", "Send"):
            button = ui.page.get_by_role("button", name=name)
            box = await button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, name
            assert box["height"] >= 40, f"{name} is too small to tap"
        width = await ui.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, "the page scrolls sideways on a phone"
        await ui.screenshot("phone")


def only_connection_noise(errors: list[str]) -> bool:
    """While the edge is down the browser logs failed connections; anything else is a page bug."""
    return all("WebSocket connection" in e or "Failed to load resource" in e for e in errors)


async def test_server_closing_the_socket_reconnects_to_the_same_session(
    nats_url: str, orchestrator: None, browser: Browser
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with open_page(browser, None) as ui:
        async with running_edge(nats_url, subject_prefix=PREFIX, edge_port=port):
            await ui.page.goto(url)
            await ui.until("sb.status === 'connected'")
            await type_turn(ui, "first")
            await expect(ui.page.locator(".msg.assistant .text")).to_have_text("You said: first")
            session = (await ui.state())["sessionId"]
        # The edge restarted (a deploy): it closed every socket and came back on the same address.
        async with running_edge(nats_url, subject_prefix=PREFIX, edge_port=port):
            await ui.until("sb.status === 'connected' && sb.reconnects >= 1", timeout_s=20)
            state = await ui.state()
            assert state["sessionId"] == session
            assert state["closes"][0] in (1001, 1006, 1012)

            await type_turn(ui, "second")
            await expect(ui.page.locator(".msg.assistant .text").nth(1)).to_have_text("You said: second")
            await expect(ui.page.locator("#notice")).to_be_hidden()
            await ui.screenshot("reconnected")
        assert only_connection_noise(ui.errors), ui.errors


async def test_unreachable_edge_is_explained_and_retried(nats_url: str, orchestrator: None, browser: Browser) -> None:
    port = free_port()
    async with open_page(browser, None) as ui:
        async with running_edge(nats_url, subject_prefix=PREFIX, edge_port=port) as url:
            await ui.page.goto(url)
            await ui.until("sb.status === 'connected'")
        # The edge is gone: the page says so in plain words, offers a retry, and keeps trying.
        await expect(ui.page.locator("#notice-text")).to_contain_text("Retrying in", timeout=10_000)
        await expect(ui.page.get_by_role("button", name="Retry now")).to_be_visible()
        await expect(ui.page.locator("#status")).to_have_text("Offline")
        await ui.screenshot("edge_unreachable")
        async with running_edge(nats_url, subject_prefix=PREFIX, edge_port=port):
            await ui.page.get_by_role("button", name="Retry now").click()
            await ui.until("sb.status === 'connected'")
            await expect(ui.page.locator("#notice")).to_be_hidden()
        assert only_connection_noise(ui.errors), ui.errors


async def test_protocol_error_from_the_edge_is_shown(nats_url: str, orchestrator: None, browser: Browser) -> None:
    async with (
        running_edge(nats_url, subject_prefix=PREFIX, text_frames_per_s=0.2, burst_s=5.0) as url,
        open_page(browser, url) as ui,
    ):
        await ui.until("sb.status === 'connected'")
        await type_turn(ui, "one")
        await type_turn(ui, "two")  # the bucket held one frame: this one is refused
        await expect(ui.page.locator("#notice-text")).to_contain_text("You are sending too fast")
        assert (await ui.state())["protocolErrors"][0]["code"] == "rate_limited"
        assert (await ui.state())["status"] == "connected"  # refused, not disconnected
        await ui.screenshot("protocol_error")


@pytest.mark.parametrize(
    ("granted", "device", "says"),
    [
        (False, True, "Microphone access was denied"),
        (True, False, "No microphone was found"),
    ],
)
async def test_microphone_problems_are_explained(
    edge: str, granted: bool, device: bool, says: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    wav = tmp_path_factory.mktemp("mic") / "silence.wav" if device else None
    if wav is not None:
        with wave.open(str(wav), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(b"\0\0" * 16000)
    async with chromium(*fake_microphone(wav, granted=granted)) as browser, open_page(browser, edge) as ui:
        await ui.until("sb.status === 'connected'")
        await ui.page.get_by_role("button", name="Start microphone").click()
        await expect(ui.page.locator("#notice-text")).to_contain_text(says)
        await expect(ui.page.get_by_role("textbox", name="Message")).to_be_enabled()  # typing still works
        assert (await ui.state())["micOn"] is False
        await ui.screenshot(f"mic_{'denied' if not granted else 'missing'}")
