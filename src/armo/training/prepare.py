"""Select the rows a run trains / evaluates on and turn them into one deduplicated extraction job each.

A response that appears in several rows (an UltraFeedback rating and the side of an UltraFeedback pair) is
featurised once. Splits are by hash of the row id or of the prompt (`data.split_by`); a rating row of a pair
follows its pair's split.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from armo.model_store.encoding import validate_conversation
from armo.model_store.errors import InputError
from armo.training.config import DataConfig, EvalConfig
from armo.training.data import (
    PairRow,
    RatingRow,
    check_groups,
    file_sha256,
    id_fraction,
    load_pairs,
    load_ratings,
    stratified_sample,
)
from armo.training.extract import Item

SUFFIXES = ("-chosen", "-rejected")


@dataclass
class Dataset:
    items: list[Item] = field(default_factory=list)
    ratings: list[RatingRow] = field(default_factory=list)
    rating_item: list[int] = field(default_factory=list)  # item index of each rating row
    rating_val: list[bool] = field(default_factory=list)
    pairs: list[PairRow] = field(default_factory=list)
    pair_items: list[tuple[int, int]] = field(default_factory=list)  # (chosen item, rejected item)
    pair_val: list[bool] = field(default_factory=list)
    data_hashes: dict[str, str] = field(default_factory=dict)
    parts: list[int] = field(default_factory=list)  # item boundaries of the extraction jobs ([] = one job)
    _index: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def item(self, messages: Sequence[dict[str, str]], response: str) -> int:
        key = (repr(list(messages)), response)
        if key not in self._index:
            self._index[key] = len(self.items)
            self.items.append(Item(tuple(messages), response))
        return self._index[key]

    def index_of(self, item: Item) -> int:
        """Position of an item of this dataset (KeyError if it is not one)."""
        return self._index[(repr(list(item.messages)), item.response)]

    def add_pair(self, p: PairRow, val: bool) -> None:
        self.pairs.append(p)
        self.pair_items.append((self.item(p.messages, p.chosen), self.item(p.messages, p.rejected)))
        self.pair_val.append(val)

    def add_rating(self, r: RatingRow, val: bool) -> None:
        self.ratings.append(r)
        self.rating_item.append(self.item(r.messages, r.response))
        self.rating_val.append(val)


def part_bounds(ds: Dataset) -> list[tuple[int, int]]:
    """Item ranges of the training set's extraction jobs."""
    bounds = ds.parts if len(ds.parts) > 1 else [0, len(ds.items)]
    return list(itertools.pairwise(bounds))


def valid(messages: Sequence[dict[str, str]], *responses: str) -> bool:
    """Rows the chat template cannot render faithfully (empty turns …) are skipped in training."""
    try:
        for r in responses:
            validate_conversation(messages, r)
    except InputError:
        return False
    return True


def pair_group(p: PairRow) -> str:
    return f"{p.source}/{p.objective}"


def pair_category(p: PairRow) -> str:
    """The pair's group refined by the second level of its source's category, where it has one (RMB:
    "rmb/helpfulness/Code", "rmb/harmlessness/S3"); else the group. For reading results, not for the rule."""
    levels = p.category.split("/")
    return f"{pair_group(p)}/{levels[1]}" if len(levels) > 1 else pair_group(p)


def rating_group(r: RatingRow) -> str:
    return f"{r.source}/{'multi' if len(r.ratings) > 1 else next(iter(r.ratings), 'none')}"


SPLIT_OVERLAP = ("val_pairs", "share_a_response", "share_the_prompt")


def split_overlap(ds: Dataset) -> dict[str, dict[str, int]]:
    """Per pair group: validation pairs, and how many share a response / the prompt with a training pair — what a
    split must keep at 0 for validation accuracy to measure generalisation (a probe fit on a response scores it)."""
    train = [i for i, v in enumerate(ds.pair_val) if not v]
    train_items = {it for i in train for it in ds.pair_items[i]}
    train_prompts = {prompt_key(ds.pairs[i].messages) for i in train}
    out: dict[str, dict[str, int]] = {}
    for i, v in enumerate(ds.pair_val):
        if v:
            row = out.setdefault(pair_group(ds.pairs[i]), dict.fromkeys(SPLIT_OVERLAP, 0))
            row["val_pairs"] += 1
            row["share_a_response"] += any(it in train_items for it in ds.pair_items[i])
            row["share_the_prompt"] += prompt_key(ds.pairs[i].messages) in train_prompts
    return dict(sorted(out.items()))


