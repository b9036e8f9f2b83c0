"""Ops tools of `sb`: ``tail`` live events, ``replay`` a recorded session, ``trace`` one turn.

All three read NATS only (core subscriptions and JetStream's recorded streams), so they work
against the local stack and against a remote deployment (``--nats-url``, ``--creds``).
Replay re-publishes into another subject prefix, whose streams it provisions, so recorded
traffic can re-drive a worker under test without touching live sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Annotated, Any

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts import headers as h
from contracts.events import parse_event
from contracts.streams import AUDIO, EVENTS, STREAMS, StreamSpec
from contracts.subjects import subject_matches
from workers.runtime.bus import flush_ordered
from workers.runtime.provision import provision, stream_name
from workers.runtime.settings import RuntimeSettings, load_settings
from workers.runtime.tracing import parse_traceparent
from workers.runtime.worker import StartupError, connect_nats
from workers.stats.core import StatsAggregator

NatsUrl = Annotated[str | None, typer.Option("--nats-url", help="NATS URL(s); default SB_NATS_URL")]
Creds = Annotated[str | None, typer.Option("--creds", help="NATS .creds file; default SB_NATS_CREDS")]
Prefix = Annotated[str | None, typer.Option("--prefix", help="Subject prefix to read; default SB_SUBJECT_PREFIX")]
#: Envelope fields a pretty-printed line shows in its columns, not in the payload summary.
_ENVELOPE = {
    "kind",
    "schema_version",
    "event_id",
    "producer",
    "seq",
    "captured_at",
    "published_at",
    "session_id",
    "turn_id",
}
_COLORS = {
    "ctl": typer.colors.YELLOW,
    "turn": typer.colors.GREEN,
    "data": typer.colors.CYAN,
    "dlq": typer.colors.RED,
    "audio": typer.colors.MAGENTA,
}


def register(app: typer.Typer) -> None:
    """Add the ops commands to the `sb` app."""
    app.command()(tail)
    app.command()(replay)
    app.command()(trace)


# ---------------------------------------------------------------------------------------- plumbing


def _settings(nats_url: str | None, creds: str | None, prefix: str | None) -> RuntimeSettings:
    settings = load_settings(RuntimeSettings)
    changes: dict[str, Any] = {"connect_timeout_s": min(settings.connect_timeout_s, 5.0)}
    for key, value in (("nats_url", nats_url), ("nats_creds", creds), ("subject_prefix", prefix)):
        if value is not None:
            changes[key] = value
    return settings.model_copy(update=changes)


@contextlib.asynccontextmanager
async def _connected(settings: RuntimeSettings) -> AsyncIterator[Client]:
    nc = await connect_nats(settings, "cli")
    try:
        yield nc
    finally:
        await nc.drain()


def _run(work: Callable[[], Any]) -> None:
    try:
        raise typer.Exit(asyncio.run(work()))
    except StartupError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None


async def read_recorded(
    js: JetStreamContext, stream: str, subject: str, headers_only: bool = False, since: float | None = None
) -> list[Msg]:
    """Every message a stream holds on ``subject`` (from ``since``), through an ephemeral consumer."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        headers_only=headers_only or None,
        inactive_threshold=30.0,
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=_utc(since) if since else None,
    )
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        found: list[Msg] = []
        while remaining > 0:
            batch = await sub.fetch(min(remaining, 1_000), timeout=5.0)
            found.extend(batch)
            remaining = batch[-1].metadata.num_pending or 0
        return found
    finally:
        await sub.unsubscribe()


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _at(msg: Msg) -> float:
    """When JetStream recorded the message: one clock for every producer."""
    return msg.metadata.timestamp.timestamp()


def _kind(msg: Msg) -> str:
    return (msg.headers or {}).get(h.KIND, "?")


