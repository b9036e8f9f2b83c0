"""The orchestrator's logic, testable without the bus: one in-flight turn per session, cancellable.

Which turn's reply is in flight is the session's :class:`~workers.runtime.turns.TurnLedger`
(``generating``); ``SessionState.flight`` is that reply's work (its task and text so far).

Policy: a new user turn while a reply is in flight supersedes it (the old reply ends with
``finish_reason="superseded"``). An interrupt cancels the in-flight reply (``"cancelled"``).
Either way the cancelled task is awaited before its done event is published, so no delta
of a cancelled turn can follow (a tool round in flight is cancelled with it).

Tools: when the model asks for tool calls, they run as bus requests (tools.ToolRunner), each
announced as tool.call and answered as tool.result, and the model is asked again with the
outcomes; at most ``max_tool_rounds`` rounds, then the model answers without tools. A turn that
plainly asks for one tool (tool_hints.required_tool) requires that call on its first round; one with
no number in it may not call the number tools (tool_hints.allowed_tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts import events as ev
from contracts.envelope import Event
from contracts.limits import TURN_TEXT_CHARS
from workers.runtime.logging import get_logger
from workers.runtime.turns import SessionTable, TurnLedger

from .agents import HANDOFF, Agent, Router, handoff_target, handoff_tool
from .context import Context, ContextHooks
from .llm import ChatMessage, ChatModel, LLMError, ToolCallRequest, ToolDefinition, estimate_tokens
from .prompt import build_prompt
from .tool_hints import allowed_tools, mentions_time, required_tool
from .tools import SessionContext, ToolOutcome, ToolRunner, call_message

log = get_logger("orchestrator")
# Most of the context window that tool definitions may take. The general agent's eight tools are
# ~1,100 tokens by the (upper) estimate: at 0.25 of the embedded default's 4,096 they were silently
# dropped and the model answered arithmetic from memory (the evaluation set's arithmetic 3/6).
TOOLS_SHARE = 0.5


class Publisher(Protocol):
    producer: str

    async def publish(self, event: Event, *, durable: bool = False) -> None: ...


@dataclass
class InFlight:
    turn: ev.UserTurn
    agent: str
    # Measured: picked by the router for "In my documents, ...", the embedded model handed the
    # question straight back to the general agent, which answered without the passages.
    may_hand_off: bool = True
    task: asyncio.Task[None] | None = None
    text: list[str] = field(default_factory=list)
    first_token_at: float | None = None


@dataclass
class SessionState:
    settings: ev.SessionSettings | None = None
    agent: str | None = None  # sticky after settings or handoff
    history: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=12))
    turns: TurnLedger = field(default_factory=TurnLedger)  # generating: the turn whose reply is in flight
    flight: InFlight | None = None  # the reply of turns.generating


@dataclass
class Answer:
    """What a turn's answer gathered so far, for its reply.done (a handoff answers twice into one)."""

    usage: ev.TokenUsage = field(default_factory=ev.TokenUsage)
    finish: Literal["stop", "length", "error"] = "stop"
    context: Context = field(default_factory=Context)
    citations: list[ev.Citation] = field(default_factory=list)


SettingsLoader = Callable[[str], Awaitable[ev.SessionSettings | None]]


