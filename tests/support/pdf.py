"""Minimal PDF files written by hand (PDF 1.4, Helvetica): a text layer, or none at all.

Enough for pypdf to read, so tests need no PDF library: ``text_pdf`` makes one page per list
of lines; ``image_only_pdf`` makes pages that draw shapes but carry no text (like a scan);
``crowded_pdf`` makes a few KB that take a reader seconds (a page of countless tiny text operators).
Run ``python -m tests.support.pdf SRC.txt OUT.pdf`` to build a PDF from a text file whose
pages are separated by form feeds.
"""

from __future__ import annotations

import sys
import textwrap
import zlib
from pathlib import Path


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _document(contents: list[bytes], title: str, deflate: bool = False) -> bytes:
    pages = len(contents)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{4 + 2 * i} 0 R".encode() for i in range(pages))
        + f"] /Count {pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, content in enumerate(contents):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
            f">> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        stream, encoding = (zlib.compress(content, 9), " /Filter /FlateDecode") if deflate else (content, "")
        objects.append(f"<< /Length {len(stream)}{encoding} >>\nstream\n".encode() + stream + b"\nendstream")
    objects.append(f"<< /Title ({_escape(title)}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def text_pdf(pages: list[str], title: str = "") -> bytes:
    """One page per string, wrapped at 90 characters (Latin-1 text)."""
    contents = []
    for page in pages:
        lines = [wrapped for paragraph in page.split("\n") for wrapped in (textwrap.wrap(paragraph, 90) or [""])]
        body = "".join(f"({_escape(line)}) Tj T*\n" for line in lines)
        contents.append(f"BT /F1 10 Tf 14 TL 50 750 Td\n{body}ET".encode("latin-1"))
    return _document(contents, title)


def image_only_pdf(pages: int = 2) -> bytes:
    """Pages with filled rectangles and no text operators: what a scanned document looks like to pypdf."""
    return _document([b"0.2 0.2 0.2 rg 50 50 500 700 re f" for _ in range(pages)], "Scanned")


def crowded_pdf(operators: int) -> bytes:
    """One page drawing one letter ``operators`` times, deflated: 1,000,000 make 10 KB that pypdf
    reads in ~10 s (like the 23 KB PDF of issue 16 that held the retriever for 40 s)."""
    return _document([b"BT /F1 1 Tf " + b"(a) Tj " * operators + b"ET"], "Crowded", deflate=True)


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    text = source.read_text()
    target.write_bytes(text_pdf(text.split("\f"), title=text.splitlines()[0]))
