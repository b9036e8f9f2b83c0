"""Context hooks: memory and retrieval asked by request/reply, concurrently, each with a deadline.

A slow or absent dependency degrades the turn (its status says so); it never hangs it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from nats.errors import Error as NatsError

from contracts import events as ev
from contracts.envelope import Event
from contracts.events import DependencyStatus
from contracts.limits import CAMERA_PROMPT_CHARS, QUERY_CHARS
from workers.runtime.bus import DependencyUnavailableError
from workers.runtime.turns import SessionTable

from .agents import Agent

R = TypeVar("R", bound=Event)
T = TypeVar("T")
MEMORY, RETRIEVAL, CAMERA = "memory.context", "retrieval.query", "video.describe"


class Requester(Protocol):
    producer: str

    async def request(self, name: str, event: Event, reply_type: type[R], timeout: float) -> R: ...


@dataclass(frozen=True)
class Context:
    memory: ev.ContextReply | None = None
    passages: list[ev.Passage] = field(default_factory=list)
    memory_status: DependencyStatus = "skipped"
    retrieval_status: DependencyStatus = "skipped"
    camera: ev.FrameDescription | None = None  # only when the session's camera sent a frame recently


StartedLoader = Callable[[str], Awaitable[ev.SessionStarted | None]]


class Tenants:
    """Each session's tenant, which its retrieval requests carry (contracts/owners.py).

    A session's tenant never changes (its token binds it), so a replica learns it once: from the live
    ``session.started``, or else from the last one recorded (a replica that started after the hello)."""

    def __init__(self, load: StartedLoader, limit: int = 100_000) -> None:
        self._load = load
        self._known: SessionTable[str] = SessionTable(limit)  # "" is a session without a tenant

    def learn(self, started: ev.SessionStarted) -> None:
        self._known.pop(started.session_id)
        self._known.setdefault(started.session_id, lambda: started.tenant or "")

    async def of(self, session_id: str) -> str | None:
        known = self._known.get(session_id)
        if known is None:
            started = await self._load(session_id)
            known = self._known.setdefault(session_id, lambda: (started.tenant or "") if started else "")
        return known or None


class ContextHooks:
    #: After "no responders", the service is assumed absent for this long: a deployment without
    #: memory or retrieval should not pay a round trip per turn to learn it again.
    ABSENT_FOR_S = 5.0

    def __init__(
        self,
        requester: Requester,
        memory_timeout_s: float,
        retrieval_timeout_s: float,
        memory_tokens: int,
        camera_timeout_s: float = 0.25,
        tenants: Tenants | None = None,  # None: no session has a tenant (tools, unit tests)
    ) -> None:
        self._requester = requester
        self._tenants = tenants
        self._absent_until: dict[str, float] = {}
        self._memory_timeout_s = memory_timeout_s
        self._retrieval_timeout_s = retrieval_timeout_s
        self._memory_tokens = memory_tokens
        self._camera_timeout_s = camera_timeout_s

    async def gather(self, turn: ev.UserTurn, agent: Agent, bases: list[str] | None) -> Context:
        used = {MEMORY: agent.uses_memory, RETRIEVAL: agent.uses_retrieval, CAMERA: agent.uses_camera}
        asks = {
            MEMORY: lambda: self._memory(turn),
            RETRIEVAL: lambda: self._retrieval(turn, bases),
            CAMERA: lambda: self._camera(turn),
        }
        live = [name for name in asks if used[name] and not self._absent(name)]
        answers = dict(zip(live, await _settle([asks[name]() for name in live]), strict=True))
        for name in asks:
            answers.setdefault(name, (None, "unavailable" if used[name] else "skipped"))
        (memory, memory_status), (retrieval, retrieval_status), (camera, _) = (
            answers[MEMORY],
            answers[RETRIEVAL],
            answers[CAMERA],
        )
        return Context(
            memory=memory if isinstance(memory, ev.ContextReply) else None,
            passages=retrieval.passages if isinstance(retrieval, ev.RetrievalReply) else [],
            memory_status=memory_status,
            retrieval_status=retrieval_status,
            camera=camera if isinstance(camera, ev.FrameDescription) and camera.available else None,
        )

    def _absent(self, name: str) -> bool:
        return time.monotonic() < self._absent_until.get(name, 0.0)

    async def _camera(self, turn: ev.UserTurn) -> tuple[Event | None, DependencyStatus]:
        request = ev.FrameDescribeRequest(
            session_id=turn.session_id,
            turn_id=turn.turn_id,
            producer=self._requester.producer,
            prompt=turn.text[:CAMERA_PROMPT_CHARS],  # context only: a long turn is cut, not refused
        )
        return await self._ask(CAMERA, request, ev.FrameDescription, self._camera_timeout_s)

    async def _memory(self, turn: ev.UserTurn) -> tuple[Event | None, DependencyStatus]:
        request = ev.ContextRequest(
            session_id=turn.session_id,
            turn_id=turn.turn_id,
            producer=self._requester.producer,
            max_tokens=self._memory_tokens,
        )
        return await self._ask(MEMORY, request, ev.ContextReply, self._memory_timeout_s)

    async def _retrieval(self, turn: ev.UserTurn, bases: list[str] | None) -> tuple[Event | None, DependencyStatus]:
        try:  # within the retrieval's deadline: a slow stream read must not hold the turn
            async with asyncio.timeout(self._retrieval_timeout_s):
                tenant = await self._tenants.of(turn.session_id) if self._tenants else None
        except TimeoutError:
            return None, "timeout"
        except NatsError:  # the recorded session.started cannot be read: no documents rather than the wrong ones
            return None, "unavailable"
        request = ev.RetrievalRequest(
            session_id=turn.session_id,
            turn_id=turn.turn_id,
            producer=self._requester.producer,
            query=retrieval_query(turn.text)[:QUERY_CHARS],  # context only: a long turn is cut, not refused
            bases=bases or ["default"],
            tenant=tenant,
        )
        reply, status = await self._ask(RETRIEVAL, request, ev.RetrievalReply, self._retrieval_timeout_s)
        if isinstance(reply, ev.RetrievalReply) and reply.error:
            return reply, "error"  # the retriever refused the query (e.g. a blank one)
        return reply, status

    async def _ask(
        self, name: str, request: Event, reply: type[R], timeout: float
    ) -> tuple[Event | None, DependencyStatus]:
        try:
            return await self._requester.request(name, request, reply, timeout), "ok"
        except DependencyUnavailableError as error:
            if error.status == "unavailable":
                self._absent_until[name] = time.monotonic() + self.ABSENT_FOR_S
                return None, "unavailable"
            return None, "timeout"
        except ValueError:  # a reply that breaks the contract
            return None, "error"


async def _settle(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Await the calls concurrently. None or one is awaited directly: no task, and no yield to the
    event loop before the LLM request when nothing needs asking (measured: ~0.4 ms on an idle machine)."""
    if len(calls) <= 1:
        return [await call for call in calls]
    return list(await asyncio.gather(*calls))


# Where to look is not what to look for: "Search my documents: how did the mouse repay the lion?"
# scored 0.61 against the passage, the question alone 0.73 (all-MiniLM-L6-v2; the floor is 0.3).
_WHERE_TO_LOOK = re.compile(
    r"\b(?:(?:please\s+)?(?:look|search|check)(?:\s+(?:in|through))?|according\s+to|in|from)\s+"
    r"(?:my|our|the)\s+(?:documents?|docs?|files?|notes?)\b\s*[:,]?\s*",
    re.IGNORECASE,
)


def retrieval_query(text: str) -> str:
    """What the user asks about, without where they say to look (the whole text when that is all)."""
    return " ".join(_WHERE_TO_LOOK.sub(" ", text).split()) or text
