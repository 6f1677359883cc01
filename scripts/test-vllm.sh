#!/usr/bin/env bash
# The vLLM backend's tests: set up .venv-vllm (idempotent, ~3 min the first time), then tests/backend_vllm inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-vllm.sh
.venv-vllm/bin/pytest tests/backend_vllm "$@"
