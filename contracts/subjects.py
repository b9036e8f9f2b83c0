"""Every subject on the bus, with the message it carries.

Layout: ``<prefix>.<family>.<session_id>.<lane>.<name>`` for per-session traffic, so the
session id is always token 2 (0-based) and ``partition(N, 1)`` in a subject mapping over
``<prefix>.<family>.*.…`` pins a session to one replica. Service and job subjects have no
session token. The prefix defaults to ``sb``; replays re-publish under another prefix so
that they never touch live sessions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from . import events as ev
from .envelope import Event
from .tools import TOOLS

DEFAULT_PREFIX = "sb"
SESSION_TOKEN = 2  # index of the session id in a per-session subject
AUDIO_PARTITIONS = 8  # the server maps audio.<session>.in onto this many partitions (infra/nats.conf)
_TEMPLATE_TOKEN = re.compile(r"\{[a-z_]+\}")


class Lane(StrEnum):
    CONTROL = "control"  # small, never queued behind data, never dropped
    DATA = "data"  # ordered, may be cancelled by an interruption
    RPC = "rpc"  # request/reply with a deadline
    JOB = "job"  # durable work through JetStream
    OPS = "ops"  # dead letters, stats


@dataclass(frozen=True)
class Subject:
    """One declared subject. ``pattern`` omits the prefix and may hold ``{session_id}``."""

    name: str
    pattern: str
    message: type[Event]
    lane: Lane
    description: str
    binary: bool = False  # payload is raw bytes; the message model travels in the Sb-Meta header
    to_client: bool = False  # the edge forwards it to the session's socket

    @property
    def per_session(self) -> bool:
        return "{session_id}" in self.pattern

    def subject(self, session_id: str | None = None, prefix: str = DEFAULT_PREFIX, **params: str) -> str:
        """The concrete subject; per-session subjects need the session id."""
        if session_id is not None:
            params["session_id"] = session_id
        try:
            return f"{prefix}.{self.pattern.format(**params)}"
        except KeyError as missing:
            raise ValueError(f"subject {self.name!r} needs {missing}") from None

    def template(self, prefix: str = DEFAULT_PREFIX) -> str:
        """The subject with ``{session_id}`` left in: FastStream's path-parameter form."""
        return f"{prefix}.{self.pattern}"

    def wildcard(self, prefix: str = DEFAULT_PREFIX) -> str:
        """The subject for all sessions (``*`` in the session token)."""
        return f"{prefix}.{_TEMPLATE_TOKEN.sub('*', self.pattern)}"

    def matches(self, subject: str, prefix: str = DEFAULT_PREFIX) -> bool:
        return subject_matches(self.wildcard(prefix), subject)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a trailing ``>`` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(got) == len(want)


