"""Orchestrator worker.

Consumes: turn.user (queue group: one replica answers each turn; a direct subscription, the
latency-critical path), interrupt and session.settings (every replica: whoever owns the
in-flight turn acts).
Produces: reply.delta, reply.done, error. Asks: memory.context, retrieval.query, video.describe.
Logic: core.Orchestrator (turns), agents.Router (who answers), prompt.build_messages, llm.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from faststream.nats import NatsRouter
from pydantic import Field

from contracts import events as ev
from contracts.subjects import BY_NAME
from workers.runtime import Bus, WorkerSpec
from workers.runtime.handling import DirectSubscription
from workers.runtime.recorded import last_recorded
from workers.runtime.settings import LLMSettings

from .agents import AgentRegistry, Router
from .context import ContextHooks
from .core import Orchestrator
from .llm import build_model


class OrchestratorSettings(LLMSettings):
    llm_provider: Literal["openai", "echo"] = Field(
        default="openai", description="openai: any OpenAI-compatible server; echo: zero-latency load-test model")
    llm_max_tokens: int = Field(default=256, ge=1, le=16_384, description="Longest reply, in tokens")
    default_agent: str = Field(default="general", description="Agent of sessions that chose none")
    memory_timeout_s: float = Field(default=0.25, gt=0, description="Deadline of the memory context request")
    retrieval_timeout_s: float = Field(default=0.5, gt=0, description="Deadline of the retrieval request")
    camera_timeout_s: float = Field(default=0.25, gt=0, description="Deadline of the camera description request")
    memory_tokens: int = Field(default=1_500, ge=1, description="Token budget of recalled context")


_orchestrators: dict[int, Orchestrator] = {}


def _orchestrator(settings: OrchestratorSettings, bus: Bus) -> Orchestrator:
    async def last_settings(session_id: str) -> ev.SessionSettings | None:
        return await last_recorded(bus, "session.settings", session_id, ev.SessionSettings)

    model = build_model(settings.llm_provider, base_url=settings.llm_base_url, model=settings.llm_model,
                        api_key=settings.llm_api_key.get_secret_value(), timeout_s=settings.llm_timeout_s)
    hooks = ContextHooks(bus, settings.memory_timeout_s, settings.retrieval_timeout_s, settings.memory_tokens,
                         settings.camera_timeout_s)
    router = Router(AgentRegistry(default=settings.default_agent))
    return Orchestrator(bus, model, router, hooks, last_settings, settings.llm_max_tokens)


def build(settings: OrchestratorSettings, bus: Bus) -> NatsRouter:
    orchestrator = _orchestrators[id(bus)] = _orchestrator(settings, bus)
    router = NatsRouter()

    @router.subscriber(BY_NAME["interrupt"].template(bus.prefix), title="orchestrator.interrupt")
    async def on_interrupt(interrupt: ev.Interrupt) -> None:
        await orchestrator.on_interrupt(interrupt)

    @router.subscriber(BY_NAME["session.settings"].template(bus.prefix), title="orchestrator.settings")
    async def on_settings(settings_event: ev.SessionSettings) -> None:
        await orchestrator.on_settings(settings_event)

    return router


def direct(settings: OrchestratorSettings, bus: Bus) -> list[DirectSubscription[ev.UserTurn]]:
    orchestrator = _orchestrators[id(bus)]
    return [DirectSubscription("turn.user", ev.UserTurn, orchestrator.on_user_turn, queue="orchestrator",
                               title="orchestrator.turn")]


@contextlib.asynccontextmanager
async def lifespan(settings: OrchestratorSettings, bus: Bus) -> AsyncIterator[None]:
    yield
    await _orchestrators.pop(id(bus)).drain(settings.shutdown_timeout_s)


WORKER = WorkerSpec(name="orchestrator", description="Chat orchestration: agents, tone, LLM streaming, barge-in",
                    settings=OrchestratorSettings, build=build, lifespan=lifespan, direct=direct)
