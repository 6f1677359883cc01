"""Stage 0's batches: which cached passes of the layer cache hold which training or validation pairs, and the
(sub-)pass cut from one for the tuner — only the prompt groups that hold wanted pairs, and where each pair's two
responses come out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from armo.training.layer_cache import LayerCache
from armo.training.prepare import Dataset, part_bounds


@dataclass(frozen=True)
class PassRef:
    """One cached pass: which cache, shard and pass, and the pairs whose two responses it holds."""

    cache: int
    shard: int
    index: int
    pairs: tuple[int, ...]  # indices into the dataset's pairs


def pass_index(caches: list[LayerCache], ds: Dataset, pairs: set[int]) -> list[PassRef]:
    """Every cached pass that holds at least one of `pairs` (both sides of a pair share a prompt, hence a group,
    hence a pass)."""
    offsets = [a for a, _ in part_bounds(ds)]
    by_item: dict[int, list[int]] = {}
    for p in pairs:
        by_item.setdefault(ds.pair_items[p][0], []).append(p)
    out = []
    for c, cache in enumerate(caches):
        for s in range(len(cache.shards)):
            for j in range(cache.pass_count(s)):
                held = {offsets[c] + i for group in cache.pass_groups(s, j)[1] for i in group}
                found = tuple(p for i in held for p in by_item.get(i, ()) if ds.pair_items[p][1] in held)
                if found:
                    out.append(PassRef(c, s, j, tuple(sorted(found))))
    return out


def _sub_pass(hidden_in: Tensor, groups: list[Any], keep: list[int]) -> tuple[Tensor, list[Any]]:
    """The pass restricted to groups `keep`: units sit end to end in the row, so their rows are sliced out."""
    starts = [0]
    for g in groups:
        starts.append(starts[-1] + g.tokens)
    rows = torch.cat([torch.arange(starts[k], starts[k + 1]) for k in keep])
    return hidden_in[rows], [groups[k] for k in keep]


@dataclass
class Batch:
    """A (sub-)pass ready for the tuner: its input rows, groups, and the output rows of each pair's two sides."""

    hidden: Tensor
    groups: list[Any]
    chosen: Tensor  # [P] output rows
    rejected: Tensor  # [P]
    pairs: list[int]


def make_batch(cache: LayerCache, ref: PassRef, ds: Dataset, offset: int, pairs: set[int]) -> Batch | None:
    """The groups of a cached pass that hold `pairs`, and where each pair's sides come out."""
    groups, items = cache.pass_groups(ref.shard, ref.index)
    wanted = [p for p in ref.pairs if p in pairs]
    if not wanted:
        return None
    group_of = {offset + i: k for k, group in enumerate(items) for i in group}
    keep = sorted({group_of[ds.pair_items[p][0]] for p in wanted})
    row: dict[int, int] = {}
    for k in keep:  # output rows: the kept groups' responses, in order
        for i in items[k]:
            row[offset + i] = len(row)
    hidden, sub = _sub_pass(cache.pass_input(ref.shard, ref.index), groups, keep)
    chosen = torch.tensor([row[ds.pair_items[p][0]] for p in wanted])
    rejected = torch.tensor([row[ds.pair_items[p][1]] for p in wanted])
    return Batch(hidden, sub, chosen, rejected, wanted)