def id_stem(row_id: str) -> str:
    """A rating row's id without its "-chosen"/"-rejected" suffix: its pair's id, so both split together."""
    for s in SUFFIXES:
        if row_id.endswith(s):
            return row_id[: -len(s)]
    return row_id


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """The conversation before the response, as one string."""
    return json.dumps([dict(m) for m in messages], sort_keys=True, ensure_ascii=False)


def split_key(cfg: DataConfig, split_id: str, messages: Sequence[dict[str, str]]) -> str:
    """What the train/validation split (and the probes' cross-fit folds) hash: the row id or the prompt."""
    if cfg.split_by == "id":
        return split_id
    if cfg.split_by == "prompt":
        return prompt_key(messages)
    raise ValueError(f"data.split_by must be 'id' or 'prompt', got {cfg.split_by!r}")


def _is_val(cfg: DataConfig, split_id: str, messages: Sequence[dict[str, str]]) -> bool:
    return id_fraction(split_key(cfg, split_id, messages)) < cfg.val_fraction


def _add_rows(ds: Dataset, cfg: DataConfig, pair_sample: dict[str, int], rating_sample: dict[str, int]) -> None:
    """Add the sampled rows not already in `ds` (a larger sample with the same seed is a superset)."""
    root = Path(cfg.root)
    have = {p.id for p in ds.pairs} | {r.id for r in ds.ratings}
    sampled_pair_ids = {p.id for p in ds.pairs}
    pair_groups: set[str] = set()
    for f in cfg.pairwise:
        ds.data_hashes[f] = file_sha256(root / f)
        rows = [p for p in load_pairs(root / f) if valid(p.messages, p.chosen, p.rejected)]
        pair_groups.update(map(pair_group, rows))
        for p in stratified_sample(rows, pair_group, pair_sample, cfg.seed):
            sampled_pair_ids.add(p.id)
            if p.id not in have:
                ds.add_pair(p, _is_val(cfg, p.id, p.messages))
    check_groups(pair_sample, pair_groups, "data.pair_sample")
    rating_groups: set[str] = set()
    for f in cfg.ratings:
        ds.data_hashes[f] = file_sha256(root / f)
        rated = [r for r in load_ratings(root / f) if valid(r.messages, r.response)]
        follow = [r for r in rated if r.source in cfg.ratings_follow_pairs and id_stem(r.id) in sampled_pair_ids]
        sampled = [r for r in rated if r.source not in cfg.ratings_follow_pairs]
        rating_groups.update(map(rating_group, sampled))
        for r in follow + stratified_sample(sampled, rating_group, rating_sample, cfg.seed):
            if r.id not in have:
                ds.add_rating(r, _is_val(cfg, id_stem(r.id), r.messages))
    check_groups(rating_sample, rating_groups, "data.rating_sample")


def build_training_set(cfg: DataConfig) -> Dataset:
    """The base sample, then each extension in turn; an extension's new responses form `parts` separate extraction
    jobs, so the caches of the base and of earlier extensions are reused."""
    ds = Dataset()
    _add_rows(ds, cfg, cfg.pair_sample, cfg.rating_sample)
    ds.parts = [0, len(ds.items)]
    pairs, ratings = dict(cfg.pair_sample), dict(cfg.rating_sample)
    for ext in cfg.extensions:
        pairs.update(ext.pair_sample)
        ratings.update(ext.rating_sample)
        _add_rows(ds, cfg, pairs, ratings)
        start, n = ds.parts[-1], len(ds.items)
        step = -(-(n - start) // max(1, ext.parts))
        ds.parts += [min(n, start + step * (i + 1)) for i in range(ext.parts) if start + step * i < n]
    return ds


def build_eval_set(cfg: EvalConfig, fast: bool) -> Dataset:
    """RewardBench filtered (+ prior sets); fast mode keeps a stratified `fast_fraction` of every subset."""
    root = Path(cfg.root)
    ds = Dataset()
    for f in [cfg.rewardbench, *cfg.prior]:
        ds.data_hashes[f] = file_sha256(root / f)
        rows = load_pairs(root / f)
        if fast:
            rows = stratified_sample(rows, lambda p: p.subset, cfg.fast_fraction, cfg.seed, cfg.fast_min)
        for p in rows:
            ds.add_pair(p, False)
    return ds
