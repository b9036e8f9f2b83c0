"""Running the real edge in-process and talking to it as a client would (websockets + httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from contracts.binary import AudioOutFrame
from edge.app import server_config
from edge.settings import EdgeSettings
from ops.servers import free_port

SECRET = "test-secret-" + "x" * 40


@contextlib.asynccontextmanager
async def running_edge(nats_url: str, **overrides: Any) -> AsyncIterator[str]:
    """The edge on a free port; yields its base URL (http://127.0.0.1:PORT)."""
    overrides.setdefault("edge_port", free_port())
    settings = EdgeSettings(nats_url=nats_url, edge_secret=SECRET, **overrides)
    server = uvicorn.Server(server_config(settings, host="127.0.0.1", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{settings.edge_port}"
    finally:
        server.should_exit = True
        await task


class Client:
    """One browser-like client: a session token and a socket."""

    def __init__(self, base_url: str, token: str, session_id: str, ws: ClientConnection) -> None:
        self.base_url = base_url
        self.token = token
        self.session_id = session_id
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        #: Assistant audio frames, each with how many text events had arrived before it.
        self.audio: list[tuple[int, AudioOutFrame]] = []

    async def send(self, **command: Any) -> None:
        await self.ws.send(json.dumps(command))

    async def chat(self, text: str) -> None:
        await self.send(type="chat", text=text)

    async def next_frame(self, timeout: float = 5.0) -> dict[str, Any] | AudioOutFrame:
        """The next frame of either kind: a text event or an assistant audio frame (both are recorded)."""
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(frame, bytes):
            audio = AudioOutFrame.unpack(frame)
            self.audio.append((len(self.received), audio))
            return audio
        event: dict[str, Any] = json.loads(frame)
        self.received.append(event)
        return event

    async def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        while not isinstance(frame := await self.next_frame(timeout), dict):
            continue
        return frame

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every text event up to and including the first that satisfies ``predicate``."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                seen.append(event)
                if predicate(event):
                    return seen

    async def close(self) -> None:
        await self.ws.close()


async def new_session(base_url: str) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=base_url) as http:
        grant = (await http.post("/v1/sessions")).raise_for_status().json()
    return grant["session_id"], grant["token"]


async def connect(base_url: str, token: str | None = None, **hello: Any) -> Client:
    """A socket that has completed the hello (a new session unless ``token`` is given)."""
    session_id = ""
    if token is None:
        session_id, token = await new_session(base_url)
    ws = await websockets.connect(base_url.replace("http", "ws") + "/v1/ws", max_size=2**22)
    await ws.send(json.dumps({"type": "hello", "token": token, **hello}))
    client = Client(base_url, token, session_id, ws)
    welcome = await client.next_event()
    assert welcome["kind"] == "welcome", welcome
    client.session_id = welcome["session_id"]
    return client


async def history(base_url: str, session_id: str, token: str, page: int = 200) -> list[dict[str, Any]]:
    """Every stored turn of a session, oldest first (``GET /v1/sessions/{id}/history``, all pages).

    Raises ``httpx.HTTPStatusError`` when the edge refuses (503: memory did not answer)."""
    turns: list[dict[str, Any]] = []
    before: int | None = None
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        while True:
            params: dict[str, int] = {"limit": page} | ({"before": before} if before is not None else {})
            reply = (await http.get(f"/v1/sessions/{session_id}/history", params=params)).raise_for_status().json()
            turns[:0] = reply["turns"]  # pages come newest first, each oldest first
            before = reply.get("next_before")
            if before is None:
                return turns
