"""Every event of the system, grouped by who produces it.

Field docs become the JSON Schema descriptions under ``contracts/schemas/``.
Timestamps are Unix epoch seconds (float); durations are milliseconds (float).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .envelope import Event, SessionEvent, TurnEvent, TurnId
from .limits import CAMERA_PROMPT_CHARS, QUERY_CHARS, REMINDER_TEXT_CHARS, REPLY_TEXT_CHARS, TURN_TEXT_CHARS
from .owners import Tenant

Tone = Literal["neutral", "concise", "friendly", "formal"]
DependencyStatus = Literal["ok", "timeout", "unavailable", "error", "skipped"]
Sentiment = Literal["positive", "neutral", "negative"]


class _Part(BaseModel):
    """A nested value object (not an event)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


_TENANT = (
    "The session's tenant, named by the API key that created it: its sessions share their knowledge bases, "
    "uploads and video jobs; None: the session owns them alone"
)

# ---------------------------------------------------------------- session (edge)


class SessionStarted(SessionEvent):
    """A client socket opened for the session."""

    kind: Literal["session.started"] = "session.started"
    client: str = Field(default="", max_length=200, description="Client's user agent or name")
    capabilities: list[str] = Field(default_factory=list, description="What the client declared in hello")
    tenant: Tenant | None = Field(default=None, description=_TENANT)


class SessionEnded(SessionEvent):
    """The session's last client socket closed."""

    kind: Literal["session.ended"] = "session.ended"
    reason: str = Field(default="", max_length=200)


class SessionSettings(SessionEvent):
    """Per-session preferences chosen by the client; every field is optional (None = unchanged)."""

    kind: Literal["session.settings"] = "session.settings"
    agent: str | None = Field(default=None, max_length=64)
    tone: Tone | None = None
    voice: str | None = Field(default=None, max_length=64, description="TTS voice name")
    tts_provider: str | None = Field(default=None, max_length=32)
    language: str | None = Field(default=None, max_length=16, description="BCP-47 tag, e.g. en-US")
    knowledge_bases: list[str] | None = Field(default=None, description="Retrieval bases this session searches")
    time_zone: str | None = Field(
        default=None, max_length=64, description="The user's IANA time zone, e.g. Europe/Paris (tools use it)"
    )

    def updated(self, newer: SessionSettings) -> SessionSettings:
        """These settings with every field ``newer`` sets (None means unchanged)."""
        changes = {k: v for k, v in newer.model_dump(exclude_unset=True).items() if v is not None}
        return self.model_copy(update=changes)


# ---------------------------------------------------------------- turns


class UserTurn(TurnEvent):
    """What the user said or typed: one turn for the orchestrator, whatever its source."""

    kind: Literal["turn.user"] = "turn.user"
    text: str = Field(min_length=1, max_length=TURN_TEXT_CHARS)
    source: Literal["typed", "spoken"]
    speech_ended_at: float | None = Field(
        default=None, description="For spoken turns: true end of speech in the audio (epoch s)"
    )


class ReplyDelta(TurnEvent):
    """A piece of the assistant's reply as the LLM streams it. ``seq`` orders the pieces."""

    kind: Literal["reply.delta"] = "reply.delta"
    text: str = Field(max_length=TURN_TEXT_CHARS)
    agent: str = Field(max_length=64)


class TokenUsage(_Part):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class Citation(_Part):
    document_id: str
    source: str = Field(description="File name or URL the passage came from")
    title: str = ""
    section: str = ""
    position: int = Field(default=0, ge=0, description="Chunk index within the document")
    score: float = 0.0


