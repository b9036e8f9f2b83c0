# Switchboard's recipes. `just` lives in the venv: run `.venv/bin/just <recipe>` (or activate .venv).
set shell := ["bash", "-euo", "pipefail", "-c"]

bin := justfile_directory() / ".venv/bin"

# List the recipes
default:
    @{{bin}}/just --list

# Install everything (Debian packages, venv, project with all extras, the 1.5B model); idempotent. `just setup 0.5b` adds the fast model
setup *models:
    SB_SETUP_MODELS="{{models}}" bash infra/setup.sh

# Start the whole system on embedded defaults (local model 1.5b; `just up 0.5b` or `just up smollm2`); Ctrl-C stops everything
up model="":
    SB_LLM_LOCAL_MODEL="{{ if model == "" { "${SB_LLM_LOCAL_MODEL:-}" } else { model } }}" {{bin}}/python -m ops.cli up

# Build llama.cpp's own llama-server from the llama.cpp tree llama-cpp-python vendors (optional, ~5 min on 2 cores, cached in ~/.cache/switchboard); then `SB_LLM_LOCAL_SERVER=llama-server just up`
llama-server:
    {{bin}}/python -m ops.llama_server ensure

# Local LLM serving figures: turns beside background summaries (`priority`), llama-cpp-python vs llama-server (`compare`), prompt layout (`layout`)
bench-llm *args:
    {{bin}}/python bench/llm_serving_bench.py {{args}}

# Create the memory database's collections and indexes and apply retention (SB_MONGO_URL; idempotent)
init-db:
    {{bin}}/python -m ops.cli init-db

# Which services are running (NATS service discovery)
status:
    {{bin}}/python -m ops.cli status

# The whole test suite (real NATS and stores, slow tests included), two processes in parallel
test *args:
    {{bin}}/pytest -n 2 --dist loadfile {{args}}

# Regenerate docs/configuration.md from the settings classes
docs:
    {{bin}}/python -m ops.cli config > docs/configuration.md

# ruff (lint and format), mypy, and the contract documents against the code (what pre-commit runs)
lint:
    {{bin}}/ruff check .
    {{bin}}/ruff format --check .
    {{bin}}/mypy contracts workers edge ops bench tests
    {{bin}}/python -m ops.cli contracts check

# Regenerate contracts/schemas/*.json and contracts/asyncapi.json from the code
contracts:
    {{bin}}/python -m ops.cli contracts gen

# Record the current contracts as the released baseline (refused if they break it)
contracts-release:
    {{bin}}/python -m ops.cli contracts release

# Raw NATS publish and request/reply figures (the baseline later benchmarks compare against)
bench-nats *args:
    {{bin}}/python bench/nats_baseline.py {{args}}

# What CI runs: lint, then the whole suite
ci: lint test
