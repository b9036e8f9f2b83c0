"""A user adds a document to their own knowledge base from the page and sees it cited, in a real chromium:
the page's upload control (POST /v1/ingest with the session token), the real retriever (chroma, embeddings),
the orchestrator with a scripted model, the edge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.support.browser import PageUnderTest, chromium, fake_microphone, open_page
from tests.support.edge_client import running_edge
from tests.support.retrieval import running_retriever
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker

PREFIX = "pagedocs"
FALCON = "# Falcon\n\nFalcon project: the launch code word is periwinkle and the budget is 42 million.\n"
ORCHARD = "# Orchard\n\nThe orchard behind the house has eleven apple trees and one pear tree.\n"


@pytest.fixture(scope="module")
async def edge(nats_url: str, llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    # No memory worker runs: its requests give up soon; retrieval gets time on a busy machine.
    settings = OrchestratorSettings(
        nats_url=nats_url, llm_base_url=llm.base_url, subject_prefix=PREFIX, memory_timeout_s=0.2, retrieval_timeout_s=5
    )
    async with (
        running_retriever(nats_url, tmp_path_factory.mktemp("pagedocs"), PREFIX),
        running_worker(WORKER, settings),
        running_edge(nats_url, subject_prefix=PREFIX) as url,
    ):
        yield url


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium(*fake_microphone(None)) as launched:
        yield launched


async def add_document(ui: PageUnderTest, path: Path) -> None:
    """As a user does: the page's "Add a document" button, then the file in the browser's file chooser."""
    async with ui.page.expect_file_chooser() as chooser:
        await ui.page.get_by_role("button", name="Add a document").click()
    await (await chooser.value).set_files(path)
    added = ui.page.locator(".msg.note.doc")
    await expect(added.last).to_have_text(
        f"📄 {path.name} was added to your documents (1 passage). Ask about it.", timeout=60_000
    )


async def ask(ui: PageUnderTest, text: str) -> None:
    await ui.page.get_by_role("textbox", name="Message").fill(text)
    await ui.page.get_by_role("button", name="Send").click()


async def test_an_uploaded_document_is_found_by_the_models_search_and_cited(
    edge: str, llm: ScriptedLLM, browser: Browser, tmp_path: Path
) -> None:
    document = tmp_path / "falcon-notes.md"
    document.write_text(FALCON)
    llm.clear()
    async with open_page(browser, edge) as ui:
        await ui.until("sb.status === 'connected'")
        await add_document(ui, document)
        assert (await ui.state("sb.uploads"))[0]["status"] == "ingested"

        # The general agent's model decides to search the user's documents (the retriever's tool).
        llm.script(tool_calls=[("search_knowledge", {"query": "Falcon launch code word"})])
        llm.script(reply="The launch code word is periwinkle [1].")
        await ask(ui, "What is the Falcon project's launch code word?")

        tool = ui.page.get_by_role("list", name="Tools used").locator("li")
        await expect(tool).to_have_class("tool ok")
        await expect(tool).to_have_text("search_knowledge(Falcon launch code word) → 1 passage from falcon-notes.md")
        await expect(ui.page.locator(".msg.assistant .text")).to_have_text("The launch code word is periwinkle [1].")
        sources = ui.page.get_by_role("list", name="Sources").locator("li")
        await expect(sources).to_have_count(1)
        await expect(sources).to_have_text("Falcon falcon-notes.md")
        # The model read the passage the retriever found in the uploaded file.
        tool_messages = [m for m in llm.requests[-1]["messages"] if m["role"] == "tool"]
        assert "periwinkle" in tool_messages[0]["content"]
        await ui.screenshot("document_cited_by_search")
        assert ui.errors == []


async def test_the_knowledge_agent_cites_the_sessions_own_document_and_no_one_elses(
    edge: str, llm: ScriptedLLM, browser: Browser, tmp_path: Path
) -> None:
    document = tmp_path / "orchard.md"
    document.write_text(ORCHARD)
    llm.clear()
    async with open_page(browser, edge) as ui:  # a new session: the first test's document is not its own
        await ui.until("sb.status === 'connected'")
        await ui.page.get_by_text("Settings").click()
        await ui.page.get_by_label("Agent").select_option("knowledge")
        await ui.until("sb.settings.agent === 'knowledge'")
        await add_document(ui, document)

        llm.script(reply="There are eleven apple trees [1].")
        await ask(ui, "How many apple trees are in the orchard, and what is the Falcon launch code word?")
        await expect(ui.page.locator(".msg.assistant .text")).to_have_text("There are eleven apple trees [1].")
        sources = ui.page.get_by_role("list", name="Sources").locator("li")
        await expect(sources).to_have_text(["Orchard orchard.md"])  # not the other session's falcon-notes.md
        done = next(iter((await ui.state("sb.turns")).values()))["done"]
        assert done["agent"] == "knowledge" and done["retrieval"] == "ok", done
        prompt = "\n".join(str(m["content"]) for m in llm.requests[-1]["messages"])
        assert "eleven apple trees" in prompt and "periwinkle" not in prompt
        await ui.screenshot("document_cited_by_knowledge_agent")
        assert ui.errors == []


async def test_a_document_that_cannot_be_added_is_explained(edge: str, browser: Browser, tmp_path: Path) -> None:
    empty = tmp_path / "empty.md"
    empty.write_bytes(b"")
    async with open_page(browser, edge) as ui:
        await ui.until("sb.status === 'connected'")
        async with ui.page.expect_file_chooser() as chooser:
            await ui.page.get_by_role("button", name="Add a document").click()
        await (await chooser.value).set_files(empty)
        await expect(ui.page.locator(".msg.note.doc.failed")).to_have_text(
            "📄 empty.md could not be added: the upload is empty"
        )
        await ui.screenshot("document_refused")
        assert all("status of 400" in e for e in ui.errors), ui.errors  # chromium logs the refused request
