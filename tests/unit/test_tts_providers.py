"""The text-to-speech providers behind one interface: piper and espeak-ng for real, OpenAI over real HTTP
against the scripted server's /v1/audio/speech."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.support.scripted_llm import ScriptedLLM
from workers.voice.providers import available
from workers.voice.providers.base import Audio, ProviderError, SpeechStream, TTSProvider
from workers.voice.providers.espeak import EspeakProvider, find_espeak
from workers.voice.providers.openai_tts import OpenAIProvider
from workers.voice.providers.piper_tts import PiperProvider

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


@pytest.fixture(scope="module")
async def providers(pool: ThreadPoolExecutor, llm: ScriptedLLM) -> AsyncIterator[dict[str, TTSProvider]]:
    found = available(pool, None, llm.base_url, "test", "gpt-4o-mini-tts", 5.0)
    for provider in found.values():
        await provider.start()
    yield found
    for provider in found.values():
        await provider.close()


async def collect(stream: SpeechStream) -> list[Audio]:
    return [audio async for audio in stream]


def say(provider: TTSProvider, *units: str, voice: str | None = None) -> SpeechStream:
    stream = provider.stream(voice or provider.default_voice)
    for unit in units:
        stream.feed(unit)
    stream.end()
    return stream


def test_every_provider_of_this_machine_is_offered(providers: dict[str, TTSProvider]) -> None:
    assert set(providers) == {"piper", "espeak", "openai"}  # espeak-ng is installed by infra/setup.sh
    assert "en_US-joe-medium" in providers["piper"].voices()
    assert providers["espeak"].has_voice("en-us") and providers["espeak"].has_voice("en-gb+f3")


@pytest.mark.parametrize(
    ("name", "rate", "streaming"), [("piper", 22_050, False), ("espeak", 22_050, True), ("openai", 24_000, True)]
)
async def test_a_stream_speaks_every_unit_fed(
    providers: dict[str, TTSProvider], name: str, rate: int, streaming: bool
) -> None:
    declared = providers[name].capabilities
    assert declared.streaming is streaming and declared.sample_rate in (None, rate)
    units = ("Good morning.", "The meeting starts at ten, in the blue room.")
    audio = await collect(say(providers[name], *units))
    assert {a.sample_rate for a in audio} == {rate}
    samples = np.frombuffer(b"".join(a.pcm for a in audio), dtype="<i2")
    seconds = len(samples) / rate
    chars = sum(len(u) for u in units)
    assert chars / 30 < seconds < chars / 6, seconds
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 300
    one = await collect(say(providers[name], units[0]))
    assert sum(len(a.pcm) for a in one) < len(samples) * 2  # the first unit alone is shorter
    assert (len(one) > 1) is streaming  # a streaming provider yields a unit's audio in pieces, the others at once


@pytest.mark.parametrize(
    ("name", "code"), [("piper", "tts_unknown_voice"), ("espeak", "tts_unknown_voice"), ("openai", "tts_rejected")]
)
async def test_an_unknown_voice_fails_the_stream_with_a_code(
    providers: dict[str, TTSProvider], name: str, code: str
) -> None:
    assert not providers[name].has_voice("no-such-voice")
    with pytest.raises(ProviderError) as failed:
        await collect(say(providers[name], "Hello.", voice="no-such-voice"))
    assert failed.value.code == code


@pytest.mark.parametrize(
    ("script", "code", "audio"),
    [
        ({"status": 500}, "tts_failed", False),
        ({"status": 429}, "tts_rejected", False),
        ({"disconnect": True}, "tts_failed", True),
    ],
)
async def test_openai_failures_become_provider_errors(
    providers: dict[str, TTSProvider], llm: ScriptedLLM, script: dict[str, object], code: str, audio: bool
) -> None:
    llm.script_speech(**script)  # type: ignore[arg-type]
    got: list[Audio] = []
    with pytest.raises(ProviderError) as failed:
        async for chunk in say(providers["openai"], "This sentence is long enough to be cut in the middle."):
            got.append(chunk)
    assert failed.value.code == code and bool(got) == audio


async def test_cancel_stops_a_stream_at_once(providers: dict[str, TTSProvider], llm: ScriptedLLM) -> None:
    llm.script_speech(delay_ms=100)  # 50 chunks of 100 ms: five seconds to send it all
    stream = say(providers["openai"], "x" * 80)
    first = await anext(aiter(stream))
    started = time.monotonic()
    await stream.cancel()
    assert first.pcm and time.monotonic() - started < 1.0
    espeak = say(providers["espeak"], "A long text to speak. " * 50)
    await anext(aiter(espeak))
    await espeak.cancel()  # kills the process: nothing is left running
    assert not [p for p in asyncio.all_tasks() if p.get_name().startswith("tts-") and not p.done()]


async def test_piper_never_blocks_the_event_loop(providers: dict[str, TTSProvider]) -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    await collect(
        say(
            providers["piper"],
            "This is a long sentence that keeps piper busy for a good while, "
            "so that a blocked event loop would show as one long gap.",
        )
    )
    took = time.monotonic() - started
    ticker.cancel()
    # Blocked, the loop would not tick at all while piper runs; free, it ticks all along.
    assert max(gaps) < took / 3, (max(gaps), took)


async def test_a_default_voice_that_is_missing_stops_the_start(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(ProviderError, match="not installed"):
        await PiperProvider(pool, default_voice="xx_XX-nobody-low").start()
    exe = find_espeak()
    assert exe is not None
    with pytest.raises(ProviderError, match="no voice"):
        await EspeakProvider(exe, default_voice="klingon").start()
    assert OpenAIProvider("http://127.0.0.1:9/v1", "k", "m", 1.0).has_voice("alloy")
