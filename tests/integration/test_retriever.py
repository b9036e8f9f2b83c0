"""The retriever worker on a real NATS server and a real chromadb: jobs, queries, bad input."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from contracts import events as ev
from contracts.envelope import new_id
from contracts.owners import PUBLIC
from contracts.streams import INGEST_FILES
from contracts.subjects import BY_NAME
from tests.contract_tap import DELIBERATELY_INVALID
from tests.support.pdf import crowded_pdf, image_only_pdf
from tests.support.retrieval import SESSION, answers, corpus_files, delete, ingest, query, questions, running_retriever
from workers.retriever.core import owned
from workers.retriever.store import collection_name
from workers.runtime import Bus
from workers.runtime.ingest import submit_ingest, watch_jobs
from workers.runtime.provision import object_store

PREFIX = "rtv"
EXTRACT_TIMEOUT_S = 2.0  # the corpus reads in milliseconds; the crowded PDF in seconds


@pytest.fixture(scope="module")
async def retriever(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bus]:
    folder = tmp_path_factory.mktemp("retriever")
    async with running_retriever(
        nats_url,
        folder,
        PREFIX,
        retriever_max_document_bytes=2_000_000,
        retriever_max_text_chars=1_000_000,
        retriever_extract_timeout_s=EXTRACT_TIMEOUT_S,
    ) as bus:
        results = await ingest(bus, {p.name: p.read_bytes() for p in corpus_files()})
        assert {r.status for r in results.values()} == {"ingested"}, results
        yield bus


async def test_corpus_recall_at_5_is_at_least_0_9(retriever: Bus) -> None:
    asked = questions()
    found = [answers(q, (await query(retriever, q.question, top_k=5, min_score=0.0)).passages) for q in asked]
    recall = sum(found) / len(found)
    missed = [q.question for q, ok in zip(asked, found, strict=True) if not ok]
    assert recall >= 0.9, f"recall@5 = {recall:.2f}; missed: {missed}"


async def test_passages_carry_citations_scores_and_the_floor_holds(retriever: Bus) -> None:
    reply = await query(retriever, "Which amendment forbids cruel and unusual punishments?", top_k=3)
    best = reply.passages[0]
    assert best.citation.source == "bill-of-rights.html" and best.citation.section == "Amendment VIII"
    assert best.citation.title == "The Bill of Rights" and best.score == best.citation.score > 0.5
    assert [p.score for p in reply.passages] == sorted((p.score for p in reply.passages), reverse=True)
    assert all(p.score >= 0.3 for p in reply.passages) and len(reply.passages) <= 3
    # Nothing in the corpus is about baking: the default floor lets nothing through.
    assert (await query(retriever, "How long should sourdough bread proof before baking?")).passages == []
    assert (await query(retriever, "cruel and unusual punishments", min_score=0.99)).passages == []


async def test_metadata_filters_restrict_the_search(retriever: Bus) -> None:
    reply = await query(
        retriever, "all men are created equal", top_k=5, min_score=0.0, filters={"source": "gettysburg-address.txt"}
    )
    assert reply.passages and {p.citation.source for p in reply.passages} == {"gettysburg-address.txt"}
    pages = await query(
        retriever,
        "pledge our Lives, our Fortunes and our sacred Honor",
        min_score=0.0,
        filters={"source": "declaration-of-independence.pdf", "section": "page 2"},
    )
    assert pages.passages and {p.citation.section for p in pages.passages} == {"page 2"}


async def test_reingesting_unchanged_documents_does_nothing(retriever: Bus) -> None:
    before = await query(retriever, "Slow but steady wins the race", top_k=50, min_score=-1.0)
    results = await ingest(retriever, {p.name: p.read_bytes() for p in corpus_files()})
    assert {r.status for r in results.values()} == {"unchanged"} and {r.chunks for r in results.values()} == {0}
    after = await query(retriever, "Slow but steady wins the race", top_k=50, min_score=-1.0)
    assert [p.text for p in after.passages] == [p.text for p in before.passages]


async def test_a_changed_document_replaces_its_chunks_and_delete_removes_them(retriever: Bus) -> None:
    progress: list[ev.JobProgress] = []
    first = await ingest(
        retriever,
        {"harbour.md": b"# Harbour\n\nThe ferry to the island leaves at seven in the morning from pier four."},
        progress=progress,
    )
    assert first["harbour.md"].status == "ingested" and first["harbour.md"].chunks == 1
    assert {"parsing", "embedding", "storing"} <= {p.stage for p in progress}
    second = await ingest(
        retriever,
        {
            "harbour.md": b"# Harbour\n\nThe ferry to the island now leaves at nine "
            b"from pier two.\n\n## Fares\n\nA return ticket costs ten."
        },
    )
    assert second["harbour.md"].status == "ingested" and second["harbour.md"].chunks == 2
    assert second["harbour.md"].document_id == first["harbour.md"].document_id
    texts = [
        p.text
        for p in (
            await query(
                retriever, "when does the ferry leave", top_k=50, min_score=-1.0, filters={"source": "harbour.md"}
            )
        ).passages
    ]
    assert len(texts) == 2 and any("nine" in t for t in texts) and not any("seven" in t for t in texts)
    gone = await delete(retriever, "harbour.md")
    assert (gone.status, gone.chunks) == ("deleted", 2)
    assert (await query(retriever, "ferry", min_score=-1.0, filters={"source": "harbour.md"})).passages == []
    assert (await delete(retriever, "harbour.md")).chunks == 0  # deleting again is harmless


async def test_bases_are_separate_collections(retriever: Bus) -> None:
    results = await ingest(
        retriever, {"lighthouse.txt": b"The lighthouse keeper polishes the great lens daily."}, base="coast"
    )
    assert results["lighthouse.txt"].status == "ingested"
    question = "who polishes the lighthouse lens"
    assert (await query(retriever, question, bases=["default"])).passages == []
    coast = await query(retriever, question, bases=["coast"])
    assert [p.citation.source for p in coast.passages] == ["lighthouse.txt"]
    both = await query(retriever, question, bases=["default", "coast", "no-such-base"])
    assert both.passages[0].citation.source == "lighthouse.txt"


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("empty.txt", b"", "empty"),
        ("blank.md", b"   \n\n  ", "empty"),
        ("junk.txt", bytes(range(256)) * 64, "not UTF-8 text"),
        ("controls.txt", b"\x01\x02\x03\x04" * 400, "binary data"),
        ("scan.pdf", image_only_pdf(), "no text layer"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "not a readable PDF"),
        ("slides.pptx", b"PK\x03\x04 zipped slides", "unsupported content type"),
        ("huge.txt", b"word " * 500_000, "limit is 2.0 MB"),
        ("long.md", b"word " * 250_000, "the document has more than 1,000,000 characters of text"),
    ],
)
async def test_bad_documents_fail_with_a_reason_and_leave_nothing(
    retriever: Bus, nc: Client, name: str, data: bytes, error: str
) -> None:
    result = (await ingest(retriever, {name: data}))[name]
    assert result.status == "failed" and error in result.error, result
    assert (await query(retriever, "anything at all", min_score=-1.0, filters={"source": name})).passages == []
    if len(data) > 256 * 1024 or name.endswith((".pdf", ".pptx")) or name == "junk.txt":
        store = await object_store(nc.jetstream(), INGEST_FILES, PREFIX)  # the upload is cleaned up
        with pytest.raises(NotFoundError):
            await store.get_info(result.job_id)


async def test_bytes_stored_before_are_read_again_under_another_type(retriever: Bus) -> None:
    """Issue 16, observation 10: notes.txt stored as text/plain, then its exact bytes as application/msword,
    were 'unchanged' (the content hash was compared before the type was checked)."""
    session = f"{SESSION}-retyped-{new_id()[:8]}"
    text = b"# Notes\n\nThe boathouse key hangs behind the blue door.\n\n## Later\n\nThe oars are in the shed."

    async def upload(content_type: str) -> ev.IngestResult:
        async with watch_jobs(retriever.nc, session, PREFIX) as watch:
            job = await submit_ingest(retriever, session, "notes.txt", text, content_type)
            return await anext(watch.results({job.job_id}, 30.0))

    async def stored() -> list[str]:
        reply = await query(
            retriever, "boathouse key oars", session=session, top_k=20, min_score=-1.0, filters={"source": "notes.txt"}
        )
        return sorted(p.citation.section for p in reply.passages)

    assert (await upload("text/plain")).status == "ingested"
    assert await stored() == [""]
    for content_type, error in [
        ("application/msword", "unsupported content type 'application/msword'"),
        ("application/pdf", "not a readable PDF"),
    ]:
        result = await upload(content_type)
        assert result.status == "failed" and error in result.error, result
        assert await stored() == [""]  # the stored version stays as it was
    assert (await upload("text/markdown; charset=utf-8")).status == "ingested"  # read again, as Markdown
    assert await stored() == ["Later", "Notes"]  # and only that version is left
    assert (await upload("text/markdown")).status == "unchanged"


async def test_a_document_too_slow_to_read_fails_in_time_while_queries_are_answered(retriever: Bus) -> None:
    session = f"{SESSION}-crowded"
    reading = asyncio.Event()
    async with watch_jobs(retriever.nc, session, PREFIX, lambda _: reading.set()) as watch:
        crowded = await submit_ingest(retriever, session, "crowded.pdf", crowded_pdf(500_000), "application/pdf")
        after = await submit_ingest(retriever, session, "after.txt", b"Read as soon as it can be.", "text/plain")

        async def results() -> dict[str, ev.IngestResult]:
            return {r.job_id: r async for r in watch.results({crowded.job_id, after.job_id}, 30.0)}

        done = asyncio.ensure_future(results())
        await reading.wait()  # its first progress: the crowded PDF is being read
        since = time.monotonic()
        reply = await query(retriever, "Which amendment forbids cruel and unusual punishments?")
        assert reply.passages and not done.done()  # answered while the document was still being read
        result = (await done)[crowded.job_id]
        assert (
            result.status == "failed"
            and result.error == f"the document took longer than {EXTRACT_TIMEOUT_S:g} s to read"
        )
        assert time.monotonic() - since < EXTRACT_TIMEOUT_S + 2.0
        assert (await done)[after.job_id].status == "ingested"  # the other job went on
    assert (await query(retriever, "anything", min_score=-1.0, filters={"source": "crowded.pdf"})).passages == []


async def test_a_slow_document_does_not_hold_another_sessions_upload(retriever: Bus) -> None:
    """Issue 16, observation 9: a hostile PDF held the retriever while other sessions' uploads waited (jobs
    ran one at a time, so a small upload waited up to the whole extraction budget behind it)."""
    hostile, other = f"{SESSION}-hostile-{new_id()[:8]}", f"{SESSION}-other-{new_id()[:8]}"
    reading = asyncio.Event()
    async with (
        watch_jobs(retriever.nc, hostile, PREFIX, lambda _: reading.set()) as slow,
        watch_jobs(retriever.nc, other, PREFIX) as quick,
    ):
        crowded = await submit_ingest(retriever, hostile, "crowded.pdf", crowded_pdf(500_000), "application/pdf")
        failed = asyncio.ensure_future(anext(slow.results({crowded.job_id}, 30.0)))
        await reading.wait()  # the crowded PDF is being read
        since = time.monotonic()
        job = await submit_ingest(retriever, other, "quick.txt", b"The quay opens at dawn.", "text/plain")
        result = await anext(quick.results({job.job_id}, 30.0))
        took = time.monotonic() - since
        assert result.status == "ingested" and not failed.done(), (result, took)
        assert took < EXTRACT_TIMEOUT_S / 2, took
        assert (await failed).status == "failed"


async def test_a_job_whose_upload_is_gone_fails_at_once(retriever: Bus) -> None:
    async with watch_jobs(retriever.nc, SESSION, PREFIX) as watch:
        job = ev.IngestJob(
            session_id=SESSION,
            producer="test",
            job_id="gone-1",
            source="gone.pdf",
            content_type="application/pdf",
            object_name="never-uploaded",
        )
        await retriever.publish(job, durable=True)
        result = await anext(watch.results({job.job_id}, 30.0))
    assert result.status == "failed" and "is gone" in result.error


async def test_queries_that_cannot_run(retriever: Bus, nc: Client) -> None:
    blank = await query(retriever, "   ")
    assert blank.passages == [] and blank.error == "the query is blank"
    letters = await nc.subscribe(BY_NAME["deadletter"].subject(prefix=PREFIX, worker="retriever"))
    empty = json.dumps({"kind": "retrieval.request", "session_id": SESSION, "producer": "test", "query": ""})
    # An empty query breaks the contract: dead-lettered, and the requester hears so at once (an empty
    # reply, which Bus.request reports as a ValueError and the orchestrator as retrieval "error").
    reply = await nc.request(
        BY_NAME["retrieval.query"].subject(prefix=PREFIX),
        empty.encode(),
        timeout=5.0,
        headers={DELIBERATELY_INVALID: "1"},
    )
    assert reply.data == b""
    with pytest.raises(ValueError, match="Invalid JSON"):
        ev.RetrievalReply.model_validate_json(reply.data)
    letter = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=5)).data)
    assert letter.error_type == "ValidationError" and "query" in letter.reason
    assert (await query(retriever, "the fox and the grapes")).passages  # and the worker carries on


async def test_duplicate_uploads_in_one_go_index_one_copy(retriever: Bus) -> None:
    text = b"Tide tables: high water at the harbour mouth is at noon on the first of May."
    session_results = await asyncio.gather(*(ingest(retriever, {"tides.txt": text}) for _ in range(3)))
    statuses = sorted(r["tides.txt"].status for r in session_results)
    assert statuses == ["ingested", "unchanged", "unchanged"]
    found = await query(retriever, "high water", min_score=-1.0, top_k=10, filters={"source": "tides.txt"})
    assert len(found.passages) == 1


async def test_server_mode_through_chroma_run(nats_url: str, tmp_path: Path) -> None:
    import chromadb

    from ops.servers import start_chroma

    server = start_chroma(tmp_path / "chroma-server")
    try:
        async with running_retriever(nats_url, tmp_path, "rtvs", retriever_chroma_url=server.url) as bus:
            gettysburg = next(p for p in corpus_files() if p.name == "gettysburg-address.txt")
            results = await ingest(bus, {gettysburg.name: gettysburg.read_bytes()})
            assert results[gettysburg.name].status == "ingested"
            reply = await query(bus, "government of the people, by the people")
            assert reply.passages[0].citation.source == gettysburg.name
            client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
            public_default = collection_name(owned(PUBLIC, "default"))  # an operator's load: the public base
            assert [c.name for c in client.list_collections()] == [public_default] == ["kb-public-default-minilm-l6"]
            assert client.get_collection(public_default).count() == results[gettysburg.name].chunks
            assert not (tmp_path / "chroma").exists()  # nothing went to an embedded index
            # The index goes away: the job is retried, then fails with the reason and is dead-lettered.
            server.stop()
            letters = await bus.nc.subscribe(BY_NAME["deadletter"].subject(prefix="rtvs", worker="retriever"))
            failed = (await ingest(bus, {"late.txt": b"Written while the index is down."}))["late.txt"]
            assert failed.status == "failed" and failed.error.startswith("internal error after 3 attempts"), failed
            letter = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=10)).data)
            assert letter.deliveries == 3 and letter.original_subject == "rtvs.job.ingest"
    finally:
        server.stop()


async def test_a_session_never_sees_reuses_or_deletes_another_sessions_documents(retriever: Bus) -> None:
    """Issue 16, observation 1: B's knowledge turn cited A's secret; B re-uploading A's bytes was told
    'unchanged'; B's upload under A's file name replaced A's document; B could delete it."""
    alice, bob = f"alice-{new_id()[:12]}", f"bob-{new_id()[:12]}"
    secret = b"Falcon project: the launch code word is periwinkle and the budget is 42 million."
    mine = await ingest(retriever, {"falcon-secret.md": secret}, owner="session", session=alice)
    assert mine["falcon-secret.md"].status == "ingested"

    def cites_secret(reply: ev.RetrievalReply) -> bool:
        return any(p.citation.source == "falcon-secret.md" for p in reply.passages)

    question = "What is the Falcon project's launch code word?"
    assert cites_secret(await query(retriever, question, session=alice, min_score=0.2))
    assert not cites_secret(await query(retriever, question, session=bob, min_score=0.0, top_k=20))
    again = await ingest(retriever, {"falcon-secret.md": secret}, owner="session", session=bob)
    assert again["falcon-secret.md"].status == "ingested"  # never "unchanged": nothing tells B what A holds
    await delete(retriever, "falcon-secret.md", owner="session", session=bob)
    other = await ingest(
        retriever, {"falcon-secret.md": b"Bob's unrelated note about hares."}, owner="session", session=bob
    )
    assert other["falcon-secret.md"].status == "ingested"
    assert cites_secret(await query(retriever, question, session=alice, min_score=0.2))  # A's is untouched
    assert [
        p.citation.source
        for p in (await query(retriever, "hares", session=alice, min_score=0.3)).passages
        if "hares" in p.text
    ] == []


async def test_public_bases_are_read_by_every_session_and_written_only_by_operators(retriever: Bus) -> None:
    handbook = b"Company handbook: every employee gets thirty days of holiday a year."
    await ingest(retriever, {"handbook.md": handbook}, base="handbook", owner="public")
    for session in (f"carol-{new_id()[:12]}", f"dave-{new_id()[:12]}"):
        reply = await query(retriever, "How many days of holiday?", session=session, bases=["handbook"])
        assert [p.citation.source for p in reply.passages][:1] == ["handbook.md"]
    # A session's upload to a base of the same name lands in its own, not in the public one.
    eve, frank = f"eve-{new_id()[:12]}", f"frank-{new_id()[:12]}"
    await ingest(
        retriever, {"eve.md": b"Eve says the holiday is ninety days."}, base="handbook", owner="session", session=eve
    )
    reply = await query(retriever, "holiday days", session=frank, bases=["handbook"], top_k=20, min_score=0.0)
    assert "eve.md" not in {p.citation.source for p in reply.passages}
