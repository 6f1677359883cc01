#!/usr/bin/env bash
# The test command: set-up, lint (ruff), type checks (mypy), then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests loadtests benchmarks
.venv/bin/ruff format --check src tests loadtests benchmarks
.venv/bin/mypy
.venv/bin/pytest "$@"
