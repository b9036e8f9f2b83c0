"""Tool calls for the embedded Qwen models, served as OpenAI ``tool_calls`` by our llama-cpp-python launcher.

Measured with bench/tool_calls.py: offered tools, Qwen2.5-Coder-1.5B *means* the right call but
writes it as text in varying shapes (a bare JSON object, a fenced json block, ``<tool_call>`` tags,
once with ``//`` comments inside), often followed by an invented answer, and llama-cpp-python
returns all of it as content. Its chat template (the one in the GGUF) also teaches it a broken
example (``{{"name": ...}}``) and shows earlier calls' arguments as a JSON *string*.

This handler fixes the template, shows arguments as objects, and emulates llama.cpp's lazy
grammar: the reply streams as text until its first characters show a call (``<tool_call>``, ``{``
or a fenced json block); then generation stops and restarts from ``<tool_call>`` with a grammar
that admits exactly one call of an offered tool whose arguments follow that tool's JSON Schema.
The prompt up to there is already evaluated, so the restart costs only the call's tokens. The
call goes out as a streamed ``tool_calls`` delta with finish reason ``tool_calls``. A request whose
``tool_choice`` is ``"required"`` or names a tool starts under that grammar at once. With
``allowed_tools`` (OpenAI's way to narrow the tools of one request without changing the prompt),
a call of a tool that is not allowed is not made: the reply starts again as text, the tokens that
open a call banned (the 1.5B "called" calculate for "how do you say good morning in German?").
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import llama_grammar
from llama_cpp.llama_chat_format import Jinja2ChatFormatter, chat_formatter_to_chat_completion_handler

from contracts.tools import unbounded

# The GGUF template's example call, with the doubled braces that the model then copies.
_BROKEN_EXAMPLE = '{{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}}'
_FIXED_EXAMPLE = '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}'
CALL_START = "<tool_call>\n"


def answer_from_results(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The system message that follows tool results. The template shows them as a user turn: without it
    the model thanks "the user" for them; without the question named, after a long conversation it
    answered an earlier one, or called a correct result an error."""
    question = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), None)
    asked = f' ("{question}")' if isinstance(question, str) and question else ""
    return {
        "role": "system",
        "content": f"The tool results above are not from the user. Answer the user's last question{asked} "
        "with them now, in one or two short sentences. Only if a result says error, tell the user what went "
        "wrong; do not guess.",
    }


MAX_CALL_TOKENS = 256
_CALL_OPENINGS = (b"{", b"<tool_call>", b"<tools>", b"```")  # what a reply that is a call starts with
_STOPS = ["<|im_end|>", "<|endoftext|>"]


def call_intended(text: str, names: frozenset[str] = frozenset()) -> bool | None:
    """True when a reply beginning with ``text`` is a call, False when it is an answer, None: too early
    to say. A reply that is only a tool's name (seen: ``get_time``) is a call once it ends (``ended``)."""
    start = text.lstrip()
    if not start:
        return None
    if any(start.startswith(name + "(") for name in names):  # written as a function call (seen)
        return True
    for opening in ("<tool_call>", "<tools>", "{", *names):
        if start.startswith(opening) and opening not in names:
            return True
        if opening.startswith(start) or start.rstrip() in names:
            return None
    if start.startswith("```"):
        rest = start[3:].lstrip(" ")
        if rest.startswith(("json", "{", "\n{")):
            return True
        return None if rest in ("", "\n", "j", "js", "jso") else False
    return False


