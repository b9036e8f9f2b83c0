"""Smart Turn v3.2 on this machine: latency of one prediction, and what it says on real speech.

    .venv/bin/python -m bench.smart_turn_bench [--runs 50] [--threads 1]

Audio: complete sentences and the same sentences cut mid-phrase, spoken by piper (en_US-joe,
deterministic) and espeak-ng, 16 kHz, as the transcriber hands them to the model: the turn from
0.3 s before the speech to the frame where the VAD (silero, ``min_silence_ms=160``) says speech
stopped. Reports (a) per-prediction wall time (log-mel front end + ONNX inference, one
onnxruntime thread by default), p50/p95 over ``--runs`` predictions cycling through the clips,
and the front end alone; (b) the model's probability per clip; (c) for the complete clips, the
turn decision after the true end of speech (last sample above 0.01 full scale) under
``turn_policy=smart_turn`` and ``silence`` (the endpoint's defaults), on the audio clock, and
for smart_turn the wall-clock estimate (plus the prediction's p50 wall time: the pipeline runs the
model synchronously on the frame of "speech stopped").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from tests.support.speech import synthesize
from workers.speech.smart_turn import SmartTurn, last_window, log_mel, pcm16_to_float
from workers.speech.vad import SAMPLE_RATE, VoiceActivity, load_model
from workers.transcriber.endpoint import EndpointConfig, TurnEndpoint

FRAME_BYTES = 640  # 20 ms
PRE_ROLL_S = 0.3
VOICED = 0.01 * 32768

COMPLETE = [
    "What is the weather like today?",
    "Turn on the lights in the kitchen.",
    "I'd like to book a table for four at seven tonight.",
    "Can you remind me to call my mother tomorrow morning?",
]
# Fragments spoken alone: TTS often gives them a final fall, and the model then hears a finished
# turn ("Turn on the lights in the" p=0.93); these are the ones it hears as unfinished.
CUT = ["What is the", "What is the weather like in", "So I was thinking that", "I need to buy milk, eggs and"]


def true_end_s(pcm: bytes) -> float:
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    return float(np.flatnonzero(samples > VOICED)[-1] + 1) / SAMPLE_RATE


def at_speech_stopped(pcm: bytes) -> tuple[bytes, float] | None:
    """The turn's audio up to the frame where the VAD says speech stopped, and that position."""
    vad = VoiceActivity(load_model(onnx=True))
    started: float | None = None
    for offset in range(0, len(pcm), FRAME_BYTES):
        for event in vad.push(pcm[offset : offset + FRAME_BYTES]):
            if event.kind == "start" and started is None:
                started = event.at_s
            elif event.kind == "end" and started is not None:
                first = max(0, round((started - PRE_ROLL_S) * SAMPLE_RATE) * 2)
                return pcm[first : offset + FRAME_BYTES], vad.position_s
    return None


def decision_after_true_end(pcm: bytes, model: SmartTurn | None, config: EndpointConfig) -> float:
    """Seconds from the true end of speech to the endpoint's decision, running the model like the pipeline."""
    vad = VoiceActivity(load_model(onnx=True))
    endpoint = TurnEndpoint(config)
    turn_from = 0
    for offset in range(0, len(pcm), FRAME_BYTES):
        for event in vad.push(pcm[offset : offset + FRAME_BYTES]):
            if event.kind == "start" and not endpoint.in_turn:
                turn_from = max(0, round((event.at_s - PRE_ROLL_S) * SAMPLE_RATE) * 2)
            endpoint.on_vad(event)
        if model is not None and endpoint.wants_verdict:
            complete, _ = model.predict(pcm16_to_float(pcm[turn_from : offset + FRAME_BYTES]))
            endpoint.on_turn_verdict(complete, vad.position_s)
        decision = endpoint.poll(vad.position_s)
        if decision is not None:
            return decision.decided_at_s - true_end_s(pcm)
    raise RuntimeError("no decision")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = SmartTurn(threads=args.threads)
    print(f"loaded {model.path.name} in {(time.perf_counter() - t0) * 1000:.0f} ms, {args.threads} thread(s)")

    clips: list[tuple[str, str, bytes]] = []
    for voice in ("piper", "espeak"):
        for kind, texts in (("complete", COMPLETE), ("cut", CUT)):
            for text in texts:
                found = at_speech_stopped(synthesize(text, voice, lead_silence_s=0.5, tail_silence_s=1.0))
                if found is not None:
                    clips.append((f"{voice:6} {kind:8}", text, found[0]))

    print("\n(b) probability of 'complete' at the VAD's 'speech stopped'")
    for label, text, pcm in clips:
        complete, probability = model.predict(pcm16_to_float(pcm))
        print(f"  {label} p={probability:.3f} {'complete  ' if complete else 'incomplete'} {text!r}")

    audio = [pcm16_to_float(pcm) for _, _, pcm in clips]
    model.predict(audio[0])  # warm-up
    total, cpu, front = [], [], []
    for i in range(args.runs):
        clip = audio[i % len(audio)]
        t = time.perf_counter()
        log_mel(last_window(clip))
        front.append((time.perf_counter() - t) * 1000)
        t, c = time.perf_counter(), time.process_time()
        model.predict(clip)
        total.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    load = os.getloadavg()[0]
    print(f"\n(a) {args.runs} predictions (load average {load:.1f} on {os.cpu_count()} cores):")
    print(f"    wall p50 {percentile(total, 50):.1f} ms, p95 {percentile(total, 95):.1f} ms")
    print(f"    CPU time p50 {percentile(cpu, 50):.1f} ms, p95 {percentile(cpu, 95):.1f} ms")
    print(f"    front end alone (wall): p50 {percentile(front, 50):.1f} ms, p95 {percentile(front, 95):.1f} ms")

    print("\n(c) complete turns: decision after the true end of speech (audio clock, ms)")
    for name, config, use in (
        ("silence (500 ms)", EndpointConfig(), None),
        ("smart_turn min 150", EndpointConfig(policy="smart_turn", smart_turn_min_silence_ms=150), model),
        ("smart_turn min 300", EndpointConfig(policy="smart_turn", smart_turn_min_silence_ms=300), model),
    ):
        latencies = [
            decision_after_true_end(synthesize(text, voice, 0.5, 3.0), use, config) * 1000
            for voice in ("piper", "espeak")
            for text in COMPLETE
        ]
        line = (
            f"  {name:20} median {statistics.median(latencies):.0f} ms "
            f"(min {min(latencies):.0f}, max {max(latencies):.0f})"
        )
        if use is not None:  # the pipeline waits for the model before it decides: its wall time adds
            line += f"; on the wall clock ~{statistics.median(latencies) + percentile(total, 50):.0f} ms"
        print(line)


if __name__ == "__main__":
    main()
