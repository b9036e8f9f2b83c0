"""Chat models behind one small base (:class:`ChatModel`): OpenAI-compatible servers, and a zero-latency echo.

Each model declares its :class:`LLMCapabilities`. The echo model exists for load tests: it
measures everything but the LLM. Test double: ``tests/support/fakes.py``.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import openai
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from contracts.events import TokenUsage
from workers.runtime.llm_priority import BACKGROUND_HEADERS
from workers.runtime.logging import get_logger

from .text_tools import TextToolCalls

log = get_logger("orchestrator")
WARM_WAIT_S = 180.0  # how long a warm-up waits for a server that is still starting

ChatMessage = dict[str, Any]  # OpenAI's wire form: role, content, and tool_calls / tool_call_id
ToolDefinition = dict[str, Any]  # an OpenAI function-calling tool (contracts.tools.ToolSpec.function())

PROPS_TIMEOUT_S = 2.0
WINDOW_TTL_S = 300.0
NO_WINDOW_TTL_S = 60.0


@dataclass(frozen=True)
class ToolCallRequest:
    """One call the model asked for, assembled from its streamed pieces."""

    id: str
    name: str
    arguments: str  # JSON as the model wrote it (maybe broken)


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    usage: TokenUsage | None = None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()  # only on the stream's last chunk, all calls complete


class LLMError(Exception):
    """A failure the user is told about: ``code`` is stable, the message short and secret-free."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True)
class LLMCapabilities:
    """What a chat model can do, declared by the model."""

    streaming: bool  # the reply comes in pieces while it is generated (else in one chunk at the end)
    tool_calls: bool  # it is given tools and may answer with calls to them
    context_window: int | None = None  # tokens of prompt and reply together, when known


class ChatModel(ABC):
    name: str  # reported in reply.done

    def __init__(self, capabilities: LLMCapabilities) -> None:
        self.capabilities = capabilities

    @abstractmethod
    def stream(
        self,
        messages: list[ChatMessage],
        model: str | None,
        max_tokens: int,
        tools: list[ToolDefinition] | None = None,
        required_tool: str | None = None,
        allowed: frozenset[str] | None = None,
    ) -> AsyncIterator[Chunk]:
        """The reply in chunks (the last ones may carry only usage, a finish reason or the tool calls
        asked for, when ``tools`` were offered and the model declares ``tool_calls``); raises LLMError.
        ``required_tool``: one of ``tools`` that the reply must call (OpenAI's named ``tool_choice``);
        ``allowed``: the only ones of ``tools`` it may call (``allowed_tools``; None: all)."""

    async def context_window(self) -> int | None:
        """Tokens of prompt and reply together that the serving model takes; None when unknown."""
        return self.capabilities.context_window

    async def warm(self, messages: list[ChatMessage], model: str | None, tools: list[ToolDefinition]) -> None:  # noqa: B027
        """Have the server evaluate a prompt it will see again (an agent's prompt and tools) as
        background work, so that the first turn that starts with it does not; a hint, never an error."""

    async def close(self) -> None:  # noqa: B027 - an optional hook: most models hold no connection
        """Release connections (on stop)."""


