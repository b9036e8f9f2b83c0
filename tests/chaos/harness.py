"""The whole system as separate processes, for breaking it on purpose.

nats-server, the MongoDB wire server and the scripted LLM run on fixed ports chosen once, so
that each can be stopped and started again on the same port and store: clients and workers
reconnect to the address they know. Every worker and the edge is its own
``python -m ...`` subprocess in its own process group, with its output in a log file under
the run's temp dir (appended across restarts). Readiness is what an operator sees: NATS
service discovery (``$SRV.INFO``) answered by an instance started after the spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import nats
from nats.aio.client import Client as NatsClient

from contracts.envelope import Event
from contracts.subjects import DEFAULT_PREFIX
from ops import access
from ops.health import discover
from ops.servers import RunningServer, free_port, port_open, start_mongo, start_nats, wait_for_port
from ops.stack import NATS_CONF
from workers.runtime import Bus

ROOT = Path(__file__).resolve().parents[2]
SECRET = "chaos-secret-" + "x" * 40
#: Services whose start loads speech or embedding models, given more time to come up.
SLOW_STARTERS = frozenset({"transcriber", "retriever", "voice", "video"})
ReplyT = TypeVar("ReplyT", bound=Event)
#: What the run observed (faults, recovery times, totals, orphans), for the terminal summary (conftest.py).
REPORT: list[str] = []


class StackError(RuntimeError):
    pass


def service_of(name: str) -> str:
    """``orchestrator#2`` (a second replica, its own process) -> ``orchestrator``."""
    return name.split("#", 1)[0]


@dataclass
class Managed:
    """One worker or the edge: how to start it and what runs now."""

    name: str
    module: str
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise StackError(f"{self.name} was never started")
        return self.process.pid


