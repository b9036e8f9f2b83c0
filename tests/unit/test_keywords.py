"""KeywordTagger: keywords (stop words, ranking, limit) and sentiment (lists, negation, dead zone)."""

from __future__ import annotations

import pytest

from contracts import events as ev
from workers.keywords.core import MAX_KEYWORDS, KeywordTagger, tokenize

tagger = KeywordTagger()


def test_stop_words_are_dropped_and_keywords_are_lower_case() -> None:
    keywords = tagger.tag("The Pricing page of THE website is on the Homepage").keywords
    assert keywords == ["pricing", "page", "website", "homepage"]


def test_ranked_by_frequency_then_first_appearance() -> None:
    keywords = tagger.tag("docs pricing page, page pricing page. invoices docs").keywords
    # page x3, then docs and pricing (x2 each) in first-seen order, then invoices.
    assert keywords == ["page", "docs", "pricing", "invoices"]


def test_at_most_eight_keywords_keeping_the_top_ones() -> None:
    words = [f"topic{letter}" for letter in "abcdefghijkl"]  # 12 distinct words
    text = " ".join(words) + " topick topick topicl"  # k and l become the most frequent
    keywords = tagger.tag(text).keywords
    assert len(keywords) == MAX_KEYWORDS == 8
    assert keywords == ["topick", "topicl", "topica", "topicb", "topicc", "topicd", "topice", "topicf"]


def test_numbers_single_letters_and_over_long_tokens_are_no_keywords() -> None:
    assert tagger.tag(f"x 2024 budget {'a' * 40}").keywords == ["budget"]


@pytest.mark.parametrize("text", ["", "   ", "?!...", "the and of it is", "no not never"])
def test_empty_ish_input_gives_nothing_and_neutral(text: str) -> None:
    assert tagger.tag(text) == ([], "neutral", 0.0)


def test_positive_and_negative_words() -> None:
    assert tagger.tag("I love the new pricing page, it is great") == (
        ["love", "new", "pricing", "page", "great"],
        "positive",
        1.0,
    )
    assert tagger.tag("the checkout is slow and the form is confusing")[1:] == ("negative", -1.0)
    assert tagger.tag("the meeting is on tuesday")[1:] == ("neutral", 0.0)


@pytest.mark.parametrize(
    ("text", "sentiment", "score"),
    [
        ("this is not good", "negative", -1.0),
        ("never bad, honestly", "positive", 1.0),
        ("no problem at all", "positive", 1.0),
        ("it is not very good", "negative", -1.0),  # the negation reaches across "very"
        ("I don't enjoy slow pages", "negative", -1.0),  # n't negates too; "slow" stays negative
        ("I don\u2019t love it", "negative", -1.0),  # typographic apostrophe
    ],
)
def test_negation_flips_the_next_sentiment_word(text: str, sentiment: str, score: float) -> None:
    assert tagger.tag(text)[1:] == (sentiment, score)


def test_negation_flips_one_word_only_and_fades_with_distance() -> None:
    # "not" flips "good" only; "great" is still positive: 1 pos + 1 neg -> 0, neutral.
    assert tagger.tag("not good but great")[1:] == ("neutral", 0.0)
    # Four tokens away, "not" no longer reaches "good".
    assert tagger.tag("not that i think the answer was good")[1:] == ("positive", 1.0)


def test_mixed_turns_fall_in_the_dead_zone_unless_clearly_leaning() -> None:
    three_two = tagger.tag("great nice good but slow and buggy")
    assert three_two.sentiment == "neutral" and three_two.score == pytest.approx(0.2)
    two_one = tagger.tag("great and nice but slow")
    assert two_one.sentiment == "positive" and two_one.score == pytest.approx(1 / 3)
    assert tagger.tag("awful and ugly but fast").sentiment == "negative"


def test_tokens_keep_inner_apostrophes_and_drop_underscores() -> None:
    assert tokenize("Don't stop_words!") == ["don't", "stop", "words"]


@pytest.mark.parametrize(
    "text",
    [
        "I love the new pricing page, it is great",
        "ÉCOLE Straße CAFÉ café " + "word " * 20,
        "https://example.com/some/very/long/path?query=1 not bad",
    ],
)
def test_output_is_always_a_valid_contract_event(text: str) -> None:
    keywords, sentiment, score = tagger.tag(text)
    event = ev.TurnKeywords(
        session_id="sessionKW01", turn_id="t1", producer="test", keywords=keywords, sentiment=sentiment, score=score
    )
    assert event.keywords == keywords and all(k == k.lower() for k in keywords)
