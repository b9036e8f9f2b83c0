"""End-to-end chat latency, conversation length and idle memory of the real processes.

Starts its own nats-server (temporary store), the edge (``python -m edge``), the orchestrator
(``python -m workers.orchestrator``) and, for mode 2, the scripted OpenAI-compatible server
(``python -m tests.support.scripted_llm``), each a separate process, then drives WebSocket
sessions as browsers would and measures, on the client side (time.perf_counter), the time
from sending a ``chat`` frame to receiving the first ``reply.delta`` of that turn.

  mode 1  system overhead: the orchestrator's echo model (zero-latency, in-process)
  mode 2  comparable to peers: the openai provider against the scripted server, and the floor:
          the scripted server called directly with openai.AsyncOpenAI at the same rate; ours and
          the floor alternate in blocks (--blocks) so both see the same machine

    .venv/bin/python bench/chat_bench.py [--seconds 20] [--levels 1,50,200] [--modes 1,2] [--quick]

Every session sends one turn per second (start times spread over the first second), the
first second of each level (and block) is warm-up; a level lasts long enough for
--min-turns measured turns (the 1-session level: 41 s). The load generator shares the machine's cores with
everything it measures, so the client is one asyncio loop (uvloop) that prints nothing per turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import openai
import websockets
from websockets.asyncio.client import ClientConnection

from ops.servers import RunningServer, find_binary, free_port, start_nats

ROOT = Path(__file__).resolve().parent.parent
CHAT_TEXT = "[tokens:5] hello"  # the scripted server streams exactly 5 pieces; echo repeats it (4 pieces)
SECRET = "chat-bench-secret-" + "x" * 40
TURN_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets and what others measured (printed beside our figures).
TARGET_ECHO_P50_MS = 3.0
TARGET_ECHO_P99_MS = 15.0
TARGET_ECHO_SESSIONS = 200
TARGET_OVER_FLOOR_MS = 2.0
TARGET_IDLE_KB = 100.0
PIPECAT_LATENCY = "Pipecat 1.14: 13 ms p50 / 24 ms p99 at 50 sessions (same kind of scripted server)"
PIPECAT_LENGTH = "Pipecat grows ~0.3 ms per earlier turn"
PIPECAT_IDLE = "Pipecat: 1.1-11.6 MiB per idle session"
BUSY_OTHER_PCT = 20.0  # background CPU (% of one core) above which a level's figures are flagged


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p50(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def p99(values: Sequence[float]) -> float | None:
    return percentile(values, 0.99) if values else None


def ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


# ---------------------------------------------------------------------------------- processes


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    # Fields after the ")" that closes the command name: state is index 0, utime 11, stime 12.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine (every core, every process) spent busy since boot."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


async def background_cpu(seconds: float = 1.0) -> float:
    """% of one core used by whatever runs on the machine (measured before our processes start)."""
    busy0, t0 = machine_busy(), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (machine_busy() - busy0) / (time.monotonic() - t0)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def check(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.process.returncode}; log: {self.log}\n{tail(self.log)}"
            )


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Children:
    """Every process the benchmark started; ``stop_all`` terminates, then kills, each one."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.nats: RunningServer | None = None
        self.llm_url = ""  # base URL of the scripted LLM server once started
        self._children: dict[str, Child] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            # Own session: Ctrl-C reaches only the benchmark, which then stops the children in order.
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        child = Child(name, process, log)
        self._children[name] = child
        return child

    def get(self, name: str) -> Child | None:
        return self._children.get(name)

    def pids(self) -> dict[str, int]:
        pids = {name: child.pid for name, child in self._children.items() if child.process.poll() is None}
        if self.nats is not None and self.nats.process.poll() is None:
            pids["nats"] = self.nats.process.pid
        pids["bench"] = os.getpid()
        return pids

    def stop(self, *names: str, timeout: float = 10.0) -> None:
        children = [self._children.pop(n) for n in names if n in self._children]
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def stop_all(self) -> None:
        try:
            self.stop(*list(self._children))
        finally:
            if self.nats is not None:
                self.nats.stop()
                self.nats = None


def child_env(**sb: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
    env.update(SB_LOG_LEVEL="warning", SB_LOG_FORMAT="json", SB_SHUTDOWN_TIMEOUT_S="2", PYTHONUNBUFFERED="1")
    env.update(sb)
    return env


async def wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False) as http:
        while time.monotonic() < deadline:
            child.check()
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url, timeout=1.0)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise BenchError(f"{child.name} not ready at {url} after {timeout:g}s; log: {child.log}\n{tail(child.log)}")


