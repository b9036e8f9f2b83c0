"""`python -m edge`: serve the edge with uvicorn."""

from __future__ import annotations

import uvicorn

from workers.runtime.logging import configure_logging
from workers.runtime.settings import load_settings

from .app import server_config
from .settings import EdgeSettings


def main() -> None:
    settings = load_settings(EdgeSettings)
    configure_logging(settings.log_level, settings.log_format, process="edge")
    uvicorn.Server(server_config(settings)).run()


if __name__ == "__main__":
    main()
