"""Edge settings (same ``SB_`` prefix as every process)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from contracts.owners import TENANT_PATTERN
from workers.runtime import RuntimeSettings

_TENANT = re.compile(TENANT_PATTERN)


def api_key_entry(entry: str) -> tuple[str | None, str]:
    """``(tenant, key)`` of one SB_EDGE_API_KEYS entry: ``TENANT=KEY``, or a bare ``KEY`` (no tenant).

    The tenant ends at the first ``=``; ``=`` only at the end of an entry is a bare key's own (base64
    padding), so keys that worked before tenants still do. ValueError never quotes the entry: any
    part of it may be a key."""
    if not entry:
        raise ValueError("is empty")
    if "=" not in entry.rstrip("="):
        if _TENANT.match(entry.rstrip("=")) and entry.endswith("="):
            raise ValueError("names a tenant but has no key after its '='")
        return None, entry
    tenant, key = entry.split("=", 1)
    if not _TENANT.match(tenant):
        raise ValueError(
            "has no tenant name before its first '=' (a tenant is 1-32 lowercase letters, digits or '-', "
            "starting with a letter or digit)"
        )
    return tenant, key


class EdgeSettings(RuntimeSettings):
    edge_host: str = Field(default="127.0.0.1", description="Interface the edge listens on")
    edge_port: int = Field(default=8080, ge=0, le=65_535)
    edge_secret: SecretStr | None = Field(
        default=None, description="HMAC secret for session tokens; unset: a development secret in .run/"
    )
    edge_api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="JSON list; when set, POST /v1/sessions needs one as a Bearer token. An entry TENANT=KEY "
        "names the key's tenant (its sessions share knowledge bases and videos); a bare KEY has none",
    )
    token_ttl_s: float = Field(default=3_600.0, gt=0, description="Lifetime of a session token")
    hello_timeout_s: float = Field(default=5.0, gt=0, description="Time a socket has to send its hello")
    max_text_frame_bytes: int = Field(default=16_384, ge=256)
    max_binary_frame_bytes: int = Field(default=65_536, ge=1_024)
    text_frames_per_s: float = Field(default=20.0, gt=0, description="Sustained rate of text commands")
    binary_frames_per_s: float = Field(default=100.0, gt=0, description="Sustained rate of media frames")
    burst_s: float = Field(default=2.0, gt=0, description="Rate-limit bucket size, in seconds of rate")
    max_violations: int = Field(default=10, ge=1, description="Refused frames before the socket is closed")
    max_sockets_per_session: int = Field(default=2, ge=1)
    edge_max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Largest document upload (bytes)")
    edge_turn_accept_s: float = Field(
        default=15.0,  # a 3-node cluster that lost a stream's leader took ~7 s to store again here
        gt=0,
        description="How long a typed turn is retried until the bus has stored it; then the client is told "
        "`unavailable` and may send it again",
    )
    edge_stored_bytes_per_owner: int = Field(
        default=1024**3,
        ge=1,
        description="Bytes a session (or its tenant) may hold in the object stores at once (uploads waiting "
        "for their job, keyframes); past it an upload gets 413",
    )
    edge_uploads_per_min: float = Field(
        default=12.0, gt=0, description="Uploads (documents and videos) a session may start per minute; then 429"
    )
    edge_operator_token: SecretStr | None = Field(
        default=None, description="Operators' token for the dashboard and metrics under /ops; unset: /ops is off"
    )
    outbound_queue: int = Field(default=512, ge=8, description="Events buffered per socket for a slow client")
    edge_video_max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1_024, description="Largest video upload accepted (POST /v1/videos)"
    )
    video_frames_per_s: float = Field(default=2.0, gt=0, description="Camera frames a socket may send per second")

    @field_validator("edge_api_keys")
    @classmethod
    def _tenant_keys(cls, entries: list[SecretStr]) -> list[SecretStr]:
        tenants: dict[str, str | None] = {}
        for number, entry in enumerate(entries, 1):
            try:
                tenant, key = api_key_entry(entry.get_secret_value())
            except ValueError as error:
                raise ValueError(f"entry {number} {error}") from None
            if key in tenants and tenants[key] != tenant:
                raise ValueError(f"entry {number} repeats an earlier entry's key for another tenant")
            tenants[key] = tenant
        return entries

    def api_key_tenants(self) -> dict[str, str | None]:
        """Each API key and the tenant it names (None: a bare key)."""
        pairs = (api_key_entry(entry.get_secret_value()) for entry in self.edge_api_keys)
        return {key: tenant for tenant, key in pairs}
