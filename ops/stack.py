"""`just up`: the whole system on embedded defaults, each part its own process, one terminal.

Supervision is supervisord's (the ``supervisor`` package), run in the foreground as the
launcher's child on a configuration generated into the run directory (SB_RUN_DIR, default
``.run``). A process that exits is restarted; one that exits within STARTSECS of its start
is retried after 1, 2, 3 ... s, and after STARTRETRIES such retries in a row the whole stack
stops with one line naming it and its last exit. The launcher says which process exited,
how, and when it restarts. Ctrl-C, SIGTERM or SIGHUP stop everything: supervisord stops the
workers first and the servers last (so that workers drain against a live bus), and whatever
still lives STOP_WITHIN seconds after the stop began is killed. A launcher that was killed
leaves supervisord running; the next start stops it first (``reap_leftovers``).

Every process writes to its own log file (``logs/NAME.log`` in the run directory, supervisord's
own beside it as ``supervisord.log``); the launcher follows these files and is the only
writer to the terminal, name-prefixed (coloured on a tty), from a thread that a slow, stopped
or vanished reader can neither block nor break. Servers already reachable at the configured
URLs are reused instead of started.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import BinaryIO, TextIO
from urllib.parse import urlparse

from contracts.subjects import DEFAULT_PREFIX

from . import access, llama_server, models, registry
from .llm_server import find_model, llm_command
from .servers import ServerError, find_binary, mongo_command, nats_command, port_open

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = ROOT / ".run"
NATS_CONF = ROOT / "infra" / "nats.conf"

STARTSECS = 10  # a process that exits sooner failed to start (workers import for several seconds under load)
STARTRETRIES = 3  # failed starts in a row that are retried before the stack stops
WORKER_STOP_S = 10  # the workers' default drain grace (SB_SHUTDOWN_TIMEOUT_S), then SIGKILL
SERVER_STOP_S = 3
STOP_WITHIN = 15.0  # > WORKER_STOP_S + SERVER_STOP_S: supervisord's own kills come first
LOG_MAX_BYTES = 20_000_000  # per process; one rotated file is kept
POLL_S = 0.1
SUPERVISORD_PIDFILE = "supervisord.pid"
LOGS = "logs"


@dataclass(frozen=True)
class Process:
    name: str
    command: list[str]
    server: bool = False


# Every process records its process group, so that a start after a crash of the launcher
# and of its supervisord (whose children then live on) can stop the leftovers first.
_TRACK = 'cut -d" " -f5 /proc/$$/stat >> "$SB_STACK_PIDS"; exec "$@"'


def _tracked(command: list[str], nice: int = 0) -> list[str]:
    return ["sh", "-c", _TRACK, "sh", *(["nice", "-n", str(nice)] if nice else []), *command]


# CPU priorities on a small machine (2 cores run everything): what a speaking user waits for first.
# The audio path (transcriber: VAD, recognition, end of turn; voice: speech synthesis; the edge) keeps
# the default priority; the local LLM yields to it (a reply's first audio is synthesised while the LLM
# writes the rest; a barge-in is heard while it writes); background work yields to both. SB_CPU_PRIORITIES=off
# starts everything at the default priority. docs/benchmarks.md ("CPU priorities"): no difference with
# one session and no background work; the contended cases are not measured yet.
NICENESS = {"llm": 5, "memory": 5, "video": 10, "stats": 10, "keywords": 10}


def reap_leftovers(pids_file: Path) -> int:
    """Stop what a crashed earlier launcher left running; returns how many process groups were alive.

    Its supervisord lives on and is asked to stop (in order, restarting nothing); if it died
    too, the orphans it leaves are stopped directly."""
    supervisord = _read_pids(pids_file.with_name(SUPERVISORD_PIDFILE))
    alive = _stop(supervisord[0] if supervisord else None, pids_file, lambda: time.sleep(POLL_S))
    pids_file.unlink(missing_ok=True)
    return alive


def _read_pids(path: Path) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return sorted({int(word) for word in path.read_text().split() if word.isdigit()})
    return []


def _stop(supervisord: int | None, pids_file: Path, tick: Callable[[], None]) -> int:
    """TERM supervisord (or, without one, every recorded process group), call ``tick`` until all
    is gone or STOP_WITHIN has passed, then KILL what is left. Returns how many were alive."""
    groups = [
        g for g in {*_read_pids(pids_file), *([supervisord] if supervisord else [])} if started_by_stack(g, pids_file)
    ]
    if not groups:
        return 0
    for group in [supervisord] if supervisord in groups else groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN
    while time.monotonic() < deadline and any(started_by_stack(g, pids_file) for g in groups):
        tick()
    for group in groups:
        if started_by_stack(group, pids_file):  # a group id that is gone may already be someone else's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
    return len(groups)


def started_by_stack(pid: int, pids_file: Path) -> bool:
    """Alive and started by this stack (a recycled pid belongs to someone else): its environment
    names our pids file. The command line proves nothing: the venv may live outside the checkout."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"SB_STACK_PIDS={pids_file}".encode() in environ.split(b"\0")


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url.split(",", maxsplit=1)[0].strip())
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def plan(env: dict[str, str]) -> tuple[list[Process], list[str]]:
    """What to start, and notes about what is reused. Launcher-only variables: SB_RUN_DIR (state of
    the local servers), SB_NATS_MONITOR_PORT (8222), SB_LLM_LOCAL_PORT (8089), SB_LLM_LOCAL_MODEL (the
    local model: 1.5b, the default, 0.5b or smollm2; see ops/models.py), SB_LLM_LOCAL_CTX (its context
    window; default: the model's), SB_LLM_LOCAL_SERVER (``llama-cpp-python``, the default, or
    ``llama-server``: llama.cpp's own, built by ``just llama-server``; no priority for background work,
    see docs/benchmarks.md); SB_METRICS_PORT is the first of one metrics port per process;
    SB_CPU_PRIORITIES (``on``, the default, or ``off``: see NICENESS)."""
    run_dir = Path(env.setdefault("SB_RUN_DIR", str(DEFAULT_RUN_DIR)))
    env["SB_STACK_PIDS"] = str(run_dir / "stack.pids")
    processes: list[Process] = []
    notes: list[str] = []
    nats_url = env.setdefault("SB_NATS_URL", "nats://127.0.0.1:4222")
    host, port = _host_port(nats_url, 4222)
    if port_open(host, port):
        notes.append(f"reusing NATS at {nats_url} (its credentials: SB_NATS_USER/SB_NATS_PASSWORD or SB_NATS_CREDS)")
    else:
        users = access.run_folder(run_dir)
        # The services' JetStream grants name the streams of the stack's subject prefix (ops/access.py).
        prefix = env.get("SB_SUBJECT_PREFIX") or DEFAULT_PREFIX
        config = access.server_config(NATS_CONF, users, prefixes=(prefix,))
        command = [*nats_command(run_dir / "nats", port, config), "-m", env.get("SB_NATS_MONITOR_PORT", "8222")]
        processes.append(Process("nats", _tracked(command), server=True))
        env["SB_NATS_USERS_FILE"] = str(users / access.CREDENTIALS)
        notes.append(f"NATS users: {env['SB_NATS_USERS_FILE']} (each process connects as its own)")

    mongo_url = env.setdefault("SB_MONGO_URL", "mongodb://127.0.0.1:27017")
    host, port = _host_port(mongo_url, 27017)
    if port_open(host, port):
        notes.append(f"reusing MongoDB at {mongo_url}")
    else:
        data = run_dir / "mongo"
        data.mkdir(parents=True, exist_ok=True)
        command = mongo_command(data / "db.sqlite", port, data / "mongo.log", data / "mongo.pid")
        processes.append(Process("mongo", _tracked(command), server=True))
    llm_url = env.get("SB_LLM_BASE_URL")
    if llm_url:
        notes.append(f"using the LLM at {llm_url}")
    elif env.get("SB_LLM_PROVIDER", "openai") == "openai":
        llm_port = int(env.get("SB_LLM_LOCAL_PORT", "8089"))
        env["SB_LLM_BASE_URL"] = f"http://127.0.0.1:{llm_port}/v1"
        local = models.resolve(env.get("SB_LLM_LOCAL_MODEL") or models.DEFAULT)
        env.setdefault("SB_LLM_MODEL", local.alias)
        env.setdefault("SB_WARM_UP", "true")  # the local server keeps the agents' prompts in its cache
        if port_open("127.0.0.1", llm_port):
            notes.append(f"reusing the local LLM server on port {llm_port}")
        else:
            context = int(env["SB_LLM_LOCAL_CTX"]) if env.get("SB_LLM_LOCAL_CTX") else None
            if env.get("SB_LLM_LOCAL_SERVER", "llama-cpp-python") == "llama-server":
                command = llama_server.server_command(llm_port, local.alias, context=context)
            else:
                command = llm_command(llm_port, find_model(local.alias), name=local.alias, context=context)
            processes.append(Process("llm", _tracked(command, _nice("llm", env)), server=True))
    python = sys.executable
    # SB_METRICS_PORT=N gives each process its own Prometheus endpoint: N, N+1, ... in this order.
    base = int(env.get("SB_METRICS_PORT", "0"))
    for i, (name, module) in enumerate([*((w, f"workers.{w}") for w in registry.WORKERS), ("edge", "edge")]):
        metrics = ["env", f"SB_METRICS_PORT={base + i}"] if base else []
        processes.append(Process(name, _tracked([*metrics, python, "-m", module], _nice(name, env))))
    processes.append(Process("health", _tracked([python, "-m", "ops.cli", "status", "--watch"])))
    return processes, notes