_S = "{session_id}"
SUBJECTS: tuple[Subject, ...] = (
    # control lane of a session
    Subject(
        "session.started",
        f"ev.{_S}.ctl.session_started",
        ev.SessionStarted,
        Lane.CONTROL,
        "A client socket opened",
        to_client=False,
    ),
    Subject(
        "session.ended", f"ev.{_S}.ctl.session_ended", ev.SessionEnded, Lane.CONTROL, "The session's last socket closed"
    ),
    Subject(
        "session.settings",
        f"ev.{_S}.ctl.settings",
        ev.SessionSettings,
        Lane.CONTROL,
        "Client preferences (agent, tone, voice)",
        to_client=True,
    ),
    Subject(
        "speech.started",
        f"ev.{_S}.ctl.speech_started",
        ev.SpeechStarted,
        Lane.CONTROL,
        "VAD: the user started speaking",
        to_client=True,
    ),
    Subject(
        "speech.stopped",
        f"ev.{_S}.ctl.speech_stopped",
        ev.SpeechStopped,
        Lane.CONTROL,
        "VAD: the user stopped speaking",
        to_client=True,
    ),
    Subject(
        "interrupt",
        f"ev.{_S}.ctl.interrupt",
        ev.Interrupt,
        Lane.CONTROL,
        "Barge-in or client stop: cancel generation, synthesis and playback",
        to_client=True,
    ),
    Subject(
        "error", f"ev.{_S}.ctl.error", ev.ErrorEvent, Lane.CONTROL, "An error the user would notice", to_client=True
    ),
    Subject(
        "audio.done",
        f"ev.{_S}.ctl.audio_done",
        ev.AudioOutDone,
        Lane.CONTROL,
        "All audio of a turn was sent",
        to_client=True,
    ),
    Subject("memory.forget", f"ev.{_S}.ctl.forget", ev.ForgetSession, Lane.CONTROL, "Delete the session's memory"),
    Subject(
        "video.cancel",
        f"ev.{_S}.ctl.video_cancel",
        ev.VideoCancel,
        Lane.CONTROL,
        "Cancel one of the session's video jobs",
    ),
    # turns and their streamed pieces
    Subject("turn.user", f"ev.{_S}.turn.user", ev.UserTurn, Lane.DATA, "A user turn, typed or spoken", to_client=True),
    Subject(
        "reply.delta",
        f"ev.{_S}.data.reply_delta",
        ev.ReplyDelta,
        Lane.DATA,
        "A streamed piece of the reply",
        to_client=True,
    ),
    Subject("reply.done", f"ev.{_S}.turn.reply", ev.ReplyDone, Lane.DATA, "The finished reply", to_client=True),
    Subject(
        "transcript.partial",
        f"ev.{_S}.data.transcript_partial",
        ev.TranscriptPartial,
        Lane.DATA,
        "Running transcript while the user speaks",
        to_client=True,
    ),
    Subject(
        "transcript.final",
        f"ev.{_S}.turn.transcript",
        ev.TranscriptFinal,
        Lane.DATA,
        "Final transcript of an utterance",
        to_client=True,
    ),
    Subject(
        "job.progress",
        f"ev.{_S}.data.job_progress",
        ev.JobProgress,
        Lane.DATA,
        "Progress of the session's ingestion or video job",
        to_client=True,
    ),
    Subject(
        "ingest.result",
        f"ev.{_S}.turn.ingest_result",
        ev.IngestResult,
        Lane.DATA,
        "Outcome of an ingestion job",
        to_client=True,
    ),
    Subject(
        "video.result",
        f"ev.{_S}.turn.video_result",
        ev.VideoResult,
        Lane.DATA,
        "Outcome of a video job",
        to_client=True,
    ),
    # tool calls of a turn (contracts/tools.py)
    Subject("tool.call", f"ev.{_S}.turn.tool_call", ev.ToolCall, Lane.DATA, "The model called a tool", to_client=True),
    Subject(
        "tool.result",
        f"ev.{_S}.turn.tool_result",
        ev.ToolResult,
        Lane.DATA,
        "What a tool call gave the model",
        to_client=True,
    ),
    # reminders the model set (the set_reminder tool): told to the session when due
    Subject(
        "reminder.due",
        f"ev.{_S}.turn.reminder_due",
        ev.ReminderDue,
        Lane.DATA,
        "A reminder the session set is due",
        to_client=True,
    ),
    # annotations by optional workers
    Subject(
        "turn.keywords",
        f"ev.{_S}.annot.keywords",
        ev.TurnKeywords,
        Lane.DATA,
        "Keywords and sentiment of a user turn",
        to_client=True,
    ),
    # binary media
    Subject(
        "audio.in",
        f"audio.{_S}.in",
        ev.AudioInMeta,
        Lane.DATA,
        "Microphone audio, PCM16 LE mono 16 kHz frames, as the edge publishes it",
        binary=True,
    ),
    Subject(
        "audio.in.partition",
        f"audio.{_S}.in.{{partition}}",
        ev.AudioInMeta,
        Lane.DATA,
        "The same audio after the server's partition mapping: what transcribers consume",
        binary=True,
    ),
    Subject(
        "audio.out",
        f"audio.{_S}.out",
        ev.AudioOutMeta,
        Lane.DATA,
        "Assistant speech, PCM16 LE mono frames",
        binary=True,
        to_client=True,
    ),
    Subject("video.frame", f"video.{_S}.frame", ev.VideoFrameMeta, Lane.DATA, "Camera snapshot, JPEG", binary=True),
    # request/reply services
    Subject(
        "memory.context",
        "svc.memory.context",
        ev.ContextRequest,
        Lane.RPC,
        "Context for a session's next turn; replies with ContextReply",
    ),
    Subject(
        "memory.history",
        "svc.memory.history",
        ev.HistoryRequest,
        Lane.RPC,
        "One page of a session's stored turns; replies with HistoryReply",
    ),
    Subject(
        "retrieval.query",
        "svc.retrieval.query",
        ev.RetrievalRequest,
        Lane.RPC,
        "Top-k passages; replies with RetrievalReply",
    ),
    Subject(
        "stats.snapshot", "svc.stats.snapshot", ev.StatsRequest, Lane.RPC, "Current figures; replies with StatsSnapshot"
    ),
    Subject(
        "video.describe",
        "svc.video.describe",
        ev.FrameDescribeRequest,
        Lane.RPC,
        "What the session's camera shows now; replies with FrameDescription",
    ),
    # one request/reply service per tool, each on its own subject (whoever serves it subscribes)
    *(
        Subject(t.subject_name, f"svc.{t.subject_name}", ev.ToolRequest, Lane.RPC, f"Tool: {t.description}")
        for t in TOOLS
    ),
    # durable jobs
    Subject("ingest.job", "job.ingest", ev.IngestJob, Lane.JOB, "Add, replace or delete a document"),
    Subject("video.job", "job.video", ev.VideoJob, Lane.JOB, "Process an uploaded video"),
    # reminders waiting in JetStream (SB_SCHEDULES: message schedules; one subject per reminder)
    Subject(
        "reminder.job",
        f"sched.{_S}.reminder.{{reminder_id}}",
        ev.ReminderJob,
        Lane.JOB,
        "A reminder waiting until it is due: a JetStream message schedule, fired by the NATS server",
    ),
    Subject(
        "reminder.fired",
        f"sched.{_S}.fired.{{reminder_id}}",
        ev.ReminderJob,
        Lane.JOB,
        "A reminder that fell due: the NATS server's copy of its schedule, stored in the stream",
    ),
    # ops
    Subject(
        "deadletter", "dlq.{worker}", ev.DeadLetter, Lane.OPS, "A message a worker could not handle, with the reason"
    ),
)