class ReplyDone(TurnEvent):
    """The finished reply: full text, usage, and how the context hooks fared."""

    kind: Literal["reply.done"] = "reply.done"
    text: str = Field(max_length=REPLY_TEXT_CHARS)
    agent: str = Field(max_length=64)
    model: str = Field(default="", max_length=128)
    finish_reason: Literal["stop", "length", "cancelled", "error", "superseded"] = "stop"
    usage: TokenUsage = Field(default_factory=TokenUsage)
    memory: DependencyStatus = "skipped"
    retrieval: DependencyStatus = "skipped"
    citations: list[Citation] = Field(default_factory=list)
    first_token_at: float | None = Field(default=None, description="When the LLM's first token arrived")


# ---------------------------------------------------------------- voice in (transcriber)


class SpeechStarted(TurnEvent):
    """Voice activity began; opens the turn that its transcripts and reply will carry."""

    kind: Literal["vad.speech_started"] = "vad.speech_started"
    audio_at: float = Field(description="Position in the session's audio where speech began (s)")


class SpeechStopped(TurnEvent):
    """Voice activity ended (the VAD's decision, after its silence window)."""

    kind: Literal["vad.speech_stopped"] = "vad.speech_stopped"
    audio_at: float = Field(description="Position in the session's audio where speech ended (s)")
    speech_ended_at: float = Field(description="Wall-clock time of the true end of speech (epoch s)")


class TranscriptPartial(TurnEvent):
    """The recognizer's running hypothesis; replaced by the next partial or the final."""

    kind: Literal["transcript.partial"] = "transcript.partial"
    text: str = Field(max_length=TURN_TEXT_CHARS)
    engine: str = Field(max_length=32)


class TranscriptFinal(TurnEvent):
    """The recognizer's final text for one utterance (also published as the UserTurn)."""

    kind: Literal["transcript.final"] = "transcript.final"
    text: str = Field(max_length=TURN_TEXT_CHARS)
    engine: str = Field(max_length=32)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    audio_start: float = Field(ge=0.0, description="Utterance start in the session's audio (s)")
    audio_end: float = Field(ge=0.0, description="Utterance end in the session's audio (s)")
    forced: bool = Field(default=False, description="True when the maximum utterance length cut it")


# ---------------------------------------------------------------- audio (binary payloads)


class AudioInMeta(SessionEvent):
    """Headers of one inbound audio frame; the payload is raw PCM16 LE mono (see contracts/binary.py)."""

    kind: Literal["audio.in"] = "audio.in"
    sample_rate: int = Field(default=16_000, ge=8_000, le=48_000)
    channels: Literal[1] = 1
    encoding: Literal["pcm_s16le"] = "pcm_s16le"


class AudioOutMeta(TurnEvent):
    """Headers of one outbound audio frame of the assistant's speech (PCM16 LE mono payload)."""

    kind: Literal["audio.out"] = "audio.out"
    sample_rate: int = Field(default=22_050, ge=8_000, le=48_000)
    channels: Literal[1] = 1
    encoding: Literal["pcm_s16le"] = "pcm_s16le"


class AudioOutDone(TurnEvent):
    """All audio of a turn has been published (or synthesis stopped)."""

    kind: Literal["audio.done"] = "audio.done"
    frames: int = Field(ge=0)
    duration_ms: float = Field(ge=0.0)
    cancelled: bool = False


# ---------------------------------------------------------------- control lane


class Interrupt(SessionEvent):
    """Stop the given turn (or whatever is in flight): generation, synthesis and playback."""

    kind: Literal["ctl.interrupt"] = "ctl.interrupt"
    reason: Literal["barge_in", "client", "superseded"]


class ErrorEvent(SessionEvent):
    """Something the user would notice went wrong; ``code`` is stable, ``message`` is short."""

    kind: Literal["error"] = "error"
    code: str = Field(max_length=64, description="Stable machine-readable code, e.g. llm_unavailable")
    message: str = Field(max_length=500)
    source: str = Field(max_length=64, description="Worker that raised it")
    retryable: bool = False


# ---------------------------------------------------------------- memory (request/reply)


class ContextRequest(SessionEvent):
    """Ask memory for the context of the session's next turn."""

    kind: Literal["memory.context_request"] = "memory.context_request"
    max_tokens: int = Field(default=1_500, ge=1, le=128_000)


