"""Clients that keep talking while the system is broken, and the verdict on what they heard.

A :class:`Talker` is one browser-like session (tests/support/edge_client.py; docs/protocol.md):
it sends a typed turn every ``pace_s`` (or speaks, or chats on demand), records every event by
turn id, and reconnects with the same token when its socket dies, resending the chats the edge
never acknowledged (no ``turn.user`` echo: the only acknowledgement the protocol has).

A :class:`Conversation` holds the talkers of a test, the faults injected (with the time each
took to recover), and checks at the end, from the clients and from memory's history, that
every turn was answered exactly once and stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from contracts.binary import PCM_FRAME_BYTES, ClientFrame, FrameType
from tests.support.edge_client import Client, connect, history, new_session

from .harness import REPORT, Stack, StackError

Event = dict[str, Any]
STEADY = "steady"
#: What the scripted LLM answers: this, then the user's text.
REPLY_PREFIX = "You said: "
SILENT_FRAME = bytes(PCM_FRAME_BYTES)


@dataclass
class Said:
    """One typed chat, as the client sent it (possibly more than once: resent after a reconnect)."""

    talker: str
    index: int
    text: str
    phase: str
    sent_at: float = 0.0  # monotonic, of the last send
    sends: int = 0
    pending: bool = False  # to be (re)sent once a socket is back
    turn_ids: list[str] = field(default_factory=list)  # from the turn.user echoes

    @property
    def label(self) -> str:
        return f"{self.talker}#{self.index}"


@dataclass
class Turn:
    """One turn as the client heard it: every event carrying its turn id, with arrival times."""

    turn_id: str
    talker: str
    events: list[tuple[float, Event]] = field(default_factory=list)
    text: str = ""
    source: str = ""
    heard_at: float | None = None  # first turn.user: the edge (typed) or transcriber (spoken) acknowledged it
    phase: str = STEADY
    said: Said | None = None

    def of(self, kind: str) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.events if e.get("kind") == kind]

    @property
    def dones(self) -> list[Event]:
        return [e for _, e in self.of("reply.done")]

    @property
    def answered_at(self) -> float | None:
        return next((t for t, _ in self.of("reply.done")), None)

    @property
    def label(self) -> str:
        return self.said.label if self.said else f"{self.talker}:{self.source or '?'} {self.turn_id[:8]}"


class Talker:
    def __init__(
        self, conversation: Conversation, name: str, pace_s: float | None, capabilities: Iterable[str] = ("text",)
    ) -> None:
        self.conversation = conversation
        self.name = name
        self.pace_s = pace_s
        self.capabilities = list(capabilities)
        self.session_id = ""
        self.token = ""
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self.disconnects: list[float] = []
        self.edges: list[str] = []  # the edge of each socket it opened, in order
        self.said: list[Said] = []
        self._by_text: dict[str, Said] = {}
        self.turns: dict[str, Turn] = {}
        self.loose: list[Event] = []  # events without a turn id (protocol errors, session errors)
        self.audio_frames = 0
        self._speech: asyncio.Queue[tuple[bytes, asyncio.Future[None]]] = asyncio.Queue()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._microphone: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ socket

    async def open(self) -> None:
        edges = self.conversation.stack.edge_urls()
        self.session_id, self.token = await new_session(edges[0])
        # With several edges the sessions spread over them, as a load balancer would spread them.
        self.client = await self._connect(edges[len(self.conversation.talkers) % len(edges)])
        self.connected.set()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"talker-{self.name}")
        if "audio_in" in self.capabilities:
            self._microphone = asyncio.create_task(self._stream_microphone(), name=f"microphone-{self.name}")

    async def _connect(self, edge: str) -> Client:
        client = await connect(edge, self.token, client="chaos", capabilities=self.capabilities)
        self.edges.append(edge)
        return client

    async def _supervise(self) -> None:
        while True:
            assert self.client is not None
            await self._read(self.client)
            self.connected.clear()
            if self._closing:
                return
            self.disconnects.append(time.monotonic())
            self.client = await self._reconnect()
            self.connected.set()
            # The old socket died: an echo that did not come on it never will.
            for said in self.said:
                if not said.turn_ids and (said.sends or said.pending):
                    await self._send(said)

    async def _reconnect(self) -> Client:
        """The same token on any edge that answers: the one it had first, else another."""
        while True:
            for edge in self.conversation.stack.edge_urls():
                try:
                    return await self._connect(edge)
                except Exception:  # refused, reset, no welcome yet: that edge is not (back) up
                    continue
            await asyncio.sleep(0.25)

    async def _read(self, client: Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in client.ws:
                if isinstance(frame, bytes):
                    self.audio_frames += 1
                else:
                    self._heard(json.loads(frame))

    async def close(self) -> None:
        self._closing = True
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        for task in (self._microphone, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ------------------------------------------------------------------ out

    async def say(self, words: str = "how is it going") -> Said:
        said = Said(
            self.name,
            len(self.said),
            f"chaos {self.conversation.tag} {self.name} n{len(self.said)} {words}",
            self.conversation.phase,
        )
        self.said.append(said)
        self._by_text[said.text] = said
        await self._send(said)
        return said

    async def _send(self, said: Said) -> None:
        client = self.client
        if client is None or not self.connected.is_set():
            said.pending = True
            return
        try:
            await client.chat(said.text)
        except ConnectionClosed:
            said.pending = True
            return
        said.pending = False
        said.sends += 1
        said.sent_at = time.monotonic()

    async def talk(self, stop: asyncio.Event) -> None:
        """A typed turn every ``pace_s`` until ``stop``; no turn while the socket is down."""
        assert self.pace_s is not None
        tick = time.monotonic()
        while not stop.is_set():
            if self.connected.is_set():
                await self.say()
            tick += self.pace_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, tick - time.monotonic()))

    async def speak(self, pcm: bytes) -> None:
        """Say ``pcm`` (PCM16 16 kHz) into the microphone; returns once the last of it was sent."""
        assert self._microphone is not None, f"{self.name} has no audio_in capability"
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._speech.put_nowait((pcm, sent))
        await sent

    async def _stream_microphone(self) -> None:
        """20 ms frames at real-time pace for the socket's lifetime, silence between utterances.

        A live microphone never pauses: the edge checks the frames against their capture clock,
        and a stream that stops and resumes looks like audio at the wrong sample rate."""
        start, seq, pending = time.monotonic(), 0, b""
        sent: asyncio.Future[None] | None = None
        while True:
            if not pending and not self._speech.empty():
                pending, sent = self._speech.get_nowait()
            chunk, pending = (pending[:PCM_FRAME_BYTES], pending[PCM_FRAME_BYTES:]) if pending else (SILENT_FRAME, b"")
            client = self.client
            if client is not None and self.connected.is_set():
                with contextlib.suppress(ConnectionClosed):
                    await client.ws.send(ClientFrame(FrameType.AUDIO_PCM16, seq, time.time(), chunk).pack())
            if sent is not None and not pending:
                sent.set_result(None)
                sent = None
            seq += 1
            lag = time.monotonic() - (start + seq * 0.02)
            if lag > 0.2:  # the loop was held up: go on from now rather than burst to catch up
                start += lag
            await asyncio.sleep(max(0.0, start + seq * 0.02 - time.monotonic()))

    # ------------------------------------------------------------------ in

    def _heard(self, event: Event) -> None:
        now = time.monotonic()
        turn_id = event.get("turn_id")
        if not turn_id:
            self.loose.append(event)
            return
        turn = self.turns.get(turn_id)
        if turn is None:
            turn = self.turns[turn_id] = Turn(turn_id, self.name)
        turn.events.append((now, event))
        if event.get("kind") == "turn.user" and turn.heard_at is None:
            turn.heard_at, turn.text, turn.source = now, event["text"], event["source"]
            turn.phase = self.conversation.phase
            said = self._by_text.get(event["text"]) if event["source"] == "typed" else None
            if said is not None:
                said.turn_ids.append(turn_id)
                turn.said = said

    # ------------------------------------------------------------------ views

    def heard(self) -> list[Turn]:
        """Acknowledged turns (a turn.user arrived), in the order heard."""
        return sorted((t for t in self.turns.values() if t.heard_at is not None), key=lambda t: t.heard_at or 0.0)

    def can_still_arrive(self, turn: Turn) -> bool:
        """Its reply can still come: it was heard on the socket that is open now."""
        return self.connected.is_set() and (not self.disconnects or (turn.heard_at or 0.0) > self.disconnects[-1])

    def away_after(self, at: float) -> bool:
        return any(d >= at for d in self.disconnects)

    async def stored(self) -> list[Event]:
        return await history(self.conversation.stack.edge_urls()[0], self.session_id, self.token)


@dataclass
class Fault:
    label: str
    began: float  # monotonic
    back_s: float | None = None  # until the broken part was running again
    recovered_s: float | None = None  # until every talker had an answer to a turn sent after `began`
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        back = f"back after {self.back_s:.1f}s" if self.back_s is not None else "not restarted"
        answered = (
            f"answering again after {self.recovered_s:.1f}s"
            if self.recovered_s is not None
            else "NEVER answering again"
        )
        return f"{self.label}: {back}, {answered}" + "".join(f", {note}" for note in self.notes)


class Conversation:
    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.tag = uuid.uuid4().hex[:6]
        self.talkers: list[Talker] = []
        self.phase = STEADY
        self.faults: list[Fault] = []
        self._stop = asyncio.Event()
        self._talking: list[asyncio.Task[None]] = []

    async def add(self, name: str, pace_s: float | None = 1.0, capabilities: Iterable[str] = ("text",)) -> Talker:
        talker = Talker(self, name, pace_s, capabilities)
        await talker.open()
        self.talkers.append(talker)
        return talker

    def start(self) -> None:
        # Staggered, so the turns of the sessions do not all land in the same instant.
        async def staggered(talker: Talker, delay: float) -> None:
            await asyncio.sleep(delay)
            await talker.talk(self._stop)

        paced = [t for t in self.talkers if t.pace_s]
        self._talking = [
            asyncio.create_task(staggered(t, i * (t.pace_s or 1.0) / len(paced))) for i, t in enumerate(paced)
        ]

    async def stop_talking(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._talking)

    async def close(self) -> None:
        self._stop.set()
        for task in self._talking:
            task.cancel()
        await asyncio.gather(*self._talking, return_exceptions=True)
        await asyncio.gather(*(t.close() for t in self.talkers))

    # ------------------------------------------------------------------ faults

    def fault(self, label: str) -> Fault:
        fault = Fault(label, time.monotonic())
        self.faults.append(fault)
        self.phase = label
        return fault

    def _recovered_at(self, fault: Fault) -> float | None:
        """When the last paced talker got its first answer to a turn sent after the fault began."""
        latest = fault.began
        for talker in (t for t in self.talkers if t.pace_s):
            answers = [
                a
                for turn in talker.turns.values()
                if turn.said and turn.said.sent_at >= fault.began and (a := turn.answered_at) is not None
            ]
            if not answers:
                return None
            latest = max(latest, min(answers))
        return latest

    async def until_recovered(self, fault: Fault, timeout: float = 20.0, report: bool = True) -> None:
        """Wait (bounded) until every paced talker is answered again; records how long that took."""
        await self.until(lambda: self._recovered_at(fault) is not None, timeout)
        at = self._recovered_at(fault)
        fault.recovered_s = None if at is None else at - fault.began
        self.phase = STEADY
        if report:
            self.report(fault)

    def report(self, fault: Fault) -> None:
        line = f"[{self.name}] {fault.line()}"
        REPORT.append(line)
        print(line, flush=True)

    async def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def _settled(self) -> bool:
        for talker in self.talkers:
            if any(s.sends and not s.turn_ids for s in talker.said):
                return False
            if any(not turn.dones and talker.can_still_arrive(turn) for turn in talker.heard()):
                return False
        return True

    async def settle(self, timeout: float = 15.0) -> None:
        """Until every chat is echoed and every heard turn answered, or ``timeout`` (the verdict comes later)."""
        await self.until(self._settled, timeout)

    # ------------------------------------------------------------------ verdict

    async def verify(self, history_timeout: float = 20.0) -> list[str]:
        """Everything wrong, from the clients and from memory; empty when all is well."""
        problems = Problems()
        began = time.monotonic()
        stored = await self._histories(history_timeout, problems)
        for talker in self.talkers:
            self._check_client(talker, stored.get(talker.name), problems)
            if talker.name in stored:
                _check_memory(talker, stored[talker.name], problems)
        said = [s for t in self.talkers for s in t.said]
        heard = [turn for t in self.talkers for turn in t.heard()]
        away = [turn for t in self.talkers for turn in t.heard() if not turn.dones and t.away_after(turn.heard_at or 0)]
        line = (
            f"[{self.name}] {len(said)} chats ({sum(s.sends > 1 for s in said)} resent after a reconnect), "
            f"{len(heard)} turns heard, {sum(bool(t.dones) for t in heard)} replies seen, {len(away)} answered "
            f"while the client was away; memory caught up in {time.monotonic() - began:.1f}s"
        )
        REPORT.append(line)
        print(line, flush=True)
        return problems.lines()

    async def _histories(self, timeout: float, problems: Problems) -> dict[str, list[Event]]:
        """Each session's stored turns once memory has caught up (or as they are at the deadline)."""
        result: dict[str, list[Event]] = {}
        deadline = time.monotonic() + timeout
        for talker in self.talkers:
            expected = _expected_in_memory(talker)
            last_error = ""
            while True:
                try:
                    turns = await talker.stored()
                    result[talker.name] = turns
                    if expected <= {(t["role"], t["turn_id"]) for t in turns}:
                        break
                except (httpx.HTTPError, OSError) as error:
                    last_error = str(error)[:120]
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.3)
            if talker.name not in result:
                problems.add("history unreadable", STEADY, f"{talker.name} ({last_error})")
        return result

    def _check_client(self, talker: Talker, stored: list[Event] | None, problems: Problems) -> None:
        answered_in_memory = {t["turn_id"] for t in stored or () if t["role"] == "assistant"}
        for said in talker.said:
            if said.sends and not said.turn_ids:
                problems.add("sent, never acknowledged by a turn.user echo", said.phase, said.label)
            elif len(said.turn_ids) > said.sends:
                problems.add("one chat became several turns", said.phase, f"{said.label} x{len(said.turn_ids)}")
            elif not said.sends:
                problems.add("never sent: no socket came back", said.phase, said.label)
        for turn in talker.heard():
            phase = turn.said.phase if turn.said else turn.phase
            dones = turn.dones
            if len(turn.of("turn.user")) > 1:
                problems.add("turn.user delivered twice", phase, turn.label)
            if len(dones) > 1:
                reasons = "/".join(d["finish_reason"] for d in dones)
                problems.add("answered twice (several reply.done)", phase, f"{turn.label} {reasons}")
            elif not dones:
                if talker.away_after(turn.heard_at or 0.0) and turn.turn_id in answered_in_memory:
                    continue  # answered while the client had no socket: memory has the reply
                errors = ",".join(e["code"] for _, e in turn.of("error"))
                problems.add(f"no reply.done ({'error ' + errors if errors else 'and no error'})", phase, turn.label)
            else:
                _check_answer(turn, dones[0], phase, problems)


