"""llama-cpp-python's OpenAI-compatible server, plus ``GET /props`` that reports its context window.

Same arguments as ``python -m llama_cpp.server``. llama.cpp's own ``llama-server`` answers
``GET /props`` with ``default_generation_settings.n_ctx`` (and ``/v1/models`` with
``meta.n_ctx_train``); llama-cpp-python's server reports its window nowhere, so a prompt longer
than the window fails inside the stream and reaches the client as an empty reply. This module
adds the same ``/props`` shape, so the orchestrator budgets every prompt to the window of
either server in one way (workers/orchestrator/llm.py).

It also puts a priority gate in front of the completions (``PriorityGate``): a foreground turn
never waits behind background work (the memory worker's summaries), which marks itself with
``X-SB-Priority: background`` (workers/runtime/llm_priority.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import llama_cpp
import llama_cpp.server.app as server_app
import uvicorn
from fastapi import FastAPI
from llama_cpp.server.app import create_app
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ops import tool_calling
from workers.runtime.llm_priority import BACKGROUND, PRIORITY_HEADER

FOREGROUND = "foreground"
COMPLETIONS = frozenset({"/v1/chat/completions", "/v1/completions"})
# Background work starts only this long after the last foreground request ended: a turn's next
# request (after a tool round, say) comes within it, and a summary is not started just to be aborted.
BACKGROUND_GRACE_S = 1.0
PREEMPTED = json.dumps(
    {
        "error": {
            "code": "background_preempted",
            "type": "server_error",
            "message": "background request aborted for a foreground one; try again later",
        }
    }
).encode()


class PriorityGate:
    """One completion at a time, foreground first; background work only while nothing else runs.

    A request with ``X-SB-Priority: background`` (workers/runtime/llm_priority.py) waits until no
    other completion is running or waiting and BACKGROUND_GRACE_S have passed since the last one
    ended (a turn's next request, after a tool round, comes within that). A request without it is
    foreground: it waits only for a running foreground one (first come, first served, never cut
    short: llama-cpp-python's own ``interrupt_requests`` would end the running stream early with a
    normal ``[DONE]``, so the launcher turns it off), and a running background one is aborted at
    once: llama.cpp's abort callback, installed only while background work decodes, stops it
    between two graph nodes (milliseconds, also in the middle of its prompt), and its caller gets
    HTTP 503 ``background_preempted`` and tries again later.
    """

    def __init__(self, abort_hook: Callable[[Callable[[], bool] | None], None], grace_s: float) -> None:
        self._set_abort = abort_hook  # installs (or, with None, removes) the abort callback
        self._grace_s = grace_s
        self._changed = asyncio.Condition()
        self._running: str | None = None  # FOREGROUND, BACKGROUND or None
        self._waiting = 0  # foreground requests waiting
        self._ended = 0.0  # monotonic time the last foreground request ended
        self.aborting = False  # a foreground request waits: abort the running background one
        self.fired = False  # the abort callback did stop a decode of the running request

    def _abort_requested(self) -> bool:  # called by llama.cpp's compute thread between graph nodes
        self.fired = self.fired or self.aborting
        return self.aborting

    @contextlib.asynccontextmanager
    async def turn(self, background: bool) -> AsyncIterator[None]:
        """Hold the model for one request."""
        async with self._changed:
            if background:
                while True:
                    await self._changed.wait_for(lambda: self._running is None and not self._waiting)
                    quiet = self._grace_s - (time.monotonic() - self._ended)
                    if quiet <= 0:
                        break
                    with contextlib.suppress(TimeoutError):  # a foreground arrival wakes it earlier
                        await asyncio.wait_for(self._changed.wait(), quiet)
                self.fired = False
                self._set_abort(self._abort_requested)
            else:
                self._waiting += 1
                if self._running == BACKGROUND:
                    self.aborting = True
                try:
                    await self._changed.wait_for(lambda: self._running is None)
                finally:
                    self._waiting -= 1
            self._running = BACKGROUND if background else FOREGROUND
        try:
            yield
        finally:
            async with self._changed:
                if background:
                    self._set_abort(None)
                    self.aborting = False
                else:
                    self._ended = time.monotonic()
                self._running = None
                self._changed.notify_all()


class PriorityMiddleware:
    """Puts every completion request through the gate; an aborted background one is answered 503."""

    def __init__(self, app: ASGIApp, gate: PriorityGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in COMPLETIONS:
            await self.app(scope, receive, send)
            return
        background = dict(scope["headers"]).get(PRIORITY_HEADER.lower().encode()) == BACKGROUND.encode()
        replaced = False

        async def answer(message: Message) -> None:
            nonlocal replaced
            if background and message["type"] == "http.response.start" and self.gate.fired:
                replaced = True  # the handler failed because we aborted it: say so, not "500"
                headers = [(b"content-type", b"application/json"), (b"retry-after", b"5")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": PREEMPTED})
            elif not replaced:
                await send(message)

        async with self.gate.turn(background):
            await self.app(scope, receive, answer)


class AllowedToolsShim:
    """Lets OpenAI's ``tool_choice: {"type": "allowed_tools", ...}`` through to the chat handler
    (tool_calling.pass_allowed_tools): the request body is read whole and passed on rewritten."""

    def __init__(self, app: ASGIApp, handled: bool) -> None:
        self.app = app
        self.handled = handled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            body, more = body + message.get("body", b""), message.get("more_body", False)
        body = tool_calling.pass_allowed_tools(body, self.handled)
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def abort_hook(llama: llama_cpp.Llama) -> Callable[[Callable[[], bool] | None], None]:
    """Installs a Python function as ``llama``'s abort callback, or removes it (None). Only
    background requests run with one: checking it costs a GIL round trip per graph node."""
    installed: list[Any] = []  # keeps the ctypes callback alive while llama.cpp holds it

    def set_abort(check: Callable[[], bool] | None) -> None:
        callback = (
            llama_cpp.ggml_abort_callback(lambda _data: check()) if check else llama_cpp.ggml_abort_callback()  # NULL
        )
        llama_cpp.llama_set_abort_callback(llama._ctx.ctx, callback, None)
        installed[:] = [callback]

    return set_abort


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.llama_cpp_serve")
    add_args_from_model(parser, Settings)
    args = parser.parse_args()
    server_settings = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model_settings = cast(ModelSettings, parse_model_from_args(ModelSettings, args))
    # Requests never interrupt one another: the gate orders them (see PriorityGate).
    server_settings.interrupt_requests = False
    app: FastAPI = create_app(server_settings=server_settings, model_settings=[model_settings])

    @app.get("/props")
    def props() -> dict[str, Any]:
        return {
            "model_alias": model_settings.model_alias or model_settings.model,
            "total_slots": 1,
            "default_generation_settings": {"n_ctx": model_settings.n_ctx},
        }

    proxy = server_app._llama_proxy
    assert proxy is not None, "create_app loads the model"
    llama = proxy()
    handled = tool_calling.install(llama)
    gate = PriorityGate(abort_hook(llama), BACKGROUND_GRACE_S)
    uvicorn.run(
        PriorityMiddleware(AllowedToolsShim(app, handled), gate),
        host=os.getenv("HOST", server_settings.host),
        port=int(os.getenv("PORT", str(server_settings.port))),
    )


if __name__ == "__main__":
    main()