def summary(kind: str, data: bytes, width: int = 100) -> str:
    """The payload without its envelope, on one line."""
    if kind in ("audio.in", "audio.out"):
        return f"{len(data)} bytes"
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return f"<{len(data)} undecodable bytes>"
    if not isinstance(body, dict):
        return str(body)[:width]
    shown = {k: v for k, v in body.items() if k not in _ENVELOPE and v not in (None, "", [], {})}
    text = json.dumps(shown, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 1] + "…"


def session_of(msg: Msg) -> str | None:
    """The session a live message belongs to; for a dead letter, the session of the message it keeps."""
    session = (msg.headers or {}).get(h.SESSION)
    if session is None and _kind(msg) == "deadletter":
        with contextlib.suppress(ValueError, AttributeError):
            session = json.loads(msg.data).get("headers", {}).get(h.SESSION)
    return session


def pretty(msg: Msg) -> str:
    hdrs = msg.headers or {}
    kind = _kind(msg)
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    tokens = msg.subject.split(".")
    lane = tokens[3] if len(tokens) > 3 and tokens[1] == "ev" else tokens[1] if len(tokens) > 1 else ""
    name = typer.style(f"{kind:<22}", fg=_COLORS.get(lane))
    return (
        f"{stamp} {name} {(session_of(msg) or '-')[:12]:<12} {hdrs.get(h.TURN, '-')[:8]:<8} "
        f"{hdrs.get(h.PRODUCER, '-'):<13} {summary(kind, msg.data)}"
    )


# ---------------------------------------------------------------------------------------- tail


