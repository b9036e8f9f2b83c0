"""structlog for every process: JSON when not a terminal, pretty in one; context vars bound."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = ("password", "secret", "token", "api_key", "authorization")


def _flatten_extra(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # FastStream passes its log context as `extra=`; lift it to top-level keys.
    extra = event.pop("extra", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            if value not in ("", None):
                event.setdefault(key, value)
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Belt and braces: no secret reaches a log line even if someone logs a settings object.
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure_logging(level: str = "info", fmt: str = "auto", process: str | None = None) -> None:
    pretty = fmt == "pretty" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _flatten_extra,
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    if process:
        structlog.contextvars.bind_contextvars(process=process)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
