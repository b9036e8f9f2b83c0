"""Settings from environment variables with the ``SB_`` prefix, validated at start-up."""

from __future__ import annotations

import sys
from typing import Literal, NoReturn, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SB_"


class RuntimeSettings(BaseSettings):
    """What every process reads. Each worker subclasses it with its own fields (same prefix)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="One or more NATS URLs, comma-separated")
    nats_user: str | None = Field(default=None, description="NATS user (with SB_NATS_PASSWORD)")
    nats_password: SecretStr | None = Field(default=None, description="NATS password (never logged)")
    nats_creds: str | None = Field(default=None, description="Path to a NATS .creds file")
    subject_prefix: str = Field(
        default="sb", pattern=r"^[a-z][a-z0-9_-]*$", description="First token of every subject; replays use another"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log threshold")
    log_format: Literal["auto", "json", "pretty"] = Field(
        default="auto", description="auto: pretty in a terminal, JSON otherwise"
    )
    connect_timeout_s: float = Field(default=30.0, gt=0, description="How long to keep trying NATS at start-up")
    shutdown_timeout_s: float = Field(default=10.0, gt=0, description="Grace for in-flight work on stop")
    max_deliver: int = Field(default=5, ge=1, le=100, description="Deliveries before a message is dead-lettered")
    metrics_port: int = Field(
        default=0, ge=0, le=65_535, description="Port of the Prometheus scrape endpoint (/metrics); 0: none"
    )

    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]


class LLMSettings(RuntimeSettings):
    """For workers that call an OpenAI-compatible LLM (the ``SB_LLM_*`` variables mean the same everywhere)."""

    llm_base_url: str = Field(default="http://127.0.0.1:8089/v1", description="OpenAI-compatible base URL")
    llm_api_key: SecretStr = Field(default=SecretStr("local"), description="API key for the LLM server")
    llm_model: str = Field(default="smollm2-135m-instruct", description="Default model of every agent")
    llm_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of an LLM request (between bytes when streaming)"
    )


SettingsT = TypeVar("SettingsT", bound=RuntimeSettings)


def describe_error(error: ValidationError, settings_cls: type[RuntimeSettings]) -> str:
    """One line naming each bad variable, e.g. ``SB_LOG_LEVEL='loud': Input should be ...``."""
    prefix = settings_cls.model_config.get("env_prefix", ENV_PREFIX)
    parts = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}{field.upper()}={err.get('input')!r}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)


def load_settings(settings_cls: type[SettingsT]) -> SettingsT:
    """Read settings from the environment; a bad value stops the process with one clear line."""
    try:
        return settings_cls()
    except ValidationError as error:
        _die(describe_error(error, settings_cls))


def _die(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)