# ---------------------------------------------------------------------------------- the client


@dataclass
class Turn:
    sent: float  # perf_counter when the chat frame was sent
    latency_ms: float | None = None  # to the first reply.delta of the turn
    # Wall-clock segments (every process is on this machine, so time.time() is comparable):
    to_edge_ms: float | None = None  # client send -> edge stamps the user turn (captured_at)
    orchestrator_ms: float | None = None  # edge stamp -> orchestrator creates the first delta (published_at)
    to_client_ms: float | None = None  # first delta created -> client has it
    problem: str | None = None  # timeout, protocol_error:<code>, error:<code>

    @property
    def ok(self) -> bool:
        return self.latency_ms is not None and self.problem is None


class Session:
    """One browser-like socket; at most one turn in flight."""

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.broken = False

    async def turn(self, frame: str, timeout: float = TURN_TIMEOUT_S) -> Turn:
        sent_wall = time.time()
        turn = Turn(sent=time.perf_counter())
        await self.ws.send(frame)
        turn_id: str | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self.ws.recv()
                    now = time.perf_counter()
                    if not isinstance(raw, str):
                        continue
                    event: dict[str, Any] = json.loads(raw)
                    kind = event.get("kind")
                    if kind == "turn.user":
                        turn_id = turn_id or event.get("turn_id")
                    elif kind == "reply.delta":
                        if turn_id is None:  # not expected: the edge forwards its own turn.user first
                            turn_id = event.get("turn_id")
                        if turn.latency_ms is None and event.get("turn_id") == turn_id:
                            turn.latency_ms = (now - turn.sent) * 1000
                            captured, published = event.get("captured_at"), event.get("published_at")
                            if isinstance(captured, float) and isinstance(published, float):
                                turn.to_edge_ms = (captured - sent_wall) * 1000
                                turn.orchestrator_ms = (published - captured) * 1000
                                turn.to_client_ms = (time.time() - published) * 1000
                    elif kind == "reply.done":
                        if turn_id is not None and event.get("turn_id") == turn_id:
                            return turn
                    elif kind == "error":
                        turn.problem = turn.problem or f"error:{event.get('code')}"
                    elif kind == "protocol_error":
                        turn.problem = f"protocol_error:{event.get('code')}"
                        return turn  # the frame was refused: no reply will come
        except TimeoutError:
            turn.problem = "timeout"
            self.broken = True  # late events of this turn would confuse the next one
        return turn


