"""Retrieval through the front doors: the edge's upload, `sb ingest`, and typed questions answered with citations."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as Nats

from contracts.streams import INGEST_FILES
from tests.support.edge_client import Client, connect, running_edge
from tests.support.retrieval import CORPUS, corpus_files, ingest, running_retriever
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.prompt import NO_PASSAGES, SEARCH_DOWN
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker
from workers.runtime.provision import object_store

PREFIX = "rchat"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def edge(nats_url: str, llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    settings = OrchestratorSettings(
        nats_url=nats_url,
        subject_prefix=PREFIX,
        llm_base_url=llm.base_url,
        llm_timeout_s=2.0,
        memory_timeout_s=0.2,
        retrieval_timeout_s=2.0,
    )
    folder = tmp_path_factory.mktemp("retrieval-chat")
    async with (
        running_retriever(nats_url, folder, PREFIX) as bus,
        running_worker(WORKER, settings),
        running_edge(nats_url, subject_prefix=PREFIX, edge_max_upload_bytes=20_000_000) as url,
    ):
        results = await ingest(bus, {p.name: p.read_bytes() for p in corpus_files()})
        assert {r.status for r in results.values()} == {"ingested"}
        yield url


def is_done(event: dict[str, Any]) -> bool:
    return bool(event["kind"] == "reply.done")


async def ask(client: Client, text: str) -> dict[str, Any]:
    await client.chat(text)
    return (await client.until(is_done, timeout=20))[-1]


async def test_a_typed_question_is_answered_with_citations_of_the_right_document(edge: str) -> None:
    client = await connect(edge)
    await client.send(type="settings", agent="knowledge")
    await client.until(lambda e: e["kind"] == "session.settings")
    done = await ask(client, "[echo_system] Who won the race between the hare and the tortoise?")
    assert done["agent"] == "knowledge" and done["retrieval"] == "ok" and done["finish_reason"] == "stop"
    first = done["citations"][0]
    assert (first["source"], first["section"]) == ("aesop-fables.md", "The Hare and the Tortoise")
    assert first["title"] == "Aesop's Fables" and first["score"] >= 0.3
    # The agent got the passages, numbered with their document and section (echoed system prompt).
    assert "[1] (aesop-fables.md, The Hare and the Tortoise)" in done["text"]
    assert "Slow but steady wins the race" in done["text"]
    await client.close()


async def test_the_model_searches_as_a_tool_and_the_reply_cites_what_it_found(edge: str, llm: ScriptedLLM) -> None:
    llm.script(tool_calls=[("search_knowledge", {"query": "Who won the race between the hare and the tortoise?"})])
    llm.script(reply="The tortoise won [1].")
    client = await connect(edge)
    await client.chat("who won that race?")
    events = await client.until(is_done, timeout=20)
    (result,) = [e for e in events if e["kind"] == "tool.result"]
    assert result["status"] == "ok", result
    first = result["result"]["passages"][0]
    assert (first["n"], first["source"], first["section"]) == (1, "aesop-fables.md", "The Hare and the Tortoise")
    done = events[-1]
    assert done["agent"] == "general" and done["retrieval"] == "skipped" and done["text"] == "The tortoise won [1]."
    assert ("aesop-fables.md", "The Hare and the Tortoise") in {(c["source"], c["section"]) for c in done["citations"]}
    await client.close()


async def test_the_router_sends_document_questions_to_the_knowledge_agent(edge: str) -> None:
    client = await connect(edge)
    done = await ask(client, "According to the documents, what needs probable cause?")
    assert done["agent"] == "knowledge" and done["retrieval"] == "ok"
    assert ("bill-of-rights.html", "Amendment IV") in {(c["source"], c["section"]) for c in done["citations"]}
    await client.close()


async def test_a_session_searches_only_the_bases_it_chose(edge: str) -> None:
    client = await connect(edge)
    await client.send(type="settings", agent="knowledge", knowledge_bases=["recipes"])
    await client.until(lambda e: e["kind"] == "session.settings")
    done = await ask(client, "[echo_system] Who won the race between the hare and the tortoise?")
    assert done["retrieval"] == "ok" and done["citations"] == [] and NO_PASSAGES in done["text"]
    await client.close()


async def test_with_the_retriever_down_the_answer_goes_on_and_says_so(nats_url: str, llm: ScriptedLLM) -> None:
    settings = OrchestratorSettings(
        nats_url=nats_url,
        subject_prefix="rdown",
        llm_base_url=llm.base_url,
        memory_timeout_s=0.2,
        retrieval_timeout_s=0.3,
    )
    async with running_worker(WORKER, settings), running_edge(nats_url, subject_prefix="rdown") as url:
        client = await connect(url)
        done = await ask(client, "[echo_system] What does the handbook say about holidays?")
        assert done["agent"] == "knowledge" and done["retrieval"] == "unavailable"
        assert done["finish_reason"] == "stop" and done["citations"] == [] and SEARCH_DOWN in done["text"]
        await client.close()


async def test_upload_needs_a_session_token(edge: str) -> None:
    async with httpx.AsyncClient(base_url=edge) as http:
        anonymous = await http.post("/v1/ingest", params={"filename": "a.txt"}, content=b"hello")
        forged = await http.post(
            "/v1/ingest",
            params={"filename": "a.txt"},
            content=b"hello",
            headers={"Authorization": "Bearer not-a-token"},
        )
    assert anonymous.status_code == forged.status_code == 401, anonymous.text


async def test_upload_becomes_a_job_whose_progress_and_result_reach_the_socket(edge: str) -> None:
    client = await connect(edge)
    pdf = CORPUS / "declaration-of-independence.pdf"
    async with httpx.AsyncClient(base_url=edge, headers={"Authorization": f"Bearer {client.token}"}) as http:
        response = await http.post(
            "/v1/ingest",
            params={"filename": "declaration-copy.pdf", "base": "uploads", "wait": 30},
            content=pdf.read_bytes(),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["result"]["status"] == "ingested" and body["result"]["chunks"] >= 2
        events = await client.until(lambda e: e["kind"] == "ingest.result")
        assert {e["stage"] for e in events if e["kind"] == "job.progress"} >= {"parsing", "embedding", "storing"}
        assert events[-1]["job_id"] == body["job_id"] and events[-1]["status"] == "ingested"
        again = await http.post(
            "/v1/ingest",
            params={"filename": "declaration-copy.pdf", "base": "uploads", "wait": 30},
            content=pdf.read_bytes(),
        )
        assert again.json()["result"]["status"] == "unchanged"  # a duplicate upload changes nothing
        queued = await http.post(
            "/v1/ingest", params={"filename": "note.txt", "base": "uploads"}, content=b"A note about the uploads base."
        )
        assert queued.status_code == 202 and queued.json()["result"] is None  # did not wait
        removed = await http.delete(
            "/v1/ingest", params={"filename": "declaration-copy.pdf", "base": "uploads", "wait": 30}
        )
        assert removed.json()["result"]["status"] == "deleted" and removed.json()["result"]["chunks"] >= 2
    await client.close()


async def test_upload_refuses_empty_and_oversized_bodies(edge: str) -> None:
    client = await connect(edge)
    headers = {"Authorization": f"Bearer {client.token}"}

    sent = 0

    async def hundred_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1_000_000
            yield b"a" * 1_000_000

    async with httpx.AsyncClient(base_url=edge, headers=headers, timeout=60) as http:
        empty = await http.post("/v1/ingest", params={"filename": "empty.txt"}, content=b"")
        assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    # A 100 MB file with its length declared: refused before a byte of the body is read.
    host, port = edge.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /v1/ingest?filename=big.txt HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {client.token}"
        f"\r\nContent-Length: 100000000\r\n\r\n".encode()
        + b"a" * 65_536
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    # Streamed without a length: the edge counts as it reads and stops at the limit.
    async with httpx.AsyncClient(base_url=edge, headers=headers, timeout=60) as http:
        streamed = await http.post("/v1/ingest", params={"filename": "big.txt"}, content=hundred_megabytes())
        assert streamed.status_code == 413 and "limit of 20.0 MB" in streamed.json()["detail"]
    await client.close()


async def test_sb_ingest_loads_a_folder_with_progress_and_reports_failures(
    edge: str, nats_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SB_NATS_URL": nats_url,
        "SB_SUBJECT_PREFIX": PREFIX,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
    }

    async def sb(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ops.cli",
            "ingest",
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

    code, out = await sb(str(CORPUS), "--base", "cli-kb")
    assert code == 0, out
    assert out.count("ingested") == len(corpus_files()) + 1  # the folder's SOURCES.md too
    code, out = await sb(str(CORPUS / "aesop-fables.md"), "--base", "cli-kb")
    assert code == 0 and "unchanged" in out, out
    (tmp_path / "scan.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    code, out = await sb(str(tmp_path / "scan.txt"), "--base", "cli-kb")
    assert code == 1 and "failed" in out and "binary data" in out, out


async def test_a_refused_upload_leaves_nothing_in_the_object_store(edge: str, nc: Nats) -> None:
    """Issue 16, observation 5: a Content-Type over the job's limit was a 500 that kept the bytes; enough of
    them filled the bucket for every session."""
    client = await connect(edge)
    store = await object_store(nc.jetstream(), INGEST_FILES, PREFIX)
    before = (await store.status()).size
    async with httpx.AsyncClient(base_url=edge, headers={"Authorization": f"Bearer {client.token}"}) as http:
        for _ in range(3):
            refused = await http.post(
                "/v1/ingest",
                params={"filename": "scan.bin"},
                content=b"\x00\x01" * 40_000,
                headers={"Content-Type": "application/" + "x" * 150},
            )
            assert refused.status_code == 422 and "content_type" in refused.json()["detail"]
    assert (await store.status()).size == before
    await client.close()


async def test_uploads_per_session_are_limited_and_other_sessions_are_unaffected(nats_url: str) -> None:
    async with running_edge(nats_url, subject_prefix="quota", edge_uploads_per_min=2.0) as url:
        greedy, other = await connect(url), await connect(url)
        async with httpx.AsyncClient(base_url=url) as http:

            async def upload(client: Client) -> httpx.Response:
                return await http.post(
                    "/v1/ingest",
                    params={"filename": "note.txt"},
                    content=b"A short note.",
                    headers={"Authorization": f"Bearer {client.token}"},
                )

            assert [(await upload(greedy)).status_code for _ in range(3)] == [202, 202, 429]
            refused = await upload(greedy)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
            assert "at most 2 a minute" in refused.json()["detail"]
            assert (await upload(other)).status_code == 202
        await greedy.close()
        await other.close()


async def test_stored_bytes_per_owner_are_limited_and_other_owners_are_unaffected(nats_url: str) -> None:
    """No retriever runs here: uploads wait in the object store, counted against their owner's quota."""
    document = b"A long note. " * 25_000  # 325 kB: over the inline size, so it is stored
    quota = int(len(document) * 1.5)
    async with running_edge(
        nats_url, subject_prefix="stored", edge_stored_bytes_per_owner=quota, edge_uploads_per_min=60.0
    ) as url:
        filler, other = await connect(url), await connect(url)
        async with httpx.AsyncClient(base_url=url) as http:

            async def upload(client: Client, name: str) -> httpx.Response:
                return await http.post(
                    "/v1/ingest",
                    params={"filename": name},
                    content=document,
                    headers={"Authorization": f"Bearer {client.token}"},
                )

            assert (await upload(filler, "first.txt")).status_code == 202
            refused = await upload(filler, "second.txt")
            assert refused.status_code == 413
            assert (
                "holds 0.3 MB" in refused.json()["detail"]
                and "SB_EDGE_STORED_BYTES_PER_OWNER" in refused.json()["detail"]
            )
            assert (await upload(other, "first.txt")).status_code == 202
        await filler.close()
        await other.close()
