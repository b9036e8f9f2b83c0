"""Tenants named by API keys (issue 16, "ownership everywhere"): the sessions of one tenant share their
knowledge bases, video jobs and keyframes; other tenants and tenant-less sessions never see them.

Real NATS, the real edge, retriever (chroma), orchestrator (scripted LLM) and video worker (ffmpeg).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import jwt
import pytest

from contracts.envelope import new_id
from edge.auth import AuthError, TokenIssuer
from edge.settings import EdgeSettings
from tests.support.edge_client import SECRET, Client, connect, running_edge
from tests.support.retrieval import ingest, running_retriever
from tests.support.scripted_llm import ScriptedLLM
from tests.support.video import make_video
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import Bus, running_worker
from workers.video.settings import VideoSettings
from workers.video.worker import WORKER as VIDEO

PREFIX = "tenants"
KEYS = {
    "acme-1": "sk-acme-first-4d7f0c2a9e",
    "acme-2": "sk-acme-second-b81e3f55d0",
    "other": "sk-other-0c9d2e7a41",
    "bare": "sk-bare-55e0a1c3f9",
}
API_KEYS = [f"acme={KEYS['acme-1']}", f"acme={KEYS['acme-2']}", f"other={KEYS['other']}", KEYS["bare"]]
SECRET_TEXT = b"# Falcon\n\nFalcon project: the launch code word is periwinkle and the budget is 42 million.\n"
QUESTION = "What is the Falcon project's launch code word?"


class Stack(NamedTuple):
    url: str
    retriever: Bus  # also the operators' way in: public bases


@pytest.fixture(scope="module")
async def stack(nats_url: str, llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # No memory worker runs: its requests give up soon; retrieval gets time on a busy machine.
    orchestrator = OrchestratorSettings(
        nats_url=nats_url, subject_prefix=PREFIX, llm_base_url=llm.base_url, memory_timeout_s=0.2, retrieval_timeout_s=2
    )
    video = VideoSettings(nats_url=nats_url, subject_prefix=PREFIX)
    async with (
        running_retriever(nats_url, tmp_path_factory.mktemp("tenants"), PREFIX) as retriever,
        running_worker(ORCHESTRATOR, orchestrator),
        running_worker(VIDEO, video),
        running_edge(nats_url, subject_prefix=PREFIX, edge_api_keys=API_KEYS) as url,
    ):
        yield Stack(url, retriever)


@pytest.fixture
def edge(stack: Stack) -> str:
    return stack.url


async def grant(url: str, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def session(url: str, key: str) -> Client:
    return await connect(url, (await grant(url, key))["token"])


async def upload(client: Client, name: str, data: bytes, base: str = "default") -> str:
    """The status of the upload's ingestion job (``POST /v1/ingest``, waiting for the result)."""
    async with httpx.AsyncClient(base_url=client.base_url, headers={"Authorization": f"Bearer {client.token}"}) as http:
        response = await http.post("/v1/ingest", params={"filename": name, "base": base, "wait": 30}, content=data)
    assert response.status_code == 200, response.text
    status: str = response.json()["result"]["status"]
    return status


async def remove(client: Client, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=client.base_url, headers={"Authorization": f"Bearer {client.token}"}) as http:
        response = await http.delete("/v1/ingest", params={"filename": name, "wait": 30})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


async def cited(client: Client, question: str, base: str = "default") -> set[str]:
    """The sources the knowledge agent's reply cites when the session searches ``base``."""
    await client.send(type="settings", agent="knowledge", knowledge_bases=[base])
    await client.until(lambda e: e["kind"] == "session.settings")
    await client.chat(question)
    done = (await client.until(lambda e: e["kind"] == "reply.done", timeout=20))[-1]
    assert done["retrieval"] == "ok" and done["agent"] == "knowledge", done
    return {c["source"] for c in done["citations"]}


