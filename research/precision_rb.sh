#!/usr/bin/env bash
# The default artifact's full RewardBench row in float32 and in bfloat16 (its served precision where the CPU has
# AMX or AVX512-BF16), one after the other on an idle machine; features cached per precision under runs/features.
set -euo pipefail
cd "$(dirname "$0")/.."
for dtype in float32 bfloat16; do
  /usr/bin/time -f "$dtype wall %e s" .venv/bin/armo eval --config configs/default.json --store src/armo/bundled \
    --version v0.4.0 --full --set dtype=$dtype --set extract.threads=2 --out runs/eval/precision-$dtype
done