class MemoryTurn(_Part):
    role: Literal["user", "assistant"]
    text: str
    turn_id: TurnId
    at: float


class ContextReply(SessionEvent):
    kind: Literal["memory.context_reply"] = "memory.context_reply"
    turns: list[MemoryTurn] = Field(default_factory=list, description="Most recent turns, oldest first")
    summary: str = Field(default="", description="Running summary of turns older than `turns`")
    facts: list[str] = Field(default_factory=list, description="What the user stated about themselves")
    tokens: int = Field(default=0, ge=0)


class ForgetSession(SessionEvent):
    """The owner asked to delete the session's memory."""

    kind: Literal["memory.forget"] = "memory.forget"


class HistoryRequest(SessionEvent):
    """Ask memory for one page of a session's stored turns, newest page first."""

    kind: Literal["memory.history_request"] = "memory.history_request"
    before: int | None = Field(
        default=None, ge=1, description="Cursor: only turns stored before this position (a page's `next_before`)"
    )
    limit: int = Field(default=50, ge=1, le=200, description="Turns per page")


class StoredTurn(_Part):
    role: Literal["user", "assistant"]
    text: str
    turn_id: TurnId
    at: float = Field(description="When the turn was published (epoch s)")
    position: int = Field(ge=1, description="Order within the session (the bus's sequence number)")


class HistoryReply(SessionEvent):
    kind: Literal["memory.history_reply"] = "memory.history_reply"
    turns: list[StoredTurn] = Field(default_factory=list, description="One page, oldest first")
    next_before: int | None = Field(default=None, description="Cursor of the next (older) page; None at the start")


# ---------------------------------------------------------------- retrieval


class RetrievalRequest(SessionEvent):
    kind: Literal["retrieval.request"] = "retrieval.request"
    query: str = Field(min_length=1, max_length=QUERY_CHARS)
    bases: list[str] = Field(default_factory=lambda: ["default"])
    top_k: int = Field(default=4, ge=1, le=50)
    min_score: float = Field(default=0.3, ge=-1.0, le=1.0, description="Relevance floor (cosine similarity)")
    filters: dict[str, str | int | float | bool] = Field(default_factory=dict, description="Metadata equality")
    tenant: Tenant | None = Field(
        default=None, description=_TENANT + " (searched: the owner's bases and the public ones)"
    )


class Passage(_Part):
    text: str
    score: float
    citation: Citation


class RetrievalReply(SessionEvent):
    kind: Literal["retrieval.reply"] = "retrieval.reply"
    passages: list[Passage] = Field(default_factory=list, description="Best first, each above the floor")
    error: str = Field(default="", max_length=500, description="Why the query could not run (e.g. a blank query)")


class IngestJob(SessionEvent):
    """Durable job: add or replace one document in a knowledge base.

    ``session_id`` is the requester (a client session, or a CLI's own session); progress and
    result events go to that session's subjects.
    """

    kind: Literal["ingest.job"] = "ingest.job"
    job_id: str = Field(min_length=1, max_length=64)
    base: str = Field(default="default", min_length=3, max_length=63, pattern=r"^[A-Za-z0-9_-]+$")
    source: str = Field(min_length=1, max_length=500, description="File name or URL")
    content_type: str = Field(max_length=100)
    object_name: str | None = Field(default=None, description="Bytes in the NATS object store, if not inline")
    text: str | None = Field(default=None, max_length=1_000_000, description="Inline text for small docs")
    delete: bool = Field(default=False, description="Remove the document's chunks instead")
    owner: Literal["session", "public"] = Field(
        default="session",
        description="Whose base: the requesting session's own (its tenant's, when `tenant` is set), or the shared "
        "read-only bases every session also searches (loaded by operators: sb ingest --public)",
    )
    tenant: Tenant | None = Field(default=None, description=_TENANT)