async def test_the_sessions_of_a_tenant_share_their_bases_and_nobody_else_sees_them(edge: str) -> None:
    first, second = await session(edge, KEYS["acme-1"]), await session(edge, KEYS["acme-2"])
    other, bare = await session(edge, KEYS["other"]), await session(edge, KEYS["bare"])
    assert await upload(first, "falcon-secret.md", SECRET_TEXT) == "ingested"
    # Another session of acme (made with another of acme's keys) finds and cites it...
    assert "falcon-secret.md" in await cited(second, QUESTION)
    assert await upload(second, "falcon-secret.md", SECRET_TEXT) == "unchanged"  # ...it is the same base
    # ...while another tenant and a tenant-less session neither find it nor learn that it exists.
    assert "falcon-secret.md" not in await cited(other, QUESTION)
    assert "falcon-secret.md" not in await cited(bare, QUESTION)
    assert await upload(other, "falcon-secret.md", SECRET_TEXT) == "ingested"
    assert await upload(bare, "falcon-secret.md", SECRET_TEXT) == "ingested"
    # The second session deletes the first one's document; the copies of the others stay theirs.
    deleted = await remove(second, "falcon-secret.md")
    assert deleted["status"] == "deleted" and deleted["chunks"] >= 1
    assert "falcon-secret.md" not in await cited(first, QUESTION)
    assert "falcon-secret.md" in await cited(other, QUESTION)
    for client in (first, second, other, bare):
        await client.close()


async def test_public_bases_are_read_by_every_session_and_a_tenants_upload_stays_its_own(stack: Stack) -> None:
    handbook = b"Company handbook: every employee gets thirty days of holiday a year."
    loaded = await ingest(stack.retriever, {"handbook.md": handbook}, base="handbook")  # as sb ingest does
    assert loaded["handbook.md"].status == "ingested"
    edge = stack.url
    clients = [await session(edge, KEYS[name]) for name in ("acme-1", "other", "bare")]
    for client in clients:
        assert "handbook.md" in await cited(client, "How many days of holiday a year?", base="handbook")
    acme, other, bare = clients
    assert (
        await upload(acme, "acme-holiday.md", b"Acme's holiday is ninety days a year.", base="handbook") == "ingested"
    )
    assert "acme-holiday.md" not in await cited(other, "How many days of holiday a year?", base="handbook")
    assert "acme-holiday.md" not in await cited(bare, "How many days of holiday a year?", base="handbook")
    for client in clients:
        await client.close()


async def test_a_grant_names_its_tenant_and_refresh_keeps_it(edge: str) -> None:
    acme, bare = await grant(edge, KEYS["acme-2"]), await grant(edge, KEYS["bare"])
    assert acme["tenant"] == "acme" and bare["tenant"] is None
    async with httpx.AsyncClient(base_url=edge) as http:
        refreshed = await http.post("/v1/sessions/refresh", headers={"Authorization": f"Bearer {acme['token']}"})
        assert refreshed.status_code == 200 and refreshed.json()["tenant"] == "acme"
        assert refreshed.json()["session_id"] == acme["session_id"]
        refused = await http.post("/v1/sessions", headers={"Authorization": "Bearer acme"})
        assert refused.status_code == 401  # a tenant's name is not a key


async def test_a_token_without_a_tenant_still_works(edge: str) -> None:
    """Tokens issued before tenants existed carry no tenant claim: their session owns its things alone."""
    now = int(time.time())
    claims = {"sid": new_id(), "iat": now, "exp": now + 600, "typ": "session"}
    old = jwt.encode(claims, SECRET, algorithm="HS256")
    client = await connect(edge, old)
    assert client.session_id == claims["sid"]
    assert await upload(client, "old-token.md", b"The old token's note: the password hint is marmalade.") == "ingested"
    assert "old-token.md" in await cited(client, "What is the password hint?")
    acme = await session(edge, KEYS["acme-1"])
    assert "old-token.md" not in await cited(acme, "What is the password hint?")
    for each in (client, acme):
        await each.close()


