"""`just up` as a user runs it: every process healthy, a real turn through the local LLM,
a restart after the launcher crashed, and Ctrl-C stopping everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.servers import free_port, port_open
from ops.stack import reap_leftovers
from tests.support.edge_client import connect

ROOT = Path(__file__).resolve().parents[2]


def launch(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "up"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_healthy(env: dict[str, str], timeout: float = 90.0) -> str:
    result = subprocess.run([sys.executable, "-m", "ops.cli", "status", "--wait", str(timeout)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout + 30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "SB_RUN_DIR": str(tmp_path / "run"), "SB_LOG_FORMAT": "json",
           "SB_NATS_URL": f"nats://127.0.0.1:{free_port()}", "SB_NATS_MONITOR_PORT": str(free_port()),
           "SB_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}", "SB_LLM_LOCAL_PORT": str(free_port()),
           "SB_EDGE_PORT": str(free_port())}
    for key in ("SB_LLM_BASE_URL", "SB_LLM_PROVIDER", "SB_SUBJECT_PREFIX"):
        env.pop(key, None)
    yield env


def wait_for_text(path: Path, text: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if text in path.read_text():
            return True
        time.sleep(0.2)
    return False


def still_open(candidates: list[int], within: float) -> list[int]:
    """The ports still listening after waiting up to ``within`` seconds for all to close."""
    deadline = time.monotonic() + within
    while (open_ports := [p for p in candidates if port_open("127.0.0.1", p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return open_ports


def ports(env: dict[str, str]) -> list[int]:
    return [int(env["SB_NATS_URL"].rsplit(":", 1)[1]), int(env["SB_MONGO_URL"].rsplit(":", 1)[1]),
            int(env["SB_LLM_LOCAL_PORT"]), int(env["SB_EDGE_PORT"])]


async def test_up_runs_everything_survives_a_crash_and_stops_cleanly(stack_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    launcher = launch(stack_env, log)
    try:
        status = wait_healthy(stack_env)
        assert "orchestrator" in status and "edge" in status and "all expected services healthy" in status
        client = await connect(f"http://127.0.0.1:{stack_env['SB_EDGE_PORT']}")
        await client.chat("Say hi.")
        done = (await client.until(lambda e: e["kind"] == "reply.done", timeout=60))[-1]
        assert done["finish_reason"] in ("stop", "length") and done["text"].strip()
        await client.close()

        # The launcher crashes: its children live on; a second start must still work.
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert all(port_open("127.0.0.1", p) for p in ports(stack_env))
        launcher = launch(stack_env, log)
        # The new launcher first stops the orphans (the old services would answer a status check).
        assert wait_for_text(log, "left over from a previous run", within=30.0), log.read_text()[-2000:]
        assert "all expected services healthy" in wait_healthy(stack_env)

        # One Ctrl-C stops everything.
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=20)
        assert not still_open(ports(stack_env), within=10.0), log.read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        reap_leftovers(Path(stack_env["SB_RUN_DIR"]) / "stack.pids")  # a failed test leaves no orphans
