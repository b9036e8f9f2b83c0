"""`just up`: the whole system on embedded defaults, each part its own process, one terminal.

Process supervision is honcho's (the Procfile runner): output multiplexed with a
coloured prefix per process, Ctrl-C stops everything, and a process that exits stops the
stack so that a failure is never silent. Servers already reachable at the configured
URLs are reused instead of started.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from honcho.manager import Manager
from honcho.printer import Printer

from . import registry
from .llm_server import MODEL_ALIAS, find_model, llm_command
from .servers import find_binary, mongo_command, nats_command, port_open

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
NATS_CONF = ROOT / "infra" / "nats.conf"
LOCAL_LLM_PORT = 8089


@dataclass(frozen=True)
class Process:
    name: str
    command: list[str]


# Servers stop last: on Ctrl-C honcho signals every process group at once, so a server runs in
# its own session behind a shell that waits before passing the signal on, and the workers
# drain against a live bus instead of logging a broken connection.
_OUTLIVE = 'trap \'sleep 1.5; kill -TERM "$child"\' TERM INT; setsid "$@" & child=$!; wait "$child"; wait "$child"'


def _outlive(command: list[str]) -> list[str]:
    return ["sh", "-c", _OUTLIVE, "sh", *command]


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url.split(",", maxsplit=1)[0].strip())
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def plan(env: dict[str, str]) -> tuple[list[Process], list[str]]:
    """What to start, and notes about what is reused."""
    processes: list[Process] = []
    notes: list[str] = []
    nats_url = env.setdefault("SB_NATS_URL", "nats://127.0.0.1:4222")
    host, port = _host_port(nats_url, 4222)
    if port_open(host, port):
        notes.append(f"reusing NATS at {nats_url}")
    else:
        processes.append(Process("nats", _outlive(nats_command(RUN_DIR / "nats", port, NATS_CONF))))
    mongo_url = env.setdefault("SB_MONGO_URL", "mongodb://127.0.0.1:27017")
    host, port = _host_port(mongo_url, 27017)
    if port_open(host, port):
        notes.append(f"reusing MongoDB at {mongo_url}")
    else:
        data = RUN_DIR / "mongo"
        data.mkdir(parents=True, exist_ok=True)
        processes.append(Process("mongo", _outlive(mongo_command(data / "db.sqlite", port, data / "mongo.log",
                                                                 data / "mongo.pid"))))
    llm_url = env.get("SB_LLM_BASE_URL")
    if llm_url:
        notes.append(f"using the LLM at {llm_url}")
    elif env.get("SB_LLM_PROVIDER", "openai") == "openai":
        env["SB_LLM_BASE_URL"] = f"http://127.0.0.1:{LOCAL_LLM_PORT}/v1"
        env.setdefault("SB_LLM_MODEL", MODEL_ALIAS)
        if port_open("127.0.0.1", LOCAL_LLM_PORT):
            notes.append(f"reusing the local LLM server on port {LOCAL_LLM_PORT}")
        else:
            processes.append(Process("llm", _outlive(llm_command(LOCAL_LLM_PORT, find_model()))))
    python = sys.executable
    processes.extend(Process(name, [python, "-m", f"workers.{name}"]) for name in registry.WORKERS)
    processes.append(Process("edge", [python, "-m", "edge"]))
    processes.append(Process("health", [python, "-m", "ops.cli", "status", "--watch"]))
    return processes, notes


def up() -> int:
    env = dict(os.environ)
    env.setdefault("SB_LOG_FORMAT", "pretty")
    env.setdefault("PYTHONUNBUFFERED", "1")
    find_binary("nats-server")  # fail early with the install hint
    processes, notes = plan(env)
    RUN_DIR.mkdir(exist_ok=True)
    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty(), prefix=True))
    for note in notes:
        print(f"switchboard: {note}", flush=True)
    for process in processes:
        manager.add_process(process.name, shlex.join(process.command), env=env, cwd=str(ROOT))
    manager.loop()
    return manager.returncode or 0