class Client:
    """Creates sessions (POST /v1/sessions, socket, hello, welcome) against one edge."""

    def __init__(self, base_url: str, compression: str | None) -> None:
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://") + "/v1/ws"
        self.compression = compression
        self.http = httpx.AsyncClient(
            base_url=base_url,
            trust_env=False,
            timeout=30.0,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    async def open(self) -> Session:
        grant = (await self.http.post("/v1/sessions")).raise_for_status().json()
        ws = await websockets.connect(
            self.ws_url, max_size=2**22, ping_interval=None, proxy=None, compression=self.compression, open_timeout=30
        )
        try:
            await ws.send(json.dumps({"type": "hello", "token": grant["token"], "client": "chat_bench"}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if welcome.get("kind") != "welcome":
                raise BenchError(f"expected welcome, got {welcome}")
        except BaseException:
            await ws.close()
            raise
        return Session(ws, welcome["session_id"])

    async def open_many(self, count: int, parallel: int = 32) -> list[Session]:
        gate = asyncio.Semaphore(parallel)
        sessions: list[Session] = []

        async def one() -> None:
            async with gate:
                sessions.append(await self.open())

        try:
            await asyncio.gather(*(one() for _ in range(count)))
        except BaseException:
            await close_all(sessions)
            raise
        return sessions

    async def sockets(self) -> int:
        count: int = (await self.http.get("/healthz")).raise_for_status().json()["sockets"]
        return count

    async def close(self) -> None:
        await self.http.aclose()


async def close_all(sessions: Sequence[Session]) -> None:
    async def close(session: Session) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.ws.close(), 5)

    await asyncio.gather(*(close(s) for s in sessions))


def chat_frame(text: str) -> str:
    return json.dumps({"type": "chat", "text": text})


async def wait_orchestrator(client: Client, child: Child, text: str, timeout: float = 60.0) -> None:
    """Ready when a chat turn through the edge comes back with reply.done (turns sent before it subscribed are lost)."""
    session = await client.open()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            child.check()
            turn = await session.turn(chat_frame(text), timeout=2.0)
            if turn.ok:
                return
            if session.broken:
                await close_all([session])
                session = await client.open()
    finally:
        await close_all([session])
    raise BenchError(
        f"orchestrator did not answer a chat turn within {timeout:g}s; log: {child.log}\n{tail(child.log)}"
    )


# ---------------------------------------------------------------------------------- load


@dataclass
class Level:
    label: str
    sessions: int
    seconds: float
    turns: list[Turn] = field(default_factory=list)  # measured window only (after warm-up)
    sent_in_window: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core over the run, per process

    @property
    def latencies(self) -> list[float]:
        return [t.latency_ms for t in self.turns if t.ok and t.latency_ms is not None]

    blocks: int = 1  # each block's first second is warm-up

    @property
    def achieved_rate(self) -> float:
        return self.sent_in_window / max(self.seconds - self.blocks, 1e-9)

    def problems(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.turns:
            if t.problem:
                counts[t.problem] = counts.get(t.problem, 0) + 1
        return counts

    def segment(self, name: str) -> float | None:
        values = [v for t in self.turns if t.ok and (v := getattr(t, name)) is not None]
        return p50(values)

    def absorb(self, block: Level) -> None:
        """Add one more block of the same run (same sessions): turns pooled, CPU weighted by time."""
        total = self.seconds + block.seconds
        for name in self.cpu.keys() | block.cpu.keys():
            self.cpu[name] = (self.cpu.get(name, 0.0) * self.seconds + block.cpu.get(name, 0.0) * block.seconds) / total
        self.turns += block.turns
        self.sent_in_window += block.sent_in_window
        self.seconds = total
        self.blocks += block.blocks


TurnFn = Callable[[], Awaitable[Turn]]


async def drive(
    turn_fn: TurnFn, alive: Callable[[], bool], first_due: float, start: float, seconds: float, level: Level
) -> None:
    """One session: a turn every second from ``first_due``; a slot missed while a turn is in flight is skipped."""
    end, warm = start + seconds, start + 1.0
    due = first_due
    while due < end and alive():
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() >= end:
            break
        turn = await turn_fn()
        if turn.sent >= warm:
            level.turns.append(turn)
            level.sent_in_window += 1
        due += 1.0
        now = time.perf_counter()
        while due < now:  # behind: skip, never burst to catch up
            due += 1.0


async def run_level(
    label: str,
    sessions: int,
    seconds: float,
    pids: Callable[[], dict[str, int]],
    make: Callable[[int], tuple[TurnFn, Callable[[], bool]]],
) -> Level:
    level = Level(label, sessions, seconds)
    watched = pids()
    cpu0, busy0, t_cpu0 = {n: cpu_seconds(p) for n, p in watched.items()}, machine_busy(), time.monotonic()
    start = time.perf_counter() + 0.1
    await asyncio.gather(*(drive(*make(i), start + i / sessions, start, seconds, level) for i in range(sessions)))
    elapsed = time.monotonic() - t_cpu0
    for name, pid in watched.items():
        with contextlib.suppress(OSError):  # a process that exited meanwhile has no figure
            level.cpu[name] = 100 * (cpu_seconds(pid) - cpu0[name]) / elapsed
    # Everything else on the machine: other users' processes compete for the same cores.
    level.cpu["other"] = max(0.0, 100 * (machine_busy() - busy0) / elapsed - sum(level.cpu.values()))
    return level


async def edge_level(
    opened: Sequence[Session], label: str, seconds: float, text: str, pids: Callable[[], dict[str, int]]
) -> Level:
    frame = chat_frame(text)

    def make(i: int) -> tuple[TurnFn, Callable[[], bool]]:
        session = opened[i]
        return (lambda: session.turn(frame)), (lambda: not session.broken)

    return await run_level(label, len(opened), seconds, pids, make)


async def floor_turn(llm: openai.AsyncOpenAI, text: str) -> Turn:
    turn = Turn(sent=time.perf_counter())
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            stream = await llm.chat.completions.create(
                model="scripted",
                messages=[{"role": "user", "content": text}],
                stream=True,
                max_tokens=256,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if turn.latency_ms is None and chunk.choices and chunk.choices[0].delta.content:
                    turn.latency_ms = (time.perf_counter() - turn.sent) * 1000
    except TimeoutError:
        turn.problem = "timeout"
    except openai.APIError as error:
        turn.problem = f"llm:{type(error).__name__}"
    return turn


async def floor_level(
    llm: openai.AsyncOpenAI, label: str, sessions: int, seconds: float, text: str, pids: Callable[[], dict[str, int]]
) -> Level:
    def make(_: int) -> tuple[TurnFn, Callable[[], bool]]:
        return (lambda: floor_turn(llm, text)), (lambda: True)

    return await run_level(label, sessions, seconds, pids, make)


@dataclass
class Length:
    mode: int
    latencies: list[float | None]
    problems: int

    def window(self, first: int, last: int) -> float | None:
        return p50([v for v in self.latencies[first - 1 : last] if v is not None])

    @property
    def start(self) -> float | None:
        return self.window(1, 10)

    @property
    def end(self) -> float | None:
        n = len(self.latencies)
        return self.window(max(1, n - 9), n)

    @property
    def slope_us(self) -> float | None:
        points = [(i, v) for i, v in enumerate(self.latencies, 1) if v is not None]
        if len(points) < 3:
            return None
        fit = statistics.linear_regression([float(i) for i, _ in points], [v for _, v in points])
        return fit.slope * 1000


async def conversation(client: Client, mode: int, turns: int, text: str) -> Length:
    session = await client.open()
    frame = chat_frame(text)
    latencies: list[float | None] = []
    problems = 0
    try:
        for _ in range(turns):
            turn = await session.turn(frame)
            latencies.append(turn.latency_ms if turn.ok else None)
            problems += not turn.ok
            if session.broken:
                break
    finally:
        await close_all([session])
    return Length(mode, latencies, problems)


@dataclass
class Idle:
    sessions: int
    open_s: float
    before_kb: dict[str, int]
    after_kb: dict[str, int]

    def per_session_kb(self, name: str) -> float:
        return (self.after_kb[name] - self.before_kb[name]) / self.sessions


async def idle_memory(client: Client, count: int, watched: dict[str, int]) -> Idle:
    await asyncio.sleep(1.0)
    base_sockets = await client.sockets()
    before = {n: rss_kb(p) for n, p in watched.items()}
    t0 = time.monotonic()
    sessions = await client.open_many(count)
    open_s = time.monotonic() - t0
    try:
        deadline = time.monotonic() + 30
        while await client.sockets() < base_sockets + count:
            if time.monotonic() > deadline:
                raise BenchError("the edge does not report every idle socket open")
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # let the edge and the orchestrator settle
        after = {n: rss_kb(p) for n, p in watched.items()}
    finally:
        await close_all(sessions)
    return Idle(count, open_s, before, after)


# ---------------------------------------------------------------------------------- report


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def plain(self) -> str:
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h) for i, h in enumerate(self.headers)
        ]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.rows]
        out += [f"  {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|",
        ]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


@dataclass
class Report:
    command: str
    options: argparse.Namespace
    levels: dict[int, list[Level]] = field(default_factory=dict)  # by mode
    floors: list[Level] = field(default_factory=list)
    lengths: list[Length] = field(default_factory=list)
    idle: Idle | None = None
    wall_s: float = 0.0
    background_pct: float | None = None  # other processes' CPU just before the run

    def tables(self) -> list[Table]:
        tables = [self._latency()]
        if self.floors:
            tables.append(self._floor())
        if self.lengths:
            tables.append(self._length())
        if self.idle:
            tables.append(self._idle())
        tables.append(self._where())
        return tables

    def _latency(self) -> Table:
        table = Table(
            "First reply.delta latency (client: chat frame sent -> first reply.delta), ms",
            ["run", "sessions", "turns/s (target)", "n", "p50", "p99", "target", "result"],
        )
        names = {1: "mode 1: echo (system overhead)", 2: "mode 2: openai -> scripted"}
        for mode, levels in self.levels.items():
            for level in levels:
                target, result = "", ""
                if mode == 1 and level.sessions == TARGET_ECHO_SESSIONS:
                    target = f"p50<={TARGET_ECHO_P50_MS:g} p99<={TARGET_ECHO_P99_MS:g}"
                    lat = level.latencies
                    missed = [
                        name
                        for name, value, limit in (
                            ("p50", p50(lat), TARGET_ECHO_P50_MS),
                            ("p99", p99(lat), TARGET_ECHO_P99_MS),
                        )
                        if value is None or value > limit
                    ]
                    result = f"MISS ({', '.join(missed)})" if missed else "PASS"
                table.rows.append(self._row(names[mode], level, target, result))
        for floor in self.floors:
            table.rows.append(self._row("floor: scripted server direct", floor, "", ""))
        for level in [*(lv for levels in self.levels.values() for lv in levels), *self.floors]:
            if problems := level.problems():
                table.notes.append(f"{level.label} at {level.sessions} sessions: problems {problems}")
            if level.achieved_rate < 0.95 * level.sessions:
                table.notes.append(
                    f"{level.label} at {level.sessions} sessions could not keep 1 turn/s per session: "
                    f"{level.achieved_rate:.1f} turns/s of {level.sessions}"
                )
        if 1 in self.levels and not any(lv.sessions == TARGET_ECHO_SESSIONS for lv in self.levels[1]):
            table.notes.append(
                f"mode 1 targets (p50 <= {TARGET_ECHO_P50_MS:g} ms, p99 <= {TARGET_ECHO_P99_MS:g} ms) "
                f"apply at {TARGET_ECHO_SESSIONS} sessions: not run"
            )
        table.notes.append(
            "warm-up (first second of each level, and of each block in mode 2) excluded; one turn per "
            "session per second, start times spread over the first second"
        )
        return table

    @staticmethod
    def _row(name: str, level: Level, target: str, result: str) -> list[str]:
        lat = level.latencies
        return [
            name,
            str(level.sessions),
            f"{level.achieved_rate:.1f} ({level.sessions})",
            str(len(lat)),
            ms(p50(lat)),
            ms(p99(lat)),
            target,
            result,
        ]

    def _floor(self) -> Table:
        table = Table(
            "Mode 2: our overhead over the LLM floor (same concurrency and rate), ms",
            ["sessions", "ours p50", "floor p50", "ours - floor p50", "ours p99", "floor p99", "target", "result"],
        )
        ours = {lv.sessions: lv for lv in self.levels.get(2, [])}
        for floor in self.floors:
            level = ours.get(floor.sessions)
            if level is None:
                continue
            a, b = p50(level.latencies), p50(floor.latencies)
            over = a - b if a is not None and b is not None else None
            saturated = [lv.label for lv in (level, floor) if lv.achieved_rate < 0.95 * lv.sessions]
            result = (
                f"n/a: {' and '.join(saturated)} saturated"
                if saturated
                else verdict(None if over is None else over <= TARGET_OVER_FLOOR_MS)
            )
            table.rows.append(
                [
                    str(floor.sessions),
                    ms(a),
                    ms(b),
                    ms(over),
                    ms(p99(level.latencies)),
                    ms(p99(floor.latencies)),
                    f"<= {TARGET_OVER_FLOOR_MS:g}",
                    result,
                ]
            )
        table.notes.append(f"reference: {PIPECAT_LATENCY}")
        table.notes.append(
            "floor: openai.AsyncOpenAI(max_retries=0) in the load generator, stream=True, "
            "time to the first content chunk"
        )
        return table

    def _length(self) -> Table:
        table = Table(
            "Conversation length: one session, turns back to back (next turn after reply.done), ms",
            ["mode", "turns", "turn 1 (median 1-10)", "last turn (median last 10)", "slope us/turn", "problems"],
        )
        for length in self.lengths:
            slope = length.slope_us
            table.rows.append(
                [
                    f"mode {length.mode}",
                    str(len(length.latencies)),
                    ms(length.start),
                    ms(length.end),
                    "-" if slope is None else f"{slope:+.2f}",
                    str(length.problems),
                ]
            )
        table.notes.append(f"reference: {PIPECAT_LENGTH} (= +300 us/turn)")
        table.notes.append("the edge ran with SB_TEXT_FRAMES_PER_S=10000 so back-to-back turns are not rate limited")
        return table

    def _idle(self) -> Table:
        idle = self.idle
        assert idle is not None
        table = Table(
            f"Idle memory: RSS before/after {idle.sessions} idle sessions (hello + welcome, nothing else)",
            ["process", "before MiB", "after MiB", "KB per idle session", "target", "result"],
        )
        for name in ("edge", "orchestrator", "nats"):
            if name not in idle.before_kb:
                continue
            per = idle.per_session_kb(name)
            has_target = name != "nats"
            table.rows.append(
                [
                    name,
                    f"{idle.before_kb[name] / 1024:.1f}",
                    f"{idle.after_kb[name] / 1024:.1f}",
                    f"{per:.1f}",
                    f"< {TARGET_IDLE_KB:g}" if has_target else "",
                    verdict(per < TARGET_IDLE_KB) if has_target else "",
                ]
            )
        table.notes.append(f"reference: {PIPECAT_IDLE}")
        table.notes.append(
            f"opening {idle.sessions} sessions took {idle.open_s:.1f} s "
            f"(websocket compression: {self.options.ws_compression})"
        )
        return table

    def _where(self) -> Table:
        table = Table(
            "Where the time goes: p50 per segment (wall clock, ms) and CPU (% of one core) per level",
            [
                "run",
                "sessions",
                "client->edge",
                "edge->1st delta",
                "delta->client",
                "cpu edge",
                "cpu orch",
                "cpu nats",
                "cpu llm",
                "cpu bench",
                "cpu other",
            ],
        )
        runs = [(f"mode {m}", lv) for m, levels in self.levels.items() for lv in levels]
        runs += [("floor", lv) for lv in self.floors]
        for name, level in runs:

            def cpu(process: str, lv: Level = level) -> str:
                return f"{lv.cpu[process]:.0f}" if process in lv.cpu else "-"

            table.rows.append(
                [
                    name,
                    str(level.sessions),
                    ms(level.segment("to_edge_ms")),
                    ms(level.segment("orchestrator_ms")),
                    ms(level.segment("to_client_ms")),
                    cpu("edge"),
                    cpu("orchestrator"),
                    cpu("nats"),
                    cpu("llm"),
                    cpu("bench"),
                    cpu("other"),
                ]
            )
        table.notes.append(
            "client->edge: chat sent -> edge stamps turn.user; edge->1st delta: that stamp -> the "
            "orchestrator creates the first reply.delta (NATS hop, memory request, prompt, LLM); "
            "delta->client: -> received by the client (NATS hop, edge fan-out, socket)"
        )
        table.notes.append(
            f"cpu: % of one core ({os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%); "
            "other: processes not started by this benchmark"
        )
        busy = [f"{name} {lv.sessions}" for name, lv in runs if lv.cpu.get("other", 0.0) > BUSY_OTHER_PCT]
        if busy:
            table.notes.append(
                f"WARNING: other processes used > {BUSY_OTHER_PCT:g}% of a core during: "
                f"{', '.join(busy)}; those figures are pessimistic"
            )
        return table

    def markdown(self) -> str:
        o = self.options
        head = [
            "## Chat latency, conversation length, idle memory (bench/chat_bench.py)",
            "",
            f"Command: `{self.command}`",
            "",
            f"Machine: {machine()}. nats-server, edge, orchestrator, scripted LLM server and the load generator "
            f"share it. Modes {','.join(map(str, o.modes))}; levels {','.join(map(str, o.levels))} sessions, "
            f"{o.seconds:g} s each; {o.turns} turns; {o.idle_sessions} idle sessions; wall time {self.wall_s:.0f} s. "
            "Background CPU before the run (other processes): "
            f"{ms(self.background_pct, 0)}% of one core.",
        ]
        return "\n\n".join(["\n".join(head), *(t.markdown() for t in self.tables())])


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nats_version = ""
    with contextlib.suppress(Exception):
        nats_version = subprocess.run(
            [find_binary("nats-server"), "--version"], check=False, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    return (
        f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
        f"{nats_version or 'nats-server'}, {time.strftime('%Y-%m-%d')}"
    )


# ---------------------------------------------------------------------------------- the run


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run(options: argparse.Namespace, children: Children, report: Report) -> None:
    report.background_pct = await background_cpu()
    if report.background_pct > BUSY_OTHER_PCT:
        progress(f"warning: the machine is busy before the run ({report.background_pct:.0f}% of one core)")
    nats = children.nats = start_nats(children.log_dir / "nats-store", log_file=children.log_dir / "nats.log")
    port = free_port()
    edge = children.start(
        "edge",
        [sys.executable, "-m", "edge"],
        child_env(
            SB_NATS_URL=nats.url,
            SB_EDGE_HOST="127.0.0.1",
            SB_EDGE_PORT=str(port),
            SB_EDGE_SECRET=SECRET,
            # Back-to-back turns (conversation length) exceed the default 20 text frames/s per socket.
            SB_TEXT_FRAMES_PER_S="10000",
            SB_BURST_S="1",
        ),
    )
    base_url = f"http://127.0.0.1:{port}"
    await wait_http(f"{base_url}/healthz", edge)
    progress(f"edge ready on {base_url}, NATS at {nats.url}")
    client = Client(base_url, None if options.ws_compression == "none" else options.ws_compression)
    try:
        for mode in options.modes:
            await run_mode(mode, options, children, client, report)
    finally:
        await client.close()


async def run_mode(mode: int, options: argparse.Namespace, children: Children, client: Client, report: Report) -> None:
    env = {"SB_NATS_URL": children.nats.url if children.nats else "", "SB_LLM_PROVIDER": "echo"}
    llm_url = ""
    if mode == 2:
        if not children.llm_url:
            port = free_port()
            llm = children.start(
                "llm", [sys.executable, "-m", "tests.support.scripted_llm", "--port", str(port)], child_env()
            )
            await wait_http(f"http://127.0.0.1:{port}/v1/models", llm)
            children.llm_url = f"http://127.0.0.1:{port}/v1"
        llm_url = children.llm_url
        env |= {
            "SB_LLM_PROVIDER": "openai",
            "SB_LLM_BASE_URL": llm_url,
            "SB_LLM_MODEL": "scripted",
            "SB_LLM_API_KEY": "x",
        }
    orchestrator = children.start("orchestrator", [sys.executable, "-m", "workers.orchestrator"], child_env(**env))
    try:
        await wait_orchestrator(client, orchestrator, CHAT_TEXT)
        progress(f"mode {mode}: orchestrator ready ({env['SB_LLM_PROVIDER']})")
        if not options.skip_idle and report.idle is None:
            watched = {n: p for n, p in children.pids().items() if n in ("edge", "orchestrator", "nats")}
            progress(f"idle memory: opening {options.idle_sessions} sessions")
            report.idle = await idle_memory(client, options.idle_sessions, watched)
        floor_client = openai.AsyncOpenAI(base_url=llm_url, api_key="x", max_retries=0) if mode == 2 else None
        try:
            for sessions in options.levels:
                level, floor = await measure_level(client, floor_client, mode, sessions, options, children.pids)
                report.levels.setdefault(mode, []).append(level)
                if floor is not None:
                    report.floors.append(floor)
        finally:
            if floor_client is not None:
                await floor_client.close()
        if not options.skip_length:
            progress(f"mode {mode}: conversation of {options.turns} turns")
            report.lengths.append(await conversation(client, mode, options.turns, CHAT_TEXT))
    finally:
        children.stop("orchestrator")


async def measure_level(
    client: Client,
    floor_client: openai.AsyncOpenAI | None,
    mode: int,
    sessions: int,
    options: argparse.Namespace,
    pids: Callable[[], dict[str, int]],
) -> tuple[Level, Level | None]:
    """One concurrency level. With a floor, ours and the floor alternate in blocks, so whatever else
    the machine does during the run weighs on both alike."""
    seconds = max(options.seconds, options.min_turns / sessions + 1)
    blocks = options.blocks if floor_client is not None else 1
    block_s = max(seconds / blocks, 2.0)
    opened = await client.open_many(sessions)
    ours: Level | None = None
    floor: Level | None = None
    try:
        for block in range(blocks):
            progress(f"mode {mode}: {sessions} sessions, block {block + 1}/{blocks} of {block_s:.0f} s")
            ours = merged(ours, await edge_level(opened, f"mode {mode}", block_s, CHAT_TEXT, pids))
            await asyncio.sleep(0.5)
            if floor_client is not None:
                progress(f"floor: {sessions} sessions, block {block + 1}/{blocks} of {block_s:.0f} s")
                floor = merged(floor, await floor_level(floor_client, "floor", sessions, block_s, CHAT_TEXT, pids))
                await asyncio.sleep(0.5)
    finally:
        await close_all(opened)
    assert ours is not None
    return ours, floor


def merged(total: Level | None, block: Level) -> Level:
    if total is None:
        return block
    total.absorb(block)
    return total


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, help="Duration of each concurrency level (default 20; quick 3)")
    parser.add_argument(
        "--levels", help="Concurrent sessions per level, comma-separated (default 1,50,200; quick 1,50)"
    )
    parser.add_argument(
        "--modes",
        default="1,2",
        help="1: echo model (system overhead); 2: openai provider against the scripted server, with the floor",
    )
    parser.add_argument("--turns", type=int, help="Turns of the conversation-length run (default 300; quick 50)")
    parser.add_argument(
        "--idle-sessions", type=int, help="Idle sessions for the memory figure (default 1000; quick 200)"
    )
    parser.add_argument("--skip-idle", action="store_true", help="Skip the idle memory figure")
    parser.add_argument("--skip-length", action="store_true", help="Skip the conversation-length run")
    parser.add_argument(
        "--ws-compression",
        choices=["deflate", "none"],
        default="deflate",
        help="permessage-deflate offered by the client (browsers offer it; default deflate)",
    )
    parser.add_argument(
        "--blocks",
        type=int,
        help="Mode 2: ours and the floor alternate in this many blocks per level, each at least "
        "2 s with its first second as warm-up (default 4; quick 1)",
    )
    parser.add_argument(
        "--min-turns",
        type=int,
        help="A level lasts long enough for this many measured turns (default 40: the 1-session "
        "level runs 41 s; quick 0)",
    )
    parser.add_argument("--quick", action="store_true", help="Smoke run: levels 1,50; 3 s; 50 turns; 200 idle")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (3.0 if quick else 20.0)
    args.levels = [int(x) for x in (args.levels or ("1,50" if quick else "1,50,200")).split(",") if x.strip()]
    args.modes = [int(x) for x in args.modes.split(",") if x.strip()]
    args.turns = args.turns if args.turns is not None else (50 if quick else 300)
    args.min_turns = args.min_turns if args.min_turns is not None else (0 if quick else 40)
    args.blocks = args.blocks if args.blocks is not None else (1 if quick else 4)
    args.idle_sessions = args.idle_sessions if args.idle_sessions is not None else (200 if quick else 1000)
    if args.seconds < 2:
        parser.error("--seconds must be at least 2 (the first second is warm-up)")
    if args.blocks < 1:
        parser.error("--blocks must be at least 1")
    if not args.levels or min(args.levels) < 1:
        parser.error("--levels needs positive session counts")
    if not set(args.modes) <= {1, 2} or not args.modes:
        parser.error("--modes takes 1 and/or 2")
    if args.turns < 10 or args.idle_sessions < 1:
        parser.error("--turns must be at least 10 and --idle-sessions at least 1")
    return args


def command_line() -> str:
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = sys.executable
    return shlex.join([python, *sys.argv])


def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        progress(f"open-files limit is {want}, {needed} wanted: the idle run may fail")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP behave like Ctrl-C, so the finally blocks stop every child process."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_loop(coroutine: Awaitable[None]) -> None:
    async def main() -> None:
        await coroutine

    try:
        import uvloop  # the load generator shares 2 cores with what it measures: the cheaper loop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    # Client sockets + edge sockets of the idle run (children inherit the limit).
    raise_open_files_limit(2 * max(options.idle_sessions, *options.levels) + 1024)
    report = Report(command_line(), options)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp, terminate_as_interrupt():
            children = Children(Path(tmp))
            try:
                run_loop(run(options, children, report))
            except Exception:
                for name in ("edge", "orchestrator", "llm"):
                    child = children.get(name)
                    if child is not None and (text := tail(child.log)):
                        print(f"--- last lines of {name}'s log ---\n{text}", file=sys.stderr)
                raise
            finally:
                children.stop_all()
    except KeyboardInterrupt:
        progress("interrupted: every process the benchmark started was stopped")
        raise SystemExit(130) from None
    report.wall_s = time.monotonic() - started
    print()
    print("\n\n".join(t.plain() for t in report.tables()))
    print(
        f"\nwall time {report.wall_s:.0f} s; background CPU before the run {ms(report.background_pct, 0)}% "
        f"of one core; command: {report.command}"
    )
    print("\n----- markdown for docs/benchmarks.md -----\n")
    print(report.markdown())
    print("\n----- end of markdown -----")


if __name__ == "__main__":
    main()