def call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema of one call of any of ``tools``: ``{"name": <its name>, "arguments": <its parameters>}``."""
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool["function"]["name"]},
                    "arguments": unbounded(tool["function"].get("parameters") or {"type": "object"}),
                },
                "required": ["name", "arguments"],
            }
            for tool in tools
        ]
    }


def _with_argument_objects(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with its calls' arguments (JSON strings on the wire) as objects, as the template shows them."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function") or {})
        with contextlib.suppress(TypeError, ValueError):  # else shown as it came
            function["arguments"] = json.loads(function.get("arguments") or "{}")
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


class ToolCallingHandler:
    """A llama-cpp-python chat handler (``llama.chat_handler``) for ChatML models with Qwen's tool format."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        template = str(llama.metadata["tokenizer.chat_template"]).replace(_BROKEN_EXAMPLE, _FIXED_EXAMPLE)
        self.formatter: Any = Jinja2ChatFormatter(
            template,
            eos_token=llama._model.token_get_text(llama.token_eos()),
            bos_token=llama._model.token_get_text(llama.token_bos()),
            stop_token_ids=[llama.token_eos()],
        )
        self._plain: Any = chat_formatter_to_chat_completion_handler(self.formatter)
        self._openings: list[int] | None = None

    def __call__(
        self,
        *,
        llama: llama_cpp.Llama,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        stream: bool = False,
        max_tokens: int | None = None,
        **options: Any,
    ) -> Any:
        messages = [_with_argument_objects(dict(m)) for m in messages]
        if messages and messages[-1].get("role") == "tool":
            messages.append(answer_from_results(messages))
        if not tools:
            return self._plain(
                llama=llama, messages=messages, tools=tools, stream=stream, max_tokens=max_tokens, **options
            )
        choice = ToolChoice.of(tools, tool_choice)
        chunks = self._auto(llama, messages, tools, max_tokens, options, choice)
        return chunks if stream else _collected(chunks)

    def _auto(
        self,
        llama: llama_cpp.Llama,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        max_tokens: int | None,
        options: dict[str, Any],
        choice: ToolChoice,
    ) -> Iterator[dict[str, Any]]:
        """The reply as chunks: text, or one call of a tool the choice allows."""
        prompt = self.formatter(messages=messages, tools=tools).prompt
        sampling = {
            k: options[k] for k in ("temperature", "top_p", "top_k", "min_p", "seed") if options.get(k) is not None
        }
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        model = str(options.get("model") or llama.model_path)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": reply_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        yield chunk({"role": "assistant"})
        if choice.required:
            yield from self._emit_call(self._generate_call(llama, prompt, choice.allowed, sampling), chunk)
            return
        names = frozenset(tool["function"]["name"] for tool in tools)
        held, deciding, finish = "", True, "stop"
        completion: Any = llama.create_completion(
            prompt=_tokens(llama, prompt), max_tokens=max_tokens, stop=_STOPS, stream=True, **sampling
        )
        for piece in completion:
            text = piece["choices"][0]["text"]
            finish = piece["choices"][0].get("finish_reason") or finish
            if not deciding:
                if text:
                    yield chunk({"content": text})
                continue
            held += text
            intended = call_intended(held, names)
            if intended is False:
                deciding = False
                yield chunk({"content": held})
            elif intended:
                completion.close()  # stops the text; the state so far is kept
                yield from self._call_or_answer(llama, prompt, tools, choice, sampling, chunk, max_tokens)
                return
        if deciding and held.strip() in names:  # the reply was a tool's name alone
            yield from self._call_or_answer(llama, prompt, tools, choice, sampling, chunk, max_tokens)
            return
        if deciding and held:
            yield chunk({"content": held})
        yield chunk({}, finish)

    def _call_or_answer(
        self,
        llama: llama_cpp.Llama,
        prompt: str,
        tools: list[dict[str, Any]],
        choice: ToolChoice,
        sampling: dict[str, Any],
        chunk: Any,
        max_tokens: int | None,
    ) -> Iterator[dict[str, Any]]:
        """The model means a call: made if the tool it picks (among all offered, as it sees them) is allowed
        this turn; else the reply starts again as text, with the tokens that open a call banned."""
        call = self._generate_call(llama, prompt, tools, sampling)
        if call is None or call["name"] in choice.names:
            yield from self._emit_call(call, chunk)
            return
        completion: Any = llama.create_completion(
            prompt=_tokens(llama, prompt),
            max_tokens=max_tokens,
            stop=_STOPS,
            stream=True,
            logit_bias=dict.fromkeys(self._call_openings(llama), -100.0),
            **sampling,
        )
        finish = "stop"
        for piece in completion:
            finish = piece["choices"][0].get("finish_reason") or finish
            if text := piece["choices"][0]["text"]:
                yield chunk({"content": text})
        yield chunk({}, finish)

    def _call_openings(self, llama: llama_cpp.Llama) -> list[int]:
        """Token ids whose text opens a call (``{``, ``<tool_call>``, a code fence): found once per model."""
        if self._openings is None:
            self._openings = [
                token
                for token in range(llama.n_vocab())
                if llama.detokenize([token], special=True).lstrip().startswith(_CALL_OPENINGS)
            ]
        return self._openings

    def _generate_call(
        self, llama: llama_cpp.Llama, prompt: str, tools: list[dict[str, Any]], sampling: dict[str, Any]
    ) -> dict[str, Any] | None:
        """One call of one of ``tools`` under their grammar; None when it ran past MAX_CALL_TOKENS."""
        grammar = llama_grammar.LlamaGrammar.from_json_schema(json.dumps(call_schema(tools)), verbose=False)
        result: Any = llama.create_completion(
            prompt=_tokens(llama, prompt + CALL_START),
            max_tokens=MAX_CALL_TOKENS,
            grammar=grammar,
            stop=_STOPS,
            stream=False,
            **sampling,
        )
        text = result["choices"][0]["text"]
        try:
            call: dict[str, Any] = json.loads(text)
        except ValueError:  # cut at MAX_CALL_TOKENS
            return None
        return call

    @staticmethod
    def _emit_call(call: dict[str, Any] | None, chunk: Any) -> Iterator[dict[str, Any]]:
        if call is None:  # cut: say so; the orchestrator's text parser refuses an unfinished call
            yield chunk({"content": CALL_START})
            yield chunk({}, "length")
            return
        function = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
        delta = {
            "tool_calls": [
                {"index": 0, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": function}
            ]
        }
        yield chunk(delta)
        yield chunk({}, "tool_calls")


# llama-cpp-python 0.3.36's request model predates OpenAI's ``allowed_tools`` (HTTP 422): our server
# (ops/llama_cpp_serve.py) passes it to this handler as a named choice under this prefix.
ALLOWED_PREFIX = "sb-allowed-tools:"


def pass_allowed_tools(body: bytes, handled: bool) -> bytes:
    """A chat request's body with an ``allowed_tools`` choice the server accepts: for this handler
    (``handled``), a named choice under ALLOWED_PREFIX; for another, ``auto`` (every tool allowed)."""
    try:
        request = json.loads(body)
    except ValueError:
        return body  # the server refuses it as it is
    choice = request.get("tool_choice") if isinstance(request, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "allowed_tools"):
        return body
    spec = json.dumps(choice.get("allowed_tools") or {})
    request["tool_choice"] = {"type": "function", "function": {"name": ALLOWED_PREFIX + spec}} if handled else "auto"
    return json.dumps(request).encode()


@dataclass(frozen=True)
class ToolChoice:
    """OpenAI's ``tool_choice``: which of the offered tools the reply may call, and whether it must."""

    allowed: list[dict[str, Any]]
    required: bool = False

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool["function"]["name"] for tool in self.allowed)

    @classmethod
    def of(cls, tools: list[dict[str, Any]], tool_choice: Any) -> ToolChoice:
        """``"auto"`` (or None), ``"none"``, ``"required"``, a named function (``{"type": "function", "function":
        {"name": ...}}``: that call is required), or ``{"type": "allowed_tools", "allowed_tools": {"mode":
        "auto" | "required", "tools": [{"type": "function", "function": {"name": ...}}, ...]}}``: the
        model still sees every tool (the prompt, and its cache, stay the same) but may call only those.
        A name that is not offered is refused, as OpenAI does."""
        if tool_choice in (None, "auto"):
            return cls(tools)
        if tool_choice == "none":  # the tools stay in the prompt (and its cache); a call is answered in words
            return cls([])
        if tool_choice == "required":
            return cls(tools, required=True)
        if not isinstance(tool_choice, dict):
            raise ValueError(f"tool_choice {tool_choice!r} is not auto, required, none or an object")
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") == "allowed_tools" or str(name).startswith(ALLOWED_PREFIX):
            spec = tool_choice.get("allowed_tools") or json.loads(str(name).removeprefix(ALLOWED_PREFIX))
            names = [(item.get("function") or {}).get("name") for item in spec.get("tools") or []]
            return cls(_offered(tools, names), required=spec.get("mode") == "required")
        return cls(_offered(tools, [name]), required=True)


