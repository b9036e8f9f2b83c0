"""Keywords worker.

Consumes: turn.user (queue group "keywords": one replica tags each turn).
Produces: turn.keywords (TurnKeywords, same session and turn as the user turn).
Logic: core.KeywordTagger (plain class, no bus).
"""

from __future__ import annotations

from faststream.nats import NatsRouter

from contracts import events as ev
from contracts.subjects import BY_NAME
from workers.runtime import Bus, RuntimeSettings, WorkerSpec

from .core import KeywordTagger


def build(settings: RuntimeSettings, bus: Bus) -> NatsRouter:
    tagger = KeywordTagger()  # cheap: word lists only, so build() stays fast
    router = NatsRouter()

    # A queue group: the worker is stateless, so replicas share the turns instead of each tagging all.
    @router.subscriber(BY_NAME["turn.user"].template(bus.prefix), queue="keywords", title="keywords.turn")
    async def on_turn(turn: ev.UserTurn) -> None:
        keywords, sentiment, score = tagger.tag(turn.text)
        await bus.publish(ev.TurnKeywords(
            session_id=turn.session_id, turn_id=turn.turn_id, producer=bus.producer,
            captured_at=turn.captured_at,  # so stats can measure this stage from the user's input
            keywords=keywords, sentiment=sentiment, score=score,
        ))

    return router


WORKER = WorkerSpec(name="keywords", description="Keywords and sentiment of each user turn",
                    settings=RuntimeSettings, build=build)