class JobProgress(SessionEvent):
    """Progress of a long job (ingestion or video)."""

    kind: Literal["job.progress"] = "job.progress"
    job_id: str
    stage: str = Field(max_length=64)
    done: int = Field(ge=0)
    total: int = Field(ge=0)


class IngestResult(SessionEvent):
    kind: Literal["ingest.result"] = "ingest.result"
    job_id: str
    status: Literal["ingested", "unchanged", "deleted", "failed"]
    document_id: str = ""
    chunks: int = Field(default=0, ge=0)
    error: str = ""


# ---------------------------------------------------------------- video


class VideoJob(SessionEvent):
    kind: Literal["video.job"] = "video.job"
    job_id: str = Field(min_length=1, max_length=64)
    object_name: str = Field(description="Uploaded bytes in the NATS object store")
    filename: str = Field(default="", max_length=500)
    transcribe: bool = True
    ingest_base: str | None = Field(default=None, description="Ingest the transcript into this base")
    tenant: Tenant | None = Field(default=None, description=_TENANT + " (keyframes are the owner's)")


class VideoMetadata(_Part):
    duration_s: float
    width: int
    height: int
    fps: float
    video_codec: str
    audio_codec: str | None


class TranscriptSegment(_Part):
    start_s: float
    end_s: float
    text: str


class VideoResult(SessionEvent):
    kind: Literal["video.result"] = "video.result"
    job_id: str
    status: Literal["done", "failed", "cancelled"]
    metadata: VideoMetadata | None = None
    keyframes: list[str] = Field(default_factory=list, description="Object-store names of JPEG keyframes")
    transcript: list[TranscriptSegment] = Field(default_factory=list)
    error: str = ""
    error_code: str = Field(
        default="", max_length=64, description="Stable code when status is failed (docs/video.md), e.g. not_a_video"
    )
    keyframe_times_s: list[float] = Field(default_factory=list, description="Position of each keyframe (s)")
    keyframe_method: Literal["scene", "interval", ""] = Field(
        default="", description="scene: at scene changes; interval: fixed interval (no scene change found)"
    )


class VideoCancel(SessionEvent):
    """Cancel a video job of the session (running or still queued)."""

    kind: Literal["video.cancel"] = "video.cancel"
    job_id: str = Field(min_length=1, max_length=64)
    tenant: Tenant | None = Field(default=None, description=_TENANT + " (any session of the job's owner may cancel)")


class VideoFrameMeta(SessionEvent):
    """Headers of one camera snapshot; the payload is a JPEG."""

    kind: Literal["video.frame"] = "video.frame"
    width: int | None = None
    height: int | None = None


class FrameDescribeRequest(SessionEvent):
    """Ask what the session's camera shows now (its latest sampled snapshot)."""

    kind: Literal["video.describe_request"] = "video.describe_request"
    prompt: str = Field(
        default="", max_length=CAMERA_PROMPT_CHARS, description="What the agent wants to know (vision model only)"
    )


class FrameDescription(SessionEvent):
    """A short description of the session's latest camera snapshot."""

    kind: Literal["video.description"] = "video.description"
    available: bool = Field(description="False when the session sent no camera frame (recently)")
    source: Literal["facts", "vision_model", "none"] = Field(
        description="facts: plain measurements of the image (no model); vision_model: a model's description"
    )
    text: str = Field(default="", max_length=4_000, description="The description, stating which source it is")
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)
    brightness: float | None = Field(default=None, ge=0.0, le=1.0, description="Mean luma, 0 black to 1 white")
    motion: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Mean absolute luma change since the previous sampled frame"
    )
    frame_captured_at: float | None = Field(default=None, description="Capture time of the frame described")


# ---------------------------------------------------------------- stats and ops


class StatsRequest(Event):
    kind: Literal["stats.request"] = "stats.request"
    session_id: str | None = Field(default=None, description="Limit to one session")
    recent_turns: int = Field(
        default=0, ge=0, le=1_000, description="Also return the timelines of this many most recent turns"
    )


