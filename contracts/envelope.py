"""The envelope every event on the bus carries.

Every message model subclasses :class:`Event` (or :class:`SessionEvent` when it belongs to
one client session). The envelope fields give consumers what they need to dedupe
(``event_id``, also sent as the ``Nats-Msg-Id`` header), route (``session_id``,
``turn_id``), order (``seq``) and measure (``captured_at``, ``published_at``).
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: Session ids are single NATS subject tokens: no dots, spaces or wildcards.
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
#: Turn ids travel in headers and subjects' payloads; same alphabet as session ids.
TurnId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def new_id() -> str:
    """A random 128-bit id as 32 hex characters (subject- and header-safe).

    Straight from ``os.urandom``: the same shape as ``uuid4().hex`` at a quarter of the cost
    (0.7 vs 2.8 us here), and every event gets one."""
    return os.urandom(16).hex()


def now() -> float:
    """Wall-clock time as Unix epoch seconds: the unit of every timestamp on the bus."""
    return time.time()


class Event(BaseModel):
    """Base of every message. Subclasses declare ``kind: Literal["..."] = "..."`` and ``VERSION``.

    ``extra="ignore"`` keeps consumers forward compatible: a producer that adds an
    optional field does not break an older consumer.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: Bumped whenever the shape changes incompatibly (see contracts/compat.py).
    VERSION: ClassVar[int] = 1

    kind: str
    schema_version: int = Field(default=0, ge=0, description="Version of this message's schema")
    event_id: str = Field(
        default_factory=new_id,
        min_length=1,
        max_length=64,
        description="Unique id; also the Nats-Msg-Id header used for dedupe",
    )
    producer: str = Field(min_length=1, max_length=64, description="Name of the process that emitted it")
    seq: int | None = Field(
        default=None, ge=0, description="Monotonic sequence within (session, producer) where order matters"
    )
    captured_at: float | None = Field(
        default=None, description="When the input this event stems from was captured (epoch s)"
    )
    published_at: float = Field(default_factory=now, description="When it was published (epoch s)")

    @model_validator(mode="before")
    @classmethod
    def _stamp_version(cls, data: Any) -> Any:
        # A producer never has to remember its schema version: the class states it once.
        if isinstance(data, dict) and not data.get("schema_version"):
            data = {**data, "schema_version": cls.VERSION}
        return data

    @classmethod
    def kind_name(cls) -> str:
        """The ``kind`` discriminator this class declares."""
        default = cls.model_fields["kind"].default
        if not isinstance(default, str):
            raise TypeError(f"{cls.__name__} declares no kind")
        return default


class SessionEvent(Event):
    """An event that belongs to one client session (and usually one turn)."""

    session_id: SessionId
    turn_id: TurnId | None = None


class TurnEvent(SessionEvent):
    """An event that always belongs to a turn: late output of a cancelled turn is dropped by it."""

    turn_id: TurnId
