"""Fuzzed HTTP requests to the session, history, upload and video routes, with valid and invalid tokens.

The edge answers all of these itself (no memory, ingestion or video worker runs): a refused request is
a 4xx that says why, never a 5xx. The one documented 5xx is history's 503 when memory does not answer its owner.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Stack, healthy
from tests.support.edge_client import SECRET

# Header values travel as latin-1 without control characters or outer whitespace; others cannot be sent at all.
HEADER_TEXT = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60).map(str.strip)
QUERY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
SESSION_IDS = st.sampled_from(["0" * 32, "a" * 31, "", "..", "%2e%2e", "x" * 300]) | QUERY_TEXT


def _forged(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


@st.composite
def bad_tokens(draw: st.DrawFn) -> str:
    """Tokens the edge must refuse with a 401: garbage, expired, wrong secret, wrong claims."""
    now = int(time.time())
    sid = "f" * 32
    return draw(
        st.sampled_from(
            [
                _forged({"sid": sid, "exp": now - 10, "typ": "session"}),
                _forged({"sid": sid, "exp": now + 60, "typ": "session"}, secret="y" * 40),
                _forged({"sid": sid, "exp": now + 60, "typ": "refresh"}),
                _forged({"sid": "not a session id", "exp": now + 60, "typ": "session"}),
                _forged({"sid": 7, "exp": now + 60, "typ": "session"}),
                _forged({"exp": now + 60, "typ": "session"}),
                _forged({"sid": sid, "exp": "soon", "typ": "session"}),
            ]
        )
        | HEADER_TEXT
    )


@st.composite
def authorization(draw: st.DrawFn, valid: str) -> dict[str, str]:
    """No header, the valid token (bare or Bearer), or a bad one."""
    token = draw(st.sampled_from([valid]) | bad_tokens())
    if draw(st.integers(0, 3)) == 0:
        return {}
    return {"Authorization": (draw(st.sampled_from(["Bearer ", "", "bearer ", "Basic "])) + token).strip()}


async def _grant(http: httpx.AsyncClient) -> tuple[str, str]:
    grant = (await http.post("/v1/sessions")).raise_for_status().json()
    return str(grant["session_id"]), str(grant["token"])


def _wire(headers: dict[str, str]) -> dict[bytes, bytes]:
    """Header values as latin-1 bytes (httpx would encode str values as ASCII and refuse the rest)."""
    return {name.encode(): value.encode("latin-1") for name, value in headers.items()}


def _no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.request.method} {response.request.url}: {response.text}"


def _clear(response: httpx.Response) -> None:
    """No 5xx, and a refusal says why (FastAPI's ``detail``: a sentence, or the fields that were wrong)."""
    _no_5xx(response)
    if response.status_code >= 400:
        assert response.json().get("detail"), f"{response.status_code} without a reason: {response.text}"


def _bearer(headers: dict[str, str], token: str) -> bool:
    """Whether the request carries the session's token as the routes read it (``Bearer `` optional)."""
    return headers.get("Authorization", "").removeprefix("Bearer ").strip() == token


@settings(settings.get_profile("fuzz"), max_examples=150)
@given(data=st.data())
async def test_session_routes(stack: Stack, data: st.DataObject) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        _, token = await _grant(http)
        headers = data.draw(authorization(token))
        created = await http.post("/v1/sessions", headers=_wire(headers), content=data.draw(st.binary(max_size=50)))
        assert created.status_code == 200, created.text  # no API keys configured: anyone may create
        refreshed = await http.post("/v1/sessions/refresh", headers=_wire(headers))
        _no_5xx(refreshed)
        assert refreshed.status_code == (200 if _bearer(headers, token) else 401), refreshed.text
    await healthy(stack)


@settings(settings.get_profile("fuzz"), max_examples=150)
@given(data=st.data())
async def test_history(stack: Stack, data: st.DataObject) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        session_id, token = await _grant(http)
        path_id = data.draw(st.sampled_from([session_id]) | SESSION_IDS)
        params = data.draw(st.dictionaries(st.sampled_from(["before", "limit", "x"]), QUERY_TEXT | st.integers()))
        headers = data.draw(authorization(token))
        path = f"/v1/sessions/{quote(path_id, safe='%.')}/history"
        reply = await http.get(path, params=params, headers=_wire(headers))
    owner = path_id == session_id and _bearer(headers, token)
    if reply.status_code == 503:  # documented: memory does not answer (no memory worker runs here)
        assert owner, reply.text
    else:
        _no_5xx(reply)
    await healthy(stack)


FILENAMES = (
    st.sampled_from(["a.txt", "notes.md", "x.pdf", "../../etc/passwd", "a" * 600, "", ".", "😀.md", "a\x00.txt"])
    | QUERY_TEXT
)
CONTENT_TYPES = (
    st.sampled_from(["text/plain", "text/markdown; charset=utf-8", "application/pdf", "application/octet-stream", ""])
    | HEADER_TEXT
)
WAITS = st.sampled_from(["0", "0.05", "-1", "601", "nan", "inf", "-inf", "1e400", "abc", ""])  # never a long wait


@settings(settings.get_profile("fuzz"), max_examples=250)
@given(data=st.data())
async def test_ingest_upload(stack: Stack, data: st.DataObject) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        _, token = await _grant(http)
        params: dict[str, str] = {}
        if data.draw(st.integers(0, 5)):
            params["filename"] = data.draw(FILENAMES)
        if data.draw(st.booleans()):
            params["base"] = data.draw(st.sampled_from(["default", "ab", "a b", "x" * 64]) | QUERY_TEXT)
        if data.draw(st.booleans()):
            params["wait"] = data.draw(WAITS)
        headers = data.draw(authorization(token))
        if (content_type := data.draw(st.none() | CONTENT_TYPES)) is not None:
            headers["Content-Type"] = content_type
        body = data.draw(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
        reply = await http.post("/v1/ingest", params=params, headers=_wire(headers), content=body, timeout=10.0)
    _clear(reply)
    await healthy(stack)


TRANSCRIBE = st.sampled_from(["true", "false", "0", "1", "yes", "off", "", "maybe", "2"]) | QUERY_TEXT
INGEST_BASES = st.sampled_from(["default", "kb_1-x", "ab", "a b", "x" * 63, "x" * 64, "../kb"]) | QUERY_TEXT
JOB_IDS = st.sampled_from(["0" * 32, "..", "%2e%2e", "a/b", "x" * 300, " ", "*", ">"]) | QUERY_TEXT.filter(bool)


@settings(settings.get_profile("fuzz"), max_examples=80)
@given(data=st.data())
async def test_video_upload(stack: Stack, data: st.DataObject) -> None:
    """POST /v1/videos as the ingest uploads are fuzzed, then the job's cancel and keyframe routes (no video
    worker runs: an accepted job stays queued). Another token than the session's is a 401, whatever else."""
    async with httpx.AsyncClient(base_url=stack.url) as http:
        _, token = await _grant(http)
        params: dict[str, str] = {}
        if data.draw(st.integers(0, 5)):
            params["filename"] = data.draw(FILENAMES | st.just("x" * 501))
        if data.draw(st.booleans()):
            params["transcribe"] = data.draw(TRANSCRIBE)
        if data.draw(st.booleans()):
            params["ingest_base"] = data.draw(INGEST_BASES)
        headers = data.draw(authorization(token))
        if (content_type := data.draw(st.none() | st.just("video/mp4") | CONTENT_TYPES)) is not None:
            headers["Content-Type"] = content_type
        body = data.draw(st.binary(max_size=300) | st.sampled_from([b"", b"\x00\x00\x00\x18ftypmp42"]))
        reply = await http.post("/v1/videos", params=params, headers=_wire(headers), content=body, timeout=10.0)
        _clear(reply)
        assert (reply.status_code == 401) != _bearer(headers, token), reply.text
        job_id = reply.json()["job_id"] if reply.status_code == 202 else data.draw(JOB_IDS)
        path = f"/v1/videos/{quote(job_id, safe='')}"
        index = data.draw(st.sampled_from(["0", "7", "-1", "999", "1000", "x", "1e3", str(2**70)]))
        headers = data.draw(authorization(token))
        keyframe = await http.get(f"{path}/keyframes/{index}", headers=_wire(headers))
        _clear(keyframe)
        assert keyframe.status_code != 200, keyframe.text  # no job here made a keyframe
        cancelled = await http.delete(path, headers=_wire(headers))
        _clear(cancelled)
        if cancelled.status_code != 404:  # a job id of dots is a path that names no route
            assert (cancelled.status_code == 401) != _bearer(headers, token), cancelled.text
    await healthy(stack)
