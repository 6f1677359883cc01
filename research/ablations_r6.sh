#!/bin/bash
# Round 6 (research/NOTEBOOK.md): the incumbent recipe and the candidate (research/round6_mean.json, not promoted: the rule
# said no) on the same features and split, and the ablation rows on the mean feature; every row fits from the cached
# features and evaluates on the full RewardBench (publish=false).
cd "$(dirname "$0")/.."
A="nice -n 5 .venv/bin/armo train run --config research/round6_mean.json --set publish=false"
$A --set pooling=last --name r6_incumbent_last
$A --name r6_candidate_mean
$A --set objectives.blackbox=true --name r6_a_blackbox
$A --set pooling=last --set objectives.blackbox=true --name r6_a_blackbox_last
$A --set objectives.gating=equal --name r6_b_equal_weights
$A --set objectives.debias=false --name r6_c_no_debias
$A --set 'objectives.rules=["verbosity"]' --name r6_d_armorm
$A --set gating.input=response --name r6_f_response_gating