@dataclass
class Stack:
    base: Path
    nats_port: int = field(default_factory=free_port)
    mongo_port: int = field(default_factory=free_port)
    llm_port: int = field(default_factory=free_port)
    edge_port: int = field(default_factory=free_port)
    nats: RunningServer | None = None
    mongo: RunningServer | None = None
    llm: subprocess.Popen[bytes] | None = None
    services: dict[str, Managed] = field(default_factory=dict)
    #: Ports of further edges (``edge#2``...), each its own process on its own port.
    edge_ports: dict[str, int] = field(default_factory=dict)
    #: Processes found alive in a killed service's group (children it left behind), by service.
    orphans: dict[str, list[int]] = field(default_factory=dict)
    _nc: NatsClient | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def bus_users(self) -> Path:
        """The stack's NATS users: each process connects as its own, the test as the operator."""
        return self.base / "nats-auth"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/chaos"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    def edge_port_of(self, name: str) -> int:
        if name == "edge":
            return self.edge_port
        return self.edge_ports.setdefault(name, free_port())

    def edge_urls(self) -> list[str]:
        """The running edges' addresses (the first edge first), where a client may (re)connect."""
        names = sorted((n for n, s in self.services.items() if service_of(n) == "edge" and s.alive), key=len)
        # None running (the only edge restarting): where it comes back.
        return [f"http://127.0.0.1:{self.edge_port_of(name)}" for name in names] or [self.edge_url]

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise StackError("the stack is not started")
        return self._nc

    # ------------------------------------------------------------------ servers

    async def start(self) -> None:
        """The servers, then the test's own NATS connection (it reconnects across restarts)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nats = await asyncio.to_thread(self._start_nats)
        self.mongo = await asyncio.to_thread(start_mongo, self.base / "mongo", self.mongo_port)
        self.llm = await asyncio.to_thread(self._start_llm)
        self._nc = await nats.connect(
            servers=access.url_with_user(self.nats_url, self.bus_users).split(","),
            name="chaos-test",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            error_cb=_expected_outage,
        )

    def _start_llm(self) -> subprocess.Popen[bytes]:
        """The scripted OpenAI-compatible server as its own process: it never waits on the test's loop."""
        with (self.logs / "llm.log").open("ab") as log:
            llm = subprocess.Popen(
                [sys.executable, "-m", "tests.support.scripted_llm", "--port", str(self.llm_port)],
                cwd=ROOT,
                env=self._base_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.llm_port, 30.0, llm)
        return llm

    def _start_nats(self) -> RunningServer:
        config = access.server_config(NATS_CONF, self.bus_users, prefixes=(DEFAULT_PREFIX,))
        return start_nats(self.base / "nats", self.nats_port, config, log_file=self.logs / "nats.log")

    async def restart_nats(self, down_s: float) -> None:
        """nats-server stopped (SIGTERM), ``down_s`` of nothing, then started on the same port and store."""
        assert self.nats is not None
        await asyncio.to_thread(self.nats.stop)
        await asyncio.sleep(down_s)
        self.nats = await asyncio.to_thread(self._start_nats)

    async def stop_mongo(self) -> None:
        assert self.mongo is not None
        await asyncio.to_thread(self.mongo.stop)

    async def start_mongo(self) -> None:
        self.mongo = await asyncio.to_thread(start_mongo, self.base / "mongo", self.mongo_port)

    # ------------------------------------------------------------------ workers and the edge

    def _base_env(self) -> dict[str, str]:
        # Nothing of the caller's SB_ configuration leaks in: the run is defined here alone.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
        return env | {"PYTHONUNBUFFERED": "1", "SB_RUN_DIR": str(self.base / "run")}

    def env_for(self, name: str) -> dict[str, str]:
        env = self._base_env() | {
            "SB_NATS_URL": self.nats_url,
            "SB_NATS_USERS_FILE": str(self.bus_users / access.CREDENTIALS),
            "SB_LOG_FORMAT": "json",
            "SB_LOG_LEVEL": "info",
            "SB_LLM_BASE_URL": f"http://127.0.0.1:{self.llm_port}/v1",
            "SB_LLM_MODEL": "scripted",
            "SB_LLM_API_KEY": "chaos",
            "SB_MONGO_URL": self.mongo_url,
            "SB_EDGE_PORT": str(self.edge_port_of(name) if service_of(name) == "edge" else self.edge_port),
            "SB_EDGE_SECRET": SECRET,
        }
        if service_of(name) == "transcriber":
            # The light engine and ONNX VAD: same pipeline, a fraction of the start-up time. One
            # recognition child, so the session under test is certainly the one it serves.
            env |= {"SB_STT_ENGINE": "pocketsphinx", "SB_VAD_ONNX": "true", "SB_RECOGNITION_PROCESSES": "1"}
        return env

    def _managed(self, name: str) -> Managed:
        if name not in self.services:
            module = "edge" if service_of(name) == "edge" else f"workers.{service_of(name)}"
            self.services[name] = Managed(name, module, self.logs / f"{name}.log", self.env_for(name))
        return self.services[name]

    def spawn(self, name: str) -> Managed:
        service = self._managed(name)
        if service.alive:
            raise StackError(f"{name} is already running (pid {service.pid})")
        self._reap_group(service, note=True)
        service.starts += 1
        with service.log.open("ab") as log:
            log.write(f"\n===== chaos harness: start #{service.starts} of {name} at {time.time():.3f}\n".encode())
        out = service.log.open("ab")
        try:
            service.process = subprocess.Popen(
                [sys.executable, "-m", service.module],
                cwd=ROOT,
                env=service.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()  # the child has its own copy
        return service

    async def ensure(self, *names: str) -> None:
        """Start whichever of ``names`` is not running, all at once, and wait until each is ready."""
        started = [self.spawn(name).name for name in names if not self._managed(name).alive]
        await asyncio.gather(*(self.wait_ready(name) for name in started))

    async def start_service(self, name: str) -> float:
        """Start one service; returns the seconds it took to be ready."""
        began = time.monotonic()
        self.spawn(name)
        await self.wait_ready(name)
        return time.monotonic() - began

    async def wait_ready(self, name: str, timeout: float | None = None) -> None:
        service = self._managed(name)
        timeout = timeout or (120.0 if name in SLOW_STARTERS else 60.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not service.alive:
                raise StackError(
                    f"{name} exited with code {service.process and service.process.returncode} "
                    f"before it was ready:\n{self.log_tail(name)}"
                )
            if self.nc.is_connected:
                running = await discover(self.nc, wait_s=0.25)
                # Its own process (the pid it announces): a twin replica started at the same time must not count.
                fresh = any(s.name == service_of(name) and s.pid == service.pid for s in running)
                if fresh and (service_of(name) != "edge" or port_open("127.0.0.1", self.edge_port_of(name))):
                    return
            else:
                await asyncio.sleep(0.1)
        raise StackError(f"{name} not ready after {timeout:g}s:\n{self.log_tail(name)}")

    async def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the service's main process (not its children) and wait until it is gone."""
        service = self._managed(name)
        if not service.alive or service.process is None:
            raise StackError(f"{name} is not running")
        service.process.send_signal(sig)
        await asyncio.to_thread(service.process.wait, 30)

    async def stop(self, name: str) -> None:
        """A graceful stop (SIGTERM, what an operator does), SIGKILL if it takes over 15 s."""
        service = self._managed(name)
        if service.process is None or not service.alive:
            return
        service.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(service.process.wait, 15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            await asyncio.to_thread(service.process.wait, 10)
        self._reap_group(service, note=False)

    def running(self) -> list[str]:
        return [name for name, service in self.services.items() if service.alive]

    async def restart(self, name: str, down_s: float) -> float:
        """SIGKILL, ``down_s`` of absence, start again; returns the seconds the new one took to be ready."""
        await self.kill(name)
        await asyncio.sleep(down_s)
        return await self.start_service(name)

    def _reap_group(self, service: Managed, note: bool) -> None:
        """Whatever a dead service left running in its process group is stopped (and ``note``d as orphans)."""
        if service.process is None:
            return
        group = service.process.pid
        left = [pid for pid in _pids() if _pgid(pid) == group]
        if left:
            if note:
                self.orphans.setdefault(service.name, []).extend(left)
                commands = "; ".join(f"{pid}: {_cmdline(pid)[:80]}" for pid in left)
                REPORT.append(f"[harness] the killed {service.name} left {len(left)} processes running ({commands})")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)

    def children(self, name: str) -> list[int]:
        """Pids of the direct child processes of a running service (from /proc)."""
        return _children(self._managed(name).pid)

    def recognition_children(self) -> list[int]:
        """The transcriber's recognition processes: spawned multiprocessing children, not its resource tracker."""
        return [pid for pid in self.children("transcriber") if "spawn_main" in _cmdline(pid)]

    # ------------------------------------------------------------------ the bus

    async def request(self, subject_name: str, event: Event, reply_type: type[ReplyT], timeout: float = 2.0) -> ReplyT:
        """A request/reply on the bus, as a worker would send it."""
        bus = Bus(producer="chaos")
        bus.attach(self.nc)
        return await bus.request(subject_name, event, reply_type, timeout)

    # ------------------------------------------------------------------ diagnostics

    def log_tail(self, name: str, lines: int = 25, width: int = 400) -> str:
        path = self.logs / f"{name}.log"
        if name == "mongo":
            path = self.base / "mongo" / "mongo.log"
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return f"--- {name}: no log"
        shown = [line if len(line) <= width else line[:width] + " …" for line in _collapsed(text)[-lines:]]
        return f"--- {name} ({path}), last {len(shown)} entries:\n" + "\n".join(shown)

    def all_tails(self, lines: int = 15) -> str:
        names = ["nats", "llm", "mongo", *self.services]
        return "\n".join(self.log_tail(name, lines) for name in names)

    # ------------------------------------------------------------------ teardown

    async def close(self) -> None:
        for service in self.services.values():
            if service.alive and service.process is not None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            if service.process is not None:
                try:
                    await asyncio.to_thread(service.process.wait, 15)
                except subprocess.TimeoutExpired:
                    service.process.kill()
            self._reap_group(service, note=False)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self.llm is not None:
            self.llm.terminate()
            await asyncio.to_thread(self.llm.wait, 10)
        for server in (self.mongo, self.nats):
            if server is not None:
                await asyncio.to_thread(server.stop)


async def _expected_outage(error: Exception) -> None:
    """The test's own connection sees every outage it causes: not worth a traceback each retry."""


def _collapsed(lines: list[str]) -> list[str]:
    """Runs of log lines with the same event (a warning per audio frame...) as one line with a count."""
    out: list[str] = []
    last_event, repeats = None, 0
    for line in lines:
        try:
            event = json.loads(line).get("event")
        except (ValueError, AttributeError):
            event = None
        if event is not None and event == last_event:
            repeats += 1
            continue
        if repeats:
            out.append(f"    (the line above {repeats} more times)")
        out.append(line)
        last_event, repeats = event, 0
    if repeats:
        out.append(f"    (the line above {repeats} more times)")
    return out


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
