"""Token-aware chunking with overlap, counted in the embedding model's own tokens.

Each section is cut into windows of at most ``size`` tokens; a window ends at the last
sentence end (or line break) in its second half when there is one, else at a whitespace boundary,
and the next window starts ``overlap`` tokens before that end (also at a word start). So no
chunk is ever truncated by the model and no word is split between chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import Tokenizer

from .extract import Document

_SENTENCE_END = frozenset(".!?;:")


@dataclass(frozen=True)
class Chunk:
    text: str
    section: str
    position: int  # index within the document


class Chunker:
    def __init__(self, tokenizer: Tokenizer, size: int, overlap: int) -> None:
        if not 0 <= overlap < size // 2:
            raise ValueError(f"overlap ({overlap}) must be below half the chunk size ({size})")
        self._tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def chunks(self, document: Document) -> list[Chunk]:
        out: list[Chunk] = []
        for section in document.sections:
            for text in self.split(section.text):
                out.append(Chunk(text, section.heading, len(out)))
        return out

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def split(self, text: str) -> list[str]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        offsets = encoding.offsets
        n = len(offsets)
        if n <= self.size:
            return [text.strip()] if text.strip() else []

        def word_start(i: int) -> bool:  # whitespace before the token: "God," stays one piece
            return i <= 0 or i >= n or offsets[i][0] > offsets[i - 1][1]

        pieces: list[str] = []
        start = 0
        while start < n:
            end = min(start + self.size, n)
            if end < n:
                end = self._break(text, offsets, start, end, word_start)
            pieces.append(text[offsets[start][0] : offsets[end - 1][1]].strip())
            if end >= n:
                break
            following = max(end - self.overlap, start + 1)
            while following < end and not word_start(following):
                following += 1
            start = following
        return [p for p in pieces if p]

    def _break(
        self, text: str, offsets: list[tuple[int, int]], start: int, end: int, word_start: Callable[[int], bool]
    ) -> int:
        """Where the window ``[start, end)`` should really end: a sentence end, else a word boundary."""
        for j in range(end, start + self.size // 2, -1):
            before = text[offsets[j - 1][0] : offsets[j - 1][1]]
            gap = text[offsets[j - 1][1] : offsets[j][0]]
            if (before and before[-1] in _SENTENCE_END and gap) or "\n" in gap:
                return j
        j = end
        while j > start + self.size // 2 and not word_start(j):
            j -= 1
        return j if word_start(j) else end  # one endless "word" (a URL, base64): cut it hard
