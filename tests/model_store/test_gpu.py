"""The GPU path: the same code in bf16 on CUDA agrees with fp32 on the CPU (skipped where there is no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from armo.model_store.backbone import load_backbone
from armo.model_store.reward_model import RewardModel, ScoreItem
from tests.conftest import default_scoring, make_artifact

ITEMS = [
    ScoreItem([{"role": "user", "content": "Name a prime number."}], "7"),
    ScoreItem([{"role": "user", "content": "Name a prime number."}], "Nine, which is prime."),
]


@pytest.mark.cuda
def test_cuda_bf16_matches_cpu_fp32(tiny_backbone_dir: Path) -> None:
    cpu = load_backbone(str(tiny_backbone_dir))
    gpu = load_backbone(str(tiny_backbone_dir), device="cuda", dtype="bfloat16")
    manifest, head = make_artifact(cpu)
    expected = [r.score for r in RewardModel(cpu, head, manifest, default_scoring(manifest)).score(ITEMS)]
    got = [r.score for r in RewardModel(gpu, head, manifest, default_scoring(manifest)).score(ITEMS)]
    assert got == pytest.approx(expected, abs=5e-2)
