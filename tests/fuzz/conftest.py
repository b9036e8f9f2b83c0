"""The real edge and the real orchestrator on the shared NATS server, under their own subject prefix."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import nats
import pytest
from hypothesis import HealthCheck, settings

from ops.health import discover
from tests.fuzz.harness import Stack, healthy
from tests.support.edge_client import running_edge
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker

PREFIX = "fuzz"

# Seeded and bounded: the same examples on every run (CI failures reproduce), no per-example deadline
# (a real socket round trip on a shared 2-core machine varies), fixtures shared across examples on purpose.
settings.register_profile(
    "fuzz",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
async def stack(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[Stack]:
    """The edge, with an orchestrator answering its chats through the scripted LLM; both found as
    ``sb status`` finds them (service discovery), the orchestrator's health endpoint with them."""
    worker_settings = OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=llm.base_url,
        subject_prefix=PREFIX,
        llm_timeout_s=2.0,
        memory_timeout_s=0.1,
        retrieval_timeout_s=0.1,
    )
    async with running_worker(WORKER, worker_settings), running_edge(nats_url, subject_prefix=PREFIX) as url:
        nc = await nats.connect(nats_url)
        try:
            ours = [s for s in await discover(nc, wait_s=1.0) if s.pid == os.getpid()]
            [orchestrator] = [s for s in ours if s.name == "orchestrator"]
            assert "edge" in {s.name for s in ours} and orchestrator.health_subject is not None, ours
            yield Stack(url, nc, orchestrator.id, orchestrator.health_subject)
        finally:
            await nc.drain()


@pytest.fixture(autouse=True)
async def still_healthy(stack: Stack) -> AsyncIterator[None]:
    """After each test, every process of the stack is still there, the same one, and healthy."""
    yield
    await healthy(stack)
    running = await discover(stack.nc, wait_s=0.3)
    assert [s.problems for s in running if s.id == stack.orchestrator_id] == [()], running
    assert any(s.name == "edge" and s.pid == os.getpid() for s in running), running
