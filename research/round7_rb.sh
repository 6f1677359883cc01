#!/bin/bash
# Round 7 (research/NOTEBOOK.md), after the decision: RewardBench (full set) of the four candidates, for the report only.
cd "$(dirname "$0")/.."
A="nice -n 5 .venv/bin/armo train run --config research/round6_mean.json --set publish=false"
OVERALL='probes.objectives.overall=["hh-rlhf/harmlessness","hh-rlhf/helpfulness","rmb/harmlessness","rmb/helpfulness","ultrafeedback/overall"]'
$A --set "$OVERALL" --name r7_c1_overall
$A --set debias.threshold=0.1 --name r7_c2_soft_debias
$A --set probes.cross_fit=5 --name r7_c3_cross_fit
$A --set "$OVERALL" --set probes.cross_fit=5 --name r7_c4_overall_cross_fit