def _nice(name: str, env: dict[str, str]) -> int:
    return 0 if env.get("SB_CPU_PRIORITIES", "on").lower() in ("off", "false", "0") else NICENESS.get(name, 0)


def log_file(run_dir: Path, name: str) -> Path:
    return run_dir / LOGS / f"{name}.log"


def supervisord_config(processes: list[Process], run_dir: Path) -> str:
    """supervisord's configuration: every process autorestarted, servers in a group that starts
    first and stops last, each process's output (stderr included) in its own log file."""

    def value(text: str) -> str:
        return text.replace("%", "%%")  # supervisord expands %(name)s in these values

    lines = [
        "[supervisord]",
        "nodaemon=true",
        "silent=true",
        "loglevel=info",
        "logfile_maxbytes=0",
        f"logfile={value(str(run_dir / 'supervisord.log'))}",
        f"pidfile={value(str(run_dir / SUPERVISORD_PIDFILE))}",
    ]
    if os.geteuid() == 0:
        lines.append("user=root")  # else supervisord logs a CRIT line about running as root
    for process in processes:
        lines += [
            "",
            f"[program:{process.name}]",
            f"command={value(shlex.join(process.command))}",
            "autorestart=true",
            f"startsecs={STARTSECS}",
            f"startretries={STARTRETRIES}",
            "stopasgroup=true",
            "killasgroup=true",
            f"stopwaitsecs={SERVER_STOP_S if process.server else WORKER_STOP_S}",
            "redirect_stderr=true",
            f"stdout_logfile={value(str(log_file(run_dir, process.name)))}",
            f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
            "stdout_logfile_backups=1",
        ]
    # supervisord stops one group at a time, highest priority first, and a group's processes together.
    for group, priority, members in (
        ("servers", 100, [p for p in processes if p.server]),
        ("processes", 200, [p for p in processes if not p.server]),
    ):
        if members:
            lines += ["", f"[group:{group}]", f"programs={','.join(p.name for p in members)}", f"priority={priority}"]
    return "\n".join(lines) + "\n"


