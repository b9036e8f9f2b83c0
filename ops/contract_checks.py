"""Static checks of a worker's subscriptions against the declared subjects."""

from __future__ import annotations

from faststream.nats import NatsRouter

from contracts.validate import declared


def undeclared_subjects(router: NatsRouter) -> list[str]:
    """Subjects the router subscribes or publishes to that no contract declares."""
    found = []
    for endpoint in [*router.subscribers, *router.publishers]:
        subject = getattr(endpoint, "subject", "")
        # FastStream holds path-parameter subjects as an Address; its broker form has the wildcards.
        subject = str(getattr(subject, "broker_address", subject))
        if subject and declared(subject) is None:
            found.append(subject)
    return sorted(found)
