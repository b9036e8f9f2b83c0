"""A child process that speaks one reply with the real piper voice, the way the voice worker does.

``python -m tests.support.voice_probe [--any-script]`` reads the reply from stdin, loads and warms
up the default piper voice (``PiperProvider.start``), prints ``ready <peak RSS in KiB> <CPU s>``, then
cuts the text with the worker's :class:`~workers.voice.text.Chunker` and
:func:`~workers.voice.text.speakable` (the voice's scripts, or any script with ``--any-script``),
feeds it to one :class:`~workers.voice.providers.base.SpeechStream` and prints
``audio <seconds of audio> <CPU s>`` for each piece of audio as it comes, then ``done`` (CPU s:
the process's CPU time so far, which a loaded machine does not inflate as it does wall time). The parent reads the
child's peak RSS with ``os.wait4`` (tests/unit/test_voice_bounds.py), also when it had to kill it.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from workers.voice.core import SpeechConfig
from workers.voice.providers.piper_tts import PiperProvider
from workers.voice.text import Chunker, speakable


def say(line: str) -> None:
    print(line, flush=True)


async def speak(text: str, any_script: bool) -> None:
    with ThreadPoolExecutor(2, thread_name_prefix="piper") as pool:  # as the worker's default tts_threads
        provider = PiperProvider(pool)
        await provider.start()
        say(f"ready {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {time.process_time():.3f}")
        config = SpeechConfig()
        chunker = Chunker(config.first_words, config.max_unit_chars)
        scripts = None if any_script else provider.capabilities.scripts
        stream = provider.stream(provider.default_voice)
        for unit in chunker.feed(text) + chunker.flush():
            if said := speakable(unit, scripts):
                stream.feed(said)
        stream.end()
        async for audio in stream:
            say(f"audio {len(audio.pcm) / 2 / audio.sample_rate:.3f} {time.process_time():.3f}")
        say("done")


if __name__ == "__main__":
    asyncio.run(speak(sys.stdin.read(), "--any-script" in sys.argv[1:]))
