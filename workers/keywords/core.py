"""Keywords and sentiment of a text, testable without the bus: plain, deterministic, no model.

Keywords: lower-case word tokens minus stop words, ranked by frequency then by first
appearance, at most :data:`MAX_KEYWORDS`. Sentiment: counts of words from small positive
and negative lists, where "not", "never", "no" (or an ``n't`` word) flips the polarity of
the next sentiment word within :data:`NEGATION_WINDOW` tokens ("not very good" is negative).
``score = (pos - neg) / max(1, pos + neg)``; inside ``±DEAD_ZONE`` the label is neutral.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

from contracts.events import Sentiment

MAX_KEYWORDS = 8  # the contract's limit (TurnKeywords.keywords)
MAX_KEYWORD_LEN = 32  # longer tokens are URLs, hashes or noise, and the contract refuses them
NEGATION_WINDOW = 3  # tokens after a negator that it still reaches
DEAD_ZONE = 0.2  # |score| <= this is "neutral": one stray word in a mixed turn is no opinion

# Words, with inner apostrophes kept so "don't" stays one token; "_" is not a word character here.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

NEGATORS = frozenset({"not", "never", "no"})


def _words(block: str) -> frozenset[str]:
    # Word lists as blocks of text: easy to read and to extend.
    return frozenset(block.split())


STOP_WORDS = (
    _words("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself
nor now of off on once only or other our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to too under until up
us very was we were what when where which while who whom why will with would you your yours yourself
yourselves i'm i've i'd i'll you're you've it's that's there's let's
""")
    | NEGATORS
)

POSITIVE = _words("""
good great excellent amazing awesome love loved loves liked likes nice happy glad pleased fantastic
wonderful perfect best better helpful easy fast clear enjoy enjoyed beautiful brilliant thanks thank
useful impressive smooth recommend
""")

NEGATIVE = _words("""
bad terrible awful horrible hate hated hates dislike disliked poor worse worst slow broken bug buggy
confusing confused hard difficult annoying annoyed angry sad disappointed disappointing ugly useless
expensive wrong fail failed fails problem error crash crashed
""")


class Tags(NamedTuple):
    keywords: list[str]
    sentiment: Sentiment
    score: float


def tokenize(text: str) -> list[str]:
    # Typographic apostrophes (phone keyboards) would otherwise split "don\u2019t" in two.
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def _is_negator(token: str) -> bool:
    return token in NEGATORS or token.endswith("n't")


class KeywordTagger:
    """Tags one text at a time; holds no state between calls, so one instance serves every turn."""

    def tag(self, text: str) -> Tags:
        tokens = tokenize(text)
        return Tags(self.keywords(tokens), *self.sentiment(tokens))

    def keywords(self, tokens: list[str]) -> list[str]:
        # Counter keeps insertion order, and sorted() is stable: equal counts stay in first-seen order.
        counts = Counter(t for t in tokens if _is_keyword(t))
        ranked = sorted(counts, key=lambda token: -counts[token])
        return ranked[:MAX_KEYWORDS]

    def sentiment(self, tokens: list[str]) -> tuple[Sentiment, float]:
        positive = negative = 0
        negated_until = -1  # index of the last token a negator still reaches
        for i, token in enumerate(tokens):
            if _is_negator(token):
                negated_until = i + NEGATION_WINDOW
                continue
            polarity = 1 if token in POSITIVE else -1 if token in NEGATIVE else 0
            if not polarity:
                continue
            if i <= negated_until:
                polarity = -polarity
                negated_until = -1  # a negator flips one sentiment word, not the rest of the sentence
            if polarity > 0:
                positive += 1
            else:
                negative += 1
        score = (positive - negative) / max(1, positive + negative)
        label: Sentiment = "positive" if score > DEAD_ZONE else "negative" if score < -DEAD_ZONE else "neutral"
        return label, score


def _is_keyword(token: str) -> bool:
    # Single characters and bare numbers carry no topic; over-long tokens break the contract.
    return (
        token not in STOP_WORDS and not _is_negator(token) and 1 < len(token) <= MAX_KEYWORD_LEN and not token.isdigit()
    )