BY_NAME: dict[str, Subject] = {s.name: s for s in SUBJECTS}

#: The processes that connect to the bus as services, each as its own NATS user (ops/access.py).
WORKERS: tuple[str, ...] = (
    "orchestrator",
    "transcriber",
    "voice",
    "memory",
    "retriever",
    "keywords",
    "video",
    "stats",
    "tools",
)
SERVICES: tuple[str, ...] = (*WORKERS, "edge")

#: Who publishes each subject. The bus refuses a service publishing anything else, and so does
#: the NATS server (ops/access.py derives each service's permissions from this table); operators'
#: tools and tests are not services and may publish anything. Dead letters go to ``dlq.<worker>``:
#: each worker publishes its own only.
PUBLISHERS: dict[str, tuple[str, ...]] = {
    "session.started": ("edge",),
    "session.ended": ("edge",),
    "session.settings": ("edge",),
    "speech.started": ("transcriber",),
    "speech.stopped": ("transcriber",),
    "interrupt": ("edge", "transcriber"),
    "error": ("orchestrator", "transcriber", "voice", "video", "retriever"),
    "audio.done": ("voice",),
    "memory.forget": ("edge",),
    "video.cancel": ("edge",),
    "turn.user": ("edge", "transcriber"),
    "reply.delta": ("orchestrator",),
    "reply.done": ("orchestrator",),
    "transcript.partial": ("transcriber",),
    "transcript.final": ("transcriber",),
    "job.progress": ("retriever", "video"),
    "ingest.result": ("retriever",),
    "video.result": ("video",),
    "turn.keywords": ("keywords",),
    "tool.call": ("orchestrator",),
    "tool.result": ("orchestrator",),
    "reminder.due": ("tools",),
    "audio.in": ("edge",),
    "audio.in.partition": ("edge",),  # audio.in after the server's mapping: NATS checks the mapped subject
    "audio.out": ("voice",),
    "video.frame": ("edge",),
    "memory.context": ("orchestrator",),
    "memory.history": ("edge",),
    "retrieval.query": ("orchestrator",),
    "stats.snapshot": ("edge",),
    "video.describe": ("orchestrator",),
    **{t.subject_name: ("orchestrator",) for t in TOOLS},
    "ingest.job": ("edge", "video"),
    "video.job": ("edge",),
    "reminder.job": ("tools",),
    "reminder.fired": (),  # the NATS server stores it when the schedule fires; no service publishes it
    "deadletter": WORKERS,
}

#: Replies to request/reply subjects (they travel on inboxes, so they have no subject).
REPLIES: dict[str, type[Event]] = {
    "memory.context": ev.ContextReply,
    "memory.history": ev.HistoryReply,
    "retrieval.query": ev.RetrievalReply,
    "stats.snapshot": ev.StatsSnapshot,
    "video.describe": ev.FrameDescription,
    **{t.subject_name: ev.ToolReply for t in TOOLS},
}


def dead_letter_subject(worker: str, prefix: str = DEFAULT_PREFIX) -> str:
    return BY_NAME["deadletter"].subject(prefix=prefix, worker=worker)


def find(subject: str, prefix: str = DEFAULT_PREFIX) -> Subject | None:
    """The declared subject a concrete (or wildcard) subject belongs to, if any."""
    as_wildcard = _TEMPLATE_TOKEN.sub("*", subject)
    for spec in SUBJECTS:
        pattern = spec.wildcard(prefix)
        if subject_matches(pattern, as_wildcard) or as_wildcard == pattern:
            return spec
    return None


def for_session(name: str, session_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return BY_NAME[name].subject(session_id, prefix)


def client_subjects(session_id: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """What the edge subscribes to for one socket: one wildcard per family it forwards."""
    return [f"{prefix}.ev.{session_id}.>", BY_NAME["audio.out"].subject(session_id, prefix)]