class Follower:
    """The new complete lines of one log file, across supervisord's rotations (rename, new file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._partial = b""

    def lines(self) -> list[str]:
        if self._file is None:
            try:
                self._file = self.path.open("rb")
            except FileNotFoundError:
                return []
        data = self._file.read()
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino != os.fstat(self._file.fileno()).st_ino:
                data += self._file.read()  # written before the rename
                self._file.close()
                self._file = None
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line.decode(errors="replace") for line in complete]


_PALETTE = ("36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91")


class Terminal:
    """The launcher's only writer to its stdout, name-prefixed like honcho's output.

    Writes happen on a thread behind a bounded queue: a slow or stopped reader costs lines (the
    count is shown when the reader catches up), a vanished one (EPIPE; EIO after a hang-up)
    silences the output, and so does none at all (``just up >&-``: Python's ``sys.stdout`` is None).
    The launcher itself never blocks on, or fails from, its output."""

    def __init__(self, stream: TextIO | None, names: list[str], logs: Path) -> None:
        self._fd = stream.fileno() if stream is not None else -1  # -1: every write fails (EBADF), as a gone reader's
        self._width = max(len(name) for name in names)
        tty = stream is not None and stream.isatty()
        self._colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)} if tty else {}
        self._logs = logs
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=2000)
        self._dropped = 0
        self._thread = threading.Thread(target=self._write, name="terminal", daemon=True)
        self._thread.start()

    def show(self, name: str, lines: list[str]) -> None:
        if not lines:
            return
        if self._dropped and self._put(
            self._format(
                "switchboard",
                [f"({self._dropped} lines not shown: the output was not read fast enough; all is in {self._logs})"],
            )
        ):
            self._dropped = 0
        if not self._put(self._format(name, lines)):
            self._dropped += len(lines)

    def close(self, within: float = 1.0) -> None:
        """Let the thread write what is queued, for at most ``within`` seconds (none if nobody reads)."""
        if self._put(None):
            self._thread.join(within)

    def _format(self, name: str, lines: list[str]) -> bytes:
        prefix = f"{time.strftime('%H:%M:%S')} {name:<{self._width}} | "
        if colour := self._colours.get(name):
            prefix = f"\033[{colour}m{prefix}\033[0m"
        return "".join(f"{prefix}{line}\n" for line in lines).encode()

    def _put(self, chunk: bytes | None) -> bool:
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            return False
        return True

    def _write(self) -> None:
        while (chunk := self._queue.get()) is not None:
            try:
                while chunk:
                    chunk = chunk[os.write(self._fd, chunk) :]
            except OSError:  # nobody reads any more: the launcher goes on without output
                return


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<message>.*)$")
_EVENT = re.compile(
    r"^(?P<what>spawned|success|exited|gave up|stopped): '?(?P<name>[\w.-]+)'?"
    r"(?: \((?P<how>.*?)(?:; (?:not )?expected)?\)$)?"
)


class Supervision:
    """supervisord's log in the launcher's words: which process exited, how, when it restarts,
    and whether one is crash-looping (``fatal``).

    The restart delays mirror supervisord's rule (supervisor/process.py): an exit before the
    process has been up STARTSECS is a failed start, retried after 1, 2, 3 ... s; a process that
    had been up longer restarts at once; after STARTRETRIES retries it gives up (FATAL)."""

    def __init__(self) -> None:
        self.fatal: str | None = None
        self._up: set[str] = set()
        self._failed_starts: Counter[str] = Counter()
        self._last_exit: dict[str, str] = {}

    def read(self, line: str, stopping: bool) -> str | None:
        """What to show for one line of supervisord's log, if anything."""
        log = _LOG_LINE.match(line)
        if log is None:
            return line  # not a log line: supervisord's own error output
        event = _EVENT.match(log["message"])
        if event is None:  # warnings and errors, but not the echo of the launcher's own stop request
            shown = log["level"] in ("WARN", "ERRO", "CRIT") and not log["message"].startswith("received SIG")
            return log["message"] if shown else None
        what, name, how = event["what"], event["name"], event["how"] or "?"
        if what == "spawned":
            self._up.discard(name)
        elif what == "success":
            self._up.add(name)
            self._failed_starts[name] = 0
        elif what == "gave up":
            self.fatal = (
                f"{name} keeps exiting right after its start ({STARTRETRIES + 1} times in a row "
                f"within {STARTSECS} s; last: {self._last_exit.get(name, 'could not start it')})"
            )
        elif what == "exited":
            self._last_exit[name] = how
            if stopping:
                return f"{name} exited ({how})"
            if name in self._up:
                return f"{name} exited ({how}); restarting it now"
            self._failed_starts[name] += 1
            tries = self._failed_starts[name]
            if tries <= STARTRETRIES:
                return (
                    f"{name} exited ({how}) within {STARTSECS} s of its start; restarting it in {tries} s "
                    f"(retry {tries} of {STARTRETRIES})"
                )
            return f"{name} exited ({how}) within {STARTSECS} s of its start; not restarting it"
        return None


def _prepare(env: dict[str, str]) -> tuple[list[Process], list[str]]:
    """Stop a crashed launcher's leftovers, then plan; the notes say what was stopped or is reused."""
    env.setdefault("SB_LOG_FORMAT", "pretty")
    env.setdefault("PYTHONUNBUFFERED", "1")
    find_binary("nats-server")  # fail early with the install hint
    run_dir = Path(env.setdefault("SB_RUN_DIR", str(DEFAULT_RUN_DIR)))
    run_dir.mkdir(parents=True, exist_ok=True)
    left_over = reap_leftovers(run_dir / "stack.pids")
    processes, notes = plan(env)
    if left_over:
        notes.insert(0, f"stopped {left_over} processes left over from a previous run")
    return processes, [*notes, f"each process's log: {run_dir / LOGS}/NAME.log"]


def _start_supervisord(processes: list[Process], run_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """supervisord in its own session: the terminal's signals reach the launcher only, which stops it in order."""
    (run_dir / LOGS).mkdir(exist_ok=True)
    for old in [*(run_dir / LOGS).glob("*.log*"), run_dir / "supervisord.log"]:
        old.unlink(missing_ok=True)
    config = run_dir / "supervisord.conf"
    config.write_text(supervisord_config(processes, run_dir))
    with (run_dir / "supervisord.log").open("ab") as own_output:  # its start-up errors, before its logger exists
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(config)],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=own_output,
            stderr=subprocess.STDOUT,
        )


