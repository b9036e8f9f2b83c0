"""A MongoDB for the tests: ``SB_TEST_MONGO_URL`` when set (a real MongoDB), else nx-27017 on a temp file.

Every test that stores something uses a database of its own (:func:`database_url`), so tests never
see each other's documents and the same suite runs unchanged against a real server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from ops.servers import start_mongo


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("SB_TEST_MONGO_URL")
    if configured:
        yield configured
        return
    server = start_mongo(tmp_path_factory.mktemp("mongo"))
    yield server.url
    server.stop()


def database_url(base: str, database: str) -> str:
    """The server URL with ``database`` as its path (query options kept)."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))
