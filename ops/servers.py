"""Starting the embedded servers (NATS, the MongoDB wire-protocol server) as child processes.

Used by the local stack launcher and by the test fixtures, in the pattern nats.py's own
tests use: a real server on a free loopback port with a temporary store, awaited until
it accepts connections.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path


class ServerError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    """A binary from this venv's scripts folder (where PyPI packages put them), else PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which(name, path=folder)
        if found:
            return found
    found = shutil.which(name)
    if not found:
        raise ServerError(f"{name} not found: install the project with `just setup`")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if process is not None and process.poll() is not None:
            raise ServerError(f"server exited with code {process.returncode} before listening on {port}")
        time.sleep(0.02)
    raise ServerError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class RunningServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def nats_command(store_dir: Path, port: int, config: Path | None = None) -> list[str]:
    cmd = [find_binary("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir)]
    if config is not None:
        cmd[1:1] = ["-c", str(config)]
    return cmd


def start_nats(
    store_dir: Path, port: int | None = None, config: Path | None = None, log_file: Path | None = None
) -> RunningServer:
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(nats_command(store_dir, port, config), stdout=out, stderr=out)
    wait_for_port("127.0.0.1", port, 10.0, process)
    return RunningServer(f"nats://127.0.0.1:{port}", port, process)


def start_chroma(path: Path, port: int | None = None, log_file: Path | None = None) -> RunningServer:
    """``chroma run`` (from the chromadb package) on a loopback port, storing in ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    cmd = [find_binary("chroma"), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=out, stderr=out)
    wait_for_port("127.0.0.1", port, 30.0, process)
    return RunningServer(f"http://127.0.0.1:{port}", port, process)


def mongo_command(db_file: Path, port: int, log_file: Path, pid_file: Path) -> list[str]:
    return [
        find_binary("nx-27017"),
        "--db",
        str(db_file),
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--log-file",
        str(log_file),
        "--pid-file",
        str(pid_file),
    ]


def start_mongo(data_dir: Path, port: int | None = None) -> RunningServer:
    """The nx-27017 MongoDB wire-protocol server on ``data_dir/db.sqlite``; the same dir and port restart it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = mongo_command(data_dir / "db.sqlite", port, data_dir / "mongo.log", data_dir / "mongo.pid")
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 15.0, process)
    return RunningServer(f"mongodb://127.0.0.1:{port}", port, process)
