"""From streamed reply text to speakable units, testable without the bus.

:class:`Chunker` cuts text as it arrives: at sentence ends (``.!?`` and the like followed by
space, or a line break), and the FIRST unit of a turn earlier, at a clause mark (``,;:``) or
after ``first_words`` words, so that speech can start while the LLM is still writing. A unit
never grows past ``max_chars``: a long sentence is cut at a clause mark or a space. Fenced code
blocks (between lines of ```) are not read aloud.

:func:`speakable` turns one unit into text a voice can say: URLs become their host ("link to
example dot com"), markdown marks, emoji and other symbols go, whitespace is collapsed. A unit
with no letter or digit left is not spoken at all.
"""

from __future__ import annotations

import re
import unicodedata

_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"')\]\u201d\u2019]*(?=\s)|\n")
_CLAUSE_END = re.compile(r"[,;:\u2013\u2014](?=\s)")
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|e\.g|i\.e|approx|No)\.$", re.IGNORECASE)
_FENCE = "```"
_WORD = re.compile(r"\S+(?=\s)")
_URL = re.compile(r"\b(?:https?://|www\.)([^\s/?#<>\"')\]]+)[^\s<>\"]*", re.IGNORECASE)
_MARKUP = re.compile(r"[*_`#~|<>{}\[\]\\^]+")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_MARK = re.compile(r"\s+([.,!?;:])")
# Letters, marks, numbers, punctuation and spaces are spoken; symbols (emoji, arrows, math) are not.
_KEEP = ("L", "M", "N", "P", "Z")
_VARIATION = 0xFE00  # variation selectors 1-16 (emoji presentation) are marks, but say nothing


class Chunker:
    """One turn's text in (``feed``), speakable units out; ``flush`` returns what is left at the end."""

    def __init__(self, first_words: int = 6, max_chars: int = 300) -> None:
        self.first_words = first_words
        self.max_chars = max_chars
        self._buffer = ""
        self._first = True
        self._in_code = False

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        units: list[str] = []
        while (unit := self._next_unit()) is not None:
            if unit.strip():
                units.append(unit.strip())
        return units

    def flush(self) -> list[str]:
        rest = "" if self._in_code else self._buffer.strip()
        self._buffer, self._in_code, self._first = "", False, True
        return [rest] if rest else []

    # ------------------------------------------------------------------ cutting

    def _next_unit(self) -> str | None:
        if self._skip_code():
            return None
        fence = self._buffer.find(_FENCE)
        text = self._buffer if fence < 0 else self._buffer[:fence]
        cut = self._cut(text, final=fence >= 0)
        if cut is None:
            return None
        self._buffer = self._buffer[cut:]
        if fence >= 0 and cut == len(text):
            self._buffer = self._buffer[len(_FENCE) :]
            self._in_code = True
        self._first = False
        return text[:cut]

    def _skip_code(self) -> bool:
        """Drop a fenced block's content; True while the closing fence has not arrived yet."""
        if not self._in_code:
            return False
        end = self._buffer.find(_FENCE)
        if end < 0:
            # Keep only a possible partial fence at the end; the rest is code.
            self._buffer = self._buffer[-(len(_FENCE) - 1) :]
            return True
        self._buffer = self._buffer[end + len(_FENCE) :]
        self._in_code = False
        return False

    def _cut(self, text: str, final: bool) -> int | None:
        """Where the next unit ends in ``text``; None to wait for more. ``final``: a fence follows."""
        ends = [m.end() for m in _SENTENCE_END.finditer(text) if not _ABBREVIATION.search(text[: m.end()])]
        if self._first:
            # The earliest of: a sentence end, a clause mark after two words, the first_words-th word.
            ends += [m.end() for m in _CLAUSE_END.finditer(text) if len(text[: m.end()].split()) >= 2][:1]
            ends += [m.end() for m in _WORD.finditer(text)][self.first_words - 1 : self.first_words]
        if ends:
            return min(ends)
        if len(text) > self.max_chars:
            window = text[: self.max_chars]
            clauses = list(_CLAUSE_END.finditer(window))
            if clauses:
                return clauses[-1].end()
            space = window.rfind(" ")
            return space if space > 0 else self.max_chars
        return len(text) if final else None


def speakable(unit: str, scripts: frozenset[str] | None = None) -> str:
    """The unit as a voice should read it; empty when nothing in it can be pronounced.

    ``scripts``: the writing systems the voice reads (Unicode script names, e.g. ``LATIN``); letters
    of any other are dropped. An English voice spells them out letter by letter ("Arabic letter
    alef ..."): twenty times the phonemes, minutes of speech nobody asked for. (The memory of one
    piper call is bounded apart from this: providers/piper_tts.py, MAX_PHONEMES.)"""
    text = _URL.sub(lambda m: " link to " + m.group(1).removeprefix("www.").replace(".", " dot ") + " ", unit)
    text = _MARKUP.sub(" ", text)
    text = "".join(
        (c if scripts is None or _readable(c, scripts) else " ")
        for c in unicodedata.normalize("NFKC", text)
        if unicodedata.category(c)[0] in _KEEP and not _VARIATION <= ord(c) <= _VARIATION + 15
    )
    text = _SPACE_BEFORE_MARK.sub(r"\1", _SPACES.sub(" ", text)).strip()
    return text if any(c.isalnum() for c in text) else ""


def _readable(char: str, scripts: frozenset[str]) -> bool:
    """Letters and their marks of the given scripts; everything that is no letter (digits, punctuation)."""
    if unicodedata.category(char)[0] not in ("L", "M"):
        return True
    script = unicodedata.name(char, "").split(" ", 1)[0]
    return script in scripts or script == "COMBINING"


def has_letters(unit: str) -> bool:
    return any(unicodedata.category(c)[0] == "L" for c in unit)
