"""Bounded work per reply whatever its text (issue 16): the real piper voice, in a child process.

Each adversarial reply is spoken by tests/support/voice_probe.py the way the voice worker speaks it
(Chunker, speakable, one SpeechStream of the default piper voice) until ``AUDIO_S`` of speech came
(or it ended, or ``DEADLINE_S`` passed); then the parent stops the child and reads its peak RSS
with ``os.wait4``. A synthesis call is measured in CPU seconds between two pieces of audio (a call
nothing can stop once started; wall time depends on what else the machine runs).
Before the fix, 290 IPA letters were one piper call of 1,344 phonemes: +1.48 GB, 19 s of CPU.
"""

from __future__ import annotations

import os
import queue
import random
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from workers.voice.providers.piper_tts import MAX_PHONEMES, phoneme_pieces

ROOT = Path(__file__).resolve().parents[2]
AUDIO_S = 12.0  # of speech per reply: two calls or more, enough to show the bound
DEADLINE_S = 30.0  # after the voice is ready: a call that takes longer is far beyond the bound anyway
MAX_GROWTH_MB = 300  # peak RSS over the loaded, warmed-up voice
MAX_CALL_CPU_S = 5.0  # one call of MAX_PHONEMES phonemes: ~1.7 s here

IPA = "ɐɑɒɓɔɕɖɗɘəɚɛɜɝɞɟɠɡɢɣɤɥɦɧɨɩɪɫɬɭɮɯɰɱɲɳɴɵɶɷɸɹɺɻɼɽɾɿʀʁʂʃʄʅʆʇʈʉʊʋʌʍʎʏʐʑʒʓʔʕʖʗʘʙʚʛʜʝʞʟʠʡʢʣʤʥʦʧʨʩʪʫʬʭʮʯ"
MIX = ("مرحبا بكم في بيتنا שלום עולם ומה שלומך 你好世界。欢迎光临。😀🎉👍🏽 ") * 5
WORD = "".join(random.Random(16).choices(string.ascii_letters + string.digits, k=2_000))


@dataclass
class Spoken:
    grew_mb: float
    longest_call_cpu_s: float
    audio_s: float
    finished: bool


def speak_in_a_child(text: str, any_script: bool = False) -> Spoken:
    args = [sys.executable, "-m", "tests.support.voice_probe"] + (["--any-script"] if any_script else [])
    child = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.strip())
        lines.put("eof")

    threading.Thread(target=read, daemon=True).start()
    assert child.stdin is not None
    child.stdin.write(text)
    child.stdin.close()
    try:
        ready = lines.get(timeout=120).split()
        assert ready[0] == "ready", ready
        base_kb, cpu = int(ready[1]), float(ready[2])
        deadline = time.monotonic() + DEADLINE_S
        longest, audio_s, finished = 0.0, 0.0, False
        while not finished and audio_s < AUDIO_S and (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left).split()
            except queue.Empty:
                break
            finished = line[0] in ("done", "eof")
            if line[0] == "audio":
                audio_s += float(line[1])
                longest, cpu = max(longest, float(line[2]) - cpu), float(line[2])
    finally:
        child.kill()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if not finished:
        longest = max(longest, usage.ru_utime + usage.ru_stime - cpu)  # the call that was running
    return Spoken((usage.ru_maxrss - base_kb) / 1024, longest, audio_s, finished)


pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("text", "any_script", "speaks"),
    [
        pytest.param((IPA * 4)[:290], False, True, id="290 IPA letters"),
        pytest.param(MIX[:290], False, False, id="290 chars of Arabic, Hebrew, CJK and emoji"),
        pytest.param(MIX[:290], True, True, id="the same read by a voice said to read every script"),
        pytest.param(WORD, False, True, id="a 2,000-character word"),
    ],
)
def test_the_voice_memory_and_the_time_of_one_call_are_bounded_whatever_the_text(
    text: str, any_script: bool, speaks: bool
) -> None:
    spoken = speak_in_a_child(text, any_script)
    assert spoken.grew_mb < MAX_GROWTH_MB, spoken
    assert spoken.longest_call_cpu_s < MAX_CALL_CPU_S, spoken
    assert (spoken.audio_s > 0) is speaks, spoken
    assert spoken.finished or speaks, spoken  # nothing to say: it ends at once


def test_a_sentence_is_cut_into_pieces_of_bounded_phonemes_at_clauses_then_words() -> None:
    words = list("the quick brown fox, jumps over the lazy dog")  # phonemes: one character each
    assert phoneme_pieces(words, 1_000) == [words]
    pieces = phoneme_pieces(words, 30)
    assert ["".join(p) for p in pieces] == ["the quick brown fox,", "jumps over the lazy dog"]
    spaced = phoneme_pieces(list("ab cd ef gh ij"), 6)
    assert ["".join(p) for p in spaced] == ["ab cd", "ef gh", "ij"]
    unbroken = list("x" * (2 * MAX_PHONEMES + 7))
    assert [len(p) for p in phoneme_pieces(unbroken, MAX_PHONEMES)] == [MAX_PHONEMES, MAX_PHONEMES, 7]
    assert phoneme_pieces([], 10) == []