def _check_answer(turn: Turn, done: Event, phase: str, problems: Problems) -> None:
    reason = done["finish_reason"]
    if reason == "error":
        if not turn.of("error"):
            problems.add("reply.done 'error' without an error event", phase, turn.label)
    elif reason in ("stop", "length"):
        # The scripted LLM echoes the turn's text: another text means the reply belongs to another turn.
        want = REPLY_PREFIX + turn.text.strip()
        if not (want.startswith(done["text"].strip()) if reason == "length" else done["text"].strip() == want):
            problems.add("reply to the wrong text", phase, f"{turn.label}: {done['text'][:60]!r}")
    elif reason not in ("cancelled", "superseded"):
        problems.add(f"unknown finish_reason {reason!r}", phase, turn.label)


def _expected_in_memory(talker: Talker) -> set[tuple[str, str]]:
    """Every heard turn, and every reply with text: seen by the client, or due while it had no socket."""
    expected: set[tuple[str, str]] = set()
    for turn in talker.heard():
        expected.add(("user", turn.turn_id))
        if any(d["text"] for d in turn.dones) or (not turn.dones and talker.away_after(turn.heard_at or 0.0)):
            expected.add(("assistant", turn.turn_id))
    return expected


def _check_memory(talker: Talker, stored: list[Event], problems: Problems) -> None:
    heard = {t.turn_id: t for t in talker.heard()}
    counts = Counter((t["role"], t["turn_id"]) for t in stored)
    for (role, turn_id), n in counts.items():
        if n > 1:
            turn = heard.get(turn_id)
            problems.add(
                f"stored {n} times in memory ({role})",
                turn.phase if turn else STEADY,
                turn.label if turn else turn_id[:8],
            )
    for role, turn_id in sorted(_expected_in_memory(talker) - set(counts)):
        turn = heard[turn_id]
        problems.add(f"missing from memory ({role})", turn.said.phase if turn.said else turn.phase, turn.label)
    # A stored turn the client never heard is only fine as the first try of a chat it resent.
    by_text = {s.text: s for s in talker.said}
    unknown_users = {t["turn_id"]: t["text"] for t in stored if t["role"] == "user" and t["turn_id"] not in heard}
    for turn_id, text in unknown_users.items():
        said = by_text.get(text)
        if said is None or said.sends <= len(said.turn_ids):
            problems.add(
                "in memory but never heard by the client (user)",
                said.phase if said else STEADY,
                said.label if said else f"{turn_id[:8]} {text[:40]!r}",
            )
    for t in stored:
        if t["role"] == "assistant" and t["turn_id"] not in heard and t["turn_id"] not in unknown_users:
            problems.add("a stored reply to no stored turn", STEADY, t["turn_id"][:8])


