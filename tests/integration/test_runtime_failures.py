"""Start-up failures of the runtime: each gives one clear message, never a traceback wall."""

from __future__ import annotations

import subprocess
import sys

import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy, RetentionPolicy, StreamConfig

from contracts.streams import EVENTS, STREAMS, ConsumerSpec
from ops.servers import free_port
from workers.runtime.provision import StreamConflictError, provision, stream_config
from workers.runtime.settings import RuntimeSettings
from workers.runtime.worker import StartupError, connect_nats

STATUS = [sys.executable, "-m", "ops.cli", "status"]


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env}, check=False
    )


def test_bad_setting_stops_the_process_with_one_line_naming_the_variable() -> None:
    result = run(STATUS, SB_LOG_LEVEL="loud", SB_CONNECT_TIMEOUT_S="-1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SB_LOG_LEVEL='loud'" in lines[0] and "SB_CONNECT_TIMEOUT_S='-1'" in lines[0]


@pytest.mark.parametrize("keys", ["not-json-sk-live-abcdef123456", '[1, {"k": "sk-live-abcdef123456"}]'])
def test_a_bad_secret_setting_is_named_but_never_shown(keys: str) -> None:
    result = run([sys.executable, "-m", "edge"], SB_EDGE_API_KEYS=keys, SB_NATS_PASSWORD="")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SB_EDGE_API_KEYS" in lines[0], result.stderr
    assert "sk-live-abcdef123456" not in result.stderr + result.stdout


def test_unreachable_nats_gives_a_clear_error() -> None:
    result = run(STATUS, SB_NATS_URL=f"nats://127.0.0.1:{free_port()}", SB_CONNECT_TIMEOUT_S="1")
    assert result.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


async def test_connect_gives_up_after_the_configured_time() -> None:
    settings = RuntimeSettings(nats_url=f"nats://127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    with pytest.raises(StartupError, match="SB_NATS_URL"):
        await connect_nats(settings, "test")


async def test_provisioning_is_idempotent_and_updates_limits(nc: Client) -> None:
    js = nc.jetstream()
    await provision(js, STREAMS, prefix="idem")
    await provision(js, STREAMS, prefix="idem")
    name = stream_config(EVENTS, "idem").name
    assert name
    await provision(js, STREAMS, prefix="idem", max_age_overrides={EVENTS.name: 60.0})
    assert (await js.stream_info(name)).config.max_age == 60.0


async def test_stream_with_incompatible_config_is_refused_clearly(nc: Client) -> None:
    js = nc.jetstream()
    config = stream_config(EVENTS, "conflict")
    config.retention = RetentionPolicy.INTEREST
    await js.add_stream(StreamConfig.from_response(config.as_dict()))
    with pytest.raises(StreamConflictError, match="retention=interest but contracts declare retention=limits"):
        await provision(js, (EVENTS,), prefix="conflict")


async def test_a_consumer_keeps_its_start_when_its_declared_start_changes(nc: Client) -> None:
    """NATS cannot change where an existing consumer starts (error 10012): a new release that declares another
    start for it still provisions, and the consumer keeps its own."""
    prefix = "redeploy"
    before = ConsumerSpec(
        durable="redeploy-test",
        stream=EVENTS.name,
        filter_subjects=("sb.ev.*.turn.user",),
        description="test consumer",
        deliver="all",
    )
    await provision(nc.jetstream(), STREAMS, (before,), prefix)
    await provision(nc.jetstream(), STREAMS, (before.model_copy(update={"deliver": "new", "ack_wait_s": 7.0}),), prefix)
    info = await nc.jetstream().consumer_info(f"{EVENTS.name}_{prefix.upper()}", "redeploy-test")
    assert info.config.deliver_policy == DeliverPolicy.ALL and info.config.ack_wait == 7.0
