"""Static checks of a worker's subscriptions against the declared subjects."""

from __future__ import annotations

from faststream.nats import NatsRouter

from contracts.streams import STREAMS
from contracts.validate import declared


def _whole_stream(subject: str) -> bool:
    """A reader of everything a stream records (the stats aggregator) subscribes to its subject."""
    prefix = subject.split(".", 1)[0]
    return any(subject in spec.absolute_subjects(prefix) for spec in STREAMS)


def undeclared_subjects(router: NatsRouter) -> list[str]:
    """Subjects the router subscribes or publishes to that no contract declares."""
    found = []
    for endpoint in [*router.subscribers, *router.publishers]:
        subject = getattr(endpoint, "subject", "")
        # FastStream holds path-parameter subjects as an Address; its broker form has the wildcards.
        subject = str(getattr(subject, "broker_address", subject))
        if subject and declared(subject) is None and not _whole_stream(subject):
            found.append(subject)
    return sorted(found)
