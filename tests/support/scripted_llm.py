"""A deterministic, scripted OpenAI-compatible chat server for tests and benchmarks.

It speaks the real protocol over real HTTP on loopback (uvicorn + a plain ASGI app), so the
``openai`` package's ``AsyncOpenAI`` client can be driven end to end without a paid API:

    async with ScriptedLLM() as llm:
        client = AsyncOpenAI(base_url=llm.base_url, api_key="test")

Endpoints: ``POST /v1/chat/completions`` (SSE when ``stream: true``, JSON otherwise),
``POST /v1/audio/speech`` (text-to-speech, see below) and ``GET /v1/models`` (one model, ``scripted``).

Default reply: ``"You said: " + <last user message, markers removed>``, streamed one chunk per
word piece (regex ``\\s*\\S+\\s*``). The first content chunk is preceded by a ``role: assistant``
chunk and the stream ends with a ``finish_reason`` chunk, the usage chunk when
``stream_options.include_usage`` is set, and ``data: [DONE]``. ``max_tokens`` /
``max_completion_tokens`` truncate the reply and give ``finish_reason: "length"``. Without a
delay the whole SSE body goes out in one write (the client still sees one event per chunk);
with a delay each chunk is its own write.

Markers in the LAST user message script the response (they combine):

    [tokens:N]        reply with exactly N pieces "tok0 tok1 ... tok{N-1} "
    [delay:MS]        wait MS before every content chunk, the first one included
    [first_delay:MS]  wait MS more before the first content chunk only
    [status:CODE]     answer at once with HTTP CODE and an OpenAI-style JSON error body
    [hang]            send nothing at all (not even headers) until the client goes away
    [malformed]       one valid chunk, then a ``data:`` line that is not JSON, then end the body
    [misshapen]       streamed: one valid chunk, then JSON that is no chunk (its delta is a string), then [DONE]
    [disconnect]      two valid chunks, then close the connection without finishing the body
    [echo_system]     reply with the system (and developer) messages verbatim, joined by blank lines
    [empty]           streamed: the role chunk, finish_reason "stop" and [DONE], no content at all
    [silent]          streamed: status 200 and SSE headers, then the body ends with no event (what
                      llama-cpp-python's server sends when the prompt exceeds its context window)
    [stream_error]    streamed: the role chunk, then ``data: {"error": {...}}`` (llama-server's shape of
                      a failure after the stream started), then the body ends

``ScriptedLLM(context_window=N)`` behaves like llama-server started with ``-c N``: ``GET /props``
reports ``default_generation_settings.n_ctx``, and a chat request whose prompt has more than N
tokens (its own count: :func:`prompt_tokens`) gets HTTP 400 ``exceed_context_size_error``.

``llm.script(reply=..., status=..., delay_ms=..., tool_calls=[(name, arguments), ...])`` scripts the
next request programmatically (each call queues one request); a marker wins over the scripted value
it competes with. Tool calls stream in OpenAI's shape after any reply text: per call, a first
``delta.tool_calls[i]`` with its ``index``, ``id`` (``call_<request>_<i>``), ``type`` and
``function.name``, then ``function.arguments`` in pieces (a dict is sent as its JSON, a string as
is, so a test can send broken JSON), and the stream ends with ``finish_reason: "tool_calls"``.
``llm.requests`` holds the parsed JSON bodies received, ``llm.in_flight`` the chat requests
being answered right now (it drops when a client abandons a stream or times out).

Speech (``/v1/audio/speech``): only ``response_format: "pcm"`` (24 kHz PCM16 LE mono, OpenAI's
raw format), streamed in 100 ms chunks (each its own write). The audio is a 220 Hz tone whose
length is :data:`SPEECH_S_PER_CHAR` per character of ``input``, at least 0.3 s. A voice OpenAI
does not have gets 400, like the real API. ``llm.script_speech(status=..., disconnect=True,
delay_ms=...)`` scripts the next speech request: an error status, or half the audio and then
the connection closed mid-body, or a delay before each chunk. ``llm.speech_requests`` holds
the parsed bodies.

Run by hand: ``python -m tests.support.scripted_llm --port 8090``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_ID = "scripted"
SPEECH_RATE = 24_000
SPEECH_S_PER_CHAR = 0.06  # about what a voice takes per character of English
SPEECH_VOICES = frozenset(
    {"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse"}
)

_MARKER = re.compile(
    r"\[(tokens|delay|first_delay|status):(\d+(?:\.\d+)?)\]|\[(hang|malformed|misshapen|disconnect|echo_system|empty|silent|stream_error)\]"
)
_PIECE = re.compile(r"\s*\S+\s*")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_JSON_HEADERS = [(b"content-type", b"application/json")]
_DONE = b"data: [DONE]\n\n"

# Bodies modelled on what api.openai.com returns, so client code sees realistic errors.
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (scripted).", "invalid_request_error", None),
    401: ("Incorrect API key provided (scripted).", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model (scripted).", "invalid_request_error", "permission_denied"),
    404: ("The model does not exist (scripted).", "invalid_request_error", "model_not_found"),
    409: ("Conflict (scripted).", "invalid_request_error", None),
    422: ("Unprocessable entity (scripted).", "invalid_request_error", None),
    429: ("Rate limit reached (scripted).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (scripted).", "server_error", None),
    502: ("Bad gateway (scripted).", "server_error", None),
    503: ("The engine is currently overloaded (scripted).", "server_error", "service_unavailable"),
}


ToolCallScript = tuple[str, dict[str, Any] | str]  # the function's name, its arguments


@dataclass(frozen=True)
class _Script:
    reply: str | None
    status: int | None
    delay_ms: float
    tool_calls: tuple[ToolCallScript, ...] = ()


@dataclass(frozen=True)
class _SpeechScript:
    status: int | None
    disconnect: bool
    delay_ms: float


@dataclass
class _Plan:
    pieces: list[str]
    finish_reason: str = "stop"
    status: int | None = None
    delay: float = 0.0
    first_delay: float = 0.0
    hang: bool = False
    malformed: bool = False
    misshapen: bool = False
    disconnect: bool = False
    empty: bool = False
    silent: bool = False
    stream_error: bool = False
    tool_calls: tuple[ToolCallScript, ...] = ()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    # Content may also be a list of parts ({"type": "text", "text": ...}); only text counts here.
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _split(text: str) -> list[str]:
    pieces = _PIECE.findall(text)
    # Whitespace-only text has no \S, yet echoing it verbatim must still send it.
    return pieces or ([text] if text else [])


def _error_body(status: int, message: str | None = None) -> bytes:
    default, kind, code = _ERRORS.get(status, (f"Scripted error {status}.", "server_error", None))
    return json.dumps({"error": {"message": message or default, "type": kind, "param": None, "code": code}}).encode()


class ScriptedLLM:
    """An in-loop OpenAI-compatible server on 127.0.0.1; use as ``async with ScriptedLLM() as llm``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, context_window: int | None = None) -> None:
        self.host = host
        self.port = port
        self.context_window = context_window
        self.requests: list[dict[str, Any]] = []
        self.speech_requests: list[dict[str, Any]] = []
        # Chat requests being answered right now; drops when a client abandons a stream.
        self.in_flight = 0
        self._scripts: deque[_Script] = deque()
        self._speech_scripts: deque[_SpeechScript] = deque()
        self._server: uvicorn.Server | None = None
        self._count = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def clear(self) -> None:
        """Forget recorded requests and any scripts not yet used."""
        self.requests.clear()
        self.speech_requests.clear()
        self._scripts.clear()
        self._speech_scripts.clear()

    def script(
        self,
        reply: str | None = None,
        status: int | None = None,
        delay_ms: float = 0,
        tool_calls: list[ToolCallScript] | None = None,
    ) -> None:
        """Script one upcoming chat request: its reply text, an error status, a delay before each chunk,
        tool calls (then the reply defaults to none)."""
        self._scripts.append(_Script(reply, status, delay_ms, tuple(tool_calls or ())))

    def script_speech(self, status: int | None = None, disconnect: bool = False, delay_ms: float = 0) -> None:
        """Script one upcoming speech request: an error status, a cut-off body, a delay before each chunk."""
        self._speech_scripts.append(_SpeechScript(status, disconnect, delay_ms))

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            loop="none",
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
        )
        config.load()
        server = uvicorn.Server(config)
        # Server.serve() polls every 100 ms and sleeps 100 ms on shutdown; driving startup()
        # ourselves and closing connections directly keeps start/stop in the millisecond range.
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for listener in server.servers:
            listener.close()
        # Aborting wakes every in-flight handler with http.disconnect (hang, delays), so they
        # return on their own instead of being cancelled, which uvicorn would log as an error.
        for connection in list(server.server_state.connections):
            connection.transport.abort()
        tasks = list(server.server_state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for listener in server.servers:
            await listener.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- ASGI ------------------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        # Like the real API: no bearer key, no answer (so every test also checks that clients send it).
        if method == "POST" and not dict(scope["headers"]).get(b"authorization", b"").startswith(b"Bearer "):
            await _respond(send, 401, _error_body(401))
        elif method == "POST" and path == "/v1/chat/completions":
            await self._chat(scope, receive, send)
        elif method == "POST" and path == "/v1/audio/speech":
            await self._speech(scope, receive, send)
        elif method == "GET" and path == "/v1/models":
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "switchboard"}
            await _respond(send, 200, json.dumps({"object": "list", "data": [model]}).encode())
        elif method == "GET" and path == "/props" and self.context_window:
            props = {"total_slots": 1, "default_generation_settings": {"n_ctx": self.context_window}}
            await _respond(send, 200, json.dumps(props).encode())
        elif method == "GET" and path == f"/v1/models/{MODEL_ID}":
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "switchboard"}
            await _respond(send, 200, json.dumps(model).encode())
        else:
            await _respond(send, 404, _error_body(404, f"Unknown endpoint {method} {path} (scripted)."))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json(receive, send)
        if body is None:
            return
        self.requests.append(body)
        self._count += 1
        self.in_flight += 1
        try:
            await self._answer(scope, receive, send, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, scope: Scope, receive: Receive, send: Send, body: dict[str, Any]) -> None:
        if self.context_window and (count := prompt_tokens(body)) > self.context_window:
            error = {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": count,
                "n_ctx": self.context_window,
            }
            await _respond(send, 400, json.dumps({"error": error}).encode())
            return
        plan = self._plan(body)
        if plan.hang:
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if plan.status is not None:
            await _respond(send, plan.status, _error_body(plan.status))
            return

        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch(receive, gone)) if plan.delay or plan.first_delay else None
        try:
            if body.get("stream"):
                await self._stream(scope, send, body, plan, gone)
            else:
                await self._complete(scope, send, body, plan, gone)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _speech(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json(receive, send)
        if body is None:
            return
        self.speech_requests.append(body)
        script = self._speech_scripts.popleft() if self._speech_scripts else _SpeechScript(None, False, 0)
        text = str(body.get("input") or "")
        problem = (
            "Invalid voice."
            if body.get("voice") not in SPEECH_VOICES
            else "Only response_format 'pcm' is scripted."
            if body.get("response_format") != "pcm"
            else "Input is empty."
            if not text.strip()
            else None
        )
        if script.status is not None or problem:
            status = script.status or 400
            await _respond(send, status, _error_body(status, problem if script.status is None else None))
            return
        self._count += 1
        audio = _tone(max(0.3, len(text.strip()) * SPEECH_S_PER_CHAR))
        chunks = [audio[i : i + SPEECH_RATE // 5] for i in range(0, len(audio), SPEECH_RATE // 5)]  # 100 ms each
        if script.disconnect:
            chunks = chunks[: max(1, len(chunks) // 2)]
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch(receive, gone))
        try:
            headers = self._headers([(b"content-type", b"application/octet-stream")])
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for chunk in chunks:
                if not await _pause(script.delay_ms / 1000, gone):
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if script.disconnect:
                await self._close_connection(scope)
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def _plan(self, body: dict[str, Any]) -> _Plan:
        messages = body.get("messages") or []
        messages = [m for m in messages if isinstance(m, dict)]
        last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        script = self._scripts.popleft() if self._scripts else None
        plan = _Plan(pieces=[])
        reply: str | None = None
        if script is not None:
            reply, plan.status, plan.delay = script.reply, script.status, script.delay_ms / 1000
            plan.tool_calls = script.tool_calls
            if plan.tool_calls and reply is None:
                reply = ""  # a call alone, as models usually send it
        tokens: int | None = None
        echo_system = False
        for match in _MARKER.finditer(last_user):
            name, value, flag = match.groups()
            if name == "tokens":
                tokens = int(float(value))
            elif name == "delay":
                plan.delay = float(value) / 1000
            elif name == "first_delay":
                plan.first_delay = float(value) / 1000
            elif name == "status":
                plan.status = int(float(value))
            elif flag == "echo_system":
                echo_system = True
            else:
                setattr(plan, flag, True)
        if plan.empty or plan.silent:
            plan.pieces = []
        elif tokens is not None:
            plan.pieces = [f"tok{k} " for k in range(tokens)]
        elif echo_system:
            system = [_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
            plan.pieces = _split("\n\n".join(system))
        else:
            if reply is None:
                said = _MARKER.sub("", last_user)
                if said != last_user:
                    # Drop the gaps the markers leave behind so "[delay:5] hi" echoes as "hi".
                    said = re.sub(r"[ \t]{2,}", " ", said).strip()
                reply = "You said: " + said
            plan.pieces = _split(reply)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(plan.pieces):
            plan.pieces = plan.pieces[:limit]
            plan.finish_reason = "length"
        return plan

    def _usage(self, body: dict[str, Any], plan: _Plan) -> dict[str, int]:
        prompt = sum(len(_text(m.get("content")).split()) for m in body.get("messages") or [] if isinstance(m, dict))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": len(plan.pieces),
            "total_tokens": prompt + len(plan.pieces),
        }

    async def _stream(self, scope: Scope, send: Send, body: dict[str, Any], plan: _Plan, gone: asyncio.Event) -> None:
        head = {
            "id": f"chatcmpl-scripted-{self._count}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
            "system_fingerprint": "fp_scripted",
        }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            # OpenAI sends "usage": null on every chunk once usage was requested.
            head["usage"] = None

        # Serialising the fixed fields once per request leaves one string dumps() per chunk.
        prefix = b"data: " + json.dumps(head)[:-1].encode() + b', "choices": [{"index": 0, "delta": '

        def event(delta: bytes, finish: str | None = None) -> bytes:
            return prefix + delta + b', "logprobs": null, "finish_reason": ' + _json(finish) + b"}]}\n\n"

        def content(piece: str, role: bool = False) -> bytes:
            return (b'{"role": "assistant", "content": ' if role else b'{"content": ') + _json(piece) + b"}"

        await send({"type": "http.response.start", "status": 200, "headers": self._headers(_SSE_HEADERS)})
        pieces = plan.pieces
        if plan.silent or plan.stream_error:
            body_end = b""
            if plan.stream_error:
                error = {"code": 500, "message": "llama_decode failed (scripted)", "type": "server_error"}
                body_end = event(content("", role=True)) + b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": body_end, "more_body": False})
            return
        if plan.malformed or plan.misshapen or plan.disconnect:
            for index, piece in enumerate(pieces[: 2 if plan.disconnect else 1]):
                if not await _pause(plan.first_delay * (index == 0) + plan.delay, gone):
                    return
                chunk = event(content(piece, role=index == 0))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if plan.malformed:
                await send({"type": "http.response.body", "body": b'data: {"id": "chatcmpl-', "more_body": True})
                await send({"type": "http.response.body", "body": b" not json\n\n", "more_body": False})
            elif plan.misshapen:
                misshapen = event(b'"not an object"') + b"data: [DONE]\n\n"
                await send({"type": "http.response.body", "body": misshapen, "more_body": False})
            else:
                await self._close_connection(scope)
            return

        role = event(content("", role=True))
        deltas = [content(piece) for piece in pieces] + self._tool_deltas(plan)
        tail = event(b"{}", "tool_calls" if plan.tool_calls else plan.finish_reason)
        if include_usage:
            tail += b"data: " + json.dumps({**head, "choices": [], "usage": self._usage(body, plan)}).encode() + b"\n\n"
        if not plan.delay and not plan.first_delay:
            # Undelayed chunks would leave back to back anyway; one write instead of one per
            # chunk saves a syscall each, the bulk of the server's per-request cost.
            chunks = b"".join(event(delta) for delta in deltas)
            await send({"type": "http.response.body", "body": role + chunks + tail + _DONE, "more_body": False})
            return
        if not deltas:
            if not await _pause(plan.first_delay + plan.delay, gone):
                return
            await send({"type": "http.response.body", "body": role, "more_body": True})
        for index, delta in enumerate(deltas):
            if not await _pause(plan.first_delay * (index == 0) + plan.delay, gone):
                return
            # The role chunk rides with the first content chunk, as OpenAI's arrive together.
            chunk = role + event(delta) if index == 0 else event(delta)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": tail + _DONE, "more_body": False})

    def _tool_deltas(self, plan: _Plan) -> list[bytes]:
        """Each scripted call as OpenAI streams it: its name first, then its arguments in three pieces."""
        deltas: list[bytes] = []
        for index, (name, arguments) in enumerate(plan.tool_calls):
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            head = {"index": index, "id": f"call_{self._count}_{index}", "type": "function"}
            deltas.append(_json_delta({**head, "function": {"name": name, "arguments": ""}}))
            step = max(1, -(-len(text) // 3))
            for start in range(0, len(text), step):
                deltas.append(_json_delta({"index": index, "function": {"arguments": text[start : start + step]}}))
        return deltas

    async def _complete(self, scope: Scope, send: Send, body: dict[str, Any], plan: _Plan, gone: asyncio.Event) -> None:
        if not await _pause(plan.first_delay + plan.delay * len(plan.pieces), gone):
            return
        message: dict[str, Any] = {"role": "assistant", "content": "".join(plan.pieces), "refusal": None}
        if plan.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{self._count}_{index}",
                    "type": "function",
                    "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
                }
                for index, (name, args) in enumerate(plan.tool_calls)
            ]
        payload = json.dumps(
            {
                "id": f"chatcmpl-scripted-{self._count}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or MODEL_ID,
                "system_fingerprint": "fp_scripted",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if plan.tool_calls else plan.finish_reason,
                    }
                ],
                "usage": self._usage(body, plan),
            }
        ).encode()
        if plan.malformed:
            await _respond(send, 200, payload[: len(payload) // 2], self._headers(_JSON_HEADERS))
        elif plan.disconnect:
            headers = [*self._headers(_JSON_HEADERS), (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            await self._close_connection(scope)
        else:
            await _respond(send, 200, payload, self._headers(_JSON_HEADERS))

    def _headers(self, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [*base, (b"x-request-id", f"req_scripted_{self._count}".encode())]

    async def _close_connection(self, scope: Scope) -> None:
        # ASGI has no way to drop a connection mid-body without uvicorn logging an error, so
        # find this request's transport and close it; close() still flushes what was sent.
        server = self._server
        if server is None:
            return
        for connection in list(server.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and cycle.scope is scope:
                connection.transport.close()
                # Returning before connection_lost marks the cycle disconnected would make
                # uvicorn log "returned without completing response".
                for _ in range(1000):
                    if cycle.disconnected:
                        break
                    await asyncio.sleep(0.001)


def prompt_tokens(body: dict[str, Any]) -> int:
    """The double's token count of a chat request: a quarter of each message's characters, plus 4 a message."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    return sum(len(_text(m.get("content"))) // 4 + 4 for m in messages)


async def _respond(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*(headers or _JSON_HEADERS), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _read_json(receive: Receive, send: Send) -> dict[str, Any] | None:
    """The request's JSON object; None when the client left or the body was refused (answered 400)."""
    raw = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        raw += message.get("body", b"")
        if not message.get("more_body", False):
            break
    try:
        body = json.loads(raw)
    except ValueError:
        await _respond(send, 400, _error_body(400, "We could not parse the JSON body of your request."))
        return None
    if not isinstance(body, dict):
        await _respond(send, 400, _error_body(400, "The request body must be a JSON object."))
        return None
    return body


def _tone(seconds: float) -> bytes:
    """A 220 Hz tone at a quarter of full scale, 24 kHz PCM16 LE (what OpenAI's "pcm" format is)."""
    samples = (round(8192 * math.sin(2 * math.pi * 220 * i / SPEECH_RATE)) for i in range(round(seconds * SPEECH_RATE)))
    pcm = array.array("h", samples)
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()


def _json_delta(call: dict[str, Any]) -> bytes:
    return json.dumps({"tool_calls": [call]}).encode()


def _json(value: str | None) -> bytes:
    return b"null" if value is None else json.dumps(value).encode()


async def _watch(receive: Receive, gone: asyncio.Event) -> None:
    # The body is already read, so the next message is http.disconnect: the client left, the
    # server is stopping, or our own response completed.
    await receive()
    gone.set()


async def _pause(seconds: float, gone: asyncio.Event) -> bool:
    """Wait up to ``seconds``, cut short when the client goes away; False means it went away."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await gone.wait()
    return not gone.is_set()


async def _serve(host: str, port: int) -> None:
    async with ScriptedLLM(host, port) as llm:
        print(f"ScriptedLLM serving on {llm.base_url} (Ctrl-C to stop)", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the scripted OpenAI-compatible test LLM.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
