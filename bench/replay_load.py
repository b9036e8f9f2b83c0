"""Load by replay: N copies of recorded sessions re-driven through the edge, and a capacity report (issue 19).

Starts the whole system as ``just up`` does (bench/voice_loop.py's ``Stack``: supervisord, NATS,
MongoDB, every worker and the edge as their own processes, in a temporary run directory on free
ports), with the orchestrator's in-process echo model (``--llm echo``, the default: the system's own
cost, not the LLM's), the scripted OpenAI-compatible server (``--llm scripted``: it runs in this
process, beside the load generator) or the embedded local model (``--llm embedded``). Then:

1. **Record**: one spoken session (a live microphone at real-time pace: utterances spoken by piper
   and espeak-ng with silence between, never pausing) and one typed session (a turn every
   ``--typed-every`` seconds) are driven through the edge; the stack records them in ``SB_EVENTS``
   and ``SB_AUDIO`` as it records every session. ``--session ID`` (repeatable) takes sessions
   already recorded by the stack instead.
2. **Replay**: each recorded session's inputs (its typed ``turn.user`` texts and its ``audio.in``
   frames, read back from the streams as ``sb replay`` does) become a client script; N copies of it
   open their own sessions through the edge (isolated session ids, each with its own token) and
   send it at the recorded pace (audio on a 20 ms clock, typed turns at their recorded offsets),
   the copies' starts spread over one second.
3. **Measure**, per level, from the client's clock: typed turns: chat sent -> first
   ``reply.delta``; spoken turns: true end of speech (last loud sample of an utterance in the
   script) -> first ``audio.out`` frame; turns answered, turns whose ``reply.done`` says the memory
   was not ``ok`` (its deadline); and the CPU of every process of the stack (``/proc``, CPU seconds
   per wall second = cores) over the level, and of this load generator (which shares the machine).

The capacity report divides the load by the cores each process used: real-time voice sessions per
core for the transcriber (its engine named), typed turns per second per core for the edge and the
orchestrator. Rerun with ``--setting SB_STT_ENGINE=vosk`` for another engine.

    .venv/bin/python -m bench.replay_load                          # voice 1 4, typed 50 200
    .venv/bin/python -m bench.replay_load --voice 1 2 --typed 20   # quick look
    .venv/bin/python -m bench.replay_load --write-docs             # also append to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import numpy as np

from bench.chat_bench import cpu_seconds
from bench.voice_loop import (
    FRAME_S,
    LOUD,
    RATE,
    Session,
    Stack,
    drive,
    fmt,
    llm_server,
    machine,
    open_session,
    percentile,
    progress,
    utterances,
)
from contracts import headers as h
from contracts.binary import ClientFrame, FrameType
from ops import access
from ops.tools import Recorded, recorded_session

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
DOC_HEADING = "## Load by replay: capacity per process (issue 19)"
TYPED_SEED_TEXTS = (
    "hello there",
    "what can you do",
    "tell me something short",
    "thanks, and one more thing",
    "what did I ask first",
)
SILENCE_ENDS_TURN_S = 0.8  # silence after loud audio that makes an utterance's end in a script
DRAIN_S = 15.0  # after its script, a copy waits this long at most for the answers still due


# ---------------------------------------------------------------------------------- scripts


@dataclass(frozen=True)
class Step:
    at: float  # seconds from the script's start
    text: str | None = None  # a typed turn
    pcm: bytes | None = None  # one frame of microphone audio


@dataclass(frozen=True)
class Script:
    name: str
    steps: tuple[Step, ...]
    speech_ends: tuple[float, ...]  # true ends of the script's utterances (seconds from its start)

    @property
    def typed(self) -> int:
        return sum(1 for s in self.steps if s.text is not None)

    @property
    def duration(self) -> float:
        return self.steps[-1].at if self.steps else 0.0


def speech_ends(frames: Sequence[bytes]) -> list[float]:
    """The end of each utterance in contiguous 20 ms frames: its last loud sample, followed by silence."""
    ends: list[float] = []
    last_loud: float | None = None
    for index, pcm in enumerate(frames):
        loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)) > LOUD)
        if loud.size:
            last_loud = index * FRAME_S + (int(loud[-1]) + 1) / RATE
        elif last_loud is not None and index * FRAME_S - last_loud >= SILENCE_ENDS_TURN_S:
            ends.append(last_loud)
            last_loud = None
    if last_loud is not None:
        ends.append(last_loud)
    return ends


def script_of(name: str, records: Sequence[Recorded]) -> Script:
    """A recorded session's inputs as a client script: audio on its own 20 ms clock, typed turns at their times."""
    kinds = [(r, (r.msg.headers or {}).get(h.KIND, "")) for r in records]
    frames = [r.msg.data for r, kind in kinds if kind == "audio.in"]
    typed = [
        (r.at, body["text"])
        for r, kind in kinds
        if kind == "turn.user" and (body := json.loads(r.msg.data)).get("source") == "typed"
    ]
    audio_at = [r.at for r, kind in kinds if kind == "audio.in"]
    start = min([*audio_at[:1], *(at for at, _ in typed[:1])], default=0.0)
    first_frame = (audio_at[0] - start) if audio_at else 0.0
    steps = [Step(first_frame + i * FRAME_S, pcm=pcm) for i, pcm in enumerate(frames)]
    steps += [Step(at - start, text=text) for at, text in typed]
    ends = tuple(first_frame + end for end in speech_ends(frames))
    return Script(name, tuple(sorted(steps, key=lambda s: s.at)), ends)


