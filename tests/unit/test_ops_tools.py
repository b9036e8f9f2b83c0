"""The ops tools' pure parts: subject retargeting, summaries, the replay timeline, the trace tree;
and the launcher's one metrics port per process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from contracts import events as ev
from contracts import headers as h
from contracts.envelope import Event
from ops import tools
from ops.stack import plan, started_by_stack
from workers.runtime import tracing
from workers.runtime.bus import headers_for

S = "session-aaaa"


def recorded(
    event: Event,
    at: float,
    subject: str = "sb.ev.x",
    parent: tracing.SpanContext | None = None,
    extra: dict[str, str] | None = None,
) -> tools.Recorded:
    with tracing.handling(parent):
        hdrs = headers_for(event)
    msg = Msg(
        _client=None,  # type: ignore[arg-type]  # a recorded message: no connection behind it
        subject=subject,
        data=event.model_dump_json().encode(),
        headers={**hdrs, **(extra or {})},
    )
    return tools.Recorded(at, msg)


def span(record: tools.Recorded) -> tracing.SpanContext:
    context = tracing.parse_traceparent((record.msg.headers or {})[h.TRACEPARENT])
    assert context is not None
    return context


def test_retarget_moves_the_prefix_and_unmaps_audio_partitions() -> None:
    assert tools.retarget("sb.ev.s1.turn.user", "rpl") == "rpl.ev.s1.turn.user"
    assert tools.retarget("sb.audio.s1.in.5", "rpl") == "rpl.audio.s1.in"  # the server maps it again
    assert tools.retarget("sb.audio.s1.out", "rpl") == "rpl.audio.s1.out"


def test_summary_drops_the_envelope_and_truncates() -> None:
    turn = ev.UserTurn(session_id=S, turn_id="t1", producer="edge", text="hello " * 40, source="typed")
    line = tools.summary("turn.user", turn.model_dump_json().encode(), width=60)
    assert line.startswith('{"text": "hello') and len(line) == 60 and line.endswith("…")
    assert "event_id" not in line and "producer" not in line
    assert tools.summary("audio.in", b"\0" * 640) == "640 bytes"
    assert tools.summary("turn.user", b"\xff\xfe") == "<2 undecodable bytes>"


def test_timeline_lists_events_collapses_audio_and_gives_stages() -> None:
    t0 = 1_800_000_000.0
    turn = ev.UserTurn(session_id=S, turn_id="t1", producer="edge", text="hi", source="typed", published_at=t0)
    delta = ev.ReplyDelta(
        session_id=S, turn_id="t1", producer="orchestrator", text="x", agent="a", published_at=t0 + 0.05
    )
    audio = ev.AudioInMeta(session_id=S, producer="edge")
    frames = [
        recorded(audio, t0 + i * 0.02, f"sb.audio.{S}.in.3", extra={h.META: audio.model_dump_json()}) for i in range(3)
    ]
    lines = tools.timeline([*frames, recorded(turn, t0 + 0.1), recorded(delta, t0 + 0.15)])
    assert sum("audio.in" in line for line in lines) == 1  # the first frame only
    assert "audio frames: 3 in, 0 out" in lines[-2]
    assert lines[-1] == "turn t1 (typed): final_to_first_delta 50 ms"
    assert lines[0].strip().startswith("0.0 ms")


def test_trace_tree_nests_what_a_handler_published_under_its_message() -> None:
    turn = recorded(ev.UserTurn(session_id=S, turn_id="t1", producer="edge", text="hi", source="typed"), 1.0)
    deltas = [
        recorded(
            ev.ReplyDelta(session_id=S, turn_id="t1", producer="orchestrator", text="x", agent="a"),
            1.1 + i / 100,
            parent=span(turn),
        )
        for i in range(3)
    ]
    done = recorded(
        ev.ReplyDone(session_id=S, turn_id="t1", producer="orchestrator", text="xxx", agent="a"), 1.2, parent=span(turn)
    )
    audio = recorded(ev.AudioOutMeta(session_id=S, turn_id="t1", producer="voice"), 1.15, parent=span(deltas[0]))
    tree = tools.trace_tree([turn, *deltas, audio, done])
    assert tree[0] == f"trace {span(turn).trace_id}: 6 messages, 200.0 ms"
    assert tree[1:] == [
        "+     0.0 ms  edge: turn.user",
        "+   100.0 ms    orchestrator: reply.delta x3 (last +120.0 ms)",
        "+   150.0 ms      voice: audio.out",
        "+   200.0 ms    orchestrator: reply.done",
    ]


def test_the_launcher_gives_each_process_its_own_metrics_port(tmp_path: Path) -> None:
    env: dict[str, Any] = {
        "SB_RUN_DIR": str(tmp_path),
        "SB_LLM_PROVIDER": "echo",
        "SB_METRICS_PORT": "9300",
        "SB_NATS_URL": "nats://127.0.0.1:1",
        "SB_MONGO_URL": "mongodb://127.0.0.1:1",
    }
    processes, _ = plan(env)
    ports = [arg for p in processes for arg in p.command if arg.startswith("SB_METRICS_PORT=")]
    assert len(ports) == len(set(ports)) >= 5 and "SB_METRICS_PORT=9300" in ports
    assert not [
        arg for p in plan({**env, "SB_METRICS_PORT": "0"})[0] for arg in p.command if arg.startswith("SB_METRICS_PORT=")
    ]


def test_tail_lines_name_the_session_also_of_a_dead_letter() -> None:
    letter = ev.DeadLetter(
        producer="orchestrator",
        worker="orchestrator",
        original_subject="sb.ev.x.turn.user",
        reason="invalid",
        error_type="ValidationError",
        payload_b64="",
        headers={h.SESSION: S},
    )
    record = recorded(letter, 1.0, subject="sb.dlq.orchestrator")
    assert tools.session_of(record.msg) == S
    line = tools.pretty(record.msg)
    assert "deadletter" in line and S in line and '"reason": "invalid"' in line
    turn = recorded(
        ev.UserTurn(session_id=S, turn_id="t1", producer="edge", text="hi", source="typed"),
        1.0,
        subject=f"sb.ev.{S}.turn.user",
    )
    assert tools.session_of(turn.msg) == S and " t1 " in tools.pretty(turn.msg)


def test_leftovers_are_recognised_by_the_stack_environment_not_the_command_line(tmp_path: Path) -> None:
    pids_file = tmp_path / "stack.pids"
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]  # a python from anywhere, like a venv elsewhere
    ours = subprocess.Popen(sleeper, env={**os.environ, "SB_STACK_PIDS": str(pids_file)})
    theirs = subprocess.Popen(sleeper, env={k: v for k, v in os.environ.items() if k != "SB_STACK_PIDS"})
    try:
        for process in (ours, theirs):  # /proc shows the parent's environment until the child has exec'd
            while b"time.sleep" not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
                time.sleep(0.01)
        assert started_by_stack(ours.pid, pids_file)
        assert not started_by_stack(theirs.pid, pids_file)
        assert not started_by_stack(ours.pid, tmp_path / "another-stack.pids")
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait()
    assert not started_by_stack(ours.pid, pids_file)  # gone


def test_the_launcher_starts_background_work_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    env = {
        "SB_RUN_DIR": str(tmp_path),
        "SB_LLM_PROVIDER": "echo",
        "SB_NATS_URL": "nats://127.0.0.1:1",
        "SB_MONGO_URL": "mongodb://127.0.0.1:1",
    }

    def niceness(settings: dict[str, str]) -> dict[str, int]:
        found = {}
        for process in plan({**env, **settings})[0]:
            command = process.command
            found[process.name] = int(command[command.index("nice") + 2]) if "nice" in command else 0
        return found

    default = niceness({})
    assert default["transcriber"] == default["voice"] == default["edge"] == default["orchestrator"] == 0
    assert default["video"] > default["memory"] > 0 and default["stats"] > 0
    assert set(niceness({"SB_CPU_PRIORITIES": "off"}).values()) == {0}
