"""`just up` as a user runs it: every process healthy, a real turn through the local LLM,
a restart after the launcher crashed, a killed worker restarted, a crash loop stopping the
stack with its reason, and Ctrl-C, SIGTERM, SIGHUP or a closed terminal stopping everything within
the bound, also when nobody reads the launcher's output any more or it has none."""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from ops import registry
from ops.servers import free_port, port_open
from ops.stack import STOP_WITHIN, reap_leftovers
from tests.support.edge_client import connect
from tests.support.scripted_llm import ScriptedLLM

ROOT = Path(__file__).resolve().parents[2]


def launch(env: dict[str, str], log: Path, stdout: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "up"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=stdout or log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_healthy(env: dict[str, str], timeout: float = 90.0) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "status", "--wait", str(timeout)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# The stack runs its local LLM at nice 5 (ops/stack.py, NICENESS): in the suite, beside another test's
# busy processes at the default priority, the first reply (after the agents' warm-up) took over 60 s
# once in CI. What is measured here is the stack's shape, not its speed (bench/ has that).
FIRST_REPLY_S = 180


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "SB_RUN_DIR": str(tmp_path / "run"),
        "SB_LOG_FORMAT": "json",
        "SB_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "SB_NATS_MONITOR_PORT": str(free_port()),
        "SB_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}",
        "SB_LLM_LOCAL_PORT": str(free_port()),
        "SB_LLM_LOCAL_MODEL": "smollm2",  # the stack's shape, not the default model's answers (1.9 GB, slower)
        "SB_EDGE_PORT": str(free_port()),
    }
    # The suite's own NATS users (tests/conftest.py) are not the stack's: its tools find the stack's.
    for key in ("SB_LLM_BASE_URL", "SB_LLM_PROVIDER", "SB_SUBJECT_PREFIX", "SB_NATS_USERS_FILE"):
        env.pop(key, None)
    yield env


def wait_for_text(path: Path, text: str, within: float) -> bool:
    return wait_for_line(path, re.escape(text), within) is not None