def tail(
    session: Annotated[str | None, typer.Option(help="Only this session")] = None,
    subject: Annotated[str | None, typer.Option(help="Only subjects matching this NATS pattern")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Only these kinds (repeatable)")] = None,
    audio: Annotated[bool, typer.Option(help="Also show audio frames (one line each)")] = False,
    count: Annotated[int, typer.Option(help="Stop after this many lines (0: never)")] = 0,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    prefix: Prefix = None,
) -> None:
    """Follow live events, pretty-printed, filtered by session, subject or kind."""
    settings = _settings(nats_url, creds, prefix)
    _run(lambda: _tail(settings, session, subject, set(kind or ()), audio, count))


async def _tail(
    settings: RuntimeSettings, session: str | None, pattern: str | None, kinds: set[str], audio: bool, count: int
) -> int:
    p, s = settings.subject_prefix, session or "*"
    subjects = [f"{p}.ev.{s}.>", f"{p}.dlq.>"] + ([f"{p}.audio.{s}.>"] if audio else [])
    done, printed = asyncio.Event(), 0

    async def show(msg: Msg) -> None:
        nonlocal printed
        if session and session_of(msg) != session:
            return
        if (pattern and not subject_matches(pattern, msg.subject)) or (kinds and _kind(msg) not in kinds):
            return
        typer.echo(pretty(msg))
        printed += 1
        if count and printed >= count:
            done.set()

    async with _connected(settings) as nc:
        for subject in subjects:
            await nc.subscribe(subject, cb=show)
        await flush_ordered(nc)
        typer.echo(f"following {', '.join(subjects)} (Ctrl-C stops)", err=True)
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            await done.wait()
    return 0


# ---------------------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Recorded:
    at: float
    msg: Msg


async def recorded_session(js: JetStreamContext, session: str, prefix: str, audio: bool = True) -> list[Recorded]:
    """A session's recorded events (and audio), in the order JetStream stored them."""
    sources: list[tuple[StreamSpec, str]] = [(EVENTS, f"{prefix}.ev.{session}.>")]
    if audio:
        sources.append((AUDIO, f"{prefix}.audio.{session}.>"))
    found: list[Recorded] = []
    for spec, subject in sources:
        found.extend(Recorded(_at(m), m) for m in await read_recorded(js, stream_name(spec, prefix), subject))
    return sorted(found, key=lambda r: r.at)


def retarget(subject: str, into: str) -> str:
    """The subject under another prefix; recorded audio-in goes back to its pre-partition subject."""
    tokens = subject.split(".")
    tokens[0] = into
    if len(tokens) == 5 and tokens[1] == "audio" and tokens[3] == "in":
        tokens = tokens[:4]  # the server maps it onto a partition again
    return ".".join(tokens)


def timeline(records: Iterable[Recorded]) -> list[str]:
    """One line per recorded event (audio collapsed per turn) and the stage latencies of each turn."""
    records = list(records)
    if not records:
        return []
    stats, lines, start, frames = StatsAggregator(), [], records[0].at, {"audio.in": 0, "audio.out": 0}
    for record in records:
        kind = _kind(record.msg)
        hdrs = record.msg.headers or {}
        body = hdrs.get(h.META, "").encode() if kind in frames else record.msg.data
        with contextlib.suppress(KeyError, ValueError):
            stats.observe(parse_event(body))
        if kind in frames:
            if kind == "audio.in":
                stats.observe_audio_in(hdrs.get(h.SESSION, ""), len(record.msg.data))
            frames[kind] += 1
            if frames[kind] > 1:
                continue
        lines.append(
            f"{(record.at - start) * 1000:9.1f} ms  {kind:<22} {hdrs.get(h.TURN, '-')[:8]:<8} "
            f"{hdrs.get(h.PRODUCER, '-'):<13} {summary(kind, record.msg.data, 80)}"
        )
    lines.append(f"audio frames: {frames['audio.in']} in, {frames['audio.out']} out (first of each shown)")
    for turn in stats.turns.values():
        stages = ", ".join(f"{name} {ms:.0f} ms" for name, ms in turn.stages.items()) or "no stage complete"
        lines.append(f"turn {turn.turn_id[:8]} ({turn.source}): {stages}")
    return lines


def replay(
    session: Annotated[str, typer.Argument(help="Session id to replay")],
    into: Annotated[str | None, typer.Option(help="Re-publish under this subject prefix (else: print)")] = None,
    speed: Annotated[float, typer.Option(help="1: original pace, 10: ten times faster, 0: as fast as possible")] = 1.0,
    kind: Annotated[list[str] | None, typer.Option(help="Only re-publish these kinds (e.g. audio.in)")] = None,
    audio: Annotated[bool, typer.Option(help="Include recorded audio (SB_AUDIO)")] = True,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    prefix: Prefix = None,
) -> None:
    """Print a session's recorded timeline with per-stage latencies, or re-publish it into another prefix."""
    settings = _settings(nats_url, creds, prefix)
    if into is not None and into == settings.subject_prefix:
        raise typer.BadParameter("--into must differ from the recorded prefix (live sessions would see it)")
    _run(lambda: _replay(settings, session, into, speed, set(kind or ()), audio))


async def _replay(
    settings: RuntimeSettings, session: str, into: str | None, speed: float, kinds: set[str], audio: bool
) -> int:
    async with _connected(settings) as nc:
        js = nc.jetstream()
        records = await recorded_session(js, session, settings.subject_prefix, audio)
        if not records:
            typer.echo(f"nothing recorded for session {session} under prefix {settings.subject_prefix!r}", err=True)
            return 1
        if into is None:
            typer.echo("\n".join(timeline(records)))
            return 0
        chosen = [r for r in records if not kinds or _kind(r.msg) in kinds]
        rate = await republish(nc, chosen, into, speed)
        typer.echo(f"replayed {len(chosen)} of {len(records)} messages into {into}.* ({rate:.0f} msg/s)")
    return 0


async def republish(nc: Client, records: list[Recorded], into: str, speed: float) -> float:
    """Publish recorded messages under ``into`` at ``speed`` times their pace; returns messages/s."""
    await provision(nc.jetstream(), STREAMS, prefix=into)
    started = time.monotonic()
    first = records[0].at if records else 0.0
    for record in records:
        if speed > 0:
            delay = (record.at - first) / speed - (time.monotonic() - started)
            if delay > 0:
                await asyncio.sleep(delay)
        await nc.publish(retarget(record.msg.subject, into), record.msg.data, headers=dict(record.msg.headers or {}))
    await flush_ordered(nc)
    return len(records) / max(time.monotonic() - started, 1e-9)


# ---------------------------------------------------------------------------------------- trace


def trace(
    turn: Annotated[str, typer.Argument(help="Turn id")],
    session: Annotated[str | None, typer.Option(help="The turn's session (faster: reads only its events)")] = None,
    since: Annotated[float, typer.Option(help="Without --session: how far back to search, in seconds")] = 3_600.0,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    prefix: Prefix = None,
) -> None:
    """Show one turn's path across workers (its trace) with timings."""
    settings = _settings(nats_url, creds, prefix)
    _run(lambda: _trace(settings, turn, session, since))


async def _trace(settings: RuntimeSettings, turn: str, session: str | None, since: float) -> int:
    async with _connected(settings) as nc:
        messages = await turn_messages(nc.jetstream(), turn, session, settings.subject_prefix, since)
    if not messages:
        typer.echo(f"no recorded events of turn {turn}", err=True)
        return 1
    typer.echo("\n".join(trace_tree(messages)))
    return 0


async def turn_messages(
    js: JetStreamContext, turn: str, session: str | None, prefix: str, since: float
) -> list[Recorded]:
    """The recorded messages of a turn's trace (headers only), audio included, in recording order."""
    s = session or "*"
    start = None if session else time.time() - since
    found = [
        Recorded(_at(m), m)
        for m in await read_recorded(
            js, stream_name(EVENTS, prefix), f"{prefix}.ev.{s}.>", headers_only=True, since=start
        )
    ]
    found += [
        Recorded(_at(m), m)
        for m in await read_recorded(
            js, stream_name(AUDIO, prefix), f"{prefix}.audio.{s}.out", headers_only=True, since=start
        )
    ]
    traces = {
        c.trace_id
        for r in found
        if (r.msg.headers or {}).get(h.TURN) == turn
        if (c := parse_traceparent((r.msg.headers or {}).get(h.TRACEPARENT)))
    }
    mine = [r for r in found if (r.msg.headers or {}).get(h.TURN) == turn or _trace_id(r.msg) in traces]
    return sorted(mine, key=lambda r: r.at)


def _trace_id(msg: Msg) -> str | None:
    context = parse_traceparent((msg.headers or {}).get(h.TRACEPARENT))
    return context.trace_id if context else None


def _kind_and_producer(record: Recorded) -> tuple[str, str]:
    return _kind(record.msg), (record.msg.headers or {}).get(h.PRODUCER, "?")


def trace_tree(records: list[Recorded]) -> list[str]:
    """The messages as a tree of spans (child under the message whose handling published it);
    runs of siblings of one kind and producer are collapsed into one line with their count."""
    start = records[0].at
    spans = {c.span_id: r for r in records if (c := parse_traceparent((r.msg.headers or {}).get(h.TRACEPARENT)))}
    children: dict[str | None, list[Recorded]] = {}
    for record in records:
        parent = (record.msg.headers or {}).get(h.PARENT_SPAN)
        children.setdefault(parent if parent in spans else None, []).append(record)
    traces = sorted({t for r in records if (t := _trace_id(r.msg))})
    lines = [
        f"trace {', '.join(traces) or '(no trace context)'}: {len(records)} messages, "
        f"{(records[-1].at - start) * 1000:.1f} ms"
    ]

    def walk(parent: str | None, depth: int) -> None:
        for (kind, producer), group in groupby(children.get(parent, []), key=_kind_and_producer):
            run = list(group)
            extra = f" x{len(run)} (last +{(run[-1].at - start) * 1000:.1f} ms)" if len(run) > 1 else ""
            lines.append(f"+{(run[0].at - start) * 1000:8.1f} ms  {'  ' * depth}{producer}: {kind}{extra}")
            for record in run:
                context = parse_traceparent((record.msg.headers or {}).get(h.TRACEPARENT))
                if context is not None:
                    walk(context.span_id, depth + 1)

    walk(None, 0)
    return lines
