"""Which tool a turn plainly needs, from its words: the orchestrator then requires that call.

Measured with the evaluation set (bench/eval_assistant.py) on the embedded 1.5B model: offered
``calculate`` and ``convert_units``, it answered every arithmetic and unit question of the set
from its own weights instead (1764 / 42 = "40", 23 squared = "489", 10 km = "16.0 miles"), and
invented the time in a made-up zone instead of asking ``get_time``. Requiring the call for a turn
whose words leave no doubt (OpenAI's ``tool_choice`` naming the tool, on the first tool round
only) turns those into the tool's answer; every other turn keeps ``auto``. A rule that is too eager
costs one tool round, and the tool's error result lets the model answer anyway.

Only shapes that are unambiguous are matched: an operator or arithmetic word between numbers, a
conversion ("convert 212 F to C", "how many miles is 10 km"), a clock question naming a place or
zone, a request to be reminded.

The other way round, :func:`allowed_tools`: a turn with no number in it may not call the number
tools (OpenAI's ``allowed_tools``; the prompt still lists them, so the server's prefix cache holds).
The 1.5B "called" calculate for "how do you say good morning in German?" and for the boiling point
of water, and answered with the nonsense it computed.
"""

from __future__ import annotations

import re

_NUMBER = r"\d+(?:[.,]\d+)?"
_ARITHMETIC_WORDS = (
    r"plus|minus|times|multiplied|divided|percent|per ?cent|squared|cubed|square root|cube root|"
    r"to the power|power of|sum of|product of|modulo|remainder|average of|mean of|factorial"
)
_ARITHMETIC = re.compile(
    rf"{_NUMBER}\s*(?:[-+*/x\u00d7\u00f7^%]|\*\*)\s*{_NUMBER}"  # 12*7, 1764 / 42, 2^10
    rf"|{_NUMBER}\s*%|\b(?:{_ARITHMETIC_WORDS})\b",
    re.IGNORECASE,
)
# A story with several numbers and a question about the total: "3 boxes with 14 apples each ... how many are left?"
_WORD_PROBLEM = re.compile(r"\b(?:how (?:many|much)|in total|altogether|left|remain)\b", re.IGNORECASE)
_CONVERSION = re.compile(
    rf"\bconvert\b.*{_NUMBER}|{_NUMBER}.*\bconvert\b"
    rf"|\bhow many \w+(?: \w+)? (?:is|are|in|make|equals?)\b(?: there in\b)?.*{_NUMBER}"
    rf"|{_NUMBER}\s*(?:°\s*|degrees? )?[a-z]+ (?:in|to|into) (?:°\s*|degrees? )?[a-z]+\s*\??$",
    re.IGNORECASE,
)
_CLOCK_ELSEWHERE = re.compile(
    r"\b(?:time|date|day)\b.*\b(?:time ?zone|in [A-Z][\w/]+|at [A-Z][\w/]+)", re.IGNORECASE | re.DOTALL
)
_REMINDER = re.compile(r"\bremind me\b|\bset (?:a |an )?(?:reminder|timer|alarm)\b", re.IGNORECASE)


NUMBER_TOOLS = frozenset({"calculate", "convert_units"})
_NUMBER_WORDS = re.compile(
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
    r"thousand|million|billion|trillion|half|quarter|third|twice|double|triple|dozen|pi)\b",
    re.IGNORECASE,
)


def allowed_tools(text: str, offered: frozenset[str]) -> frozenset[str]:
    """The tools the model may call for ``text``: all offered, but the number tools when it has no number."""
    if re.search(r"\d", text) or _NUMBER_WORDS.search(text):
        return offered
    return offered - NUMBER_TOOLS


_TIME_WORDS = re.compile(
    r"\b(?:time|date|dates|day|days|today|tonight|tomorrow|yesterday|week|weeks|weekend|weekday|month|"
    r"months|year|years|now|clock|o'clock|hour|hours|minute|minutes|morning|afternoon|evening|night|season|"
    r"when|ago|until|till|since|age|old|birthday|christmas|holiday|deadline|schedule|calendar|late|early|"
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march|april|may|june|july|"
    r"august|september|october|november|december)\b",
    re.IGNORECASE,
)


def mentions_time(text: str) -> bool:
    """True when the turn may need today's date or the time (then the prompt carries them). Measured: the
    date line on every turn made every follow-up turn re-read the previous one (~85 tokens, 4.7 s on 2 cores)."""
    return _TIME_WORDS.search(text) is not None


def required_tool(text: str, offered: frozenset[str]) -> str | None:
    """The tool that ``text`` plainly asks for, if it is among ``offered``; else None (the model decides)."""
    for name, matches in (
        ("set_reminder", _REMINDER.search(text) is not None),
        ("convert_units", _CONVERSION.search(text) is not None),
        ("get_time", _CLOCK_ELSEWHERE.search(text) is not None),
        ("calculate", _asks_arithmetic(text)),
    ):
        if matches and name in offered:
            return name
    return None


def _asks_arithmetic(text: str) -> bool:
    numbers = len(re.findall(_NUMBER, text))
    if numbers == 0:
        return False
    return _ARITHMETIC.search(text) is not None or (numbers >= 2 and _WORD_PROBLEM.search(text) is not None)
