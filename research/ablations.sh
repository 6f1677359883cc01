#!/bin/bash
# Ablations (research/NOTEBOOK.md) on the same cached features and splits (publish=false); the default run is separate:
#   armo train run --config configs/v0.2.0.json --set publish=false --name e_default (v0.2.0, docs/RESULTS.md)
cd "$(dirname "$0")/.."
A="nice -n 5 .venv/bin/armo train run --config configs/v0.2.0.json --set publish=false"
PROBES3='{"helpfulness":["hh-rlhf/helpfulness","rmb/helpfulness"],"harmlessness":["hh-rlhf/harmlessness","rmb/harmlessness"],"preference":["ultrafeedback/overall","hh-rlhf/helpfulness","rmb/helpfulness"]}'
$A --set objectives.blackbox=true --name a_blackbox
$A --set objectives.gating=equal --name b_equal_weights
$A --set objectives.debias=false --name c_no_debias
$A --set 'objectives.rules=["verbosity"]' --name d_armorm
$A --set gating.input=response --name f_rules_response_gating
$A --set 'objectives.rules=["verbosity"]' --set gating.input=response --name f_armorm_response_gating
$A --set gating.temperature=10.0 --name i_tau10
$A --set gating.balance_groups=false --set gating.temperature=10.0 --set "probes.objectives=$PROBES3" --name h_v010_recipe
