"""The wire: every message, subject, stream and binary layout of Switchboard.

This package imports pydantic only, so any producer or consumer (and the tests) can use it.
"""

from .envelope import Event, SessionEvent, TurnEvent, new_id, now
from .events import ALL_EVENTS, EVENTS_BY_KIND, parse_event
from .subjects import BY_NAME, DEFAULT_PREFIX, REPLIES, SUBJECTS, Lane, Subject, for_session

__all__ = [
    "ALL_EVENTS",
    "BY_NAME",
    "DEFAULT_PREFIX",
    "EVENTS_BY_KIND",
    "REPLIES",
    "SUBJECTS",
    "Event",
    "Lane",
    "SessionEvent",
    "Subject",
    "TurnEvent",
    "for_session",
    "new_id",
    "now",
    "parse_event",
]
