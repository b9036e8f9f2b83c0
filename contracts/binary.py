"""Binary payloads: how audio and camera frames are laid out on the socket and on the bus.

On the bus a binary message's payload is the raw media and its meta model
(:class:`~contracts.events.AudioInMeta`, ``AudioOutMeta``, ``VideoFrameMeta``) travels as
JSON in the ``Sb-Meta`` header.

On the WebSocket every binary frame starts with a little-endian header:

Client to edge (16 bytes, then the payload)::

    offset size  field
    0      u8    frame type: 0x01 PCM16 audio, 0x02 compressed audio chunk, 0x03 JPEG frame
    1      u8    layout version (1)
    2      u16   flags (0; reserved)
    4      u32   sequence number, +1 per frame of this type
    8      f64   capture time, Unix epoch seconds

Edge to client, assistant audio (12 bytes + turn id, then PCM16 LE mono)::

    0      u8    frame type: 0x81
    1      u8    layout version (1)
    2      u8    length N of the turn id
    3      u8    reserved (0)
    4      u32   sequence number within the turn
    8      u32   sample rate in Hz
    12     N     turn id, ASCII
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

LAYOUT_VERSION = 1
PCM_SAMPLE_RATE = 16_000
PCM_FRAME_MS = 20
PCM_BYTES_PER_SAMPLE = 2
#: 20 ms of 16 kHz PCM16 mono.
PCM_FRAME_BYTES = PCM_SAMPLE_RATE * PCM_FRAME_MS // 1000 * PCM_BYTES_PER_SAMPLE

_CLIENT = struct.Struct("<BBHId")
_SERVER = struct.Struct("<BBBxII")


class FrameType(IntEnum):
    AUDIO_PCM16 = 0x01
    AUDIO_COMPRESSED = 0x02
    VIDEO_JPEG = 0x03
    AUDIO_OUT = 0x81


class FrameError(ValueError):
    """A binary frame that does not follow the layout; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: FrameType
    seq: int
    captured_at: float
    payload: bytes

    def pack(self) -> bytes:
        return _CLIENT.pack(self.type, LAYOUT_VERSION, 0, self.seq, self.captured_at) + self.payload

    @classmethod
    def unpack(cls, data: bytes) -> ClientFrame:
        if len(data) < _CLIENT.size:
            raise FrameError(f"binary frame of {len(data)} bytes is shorter than its {_CLIENT.size}-byte header")
        kind, version, _flags, seq, captured_at = _CLIENT.unpack_from(data)
        if version != LAYOUT_VERSION:
            raise FrameError(f"binary layout version {version} is not supported (expected {LAYOUT_VERSION})")
        try:
            frame_type = FrameType(kind)
        except ValueError:
            raise FrameError(f"unknown binary frame type 0x{kind:02x}") from None
        if frame_type is FrameType.AUDIO_OUT:
            raise FrameError("frame type 0x81 is sent by the server, not the client")
        return cls(frame_type, seq, captured_at, data[_CLIENT.size :])


@dataclass(frozen=True, slots=True)
class AudioOutFrame:
    turn_id: str
    seq: int
    sample_rate: int
    pcm: bytes

    def pack(self) -> bytes:
        turn = self.turn_id.encode("ascii")
        header = _SERVER.pack(FrameType.AUDIO_OUT, LAYOUT_VERSION, len(turn), self.seq, self.sample_rate)
        return header + turn + self.pcm

    @classmethod
    def unpack(cls, data: bytes) -> AudioOutFrame:
        if len(data) < _SERVER.size:
            raise FrameError(f"audio-out frame of {len(data)} bytes is shorter than its header")
        kind, version, turn_len, seq, rate = _SERVER.unpack_from(data)
        if kind != FrameType.AUDIO_OUT or version != LAYOUT_VERSION:
            raise FrameError(f"not an audio-out frame (type 0x{kind:02x}, version {version})")
        start = _SERVER.size
        return cls(data[start : start + turn_len].decode("ascii"), seq, rate, data[start + turn_len :])
