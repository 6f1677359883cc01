#!/bin/bash
# Issue 31's whole-backbone run spans sessions, and a session's machine keeps nothing outside git: the run's resume
# state (adapters, head, optimiser, scheduler, RNG, position; ~29 MB at rank 8) and epoch 0's fit (a few KB) are
# saved to research/runs/whole-backbone/. Only epoch 0's fit is committed: files over 5 MiB (the checkpoint) stay
# out of git by the project's rule, so a checkpoint survives only on a machine that is kept.
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
    if [ -f "$RUN/whole/checkpoint.pt" ]; then cp "$RUN/whole/checkpoint.pt" "$CARRY/"; else echo "no checkpoint yet"; fi
    # epoch 0's fit; the frozen features it is fit on (~8 MB per split) only while the fit is missing
    fits=$(ls "$RUN"/epoch0-*.pt 2>/dev/null | grep -v -e '-training.pt$' -e '-validation.pt$' || true)
    if [ -n "$fits" ]; then
      cp $fits "$CARRY/"; rm -f "$CARRY"/epoch0-*-training.pt "$CARRY"/epoch0-*-validation.pt
    else
      for f in "$RUN"/epoch0-*.pt; do [ -f "$f" ] && cp "$f" "$CARRY/"; done
    fi
    if [ -f "$RUN/whole/stage0.json" ]; then  # the run has ended: its report and its best epoch's delta
      cp "$RUN/whole/stage0.json" "$RUN/whole/backbone_delta.safetensors" "$RUN/whole/delta.json" "$CARRY/"
    fi
    du -sh "$CARRY"/* ;;
  *) echo "usage: $0 restore|run|save" >&2; exit 2 ;;
esac
