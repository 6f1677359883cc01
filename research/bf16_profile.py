"""Where a packed bf16 forward spends its time on this CPU (torch.profiler, operators by self CPU time).

    .venv/bin/python -m research.bf16_profile
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from armo.model_store.backbone import load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.forward import item_features
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings
from benchmarks.run import rewardbench_pairs

manifest, head = ModelStore(BUNDLED_ROOT).load(DEFAULT_MODEL)
config = Settings.model_construct().scoring_config(manifest.backbone.max_length)
bb = load_backbone("embedded", dtype="bfloat16")
rm = RewardModel(bb, head, manifest, config)
items = [ScoreItem(m, y) for m, c, r in rewardbench_pairs(bb, 24, 1024) for y in (c, r)]
encoded = [rm.prepare(it).encoded for it in items]
item_features(bb, encoded, config.forward, share_prompts=False)  # warm-up
with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
    item_features(bb, encoded, config.forward, share_prompts=False)
table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
print(table)
