#!/bin/bash
# Round 9 (research/NOTEBOOK.md): stage 0 from a fitted head (epoch 0 = the frozen backbone's BT model), lr and
# epochs chosen on validation pairs, then the promotion check against round 8's frozen control. Needs round 8's
# layer cache (runs/features/*-layer26, step 0/1 of research/stage0.sh) and control (`v0.6.0-frozen`, its step 3).
set -euo pipefail
cd "$(dirname "$0")/.."
A=.venv/bin/armo
C=configs/v0.6.1.json
# 1. The search: <name>-0 is the config (lr 5e-4), <name>-1 lr 1.5e-4; two epochs each, epoch 0 shared
$A train backbone --config $C --name v0.6.1 --try "stage0.lr=0.00015" --out runs/sweep/stage0_v061.json
# 2. The winner's delta (the config's stage0.delta names the run the search picked) → tuned features → the candidate
$A train run --config $C --name v061_candidate --set alias=candidate --set evaluate=false --publish
# 3. The promotion rule, paired on the validation split
$A train compare --config $C v0.6.0-frozen v0.6.1 --out runs/sweep/stage0_v061_promotion.json
