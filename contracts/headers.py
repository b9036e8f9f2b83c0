"""NATS headers every publisher sets, so routing, dedupe and tracing never parse payloads."""

from __future__ import annotations

from .envelope import Event, SessionEvent

MSG_ID = "Nats-Msg-Id"  # JetStream dedupe within the stream's duplicate window
KIND = "Sb-Kind"
SCHEMA = "Sb-Schema"  # "<kind>@<version>"
SESSION = "Sb-Session"
TURN = "Sb-Turn"
PRODUCER = "Sb-Producer"
META = "Sb-Meta"  # binary messages: the meta model as JSON
TRACEPARENT = "traceparent"  # W3C trace context: this message's trace and span
PARENT_SPAN = "Sb-Parent-Span"  # span id of the message whose handling published this one


def event_headers(event: Event) -> dict[str, str]:
    headers = {
        MSG_ID: event.event_id,
        KIND: event.kind,
        SCHEMA: f"{event.kind}@{event.schema_version}",
        PRODUCER: event.producer,
    }
    if isinstance(event, SessionEvent):
        headers[SESSION] = event.session_id
        if event.turn_id:
            headers[TURN] = event.turn_id
    return headers