async def healthy(stack: Stack, *names: str) -> None:
    """``names`` running and the system answering a turn, before a test breaks it.

    A test that found a bug may leave the system broken (a consumer that never resumed); the next
    test must fail for its own reasons, so then every running service is restarted once."""
    await stack.ensure(*names)
    if await _canary(stack, "memory" in names):
        return
    running = stack.running()
    REPORT.append(f"[setup] the system did not answer a turn before the test: restarted {', '.join(running)}")
    for name in running:
        await stack.stop(name)
    await stack.ensure(*running)
    if not await _canary(stack, "memory" in names):
        raise StackError(f"a freshly started system does not answer a turn:\n{stack.all_tails()}")


async def _canary(stack: Stack, with_memory: bool, timeout: float = 10.0) -> bool:
    """One typed turn answered (with memory context, when memory runs)."""
    async with conversation(stack, "canary") as talk:
        talker = await talk.add("canary", pace_s=None)

        def answered() -> bool:
            dones = [d for turn in talker.heard() for d in turn.dones]
            return any(d["finish_reason"] == "stop" and (d["memory"] == "ok" or not with_memory) for d in dones)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # a turn a second: one cold context request may time out
            await talker.say()
            if await talk.until(answered, 1.0):
                return True
        return False


@contextlib.asynccontextmanager
async def conversation(stack: Stack, name: str) -> AsyncIterator[Conversation]:
    talk = Conversation(stack, name)
    try:
        yield talk
    finally:
        await talk.close()


class Problems:
    """Findings grouped by (what, phase), so that a failure reads as one line per kind of loss."""

    def __init__(self) -> None:
        self._groups: defaultdict[tuple[str, str], list[str]] = defaultdict(list)

    def add(self, what: str, phase: str, item: str) -> None:
        self._groups[(what, phase)].append(item)

    def lines(self) -> list[str]:
        out = []
        for (what, phase), items in self._groups.items():
            shown = ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")
            out.append(f"{what} [{phase}]: {shown}")
        return out