class StageLatency(_Part):
    count: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class TurnTimeline(_Part):
    """One turn's waterfall: when each step happened (epoch s) and the stage latencies (ms)."""

    session_id: str
    turn_id: str
    source: Literal["typed", "spoken", "unknown"] = "unknown"
    marks: dict[str, float] = Field(default_factory=dict, description="Step name -> epoch s")
    stages: dict[str, float] = Field(default_factory=dict, description="Stage name -> ms")
    outcome: str = Field(default="", description="The reply's finish reason, once known")


class StatsSnapshot(Event):
    kind: Literal["stats.snapshot"] = "stats.snapshot"
    sessions_active: int = 0
    turns: int = 0
    interruptions: int = 0
    errors: dict[str, int] = Field(default_factory=dict)
    dead_letters: int = 0
    tokens: int = 0
    stages: dict[str, StageLatency] = Field(default_factory=dict)
    sessions_total: int = Field(default=0, description="Sessions started since the aggregator's window began")
    turns_by_source: dict[str, int] = Field(default_factory=dict)
    audio_in_s: float = Field(default=0.0, description="Seconds of microphone audio received")
    audio_out_s: float = Field(default=0.0, description="Seconds of assistant speech sent")
    since: float | None = Field(default=None, description="Start of the aggregated window (epoch s)")
    recent: list[TurnTimeline] = Field(default_factory=list, description="Most recent turns, oldest first")


class DeadLetter(Event):
    """A message a worker could not handle, kept with the reason instead of being lost."""

    kind: Literal["deadletter"] = "deadletter"
    worker: str
    original_subject: str
    reason: str = Field(max_length=2_000)
    error_type: str
    deliveries: int = Field(default=1, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    payload_b64: str = Field(description="The original payload, base64")


# ---------------------------------------------------------------- annotations (optional workers)

#: One keyword: a lower-case word token (no spaces, no upper-case letters).
Keyword = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[^\sA-Z]+$")]


class TurnKeywords(TurnEvent):
    """Keywords and sentiment of a user turn (workers/keywords): an annotation, nothing waits for it."""

    VERSION = 1

    kind: Literal["annot.keywords"] = "annot.keywords"
    keywords: list[Keyword] = Field(
        default_factory=list, max_length=8, description="Lower-case keywords, most frequent first (at most 8)"
    )
    sentiment: Sentiment = Field(description="Label of `score`; neutral inside a small dead zone around 0")
    score: float = Field(ge=-1.0, le=1.0, description="(positive - negative) / max(1, positive + negative) words")


# ---------------------------------------------------------------- tools (contracts/tools.py)

ToolStatus = Literal["ok", "error", "timeout", "unavailable"]
_CALL_ID = "The model's id of this call; the tool.call, the request and the tool.result share it"


class ToolRequest(TurnEvent):
    """A call of one tool, on the tool's own subject (``svc.tools.<name>``); replies with ToolReply."""

    kind: Literal["tool.request"] = "tool.request"
    call_id: str = Field(min_length=1, max_length=128, description=_CALL_ID)
    tool: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict, description="As the tool's parameters schema says")
    time_zone: str | None = Field(default=None, max_length=64, description="The session's IANA time zone, if known")
    tenant: Tenant | None = Field(default=None, description=_TENANT + " (tools that read the owner's data use it)")
    knowledge_bases: list[str] | None = Field(default=None, description="The session's chosen knowledge bases")


class ToolReply(SessionEvent):
    """A tool's answer: a ``result`` that follows the tool's result schema, or an ``error`` for the model."""

    kind: Literal["tool.reply"] = "tool.reply"
    result: dict[str, Any] | None = None
    error: str = Field(default="", max_length=1_000, description="Why the tool could not answer, in plain words")


