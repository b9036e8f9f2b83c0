"""Settings from environment variables with the ``SB_`` prefix, validated at start-up."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal, NoReturn, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

ENV_PREFIX = "SB_"


class RuntimeSettings(BaseSettings):
    """What every process reads. Each worker subclasses it with its own fields (same prefix)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="One or more NATS URLs, comma-separated")
    nats_user: str | None = Field(default=None, description="NATS user (with SB_NATS_PASSWORD)")
    nats_password: SecretStr | None = Field(default=None, description="NATS password (never logged)")
    nats_creds: str | None = Field(default=None, description="Path to a NATS .creds file")
    nats_users_file: Path | None = Field(
        default=None,
        description="JSON file of NATS passwords by user (`just up` writes one): a service connects as the "
        "user of its name, operators' tools as `ops`; SB_NATS_USER wins",
    )
    subject_prefix: str = Field(
        default="sb", pattern=r"^[a-z][a-z0-9_-]*$", description="First token of every subject; replays use another"
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Most copies of a JetStream stream: 1 on one server, 3 in a 3-node cluster (what must "
        "survive a node then does; raw audio keeps one)",
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
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the Prometheus endpoint listens on (0.0.0.0 exposes it to the network)",
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
    """One line naming each bad variable, e.g. ``SB_LOG_LEVEL='loud': Input should be ...``; the value of
    a secret (keys, passwords, tokens) is never shown."""
    prefix = settings_cls.model_config.get("env_prefix", ENV_PREFIX)
    parts = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"])
        shown = (
            "<hidden>" if is_secret(settings_cls, str(err["loc"][0]) if err["loc"] else "") else repr(err.get("input"))
        )
        parts.append(f"{prefix}{field.upper()}={shown}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)


_SECRET_WORDS = ("key", "secret", "password", "token", "creds")


def is_secret(settings_cls: type[RuntimeSettings], name: str) -> bool:
    info = settings_cls.model_fields.get(name)
    annotation = repr(info.annotation) if info is not None else ""
    return "SecretStr" in annotation or any(word in name for word in _SECRET_WORDS)


def load_settings(settings_cls: type[SettingsT]) -> SettingsT:
    """Read settings from the environment; a bad value stops the process with one clear line."""
    try:
        return settings_cls()
    except ValidationError as error:
        _die(describe_error(error, settings_cls))
    except SettingsError as error:  # a value that must be JSON is not
        field = re.search(r'field "(\w+)"', str(error))
        prefix = settings_cls.model_config.get("env_prefix", ENV_PREFIX)
        name = f"{prefix}{field.group(1).upper()}" if field else "a variable"
        _die(f'invalid configuration: {name} is not valid JSON (e.g. ["first", "second"] for a list)')


def _die(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)
