"""espeak-ng (formant synthesis, robotic, no weights) through an asyncio subprocess per unit.

Voices are the languages ``espeak-ng --voices`` lists (``en-us``, ``en-gb``, ...), optionally
with a variant (``en-us+f3``). Cancelling kills the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace

from .base import LATIN, Audio, ProviderError, TTSCapabilities, TTSProvider

_WAV_HEADER = 44  # espeak-ng --stdout writes a canonical RIFF header, then PCM16 mono
_READ = 8_192


def find_espeak() -> str | None:
    return shutil.which("espeak-ng")


class EspeakProvider(TTSProvider):
    name = "espeak"

    def __init__(self, exe: str, default_voice: str = "en-us") -> None:
        # Audio is read from the process while it speaks; the rate is in each unit's WAV header (voices differ).
        super().__init__(TTSCapabilities(streaming=True, sample_rate=None, scripts=LATIN), default_voice)
        self._exe = exe

    def has_voice(self, voice: str) -> bool:
        return voice.split("+", 1)[0] in self.voices()

    async def start(self) -> None:
        process = await asyncio.create_subprocess_exec(self._exe, "--voices", stdout=subprocess.PIPE)
        listing, _ = await process.communicate()
        # "Pty Language Age/Gender VoiceName File Other": the second column is what -v takes.
        voices = frozenset(line.split()[1] for line in listing.decode().splitlines()[1:] if line.split())
        self.capabilities = replace(self.capabilities, voices=voices)
        if not self.has_voice(self.default_voice):
            raise ProviderError("tts_unavailable", f"espeak-ng has no voice {self.default_voice!r}")

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[Audio]:
        if not self.has_voice(voice):
            raise ProviderError("tts_unknown_voice", f"espeak-ng has no voice {voice!r}")
        process = await asyncio.create_subprocess_exec(
            self._exe,
            "-v",
            voice,
            "--stdout",
            "--",
            text,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            header = await process.stdout.readexactly(_WAV_HEADER)
            rate = struct.unpack_from("<I", header, 24)[0]
            while chunk := await process.stdout.read(_READ):
                yield Audio(chunk, rate)
            if await process.wait() != 0:
                raise ProviderError("tts_failed", f"espeak-ng exited with {process.returncode}")
        except asyncio.IncompleteReadError:
            await process.wait()
            raise ProviderError("tts_failed", f"espeak-ng wrote no audio (exit {process.returncode})") from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