def _offered(tools: list[dict[str, Any]], names: list[Any]) -> list[dict[str, Any]]:
    by_name = {tool["function"]["name"]: tool for tool in tools}
    if missing := [name for name in names if name not in by_name]:
        raise ValueError(f"tool_choice names {missing}, which are not among the tools offered")
    return [by_name[name] for name in names]


def _tokens(llama: llama_cpp.Llama, prompt: str) -> list[int]:
    return llama.tokenize(prompt.encode(), add_bos=False, special=True)


def _collected(chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The whole reply of a non-streamed request, from the chunks."""
    content, finish, first = "", "stop", None
    calls: list[dict[str, Any]] = []
    for piece in chunks:
        first = first or piece
        choice = piece["choices"][0]
        content += choice["delta"].get("content") or ""
        calls.extend(choice["delta"].get("tool_calls") or [])
        finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    assert first is not None
    return {
        "id": first["id"],
        "object": "chat.completion",
        "created": first["created"],
        "model": first["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def install(llama: llama_cpp.Llama) -> bool:
    """Serve ``llama``'s chats through ToolCallingHandler when its template speaks Qwen's tool format."""
    template = str(llama.metadata.get("tokenizer.chat_template", ""))
    if "<tool_call>" not in template or "<|im_start|>" not in template:
        return False
    llama.chat_handler = ToolCallingHandler(llama)  # type: ignore[assignment]
    return True