# ---------------------------------------------------------------------------------- one copy


@dataclass
class CopyResult:
    typed_ms: list[float] = field(default_factory=list)  # chat sent -> first reply.delta
    echo_ms: list[float] = field(default_factory=list)  # chat sent -> its turn.user (the edge accepted it)
    spoken_ms: list[float] = field(default_factory=list)  # true end of speech -> first audio.out
    typed_sent: int = 0
    typed_answered: int = 0  # a reply.done came (a turn the next one superseded before it spoke has no delta)
    superseded: int = 0
    spoken_expected: int = 0
    spoken_answered: int = 0
    memory_not_ok: int = 0
    replies: int = 0
    errors: list[str] = field(default_factory=list)


async def replay_copy(edge: str, index: int, script: Script, start_at: float) -> CopyResult:
    """One isolated session sending ``script`` from ``start_at`` (loop time) at its recorded pace."""
    result = CopyResult(spoken_expected=len(script.speech_ends))
    session = await open_session(edge, index, voice=bool(script.speech_ends))
    reader = asyncio.create_task(session.read())
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []  # epoch of each typed turn sent
    began = 0.0
    try:
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        began = time.time()
        seq = 0
        for step in script.steps:
            delay = start_at + step.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if step.text is not None:
                sent_at.append(time.time())
                await session.ws.send(json.dumps({"type": "chat", "text": step.text}))
            elif step.pcm is not None:
                await session.ws.send(ClientFrame(FrameType.AUDIO_PCM16, seq, time.time() - FRAME_S, step.pcm).pack())
                seq += 1
        await _drain(session, script.typed + len(script.speech_ends))
    except Exception as error:  # a copy that fails is counted, the level goes on
        result.errors.append(f"{type(error).__name__}: {error}")
    finally:
        with contextlib.suppress(Exception):
            await session.ws.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    _score(result, session, sent_at, [began + end for end in script.speech_ends])
    return result


async def _drain(session: Session, expected: int) -> None:
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        done = sum(1 for _, e in session.events if e.get("kind") == "reply.done")
        if done >= expected:
            return
        await session.wait(0.5)


