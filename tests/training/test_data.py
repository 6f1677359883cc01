"""Data loaders: the real shared files (a few rows; skipped when ../shared/data is absent) and a user's JSONL."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

from armo.training import data
from armo.training.config import DataConfig, EvalConfig, SampleExtension
from armo.training.prepare import build_eval_set, build_training_set, pair_category, pair_group
from tests.conftest import SHARED_DATA


def _head(src: Path, dst: Path, n: int = 5) -> Path:
    with gzip.open(src, "rt", encoding="utf-8") as f:
        dst.write_text("".join(itertools.islice(f, n)))
    return dst


needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")


@pytest.mark.data
@needs_data
@pytest.mark.parametrize(
    "name",
    ["train/ratings/justeval_multiaspect.jsonl.gz", "train/ratings/ultrafeedback_overall.jsonl.gz"],
)
def test_real_ratings_rows(name: str, tmp_path: Path) -> None:
    head = _head(SHARED_DATA / name, tmp_path / "head.jsonl")
    rows = data.load_ratings(head)
    assert len(rows) == 5
    for r in rows:
        assert r.messages[-1]["role"] == "user" and r.response and r.ratings
        assert all(isinstance(v, float) for v in r.ratings.values())


@pytest.mark.data
@needs_data
@pytest.mark.parametrize(
    "name",
    ["train/pairwise/hh_rlhf.jsonl.gz", "train/pairwise/rmb.jsonl.gz", "eval/rewardbench_filtered.jsonl.gz"],
)
def test_real_pair_rows(name: str, tmp_path: Path) -> None:
    head = _head(SHARED_DATA / name, tmp_path / "head.jsonl")
    rows = data.load_pairs(head)
    assert len(rows) == 5
    for p in rows:
        assert p.messages[-1]["role"] == "user" and p.chosen and p.rejected and p.objective
        if name.startswith("eval"):
            assert p.subset and p.section and p.id.startswith(p.subset)
        if "rmb" in name:  # RMB's topic, e.g. "Helpfulness/Code/Data Management", refines the group
            assert p.category.split("/")[0].lower() == p.objective
            assert pair_category(p) == f"rmb/{p.objective}/{p.category.split('/')[1]}"
        else:
            assert not p.category and pair_category(p) == pair_group(p)


def test_user_jsonl_and_deterministic_split(tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    rows = [
        {"id": f"r{i}", "messages": [{"role": "user", "content": "q"}], "response": "a", "ratings": {"x": i}}
        for i in range(200)
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = data.load_ratings(f)
    train, val = data.split(loaded, 0.2)
    _, val2 = data.split(list(reversed(loaded)), 0.2)
    assert {r.id for r in val} == {r.id for r in val2} and len(train) + len(val) == 200
    assert 20 < len(val) < 60


def test_stratified_sample_is_seeded_and_bounded() -> None:
    rows = [
        data.PairRow(f"{g}{i}", "s", g, ({"role": "user", "content": "q"},), "c", "r") for g in "ab" for i in range(10)
    ]
    a = data.stratified_sample(rows, lambda p: p.objective, {"a": 3, "b": 20}, seed=0)
    assert [p.objective for p in a].count("a") == 3 and [p.objective for p in a].count("b") == 10
    assert a == data.stratified_sample(rows, lambda p: p.objective, {"a": 3, "b": 20}, seed=0)
    frac = data.stratified_sample(rows, lambda p: p.objective, 0.1, seed=0, min_per_group=2)
    assert len(frac) == 4


def test_training_and_eval_sets(synthetic_data: Path) -> None:
    ds = build_training_set(DataConfig(root=str(synthetic_data), val_fraction=0.25))
    assert ds.pairs and ds.ratings and len(ds.pair_items) == len(ds.pairs)
    # an UltraFeedback rating follows its pair and shares its features (deduplicated items)
    uf = next(i for i, r in enumerate(ds.ratings) if r.id.endswith("-chosen"))
    pair = next(i for i, p in enumerate(ds.pairs) if p.id == ds.ratings[uf].id.removesuffix("-chosen"))
    assert ds.rating_item[uf] == ds.pair_items[pair][0]
    assert ds.rating_val[uf] == ds.pair_val[pair]
    ev = build_eval_set(EvalConfig(root=str(synthetic_data), fast_fraction=0.1, fast_min=1), fast=True)
    assert len({p.subset for p in ev.pairs}) == 24  # every RewardBench subset + anthropic_hhh kept


def test_extension_reuses_the_base_sample(synthetic_data: Path) -> None:
    base_cfg = DataConfig(root=str(synthetic_data), pair_sample={"hh-rlhf/helpfulness": 3}, rating_sample={})
    base = build_training_set(base_cfg)
    ext_cfg = DataConfig(
        root=str(synthetic_data),
        pair_sample={"hh-rlhf/helpfulness": 3},
        rating_sample={},
        extensions=[
            SampleExtension(pair_sample={"hh-rlhf/helpfulness": 8, "rmb/helpfulness": 2}, parts=2),
            SampleExtension(pair_sample={"rmb/helpfulness": 4}, parts=1),
        ],
    )
    ext = build_training_set(ext_cfg)
    n = len(base.items)
    assert ext.items[:n] == base.items  # same base items in the same order: the base job's cache key is unchanged
    assert ext.parts[:2] == [0, n] and ext.parts[-1] == len(ext.items) and len(ext.parts) == 5
    assert len(ext.pairs) == 3 + 5 + 2 + 2 and len({p.id for p in ext.pairs}) == len(ext.pairs)
    first = build_training_set(DataConfig(**{**vars(ext_cfg), "extensions": ext_cfg.extensions[:1]}))
    assert ext.items[: len(first.items)] == first.items  # a later extension leaves earlier jobs' items unchanged
    assert ext.parts[:4] == first.parts


def test_a_sample_group_with_no_data_is_an_error_naming_it(tmp_path: Path) -> None:
    """A misspelt or missing group in data.pair_sample / data.rating_sample would get 0 rows in silence."""
    msgs = [{"role": "user", "content": "Name a colour."}]
    pairs = [
        {
            "id": f"p{i}",
            "source": "mine",
            "objective": "helpfulness",
            "messages": msgs,
            "chosen": "Blue.",
            "rejected": "No.",
        }
        for i in range(4)
    ]
    ratings = [
        {"id": f"r{i}", "source": "mine", "messages": msgs, "response": "Red.", "ratings": {"clarity": i}}
        for i in range(4)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (tmp_path / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ratings))

    def build(pair_sample: dict[str, int], rating_sample: dict[str, int]) -> int:
        cfg = DataConfig(
            root=str(tmp_path),
            pairwise=["pairs.jsonl"],
            ratings=["ratings.jsonl"],
            pair_sample=pair_sample,
            rating_sample=rating_sample,
        )
        ds = build_training_set(cfg)
        return len(ds.pairs) + len(ds.ratings)

    # a group asked for no rows may be absent (a default switched off for one's own data)
    assert build({"mine/helpfulness": 3, "hh-rlhf/helpfulness": 0}, {"mine/clarity": 2}) == 5
    with pytest.raises(
        ValueError, match=r"data\.pair_sample: no data in group\(s\) mine/helpfulnes .*has mine/helpfulness"
    ):
        build({"mine/helpfulness": 3, "mine/helpfulnes": 2}, {})
    with pytest.raises(ValueError, match=r"data\.rating_sample: no data in group\(s\) mine/safety .*has mine/clarity"):
        build({"mine/helpfulness": 3}, {"mine/safety": 2})
    ext = DataConfig(
        root=str(tmp_path),
        pairwise=["pairs.jsonl"],
        ratings=[],
        pair_sample={"mine/helpfulness": 1},
        rating_sample={},
        extensions=[SampleExtension(pair_sample={"other/helpfulness": 2})],
    )
    with pytest.raises(ValueError, match="other/helpfulness"):  # an extension's groups are checked too
        build_training_set(ext)


def test_the_manifest_records_the_data_root_by_its_variable(tmp_path: Path) -> None:
    """Not the training machine's path: the files are named relative to the root and pinned by sha256."""
    from armo.training.artifact import DATA_ROOT, recorded_config
    from armo.training.config import load_config

    cfg = load_config(None, {"data.root": str(tmp_path / "mine"), "eval.root": str(tmp_path / "eval")})
    recorded = recorded_config(cfg)
    assert recorded["data"]["root"] == recorded["eval"]["root"] == DATA_ROOT == "$ARMO_DATA_DIR"
    assert str(tmp_path) not in json.dumps(recorded)
    assert recorded["data"]["pairwise"] == cfg.data.pairwise and cfg.data.root == str(tmp_path / "mine")
