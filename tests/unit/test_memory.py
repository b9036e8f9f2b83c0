"""Memory's bus-free logic: fact patterns, the token budget, the context cache."""

from __future__ import annotations

import pytest

from workers.memory.core import ContextCache, assemble, estimate_tokens
from workers.memory.facts import extract_facts
from workers.memory.store import Fact, SessionMemory, Summary, Turn


@pytest.mark.parametrize(("text", "facts"), [
    ("Hi! My name is Alice and I live in Paris.", ["Their name is Alice", "They live in Paris"]),
    ("I'm from New Zealand, I work as a nurse.", ["They are from New Zealand", "They work as a nurse"]),
    ("I\u2019m 34 years old", ["They are 34 years old"]),
    ("my favourite colour is blue", ["Their favourite colour is blue"]),
    ("I'm allergic to peanuts and I work at Acme Corp", ["They are allergic to peanuts", "They work at Acme Corp"]),
    ("I'm not from Paris", []),
    ("my name is not Bob", []),
    ("If my name is Bob, then what?", []),
    ("Imagine I live in Rome.", []),
    ("what is my name?", []),
    ("my wife's name is Ann", []),
    ("I'm tired and I'm going home", []),
    ("I live in a small flat in the centre of Berlin with my cat", []),  # too long to be sure of the place
])
def test_facts_are_caught_only_when_stated_plainly(text: str, facts: list[str]) -> None:
    assert sorted(f.text for f in extract_facts(text)) == sorted(facts)


def test_fact_keys_are_safe_field_names_and_a_later_statement_wins() -> None:
    assert [f.key for f in extract_facts("I'm allergic to tree nuts$.")] == ["allergy_tree_nuts_"]
    assert [f.text for f in extract_facts("My name is Al. Actually my name is Alan.")] == ["Their name is Alan"]


def turn(n: int, text: str, role: str = "user") -> Turn:
    return Turn("user" if role == "user" else "assistant", text, f"t{n}", float(n), n)


def test_assemble_keeps_the_newest_turns_that_fit_oldest_first() -> None:
    turns = [turn(4, "d" * 40, "assistant"), turn(3, "c" * 40), turn(2, "b" * 400), turn(1, "a")]  # newest first
    memory = SessionMemory(turns, Summary("s" * 20, 0), [Fact("name", "Their name is Al")])
    fixed = estimate_tokens("s" * 20) + estimate_tokens("Their name is Al")
    chosen, tokens = assemble(memory, max_tokens=fixed + 2 * (10 + 4), exclude_turn_id=None)
    assert [t.turn_id for t in chosen] == ["t3", "t4"] and tokens == fixed + 28
    chosen, _ = assemble(memory, max_tokens=10_000, exclude_turn_id="t3")
    assert [t.turn_id for t in chosen] == ["t1", "t2", "t4"]


def test_cache_is_lru_bounded_and_a_racing_invalidation_keeps_a_load_out() -> None:
    cache = ContextCache(max_sessions=2)
    empty = SessionMemory([], None, [])
    for session in ("a", "b", "c"):
        cache.put(session, empty)
    assert cache.get("a") is None and cache.get("b") is empty and cache.get("c") is empty
    with cache.loading("b"):
        cache.invalidate("b")  # a write lands while "b" is being read from the store
        cache.put("b", empty)  # that read may predate the write: not cached
    assert cache.get("b") is None
    with cache.loading("b"):
        cache.put("b", empty)
    assert cache.get("b") is empty
