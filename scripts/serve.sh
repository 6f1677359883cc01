#!/usr/bin/env bash
# The run command: set-up, then the scoring service on the embedded default (http://127.0.0.1:8000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/armo serve "$@"
