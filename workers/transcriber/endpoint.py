"""End of the user's turn, decided from VAD events, the partial transcript and the audio clock.

Two timers, on purpose: the VAD (:mod:`workers.speech.vad`) says "speech stopped" after a
short silence (a responsive barge-in signal), and this class ends the *turn* only after a
longer silence with no new speech. A pause inside a sentence shows up as a VAD "end" followed
by a "start" before the window is over, and does not split the turn.

Beyond a fixed timer: when the partial transcript clearly continues (it ends with a comma or
dash, a conjunction, a preposition, an article, a possessive or a filler: "... and", "... to
the", "... because", "... um"), the window is extended by ``pause_guard_ms``.

Semantic end of turn (``policy="smart_turn"``): when the VAD says speech stopped, the pipeline
runs an audio end-of-turn model (Smart Turn v3.2, :mod:`workers.speech.smart_turn`) on the
turn's audio so far and feeds its verdict here with :meth:`TurnEndpoint.on_turn_verdict`:

* complete -> the turn ends once the silence reaches ``smart_turn_min_silence_ms`` (instead of
  ``silence_ms``), unless the partial transcript clearly continues ("... and"), in which case
  the text wins and the silence window with its guard applies;
* incomplete -> the wait grows to ``smart_turn_max_wait_ms`` (the cap): the turn still ends then
  if no speech came back (the silence fallback), never later;
* no verdict (policy ``silence``, or the model not run for this pause) -> the silence window.

One verdict per pause: new speech drops it, and the next "speech stopped" asks again
(:attr:`TurnEndpoint.wants_verdict`).

Everything is measured on the session's audio clock (seconds of audio pushed), never on wall
time, so it is deterministic and testable with synthetic event sequences. No model inside: the
verdict is an input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from workers.speech.vad import VadEvent

# Smart Turn policy defaults (docs/speech.md, "Semantic end of turn").
SMART_TURN_MIN_SILENCE_MS = 150
SMART_TURN_MAX_WAIT_MS = 2000


@dataclass(frozen=True)
class EndpointConfig:
    """Turn-end timing.

    Defaults from ``bench/vad_endpoint.py``: 9 piper turns (a natural comma pause; a 450 ms
    pause at a comma; 400/600/700 ms pauses between two sentences; 550/650/700 ms hesitations
    after "because"/"to"/"and"), 1.0-2.0 s between turns, VAD ``min_silence_ms=160``, 20 ms
    frames, the partial transcript 250 ms after each phrase. Latency is from the true end of
    speech (last sample above 0.01 full scale) to the decision; it is ``silence_ms`` + ~100 ms,
    because the VAD's end mark sits 55-120 ms after the true end:

    ======  =====  ================  =====================================================
    window  guard  latency (median)  turns split (of 9)
    ======  =====  ================  =====================================================
    300     off    400 ms            7 (every pause but the natural comma)
    300     600    400 ms            3 (the three pauses between sentences)
    500     off    600 ms            4 (sentence 600/700, hesitation 650/700)
    500     600    600 ms            2 (sentence 600/700)
    700     any    800 ms            0
    900     any    1000 ms           0
    ======  =====  ================  =====================================================

    No turn was merged with the next at any of these windows (a merge needs the window plus
    ~0.1 s to outlast the 1.0 s gap).

    * ``silence_ms=500``: final ~0.6 s (0.57-0.63) after the user stops, in line with OpenAI's
      server VAD (0.5 s) and LiveKit (0.55 s). With the guard it splits nothing *inside* a
      sentence here; what it still splits is a pause of 600 ms or more after a complete
      sentence, which is a defensible end of turn (the next sentence starts a new turn; the
      orchestrator's barge-in handles it). 700 ms removes those splits too but makes every
      turn 200 ms slower; 300 ms splits at every deliberate pause.
    * ``pause_guard_ms=600``: when the partial ends with "and", "to", "because", a comma...
      the window becomes 1.1 s, which bridged every such pause (up to 700 ms) with room to
      spare; without it 650-700 ms hesitations split at 500 ms. Only turns that really stop on
      such a word pay the extra 0.6 s; a complete sentence never does. It needs the partial
      within ~0.5 s of the VAD's end mark.
    * ``max_utterance_s=30``: forces a final on a monologue or endless noise.
    * ``policy``: ``silence`` here (no verdicts asked); the transcriber picks ``smart_turn`` when
      the model is installed. ``smart_turn_min_silence_ms=150``: the VAD's "speech stopped" comes
      ~130 ms (at most 160) after the end it reports, so a complete verdict ends the turn on that
      frame or the next (300 ms only added 150 ms per turn, bench/smart_turn_bench.py).
      ``smart_turn_max_wait_ms=2000``: bridges the 550-700 ms hesitations above with room to
      spare and bounds what a wrong "incomplete" costs (Pipecat's fallback: 3 s).
    """

    silence_ms: int = 500
    max_utterance_s: float = 30.0
    pause_guard_ms: int = 600
    policy: Literal["smart_turn", "silence"] = "silence"
    smart_turn_min_silence_ms: int = SMART_TURN_MIN_SILENCE_MS
    smart_turn_max_wait_ms: int = SMART_TURN_MAX_WAIT_MS

    def __post_init__(self) -> None:
        if min(self.silence_ms, self.pause_guard_ms, self.smart_turn_min_silence_ms, self.smart_turn_max_wait_ms) < 0:
            raise ValueError("silence_ms, pause_guard_ms and the smart_turn_*_ms must be >= 0")
        if self.max_utterance_s <= 0:
            raise ValueError("max_utterance_s must be > 0")
        if self.policy not in ("smart_turn", "silence"):
            raise ValueError(f"policy must be smart_turn or silence, not {self.policy!r}")


@dataclass(frozen=True)
class Decision:
    """The user's turn is over."""

    kind: Literal["final"]
    speech_end_s: float  # end of the turn's speech on the stream clock (the decision time if forced mid-speech)
    forced: bool  # True when max_utterance_s cut the turn
    start_s: float = 0.0  # start of the turn's speech
    decided_at_s: float = 0.0  # the position_s of the poll that decided
    verdict: bool | None = None  # the end-of-turn model's verdict on the last pause (None: not asked)


def _words(block: str) -> frozenset[str]:
    return frozenset(block.split())


# Words after which an English sentence cannot be complete. Words that often end a sentence as
# particles or pronouns ("turn it on", "log in", "call her", "I want this") are left out.
CONTINUATION_WORDS = _words("""
    and but or nor so because cause cos since although though unless until whereas whether than
    if that which who whom whose where while
    to of at for with from into onto via toward towards without between among against
    through during across behind beside besides beyond upon within per including
    the a an my your our their
    um uh er erm uhm hmm mm
""")
_TRAILING_CONTINUATION_PUNCT = (",", ";", ":", "-", "\u2013", "\u2014", "\u2026", "...")
_LAST_WORD = re.compile(r"([^\W\d_]+(?:'[^\W\d_]+)*)\W*$")


def continues(partial: str) -> bool:
    """True when the partial transcript clearly does not end a sentence."""
    text = partial.strip()
    if not text:
        return False
    if text.endswith(_TRAILING_CONTINUATION_PUNCT):
        return True
    if text[-1] in ".?!":
        return False
    match = _LAST_WORD.search(text)
    return match is not None and match.group(1).lower() in CONTINUATION_WORDS


def _us(seconds: float) -> int:
    # Durations compared in whole microseconds: float noise (2.5 - 2.0 < 0.5) must not cost a frame.
    return round(seconds * 1e6)


class TurnEndpoint:
    """Per-session turn end: feed VAD events and partial transcripts, poll with the audio position."""

    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config if config is not None else EndpointConfig()
        self._turn_start: float | None = None  # None: no turn in progress
        self._speaking = False
        self._last_end: float | None = None  # end of the latest speech run of this turn
        self._partial = ""
        self._verdict: bool | None = None  # the model's verdict on the pause since _last_end

    @property
    def in_turn(self) -> bool:
        """True from the first speech of a turn until its final."""
        return self._turn_start is not None

    @property
    def partial(self) -> str:
        """The latest partial transcript of the turn in progress."""
        return self._partial

    def on_vad(self, event: VadEvent) -> None:
        if event.kind == "start":
            if self._turn_start is None:
                self._turn_start = event.at_s
                self._partial = ""  # a stale partial of the previous turn must not guard this one
            self._speaking = True
            self._last_end = None
            self._verdict = None
        else:
            if self._turn_start is None:
                return  # stray end with no turn (e.g. after reset)
            self._speaking = False
            self._last_end = event.at_s
            self._verdict = None

    def on_partial(self, text: str) -> None:
        self._partial = text

    @property
    def wants_verdict(self) -> bool:
        """True when the end-of-turn model should judge the turn's audio now: policy smart_turn,
        speech stopped, and no verdict yet for this pause."""
        return (
            self.config.policy == "smart_turn"
            and self._turn_start is not None
            and not self._speaking
            and self._last_end is not None
            and self._verdict is None
        )

    def on_turn_verdict(self, complete: bool, position_s: float) -> None:
        """The model's verdict on the turn's audio up to ``position_s`` (ignored unless wanted)."""
        if self.wants_verdict and self._last_end is not None and position_s >= self._last_end:
            self._verdict = complete

    def window_s(self) -> float:
        """The silence that ends the turn now: the model's verdict, else the window with its guard."""
        guarded = continues(self._partial)
        ms = self.config.silence_ms + (self.config.pause_guard_ms if guarded else 0)
        if self._verdict is True and not guarded:
            ms = self.config.smart_turn_min_silence_ms
        elif self._verdict is False:
            ms = max(ms, self.config.smart_turn_max_wait_ms)
        return ms / 1000.0

    def poll(self, position_s: float) -> Decision | None:
        """Call after each pushed chunk with the audio position; a Decision ends the turn."""
        start = self._turn_start
        if start is None:
            return None
        if _us(position_s - start) >= _us(self.config.max_utterance_s):
            end = self._last_end if (not self._speaking and self._last_end is not None) else position_s
            decision = Decision("final", end, True, start, position_s)
            self._finish(position_s)
            return decision
        if self._speaking or self._last_end is None:
            return None
        if _us(position_s - self._last_end) >= _us(self.window_s()):
            decision = Decision("final", self._last_end, False, start, position_s, self._verdict)
            self._finish(position_s)
            return decision
        return None

    def _finish(self, position_s: float) -> None:
        self._partial = ""
        self._last_end = None
        self._verdict = None
        # Still speaking after a forced final: the rest of the speech is the next turn.
        self._turn_start = position_s if self._speaking else None

    def reset(self) -> None:
        """Drop the turn in progress (e.g. with VoiceActivity.reset)."""
        self._turn_start = None
        self._speaking = False
        self._last_end = None
        self._partial = ""
        self._verdict = None
