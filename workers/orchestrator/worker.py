"""Orchestrator worker.

Consumes: turn.user through the durable consumer USER_TURNS (one replica answers each turn; acked
once the reply is done, so a turn sent while no orchestrator runs, or held by one that died, is
answered by the next; a redelivered turn that was answered already is not answered again; one
older than SB_TURN_DEADLINE_S gets an error instead); interrupt and session.settings (every
replica: whoever owns the in-flight turn acts); session.started (every replica: the session's
tenant, whose knowledge bases its retrieval requests name).
Produces: reply.delta, reply.done, error, tool.call, tool.result. Asks: memory.context,
retrieval.query, video.describe, and the tools the model calls (tools.<name>, contracts/tools.py).
Logic: core.Orchestrator (turns), agents.Router (who answers; the agents are read from the TOML file
SB_AGENTS_FILE, or the shipped agents.toml, at start: docs/agents.md), prompt.build_prompt, llm,
tools.ToolRunner.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Literal

from nats.js.errors import NotFoundError
from pydantic import Field, ValidationInfo, field_validator

from contracts import events as ev
from contracts.streams import EVENTS, USER_TURNS
from contracts.subjects import BY_NAME
from workers.runtime import Bus, Delivery, Worker, consumes
from workers.runtime.logging import get_logger
from workers.runtime.provision import stream_name
from workers.runtime.recorded import last_recorded
from workers.runtime.settings import LLMSettings

from .agents import AgentRegistry, AgentsFileError, Router, load_agents, shipped_agents
from .context import ContextHooks, Tenants
from .core import Orchestrator
from .llm import build_model
from .tools import ToolRunner

log = get_logger("orchestrator")


class OrchestratorSettings(LLMSettings):
    llm_provider: Literal["openai", "echo"] = Field(
        default="openai", description="openai: any OpenAI-compatible server; echo: zero-latency load-test model"
    )
    llm_max_tokens: int = Field(default=256, ge=1, le=16_384, description="Longest reply, in tokens")
    llm_temperature: float = Field(
        default=0.2,
        ge=0,
        le=2,
        description="Sampling temperature: low, so that a question answered right is answered right again "
        "(the evaluation set's answers after a tool result varied run to run at the server's default 0.8)",
    )
    llm_context_window: int = Field(
        default=0,
        ge=0,
        description="Tokens of prompt and reply the model takes; every prompt is budgeted to it. 0: as the "
        "server reports (GET /props: llama.cpp's llama-server and the local server of `just up`); no "
        "budget when it reports none (OpenAI: set it)",
    )
    warm_up: bool = Field(
        default=False,
        description="At start, have the model evaluate each agent's prompt and tools as background work, so "
        "that a session's first turn does not: for a server with a prompt cache (`just up` sets it for its "
        "local one)",
    )
    default_agent: str | None = Field(
        default=None, description="Agent of sessions that chose none; unset: the agents file's `default`"
    )
    agents_file: Path | None = Field(
        default=None,
        validate_default=True,
        description="TOML file of the agents (docs/agents.md), validated at start-up; unset: the shipped "
        "workers/orchestrator/agents.toml",
    )
    memory_timeout_s: float = Field(default=0.25, gt=0, description="Deadline of the memory context request")
    retrieval_timeout_s: float = Field(default=0.5, gt=0, description="Deadline of the retrieval request")
    camera_timeout_s: float = Field(default=0.25, gt=0, description="Deadline of the camera description request")
    memory_tokens: int = Field(default=1_500, ge=1, description="Token budget of recalled context")
    tool_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait for any tool call (a tool's own deadline, when shorter, wins)"
    )
    max_tool_rounds: int = Field(
        default=3, ge=0, le=10, description="Rounds of tool calls per turn; then the model answers without tools"
    )
    tool_hints: bool = Field(
        default=True,
        description="Require the tool a turn plainly asks for (arithmetic, a unit conversion, the time in a "
        "named zone, a reminder) on its first tool round: small models otherwise answer those from memory",
    )
    turn_deadline_s: float = Field(
        default=120.0,
        gt=0,
        description="A turn still unanswered this long after it was sent (no orchestrator "
        "ran) gets an error (turn_not_answered) instead of a late reply",
    )

    @field_validator("agents_file")
    @classmethod
    def _valid_agents(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """A bad agents file (or a default agent it lacks) stops the orchestrator at start, in one line."""
        try:
            config = load_agents(path) if path is not None else shipped_agents()
        except AgentsFileError as error:
            raise ValueError(str(error)) from None
        default = info.data.get("default_agent")
        names = [a.name for a in config.agents]
        if default is not None and default not in names:
            raise ValueError(f"SB_DEFAULT_AGENT={default!r} is not an agent of the file (agents: {', '.join(names)})")
        return path

    def agent_registry(self) -> AgentRegistry:
        """The agents of ``agents_file`` (validated with these settings) and the default agent."""
        return AgentRegistry.from_file(self.agents_file, self.default_agent)


class OrchestratorWorker(Worker[OrchestratorSettings]):
    name = "orchestrator"
    description = "Chat orchestration: agents, tone, LLM streaming, barge-in"

    def __init__(self, settings: OrchestratorSettings, bus: Bus) -> None:
        super().__init__(settings, bus)

        async def last_settings(session_id: str) -> ev.SessionSettings | None:
            return await last_recorded(bus, "session.settings", session_id, ev.SessionSettings)

        async def last_started(session_id: str) -> ev.SessionStarted | None:
            return await last_recorded(bus, "session.started", session_id, ev.SessionStarted)

        self.tenants = Tenants(last_started)
        self._warming: asyncio.Task[None] | None = None

        self.model = build_model(
            settings.llm_provider,
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key.get_secret_value(),
            timeout_s=settings.llm_timeout_s,
            context_window=settings.llm_context_window or None,
            temperature=settings.llm_temperature,
        )
        hooks = ContextHooks(
            bus,
            settings.memory_timeout_s,
            settings.retrieval_timeout_s,
            settings.memory_tokens,
            settings.camera_timeout_s,
            self.tenants,
        )
        self.core = Orchestrator(
            bus,
            self.model,
            Router(settings.agent_registry()),
            hooks,
            last_settings,
            settings.llm_max_tokens,
            tools=ToolRunner(bus, settings.tool_timeout_s, self.tenants),
            max_tool_rounds=settings.max_tool_rounds,
            tool_hints=settings.tool_hints,
        )

    # Turns of many sessions are answered at once (a session's own turns supersede each other in core).
    @consumes("turn.user", delivery="jetstream", durable=USER_TURNS, max_in_flight=USER_TURNS.max_ack_pending)
    async def on_turn(self, turn: ev.UserTurn, delivery: Delivery) -> None:
        if delivery.deliveries > 1 and await self._answered(turn, delivery.stream_sequence):
            log.info("turn already answered; not answering again", turn_id=turn.turn_id)
            return
        if time.time() - turn.published_at > self.settings.turn_deadline_s:
            await self.core.refuse(
                turn,
                "turn_not_answered",
                f"no assistant was available for {self.settings.turn_deadline_s:g} s; please ask again",
            )
            return
        await self.core.answer(turn)

    @consumes("interrupt")
    async def on_interrupt(self, interrupt: ev.Interrupt) -> None:
        await self.core.on_interrupt(interrupt)

    @consumes("session.settings")
    async def on_settings(self, settings_event: ev.SessionSettings) -> None:
        await self.core.on_settings(settings_event)

    @consumes("session.started")
    async def on_session_started(self, started: ev.SessionStarted) -> None:
        self.tenants.learn(started)  # whose knowledge bases the session's turns search

    async def start(self) -> None:
        if self.settings.warm_up:
            self._warming = asyncio.create_task(self.core.warm_up(), name="warm up the model")

    async def stop(self) -> None:
        if self._warming:
            self._warming.cancel()
        await self.core.drain(self.settings.shutdown_timeout_s)
        await self.model.close()

    async def _answered(self, turn: ev.UserTurn, turn_sequence: int) -> bool:
        """Whether the bus recorded a reply.done for this turn after it (a replica died before its ack)."""
        stream = stream_name(EVENTS, self.bus.prefix)
        subject = BY_NAME["reply.done"].subject(turn.session_id, self.bus.prefix)
        sequence = turn_sequence
        for _ in range(100):  # replies recorded after the turn: a handful at most
            try:
                msg = await self.bus.js.get_msg(stream, seq=sequence + 1, subject=subject, next=True)
            except NotFoundError:
                return False
            if ev.ReplyDone.model_validate_json(msg.data or b"{}").turn_id == turn.turn_id:
                return True
            sequence = int(msg.seq or sequence + 1)
        return False


WORKER = OrchestratorWorker
