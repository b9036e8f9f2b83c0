"""Keywords worker.

Consumes: turn.user (queue group "keywords": one replica tags each turn).
Produces: turn.keywords (TurnKeywords, same session and turn as the user turn).
Logic: core.KeywordTagger (plain class, no bus).
"""

from __future__ import annotations

from contracts import events as ev
from workers.runtime import RuntimeSettings, Worker, consumes

from .core import KeywordTagger


class KeywordsWorker(Worker[RuntimeSettings]):
    name = "keywords"
    description = "Keywords and sentiment of each user turn"

    tagger = KeywordTagger()  # word lists only, no state: one for every instance

    # A queue group: the worker is stateless, so replicas share the turns instead of each tagging all.
    @consumes("turn.user", queue="keywords")
    async def on_turn(self, turn: ev.UserTurn) -> None:
        keywords, sentiment, score = self.tagger.tag(turn.text)
        await self.bus.publish(
            ev.TurnKeywords(
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                producer=self.bus.producer,
                captured_at=turn.captured_at,  # so stats can measure this stage from the user's input
                keywords=keywords,
                sentiment=sentiment,
                score=score,
            )
        )


WORKER = KeywordsWorker
