#!/usr/bin/env bash
# The one prepared check for a machine with a GPU: installs the CUDA vLLM (scripts/setup-vllm.sh picks it when
# nvidia-smi sees a GPU), loads the embedded backbone through both backends on the GPU, prints how far apart their
# scores are and the tokens/s of each on pairs, Best-of-16 and GRPO-like groups (benchmarks/vllm.py).
#   bash scripts/gpu_check.sh            # ~5 min on one H100 including the install; writes runs/gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
bash scripts/setup-vllm.sh
mkdir -p runs
.venv-vllm/bin/python -m benchmarks.vllm --device cuda --dtype bfloat16 --pairs 200 --out runs/gpu_check.json
