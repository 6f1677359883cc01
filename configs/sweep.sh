#!/bin/bash
# Validation-only model selection (evaluate=false: RewardBench is never looked at here).
cd "$(dirname "$0")/.."
A=".venv/bin/armo train run --config configs/default.json --set publish=false --set evaluate=false"
for s in "objectives.rules=[\"verbosity\",\"refusal\",\"compliance\",\"repetition\",\"markdown\",\"code_parses\"]" "probes.fit_fraction=0.5" "probes.fit_fraction=1.0" "gating.input=response" "gating.lr=0.003" "gating.hidden_dim=64" "objectives.rules=[\"verbosity\"]"; do
  $A --set "$s" --name sweep 2>&1 | grep "gating:" | sed "s/.*gating: /$s /" | cut -c1-260
done
