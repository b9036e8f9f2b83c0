"""The chaos suite's stack: one per test session, shared by the modules (each adds the workers it needs).

The servers start with the session; each test then calls ``conversation.healthy(stack, ...)``,
which starts the workers it needs (speech models load slowly, so only the spoken tests start the
transcriber) and restarts everything if an earlier test left the system unable to answer. A failed
test gets the tail of every process's log in its report; every fault's time to recover and each
test's totals are printed at the end of the run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from .harness import REPORT, Stack

_stacks: list[Stack] = []


S = TypeVar("S", bound=Stack)


@asynccontextmanager
async def started(running: S) -> AsyncIterator[S]:
    """The stack's servers up until the block ends; a failing test meanwhile gets its processes' logs."""
    _stacks.append(running)
    try:
        await running.start()
        yield running
    finally:
        await running.close()
        _stacks.remove(running)


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with started(Stack(tmp_path_factory.mktemp("chaos"))) as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and _stacks:
        stack = _stacks[-1]
        report.sections.append(("chaos: process logs", stack.all_tails()))
        if stack.orphans:
            report.sections.append(("chaos: orphans", f"processes left behind by killed services: {stack.orphans}"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("chaos: faults, time to recover, totals")
        for line in REPORT:
            terminalreporter.write_line(line)
