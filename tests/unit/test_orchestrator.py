"""The orchestrator's logic without the bus: routing, prompts, supersede and cancel semantics."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from contracts import events as ev
from contracts.envelope import Event
from contracts.tools import BY_TOOL
from ops import models
from tests.support.fakes import FakeChatModel
from workers.orchestrator.agents import TONES, AgentRegistry, Router, handoff_tool
from workers.orchestrator.context import ContextHooks, retrieval_query
from workers.orchestrator.core import TOOLS_SHARE, Orchestrator, session_now, tools_tokens
from workers.orchestrator.llm import ChatModel, EchoChatModel
from workers.orchestrator.prompt import build_prompt
from workers.runtime.bus import DependencyUnavailableError

SID = "session-unit-01"
E = TypeVar("E", bound=Event)


class Recorder:
    producer = "orchestrator"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.requests = 0

    async def publish(self, event: Event, *, durable: bool = False) -> None:
        self.events.append(event)

    async def request(self, name: str, event: Event, reply_type: type[E], timeout: float) -> E:
        self.requests += 1
        raise DependencyUnavailableError(name, "unavailable")

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


def slow_model() -> FakeChatModel:
    """One token every 10 ms for a second: still streaming when the test interrupts it."""
    return FakeChatModel([f"t{i} " for i in range(100)], delay_s=0.01)


def orchestrator(recorder: Recorder, model: ChatModel) -> Orchestrator:
    async def no_settings(_: str) -> ev.SessionSettings | None:
        return None

    hooks = ContextHooks(recorder, 0.1, 0.1, 500)
    return Orchestrator(recorder, model, Router(AgentRegistry()), hooks, no_settings, max_tokens=100)


def turn(text: str, turn_id: str = "t1") -> ev.UserTurn:
    return ev.UserTurn(session_id=SID, turn_id=turn_id, text=text, source="typed", producer="test")


def test_router_handoff_is_sticky_and_keywords_pick_knowledge() -> None:
    router = Router(AgentRegistry())
    assert router.route("hello", None).agent.name == "general"
    assert router.route("what does the handbook say about leave?", None).agent.name == "knowledge"
    # Plurals too (the evaluation set's "In my documents, ..." went to the general agent).
    assert router.route("In my documents, who won the race?", None).agent.name == "knowledge"
    assert router.route("Search my files for the lease", None).agent.name == "knowledge"
    handoff = router.route("can I talk to the coach please", None)
    assert (handoff.agent.name, handoff.handoff) == ("coach", True)
    assert router.route("the document says", "coach").agent.name == "coach"  # sticky beats keywords
    assert router.route("switch to nobody", "coach").agent.name == "coach"  # unknown agent: no handoff


def test_prompt_has_tone_memory_and_numbered_passages() -> None:
    agent = AgentRegistry().get("knowledge")
    assert agent is not None
    memory = ev.ContextReply(
        session_id=SID,
        producer="memory",
        summary="They planned a trip.",
        facts=["lives in Oslo"],
        turns=[ev.MemoryTurn(role="user", text="hi", turn_id="a", at=1.0)],
    )
    passage = ev.Passage(
        text="Leave is 25 days.",
        score=0.8,
        citation=ev.Citation(document_id="d1", source="handbook.md", section="Leave"),
    )
    messages = build_prompt(agent, "formal", "how much leave?", [("user", "ignored local")], memory, [passage]).messages
    # The first system message never changes within a conversation: the template puts the tools right after it.
    assert messages[0]["content"] == f"{agent.system_prompt}\n\n{TONES['formal']}"
    # What changes every turn comes after the history, so that the server reuses the history's prefix
    assert messages[1:] == [
        {
            "role": "system",
            "content": "Earlier in this conversation: They planned a trip.\n\n"
            "What the user told you about themselves: lives in Oslo",
        },
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "Passages:\n[1] (handbook.md, Leave) Leave is 25 days."},
        {"role": "user", "content": "how much leave?"},
    ]


async def test_reply_streams_deltas_then_done_with_dependency_status() -> None:
    recorder = Recorder()
    orch = orchestrator(recorder, EchoChatModel())
    await orch.on_user_turn(turn("hello world"))
    await orch.drain(1.0)
    deltas = recorder.of(ev.ReplyDelta)
    done = recorder.of(ev.ReplyDone)
    assert "".join(d.text for d in deltas) == "You said: hello world"
    assert len(done) == 1 and done[0].memory == "unavailable" and done[0].usage.completion_tokens == 4


async def test_interrupt_stops_deltas_before_it_returns() -> None:
    recorder = Recorder()
    orch = orchestrator(recorder, slow_model())
    await orch.on_user_turn(turn("go"))
    await asyncio.sleep(0.06)
    await orch.on_interrupt(ev.Interrupt(session_id=SID, producer="test", reason="barge_in"))
    count = len(recorder.of(ev.ReplyDelta))
    await asyncio.sleep(0.05)
    assert len(recorder.of(ev.ReplyDelta)) == count > 0
    done = recorder.of(ev.ReplyDone)
    assert [d.finish_reason for d in done] == ["cancelled"]
    assert recorder.events[-1] is done[0]


async def test_interrupt_for_another_turn_is_ignored_and_new_turn_supersedes() -> None:
    recorder = Recorder()
    orch = orchestrator(recorder, slow_model())
    await orch.on_user_turn(turn("first", "t1"))
    await asyncio.sleep(0.03)
    await orch.on_interrupt(ev.Interrupt(session_id=SID, turn_id="old-turn", producer="test", reason="barge_in"))
    assert not recorder.of(ev.ReplyDone)
    await orch.on_user_turn(turn("second", "t2"))
    await asyncio.sleep(0.03)
    await orch.on_interrupt(ev.Interrupt(session_id=SID, producer="test", reason="client"))
    assert [(d.turn_id, d.finish_reason) for d in recorder.of(ev.ReplyDone)] == [
        ("t1", "superseded"),
        ("t2", "cancelled"),
    ]


async def test_an_absent_service_is_not_asked_again_on_every_turn() -> None:
    recorder = Recorder()
    orch = orchestrator(recorder, EchoChatModel())
    for i in range(3):
        await orch.on_user_turn(turn(f"turn {i}", f"t{i}"))
        await orch.drain(1.0)
    assert recorder.requests == 2  # memory and the camera: no responders once each, then remembered for a while
    assert [d.memory for d in recorder.of(ev.ReplyDone)] == ["unavailable"] * 3


def test_the_date_and_time_go_after_the_history_in_the_sessions_zone() -> None:
    agent = AgentRegistry.from_file(None).default
    history = [("user", "hi"), ("assistant", "hello")]
    paris = session_now("Europe/Paris")
    messages = build_prompt(agent, None, "what year is it?", history, None, [], now=paris).messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "system", "user"]
    assert (
        messages[3]["content"]
        == f"(If the user asks about the date or time: it is {paris:%A %d %B %Y, %H:%M}, Europe/Paris.)"
    )
    assert str(paris.year) in messages[3]["content"]
    assert session_now("Mars/Olympus_Mons").utcoffset() == session_now(None).utcoffset()  # unknown: UTC
    # The stable part, which the server's prompt cache keeps, does not change with the time.
    later = build_prompt(agent, None, "and now?", history, None, [], now=session_now("Asia/Tokyo")).messages
    assert later[:3] == messages[:3]


def test_the_retrieval_query_is_the_question_without_where_to_look() -> None:
    assert (
        retrieval_query("Search my documents: how did the mouse repay the lion?") == "how did the mouse repay the lion?"
    )
    assert retrieval_query("According to my documents, who won?") == "who won?"
    assert retrieval_query("What rights does the Declaration in my documents name?") == (
        "What rights does the Declaration name?"
    )
    assert retrieval_query("my documents") == "my documents"  # nothing else to look for: as it was
    assert retrieval_query("What does the handbook say about leave?") == "What does the handbook say about leave?"


def test_every_shipped_agents_tools_fit_the_embedded_models_window() -> None:
    # Found by the evaluation set: with two more tools the general agent's definitions outgrew their
    # share of the 4,096-token window and were silently not offered, so no tool was ever called.
    registry = AgentRegistry()
    window = models.MODELS[models.DEFAULT].context
    for agent in map(registry.get, registry.names()):
        assert agent is not None
        tools = [BY_TOOL[name].function() for name in agent.tools if name in BY_TOOL]
        tools += [tool] if (tool := handoff_tool(registry, agent)) else []
        assert tools_tokens(tools) <= window * TOOLS_SHARE, agent.name
