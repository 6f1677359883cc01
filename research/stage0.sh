#!/bin/bash
# Round 8, stage 0 (research/NOTEBOOK.md): reward-tune the backbone's top 4 layers, then the ArmoRM stages on the
# tuned backbone, and the rows of docs/RESULTS.md. Every choice before the RewardBench runs reads validation pairs only.
set -euo pipefail
cd "$(dirname "$0")/.."
A=.venv/bin/armo
C=configs/v0.6.0.json
# 1. Stage 0: the layer-26 cache of every training token (resumable), one BT epoch of LoRA on layers 26-29 → the delta
$A train backbone --config $C --name v0.6.0
# 2. Validation only: the recipe on the tuned features, the black box, the ArmoRM recipe without rules, and dropping
#    the probes fit on a subset of another probe's pairs (rmb-helpfulness ⊂ hhrmb-helpfulness,
#    ultrafeedback-preference ⊂ mixed-preference)
P='"hhrmb-helpfulness":["hh-rlhf/helpfulness","rmb/helpfulness"],"hhrmb-harmlessness":["hh-rlhf/harmlessness","rmb/harmlessness"],"mixed-preference":["ultrafeedback/overall","hh-rlhf/helpfulness","rmb/helpfulness"]'
$A train sweep --config $C --out runs/sweep/stage0.json \
  --try "objectives.blackbox=true" \
  --try 'objectives.rules=["verbosity"];objectives.negated_rules={}' \
  --try "probes.objectives={$P,\"ultrafeedback-preference\":[\"ultrafeedback/overall\"]}" \
  --try "probes.objectives={$P,\"rmb-helpfulness\":[\"rmb/helpfulness\"]}" \
  --try "probes.objectives={$P}"
# 3. The frozen backbone with the same recipe and split (the promotion control: stage 0 never saw validation pairs)
$A train sweep --config $C --set stage0.delta= --out runs/sweep/stage0_frozen.json
# 4. RewardBench (full): the candidate, published to runs/store, then the black box and the ArmoRM recipe rows
$A train run --config $C --name v060 --publish
$A train run --config $C --name v060_blackbox --set objectives.blackbox=true
$A train run --config $C --name v060_armorm --set 'objectives.rules=["verbosity"]' --set 'objectives.negated_rules={}'
