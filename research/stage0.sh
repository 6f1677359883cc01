#!/bin/bash
# Round 8, stage 0 (research/NOTEBOOK.md): reward-tune the backbone's top 4 layers, then the ArmoRM stages on the
# tuned backbone, and the rows of docs/RESULTS.md. Every choice before the RewardBench runs reads validation pairs only.
set -euo pipefail
cd "$(dirname "$0")/.."
A=.venv/bin/armo
C=configs/v0.6.0.json
# 0. (optional, two cores) the layer-26 cache by two single-thread workers; step 1 finds it complete
# for w in 0 1; do .venv/bin/python research/stage0_cache.py $C $w 2 & done; wait
# 1. Stage 0: the layer-26 cache of every training token (resumable), one BT epoch of LoRA on layers 26-29 → the delta
$A train backbone --config $C --name v0.6.0
# 2. Validation only: the recipe on the tuned features, the black box, the ArmoRM recipe without rules, and dropping
#    the probes fit on a subset of another probe's pairs (rmb-helpfulness ⊂ hhrmb-helpfulness,
#    ultrafeedback-preference ⊂ mixed-preference)
P='"hhrmb-helpfulness":["hh-rlhf/helpfulness","rmb/helpfulness"],"hhrmb-harmlessness":["hh-rlhf/harmlessness","rmb/harmlessness"],"mixed-preference":["ultrafeedback/overall","hh-rlhf/helpfulness","rmb/helpfulness"]'
#    The config holds the recipe this step chose (both dropped); the sweep starts from the five probes it was run on.
U='"ultrafeedback-preference":["ultrafeedback/overall"]'
R='"rmb-helpfulness":["rmb/helpfulness"]'
$A train sweep --config $C --set "probes.objectives={$P,$U,$R}" --out runs/sweep/stage0.json \
  --try "objectives.blackbox=true" \
  --try 'objectives.rules=["verbosity"];objectives.negated_rules={}' \
  --try "probes.objectives={$P,$U}" \
  --try "probes.objectives={$P,$R}" \
  --try "probes.objectives={$P}"
# 3. The promotion check (stage 0 never saw validation pairs): the candidate and the same recipe on the frozen
#    backbone, published to runs/store without RewardBench, compared pair by pair on the validation split
$A train run --config $C --name v060_frozen --set stage0.delta= --set version=v0.6.0-frozen --set alias=control \
  --set evaluate=false --publish
$A train run --config $C --name v060_candidate --set alias=candidate --set evaluate=false --publish
$A train compare --config $C v0.6.0-frozen v0.6.0 --out runs/sweep/stage0_promotion.json
# 4. RewardBench (full), after the decision: the candidate, then the black box and the ArmoRM recipe rows
$A train run --config $C --name v060
$A train run --config $C --name v060_blackbox --set objectives.blackbox=true
$A train run --config $C --name v060_armorm --set 'objectives.rules=["verbosity"]' --set 'objectives.negated_rules={}'
