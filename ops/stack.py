"""`just up`: the whole system on embedded defaults, each part its own process, one terminal.

Process supervision is honcho's (the Procfile runner): output multiplexed with a
coloured prefix per process, Ctrl-C stops everything, and a process that exits stops the
stack so that a failure is never silent. Servers already reachable at the configured
URLs are reused instead of started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from honcho.manager import Manager
from honcho.printer import Printer

from . import registry
from .llm_server import MODEL_ALIAS, find_model, llm_command
from .servers import find_binary, mongo_command, nats_command, port_open

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = ROOT / ".run"
NATS_CONF = ROOT / "infra" / "nats.conf"


@dataclass(frozen=True)
class Process:
    name: str
    command: list[str]


# Servers stop last: on Ctrl-C honcho signals every process group at once, so a server runs in
# its own session behind a shell that waits before passing the signal on, and the workers
# drain against a live bus instead of logging a broken connection.
_OUTLIVE = ('trap \'sleep 1.5; kill -TERM "$child"\' TERM INT; setsid "$@" & child=$!; '
            'echo "$child" >> "$SB_STACK_PIDS"; wait "$child"; wait "$child"')
# Every process records its process group, so that a start after a crash of the launcher
# (whose children then live on) can stop the leftovers first.
_TRACK = 'cut -d" " -f5 /proc/$$/stat >> "$SB_STACK_PIDS"; exec "$@"'


def _outlive(command: list[str]) -> list[str]:
    return ["sh", "-c", _OUTLIVE, "sh", *command]


def _tracked(command: list[str]) -> list[str]:
    return ["sh", "-c", _TRACK, "sh", *command]


def reap_leftovers(pids_file: Path) -> int:
    """Stop the process groups a crashed earlier run left behind; returns how many."""
    if not pids_file.exists():
        return 0
    groups = {int(line) for line in pids_file.read_text().split() if line.isdigit()}
    pids_file.unlink()
    alive = [g for g in groups if started_by_stack(g, pids_file)]
    for group in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(started_by_stack(g, pids_file) for g in alive):
        time.sleep(0.1)
    for group in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return len(alive)


def started_by_stack(pid: int, pids_file: Path) -> bool:
    """Alive and started by this stack (a recycled pid belongs to someone else): its environment
    names our pids file. The command line proves nothing: the venv may live outside the checkout."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"SB_STACK_PIDS={pids_file}".encode() in environ.split(b"\0")


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url.split(",", maxsplit=1)[0].strip())
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def plan(env: dict[str, str]) -> tuple[list[Process], list[str]]:
    """What to start, and notes about what is reused. Launcher-only variables: SB_RUN_DIR (state of
    the local servers), SB_NATS_MONITOR_PORT (8222), SB_LLM_LOCAL_PORT (8089); SB_METRICS_PORT is the
    first of one metrics port per process."""
    run_dir = Path(env.setdefault("SB_RUN_DIR", str(DEFAULT_RUN_DIR)))
    env["SB_STACK_PIDS"] = str(run_dir / "stack.pids")
    processes: list[Process] = []
    notes: list[str] = []
    nats_url = env.setdefault("SB_NATS_URL", "nats://127.0.0.1:4222")
    host, port = _host_port(nats_url, 4222)
    if port_open(host, port):
        notes.append(f"reusing NATS at {nats_url}")
    else:
        command = [*nats_command(run_dir / "nats", port, NATS_CONF), "-m", env.get("SB_NATS_MONITOR_PORT", "8222")]
        processes.append(Process("nats", _outlive(command)))
    mongo_url = env.setdefault("SB_MONGO_URL", "mongodb://127.0.0.1:27017")
    host, port = _host_port(mongo_url, 27017)
    if port_open(host, port):
        notes.append(f"reusing MongoDB at {mongo_url}")
    else:
        data = run_dir / "mongo"
        data.mkdir(parents=True, exist_ok=True)
        processes.append(Process("mongo", _outlive(mongo_command(data / "db.sqlite", port, data / "mongo.log",
                                                                 data / "mongo.pid"))))
    llm_url = env.get("SB_LLM_BASE_URL")
    if llm_url:
        notes.append(f"using the LLM at {llm_url}")
    elif env.get("SB_LLM_PROVIDER", "openai") == "openai":
        llm_port = int(env.get("SB_LLM_LOCAL_PORT", "8089"))
        env["SB_LLM_BASE_URL"] = f"http://127.0.0.1:{llm_port}/v1"
        env.setdefault("SB_LLM_MODEL", MODEL_ALIAS)
        if port_open("127.0.0.1", llm_port):
            notes.append(f"reusing the local LLM server on port {llm_port}")
        else:
            processes.append(Process("llm", _outlive(llm_command(llm_port, find_model()))))
    python = sys.executable
    # SB_METRICS_PORT=N gives each process its own Prometheus endpoint: N, N+1, ... in this order.
    base = int(env.get("SB_METRICS_PORT", "0"))
    for i, (name, module) in enumerate([*((w, f"workers.{w}") for w in registry.WORKERS), ("edge", "edge")]):
        metrics = ["env", f"SB_METRICS_PORT={base + i}"] if base else []
        processes.append(Process(name, _tracked([*metrics, python, "-m", module])))
    processes.append(Process("health", _tracked([python, "-m", "ops.cli", "status", "--watch"])))
    return processes, notes


def up() -> int:
    env = dict(os.environ)
    env.setdefault("SB_LOG_FORMAT", "pretty")
    env.setdefault("PYTHONUNBUFFERED", "1")
    find_binary("nats-server")  # fail early with the install hint
    run_dir = Path(env.setdefault("SB_RUN_DIR", str(DEFAULT_RUN_DIR)))
    run_dir.mkdir(parents=True, exist_ok=True)
    if stopped := reap_leftovers(run_dir / "stack.pids"):
        print(f"switchboard: stopped {stopped} processes left over from a previous run", flush=True)
    processes, notes = plan(env)
    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty(), prefix=True))
    for note in notes:
        print(f"switchboard: {note}", flush=True)
    for process in processes:
        manager.add_process(process.name, shlex.join(process.command), env=env, cwd=str(ROOT))
    manager.loop()
    return manager.returncode or 0
