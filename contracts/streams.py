"""JetStream streams and durable consumers, declared as data.

The runtime turns these into nats-py configs and provisions them idempotently
(workers/runtime/provision.py). Limits keep every stream bounded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .subjects import BY_NAME, DEFAULT_PREFIX

GiB = 1024**3
DAY = 86_400.0


class StreamSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    subjects: tuple[str, ...] = Field(description="Relative to the prefix")
    description: str
    retention: Literal["limits", "workqueue"] = "limits"
    max_age_s: float
    max_bytes: int
    max_msg_size: int = 1024 * 1024
    duplicate_window_s: float = 120.0
    storage: Literal["file", "memory"] = "file"
    replicas: int = Field(
        default=3, ge=1, le=5, description="Copies kept in a cluster (capped by the deployment's SB_STREAM_REPLICAS)"
    )
    allow_msg_schedules: bool = Field(
        default=False,
        description="Messages with a Nats-Schedule header are held and published again by the server when due "
        "(NATS 2.12+); it cannot be turned off again",
    )

    def absolute_subjects(self, prefix: str = DEFAULT_PREFIX) -> list[str]:
        return [f"{prefix}.{s}" for s in self.subjects]


class ConsumerSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    durable: str
    stream: str
    filter_subjects: tuple[str, ...] = Field(description="Wildcard subjects (with the default prefix)")
    ack_wait_s: float = 30.0
    max_deliver: int = Field(default=5, description="Then the message is dead-lettered")
    max_ack_pending: int = 1_000
    deliver: Literal["all", "new"] = Field(
        default="all", description="Where a new consumer starts: everything the stream holds, or what comes next"
    )
    description: str


EVENTS = StreamSpec(
    name="SB_EVENTS",
    subjects=("ev.>",),
    max_age_s=7 * DAY,
    max_bytes=1 * GiB,
    description="Every session event, recorded for memory, stats and replay",
)
AUDIO = StreamSpec(
    name="SB_AUDIO",
    subjects=("audio.>",),
    max_age_s=600.0,
    max_bytes=1 * GiB,
    replicas=1,  # losing a node loses at most 10 minutes of replayable audio; live audio never waits for it
    description="Raw audio in and out, short retention so a session can be replayed",
)
JOBS = StreamSpec(
    name="SB_JOBS",
    subjects=("job.>",),
    retention="workqueue",
    max_age_s=7 * DAY,
    max_bytes=GiB // 4,
    description="Durable ingestion and video jobs",
)
DEAD_LETTERS = StreamSpec(
    name="SB_DLQ",
    subjects=("dlq.>",),
    max_age_s=30 * DAY,
    max_bytes=GiB // 4,
    max_msg_size=8 * 1024 * 1024,
    description="Messages workers could not handle, with the reason",
)
SCHEDULES = StreamSpec(
    name="SB_SCHEDULES",
    subjects=("sched.>",),
    max_age_s=8 * DAY,  # longer than the longest reminder (7 days): a schedule never expires before it fires
    max_bytes=64 * 1024**2,
    max_msg_size=16 * 1024,
    allow_msg_schedules=True,
    description="Reminders held until they are due (message schedules) and the copies the server stores when they fire",
)
STREAMS: tuple[StreamSpec, ...] = (EVENTS, AUDIO, JOBS, DEAD_LETTERS, SCHEDULES)

MEMORY_WRITER = ConsumerSpec(
    durable="memory-writer",
    stream=EVENTS.name,
    filter_subjects=tuple(
        BY_NAME[n].wildcard() for n in ("turn.user", "reply.done", "transcript.final", "memory.forget")
    ),
    ack_wait_s=10.0,  # a lost ack (bus restart) is redelivered after this; the writer keeps a slow write alive
    description="Persists user turns, replies and final transcripts in bus order; idempotent by event id",
)
USER_TURNS = ConsumerSpec(
    durable="orchestrator-turns",
    stream=EVENTS.name,
    filter_subjects=(BY_NAME["turn.user"].wildcard(),),
    ack_wait_s=10.0,  # a dead replica's turn is answered by another after this; live replicas keep theirs alive
    max_deliver=3,
    deliver="new",  # a first deployment does not answer a week of recorded turns
    description="User turns to answer: one replica answers each, acked once its reply is done",
)
INGEST = ConsumerSpec(
    durable="retriever-ingest",
    stream=JOBS.name,
    filter_subjects=(BY_NAME["ingest.job"].wildcard(),),
    ack_wait_s=300.0,
    max_deliver=3,
    max_ack_pending=4,
    description="Document ingestion jobs",
)
VIDEO = ConsumerSpec(
    durable="video-jobs",
    stream=JOBS.name,
    filter_subjects=(BY_NAME["video.job"].wildcard(),),
    ack_wait_s=600.0,
    max_deliver=3,
    max_ack_pending=2,
    description="Video processing jobs",
)
REMINDERS = ConsumerSpec(
    durable="tools-reminders",
    stream=SCHEDULES.name,
    filter_subjects=(BY_NAME["reminder.fired"].wildcard(),),
    ack_wait_s=10.0,
    description="Reminders that fell due: told to their session (reminder.due), then acked; a worker down at the "
    "time tells them when it is back",
)
CONSUMERS: tuple[ConsumerSpec, ...] = (MEMORY_WRITER, USER_TURNS, INGEST, VIDEO, REMINDERS)


class ObjectStoreSpec(BaseModel):
    """A JetStream object-store bucket (large payloads: uploads, keyframes)."""

    model_config = ConfigDict(frozen=True)

    bucket: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    description: str
    max_bytes: int
    ttl_s: float = Field(description="Objects older than this are removed by the server")
    users: tuple[str, ...] = Field(description="The services that read or write it (their NATS permissions)")


VIDEO_OBJECTS = ObjectStoreSpec(
    bucket="SB_VIDEO",
    max_bytes=4 * GiB,
    ttl_s=7 * DAY,
    description="Uploaded videos (deleted once their job ends) and the keyframes of finished jobs",
    users=("edge", "video"),
)

INGEST_FILES = ObjectStoreSpec(
    bucket="SB_INGEST_FILES",
    max_bytes=GiB // 2,
    ttl_s=1 * DAY,
    description="Uploaded documents waiting for their ingestion job (IngestJob.object_name)",
    users=("edge", "retriever"),
)
