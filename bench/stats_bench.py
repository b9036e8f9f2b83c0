"""The stats aggregator's cost on the hot path, and the replay rate.

Starts its own nats-server, the edge and the orchestrator (echo model: zero-latency, so the
figures are the system's own) as separate processes, then drives typed turns over WebSockets
and measures on the client the time from the chat frame to the first reply.delta and to the
reply.done, alternating rounds WITHOUT and WITH the stats worker (``python -m workers.stats``,
its own process, consuming everything JetStream records) so both conditions share the same
machine load. Then it replays a recorded session (its events plus ``--audio-frames`` audio-in
frames) with ``sb replay``'s code into an isolated prefix as fast as possible, and reports
messages per second, and the aggregator's own fold rate (events per second, in-process).

    .venv/bin/python bench/stats_bench.py [--rounds 4] [--turns 60] [--sessions 4] [--audio-frames 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import nats
import websockets

from bench.chat_bench import Children, child_env, percentile, wait_http
from contracts import events as ev
from ops import tools
from ops.health import discover
from ops.servers import free_port, start_nats
from ops.stack import NATS_CONF
from workers.runtime.bus import Bus
from workers.runtime.logging import configure_logging
from workers.stats.core import StatsAggregator

SECRET = "stats-bench-secret-" + "x" * 40


async def session_turns(url: str, turns: int) -> tuple[str, list[tuple[float, float]]]:
    """One session's sequential turns: (ms to first delta, ms to reply.done) each."""
    async with httpx.AsyncClient(trust_env=False) as http:
        grant = (await http.post(f"{url}/v1/sessions")).raise_for_status().json()
    results: list[tuple[float, float]] = []
    async with websockets.connect(url.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "token": grant["token"]}))
        assert json.loads(await ws.recv())["kind"] == "welcome"
        for i in range(turns):
            sent = time.perf_counter()
            first: float | None = None
            await ws.send(json.dumps({"type": "chat", "text": f"turn {i} hello there"}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if event["kind"] == "reply.delta" and first is None:
                    first = (time.perf_counter() - sent) * 1000
                elif event["kind"] == "reply.done":
                    results.append((first or 0.0, (time.perf_counter() - sent) * 1000))
                    break
    return grant["session_id"], results


async def wait_service(nats_url: str, name: str, present: bool = True, timeout: float = 60.0) -> None:
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + timeout
        while any(s.name == name for s in await discover(nc)) is not present:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} {'did not start' if present else 'did not stop'} in {timeout:g}s")
            await asyncio.sleep(0.2)
    finally:
        await nc.drain()


async def round_of_turns(url: str, sessions: int, turns: int) -> tuple[list[str], list[tuple[float, float]]]:
    done = await asyncio.gather(*(session_turns(url, turns) for _ in range(sessions)))
    return [sid for sid, _ in done], [r for _, results in done for r in results]


def summary(label: str, results: list[tuple[float, float]]) -> str:
    first = [r[0] for r in results]
    total = [r[1] for r in results]
    return (
        f"| {label} | {len(results)} | {percentile(first, 0.5):.2f} / {percentile(first, 0.95):.2f} ms | "
        f"{percentile(total, 0.5):.2f} / {percentile(total, 0.95):.2f} ms |"
    )


async def run(options: argparse.Namespace, children: Children) -> None:
    store = Path(tempfile.mkdtemp(prefix="stats-bench-"))
    children.nats = start_nats(store / "nats", config=NATS_CONF)
    nats_url = children.nats.url
    port = free_port()
    edge = children.start(
        "edge",
        [sys.executable, "-m", "edge"],
        child_env(SB_NATS_URL=nats_url, SB_EDGE_PORT=str(port), SB_EDGE_SECRET=SECRET, SB_TEXT_FRAMES_PER_S="1000"),
    )
    children.start(
        "orchestrator",
        [sys.executable, "-m", "workers.orchestrator"],
        child_env(SB_NATS_URL=nats_url, SB_LLM_PROVIDER="echo"),
    )
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/healthz", edge)
    await wait_service(nats_url, "orchestrator")
    await round_of_turns(url, 1, 5)  # warm-up
    without: list[tuple[float, float]] = []
    with_stats: list[tuple[float, float]] = []
    sessions: list[str] = []
    for r in range(options.rounds):
        running = r % 2 == 1
        if running:
            children.start(
                "stats",
                [sys.executable, "-m", "workers.stats"],
                child_env(SB_NATS_URL=nats_url, SB_STATS_BACKFILL_S="0"),
            )
            await wait_service(nats_url, "stats")
        ids, results = await round_of_turns(url, options.sessions, options.turns)
        sessions += ids
        (with_stats if running else without).extend(results)
        if running:
            children.stop("stats")
            await wait_service(nats_url, "stats", present=False)
    print(f"load before the figures: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)")
    print("| condition | turns | chat -> first delta p50 / p95 | chat -> reply.done p50 / p95 |")
    print("|---|---:|---:|---:|")
    print(summary("without the stats worker", without))
    print(summary("with the stats worker", with_stats))
    delta = statistics.median(r[1] for r in with_stats) - statistics.median(r[1] for r in without)
    print(f"difference of the reply.done medians: {delta:+.2f} ms")

    await replay_rates(nats_url, sessions[0], options.audio_frames)


async def replay_rates(nats_url: str, session_id: str, audio_frames: int) -> None:
    nc = await nats.connect(nats_url)
    try:
        bus = Bus(producer="bench")
        bus.attach(nc)
        for seq in range(audio_frames):  # the session's microphone audio, recorded in SB_AUDIO
            await bus.publish_binary(
                ev.AudioInMeta(session_id=session_id, producer="edge", seq=seq, captured_at=time.time()), bytes(640)
            )
        await nc.flush()
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        records = await tools.recorded_session(nc.jetstream(), session_id, "sb")
        read_s = time.perf_counter() - started
        rate = await tools.republish(nc, records, "benchrpl", speed=0)
        print(
            f"replay: read {len(records)} recorded messages in {read_s * 1000:.0f} ms "
            f"({len(records) / read_s:.0f} msg/s); re-published at {rate:.0f} msg/s"
        )
        events = [ev.parse_event(r.msg.data) for r in records if r.msg.subject.split(".")[1] == "ev"]
    finally:
        await nc.drain()
    aggregator = StatsAggregator()
    repeat = max(1, 50_000 // max(1, len(events)))
    started = time.perf_counter()
    for _ in range(repeat):
        for event in events:
            aggregator.observe(event)
    folded = repeat * len(events)
    print(f"aggregator fold rate (in-process, parsed events): {folded / (time.perf_counter() - started):.0f} events/s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds, without then with (even)")
    parser.add_argument("--turns", type=int, default=60, help="sequential turns per session per round")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions per round")
    parser.add_argument("--audio-frames", type=int, default=3_000, help="20 ms audio frames added to the replay")
    options = parser.parse_args(argv)
    configure_logging("warning", "json")
    children = Children(Path(tempfile.mkdtemp(prefix="stats-bench-logs-")))
    try:
        asyncio.run(run(options, children))
    finally:
        children.stop_all()


if __name__ == "__main__":
    main()
