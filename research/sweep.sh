#!/bin/bash
# Validation-only model selection (research/NOTEBOOK.md): every variant is fitted on the same cached training features
# and scored by balanced validation pair accuracy; RewardBench is never featurised or read here.
cd "$(dirname "$0")/.."
PROBES='{"helpfulness":["hh-rlhf/helpfulness","rmb/helpfulness"],"harmlessness":["hh-rlhf/harmlessness","rmb/harmlessness"],"preference":["ultrafeedback/overall","hh-rlhf/helpfulness","rmb/helpfulness"],"ultrafeedback":["ultrafeedback/overall"],"rmb-helpfulness":["rmb/helpfulness"]}'
# Round 1: objectives and gating training, from the v0.1.0 recipe (3 probes, unbalanced groups, tau 10).
P3='{"helpfulness":["hh-rlhf/helpfulness","rmb/helpfulness"],"harmlessness":["hh-rlhf/harmlessness","rmb/harmlessness"],"preference":["ultrafeedback/overall","hh-rlhf/helpfulness","rmb/helpfulness"]}'
.venv/bin/armo train sweep --config configs/v0.2.0.json --out runs/sweep.json "$@" \
  --set gating.temperature=10.0 --set gating.balance_groups=false --set "probes.objectives=$P3" \
  --try 'objectives.blackbox=true' \
  --try 'objectives.gating="equal"' \
  --try 'gating.balance_groups=true' \
  --try 'gating.init="uniform"' \
  --try 'gating.balance_groups=true;gating.init="uniform"' \
  --try 'probes.fit_fraction=0.5' \
  --try 'gating.input="response"' \
  --try 'gating.hidden_dim=64' \
  --try 'gating.dropout=0.3;gating.weight_decay=0.1' \
  --try "probes.objectives=$PROBES" \
  --try "probes.objectives=$PROBES;gating.balance_groups=true"
# Round 2, on top of the round-1 winner (configs/v0.2.0.json with tau 10, so "(config)" is it): the gating's shape.
.venv/bin/armo train sweep --config configs/v0.2.0.json --out runs/sweep_gating.json "$@" --set gating.temperature=10.0 \
  --try 'gating.n_hidden=0' \
  --try 'gating.lr=0.0003' \
  --try 'gating.n_hidden=0;gating.lr=0.003' \
  --try 'gating.temperature=0.3' \
  --try 'gating.temperature=1.0' \
  --try 'gating.temperature=3.0' \
  --try 'gating.n_hidden=1;gating.hidden_dim=64;gating.dropout=0.3' \
  --try 'gating.temperature=1.0;gating.n_hidden=1;gating.hidden_dim=64;gating.dropout=0.3' \
  --try 'gating.temperature=1.0;gating.init="uniform"'
# Round 3, on the larger sample (configs/v0.3.0.json: a third extension), from the v0.2.0 recipe (tau 3).
.venv/bin/armo train sweep --config configs/v0.3.0.json --out runs/sweep_round3.json "$@" --set gating.temperature=3.0 \
  --try "gating.balance_groups=false;gating.temperature=10.0;probes.objectives=$P3" \
  --try 'gating.temperature=10.0' \
  --try 'gating.temperature=1.0' \
  --try 'objectives.blackbox=true' \
  --try 'objectives.gating="equal"'
# Round 4, on the fourth extension (configs/default.json), from the round-3 winner (tau 1): tau again, and the black box
# for comparison only (the product is the ArmoRM recipe, so only its variants are candidates for the default).
.venv/bin/armo train sweep --config configs/default.json --out runs/sweep_round4.json "$@" --set gating.temperature=1.0 \
  --try 'gating.temperature=3.0' \
  --try 'gating.temperature=0.3' \
  --try 'objectives.blackbox=true'
# Round 5: the same sample, validation split by prompt (data.split_by; the id split leaked RMB responses into
# validation), from the v0.4.0 recipe; then 5b from the best temperature. Winner (ties on balanced broken by "all"):
# probes.cross_fit=5 with tau 30 = configs/v0.5.0.json (v0.5.0, not promoted: research/NOTEBOOK.md, round 5).
.venv/bin/armo train sweep --config configs/default.json --out runs/sweep_round5.json "$@" --set 'data.split_by="prompt"' \
  --try 'gating.temperature=1.0' \
  --try 'gating.temperature=10.0' \
  --try 'probes.cross_fit=5' \
  --try 'objectives.gating="equal"' \
  --try 'objectives.blackbox=true' \
  --try 'gating.input="response"'
.venv/bin/armo train sweep --config configs/default.json --out runs/sweep_round5b.json "$@" --set 'data.split_by="prompt"' \
  --set gating.temperature=10.0 \
  --try 'probes.cross_fit=5' \
  --try 'probes.cross_fit=5;gating.temperature=30.0'
