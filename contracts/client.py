"""The WebSocket protocol between a client (browser) and the edge, version 1.

Text frames are JSON. Client-to-edge frames are *commands* with a ``type``; edge-to-client
frames are *events* with a ``kind``: either a contract event forwarded from the bus as is
(``reply.delta``, ``reply.done``, ``error``, ...) or one of the edge's own frames below.
Binary frames follow ``contracts/binary.py``. The full description is docs/protocol.md.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .events import Tone
from .limits import TYPED_TEXT_CHARS

PROTOCOL_VERSION = 1


class CloseCode(IntEnum):
    """Why the edge closed a socket (4000-4999 are ours; 1000-1015 are RFC 6455's)."""

    NORMAL = 1000
    SERVICE_RESTART = 1012  # the edge is shutting down (uvicorn's close on shutdown); reconnect
    TOO_BIG = 1009  # a frame over the transport's hard limit
    PROTOCOL_ERROR = 4000  # first frame was not a valid hello (including an unsupported protocol version)
    AUTH_MISSING = 4001  # no hello with a token in time
    AUTH_INVALID = 4003  # forged or malformed token
    AUTH_EXPIRED = 4004  # token past its expiry: get a new one
    POLICY = 4008  # too many limit violations (rate or size)
    TOO_MANY_SOCKETS = 4009  # the session already has its maximum of open sockets
    SLOW_CONSUMER = 4013  # the client did not read fast enough to receive a must-deliver event


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(default=16_000, ge=8_000, le=48_000)
    encoding: Literal["pcm_s16le", "webm_opus", "ogg_opus"] = "pcm_s16le"


Capability = Literal["text", "audio_in", "audio_out", "video"]


class Hello(_Command):
    type: Literal["hello"]
    protocol: Literal[1] = 1
    token: str = Field(min_length=1, max_length=4_096)
    client: str = Field(default="", max_length=200)
    capabilities: list[Capability] = Field(default_factory=lambda: list[Capability](["text"]), max_length=8)
    audio: AudioFormat | None = None


class Chat(_Command):
    type: Literal["chat"]
    text: str = Field(min_length=1, max_length=TYPED_TEXT_CHARS)


class Settings(_Command):
    type: Literal["settings"]
    agent: str | None = Field(default=None, max_length=64)
    tone: Tone | None = None
    voice: str | None = Field(default=None, max_length=64)
    tts_provider: str | None = Field(default=None, max_length=32)
    language: str | None = Field(default=None, max_length=16)
    knowledge_bases: list[str] | None = None
    time_zone: str | None = Field(default=None, max_length=64)


class Interrupt(_Command):
    type: Literal["interrupt"]


class Ping(_Command):
    type: Literal["ping"]
    id: int | str | None = None


Command = Annotated[Hello | Chat | Settings | Interrupt | Ping, Field(discriminator="type")]
COMMANDS: TypeAdapter[Command] = TypeAdapter(Command)


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True)


class Limits(_Frame):
    max_text_frame_bytes: int
    max_binary_frame_bytes: int
    text_frames_per_s: float
    binary_frames_per_s: float


class Welcome(_Frame):
    kind: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    session_id: str
    limits: Limits


class Pong(_Frame):
    kind: Literal["pong"] = "pong"
    id: int | str | None = None


class ProtocolError(_Frame):
    """A frame was refused. ``fatal`` frames are followed by a close with ``close_code``."""

    kind: Literal["protocol_error"] = "protocol_error"
    code: Literal[
        "bad_json",
        "bad_command",
        "unknown_type",
        "too_big",
        "rate_limited",
        "bad_frame",
        "unsupported",
        "auth",
        "internal",
    ]
    message: str
    fatal: bool = False
    close_code: int | None = None


class Flush(_Frame):
    """Stop playing and showing the given turn now; nothing more of it will arrive."""

    kind: Literal["flush"] = "flush"
    turn_id: str | None


class Dropped(_Frame):
    """The client read too slowly: this many droppable events (deltas, partials, audio) were skipped."""

    kind: Literal["dropped"] = "dropped"
    count: int


#: Everything that crosses the socket as JSON, versioned together by PROTOCOL_VERSION.
CLIENT_MESSAGES: tuple[type[BaseModel], ...] = (
    Hello,
    Chat,
    Settings,
    Interrupt,
    Ping,
    Welcome,
    Pong,
    ProtocolError,
    Flush,
    Dropped,
)
