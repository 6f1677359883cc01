#!/bin/bash
# Session 13 (research/NOTEBOOK.md): the RewardBench row of rounds 8-9's control, the frozen backbone with the
# v0.6.0 recipe (three probes, rules) on round 8's sample and split: training features by a full extraction (no
# layer cache needed), stages 1-4, then the full RewardBench set. Not published: the store already holds the
# control's artifact where round 8 ran, and this row decides nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/armo train run --config configs/v0.6.0.json --name v060_frozen --set stage0.delta= \
  --set version=v0.6.0-frozen
.venv/bin/armo train report runs/train/v060_frozen
