"""The ops tools against a NATS server that wants credentials (as a remote deployment does)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from contracts import events as ev
from ops.servers import RunningServer, start_nats
from workers.runtime import Bus

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-ops-password"


@pytest.fixture(scope="module")
def guarded_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("guarded")
    config = folder / "auth.conf"
    config.write_text(f'authorization {{ user: "ops", password: "{PASSWORD}" }}\n')
    server = start_nats(folder / "store", config=config)
    yield server
    server.stop()


async def sb(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_sb_tail_follows_a_server_that_wants_credentials(guarded_nats: RunningServer) -> None:
    url = f"nats://ops:{PASSWORD}@127.0.0.1:{guarded_nats.port}"
    tail = await sb("tail", "--nats-url", url, "--count", "1")
    assert tail.stderr is not None and tail.stdout is not None
    assert "following" in (await asyncio.wait_for(tail.stderr.readline(), 30)).decode()
    client = await nats.connect(url)
    bus = Bus(producer="test")
    bus.attach(client)
    await bus.publish(ev.SessionEnded(session_id="guarded-session-1", producer="test", reason="bye"))
    line = (await asyncio.wait_for(tail.stdout.readline(), 30)).decode()
    assert await asyncio.wait_for(tail.wait(), 30) == 0
    await client.close()
    assert "session.ended" in line and '"reason": "bye"' in line


async def test_wrong_credentials_fail_clearly_without_showing_the_password(guarded_nats: RunningServer) -> None:
    refused = await sb(
        "tail", "--nats-url", f"nats://ops:{PASSWORD}-wrong@127.0.0.1:{guarded_nats.port}", "--count", "1"
    )
    out, err = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 1
    assert "cannot reach NATS at nats://ops:***@127.0.0.1" in err.decode()
    assert PASSWORD not in (out + err).decode()