def _score(result: CopyResult, session: Session, sent_at: list[float], true_ends: list[float]) -> None:
    first_delta: dict[str, float] = {}
    done: set[str] = set()
    turns: list[tuple[float, dict[str, Any]]] = []
    for at, event in session.events:
        kind, turn = event.get("kind"), event.get("turn_id")
        if kind == "turn.user":
            turns.append((at, event))
        elif kind == "reply.delta" and turn:
            first_delta.setdefault(turn, at)
        elif kind == "reply.done":
            result.replies += 1
            done.add(str(turn))
            result.superseded += event.get("finish_reason") == "superseded"
            result.memory_not_ok += event.get("memory") not in ("ok", "skipped")
        elif kind == "error":
            result.errors.append(str(event.get("code")))
    typed = [(at, e) for at, e in turns if e.get("source") == "typed"]
    result.typed_sent = len(sent_at)
    for sent, (echoed, event) in zip(sent_at, typed, strict=False):  # committed in the order sent
        result.echo_ms.append((echoed - sent) * 1000)
        result.typed_answered += event["turn_id"] in done
        if (arrived := first_delta.get(event["turn_id"])) is not None:
            result.typed_ms.append((arrived - sent) * 1000)
    spoken = [(at, e) for at, e in turns if e.get("source") == "spoken"]
    for end in true_ends:  # the first spoken turn committed after an utterance's end is its turn
        committed = next((e for at, e in spoken if at >= end), None)
        if committed is None:
            continue
        if (audio := session.first_audio.get(committed["turn_id"])) is not None:
            result.spoken_answered += 1
            result.spoken_ms.append((audio - end) * 1000)


# ---------------------------------------------------------------------------------- processes' CPU


def stack_processes(stack: Stack) -> dict[int, str]:
    """Every process of the stack (the launcher's descendants) by a short name."""
    assert stack.process is not None
    parents: dict[int, int] = {}
    argvs: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argvs[int(entry.name)] = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a
            ]
    found: dict[int, str] = {}
    frontier = {stack.process.pid}
    while frontier:
        children = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        # A worker's child processes (its recognition pool) count as the worker's own.
        found.update({pid: _short_name(argvs.get(pid, []), found.get(parents[pid])) for pid in children})
        frontier = children
    return found


def _short_name(argv: list[str], parent: str | None) -> str:
    if parent and any("multiprocessing" in a for a in argv):
        return parent
    program = Path(argv[0]).name if argv else "?"
    if not program.startswith("python"):
        return program  # nats-server (whose -m is its monitoring port)
    if "-m" in argv:
        return argv[argv.index("-m") + 1].removeprefix("workers.").removeprefix("ops.")
    script = next((a for a in argv[1:] if not a.startswith("-")), "")
    return Path(script).name or program  # nx-27017, the document store


class CpuMeter:
    """CPU seconds per wall second of each named process between ``start`` and ``stop``."""

    def __init__(self, processes: dict[int, str]) -> None:
        self.processes = processes
        self._begin: dict[int, float] = {}
        self._wall = 0.0
        self.cores: dict[str, float] = {}

    def _read(self) -> dict[int, float]:
        now: dict[int, float] = {}
        for pid in self.processes:
            with contextlib.suppress(OSError, ValueError, IndexError):
                now[pid] = cpu_seconds(pid)
        return now

    def start(self) -> None:
        self._begin, self._wall = self._read(), time.monotonic()

    def stop(self) -> None:
        end, wall = self._read(), time.monotonic() - self._wall
        cores: dict[str, float] = defaultdict(float)
        for pid, name in self.processes.items():
            if pid in end and pid in self._begin:
                cores[name] += (end[pid] - self._begin[pid]) / wall
        self.cores = dict(sorted(cores.items(), key=lambda kv: -kv[1]))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------- levels


@dataclass
class Level:
    kind: str  # "voice" or "typed"
    copies: int
    script: Script
    results: list[CopyResult]
    cores: dict[str, float]
    wall_s: float
    load: tuple[float, float]

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.results)

    def latencies(self) -> list[float]:
        return [ms for r in self.results for ms in (r.spoken_ms if self.kind == "voice" else r.typed_ms)]

    def turns_per_s(self) -> float:
        """The level's offered rate: each copy's typed turns over its script's span (a gap per turn)."""
        typed = self.script.typed
        span = self.script.duration * typed / (typed - 1) if typed > 1 else 1.0
        return self.copies * typed / max(span, 1e-9)

    def row(self) -> str:
        values = self.latencies()
        if self.kind == "voice":
            answered, expected, measure = self.total("spoken_answered"), self.total("spoken_expected"), "first audio"
        else:
            answered, expected, measure = self.total("typed_answered"), self.total("typed_sent"), "first delta"
            echo = [ms for r in self.results for ms in r.echo_ms]
            measure = (
                f"{self.total('superseded')} superseded; echo {fmt(percentile(echo, 50))} / "
                f"{fmt(percentile(echo, 99))}; {measure}"
            )
        stack = {name: c for name, c in self.cores.items() if name != "(load generator)"}
        top = ", ".join(f"{name} {c:.2f}" for name, c in list(stack.items())[:5])
        errors = sum(len(r.errors) for r in self.results)
        return (
            f"| {self.kind} x{self.copies} | {answered}/{expected} | {measure} {fmt(percentile(values, 50))} / "
            f"{fmt(percentile(values, 95))} / {fmt(percentile(values, 99))} | {self.total('memory_not_ok')} | "
            f"{errors} | {sum(stack.values()):.2f} ({top}) | {self.cores.get('(load generator)', 0):.2f} |"
        )


