"""The cluster suite's stack: three NATS nodes, the servers and workers of the chaos suite on them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.chaos.conftest import pytest_runtest_makereport, started  # noqa: F401 - failures get the processes' logs

from .harness import ClusterStack


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClusterStack]:
    async with started(ClusterStack(tmp_path_factory.mktemp("cluster"))) as running:
        yield running
