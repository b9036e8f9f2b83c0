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
from collections import deque

from nats.aio.msg import Msg

from contracts import headers as h
from contracts.binary import AudioOutFrame
from contracts.client import Dropped, Flush
from contracts.events import AudioOutMeta
from contracts.subjects import SUBJECTS

TO_CLIENT = frozenset(s.message.kind_name() for s in SUBJECTS if s.to_client)
DROPPABLE = frozenset({"reply.delta", "transcript.partial", "audio.out", "job.progress"})
AFTER_FLUSH = frozenset({"reply.done", "audio.done", "ctl.interrupt", "error"})

Frame = str | bytes


class SlowConsumerError(Exception):
    pass


class Outbound:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._unreported = 0
        self._flushed: deque[str] = deque(maxlen=64)  # recent interrupted turns
        self._reply_turn: str | None = None  # the turn whose reply is being generated
        self._audio_turn: str | None = None  # the turn whose speech may still be coming
        self.audio_out = False  # the client declared audio_out: replies are spoken
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
        turn = headers.get(h.TURN)
        if turn and turn in self._flushed and kind not in AFTER_FLUSH:
            return  # late output of an interrupted turn
        if kind in ("turn.user", "reply.delta"):
            self._reply_turn = turn  # the reply to a user turn carries that turn's id
        elif kind == "reply.done":
            if turn == self._reply_turn:
                self._reply_turn = None
            if self.audio_out and turn:
                self._audio_turn = turn  # its speech may come after the text
        elif kind == "audio.done" and turn == self._audio_turn:
            self._audio_turn = None
        elif kind == "ctl.interrupt":
            self._flush([turn] if turn else [t for t in dict.fromkeys((self._reply_turn, self._audio_turn)) if t])
        self.send(msg.data.decode(), droppable=kind in DROPPABLE)

    def _flush(self, turns: list[str]) -> None:
        self._flushed.extend(turns)
        targets: list[str | None] = [*turns] or [None]
        for turn in targets:
            self.send(Flush(turn_id=turn).model_dump_json())

    async def on_audio(self, msg: Msg) -> None:
        meta = AudioOutMeta.model_validate_json((msg.headers or {}).get(h.META, "{}"))
        if meta.turn_id in self._flushed:
            return
        self._audio_turn = meta.turn_id
        self.send(AudioOutFrame(meta.turn_id, meta.seq or 0, meta.sample_rate, msg.data).pack(), droppable=True)