async def run_level(stack: Stack, kind: str, copies: int, script: Script) -> Level:
    meter = CpuMeter(stack_processes(stack))
    load_start = os.getloadavg()[0]
    loop = asyncio.get_running_loop()
    start = loop.time() + 1.0 + copies * 0.01  # sockets open meanwhile
    meter.start()
    began = time.monotonic()
    client_cpu = _own_cpu()
    results = await asyncio.gather(
        *(replay_copy(stack.edge, i, script, start + i / max(copies, 1)) for i in range(copies))
    )
    meter.stop()
    meter.cores["(load generator)"] = (_own_cpu() - client_cpu) / (time.monotonic() - began)
    return Level(
        kind, copies, script, list(results), meter.cores, time.monotonic() - began, (load_start, os.getloadavg()[0])
    )


# ---------------------------------------------------------------------------------- recording


async def record_seeds(stack: Stack, spoken_turns: int, typed_turns: int, typed_every: float) -> list[str]:
    """Drive one spoken and one typed session through the edge; their ids (the stack records both)."""
    plan = utterances()[:spoken_turns]
    spoken = await open_session(stack.edge, 0)
    spoken_id = spoken.session_id
    await drive(spoken, plan, timeout=30.0, seed=7)
    typed = await open_session(stack.edge, 1, voice=False)
    reader = asyncio.create_task(typed.read())
    for k in range(typed_turns):
        await typed.ws.send(json.dumps({"type": "chat", "text": TYPED_SEED_TEXTS[k % len(TYPED_SEED_TEXTS)]}))
        await asyncio.sleep(typed_every)
    await _drain(typed, typed_turns)
    await typed.ws.close()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    return [spoken_id, typed.session_id]


async def load_scripts(stack: Stack, sessions: Sequence[str]) -> list[Script]:
    url = access.url_with_user(stack.env["SB_NATS_URL"], access.run_folder(stack.run_dir))
    nc = await nats.connect(url)
    try:
        scripts = []
        for session in sessions:
            records = await recorded_session(nc.jetstream(), session, "sb", audio=True)
            scripts.append(script_of(session, records))
        return scripts
    finally:
        await nc.close()


# ---------------------------------------------------------------------------------- report


def capacity(levels: Sequence[Level], engine: str) -> list[str]:
    """What one core of each process carries, from the most loaded level of each kind."""
    lines: list[str] = []
    voice = [lv for lv in levels if lv.kind == "voice" and lv.cores.get("transcriber")]
    if voice:
        top = max(voice, key=lambda lv: lv.copies)
        per_core = top.copies / top.cores["transcriber"]
        lines.append(
            f"- transcriber ({engine}): {top.cores['transcriber']:.2f} cores for {top.copies} real-time voice "
            f"sessions -> **{per_core:.1f} sessions per core** ({top.total('spoken_answered')}/"
            f"{top.total('spoken_expected')} spoken turns answered at that load)"
        )
    typed = [lv for lv in levels if lv.kind == "typed"]
    if typed:
        top = max(typed, key=lambda lv: lv.copies)
        rate = top.turns_per_s()
        for name in ("edge", "orchestrator", "memory", "stats"):
            if top.cores.get(name):
                lines.append(
                    f"- {name}: {top.cores[name]:.2f} cores at {rate:.0f} typed turns/s -> "
                    f"**{rate / top.cores[name]:.0f} typed turns/s per core**"
                )
    return lines


