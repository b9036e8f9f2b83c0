"""What the bus recorded about a session: a replica that never saw an event live reads the last one."""

from __future__ import annotations

from typing import TypeVar

from nats.js.errors import NotFoundError

from contracts.envelope import Event
from contracts.streams import EVENTS
from contracts.subjects import BY_NAME

from .bus import Bus
from .provision import stream_name

E = TypeVar("E", bound=Event)


async def last_recorded(bus: Bus, name: str, session_id: str, model: type[E]) -> E | None:
    """The last event recorded in SB_EVENTS on the session's subject ``name``; None when there is none."""
    subject = BY_NAME[name].subject(session_id, bus.prefix)
    try:
        msg = await bus.js.get_last_msg(stream_name(EVENTS, bus.prefix), subject)
    except NotFoundError:
        return None
    return model.model_validate_json(msg.data or b"{}")
