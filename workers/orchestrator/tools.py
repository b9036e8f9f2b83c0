"""The model's tool calls, run as bus requests: each within its deadline, a round's calls at once.

Whatever happens to a call (a tool that is slow, failing, missing, not allowed, or called with broken
arguments) the model gets an outcome it can read, never a hung turn: ``{"error": "..."}`` instead of
the result. Tools are declared in contracts/tools.py; who serves them does not matter here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nats.errors import Error as NatsError

from contracts import events as ev
from contracts.tools import BY_TOOL, ToolSpec
from workers.runtime.bus import DependencyUnavailableError

from .context import Requester, Tenants
from .llm import ChatMessage, ToolCallRequest, ToolDefinition

MAX_RESULT_CHARS = 4_000  # of one result as the model reads it: a tool cannot flood the context window
ERROR_CHARS = 1_000  # ToolResult.error's limit


@dataclass(frozen=True)
class SessionContext:
    """What a tool may need to know of the session beyond its arguments."""

    time_zone: str | None = None
    knowledge_bases: list[str] | None = None


@dataclass(frozen=True)
class ToolOutcome:
    call: ToolCallRequest
    status: ev.ToolStatus
    result: dict[str, Any] | None = None
    error: str = ""
    duration_ms: float = 0.0

    def citations(self) -> list[ev.Citation]:
        """What the result asks the reply to cite (contracts/tools.py); misshapen ones are left out."""
        found = self.result.get("citations") if self.status == "ok" and self.result else None
        cited: list[ev.Citation] = []
        for item in found if isinstance(found, list) else []:
            with contextlib.suppress(ValueError):
                cited.append(ev.Citation.model_validate(item))
        return cited

    def message(self) -> ChatMessage:
        """The ``tool`` message that gives the model this outcome."""
        content = json.dumps(self.result if self.status == "ok" else {"error": self.error}, ensure_ascii=False)
        return {"role": "tool", "tool_call_id": self.call.id, "content": content[:MAX_RESULT_CHARS]}


class ToolRunner:
    #: After "no responders", a tool is not offered for this long: a deployment without its server
    #: should not cost the model a round per turn to learn it again.
    ABSENT_FOR_S = 5.0

    def __init__(
        self,
        requester: Requester,
        max_deadline_s: float,
        tenants: Tenants | None = None,  # None: no session has a tenant
        tools: dict[str, ToolSpec] = BY_TOOL,
    ) -> None:
        self._requester = requester
        self._tenants = tenants
        self._max_deadline_s = max_deadline_s
        self._tools = tools
        self._absent_until: dict[str, float] = {}

    def definitions(self, allowed: Iterable[str]) -> list[ToolDefinition]:
        """The tools of ``allowed`` (an agent's list) as the model is offered them, but those found absent."""
        now = time.monotonic()
        return [
            self._tools[name].function()
            for name in sorted(allowed)
            if name in self._tools and self._absent_until.get(name, 0.0) <= now
        ]

    async def run(
        self, turn: ev.UserTurn, calls: Iterable[ToolCallRequest], allowed: frozenset[str], session: SessionContext
    ) -> list[ToolOutcome]:
        """Every call at once; the outcomes in the calls' order."""
        return list(await asyncio.gather(*(self._one(turn, call, allowed, session) for call in calls)))

    async def _one(
        self, turn: ev.UserTurn, call: ToolCallRequest, allowed: frozenset[str], session: SessionContext
    ) -> ToolOutcome:
        spec = self._tools.get(call.name) if call.name in allowed else None
        if spec is None:
            return ToolOutcome(call, "error", error=f"there is no tool named {call.name[:64]!r}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            return ToolOutcome(call, "error", error="the arguments are not a JSON object")
        deadline = min(spec.deadline_s, self._max_deadline_s)
        started = time.perf_counter()

        def outcome(status: ev.ToolStatus, result: dict[str, Any] | None = None, error: str = "") -> ToolOutcome:
            return ToolOutcome(call, status, result, error[:ERROR_CHARS], (time.perf_counter() - started) * 1000)

        try:  # the tenant is known once per session (a recorded read at most), within the deadline
            async with asyncio.timeout(deadline):
                tenant = await self._tenants.of(turn.session_id) if self._tenants else None
        except (TimeoutError, NatsError):
            return outcome("unavailable", error=f"the tool {spec.name} cannot tell whose data to use right now")
        request = ev.ToolRequest(
            session_id=turn.session_id,
            turn_id=turn.turn_id,
            producer=self._requester.producer,
            call_id=call.id[:128],
            tool=spec.name,
            arguments=arguments,
            time_zone=session.time_zone,
            tenant=tenant,
            knowledge_bases=session.knowledge_bases,
        )
        try:
            reply = await self._requester.request(
                spec.subject_name, request, ev.ToolReply, max(0.001, deadline - (time.perf_counter() - started))
            )
        except DependencyUnavailableError as error:
            if error.status == "timeout":
                return outcome("timeout", error=f"the tool {spec.name} did not answer within {deadline:g} s")
            self._absent_until[spec.name] = time.monotonic() + self.ABSENT_FOR_S
            return outcome("unavailable", error=f"the tool {spec.name} is unavailable right now")
        except ValueError:  # an empty or misshapen reply: the tool failed
            return outcome("error", error=f"the tool {spec.name} failed")
        if reply.error or reply.result is None:
            return outcome("error", error=reply.error or f"the tool {spec.name} gave no result")
        return outcome("ok", reply.result)


def call_message(text: str, calls: Iterable[ToolCallRequest]) -> ChatMessage:
    """The assistant message that asked for ``calls`` (with what it said before them)."""
    return {
        "role": "assistant",
        "content": text,  # "" rather than null: llama-cpp-python's server refuses a null content (HTTP 422/500)
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ],
    }
