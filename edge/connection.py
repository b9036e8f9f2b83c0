"""One client socket: hello and authentication, commands in, the session's events out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass

from nats.aio.subscription import Subscription
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from contracts import events as ev
from contracts import subjects
from contracts.binary import ClientFrame, FrameError, FrameType
from contracts.client import (
    COMMANDS,
    AudioFormat,
    Chat,
    CloseCode,
    Command,
    Hello,
    Interrupt,
    Limits,
    Ping,
    Pong,
    ProtocolError,
    Settings,
    Welcome,
)
from contracts.envelope import new_id
from workers.runtime.bus import Bus, flush_ordered
from workers.runtime.logging import get_logger

from .audio import AudioError, CompressedIngest, PcmIngest
from .auth import AuthError, TokenIssuer
from .limits import TokenBucket
from .outbound import Outbound
from .settings import EdgeSettings

log = get_logger("edge")
PRODUCER = "edge"


class SessionSockets:
    """How many sockets each session has open on this edge."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def try_open(self, session_id: str, limit: int) -> bool:
        if self._open[session_id] >= limit:
            return False
        self._open[session_id] += 1
        return True

    def close(self, session_id: str) -> bool:
        """Returns True when that was the session's last socket."""
        self._open[session_id] -= 1
        if self._open[session_id] <= 0:
            del self._open[session_id]
            return True
        return False

    def count(self) -> int:
        return sum(self._open.values())


@dataclass
class Edge:
    """What every connection shares."""

    settings: EdgeSettings
    bus: Bus
    issuer: TokenIssuer
    sockets: SessionSockets


class FrameRefusedError(Exception):
    def __init__(self, frame: ProtocolError) -> None:
        super().__init__(frame.message)
        self.frame = frame


