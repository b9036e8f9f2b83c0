"""A stand-in for the voice worker (not on every branch): audio.out frames and audio.done in contract shape.

On the first reply.delta of a turn it publishes ``frames`` PCM frames of ``frame_ms`` each on
the turn's audio.out subject; on the reply.done it publishes audio.done with their duration.
It is a producer of real bus messages, validated by the contract tap like any other.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts import events as ev
from contracts.subjects import BY_NAME
from workers.runtime.bus import Bus, flush_ordered

RATE = 22_050


class VoiceDouble:
    def __init__(self, nc: Client, prefix: str, frames: int = 3, frame_ms: float = 100.0) -> None:
        self.bus = Bus(producer="voice", prefix=prefix)
        self.bus.attach(nc)
        self.frames, self.frame_ms = frames, frame_ms
        self.spoken: set[str] = set()
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        nc, prefix = self.bus.nc, self.bus.prefix
        self._subs = [await nc.subscribe(BY_NAME["reply.delta"].wildcard(prefix), cb=self._on_delta),
                      await nc.subscribe(BY_NAME["reply.done"].wildcard(prefix), cb=self._on_done)]
        await flush_ordered(nc)

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _on_delta(self, msg: Msg) -> None:
        delta = ev.ReplyDelta.model_validate_json(msg.data)
        if delta.turn_id in self.spoken:
            return
        self.spoken.add(delta.turn_id)
        pcm = bytes(int(RATE * self.frame_ms / 1000) * 2)
        for seq in range(self.frames):
            await self.bus.publish_binary(ev.AudioOutMeta(session_id=delta.session_id, turn_id=delta.turn_id,
                                                          producer="voice", seq=seq, sample_rate=RATE), pcm)

    async def _on_done(self, msg: Msg) -> None:
        done = ev.ReplyDone.model_validate_json(msg.data)
        if done.turn_id in self.spoken:
            await self.bus.publish(ev.AudioOutDone(session_id=done.session_id, turn_id=done.turn_id, producer="voice",
                                                   frames=self.frames, duration_ms=self.frames * self.frame_ms,
                                                   cancelled=done.finish_reason != "stop"))
