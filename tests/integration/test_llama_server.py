"""llama.cpp's own llama-server (optional: `just llama-server` builds it) serves the orchestrator's model
class as llama-cpp-python's server does: streamed replies, the window reported per slot on /props.

Skipped where it is not built (CI does not build it: docs/benchmarks.md, "Local LLM serving").
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops import llama_server, models
from ops.servers import RunningServer
from workers.orchestrator.llm import OpenAIChatModel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(llama_server.find() is None, reason="llama-server is not built (just llama-server)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = llama_server.start(
        models.SMOLLM2.alias, log_file=tmp_path_factory.mktemp("llama-server") / "log", context=1024
    )
    try:
        yield running
    finally:
        running.stop()


async def test_streams_a_reply_and_reports_each_slots_window(server: RunningServer) -> None:
    model = OpenAIChatModel(server.url, "local", models.SMOLLM2.alias, timeout_s=60)
    try:
        assert await model.context_window() == 1024  # one slot's share of --ctx-size
        chunks = [c async for c in model.stream([{"role": "user", "content": "Say hello."}], None, 8)]
    finally:
        await model.close()
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
