#!/usr/bin/env bash
# The default artifact's full RewardBench row in float32, in bfloat16, and in bfloat16 compiled (what `armo serve`
# runs on a CPU with AMX or AVX512-BF16 and a C++ compiler), one after the other on an idle machine; features cached
# per precision and per compiled/eager under runs/features (a re-run reads them back).
set -euo pipefail
cd "$(dirname "$0")/.."
for dtype in float32 bfloat16; do
  /usr/bin/time -f "$dtype wall %e s" .venv/bin/armo eval --config configs/default.json --store src/armo/bundled \
    --version v0.4.0 --full --set dtype=$dtype --set extract.threads=2 --out runs/eval/precision-$dtype
done
/usr/bin/time -f "bfloat16 compiled wall %e s" .venv/bin/armo eval --config configs/default.json \
  --store src/armo/bundled --version v0.4.0 --full --set dtype=bfloat16 --set extract.threads=2 --compile \
  --out runs/eval/precision-bfloat16-compiled