async def test_video_jobs_and_keyframes_belong_to_the_tenant(edge: str, tmp_path: Path) -> None:
    video = make_video(tmp_path / "silent.mp4", 8.0).read_bytes()  # long enough to be cancelled while it runs
    first = await session(edge, KEYS["acme-1"])
    async with httpx.AsyncClient(base_url=edge) as http:

        async def upload_video(cancelled_by: str | None = None) -> tuple[str, dict[str, Any]]:
            """A job of the first session (cancelled at once by a session of ``cancelled_by``'s key); its result."""
            canceller = (await grant(edge, KEYS[cancelled_by]))["token"] if cancelled_by else ""
            accepted = await http.post(
                "/v1/videos",
                params={"filename": "silent.mp4", "transcribe": False},
                content=video,
                headers={"Authorization": f"Bearer {first.token}"},
            )
            assert accepted.status_code == 202, accepted.text
            job_id: str = accepted.json()["job_id"]
            if canceller:
                cancel = await http.delete(f"/v1/videos/{job_id}", headers={"Authorization": f"Bearer {canceller}"})
                assert cancel.status_code == 202
            results = await first.until(lambda e: e["kind"] == "video.result" and e["job_id"] == job_id, timeout=60)
            return job_id, results[-1]

        job_id, result = await upload_video(cancelled_by="other")  # another tenant's cancel is ignored
        assert result["status"] == "done" and result["keyframes"], result

        async def keyframe(key: str) -> int:
            token = (await grant(edge, key))["token"]
            response = await http.get(f"/v1/videos/{job_id}/keyframes/0", headers={"Authorization": f"Bearer {token}"})
            return response.status_code

        assert await keyframe(KEYS["acme-1"]) == await keyframe(KEYS["acme-2"]) == 200
        assert await keyframe(KEYS["other"]) == await keyframe(KEYS["bare"]) == 404
        _, result = await upload_video(cancelled_by="acme-2")  # another session of the tenant may cancel
        assert result["status"] == "cancelled", result
    await first.close()


def test_api_keys_name_tenants_and_bare_keys_stay_valid() -> None:
    keys = ["acme=sk-one", "acme=sk-two", "c2stbGl2ZQ==", "sk-bare", "globex-2=a=b"]
    assert EdgeSettings(edge_api_keys=keys).api_key_tenants() == {
        "sk-one": "acme",
        "sk-two": "acme",
        "c2stbGl2ZQ==": None,  # base64 padding is part of a bare key, not a tenant separator
        "sk-bare": None,
        "a=b": "globex-2",  # the tenant ends at the first "="
    }


@pytest.mark.parametrize(
    "keys",
    [
        '["Acme Corp=sk-live-abcdef123456"]',  # not a tenant name
        '["acme=sk-live-abcdef123456", "other=sk-live-abcdef123456"]',  # one key, two tenants
        '["acme=sk-live-abcdef123456", "acme="]',  # a tenant without its key
        '["' + "t" * 40 + '=sk-live-abcdef123456"]',  # a tenant name too long
    ],
)
def test_a_bad_tenant_key_stops_the_edge_with_one_line_that_never_shows_the_key(keys: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SB_EDGE_API_KEYS": keys},
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SB_EDGE_API_KEYS" in lines[0] and "tenant" in lines[0], result.stderr
    assert "sk-live-abcdef123456" not in result.stderr + result.stdout
    assert "Acme Corp" not in result.stderr  # the text before "=" may be part of a key: never shown either


def test_tokens_carry_the_tenant_and_verify_returns_it() -> None:
    issuer = TokenIssuer(SECRET, 60.0)
    granted = issuer.issue(tenant="acme")
    assert issuer.verify(granted.token).tenant == "acme" and granted.tenant == "acme"
    assert issuer.verify(issuer.issue(granted.session_id).token).tenant is None
    forged = jwt.encode(
        {"sid": new_id(), "exp": int(time.time()) + 60, "typ": "session", "tenant": "Not A Tenant"}, SECRET, "HS256"
    )
    with pytest.raises(AuthError, match="invalid session token"):
        issuer.verify(forged)
