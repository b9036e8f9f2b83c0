"""llama.cpp's own ``llama-server``, built from the source tree that llama-cpp-python's sdist vendors.

No binary is downloaded: ``ensure`` fetches the sdist of the llama-cpp-python version installed in
the venv with ``pip download --no-deps --no-binary :all:`` (a package registry, like every other
dependency), configures its ``vendor/llama.cpp`` with cmake (``-DGGML_NATIVE=OFF`` so the binary
is not tied to one CPU, ``-DLLAMA_CURL=OFF`` so it cannot download a model, static libraries so
the one file runs alone) and builds the ``llama-server`` target. The binary is kept outside the
checkout, in ``~/.cache/switchboard/llama-server-<version>/llama-server`` (``SB_LLAMA_SERVER_DIR``
overrides the folder), so new clones and venvs reuse it; a second run only checks that it is
there and runs. About 4-5 minutes on 2 cores; optional (``just llama-server``): ``just up`` serves
through llama-cpp-python unless ``SB_LLM_LOCAL_SERVER=llama-server`` (docs/benchmarks.md says why).

    python -m ops.llama_server ensure     # build once (idempotent)
    python -m ops.llama_server path       # where the binary is (exit 1 when not built)

``server_command`` is the command line measured in docs/benchmarks.md (``-t 2 --parallel 2
--cache-reuse 256 --jinja``); ``start`` runs it and waits for ``GET /health``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ops import models
from ops.servers import RunningServer, ServerError, free_port

BINARY = "llama-server"
PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q")
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",  # runs on any x86-64, not only on the CPU it was built on
    "-DLLAMA_CURL=OFF",  # cannot download models
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained file
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


def version() -> str:
    """The installed llama-cpp-python's version: the llama.cpp tree built is the one it vendors."""
    return importlib.metadata.version("llama_cpp_python")


def cache_dir() -> Path:
    base = os.environ.get("SB_LLAMA_SERVER_DIR")
    return Path(base) if base else Path.home() / ".cache" / "switchboard" / f"llama-server-{version()}"


def find() -> Path | None:
    """The built binary, or None."""
    binary = cache_dir() / BINARY
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def ensure(jobs: int = 2) -> Path:
    """Build ``llama-server`` once; the binary's path. Raises ServerError naming the failed step."""
    if binary := find():
        return binary
    started = time.monotonic()
    target = cache_dir()
    with tempfile.TemporaryDirectory(prefix="sb-llama-server-") as scratch:
        work = Path(scratch)
        _run(
            [*PIP_DOWNLOAD, f"llama-cpp-python=={version()}", "-d", str(work)],
            "download the llama-cpp-python sdist",
        )
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
        build = work / "build"
        _run(
            ["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS],
            "configure llama.cpp",
        )
        _run(["cmake", "--build", str(build), "--target", BINARY, f"-j{jobs}"], "build llama-server")
        target.mkdir(parents=True, exist_ok=True)
        partial = target / f"{BINARY}.partial"
        shutil.copy2(build / "bin" / BINARY, partial)
        partial.replace(target / BINARY)  # atomic: a half-copied binary is never found
    print(f"llama-server {version()} built in {time.monotonic() - started:.0f} s: {target / BINARY}")
    return target / BINARY


def server_command(
    port: int, name: str = models.DEFAULT, threads: int = 2, parallel: int = 2, context: int | None = None
) -> list[str]:
    """llama-server for the local model ``name`` on ``port``; each of ``parallel`` slots gets an
    equal share of the ``context`` window (default: the model's own, per slot)."""
    binary = find()
    if binary is None:
        raise ServerError(f"llama-server {version()} is not built: run `python -m ops.llama_server ensure`")
    local = models.resolve(name)
    window = (context or local.context) * parallel
    return [
        str(binary),
        "--model", str(models.find(local.alias)),
        "--alias", local.alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--ctx-size", str(window),
        "--parallel", str(parallel),
        "--cache-reuse", "256",
        "--jinja",
        "--no-webui",
    ]  # fmt: skip


def start(name: str = models.DEFAULT, log_file: Path | None = None, **options: int) -> RunningServer:
    """Spawn llama-server and wait (60 s at most) until ``GET /health`` answers 200."""
    port = free_port()
    log = open(log_file or os.devnull, "ab")  # noqa: SIM115 - the child keeps writing to it
    process = subprocess.Popen(
        server_command(port, name, **options), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    server = RunningServer(f"http://127.0.0.1:{port}/v1", port, process)
    deadline = time.monotonic() + 60
    while not _healthy(port):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise ServerError(f"llama-server did not start (see {log_file or 'its output'})")
        time.sleep(0.1)
    return server


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise ServerError(f"could not {what} (exit {result.returncode}):\n{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.llama_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("ensure", "path"))
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs")
    args = parser.parse_args()
    if args.action == "ensure":
        print(ensure(args.jobs))
    elif binary := find():
        print(binary)
    else:
        sys.exit(f"llama-server {version()} is not built: run `python -m ops.llama_server ensure`")


if __name__ == "__main__":
    main()