def wait_for_line(path: Path, pattern: str, within: float) -> str | None:
    """The first line of ``path`` that matches ``pattern``, waiting up to ``within`` seconds for it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if found := re.search(f"^.*{pattern}.*$", path.read_text(), re.MULTILINE):
            return found[0]
        time.sleep(0.2)
    return None


def still_open(candidates: list[int], within: float) -> list[int]:
    """The ports still listening after waiting up to ``within`` seconds for all to close."""
    deadline = time.monotonic() + within
    while (open_ports := [p for p in candidates if port_open("127.0.0.1", p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return open_ports


def stack_pids(env: dict[str, str]) -> list[int]:
    """Every live process the stack started (they all carry its pids file in their environment)."""
    mark = f"SB_STACK_PIDS={Path(env['SB_RUN_DIR']) / 'stack.pids'}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def supervised(env: dict[str, str]) -> dict[str, int]:
    """Name (supervisord's program name) to pid of each process supervisord started (a group leader)."""
    named = {}
    for pid in stack_pids(env):
        try:
            environ = dict(
                item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item
            )
            if os.getpgid(pid) == pid and b"SUPERVISOR_PROCESS_NAME" in environ:
                named[environ[b"SUPERVISOR_PROCESS_NAME"].decode()] = pid
        except OSError:
            continue
    return named


def ports(env: dict[str, str]) -> list[int]:
    return [
        int(env["SB_NATS_URL"].rsplit(":", 1)[1]),
        int(env["SB_MONGO_URL"].rsplit(":", 1)[1]),
        int(env["SB_LLM_LOCAL_PORT"]),
        int(env["SB_EDGE_PORT"]),
    ]


async def test_up_runs_everything_survives_a_crash_and_stops_cleanly(stack_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    launcher = launch(stack_env, log)
    try:
        status = wait_healthy(stack_env)
        assert "orchestrator" in status and "edge" in status and "all expected services healthy" in status
        client = await connect(f"http://127.0.0.1:{stack_env['SB_EDGE_PORT']}")
        await client.chat("Say hi.")
        done = (await client.until(lambda e: e["kind"] == "reply.done", timeout=FIRST_REPLY_S))[-1]
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
        launcher.wait(timeout=STOP_WITHIN + 5)
        assert not still_open(ports(stack_env), within=2.0), log.read_text()[-3000:]
    finally:
        stop(launcher, stack_env)


async def test_a_killed_worker_is_restarted_and_the_rest_keeps_running(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "up.log"
    launcher = launch(stack_env, log)
    try:
        wait_healthy(stack_env)
        before = supervised(stack_env)
        os.kill(before["orchestrator"], signal.SIGKILL)
        said = wait_for_line(log, r"orchestrator exited \(terminated by SIGKILL\)", within=10.0)
        assert said is not None and "restarting it" in said, log.read_text()[-3000:]
        assert "all expected services healthy" in wait_healthy(stack_env)
        after = supervised(stack_env)
        assert after.pop("orchestrator") != before.pop("orchestrator")
        assert after == before  # nothing else was restarted
        client = await connect(f"http://127.0.0.1:{stack_env['SB_EDGE_PORT']}")
        await client.chat("Say hi.")
        done = (await client.until(lambda e: e["kind"] == "reply.done", timeout=FIRST_REPLY_S))[-1]
        assert done["text"].strip()
        await client.close()
        assert launcher.poll() is None
    finally:
        stop(launcher, stack_env)


def test_a_crash_loop_stops_the_stack_with_the_reason(stack_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    # Only the stats worker reads this variable; below its minimum, that worker exits at once (status 2).
    launcher = launch({**stack_env, "SB_STATS_MAX_TURNS": "1"}, log)
    try:
        assert launcher.wait(timeout=120) == 1, log.read_text()[-3000:]
        output = log.read_text()
        reasons = [line for line in output.splitlines() if "stopping everything" in line]
        assert len(reasons) == 1 and "stats keeps exiting right after its start" in reasons[0], output[-3000:]
        assert "last: exit status 2" in reasons[0]
        assert "stats exited (exit status 2) within 10 s of its start; restarting it in 1 s" in output
        assert re.search(r" stats +\| invalid configuration: SB_STATS_MAX_TURNS=", output)  # its own words
        assert not stack_pids(stack_env) and not still_open(ports(stack_env), within=2.0)
    finally:
        stop(launcher, stack_env)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_everything_when_nobody_reads_the_output(
    stack_env: dict[str, str], tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """`just up | tee up.log`, then Ctrl-C (which also ends tee), or SIGTERM after tee is gone."""
    log = tmp_path / "up.log"
    tee = subprocess.Popen(["tee", str(log)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert tee.stdin is not None
    launcher = launch(stack_env, log, stdout=tee.stdin)
    tee.stdin.close()  # the launcher holds the only writing end
    try:
        wait_healthy(stack_env)
        if stop_signal == signal.SIGINT:
            tee.send_signal(signal.SIGINT)
        else:
            tee.kill()
            tee.wait()
        started = time.monotonic()
        launcher.send_signal(stop_signal)
        stops_everything_in_order(launcher, stack_env, started)
    finally:
        tee.kill()
        stop(launcher, stack_env)


def test_a_hang_up_stops_everything_when_stdout_was_closed_from_the_start(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    """`just up >&-` (no stdout at all: the launcher used to die at once with a traceback), then SIGHUP."""
    log = tmp_path / "up.log"
    with log.open("ab") as errors:
        launcher = subprocess.Popen(
            ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "ops.cli", "up"],
            cwd=ROOT,
            env=stack_env,
            start_new_session=True,
            stderr=errors,
        )
    try:
        wait_healthy(stack_env)
        started = time.monotonic()
        launcher.send_signal(signal.SIGHUP)
        stops_everything_in_order(launcher, stack_env, started)
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        stop(launcher, stack_env)


@pytest.mark.parametrize("leads", [True, False], ids=["launcher-leads-the-terminal", "behind-just"])
def test_closing_the_terminal_stops_everything(stack_env: dict[str, str], tmp_path: Path, leads: bool) -> None:
    """The terminal `just up` runs in is closed: its pseudo-terminal hangs up. Leading the terminal's session
    (a terminal or tmux running it directly) the launcher gets SIGHUP; behind `just`, which keeps the
    SIGHUP, only its terminal tells it: writes fail (EIO) and the terminal is no tty any more."""
    log = tmp_path / "up.log"
    terminal, attached = os.openpty()
    # Leading: a session of its own whose controlling terminal is the pty (util-linux setsid, no fork).
    launcher = subprocess.Popen(
        [*(["setsid", "--ctty"] if leads else []), sys.executable, "-m", "ops.cli", "up"],
        cwd=ROOT,
        env=stack_env,
        start_new_session=not leads,
        stdin=attached,
        stdout=attached,
        stderr=attached,
    )
    os.close(attached)
    screen = Screen(terminal, log)
    try:
        wait_healthy(stack_env)
        assert "switchboard" in log.read_text()  # the terminal showed the launcher's output
        started = time.monotonic()
        screen.close()  # the terminal window goes
        stops_everything_in_order(launcher, stack_env, started)
    finally:
        screen.close()
        stop(launcher, stack_env)


class Screen:
    """A terminal showing what the launcher writes (into ``log``) until it is closed."""

    def __init__(self, fd: int, log: Path) -> None:
        self._fd, self._log = fd, log
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._show, daemon=True)
        self._thread.start()

    def _show(self) -> None:
        with self._log.open("ab") as out:
            while not self._closing.is_set():
                if select.select([self._fd], [], [], 0.1)[0]:
                    try:
                        out.write(os.read(self._fd, 65536))
                    except OSError:  # EIO: the launcher's side is closed
                        return

    def close(self) -> None:
        if not self._closing.is_set():
            self._closing.set()
            self._thread.join()
            os.close(self._fd)


def stops_everything_in_order(launcher: subprocess.Popen[bytes], env: dict[str, str], started: float) -> None:
    """The launcher, told to stop at ``started``, exits 0 within the bound, and nothing of the stack is left:
    supervisord stopped every process, the servers last (the workers drained against a live bus)."""
    assert launcher.wait(timeout=STOP_WITHIN + 10) == 0
    assert time.monotonic() - started < STOP_WITHIN + 3
    assert not stack_pids(env) and not still_open(ports(env), within=2.0)
    events = (Path(env["SB_RUN_DIR"]) / "supervisord.log").read_text()
    stopped = re.findall(r" stopped: (\w+) ", events)
    assert sorted(stopped) == sorted({*registry.SERVICES, "health", "nats", "mongo", "llm"}), events
    assert set(stopped[-3:]) == {"nats", "mongo", "llm"}, events


async def test_no_configured_secret_appears_in_any_log_or_the_launchers_output(
    stack_env: dict[str, str], tmp_path: Path, llm: ScriptedLLM
) -> None:
    """Issue 16: "no secret value in any error or log (a test greps for the configured secrets)". Every
    process logs at debug; a conversation, a failed login with a wrong key, a forged session token and a
    wrong operator token; then every log file of the run and the launcher's output are searched for each
    configured secret and each NATS password of the stack's users file."""
    secrets_by_name = {
        "SB_EDGE_SECRET": "edge-secret-" + secrets.token_hex(24),
        "SB_EDGE_OPERATOR_TOKEN": "operator-" + secrets.token_hex(16),
        "SB_LLM_API_KEY": "sk-llm-" + secrets.token_hex(16),
        "SB_VIDEO_VISION_API_KEY": "sk-vision-" + secrets.token_hex(16),
        "SB_EDGE_API_KEYS (tenant acme)": "key-acme-" + secrets.token_hex(16),
        "SB_EDGE_API_KEYS (bare)": "key-bare-" + secrets.token_hex(16),
    }
    env = stack_env | {
        "SB_LOG_LEVEL": "debug",
        "SB_LLM_BASE_URL": llm.base_url,  # no local model: the conversation is not the point
        "SB_LLM_MODEL": "scripted",
        "SB_LLM_API_KEY": secrets_by_name["SB_LLM_API_KEY"],
        "SB_EDGE_SECRET": secrets_by_name["SB_EDGE_SECRET"],
        "SB_EDGE_OPERATOR_TOKEN": secrets_by_name["SB_EDGE_OPERATOR_TOKEN"],
        "SB_VIDEO_VISION_API_KEY": secrets_by_name["SB_VIDEO_VISION_API_KEY"],
        "SB_EDGE_API_KEYS": json.dumps(
            [f"acme={secrets_by_name['SB_EDGE_API_KEYS (tenant acme)']}", secrets_by_name["SB_EDGE_API_KEYS (bare)"]]
        ),
    }
    log = tmp_path / "up.log"
    launcher = launch(env, log)
    base = f"http://127.0.0.1:{env['SB_EDGE_PORT']}"
    try:
        wait_healthy(env)
        async with httpx.AsyncClient(base_url=base) as http:
            wrong = await http.post("/v1/sessions", headers={"Authorization": f"Bearer {secrets.token_hex(16)}"})
            assert wrong.status_code == 401
            granted = await http.post(
                "/v1/sessions", headers={"Authorization": f"Bearer {secrets_by_name['SB_EDGE_API_KEYS (tenant acme)']}"}
            )
            token = granted.raise_for_status().json()["token"]
            assert (await http.get("/ops/api/snapshot", headers={"Authorization": "Bearer not-it"})).status_code == 401
            operator = {"Authorization": f"Bearer {secrets_by_name['SB_EDGE_OPERATOR_TOKEN']}"}
            assert (await http.get("/ops/api/snapshot", headers=operator)).status_code in (200, 503)
        client = await connect(base, token)
        await client.chat("Hello there.")
        await client.until(lambda e: e["kind"] == "reply.done", timeout=60)
        await client.close()
        with pytest.raises(AssertionError, match="auth"):  # a forged token: refused
            await connect(base, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))

        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=STOP_WITHIN + 10) == 0
    finally:
        stop(launcher, env)
    assert not (leaks := secrets_in_logs(secrets_by_name, Path(env["SB_RUN_DIR"]), log)), leaks


def secrets_in_logs(secrets_by_name: dict[str, str], run_dir: Path, output: Path) -> list[str]:
    """Which secret (by name, never its value) is in which log file of the run or the launcher's ``output``;
    the NATS passwords of the stack's users file are added to ``secrets_by_name``."""
    passwords = json.loads((run_dir / "nats-auth" / "credentials.json").read_text())
    assert passwords and all(isinstance(p, str) and len(p) >= 16 for p in passwords.values())
    secrets_by_name = secrets_by_name | {f"NATS password of {user}": p for user, p in passwords.items()}
    logs = [output, *sorted(p for p in run_dir.rglob("*.log*") if p.is_file())]
    assert len(logs) > len(registry.SERVICES) and any(p.name == "edge.log" and p.stat().st_size for p in logs)
    return [
        f"{name} in {path.name}"
        for path in logs
        for name, secret in secrets_by_name.items()
        if secret.encode() in path.read_bytes()
    ]


def stop(launcher: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    """A failed test leaves no orphans."""
    if launcher.poll() is None:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    reap_leftovers(Path(env["SB_RUN_DIR"]) / "stack.pids")