def report(levels: Sequence[Level], engine: str, llm: str, command: str, wall_s: float) -> str:
    lines = [
        DOC_HEADING,
        "",
        f"`{command}` ({machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; LLM: {llm}; "
        f"wall {wall_s:.0f} s)",
        "",
        "| level | turns answered | latency p50 / p95 / p99 ms | memory not ok | errors | stack's cores (top 5) "
        "| load generator's cores |",
        "|---|---|---|---|---|---|---|",
        *(lv.row() for lv in levels),
        "",
        "Per level: scripts "
        + "; ".join(
            sorted(
                {
                    f"{lv.kind}: {lv.script.duration:.0f} s, {lv.script.typed} typed, "
                    f"{len(lv.script.speech_ends)} spoken"
                    for lv in levels
                }
            )
        )
        + "; load average "
        + ", ".join(f"{lv.load[0]:.1f}->{lv.load[1]:.1f}" for lv in levels)
        + ".",
        "",
        "Capacity (cores a process used at the level's load):",
        "",
        *capacity(levels, engine),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voice", type=int, nargs="*", default=[1, 4], help="copies of the spoken session per level")
    parser.add_argument("--typed", type=int, nargs="*", default=[50, 200], help="copies of the typed session")
    parser.add_argument("--llm", choices=("echo", "scripted", "embedded"), default="echo")
    parser.add_argument("--spoken-turns", type=int, default=4, help="utterances in the recorded spoken session")
    parser.add_argument("--typed-turns", type=int, default=20, help="turns in the recorded typed session")
    parser.add_argument("--typed-every", type=float, default=1.0, help="seconds between recorded typed turns")
    parser.add_argument("--setting", action="append", default=[], help="KEY=VALUE for the stack (repeatable)")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--write-docs", action="store_true", help=f"append the report to {DOCS.name}")
    return parser.parse_args(argv)


async def run(options: argparse.Namespace, base_dir: Path) -> tuple[list[Level], str]:
    from bench.voice_loop import wait_ready

    settings = dict(s.split("=", 1) for s in options.setting)
    if options.llm == "echo":
        settings.setdefault("SB_LLM_PROVIDER", "echo")
    levels: list[Level] = []
    async with llm_server(options.llm) as llm_url:
        stack = Stack(options.llm, base_dir, llm_url, settings)
        progress(f"starting the stack (python -m ops.cli up, run dir {stack.run_dir})")
        stack.start()
        try:
            plan = utterances()
            ready = await wait_ready(stack, plan[0], options.start_timeout)
            progress(f"stack ready after {ready:.0f} s; recording the seed sessions")
            spoken_id, typed_id = await record_seeds(
                stack, options.spoken_turns, options.typed_turns, options.typed_every
            )
            await asyncio.sleep(2.0)  # the streams hold the last frames a moment later
            spoken, typed = await load_scripts(stack, [spoken_id, typed_id])
            progress(
                f"scripts: spoken {spoken.duration:.0f} s ({len(spoken.speech_ends)} utterances), "
                f"typed {typed.duration:.0f} s ({typed.typed} turns)"
            )
            for kind, counts, script in (("voice", options.voice, spoken), ("typed", options.typed, typed)):
                for copies in counts:
                    progress(f"{kind} x{copies}")
                    level = await run_level(stack, kind, copies, script)
                    levels.append(level)
                    print(level.row(), flush=True)
        except BaseException:
            print(f"--- last lines of the launcher ---\n{stack.tail()}", file=sys.stderr)
            raise
        finally:
            progress("stopping the stack")
            await asyncio.to_thread(stack.stop)
    return levels, settings.get("SB_STT_ENGINE", "the default engine")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    command = "python -m bench.replay_load " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sb-replay-load-") as base:
        levels, engine = asyncio.run(run(options, Path(base)))
    text = report(levels, engine, options.llm, command.strip(), time.monotonic() - started)
    print("\n" + text)
    if options.write_docs:
        with DOCS.open("a") as docs:
            docs.write("\n" + text)
    if not levels or statistics.fmean(len(lv.results) for lv in levels) == 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