class OpenAIChatModel(ChatModel):
    """Any OpenAI-compatible server through the official client, streamed."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        timeout_s: float,
        context_window: int | None = None,
        temperature: float | None = None,
    ) -> None:
        # The window is the configured one, else the server's report (context_window()).
        super().__init__(LLMCapabilities(streaming=True, tool_calls=True, context_window=context_window))
        self.name = model
        self.temperature = temperature  # None: the server's default
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self._props_url = base_url.rstrip("/").removesuffix("/v1") + "/props"
        self._window: int | None = None
        self._window_until = 0.0  # monotonic time until which _window is believed

    async def context_window(self) -> int | None:
        """The configured window, else what the server reports: ``GET /props`` ->
        ``default_generation_settings.n_ctx`` (llama.cpp's llama-server, and our llama-cpp-python
        launcher, ops/llama_cpp_serve.py). Asked again every WINDOW_TTL_S (a server may be restarted
        with another model); a server that does not report it (OpenAI) is asked every NO_WINDOW_TTL_S."""
        if self.capabilities.context_window or time.monotonic() < self._window_until:
            return self.capabilities.context_window or self._window
        window = None
        try:
            props = await self._client.get(self._props_url, cast_to=object, options={"timeout": PROPS_TIMEOUT_S})
            settings = props.get("default_generation_settings") if isinstance(props, dict) else None
            n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
            window = n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None
        except openai.APIStatusError:
            pass  # no such endpoint: the server does not say
        except openai.APIError:
            return self._window  # unreachable or slow now: the turn will say so; ask again next turn
        self._window = window
        self._window_until = time.monotonic() + (WINDOW_TTL_S if window else NO_WINDOW_TTL_S)
        return window

    async def stream(
        self,
        messages: list[ChatMessage],
        model: str | None,
        max_tokens: int,
        tools: list[ToolDefinition] | None = None,
        required_tool: str | None = None,
        allowed: frozenset[str] | None = None,
    ) -> AsyncIterator[Chunk]:
        # Two costs of the SDK's typed path are skipped, both measured on this machine: the generic
        # parameter transform of `chat.completions.create()` (1.3 ms of CPU for one message, ~6 ms
        # with history; our messages are already in wire form, so the body goes through the
        # client's documented custom-request path), and building a pydantic ChatCompletionChunk per
        # server-sent event (`AsyncStream[object]` yields the decoded JSON; `_read_chunk` takes the
        # fields we use). Same HTTP stack, auth, SSE parser and error types.
        body: dict[str, Any] = {
            "model": model or self.name,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        offered = {t["function"]["name"] for t in tools or []}
        callable_now = offered if allowed is None else offered & allowed
        if tools:
            body["tools"] = tools
            body.update(tool_choice(offered, callable_now, required_tool))
        try:
            response = await self._client.post(
                "/chat/completions",
                cast_to=object,
                body=body,
                options={"security": {"bearer_auth": True}},
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            pieces, reported = 0, False
            calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...] as the pieces come
            written = TextToolCalls(callable_now)
            async with response:  # closes the connection also when a chunk is refused or we are cancelled
                async for event in response:
                    chunk = _read_chunk(event, calls)
                    reported = reported or chunk.usage is not None
                    pieces += bool(chunk.text)
                    chunk = replace(chunk, text=written.feed(chunk.text)) if chunk.text else chunk
                    if chunk.text or chunk.usage or chunk.finish_reason:
                        yield chunk
            if not reported:  # servers such as llama.cpp's ignore stream_options: estimate
                yield Chunk(usage=TokenUsage(prompt_tokens=estimate_messages(messages), completion_tokens=pieces))
            in_text, held = written.finish()
            if held:
                yield Chunk(text=held)
            if calls:
                yield Chunk(tool_calls=tuple(_assembled(calls)))
            elif in_text:
                yield Chunk(tool_calls=tuple(ToolCallRequest(f"text_call_{i}", *c) for i, c in enumerate(in_text)))
        except openai.APIError as error:
            raise _classify(error) from error
        except ValueError as error:  # undecodable server-sent event, or one without a chunk's shape
            raise LLMError("llm_bad_stream", "the language model sent a malformed stream") from error

    async def warm(self, messages: list[ChatMessage], model: str | None, tools: list[ToolDefinition]) -> None:
        body: dict[str, Any] = {"model": model or self.name, "messages": messages, "max_tokens": 1}
        if tools:
            body["tools"] = tools
        try:  # marked background: a turn that comes meanwhile goes first (ops/llama_cpp_serve.py)
            # A server started beside us (just up) may still be loading its model.
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(openai.APIConnectionError),
                stop=stop_after_delay(WARM_WAIT_S),
                wait=wait_fixed(1.0),
                reraise=True,
            ):
                with attempt:
                    await self._client.post(
                        "/chat/completions", cast_to=object, body=body, options={"headers": BACKGROUND_HEADERS}
                    )
        except openai.APIError as error:
            log.info("model not warmed", model=model or self.name, error=str(error)[:200])

    async def close(self) -> None:
        await self._client.close()


def tool_choice(offered: set[str], allowed: set[str], required: str | None) -> dict[str, Any]:
    """The request's ``tool_choice``, if not the default ``auto``: a required tool, none, or the allowed
    ones (OpenAI's ``allowed_tools``: the tools and so the prompt stay the same, the calls are narrowed)."""
    if required in allowed:
        return {"tool_choice": {"type": "function", "function": {"name": required}}}
    if allowed == offered:
        return {}
    if not allowed:
        return {"tool_choice": "none"}
    named = [{"type": "function", "function": {"name": name}} for name in sorted(allowed)]
    return {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": named}}}


def _read_chunk(event: object, calls: dict[int, list[str]]) -> Chunk:
    """The text, usage and finish reason of one ``chat.completion.chunk`` (its pieces of tool calls go
    into ``calls``); ValueError if it is not one, LLMError when it is the server's report of a failure
    (``{"error": ...}``, llama-server's shape)."""
    if not isinstance(event, dict):
        raise ValueError("a stream event that is not a JSON object")
    if "error" in event:
        raise _stream_error(event["error"])
    usage = None
    if isinstance(reported := event.get("usage"), dict):
        usage = TokenUsage(
            prompt_tokens=_count(reported, "prompt_tokens"), completion_tokens=_count(reported, "completion_tokens")
        )
    choices = event.get("choices") or []
    if not isinstance(choices, list):
        raise ValueError("choices is not a list")
    if not choices:
        return Chunk(usage=usage)
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise ValueError("a choice without a delta object")
    text, finish = delta.get("content") or "", choice.get("finish_reason")
    if not isinstance(text, str) or not (finish is None or isinstance(finish, str)):
        raise ValueError("content or finish_reason is not a string")
    for piece in delta.get("tool_calls") or []:
        _add_call_piece(piece, calls)
    return Chunk(text, usage, finish)


def _add_call_piece(piece: object, calls: dict[int, list[str]]) -> None:
    """One streamed piece of a tool call: the first of an index names it, the others add arguments."""
    function = piece.get("function") if isinstance(piece, dict) else None
    if not isinstance(piece, dict) or not isinstance(function, dict | None):
        raise ValueError("a tool call piece that is not an object")
    index = piece.get("index", len(calls))
    if not isinstance(index, int):
        raise ValueError("a tool call without an integer index")
    call = calls.setdefault(index, ["", ""])
    call[0] = str(piece.get("id") or call[0])
    call[1] = str((function or {}).get("name") or call[1])
    call.append(str((function or {}).get("arguments") or ""))


def _assembled(calls: dict[int, list[str]]) -> list[ToolCallRequest]:
    return [
        ToolCallRequest(call_id or f"call_{index}", name, "".join(arguments))
        for index, (call_id, name, *arguments) in sorted(calls.items())
    ]


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key) or 0
    if not isinstance(value, int):
        raise ValueError(f"usage.{key} is not an integer")
    return value


def _overflows(body: object) -> bool:
    """Whether an error body says the prompt is longer than the context window: llama-server's
    ``exceed_context_size_error``, OpenAI's ``context_length_exceeded``, llama-cpp-python's
    "maximum context length" message."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    text = " ".join(str(body.get(k, "")) for k in ("type", "code", "message")) if isinstance(body, dict) else str(body)
    return bool(_OVERFLOW.search(text))


_OVERFLOW = re.compile(r"exceed_context_size|context_length_exceeded|context (size|length|window)", re.IGNORECASE)


def _stream_error(body: object) -> LLMError:
    if _overflows(body):
        return LLMError("llm_context_overflow", "the conversation is too long for the language model")
    return LLMError("llm_stream_error", "the language model failed while replying", retryable=True)


def _classify(error: openai.APIError) -> LLMError:
    if isinstance(error, openai.APIStatusError) and error.status_code in (400, 413) and _overflows(error.body):
        return LLMError("llm_context_overflow", "the conversation is too long for the language model")
    if isinstance(error, openai.APITimeoutError):
        return LLMError("llm_timeout", "the language model did not answer in time", retryable=True)
    if isinstance(error, openai.APIConnectionError):
        return LLMError("llm_unavailable", "the language model cannot be reached", retryable=True)
    if isinstance(error, openai.RateLimitError):
        return LLMError("llm_rate_limited", "the language model is busy; try again shortly", retryable=True)
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMError("llm_auth", "the language model refused our credentials")
    if isinstance(error, openai.APIStatusError):
        if error.status_code >= 500:
            return LLMError("llm_failed", f"the language model failed (HTTP {error.status_code})", retryable=True)
        return LLMError("llm_rejected", f"the language model rejected the request (HTTP {error.status_code})")
    if error.body is not None:  # an error event inside the stream (the SDK raises the base class)
        return _stream_error(error.body)
    return LLMError("llm_bad_stream", "the language model sent a malformed stream")


#: Pieces that the BPE tokenizers of the embedded models (Qwen2.5, SmolLM2) turn into about one
#: token or fewer: a word of ASCII letters per 4 letters, a digit, a punctuation mark, a run of
#: blanks or of newlines, a run of other characters per 1.5 of its UTF-8 bytes.
_PIECES = re.compile(r" ?[A-Za-z]+|\d|[ \t]+|\n+|[\x21-\x7e]|[^\x00-\x7f]+")
MESSAGE_OVERHEAD = 8  # the chat template's tokens around each message (ChatML: about 5)
REPLY_OVERHEAD = 4  # the assistant header that starts the reply


def estimate_tokens(text: str) -> int:
    """An upper estimate of the tokens of ``text``, with no tokenizer: measured against the real
    tokenizers of SmolLM2 and Qwen2.5 it is 1.0-1.6 times the true count for English prose, code,
    JSON and digits, 1.0-3.6 times for Chinese, Japanese, Arabic and emoji; the one case below it is
    German on SmolLM2 (0.92), which the prompt budget's margin covers."""
    count = 0
    for piece in _PIECES.findall(text):
        last = piece[-1]
        if last.isascii() and last.isalpha():
            count += -(-len(piece.lstrip()) // 4)
        elif not last.isascii():
            count += -(-len(piece.encode()) * 2 // 3)
        else:
            count += 1
    return count


def estimate_messages(messages: list[ChatMessage]) -> int:
    """The estimated prompt tokens of ``messages`` once the chat template wraps them (tool calls included)."""
    return (
        sum(
            estimate_tokens(m.get("content") or "")
            + (estimate_tokens(json.dumps(m["tool_calls"])) if m.get("tool_calls") else 0)
            + MESSAGE_OVERHEAD
            for m in messages
        )
        + REPLY_OVERHEAD
    )


_WORDS = re.compile(r"\S+\s*")


class EchoChatModel(ChatModel):
    """Zero-latency, in-process: replies "You said: <text>" token by token, with no I/O."""

    name = "echo"

    def __init__(self) -> None:
        super().__init__(LLMCapabilities(streaming=True, tool_calls=False))

    async def stream(
        self,
        messages: list[ChatMessage],
        model: str | None,
        max_tokens: int,
        tools: list[ToolDefinition] | None = None,
        required_tool: str | None = None,
        allowed: frozenset[str] | None = None,
    ) -> AsyncIterator[Chunk]:
        words = _WORDS.findall("You said: " + messages[-1]["content"])[:max_tokens]
        for word in words:
            yield Chunk(word)
        yield Chunk(
            usage=TokenUsage(
                prompt_tokens=sum(len(m["content"].split()) for m in messages), completion_tokens=len(words)
            )
        )


def build_model(provider: str, **options: Any) -> ChatModel:
    if provider == "echo":
        return EchoChatModel()
    return OpenAIChatModel(**options)
