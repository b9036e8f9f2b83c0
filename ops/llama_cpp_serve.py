"""llama-cpp-python's OpenAI-compatible server, plus ``GET /props`` that reports its context window.

Same arguments as ``python -m llama_cpp.server``. llama.cpp's own ``llama-server`` answers
``GET /props`` with ``default_generation_settings.n_ctx`` (and ``/v1/models`` with
``meta.n_ctx_train``); llama-cpp-python's server reports its window nowhere, so a prompt longer
than the window fails inside the stream and reaches the client as an empty reply. This module
adds the same ``/props`` shape, so the orchestrator budgets every prompt to the window of
either server in one way (workers/orchestrator/llm.py).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from llama_cpp.server.app import create_app
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.llama_cpp_serve")
    add_args_from_model(parser, Settings)
    args = parser.parse_args()
    server_settings = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model_settings = cast(ModelSettings, parse_model_from_args(ModelSettings, args))
    app: FastAPI = create_app(server_settings=server_settings, model_settings=[model_settings])

    @app.get("/props")
    def props() -> dict[str, Any]:
        return {
            "model_alias": model_settings.model_alias or model_settings.model,
            "total_slots": 1,
            "default_generation_settings": {"n_ctx": model_settings.n_ctx},
        }

    uvicorn.run(
        app,
        host=os.getenv("HOST", server_settings.host),
        port=int(os.getenv("PORT", str(server_settings.port))),
    )


if __name__ == "__main__":
    main()
