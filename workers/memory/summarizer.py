"""Running summaries, made by the LLM in the background, never on a turn's hot path.

Each stored turn counts towards its session; when ``after_turns`` turns arrived since the session's
last summary (as far as this replica saw), the session is queued. One background task takes sessions
off the queue and folds every turn older than the ``keep_recent`` most recent ones into the running
summary (the previous summary plus those turns go to the LLM), then stores it with the position it
covers. An LLM failure is logged and retried after the next ``after_turns`` turns; the context goes on
without that part of the summary meanwhile.

Summaries are background work: their requests carry ``X-SB-Priority: background``, so the local
server (ops/llama_cpp_serve.py) runs them only while no turn is in flight and aborts one as soon as a
turn arrives (HTTP 503). A pre-empted summary is tried again RETRY_AFTER_S later, at most
MAX_PREEMPTIONS times in a row, then left for the next ``after_turns`` turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import openai

from workers.runtime.llm_priority import BACKGROUND_HEADERS
from workers.runtime.logging import get_logger

from .store import MemoryStore, Summary

log = get_logger("memory.summarizer")
Complete = Callable[[list[dict[str, str]]], Awaitable[str]]

INSTRUCTION = (
    "You keep a running summary of a conversation between a user and an assistant. Update the "
    "summary with the new turns. Keep names, facts about the user, decisions and open questions. "
    "At most 120 words, plain prose, no preamble."
)
MAX_TURNS_PER_RUN = 200
RETRY_AFTER_S = 5.0
MAX_PREEMPTIONS = 20


def openai_completion(base_url: str, api_key: str, model: str, timeout_s: float, max_tokens: int) -> Complete:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)

    async def complete(messages: list[dict[str, str]]) -> str:
        response = await client.chat.completions.create(
            model=model, messages=cast(Any, messages), max_tokens=max_tokens, extra_headers=BACKGROUND_HEADERS
        )
        return (response.choices[0].message.content or "").strip() if response.choices else ""

    return complete


class Summarizer:
    def __init__(
        self,
        store: MemoryStore,
        complete: Complete,
        after_turns: int,
        keep_recent: int,
        on_summary: Callable[[str], None],
        retry_after_s: float = RETRY_AFTER_S,
    ) -> None:
        self._store = store
        self._complete = complete
        self._after = after_turns
        self._keep = keep_recent
        self._on_summary = on_summary
        self._counts: Counter[str] = Counter()
        self._queued: set[str] = set()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._retry_after_s = retry_after_s
        self._preempted: Counter[str] = Counter()  # pre-emptions in a row, per session
        self._retries: set[asyncio.Task[None]] = set()

    def stored(self, session_id: str) -> None:
        if not self._after:
            return
        self._counts[session_id] += 1
        if self._counts[session_id] >= self._after and session_id not in self._queued:
            self._queued.add(session_id)
            self._queue.put_nowait(session_id)

    def forget(self, session_id: str) -> None:
        self._counts.pop(session_id, None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop(), name="memory-summarizer")
        try:
            yield
        finally:
            for pending in (task, *self._retries):
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending

    async def _loop(self) -> None:
        while True:
            session = await self._queue.get()
            self._queued.discard(session)
            self._counts.pop(session, None)
            try:
                await self.summarize(session)
                self._preempted.pop(session, None)
            except Exception as error:
                if _preempted(error) and self._preempted[session] < MAX_PREEMPTIONS:
                    self._preempted[session] += 1  # a turn came first: the same summary a little later
                    retry = asyncio.create_task(self._requeue(session), name="memory-summary-retry")
                    self._retries.add(retry)
                    retry.add_done_callback(self._retries.discard)
                    log.info("summary pre-empted by a turn; trying again", session_id=session)
                else:  # the LLM or the store failed: retried after more turns
                    self._preempted.pop(session, None)
                    log.warning("summary failed", session_id=session, error=repr(error)[:300])

    async def _requeue(self, session_id: str) -> None:
        await asyncio.sleep(self._retry_after_s)
        if session_id not in self._queued:
            self._queued.add(session_id)
            self._queue.put_nowait(session_id)

    async def summarize(self, session_id: str) -> Summary | None:
        """Fold the session's older turns into its summary; None when there is nothing to fold."""
        previous = await self._store.summary(session_id)
        turns = await self._store.turns_between(session_id, previous.until if previous else 0, MAX_TURNS_PER_RUN)
        older = turns[: max(0, len(turns) - self._keep)]
        if not older:
            return None
        lines = "\n".join(f"{t.role}: {t.text}" for t in older)
        prompt = f"Summary so far: {previous.text if previous else '(none)'}\n\nNew turns:\n{lines}"
        text = await self._complete([{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}])
        if not text:
            raise ValueError("the LLM returned an empty summary")
        summary = Summary(text, older[-1].position)
        await self._store.set_summary(session_id, summary)
        self._on_summary(session_id)
        log.info("summary updated", session_id=session_id, turns=len(older), until=summary.until)
        return summary


def _preempted(error: Exception) -> bool:
    """Whether the server aborted the request for a foreground one (ops/llama_cpp_serve.py: 503
    ``background_preempted``)."""
    return isinstance(error, openai.APIStatusError) and error.status_code == 503 and "preempted" in str(error.body)
