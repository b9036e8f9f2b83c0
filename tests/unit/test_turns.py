"""The turn lifecycle rules shared by the edge, the transcriber, the voice worker and the orchestrator, tested once."""

from __future__ import annotations

from workers.runtime.turns import SessionTable, TurnLedger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_typed_reply_is_active_while_generated_and_not_after() -> None:
    ledger = TurnLedger()
    ledger.user_turn("t1")
    assert ledger.active() == "t1"
    ledger.reply_done("t1", "stop")
    assert ledger.active() is None  # no audio: nothing plays after the text


def test_a_spoken_reply_stays_active_until_its_audio_is_done_or_the_grace_ends() -> None:
    clock = Clock()
    ledger = TurnLedger(audio_out=True, playback_grace_s=5.0, clock=clock)
    ledger.user_turn("t1")
    ledger.reply_done("t1", "stop")
    assert (ledger.generating, ledger.speaking, ledger.active()) == (None, "t1", "t1")
    ledger.audio_done("t1")
    assert ledger.active() is None
    ledger.user_turn("t2")
    ledger.reply_done("t2", "length")
    clock.now = 5.1  # audio.done never came (a dead voice worker): the turn is not spoken forever
    assert ledger.active() is None


def test_audio_frames_keep_the_speaking_turn_alive() -> None:
    clock = Clock()
    ledger = TurnLedger(audio_out=True, playback_grace_s=1.0, clock=clock)
    ledger.speaking_now("t1")
    clock.now = 0.9
    ledger.speaking_now("t1")
    clock.now = 1.5
    assert ledger.speaking == "t1"


def test_a_cancelled_or_superseded_reply_is_not_spoken() -> None:
    ledger = TurnLedger(audio_out=True)
    for finish in ("cancelled", "superseded", "error"):
        ledger.user_turn("t")
        ledger.reply_done("t", finish)
        assert ledger.active() is None, finish


def test_an_interrupt_without_a_turn_takes_what_is_generated_and_what_still_plays() -> None:
    ledger = TurnLedger(audio_out=True)
    ledger.user_turn("t1")
    ledger.reply_done("t1", "stop")  # t1 still plays
    ledger.user_turn("t2")  # t2 is generated
    assert ledger.interrupt() == ["t2", "t1"]
    assert ledger.active() is None and ledger.interrupted("t1") and ledger.interrupted("t2")
    assert ledger.interrupt() == []


def test_late_output_of_an_interrupted_turn_does_not_revive_it() -> None:
    ledger = TurnLedger(audio_out=True)
    ledger.user_turn("t1")
    assert ledger.interrupt("t1") == ["t1"]
    ledger.replying("t1")
    ledger.speaking_now("t1")
    ledger.reply_done("t1", "stop")
    assert ledger.active() is None
    assert not ledger.interrupted("t2") and not ledger.interrupted(None)


def test_a_turn_whose_audio_ended_is_over_and_does_not_speak_again() -> None:
    ledger = TurnLedger(audio_out=True)
    ledger.speaking_now("t1")
    assert not ledger.over("t1")
    ledger.audio_done("t1")
    assert ledger.over("t1") and not ledger.interrupted("t1")  # over, but its late events are not dropped
    ledger.speaking_now("t1")  # a late frame, a duplicate reply.done
    ledger.reply_done("t1", "stop")
    assert ledger.speaking is None
    ledger.speaking_now("t2")
    ledger.audio_done("t1")  # another turn's end does not end the one speaking
    assert ledger.speaking == "t2" and not ledger.over("t2")
    ledger.interrupt("t3")
    assert ledger.over("t3")


def test_the_ledger_remembers_a_bounded_number_of_interrupted_and_ended_turns() -> None:
    ledger = TurnLedger(remember=3)
    for i in range(5):
        ledger.interrupt(f"t{i}")
        ledger.audio_done(f"e{i}")
    assert [ledger.interrupted(f"t{i}") for i in range(5)] == [False, False, True, True, True]
    assert [ledger.over(f"e{i}") for i in range(5)] == [False, False, True, True, True]


def test_the_session_table_evicts_the_least_recently_used_idle_session() -> None:
    table: SessionTable[list[str]] = SessionTable(2, busy=bool)  # a non-empty list is busy
    table.setdefault("a", list)
    table.setdefault("b", list)
    table.get("a")  # a was used last: b is the oldest
    table.setdefault("c", list)
    assert ("a" in table, "b" in table, "c" in table) == (True, False, True)
    busy = table.setdefault("a", list)
    busy.append("in flight")
    table.get("c")
    table.setdefault("d", list)  # a is the oldest but busy: c goes
    assert ("a" in table, "c" in table, "d" in table) == (True, False, True)
    assert len(table) == 2 and table.pop("a") == ["in flight"] and table.pop("a") is None
