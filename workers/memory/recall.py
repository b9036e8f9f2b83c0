"""Recall: what the session itself said before that matches a query (the ``recall_memory`` tool).

Scoped to the asking session alone, like everything memory keeps (contracts/owners.py: the
conversation always stays with its session, tenant or not): the store is read by the request's
``session_id`` and nothing else, so no other session's turns (of the same tenant or another) can
ever come back. The session's newest ``scan_turns`` turns are ranked by the share of the query's
words they contain (a word matches its plural and longer forms: ``dog`` finds ``dogs``), the
better and then the more recent first; the turn being answered is left out (it is the question).
Matching facts (what the user stated about themselves) come along. Texts are cut around the first
match so the result stays small for the model.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts import events as ev
from contracts.limits import QUERY_CHARS
from contracts.tools import RECALL_MAX_RESULTS

from .store import SessionMemory, Turn

DEFAULT_RESULTS = 5
SCAN_TURNS = 1_000  # the newest turns a recall looks through
MAX_TERMS = 32
SNIPPET_CHARS = 300
_WORD = re.compile(r"\w+")
# Words that say nothing about what to find (English; other languages' words simply all count).
_STOP = """a about after again all also am an and any are as at be been before being but by can could
    did do does doing for from had has have having he her here him his how i if in into is it its
    just me mention mentioned my myself no not of on or our said say says she so some tell than that
    the their them then there these they this those to told too us was we were what when where which
    who why will with would you your earlier remember recall talked talk"""
STOPWORDS = frozenset(_STOP.split())


class RecallError(ValueError):
    """The arguments cannot be used; the message says why, for the model."""


class RecallStore(Protocol):
    """What recall needs of the store (store.MemoryStore); both read by session id only."""

    async def recent_turns(self, session_id: str, limit: int, before: int | None = None) -> list[Turn]: ...

    async def session(self, session_id: str, turns: int) -> SessionMemory: ...


def terms(text: str) -> list[str]:
    """The query's words that can be looked for: lower case, no stop words, each once, at most MAX_TERMS."""
    found = dict.fromkeys(w for w in _WORD.findall(text.casefold()) if len(w) > 1 and w not in STOPWORDS)
    return list(found)[:MAX_TERMS]


def _matches(term: str, word: str) -> bool:
    if word == term:
        return True
    if len(term) >= 3 and word.startswith(term):  # dog -> dogs, doggy; paris -> parisian
        return True
    return len(word) >= 3 and term.startswith(word) and len(term) - len(word) <= 2  # dogs -> dog


def score(query_terms: list[str], text: str) -> float:
    """The share of the query's terms the text contains (0 to 1)."""
    if not query_terms:
        return 0.0
    words = set(_WORD.findall(text.casefold()))
    found = sum(1 for term in query_terms if term in words or any(_matches(term, w) for w in words))
    return found / len(query_terms)


def snippet(text: str, query_terms: list[str], chars: int = SNIPPET_CHARS) -> str:
    """The text, or a window of it around the first word that matches, marked with … where cut."""
    if len(text) <= chars:
        return text
    lowered = text.casefold()
    start = 0
    for match in _WORD.finditer(lowered):
        if any(_matches(term, match.group()) for term in query_terms):
            start = max(0, match.start() - chars // 3)
            break
    end = min(len(text), start + chars)
    start = max(0, end - chars)
    return ("…" if start else "") + text[start:end].strip() + ("…" if end < len(text) else "")


def _zone(name: str | None) -> dt.tzinfo:
    try:
        return ZoneInfo(name) if name else dt.UTC
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def arguments(raw: dict[str, Any]) -> tuple[str, int]:
    """The query and the most results to return; RecallError when they cannot be used."""
    query, limit = raw.get("query"), raw.get("limit", DEFAULT_RESULTS)
    if not isinstance(query, str) or not query.strip():
        raise RecallError("query must be a non-empty string: what to look for in the conversation")
    if len(query) > QUERY_CHARS:
        raise RecallError(f"query is longer than {QUERY_CHARS} characters")
    if limit is None:
        limit = DEFAULT_RESULTS
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= RECALL_MAX_RESULTS:
        raise RecallError(f"limit must be a whole number from 1 to {RECALL_MAX_RESULTS}")
    return query.strip(), limit


class Recall:
    def __init__(self, store: RecallStore, scan_turns: int = SCAN_TURNS) -> None:
        self.store = store
        self.scan_turns = scan_turns

    async def recall(self, call: ev.ToolRequest) -> dict[str, Any]:
        """The result of a ``recall_memory`` call (contracts/tools.py), from the caller's session only."""
        query, limit = arguments(call.arguments)
        wanted = terms(query)
        if not wanted:
            raise RecallError("the query has no words to look for; name what to find (e.g. 'sister's name')")
        session = call.session_id
        turns = await self.store.recent_turns(session, self.scan_turns)  # newest first
        ranked = sorted(
            (
                (s, -turn.position, turn)
                for turn in turns
                if turn.turn_id != call.turn_id and (s := score(wanted, turn.text)) > 0
            ),
            key=lambda item: (-item[0], item[1]),
        )[:limit]
        zone = _zone(call.time_zone)
        matches = [
            {
                "role": turn.role,
                "text": snippet(turn.text, wanted),
                "at": dt.datetime.fromtimestamp(turn.at, zone).isoformat(timespec="seconds"),
                "score": round(s, 3),
            }
            for s, _, turn in ranked
        ]
        material = await self.store.session(session, 0)
        facts = [f.text for f in material.facts if score(wanted, f.text) > 0][:limit]
        if matches or facts:
            text = f"{len(matches)} earlier turn(s) and {len(facts)} fact(s) mention {', '.join(wanted[:8])}"
        else:
            text = f"Nothing earlier in this conversation mentions {', '.join(wanted[:8])}."
        return {"matches": matches, "facts": facts, "text": text}
