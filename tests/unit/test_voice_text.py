"""What the voice reads aloud and where it cuts: workers/voice/text.py."""

from __future__ import annotations

import pytest

from workers.voice.text import Chunker, speakable


def stream(text: str, chunker: Chunker | None = None, piece: int = 3) -> list[str]:
    """Feed ``text`` in small pieces, as an LLM streams it, then flush."""
    chunker = chunker or Chunker()
    units: list[str] = []
    for i in range(0, len(text), piece):
        units += chunker.feed(text[i : i + piece])
    return units + chunker.flush()


def test_sentences_are_cut_at_their_end_whatever_the_pieces() -> None:
    text = "Hello there. How are you today? I am fine! Thanks."
    expected = ["Hello there.", "How are you today?", "I am fine!", "Thanks."]
    assert stream(text, piece=1) == stream(text, piece=7) == stream(text, piece=len(text)) == expected


def test_the_first_unit_is_short_so_speech_starts_early() -> None:
    assert stream("one two three four five six seven eight nine ten eleven twelve. And more.") == [
        "one two three four five six",
        "seven eight nine ten eleven twelve.",
        "And more.",
    ]
    assert stream("Well, that depends on what you mean by it. Yes.")[0] == "Well, that depends on what you"
    assert stream("Sure thing, I can help. Here goes, one step at a time.") == [
        "Sure thing,",
        "I can help.",
        "Here goes, one step at a time.",
    ]


def test_a_unit_is_not_cut_before_its_sentence_is_known_to_end() -> None:
    chunker = Chunker(first_words=100)
    assert chunker.feed("It costs 3.") == []  # "3." may be "3.14"
    assert chunker.feed("14 dollars. Next") == ["It costs 3.14 dollars."]
    assert chunker.flush() == ["Next"]


def test_abbreviations_do_not_end_sentences() -> None:
    assert stream("Ask Dr. Smith, e.g. by mail. Or call.") == ["Ask Dr. Smith,", "e.g. by mail.", "Or call."]


def test_long_sentences_are_cut_at_a_clause_or_a_space() -> None:
    clauses = ", ".join(f"clause number {i}" for i in range(40)) + "."
    units = stream(clauses, Chunker(first_words=100, max_chars=120))
    assert all(len(u) <= 120 for u in units) and len(units) > 4
    assert all(u.endswith((",", ".")) for u in units)
    assert " ".join(units) == clauses
    words = stream("word " * 100, Chunker(first_words=100, max_chars=50))
    assert all(len(u) <= 50 for u in words) and " ".join(words).split() == ["word"] * 100
    assert stream("x" * 130, Chunker(first_words=100, max_chars=50)) == ["x" * 50, "x" * 50, "x" * 30]


def test_fenced_code_is_not_read() -> None:
    text = "Here is how:\n```python\nprint('a. b. c.')\nx = 1\n```\nThat prints it. Done."
    for piece in (1, 4, len(text)):
        assert stream(text, piece=piece) == ["Here is how:", "That prints it.", "Done."], piece
    assert stream("Unclosed:\n```\ncode. more code.") == ["Unclosed:"]


def test_line_breaks_end_units_and_flush_resets_the_turn() -> None:
    chunker = Chunker()
    assert chunker.feed("- first item\n- second item\n") == ["- first item", "- second item"]
    assert chunker.flush() == []
    assert chunker.feed("one two three four five six seven ") == ["one two three four five six"]


@pytest.mark.parametrize(
    ("unit", "said"),
    [
        ("See https://docs.python.org/3/library/re.html for more.", "See link to docs dot python dot org for more."),
        ("Visit www.example.com!", "Visit link to example dot com!"),
        ("This is **bold**, `code` and _stress_.", "This is bold, code and stress."),
        ("## A heading", "A heading"),
        ("Great job \U0001f389\U0001f44d!", "Great job!"),
        ("I \u2764\ufe0f this \u2192 that", "I this that"),
        ("Caf\u00e9 na\u00efve \u00fcber", "Caf\u00e9 na\u00efve \u00fcber"),
        ("\U0001f600\U0001f600", ""),
        ("```", ""),
        ("   ", ""),
        ("--- *** ---", ""),
    ],
)
def test_speakable_text(unit: str, said: str) -> None:
    assert speakable(unit) == said


@pytest.mark.parametrize(
    ("text", "latin"),
    [
        ("مرحبا بكم", ""),
        ("שלום עולם", ""),
        ("你好\uff0c世界", ""),
        ("Hello مرحبا world", "Hello world"),
        ("Zoë's naïve café costs 3 € 😀", "Zoë's naïve café costs 3"),
        ("Ελληνικά and Русский", "and"),
    ],
)
def test_a_voice_gets_only_letters_of_the_scripts_it_reads(text: str, latin: str) -> None:
    assert speakable(text, frozenset({"LATIN"})) == latin
    assert speakable(text)  # a voice that reads any script: nothing is dropped
