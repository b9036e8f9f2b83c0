"""`python -m edge`: serve the edge with uvicorn."""

from __future__ import annotations

import uvicorn

from workers.runtime.logging import configure_logging
from workers.runtime.settings import load_settings

from .app import create_app
from .settings import EdgeSettings


def main() -> None:
    settings = load_settings(EdgeSettings)
    configure_logging(settings.log_level, settings.log_format, process="edge")
    hard_limit = 4 * max(settings.max_text_frame_bytes, settings.max_binary_frame_bytes)
    uvicorn.run(create_app(settings), host=settings.edge_host, port=settings.edge_port, log_level="warning",
                access_log=False, ws_max_size=hard_limit, timeout_graceful_shutdown=5,
                ws_per_message_deflate=False)  # measured: ~41 KB per socket and CPU on every frame


main()
