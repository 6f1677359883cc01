"""Fixtures for the training tests: a tiny synthetic data directory in the shared-data schema and a tiny config."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from armo.training.config import TrainConfig, load_config
from armo.training.rewardbench import SECTIONS

TOPICS = ["sorting a list", "baking bread", "the moon", "tax forms", "a python loop", "the french revolution"]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _good(topic: str, i: int) -> str:
    return f"Here is a clear answer about {topic}. Step {i}: explain the idea, then give an example."


def _bad(topic: str, i: int) -> str:
    return f"I'm sorry, but I cannot help with {topic}."


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few rows of every file the pipeline reads, same schema as ../shared/data."""
    root = tmp_path_factory.mktemp("data")
    rnd = random.Random(0)
    msgs = lambda t: [{"role": "user", "content": f"Tell me about {t}."}]  # noqa: E731
    je = []
    for i in range(24):
        t = TOPICS[i % len(TOPICS)]
        good = i % 2 == 0
        resp = _good(t, i) if good else _bad(t, i)
        base = 4.0 if good else 2.0
        names = ["helpfulness", "clarity", "factuality", "depth", "engagement"]
        je.append(
            {
                "id": f"je-{i}-multi",
                "source": "just-eval",
                "messages": msgs(t),
                "response": resp,
                "ratings": {f"justeval-{n}": base + rnd.choice([-1, 0, 1]) for n in names},
            }
        )
        je.append(
            {
                "id": f"je-{i}-safety",
                "source": "just-eval",
                "messages": msgs(t + " safely"),
                "response": resp,
                "ratings": {"justeval-safety": 5 - (i % 3)},
            }
        )
    _write(root / "train/ratings/justeval_multiaspect.jsonl.gz", je)
    uf_pairs, uf_ratings, hh, rmb = [], [], [], []
    for i in range(16):
        t = TOPICS[i % len(TOPICS)]
        m = [
            *msgs(t),
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": f"More on {t}, turn {i}."},
        ]
        uf_pairs.append(
            {
                "id": f"uf-{i}",
                "source": "ultrafeedback",
                "objective": "overall",
                "messages": msgs(t),
                "chosen": _good(t, i),
                "rejected": _bad(t, i),
            }
        )
        uf_ratings += [
            {
                "id": f"uf-{i}-chosen",
                "source": "ultrafeedback",
                "messages": msgs(t),
                "response": _good(t, i),
                "ratings": {"ultrafeedback-overall": 8.0},
            },
            {
                "id": f"uf-{i}-rejected",
                "source": "ultrafeedback",
                "messages": msgs(t),
                "response": _bad(t, i),
                "ratings": {"ultrafeedback-overall": 3.0},
            },
        ]
        obj = "helpfulness" if i % 2 else "harmlessness"
        hh.append(
            {
                "id": f"hh-{i}",
                "source": "hh-rlhf",
                "objective": obj,
                "messages": m,
                "chosen": _good(t, i + 1),
                "rejected": _bad(t, i + 1),
            }
        )
        rmb.append(
            {
                "id": f"rmb-{i}",
                "source": "rmb",
                "objective": obj,
                "messages": msgs(t + "!"),
                "chosen": _good(t, i + 2),
                "rejected": _bad(t, i + 2),
            }
        )
    _write(root / "train/ratings/ultrafeedback_overall.jsonl.gz", uf_ratings)
    _write(root / "train/pairwise/ultrafeedback.jsonl.gz", uf_pairs)
    _write(root / "train/pairwise/hh_rlhf.jsonl.gz", hh)
    _write(root / "train/pairwise/rmb.jsonl.gz", rmb)
    rb: list[dict[str, Any]] = []
    for section, subsets in SECTIONS.items():
        for s in subsets:
            for j in range(2):
                t = TOPICS[j]
                rb.append(
                    {
                        "id": len(rb),
                        "subset": s,
                        "section": section,
                        "prompt": f"Question {s} about {t}?",
                        "chosen": _good(t, j),
                        "rejected": _bad(t, j),
                        "chosen_model": "a",
                        "rejected_model": "b",
                    }
                )
    _write(root / "eval/rewardbench_filtered.jsonl.gz", rb)
    hhh = [
        {
            "id": j,
            "subset": "anthropic_hhh",
            "section": "Prior Sets",
            "prompt": f"Help with {TOPICS[j]}?",
            "chosen": _good(TOPICS[j], j),
            "rejected": _bad(TOPICS[j], j),
        }
        for j in range(4)
    ]
    _write(root / "eval/anthropic_hhh.jsonl.gz", hhh)
    return root


@pytest.fixture
def tiny_config(tmp_path: Path, synthetic_data: Path, tiny_backbone_dir: Path) -> TrainConfig:
    """Every stage on a handful of rows, with the tiny random Llama as backbone."""
    return load_config(
        None,
        {
            "backbone": str(tiny_backbone_dir),
            "store": str(tmp_path / "store"),
            "cache_dir": str(tmp_path / "features"),
            "out_dir": str(tmp_path / "runs"),
            "version": "t1",
            "data.root": str(synthetic_data),
            "data.pair_sample": {
                "hh-rlhf/helpfulness": 8,
                "hh-rlhf/harmlessness": 8,
                "rmb/helpfulness": 8,
                "rmb/harmlessness": 8,
                "ultrafeedback/overall": 16,
            },
            "data.rating_sample": {"just-eval/multi": 24, "just-eval/justeval-safety": 24},
            "data.extensions": [{"pair_sample": {"rmb/helpfulness": 16}}],  # a second and third extraction job
            "data.val_fraction": 0.25,
            "eval.root": str(synthetic_data),
            "extract.max_length": 128,
            "extract.shard_size": 16,
            "regression.min_rows": 5,
            "gating.hidden_dim": 8,
            "gating.max_epochs": 5,
            "gating.batch_size": 8,
            "debias.grid_steps": 31,
        },
    )