class ToolCall(TurnEvent):
    """The model called a tool; its result follows as tool.result with the same ``call_id``."""

    kind: Literal["tool.call"] = "tool.call"
    call_id: str = Field(min_length=1, max_length=128, description=_CALL_ID)
    name: str = Field(max_length=64)
    arguments: str = Field(max_length=TURN_TEXT_CHARS, description="The arguments as the model wrote them (JSON)")
    agent: str = Field(max_length=64)
    round: int = Field(ge=1, description="Tool round of the turn: 1 for the model's first calls")


class ToolResult(TurnEvent):
    """What a tool call gave the model: the result, or an error (slow, failing, missing tool)."""

    kind: Literal["tool.result"] = "tool.result"
    call_id: str = Field(min_length=1, max_length=128, description=_CALL_ID)
    name: str = Field(max_length=64)
    status: ToolStatus = Field(description="ok, error (the tool refused or failed), timeout, unavailable (no server)")
    result: dict[str, Any] | None = None
    error: str = Field(default="", max_length=1_000)
    duration_ms: float = Field(ge=0.0, description="From the request to its reply (or to giving up)")


# ---------------------------------------------------------------- reminders (the set_reminder tool)

_REMINDER_ID = "Id of the reminder: set_reminder's result names it, and its due event carries it"


class ReminderJob(SessionEvent):
    """A reminder kept by JetStream until it is due (``sched.<session>.reminder.<id>``, a message schedule);
    when due, the NATS server stores the same message on ``sched.<session>.fired.<id>`` and the tools worker
    tells the session (``reminder.due``)."""

    kind: Literal["reminder.job"] = "reminder.job"
    reminder_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description=_REMINDER_ID)
    text: str = Field(min_length=1, max_length=REMINDER_TEXT_CHARS, description="What to remind the user of")
    due_at: float = Field(description="When it is due (epoch s)")
    set_in_turn: TurnId | None = Field(default=None, description="The turn whose tool call set it")


class ReminderDue(SessionEvent):
    """A reminder the session set is due: the client shows (or says) ``text``. It belongs to no turn."""

    kind: Literal["reminder.due"] = "reminder.due"
    reminder_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description=_REMINDER_ID)
    text: str = Field(min_length=1, max_length=REMINDER_TEXT_CHARS, description="What to remind the user of")
    due_at: float = Field(description="When it was due (epoch s); published_at says when it was sent")
    set_at: float = Field(description="When it was set (epoch s)")
    set_in_turn: TurnId | None = Field(default=None, description="The turn whose tool call set it")


ALL_EVENTS: tuple[type[Event], ...] = (
    SessionStarted,
    SessionEnded,
    SessionSettings,
    UserTurn,
    ReplyDelta,
    ReplyDone,
    SpeechStarted,
    SpeechStopped,
    TranscriptPartial,
    TranscriptFinal,
    AudioInMeta,
    AudioOutMeta,
    AudioOutDone,
    Interrupt,
    ErrorEvent,
    ContextRequest,
    ContextReply,
    ForgetSession,
    HistoryRequest,
    HistoryReply,
    RetrievalRequest,
    RetrievalReply,
    IngestJob,
    JobProgress,
    IngestResult,
    VideoJob,
    VideoResult,
    VideoCancel,
    VideoFrameMeta,
    FrameDescribeRequest,
    FrameDescription,
    StatsRequest,
    StatsSnapshot,
    DeadLetter,
    TurnKeywords,
    ToolRequest,
    ToolReply,
    ToolCall,
    ToolResult,
    ReminderJob,
    ReminderDue,
)

EVENTS_BY_KIND: dict[str, type[Event]] = {cls.kind_name(): cls for cls in ALL_EVENTS}


def parse_event(data: bytes | str | dict[str, Any]) -> Event:
    """Parse any event by its ``kind`` (raises ``KeyError`` or pydantic ``ValidationError``)."""
    if isinstance(data, dict):
        return EVENTS_BY_KIND[data["kind"]].model_validate(data)
    obj = json.loads(data)
    return EVENTS_BY_KIND[obj["kind"]].model_validate(obj)
