"""Text out of documents: plain text, Markdown, HTML and PDF, cut into titled sections.

Every refusal is a :class:`DocumentError` whose message tells the user what was wrong
(empty, not text, no text layer, unsupported type, too much text); the job fails with it and
stores nothing. The retriever runs these in a child process (reader.py), bounded in time.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePath

from markdown_it import MarkdownIt
from pypdf import PdfReader
from pypdf.errors import PyPdfError


class DocumentError(ValueError):
    """The document cannot be ingested as it is (a permanent failure: retrying will not help)."""


@dataclass(frozen=True)
class Section:
    heading: str  # "" before the first heading
    text: str


@dataclass(frozen=True)
class Document:
    title: str
    sections: list[Section] = field(default_factory=list)


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n\s*\n\s*\n+")


def decode_text(data: bytes) -> str:
    """UTF-8 text (a BOM is fine); binary data is refused rather than indexed as noise."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"not UTF-8 text (byte {error.start} is invalid): binary data or another encoding"
        ) from None
    if len(_CONTROL.findall(text[:65_536])) > max(8, len(text[:65_536]) // 100):
        raise DocumentError("the content is binary data, not text")
    return text


def _tidy(text: str) -> str:
    return _BLANK_RUNS.sub("\n\n", text.replace("\r\n", "\n")).strip()


def _stem(source: str) -> str:
    return PurePath(source).stem or source


def parse_text(data: bytes, source: str) -> Document:
    return Document(_stem(source), [Section("", _tidy(decode_text(data)))])


def parse_markdown(data: bytes, source: str) -> Document:
    """Sections at every heading (ATX or setext, as CommonMark reads them; headings in code do not count)."""
    text = decode_text(data)
    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").parse(text)
    headings = [
        (tok.map[0], tok.map[1], int(tok.tag[1]), tokens[i + 1].content)
        for i, tok in enumerate(tokens)
        if tok.type == "heading_open" and tok.map
    ]
    title = next((name for _, _, level, name in headings if level == 1), _stem(source))
    sections, heading, start = [], "", 0
    for first, after, _, name in [*headings, (len(lines), len(lines), 0, "")]:
        body = _tidy("\n".join(lines[start:first]))
        if body:
            sections.append(Section(heading, body))
        heading, start = name, after
    return Document(title, sections)


class _HTMLText(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    _HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
    _BLOCKS = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "section",
            "article",
            "blockquote",
            "pre",
            "table",
            "ul",
            "ol",
            "dd",
            "dt",
            "header",
            "footer",
            "main",
            "aside",
            "nav",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[Section] = []
        self._heading = ""
        self._parts: list[str] = []
        self._skipping = 0
        self._in_title = False
        self._heading_parts: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skipping += 1
        elif tag in self._HEADINGS:
            self._flush()
            self._heading_parts = []
        elif tag in self._BLOCKS:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._HEADINGS and self._heading_parts is not None:
            self._heading = " ".join("".join(self._heading_parts).split())
            if tag == "h1" and not self.title:
                self.title = self._heading
            self._heading_parts = None
        elif tag in self._BLOCKS:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = self.title or " ".join(data.split())
        elif self._skipping:
            return
        elif self._heading_parts is not None:
            self._heading_parts.append(data)
        else:
            self._parts.append(data)

    def _flush(self) -> None:
        body = _tidy("\n".join(" ".join(line.split()) for line in "".join(self._parts).split("\n")))
        if body:
            self.sections.append(Section(self._heading, body))
        self._parts = []

    def close(self) -> None:
        super().close()
        self._flush()


def parse_html(data: bytes, source: str) -> Document:
    parser = _HTMLText()
    parser.feed(decode_text(data))
    parser.close()
    return Document(parser.title or _stem(source), parser.sections)


def parse_pdf(data: bytes, source: str) -> Document:
    """One section per page ("page N"); a PDF without a text layer (a scan) is refused: no OCR here."""
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError("the PDF is encrypted")
        pages = [_tidy(page.extract_text() or "") for page in reader.pages]
        title = str(reader.metadata.title or "") if reader.metadata else ""
    except (PyPdfError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, DocumentError):
            raise
        raise DocumentError(f"not a readable PDF ({type(error).__name__}: {str(error)[:200]})") from None
    sections = [Section(f"page {n}", text) for n, text in enumerate(pages, start=1) if text]
    title = title or _stem(source)
    if not sections:
        raise DocumentError(f"the PDF has no text layer ({len(pages)} pages of images?); OCR is not supported")
    return Document(title, sections)


PARSERS: dict[str, Callable[[bytes, str], Document]] = {
    "text/plain": parse_text,
    "text/markdown": parse_markdown,
    "text/x-markdown": parse_markdown,
    "text/html": parse_html,
    "application/xhtml+xml": parse_html,
    "application/pdf": parse_pdf,
}


def media_type(content_type: str) -> str:
    """``text/markdown; charset=utf-8`` -> ``text/markdown``: what decides how a document is read."""
    return content_type.split(";", 1)[0].strip().lower()


def parser_for(content_type: str) -> Callable[[bytes, str], Document]:
    parser = PARSERS.get(media_type(content_type))
    if parser is None:
        supported = ", ".join(sorted({"text/plain", "text/markdown", "text/html", "application/pdf"}))
        raise DocumentError(f"unsupported content type {content_type!r}; supported: {supported}")
    return parser


def check_readable(data: bytes, content_type: str) -> None:
    """What refuses a document before it is read (cheap, no parsing): an unsupported type, no content."""
    parser_for(content_type)
    if not data or data.isspace():
        raise DocumentError("the document is empty")


def extract(data: bytes, content_type: str, source: str, max_chars: int | None = None) -> Document:
    """The document's sections; DocumentError when it has no text, or more than ``max_chars`` of it."""
    check_readable(data, content_type)
    document = parser_for(content_type)(data, source)
    if not any(s.text.strip() for s in document.sections):
        raise DocumentError("the document has no text")
    if max_chars is not None and sum(len(s.text) for s in document.sections) > max_chars:
        raise DocumentError(f"the document has more than {max_chars:,} characters of text")
    return document
