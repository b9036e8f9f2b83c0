"""Fan-out of one session's bus events to one socket, bounded so a slow client cannot grow memory.

Policy when the client reads too slowly and the queue (``SB_OUTBOUND_QUEUE`` frames) is
full: droppable events (reply deltas, partial transcripts, assistant audio, job progress)
are skipped and counted, and the client is told how many with a ``dropped`` frame;
any other event (control lane, finished turns) cannot be skipped, so the socket is closed
with 4013 (slow consumer). After an interrupt, nothing more of the interrupted turn is
forwarded except its ``reply.done``, ``audio.done`` and ``error`` events (which close it).
An interrupt without a turn id targets the turn being generated and, for a client that
declared ``audio_out``, the turn whose audio has not ended with ``audio.done`` yet.
"""

from __future__ import annotations

import asyncio
import collections
import json

from nats.aio.msg import Msg

from contracts import headers as h
from contracts.binary import AudioOutFrame
from contracts.client import Dropped, Flush
from contracts.events import AudioOutMeta
from contracts.subjects import SUBJECTS
from workers.runtime.turns import TurnLedger

TO_CLIENT = frozenset(s.message.kind_name() for s in SUBJECTS if s.to_client)
DROPPABLE = frozenset({"reply.delta", "transcript.partial", "audio.out", "job.progress"})
AFTER_FLUSH = frozenset({"reply.done", "audio.done", "ctl.interrupt", "error"})

Frame = str | bytes


SEEN_WINDOW = 256  # recent event ids a socket remembers


class SlowConsumerError(Exception):
    pass


class Outbound:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._unreported = 0
        self.turns = TurnLedger()  # set audio_out when the client declares it: replies are spoken then
        # A publish retried until stored (Bus.publish_stored) reaches subscribers once per attempt.
        self._seen: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self.closed = asyncio.Event()  # set when the client must be disconnected (slow consumer)

    def send(self, frame: Frame, droppable: bool = False) -> None:
        """Queue a frame; never blocks. Sets ``closed`` when a must-deliver frame does not fit."""
        if self._unreported and self.queue.qsize() < self.queue.maxsize - 1:
            self.queue.put_nowait(Dropped(count=self._unreported).model_dump_json())
            self._unreported = 0
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            if not droppable:
                self.closed.set()
                return
            self.dropped += 1
            self._unreported += 1

    async def on_event(self, msg: Msg) -> None:
        headers = msg.headers or {}
        kind = headers.get(h.KIND, "")
        if kind not in TO_CLIENT:
            return
        if (event_id := headers.get(h.MSG_ID)) is not None:
            if event_id in self._seen:  # per forwarded event: a set, not a scan of the window
                return
            self._seen.add(event_id)
            self._seen_order.append(event_id)
            if len(self._seen_order) > SEEN_WINDOW:
                self._seen.discard(self._seen_order.popleft())
        turn = headers.get(h.TURN)
        if turn and self.turns.interrupted(turn) and kind not in AFTER_FLUSH:
            return  # late output of an interrupted turn
        if kind == "turn.user" and turn:
            self.turns.user_turn(turn)
        elif kind == "reply.delta" and turn:
            self.turns.replying(turn)  # the reply to a user turn carries that turn's id
        elif kind == "reply.done" and turn:
            self.turns.reply_done(turn, _finish_reason(msg.data))  # its speech may come after the text
        elif kind == "audio.done" and turn:
            self.turns.audio_done(turn)
        elif kind == "ctl.interrupt":
            self._flush(self.turns.interrupt(turn))
        self.send(msg.data.decode(), droppable=kind in DROPPABLE)

    def _flush(self, turns: list[str]) -> None:
        targets: list[str | None] = [*turns] or [None]
        for turn in targets:
            self.send(Flush(turn_id=turn).model_dump_json())

    async def on_audio(self, msg: Msg) -> None:
        meta = AudioOutMeta.model_validate_json((msg.headers or {}).get(h.META, "{}"))
        if self.turns.interrupted(meta.turn_id):
            return
        self.turns.speaking_now(meta.turn_id)
        self.send(AudioOutFrame(meta.turn_id, meta.seq or 0, meta.sample_rate, msg.data).pack(), droppable=True)


def _finish_reason(data: bytes) -> str:
    try:
        return str(json.loads(data).get("finish_reason", "stop"))
    except (ValueError, AttributeError):
        return "stop"
