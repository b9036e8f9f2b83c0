"""The retriever's plain classes: extraction, chunking, embeddings, content types, prompt notes."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from contracts.events import DependencyStatus
from tests.support.pdf import crowded_pdf, image_only_pdf, text_pdf
from tests.support.retrieval import CORPUS
from workers.orchestrator.agents import DEFAULT_AGENTS, Agent
from workers.orchestrator.prompt import NO_PASSAGES, SEARCH_DOWN, build_prompt
from workers.retriever.chunker import Chunker
from workers.retriever.embedder import Embedder, load_tokenizer, model_dir
from workers.retriever.extract import Document, DocumentError, Section, extract
from workers.retriever.reader import Reader
from workers.retriever.settings import RetrieverSettings
from workers.retriever.store import where_clause
from workers.runtime.ingest import content_type_for


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(RetrieverSettings().model_cache(), threads=2, batch_size=4)


def test_onnx_vectors_are_those_of_sentence_transformers(embedder: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Slow but steady wins the race.",
        "Congress shall make no law respecting an establishment of religion. " * 30,  # truncated at 256 tokens
        "a",
        "Four score and seven years ago",
    ]
    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    ours = embedder.embed(texts)  # batch size 4: two batches, padded differently
    assert ours.shape == (5, 384) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    alone = embedder.embed([texts[3]])[0]  # padding in a batch changes nothing
    assert np.abs(alone - ours[3]).max() < 1e-5
    assert embedder.embed([]).shape == (0, 384)


def test_chunks_respect_the_token_budget_overlap_and_word_boundaries() -> None:
    tokenizer = load_tokenizer()
    chunker = Chunker(tokenizer, size=40, overlap=8)
    text = (CORPUS / "gettysburg-address.txt").read_text()
    pieces = chunker.split(text)
    assert len(pieces) >= 6
    words = set(text.split())
    for piece in pieces:
        assert chunker.count(piece) <= 40
        assert piece.split()[0] in words and piece.split()[-1] in words  # no word cut in two
        assert piece in text
    for first, second in itertools.pairwise(pieces):
        assert text.index(second) < text.index(first) + len(first)  # neighbours overlap
    # Most windows end at a sentence end or a line break rather than mid-sentence.
    assert sum(p.rstrip()[-1] in ".!?;:-" for p in pieces[:-1]) >= len(pieces[:-1]) // 2
    assert " ".join(text.split()).endswith(" ".join(pieces[-1].split()))  # nothing lost at the end


def test_text_without_spaces_is_cut_hard_not_token_by_token() -> None:
    chunker = Chunker(load_tokenizer(), size=32, overlap=4)
    blob = "ab-" * 400  # no whitespace at all, 800 tokens
    pieces = chunker.split(blob)
    assert 25 <= len(pieces) <= 40 and all(chunker.count(p) <= 32 for p in pieces)
    assert blob.startswith(pieces[0]) and blob.endswith(pieces[-1])


def test_chunks_keep_their_section_and_position() -> None:
    chunker = Chunker(load_tokenizer(), size=32, overlap=4)
    document = Document("t", [Section("", "Short intro."), Section("Part two", "word " * 100)])
    chunks = chunker.chunks(document)
    assert chunks[0].text == "Short intro." and chunks[0].section == ""
    assert {c.section for c in chunks[1:]} == {"Part two"} and len(chunks) >= 4
    assert [c.position for c in chunks] == list(range(len(chunks)))
    with pytest.raises(ValueError, match="overlap"):
        Chunker(load_tokenizer(), size=32, overlap=16)
    with pytest.raises(ValidationError, match="half"):
        RetrieverSettings(retriever_chunk_tokens=64, retriever_chunk_overlap=40)


def test_markdown_sections_follow_commonmark_headings() -> None:
    text = b"Preface line.\n\n# Title\n\nIntro.\n\n```\n# not a heading\n```\n\nSetext\n------\n\nBody."
    document = extract(text, "text/markdown", "notes.md")
    assert document.title == "Title"
    assert [(s.heading, s.text.splitlines()[0]) for s in document.sections] == [
        ("", "Preface line."),
        ("Title", "Intro."),
        ("Setext", "Body."),
    ]
    assert "# not a heading" in document.sections[1].text


def test_html_keeps_text_and_headings_and_drops_scripts() -> None:
    document = extract((CORPUS / "bill-of-rights.html").read_bytes(), "text/html; charset=utf-8", "b.html")
    assert document.title == "The Bill of Rights"
    assert document.sections[4].heading == "Amendment IV"
    assert document.sections[4].text.startswith("The right of the people to be secure")
    assert not any("console.log" in s.text or "font-family" in s.text for s in document.sections)


def test_pdf_pages_become_sections_and_a_scan_is_refused() -> None:
    document = extract(
        text_pdf(["First page text.", "", "Third page (with parentheses)."], title="Doc"), "application/pdf", "d.pdf"
    )
    assert document.title == "Doc"
    assert [(s.heading, s.text) for s in document.sections] == [
        ("page 1", "First page text."),
        ("page 3", "Third page (with parentheses)."),
    ]
    with pytest.raises(DocumentError, match="no text layer"):
        extract(image_only_pdf(), "application/pdf", "scan.pdf")


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b"", "text/plain", "empty"),
        (b"\xff\xfe\x00junk", "text/plain", "not UTF-8"),
        (b"hello", "application/msword", "unsupported content type"),
        (b"<html><script>x()</script></html>", "text/html", "no text"),
    ],
)
def test_bad_input_is_refused_with_a_reason(data: bytes, content_type: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        extract(data, content_type, "f")


def test_text_past_the_character_cap_is_refused() -> None:
    assert extract(b"word " * 20, "text/plain", "f", max_chars=99).sections[0].text.startswith("word")
    with pytest.raises(DocumentError, match=r"^the document has more than 100 characters of text$"):
        extract(b"word " * 30, "text/plain", "f", max_chars=100)
    with pytest.raises(DocumentError, match="more than 1,000 characters"):
        extract(text_pdf(["word " * 150, "word " * 150]), "application/pdf", "f.pdf", max_chars=1000)


async def test_a_document_too_slow_to_read_is_killed_in_time_and_the_loop_never_waits() -> None:
    reader = Reader(timeout_s=1.0, max_chars=1_000_000)
    await reader.start()
    lags: list[float] = []

    async def tick() -> None:  # how late the event loop wakes up while the document is read
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    ticker = asyncio.create_task(tick())
    try:
        started = time.monotonic()
        with pytest.raises(DocumentError, match=r"^the document took longer than 1 s to read$"):
            await reader.read(crowded_pdf(500_000), "application/pdf", "crowded.pdf")  # seconds of pypdf
        assert time.monotonic() - started < 1.0 + 2.0
        assert len(lags) > 20 and max(lags) < 0.5
        # The next document is read at once (by the spare reader, while the killed one respawns) ...
        started = time.monotonic()
        document = await reader.read(text_pdf(["Next page."]), "application/pdf", "next.pdf")
        assert [s.text for s in document.sections] == ["Next page."] and time.monotonic() - started < 1.0
        await asyncio.wait_for(reader.start(), 10.0)  # ... and the killed child is replaced
        assert reader.problems() == []
    finally:
        ticker.cancel()
        reader.shutdown()


def test_content_types_come_from_the_declaration_or_the_name() -> None:
    assert content_type_for("a.md") == "text/markdown"
    assert content_type_for("a.TXT") == "text/plain"
    assert content_type_for("a.htm") == "text/html"
    assert content_type_for(str(Path("x") / "a.pdf")) == "application/pdf"
    assert content_type_for("a.md", "text/plain; charset=utf-8") == "text/plain"
    assert content_type_for("a.pdf", "application/octet-stream") == "application/pdf"
    assert content_type_for("README") == "application/octet-stream"


def test_where_clause_combines_equality_filters() -> None:
    assert where_clause({}) is None
    assert where_clause({"source": "a"}) == {"source": "a"}
    assert where_clause({"source": "a", "position": 2}) == {"$and": [{"position": 2}, {"source": "a"}]}


def test_a_searching_agent_is_told_when_nothing_matched_or_the_search_is_down() -> None:
    knowledge = next(a for a in DEFAULT_AGENTS if a.name == "knowledge")
    general = next(a for a in DEFAULT_AGENTS if a.name == "general")

    def system(agent: Agent, status: DependencyStatus) -> str:
        messages = build_prompt(agent, None, "q", [], None, [], status).messages
        return " ".join(str(m["content"]) for m in messages if m["role"] == "system")

    assert NO_PASSAGES in system(knowledge, "ok") and SEARCH_DOWN not in system(knowledge, "ok")
    assert SEARCH_DOWN in system(knowledge, "unavailable") and SEARCH_DOWN in system(knowledge, "timeout")
    assert NO_PASSAGES not in system(general, "skipped") and SEARCH_DOWN not in system(general, "skipped")
