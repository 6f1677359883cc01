#!/bin/bash
# Issue 31's whole-backbone run spans sessions, and a session's machine keeps nothing outside git: the run's resume
# state (adapters, head, optimiser, scheduler, RNG, position; ~29 MB at rank 8) and epoch 0's fit (a few KB) are
# carried in research/runs/whole-backbone/ between sessions.
#   bash research/whole_backbone.sh restore   # carried state → runs/backbone/ (then start the run)
#   bash research/whole_backbone.sh run       # restore, then train in the background (log: runs/backbone/whole.log)
#   bash research/whole_backbone.sh save      # the run's last checkpoint → the carried state (commit it)
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=research/runs/whole-backbone
RUN=runs/backbone
case "${1:-}" in
  restore)
    mkdir -p "$RUN/whole"
    [ -f "$CARRY/checkpoint.pt" ] && cp -n "$CARRY/checkpoint.pt" "$RUN/whole/"
    for f in "$CARRY"/epoch0-*.pt; do [ -f "$f" ] && cp -n "$f" "$RUN/"; done
    ls -l "$RUN" "$RUN/whole" ;;
  run)
    "$0" restore
    nohup .venv/bin/armo train backbone --config configs/whole-backbone.json --name whole >> "$RUN/whole.log" 2>&1 &
    echo "training: pid $!, log $RUN/whole.log" ;;
  save)
    mkdir -p "$CARRY"
    cp "$RUN/whole/checkpoint.pt" "$CARRY/"
    # epoch 0's fit, not the frozen features it was fit on (those are only read when the fit is missing)
    for f in "$RUN"/epoch0-*.pt; do case "$f" in *-training.pt|*-validation.pt) ;; *) cp "$f" "$CARRY/" ;; esac; done
    [ -f "$RUN/whole/stage0.json" ] && cp "$RUN/whole/stage0.json" "$CARRY/"
    [ -f "$RUN/whole/backbone_delta.safetensors" ] && cp "$RUN/whole/backbone_delta.safetensors" "$RUN/whole/delta.json" "$CARRY/"
    du -sh "$CARRY"/* ;;
  *) echo "usage: $0 restore|run|save" >&2; exit 2 ;;
esac
