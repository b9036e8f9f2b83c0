"""Facts a user states about themselves, by a few strict patterns (no model, no guessing).

What it catches, one sentence at a time (case-insensitive; questions are skipped):

=====================================  ==================  ================================
statement                              key                 fact
=====================================  ==================  ================================
my name is / my name's / I'm called X  name                Their name is X
I live in / I'm living in X            home                They live in X
I'm from / I am from / I come from X   origin              They are from X
I work as (a/an) X                     job                 They work as X
I work at / I work for X               employer            They work at X
I'm / I am N years old                 age                 They are N years old
my favourite / favorite K is X         favourite_K         Their favourite K is X
I'm / I am allergic to X               allergy_X           They are allergic to X
=====================================  ==================  ================================

A value ends at punctuation or at a joining word (and, but, because, ...) and has at most four
words. Not caught, on purpose: negations ("I'm not from Paris", "my name is not Bob"),
hypotheticals ("if my name were Bob", "imagine I lived in Rome"), other people ("my wife's name
is Ann") and questions. A later statement with the same key replaces the earlier one.
"""

from __future__ import annotations

import re

from .store import Fact

_VALUE = r"(?P<value>[^\s,.;:!?][^,.;:!?]*?)"
_END = r"(?=\s+(?:and|but|because|since|so|with|who|which|where|though|although|now|too)\b|\s*[,.;:!?]|\s*$)"

PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (key, re.compile(rf"\b(?:{lead})\s+{_VALUE}{_END}", re.IGNORECASE), template)
    for key, lead, template in (
        ("name", r"my name is|my name's|i am called|i'm called", "Their name is {value}"),
        ("home", r"i live in|i am living in|i'm living in", "They live in {value}"),
        ("origin", r"i am from|i'm from|i come from", "They are from {value}"),
        ("job", r"i work as(?:\s+(?P<article>an?)(?=\s))?", "They work as {article}{value}"),
        ("employer", r"i work at|i work for", "They work at {value}"),
        ("age", r"i am|i'm", "They are {value} years old"),
        ("favourite", r"my favou?rite (?P<topic>[a-z]+) is", "Their favourite {topic} is {value}"),
        ("allergy", r"i am allergic to|i'm allergic to", "They are allergic to {value}"),
    )
)
_AGE = re.compile(r"^(\d{1,3}) years? old$", re.IGNORECASE)
_HYPOTHETICAL = re.compile(r"\b(?:if|suppose|supposing|imagine|pretend|unless|whether|were)\b", re.IGNORECASE)
_NOT_A_VALUE = frozenset({"not", "no", "never", "a", "an", "the", "sure", "going", "trying", "just"})
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
MAX_VALUE_WORDS = 4
_KEY_UNSAFE = re.compile(r"[^a-z0-9_]+")  # keys are field names in the store: no dots, no dollars


def extract_facts(text: str) -> list[Fact]:
    facts: dict[str, Fact] = {}
    for raw in _SENTENCE.findall(text.replace("\u2019", "'")):
        sentence = raw.strip()
        if not sentence or sentence.endswith("?"):
            continue
        for key, pattern, template in PATTERNS:
            for match in pattern.finditer(sentence):
                if fact := _fact(key, template, match, sentence):
                    facts[fact.key] = fact
    return list(facts.values())


def _fact(key: str, template: str, match: re.Match[str], sentence: str) -> Fact | None:
    if _HYPOTHETICAL.search(sentence[: match.start()]):
        return None
    value = match["value"].strip()
    words = value.split()
    if not words or len(words) > MAX_VALUE_WORDS or words[0].lower() in _NOT_A_VALUE:
        return None
    if key == "age":  # "I'm N years old" shares its lead with every "I'm ..." sentence
        age = _AGE.match(value)
        if not age:
            return None
        value = age.group(1)
    elif _AGE.match(value):
        return None
    groups = match.groupdict()
    topic = (groups.get("topic") or "").lower()
    if key == "favourite":
        key = f"favourite_{topic}"
    elif key == "allergy":
        key = f"allergy_{value.lower()}"
    article = f"{groups['article'].lower()} " if groups.get("article") else ""
    return Fact(_KEY_UNSAFE.sub("_", key), template.format(value=value, topic=topic, article=article))
