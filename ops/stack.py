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
from .servers import find_binary, mongo_command, nats_command, port_open

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
NATS_CONF = ROOT / "infra" / "nats.conf"


@dataclass(frozen=True)
class Process:
    name: str
    command: list[str]


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
        processes.append(Process("nats", nats_command(RUN_DIR / "nats", port, NATS_CONF)))
    mongo_url = env.setdefault("SB_MONGO_URL", "mongodb://127.0.0.1:27017")
    host, port = _host_port(mongo_url, 27017)
    if port_open(host, port):
        notes.append(f"reusing MongoDB at {mongo_url}")
    else:
        data = RUN_DIR / "mongo"
        data.mkdir(parents=True, exist_ok=True)
        processes.append(Process("mongo", mongo_command(data / "db.sqlite", port, data / "mongo.log",
                                                        data / "mongo.pid")))
    python = sys.executable
    processes.extend(Process(name, [python, "-m", f"workers.{name}"]) for name in registry.WORKERS)
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
        print(f"switchboard: {note}")
    for process in processes:
        manager.add_process(process.name, shlex.join(process.command), env=env, cwd=str(ROOT))
    manager.loop()
    return manager.returncode or 0