class Orchestrator:
    def __init__(
        self,
        publisher: Publisher,
        model: ChatModel,
        router: Router,
        hooks: ContextHooks,
        load_settings: SettingsLoader,
        max_tokens: int = 256,
        max_sessions: int = 100_000,
        context_margin: float = 0.05,
        tools: ToolRunner | None = None,
        max_tool_rounds: int = 3,
        tool_hints: bool = True,
    ) -> None:
        self._pub = publisher
        self._model = model
        self._router = router
        self._hooks = hooks
        self._load_settings = load_settings
        self._max_tokens = max_tokens
        self._context_margin = context_margin
        self._tools = tools if model.capabilities.tool_calls else None  # a model without tool calling gets none
        self._max_tool_rounds = max_tool_rounds
        self._tool_hints = tool_hints
        self._tools_dropped: set[str] = set()  # agents whose tools did not fit the window (warned once)
        # A session with a reply in flight stays; the least recently used idle one goes first.
        self._sessions: SessionTable[SessionState] = SessionTable(
            max_sessions, busy=lambda s: s.turns.generating is not None
        )

    # ------------------------------------------------------------------ inputs

    async def on_user_turn(self, turn: ev.UserTurn) -> None:
        state = await self._session(turn.session_id)
        if state.turns.generating is not None:
            await self._stop(state, "superseded")
        route = self._router.route(turn.text, state.agent)
        if route.handoff:
            state.agent = route.agent.name
            log.info("handoff", session_id=turn.session_id, turn_id=turn.turn_id, agent=route.agent.name)
        flight = InFlight(turn, route.agent.name, may_hand_off=not route.hinted)
        state.turns.user_turn(turn.turn_id)
        state.flight = flight
        flight.task = asyncio.create_task(self._reply(state, flight), name=f"turn-{turn.turn_id}")
        # Yield once so the reply sends its first request (context or LLM) now, before the
        # subscriber's own bookkeeping for this message runs (measured: ~0.5 ms sooner on the
        # first delta when the machine is otherwise idle).
        await asyncio.sleep(0)

    async def answer(self, turn: ev.UserTurn) -> None:
        """Answer ``turn`` and return once its reply is done (or superseded, or cancelled)."""
        await self.on_user_turn(turn)
        state = self._sessions.get(turn.session_id)
        flight = state.flight if state else None
        if flight is not None and flight.turn is turn and flight.task is not None:
            await asyncio.wait([flight.task])

    async def refuse(self, turn: ev.UserTurn, code: str, message: str) -> None:
        """End ``turn`` without answering it: an error event, then its reply.done."""
        await self._pub.publish(
            ev.ErrorEvent(
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                producer=self._pub.producer,
                code=code,
                message=message,
                source="orchestrator",
                retryable=True,
            )
        )
        await self._publish_done(InFlight(turn, ""), "error", ev.TokenUsage(), "skipped", "skipped", [])

    async def on_interrupt(self, interrupt: ev.Interrupt) -> None:
        state = self._sessions.get(interrupt.session_id)
        if state is None:
            return
        generating = state.turns.generating
        # The interrupted turn (None: the one in flight); an interrupt for a turn already over changes nothing.
        if generating in state.turns.interrupt(interrupt.turn_id):
            await self._stop(state, "cancelled")

    async def on_settings(self, settings: ev.SessionSettings) -> None:
        state = await self._session(settings.session_id, loaded=settings)
        state.settings = state.settings.updated(settings) if state.settings else settings
        if settings.agent:
            state.agent = settings.agent if self._router.registry.get(settings.agent) else state.agent

    async def drain(self, timeout: float) -> None:
        """Let in-flight replies finish (shutdown)."""
        tasks = [s.flight.task for _, s in self._sessions.items() if s.flight and s.flight.task]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ------------------------------------------------------------------ the turn

    async def _reply(self, state: SessionState, flight: InFlight) -> None:
        turn = flight.turn
        agent = self._router.registry.get(flight.agent) or self._router.registry.default
        answer = Answer()
        try:  # whatever fails, from gathering context to the last chunk, the turn ends with reply.done
            target = await self._answer(state, flight, agent, answer, may_hand_off=flight.may_hand_off)
            if target is not None:  # the model handed the conversation over: the new agent answers the turn
                state.agent = flight.agent = target.name
                log.info("handoff", session_id=turn.session_id, turn_id=turn.turn_id, agent=target.name, by="model")
                await self._answer(state, flight, target, answer, may_hand_off=False)
            if not "".join(flight.text).strip():  # a finished stream with no words is a failure, never an answer
                raise LLMError("llm_empty_reply", "the language model ended its reply without any text", True)
        except Exception as error:
            answer.finish = "error"
            failure = error if isinstance(error, LLMError) else LLMError("internal", "the assistant failed")
            log.warning(
                "reply failed",
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                code=failure.code,
                error=repr(error)[:300],
            )
            await self._pub.publish(
                ev.ErrorEvent(
                    session_id=turn.session_id,
                    turn_id=turn.turn_id,
                    producer=self._pub.producer,
                    code=failure.code,
                    message=str(failure),
                    source="orchestrator",
                    retryable=failure.retryable,
                )
            )
        text = "".join(flight.text)
        state.turns.reply_done(turn.turn_id, answer.finish)
        state.flight = None
        if text:
            state.history.extend((("user", turn.text), ("assistant", text)))
        await self._publish_done(
            flight,
            answer.finish,
            answer.usage,
            answer.context.memory_status,
            answer.context.retrieval_status,
            answer.citations,
        )

    def _offered_tools(self, agent: Agent, may_hand_off: bool, window: int | None) -> list[ToolDefinition]:
        tools = self._tools.definitions(agent.tools) if self._tools else []
        handoff = handoff_tool(self._router.registry, agent) if self._tools and may_hand_off else None
        tools += [handoff] if handoff else []
        if window and tools and tools_tokens(tools) > window * TOOLS_SHARE:
            # A window this small is for the conversation: no tools rather than no history; said once per agent.
            if agent.name not in self._tools_dropped:
                self._tools_dropped.add(agent.name)
                log.warning(
                    "tools not offered: they do not fit the model's context window",
                    agent=agent.name,
                    tools_tokens=tools_tokens(tools),
                    window=window,
                    share=TOOLS_SHARE,
                )
            tools = []
        return tools

    async def warm_up(self) -> None:
        """The model evaluates each agent's prompt and tools once, as background work, before any
        session's first turn has to (on 2 cores the general agent's ~1,000 tokens take 15-50 s)."""
        window = await self._model.context_window()
        registry = self._router.registry
        for name in sorted(registry.names(), key=lambda n: n == registry.default.name):  # the default last
            if agent := registry.get(name):
                messages = build_prompt(agent, None, "Hello", [], None, []).messages
                await self._model.warm(messages, agent.model, self._offered_tools(agent, True, window))

    async def _answer(
        self, state: SessionState, flight: InFlight, agent: Agent, answer: Answer, may_hand_off: bool
    ) -> Agent | None:
        """``agent`` answers the turn (context, prompt, the model and its tool rounds) into ``answer``;
        returns the agent the model handed the conversation to instead, if it did."""
        turn, settings = flight.turn, state.settings
        answer.context = await self._hooks.gather(turn, agent, settings.knowledge_bases if settings else None)
        window = await self._model.context_window()
        tools = self._offered_tools(agent, may_hand_off, window)
        offered_names = frozenset(t["function"]["name"] for t in tools)
        # Room for the reply's max tokens, the tools offered, and a margin for the estimate's error.
        budget = int(window * (1 - self._context_margin)) - self._max_tokens - tools_tokens(tools) if window else None
        prompt = build_prompt(
            agent,
            settings.tone if settings else None,
            turn.text,
            state.history,
            answer.context.memory,
            answer.context.passages,
            answer.context.retrieval_status,
            answer.context.camera,
            budget,
            now=session_now(settings.time_zone if settings else None) if mentions_time(turn.text) else None,
        )
        answer.citations = [p.citation for p in prompt.passages]
        if prompt.tokens != prompt.tokens_before:
            log.info(
                "prompt budgeted",
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                window=window,
                budget=budget,
                tokens_before=prompt.tokens_before,
                tokens=prompt.tokens,
                dropped_turns=prompt.dropped_turns,
                dropped_passages=prompt.dropped_passages,
                dropped_memory=prompt.dropped_memory,
            )
        messages = prompt.messages
        allowed = allowed_tools(turn.text, offered_names) if self._tool_hints else None
        for tool_round in range(1, self._max_tool_rounds + 2):
            offered = tools if tool_round <= self._max_tool_rounds else None  # the last round must answer
            said = len(flight.text)
            calls: tuple[ToolCallRequest, ...] = ()
            required = required_tool(turn.text, offered_names) if self._tool_hints and tool_round == 1 else None
            async for chunk in self._model.stream(messages, agent.model, self._max_tokens, offered, required, allowed):
                if chunk.usage is not None:
                    answer.usage = _added(answer.usage, chunk.usage)
                if chunk.finish_reason == "length":
                    answer.finish = "length"
                calls = chunk.tool_calls or calls
                if chunk.text:
                    await self._delta(flight, agent.name, chunk.text)
            if not calls or not offered:
                return None
            results, target = await self._call_tools(
                state, flight, agent, offered_names, calls, tool_round, answer.citations
            )
            if target is not None:
                return target
            messages = [*messages, call_message("".join(flight.text[said:]), calls), *results]
        return None

    async def _delta(self, flight: InFlight, agent: str, text: str) -> None:
        turn = flight.turn
        first = flight.first_token_at is None
        if first:
            flight.first_token_at = time.time()
        await self._pub.publish(
            ev.ReplyDelta(
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                producer=self._pub.producer,
                seq=len(flight.text),
                text=text,
                agent=agent,
                captured_at=turn.captured_at,
            )
        )
        flight.text.append(text)
        if first:
            await asyncio.sleep(0)  # let the client flush the first delta before parsing the rest

    async def _call_tools(
        self,
        state: SessionState,
        flight: InFlight,
        agent: Agent,
        offered: frozenset[str],
        calls: tuple[ToolCallRequest, ...],
        tool_round: int,
        cited: list[ev.Citation],
    ) -> tuple[list[ChatMessage], Agent | None]:
        """Run one round of calls (announced, run at once, answered): the model's tool messages, and the
        agent a valid handoff call names (then the round's other calls are not made). Only the tools
        ``offered`` may be called. What the results cite is added to ``cited``."""
        assert self._tools is not None
        turn = flight.turn
        envelope = {"session_id": turn.session_id, "turn_id": turn.turn_id, "producer": self._pub.producer}
        handoffs = [c for c in calls if c.name == HANDOFF] if HANDOFF in offered else []
        target = handoff_target(self._router.registry, agent, handoffs[0].arguments) if handoffs else None
        if isinstance(target, Agent):
            calls = (handoffs[0],)
        for call in calls:
            await self._pub.publish(
                ev.ToolCall(
                    **envelope,
                    call_id=call.id[:128],
                    name=call.name[:64],
                    arguments=call.arguments[:TURN_TEXT_CHARS],
                    agent=flight.agent,
                    round=tool_round,
                )
            )
        if isinstance(target, Agent):
            outcomes = [ToolOutcome(calls[0], "ok", {"agent": target.name})]
        else:
            settings = state.settings
            session = SessionContext(settings.time_zone, settings.knowledge_bases) if settings else SessionContext()
            ran = iter(await self._tools.run(turn, [c for c in calls if c not in handoffs], offered, session))
            outcomes = [ToolOutcome(c, "error", error=str(target)) if c in handoffs else next(ran) for c in calls]
        for outcome in outcomes:
            await self._pub.publish(
                ev.ToolResult(
                    **envelope,
                    call_id=outcome.call.id[:128],
                    name=outcome.call.name[:64],
                    status=outcome.status,
                    result=outcome.result,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                )
            )
            log.info(
                "tool called", tool=outcome.call.name[:64], status=outcome.status, ms=round(outcome.duration_ms, 2)
            )
            cited.extend(outcome.citations())
        return [outcome.message() for outcome in outcomes], target if isinstance(target, Agent) else None

    async def _stop(self, state: SessionState, reason: Literal["cancelled", "superseded"]) -> None:
        flight, state.flight = state.flight, None
        if flight is None:
            return
        state.turns.reply_done(flight.turn.turn_id, reason)
        if flight.task is None:
            return
        flight.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flight.task
        if flight.task.cancelled():
            await self._publish_done(flight, reason, ev.TokenUsage(), "skipped", "skipped", [])

    async def _publish_done(
        self,
        flight: InFlight,
        finish: Literal["stop", "length", "error", "cancelled", "superseded"],
        usage: ev.TokenUsage,
        memory: ev.DependencyStatus,
        retrieval: ev.DependencyStatus,
        citations: list[ev.Citation],
    ) -> None:
        turn = flight.turn
        await self._pub.publish(
            ev.ReplyDone(
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                producer=self._pub.producer,
                text="".join(flight.text),
                agent=flight.agent,
                model=self._model.name,
                finish_reason=finish,
                usage=usage,
                memory=memory,
                retrieval=retrieval,
                citations=citations,
                first_token_at=flight.first_token_at,
                captured_at=turn.captured_at,
            )
        )

    # ------------------------------------------------------------------ sessions

    async def _session(self, session_id: str, loaded: ev.SessionSettings | None = None) -> SessionState:
        state = self._sessions.get(session_id)
        if state is not None:
            return state
        fresh = SessionState()
        # A replica that never saw this session's settings reads the last ones recorded.
        fresh.settings = loaded if loaded is not None else await self._load_settings(session_id)
        if fresh.settings and fresh.settings.agent and self._router.registry.get(fresh.settings.agent):
            fresh.agent = fresh.settings.agent
        return self._sessions.setdefault(session_id, lambda: fresh)


def _added(total: ev.TokenUsage, more: ev.TokenUsage) -> ev.TokenUsage:
    """Usage of a turn over its rounds (each round is a request of its own)."""
    return ev.TokenUsage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
    )


def tools_tokens(tools: list[ToolDefinition]) -> int:
    return estimate_tokens(json.dumps(tools)) if tools else 0


def session_now(time_zone: str | None) -> datetime:
    """Now, in the session's zone (UTC when it has none or an unknown one)."""
    try:
        return datetime.now(ZoneInfo(time_zone or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        return datetime.now(UTC)