def up() -> int:
    stop_requests: list[int] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop_requests.append(signum)

    # A closed terminal (SIGHUP) stops the stack like Ctrl-C does; a second signal changes nothing.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    env = dict(os.environ)
    try:
        processes, notes = _prepare(env)
    except ServerError as error:  # a missing binary or model: the line says which setup step makes it
        print(f"switchboard: {error}", file=sys.stderr)
        return 1
    run_dir = Path(env["SB_RUN_DIR"])
    terminal = Terminal(sys.stdout, ["switchboard", *(p.name for p in processes)], run_dir / LOGS)
    terminal.show("switchboard", notes)
    if stop_requests:
        terminal.close()
        return 0
    supervisord = _start_supervisord(processes, run_dir, env)
    supervision = Supervision()
    stopping = False
    followers = [
        ("supervisord", Follower(run_dir / "supervisord.log")),
        *((p.name, Follower(log_file(run_dir, p.name))) for p in processes),
    ]

    def follow() -> None:
        for name, follower in followers:
            lines = follower.lines()
            if name == "supervisord":
                shown = (supervision.read(line, stopping) for line in lines)
                terminal.show("switchboard", [line for line in shown if line is not None])
            else:
                terminal.show(name, lines)

    def tick() -> None:
        supervisord.poll()  # reaps it once it has exited
        follow()
        time.sleep(POLL_S)

    # A closed terminal sends SIGHUP to its session leader only: when that is `just` (a terminal or tmux
    # running `just up` directly), just keeps it. A hung-up terminal stops answering as a tty.
    ttys = [fd for fd in (0, 1, 2) if os.isatty(fd)]
    reason = None
    try:
        while reason is None and not stop_requests:
            tick()
            if not all(os.isatty(fd) for fd in ttys):
                stop_requests.append(signal.SIGHUP)
            if supervision.fatal:
                reason = supervision.fatal
            elif supervisord.returncode is not None:
                reason = f"supervisord exited with status {supervisord.returncode}"
        stopping = True
        asked = f"asked to ({signal.Signals(stop_requests[0]).name})" if stop_requests else ""
        terminal.show("switchboard", [f"stopping everything: {reason or asked}"])
    finally:
        _stop(supervisord.pid, run_dir / "stack.pids", tick)
        supervisord.wait()
        follow()
        (run_dir / "stack.pids").unlink(missing_ok=True)
        terminal.close()
    return 1 if reason else 0
