"""The real edge and the real orchestrator on the shared NATS server, under their own subject prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, settings

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
async def edge(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    """The edge's base URL, with an orchestrator answering its chats through the scripted LLM."""
    worker_settings = OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=llm.base_url,
        subject_prefix=PREFIX,
        llm_timeout_s=2.0,
        memory_timeout_s=0.1,
        retrieval_timeout_s=0.1,
    )
    async with running_worker(WORKER, worker_settings), running_edge(nats_url, subject_prefix=PREFIX) as url:
        yield url
