"""A summary the local server pre-empts for a turn (HTTP 503 ``background_preempted``) is tried again soon;
any other failure waits for more turns, as before."""

from __future__ import annotations

import asyncio
from typing import cast

import httpx2
import openai

from workers.memory.store import MemoryStore, Summary, Turn
from workers.memory.summarizer import Summarizer

SESSION = "session-a"


class Store:
    """The store's three methods a summary uses, in memory."""

    def __init__(self) -> None:
        self.turns = [Turn("user", f"question {i}", f"t{i}", 0.0, i + 1) for i in range(6)]
        self.summaries: dict[str, Summary] = {}

    async def summary(self, session_id: str) -> Summary | None:
        return self.summaries.get(session_id)

    async def turns_between(self, session_id: str, after: int, limit: int) -> list[Turn]:
        return [t for t in self.turns if t.position > after][:limit]

    async def set_summary(self, session_id: str, summary: Summary) -> None:
        self.summaries[session_id] = summary


def failure(status: int, code: str) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://llm/v1/chat/completions")
    response = httpx2.Response(status, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body={"error": {"code": code}})


async def summarize_with(errors: list[Exception]) -> tuple[Store, list[int]]:
    store, calls = Store(), [0]

    async def complete(messages: list[dict[str, str]]) -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return "The user asked questions."

    summarizer = Summarizer(cast(MemoryStore, store), complete, 3, 2, on_summary=lambda _: None, retry_after_s=0.05)
    async with summarizer.running():
        for _ in range(3):
            summarizer.stored(SESSION)
        await asyncio.sleep(0.5)
    return store, calls


async def test_a_preempted_summary_is_made_a_little_later() -> None:
    store, calls = await summarize_with([failure(503, "background_preempted"), failure(503, "background_preempted")])
    assert calls == [3]
    assert store.summaries[SESSION].until == 4  # the 6 turns but the 2 most recent


async def test_another_failure_waits_for_more_turns() -> None:
    store, calls = await summarize_with([failure(500, "server_error")])
    assert calls == [1]
    assert SESSION not in store.summaries
