#!/bin/bash
# Round 7 (research/NOTEBOOK.md): the incumbent recipe (v0.4.0's, pooling last) and four ArmoRM-shaped candidates on the
# mean feature, compared by 5-fold cross-validation over the training pairs (cached features; RewardBench not read).
cd "$(dirname "$0")/.."
OVERALL='probes.objectives.overall=["hh-rlhf/harmlessness","hh-rlhf/helpfulness","rmb/harmlessness","rmb/helpfulness","ultrafeedback/overall"]'
.venv/bin/armo train cv --config research/round6_mean.json --set pooling=last \
  --try "pooling=mean;$OVERALL" \
  --try 'pooling=mean;debias.threshold=0.1' \
  --try 'pooling=mean;probes.cross_fit=5' \
  --try "pooling=mean;$OVERALL;probes.cross_fit=5" \
  --out runs/cv_round7.json
