"""Whole workers (their classes, handlers and logic) with fake providers on a recording bus: no NATS, milliseconds.

These complement tests/integration (real NATS, real edge, real providers), which cover the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from contracts import events as ev
from contracts.envelope import Event
from contracts.limits import QUERY_CHARS
from tests.support.fakes import FakeChatModel, FakeEngine, FakeTTS
from tests.support.harness import WorkerHarness
from workers.keywords.worker import KeywordsWorker
from workers.orchestrator.llm import LLMError
from workers.orchestrator.worker import OrchestratorSettings, OrchestratorWorker
from workers.speech.engines.base import SAMPLE_RATE, SAMPLE_WIDTH
from workers.stats.worker import StatsWorker
from workers.voice.worker import VoiceSettings, VoiceWorker

SID = "session-harness-01"


def user_turn(text: str, turn_id: str = "t1") -> ev.UserTurn:
    return ev.UserTurn(session_id=SID, turn_id=turn_id, text=text, source="typed", producer="test")


def interrupt(turn_id: str = "t1") -> ev.Interrupt:
    return ev.Interrupt(session_id=SID, turn_id=turn_id, producer="test", reason="barge_in")


@pytest.fixture(autouse=True)
async def quick() -> AsyncIterator[None]:
    """Every test here must stay far below a second: that is the point of the harness."""
    async with asyncio.timeout(1.0):
        yield


# ---------------------------------------------------------------- orchestrator


async def test_a_user_turn_gives_deltas_then_exactly_one_reply_done() -> None:
    async def memory(request: Event) -> Event:
        assert isinstance(request, ev.ContextRequest)
        return ev.ContextReply(session_id=request.session_id, producer="memory", summary="They like green tea.")

    model = FakeChatModel(["Green ", "tea ", "it is."])
    async with WorkerHarness(
        OrchestratorWorker, OrchestratorSettings(), providers=[model], responders={"memory.context": memory}
    ) as h:
        await h.deliver(user_turn("what do I like to drink?"))  # returns once the reply is done
        deltas, done = h.published(ev.ReplyDelta), h.published(ev.ReplyDone)
        assert [(d.seq, d.text) for d in deltas] == [(0, "Green "), (1, "tea "), (2, "it is.")]
        assert len(done) == 1 and h.bus.sent[-1].event is done[0]
        assert (done[0].text, done[0].finish_reason, done[0].model, done[0].memory) == (
            "Green tea it is.",
            "stop",
            "fake",
            "ok",
        )
        assert "They like green tea." in model.requests[0][1]["content"]  # the recalled context reached the prompt
        assert [name for name, _ in h.bus.requests] == ["memory.context", "video.describe"]


async def test_an_interrupt_mid_stream_cancels_the_reply_and_no_delta_follows() -> None:
    model = FakeChatModel([f"w{i} " for i in range(100)], delay_s=0.005)
    async with WorkerHarness(OrchestratorWorker, OrchestratorSettings(), providers=[model]) as h:
        answering = asyncio.create_task(h.deliver(user_turn("tell me a long story")))
        await h.wait_for(ev.ReplyDelta, count=3)
        await h.deliver(interrupt())
        await answering
        await asyncio.sleep(0.03)  # six more tokens' time: none may come
        kinds = [sent.event.kind for sent in h.bus.sent]
        assert kinds[-1] == "reply.done" and kinds.count("reply.done") == 1
        assert 3 <= kinds.count("reply.delta") < 100
        assert h.published(ev.ReplyDone)[0].finish_reason == "cancelled"


async def test_an_llm_failure_gives_an_error_then_reply_done_with_error() -> None:
    failure = LLMError("llm_unavailable", "the language model cannot be reached", retryable=True)
    async with WorkerHarness(
        OrchestratorWorker, OrchestratorSettings(), providers=[FakeChatModel(["Let me "], error=failure)]
    ) as h:
        await h.deliver(user_turn("hello"))
        assert [sent.event.kind for sent in h.bus.sent] == ["reply.delta", "error", "reply.done"]
        error, done = h.published(ev.ErrorEvent)[0], h.published(ev.ReplyDone)[0]
        assert (error.code, error.retryable, error.turn_id) == ("llm_unavailable", True, "t1")
        assert (done.finish_reason, done.text) == ("error", "Let me ")


# ---------------------------------------------------------------- voice


def voice_settings() -> VoiceSettings:
    return VoiceSettings(tts_lead_s=0.05)  # little audio ahead of playback: an interrupt finds frames still to send


async def speaking_session(h: WorkerHarness[VoiceWorker]) -> None:
    await h.deliver(ev.SessionStarted(session_id=SID, producer="edge", capabilities=["audio_out"]))


async def test_reply_text_becomes_audio_frames_and_exactly_one_audio_done() -> None:
    tts = FakeTTS("piper")
    async with WorkerHarness(VoiceWorker, voice_settings(), providers=[tts]) as h:
        await speaking_session(h)  # the bus recorded nothing about the session: it is new
        pieces = ["Hello ", "there. ", "How are ", "you?"]
        for seq, text in enumerate(pieces):
            await h.deliver(
                ev.ReplyDelta(session_id=SID, turn_id="t1", producer="test", seq=seq, text=text, agent="general")
            )
        await h.deliver(
            ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text="".join(pieces), agent="general")
        )
        (done,) = await h.wait_for(ev.AudioOutDone)
        frames = h.frames(ev.AudioOutMeta)
        assert " ".join(tts.spoken) == "Hello there. How are you?"
        assert [meta.seq for meta, _ in frames] == list(range(len(frames))) and done.frames == len(frames)
        assert {meta.sample_rate for meta, _ in frames} == {SAMPLE_RATE}
        seconds = sum(len(pcm) for _, pcm in frames) / SAMPLE_WIDTH / SAMPLE_RATE
        assert seconds == pytest.approx(sum(tts.duration_s(unit) for unit in tts.spoken), abs=1e-3)
        assert not done.cancelled and h.bus.sent[-1].event is done
        await asyncio.sleep(0.02)
        assert len(h.published(ev.AudioOutDone)) == 1


async def test_text_in_scripts_the_voice_cannot_read_never_reaches_it() -> None:
    """Issue 16, observation 8: an English voice spelled Arabic and Hebrew out letter by letter, and piper's
    memory grew with the phonemes (234 MB to 1.84 GB for one 290-character reply)."""
    tts = FakeTTS("piper", scripts=frozenset({"LATIN"}))
    reply = "مرحبا بكم في الاختبار. שלום עולם. 你好\uff0c世界。 Hello 👋 world, café. "
    async with WorkerHarness(VoiceWorker, voice_settings(), providers=[tts]) as h:
        await speaking_session(h)
        await h.deliver(ev.ReplyDelta(session_id=SID, turn_id="t1", producer="test", seq=0, text=reply, agent="a"))
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text=reply, agent="a"))
        (done,) = await h.wait_for(ev.AudioOutDone)
    assert " ".join(tts.spoken) == "Hello world, café." and not done.cancelled
    assert [e.code for e in h.published(ev.ErrorEvent)] == ["tts_unsupported_script"]


async def test_an_interrupt_stops_the_audio_of_the_turn() -> None:
    async with WorkerHarness(VoiceWorker, voice_settings(), providers=[FakeTTS("piper")]) as h:
        await speaking_session(h)
        text = "This reply goes on and on. " * 12  # about 1.6 s of audio
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text=text, agent="general"))
        await h.wait_for(ev.AudioOutMeta, count=2)
        await h.deliver(interrupt())
        (done,) = h.published(ev.AudioOutDone)  # published before the interrupt's handler returned
        sent = len(h.bus.sent)
        await asyncio.sleep(0.1)
        assert len(h.bus.sent) == sent and h.bus.sent[-1].event is done
        assert done.cancelled and done.frames == len(h.frames(ev.AudioOutMeta)) < 16


async def test_a_turn_spoken_or_stopped_is_never_voiced_again() -> None:
    """The session's TurnLedger says which turns are over: a late duplicate reply.done (a publish retried until
    stored reaches subscribers once per attempt) or late text of an interrupted turn is not spoken."""
    tts = FakeTTS("piper")
    async with WorkerHarness(VoiceWorker, voice_settings(), providers=[tts]) as h:
        await speaking_session(h)
        done = ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text="Hi there.", agent="general")
        await h.deliver(done)
        (first,) = await h.wait_for(ev.AudioOutDone)
        await h.deliver(done)
        await h.deliver(interrupt("t2"))  # before any text of t2 reached this worker
        await h.deliver(ev.ReplyDelta(session_id=SID, turn_id="t2", producer="test", seq=0, text="Late. ", agent="a"))
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t2", producer="test", text="Late.", agent="a"))
        await asyncio.sleep(0.05)
        assert tts.spoken == ["Hi there."] and h.published(ev.AudioOutDone) == [first] and not first.cancelled


async def test_the_first_text_of_another_turn_supersedes_the_speech() -> None:
    tts = FakeTTS("piper")
    async with WorkerHarness(VoiceWorker, voice_settings(), providers=[tts]) as h:
        await speaking_session(h)
        text = "This reply goes on and on. " * 12
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text=text, agent="general"))
        await h.wait_for(ev.AudioOutMeta, count=2)
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t2", producer="test", text="Next.", agent="general"))
        first, second = await h.wait_for(ev.AudioOutDone, count=2)
        assert (first.turn_id, first.cancelled, second.turn_id, second.cancelled) == ("t1", True, "t2", False)
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text=text, agent="general"))
        await asyncio.sleep(0.02)
        assert len(h.published(ev.AudioOutDone)) == 2  # t1 was stopped: it does not speak again


async def test_a_session_without_audio_out_is_not_voiced() -> None:
    async with WorkerHarness(VoiceWorker, voice_settings(), providers=[FakeTTS("piper")]) as h:
        await h.deliver(ev.SessionStarted(session_id=SID, producer="edge", capabilities=[]))
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text="Hi.", agent="general"))
        await asyncio.sleep(0.02)
        assert h.bus.sent == []


# ---------------------------------------------------------------- keywords


async def test_a_user_turn_gives_its_keywords() -> None:
    async with WorkerHarness(KeywordsWorker) as h:
        await h.deliver(user_turn("I love the new pricing page, the pricing is great"))
        (tags,) = h.published(ev.TurnKeywords)
        assert (tags.session_id, tags.turn_id, tags.sentiment) == (SID, "t1", "positive")
        assert tags.keywords[0] == "pricing"


# ---------------------------------------------------------------- stats (recorded consumers, binary metas)


async def test_stats_folds_what_the_bus_recorded_of_a_turn() -> None:
    async with WorkerHarness(StatsWorker) as h:
        await h.deliver(user_turn("hello"))
        await h.deliver(ev.AudioOutMeta(session_id=SID, turn_id="t1", producer="voice", seq=0))  # its headers only
        await h.deliver(ev.AudioOutDone(session_id=SID, turn_id="t1", producer="voice", frames=1, duration_ms=500))
        await h.deliver(interrupt())
        snapshot = await h.worker.on_snapshot(ev.StatsRequest(producer="test", session_id=SID, recent_turns=1))
        assert (snapshot.turns, snapshot.interruptions, snapshot.audio_out_s) == (1, 1, 0.5)
        assert {"turn_final", "first_audio", "audio_done", "interrupted"} <= set(snapshot.recent[0].marks)


# ---------------------------------------------------------------- the harness and the fakes themselves


async def test_an_event_no_handler_consumes_is_refused() -> None:
    async with WorkerHarness(KeywordsWorker) as h:
        with pytest.raises(LookupError, match="keywords consumes nothing"):
            await h.deliver(interrupt())


async def test_a_worker_whose_providers_cannot_be_replaced_is_refused() -> None:
    with pytest.raises(ValueError, match="build_model"):
        async with WorkerHarness(KeywordsWorker, providers=[FakeChatModel()]):
            pass


def test_the_fake_engine_streams_partials_and_hears_the_script() -> None:
    engine = FakeEngine("turn on the lights", "thanks")
    recognizer = engine.recognizer()
    word = engine.word_bytes
    partials = [recognizer.accept(bytes(word)) for _ in range(4)]
    assert partials == ["turn", "turn on", "turn on the", "turn on the lights"]
    assert recognizer.final().text == "turn on the lights"
    assert recognizer.final().text == ""  # nothing pushed since: no utterance
    recognizer.accept(bytes(word))
    assert recognizer.final().text == "thanks"
    whole = FakeEngine("hello", streaming=False)
    assert whole.capabilities.whole_utterance and whole.recognizer().accept(bytes(word)) is None


async def test_a_long_knowledge_turn_still_ends_and_its_query_is_cut_to_the_limit() -> None:
    """Issue 16, observation 6: a typed turn over the retrieval query's limit made the turn silent."""
    asked: list[int] = []

    async def retrieval(request: Event) -> Event:
        assert isinstance(request, ev.RetrievalRequest)
        asked.append(len(request.query))
        return ev.RetrievalReply(session_id=request.session_id, producer="retriever")

    async with WorkerHarness(
        OrchestratorWorker,
        OrchestratorSettings(default_agent="knowledge"),
        providers=[FakeChatModel(["From the documents: ", "nothing."])],
        responders={"retrieval.query": retrieval},
    ) as h:
        await h.deliver(user_turn("what do my documents say about falcons? " * 150, "long"))
        await h.deliver(user_turn("and about hares?", "short"))
    assert [(d.turn_id, d.finish_reason) for d in h.published(ev.ReplyDone)] == [("long", "stop"), ("short", "stop")]
    assert asked == [QUERY_CHARS, len("and about hares?")]


async def test_a_failure_while_building_the_context_ends_the_turn_with_an_error() -> None:
    async def broken(request: Event) -> Event:
        raise RuntimeError("a bug in a context service client")

    async with WorkerHarness(
        OrchestratorWorker,
        OrchestratorSettings(default_agent="knowledge"),
        providers=[FakeChatModel(["never sent"])],
        responders={"retrieval.query": broken},
    ) as h:
        await h.deliver(user_turn("what do my documents say?"))
    [done] = h.published(ev.ReplyDone)
    assert done.finish_reason == "error" and h.published(ev.ReplyDelta) == []
    assert [e.code for e in h.published(ev.ErrorEvent)] == ["internal"]