class Connection:
    def __init__(self, edge: Edge, ws: WebSocket) -> None:
        self.edge = edge
        self.ws = ws
        s = edge.settings
        self.out = Outbound(s.outbound_queue)
        self.text_rate = TokenBucket(s.text_frames_per_s, s.text_frames_per_s * s.burst_s)
        self.binary_rate = TokenBucket(s.binary_frames_per_s, s.binary_frames_per_s * s.burst_s)
        self.video_rate = TokenBucket(s.video_frames_per_s, s.video_frames_per_s * s.burst_s)
        self.violations = 0
        self.session_id = ""
        self.tenant: str | None = None  # named by the API key that created the session (its token says)
        self.hello: Hello | None = None
        self.pcm: PcmIngest | None = None
        self.compressed: CompressedIngest | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        await self.ws.accept()
        try:
            hello = await self._handshake()
        except AuthError as error:
            await self._refuse(
                ProtocolError(code="auth", message=str(error), fatal=True, close_code=error.close_code),
                error.close_code,
            )
            return
        except FrameRefusedError as refused:
            await self._refuse(refused.frame, refused.frame.close_code or CloseCode.PROTOCOL_ERROR)
            return
        if not self.edge.sockets.try_open(self.session_id, self.edge.settings.max_sockets_per_session):
            await self._refuse(
                ProtocolError(
                    code="auth",
                    message="this session has its maximum number of open sockets",
                    fatal=True,
                    close_code=CloseCode.TOO_MANY_SOCKETS,
                ),
                CloseCode.TOO_MANY_SOCKETS,
            )
            return
        subs: list[Subscription] = []
        # Welcome is queued first and the writer starts once the subscriptions are live: the client
        # hears nothing before its welcome and misses nothing after it.
        self.out.send(Welcome(session_id=self.session_id, limits=self._limits()).model_dump_json())
        writer: asyncio.Task[None] | None = None
        try:
            subs = await self._subscribe()
            writer = asyncio.create_task(self._write())
            await self.edge.bus.publish(
                ev.SessionStarted(
                    session_id=self.session_id,
                    producer=PRODUCER,
                    client=hello.client,
                    capabilities=list(hello.capabilities),
                    tenant=self.tenant,  # the orchestrator's retrieval requests name it
                )
            )
            reader = asyncio.create_task(self._read())
            slow = asyncio.create_task(self.out.closed.wait())
            done, _ = await asyncio.wait({reader, writer, slow}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, writer, slow):
                task.cancel()
            if self.out.closed.is_set():
                log.warning("closing slow consumer", session_id=self.session_id, dropped=self.out.dropped)
                await self._close(CloseCode.SLOW_CONSUMER, "slow consumer")
            elif reader in done and (code := reader.result()) is not None:
                await self._close(code, "limit violations")
        finally:
            if writer is not None:
                writer.cancel()
            if self.compressed is not None:
                await self.compressed.close()
            if self.pcm is not None and self.pcm.gaps:
                log.info(
                    "audio frames missing from the client's stream", session_id=self.session_id, missing=self.pcm.gaps
                )
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if self.edge.sockets.close(self.session_id):
                with contextlib.suppress(Exception):
                    await self.edge.bus.publish(
                        ev.SessionEnded(session_id=self.session_id, producer=PRODUCER, reason="socket closed")
                    )

    async def _handshake(self) -> Hello:
        try:
            async with asyncio.timeout(self.edge.settings.hello_timeout_s):
                message = await self.ws.receive()
        except TimeoutError:
            raise AuthError(CloseCode.AUTH_MISSING, "no hello with a session token in time") from None
        text = message.get("text")
        if text is None or len(text) > self.edge.settings.max_text_frame_bytes:
            raise FrameRefusedError(
                ProtocolError(
                    code="bad_command",
                    message="the first frame must be a JSON hello within the text frame limit",
                    fatal=True,
                    close_code=CloseCode.PROTOCOL_ERROR,
                )
            )
        if json_too_deep(text):
            raise FrameRefusedError(
                ProtocolError(code="bad_json", message=TOO_DEEP, fatal=True, close_code=CloseCode.PROTOCOL_ERROR)
            )
        try:
            command = COMMANDS.validate_json(text)
        except ValidationError as error:
            raise FrameRefusedError(
                ProtocolError(
                    code="bad_command",
                    message=f"invalid hello: {_first_error(error)}",
                    fatal=True,
                    close_code=CloseCode.PROTOCOL_ERROR,
                )
            ) from None
        if not isinstance(command, Hello):
            raise FrameRefusedError(
                ProtocolError(
                    code="bad_command",
                    message="the first frame must be a hello",
                    fatal=True,
                    close_code=CloseCode.PROTOCOL_ERROR,
                )
            )
        bearer = self.edge.issuer.verify(command.token)
        self.session_id, self.tenant = bearer.session_id, bearer.tenant
        self.hello = command
        self.out.turns.audio_out = "audio_out" in command.capabilities
        return command

    async def _subscribe(self) -> list[Subscription]:
        nc, prefix = self.edge.bus.nc, self.edge.bus.prefix
        events, audio = subjects.client_subjects(self.session_id, prefix)
        subs = [await nc.subscribe(events, cb=self.out.on_event), await nc.subscribe(audio, cb=self.out.on_audio)]
        await flush_ordered(nc)  # the server knows the interest before the client is welcomed
        return subs

    # ------------------------------------------------------------------ in

    async def _read(self) -> CloseCode | None:
        """Handle frames until the client leaves (None) or breaks the limits (the close code)."""
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketDisconnect:
                return None
            if message["type"] == "websocket.disconnect":
                return None
            try:
                if (text := message.get("text")) is not None:
                    await self._on_text(text)
                elif (data := message.get("bytes")) is not None:
                    await self._on_binary(data)
            except FrameRefusedError as refused:
                self.violations += 1
                frame = refused.frame
                if self.violations >= self.edge.settings.max_violations:
                    frame = frame.model_copy(update={"fatal": True, "close_code": CloseCode.POLICY})
                self.out.send(frame.model_dump_json())
                if frame.fatal:
                    return CloseCode.POLICY
            except Exception:  # a bug must not cost the client its socket
                log.exception("frame handling failed", session_id=self.session_id)
                self.out.send(
                    ProtocolError(code="internal", message="the edge failed to handle that frame").model_dump_json()
                )

    async def _on_text(self, text: str) -> None:
        if len(text.encode()) > self.edge.settings.max_text_frame_bytes:
            raise FrameRefusedError(
                ProtocolError(
                    code="too_big", message=f"text frame over {self.edge.settings.max_text_frame_bytes} bytes"
                )
            )
        if not self.text_rate.take():
            raise FrameRefusedError(ProtocolError(code="rate_limited", message="too many text frames; slow down"))
        if json_too_deep(text):  # parsers recurse: a deeply nested frame must not reach one
            raise FrameRefusedError(ProtocolError(code="bad_json", message=TOO_DEEP))
        try:
            command = COMMANDS.validate_json(text)
        except ValidationError as error:
            raise FrameRefusedError(_command_error(text, error)) from None
        await self._dispatch(command)

    async def _dispatch(self, command: Command) -> None:
        bus, sid = self.edge.bus, self.session_id
        match command:
            case Chat(text=text):
                turn = ev.UserTurn(
                    session_id=sid,
                    turn_id=new_id(),
                    producer=PRODUCER,
                    text=text,
                    source="typed",
                    captured_at=time.time(),
                )
                try:  # accepted once stored: the orchestrator and memory read turns from the stream
                    await bus.publish_stored(turn, within_s=self.edge.settings.edge_turn_accept_s)
                except Exception as error:
                    log.warning("turn not accepted", error=repr(error)[:200])
                    refusal = ev.ErrorEvent(
                        session_id=sid,
                        turn_id=turn.turn_id,
                        producer=PRODUCER,
                        code="turn_not_accepted",
                        message=NOT_ACCEPTED,
                        source=PRODUCER,
                        retryable=True,
                    )
                    self.out.send(refusal.model_dump_json())  # to this socket: the bus is what failed
            case Settings():
                fields = command.model_dump(exclude={"type"}, exclude_none=True)
                await bus.publish(ev.SessionSettings(session_id=sid, producer=PRODUCER, **fields))
            case Interrupt():
                await bus.publish(ev.Interrupt(session_id=sid, producer=PRODUCER, reason="client"))
            case Ping(id=ping_id):
                self.out.send(Pong(id=ping_id).model_dump_json(), droppable=True)
            case Hello():
                raise FrameRefusedError(ProtocolError(code="bad_command", message="hello was already received"))

    async def _on_binary(self, data: bytes) -> None:
        limit = self.edge.settings.max_binary_frame_bytes
        if len(data) > limit:
            raise FrameRefusedError(ProtocolError(code="too_big", message=f"binary frame over {limit} bytes"))
        if not self.binary_rate.take():
            raise FrameRefusedError(ProtocolError(code="rate_limited", message="too many binary frames; slow down"))
        try:
            frame = ClientFrame.unpack(data)
        except FrameError as error:
            raise FrameRefusedError(ProtocolError(code="bad_frame", message=str(error))) from None
        if frame.type is FrameType.VIDEO_JPEG:
            await self._on_video(frame)
            return
        audio = self.hello.audio if self.hello and self.hello.audio else AudioFormat()
        compressed = audio.encoding != "pcm_s16le"
        if frame.type is FrameType.AUDIO_PCM16 and not compressed:
            if self.pcm is None:
                self.pcm = PcmIngest(audio.sample_rate)
            try:
                pcm = self.pcm.accept(frame)
            except AudioError as error:
                raise FrameRefusedError(ProtocolError(code="bad_frame", message=str(error))) from None
            if pcm:
                await self._publish_audio(frame.seq, frame.captured_at, pcm)
        elif frame.type is FrameType.AUDIO_COMPRESSED and compressed:
            if self.compressed is None:
                container = "webm" if audio.encoding == "webm_opus" else "ogg"
                self.compressed = CompressedIngest(container, self._publish_audio, self._decode_failed)
            await self.compressed.feed(frame.payload)
        else:
            raise FrameRefusedError(
                ProtocolError(
                    code="unsupported",
                    message=f"frame type {frame.type.name} does not match the hello's audio "
                    f"encoding {audio.encoding!r}",
                )
            )

    async def _on_video(self, frame: ClientFrame) -> None:
        """A camera snapshot: JPEG only, at most ``video_frames_per_s``; the video worker samples them."""
        if not self.video_rate.take():
            raise FrameRefusedError(
                ProtocolError(
                    code="rate_limited",
                    message=f"camera frames over {self.edge.settings.video_frames_per_s:g} per second; slow down",
                )
            )
        if not frame.payload.startswith(b"\xff\xd8\xff"):
            raise FrameRefusedError(ProtocolError(code="bad_frame", message="a camera frame must be a JPEG image"))
        await self.edge.bus.publish_binary(
            ev.VideoFrameMeta(
                session_id=self.session_id, producer=PRODUCER, seq=frame.seq, captured_at=frame.captured_at
            ),
            frame.payload,
        )

    async def _publish_audio(self, seq: int, captured_at: float, pcm: bytes) -> None:
        await self.edge.bus.publish_binary(
            ev.AudioInMeta(session_id=self.session_id, producer=PRODUCER, seq=seq, captured_at=captured_at), pcm
        )

    async def _decode_failed(self, reason: str) -> None:
        self.out.send(ProtocolError(code="bad_frame", message=reason).model_dump_json())

    # ------------------------------------------------------------------ out

    async def _write(self) -> None:
        while True:
            frame = await self.out.queue.get()
            if isinstance(frame, str):
                await self.ws.send_text(frame)
            else:
                await self.ws.send_bytes(frame)

    async def _refuse(self, frame: ProtocolError, code: int) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_text(frame.model_dump_json())
        await self._close(code, frame.message)

    async def _close(self, code: int, reason: str) -> None:
        if self.ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, reason=reason[:120])

    def _limits(self) -> Limits:
        s = self.edge.settings
        return Limits(
            max_text_frame_bytes=s.max_text_frame_bytes,
            max_binary_frame_bytes=s.max_binary_frame_bytes,
            text_frames_per_s=s.text_frames_per_s,
            binary_frames_per_s=s.binary_frames_per_s,
        )


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


MAX_JSON_DEPTH = 16  # the deepest command is 3 levels deep
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
NOT_ACCEPTED = "the turn could not be stored now (the bus is unavailable); nothing was sent: send it again"
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects deeper than ``limit`` (brackets inside strings do not count)."""
    depth = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


def _command_error(text: str, error: ValidationError) -> ProtocolError:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return ProtocolError(code="bad_json", message="text frames must be JSON")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return ProtocolError(code="bad_command", message='a command needs a "type" string')
    if data["type"] not in {"hello", "chat", "settings", "interrupt", "ping"}:
        return ProtocolError(code="unknown_type", message=f"unknown command type {str(data['type'])[:40]!r}")
    return ProtocolError(code="bad_command", message=f"invalid {data['type']}: {_first_error(error)}")
