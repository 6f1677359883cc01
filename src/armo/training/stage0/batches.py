"""Stage 0's batches: which cached passes of the layer cache hold which training or validation pairs, the
(sub-)pass cut from one for the tuner — only the prompt groups that hold wanted pairs, and where each pair's two
responses come out — and the pairs' feature differences through the top layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm
from transformers import PreTrainedModel

from armo.model_store.manifest import Pooling
from armo.training.prepare import Dataset, part_bounds
from armo.training.stage0.layer_cache import LayerCache, run_top

PassKey = tuple[int, int, int]  # (cache, shard, pass)


@dataclass(frozen=True)
class PassRef:
    """One unit of stage 0: the cached pass(es) that hold both responses of `pairs`. Usually one pass: a pair's
    sides share a prompt, hence a group. Two when a pair's sides sit in different extraction parts (a response is
    featurised once, in the first part that has it, so a later part's pair can reuse one side of an earlier part's:
    18 % of v0.6.1's pairs); the prompt then has a group in each part's pass."""

    passes: tuple[PassKey, ...]
    pairs: tuple[int, ...]  # indices into the dataset's pairs


def pass_index(caches: list[LayerCache], ds: Dataset, pairs: set[int]) -> list[PassRef]:
    """Every unit (one or two cached passes) that holds both sides of at least one of `pairs`; each pair in one."""
    offsets = [a for a, _ in part_bounds(ds)]
    where: dict[int, PassKey] = {}  # item → its pass
    for c, cache in enumerate(caches):
        for s in range(len(cache.shards)):
            for j in range(cache.pass_count(s)):
                for group in cache.pass_groups(s, j)[1]:
                    where.update((offsets[c] + i, (c, s, j)) for i in group)
    units: dict[tuple[PassKey, ...], list[int]] = {}
    for p in sorted(pairs):
        chosen, rejected = ds.pair_items[p]
        units.setdefault(tuple(sorted({where[chosen], where[rejected]})), []).append(p)
    return [PassRef(key, tuple(found)) for key, found in sorted(units.items())]


def _sub_pass(hidden_in: Tensor, groups: list[Any], keep: list[int]) -> tuple[Tensor, list[Any]]:
    """The pass restricted to groups `keep`: units sit end to end in the row, so their rows are sliced out."""
    starts = [0]
    for g in groups:
        starts.append(starts[-1] + g.tokens)
    rows = torch.cat([torch.arange(starts[k], starts[k + 1], device=hidden_in.device) for k in keep])
    return hidden_in[rows], [groups[k] for k in keep]


@dataclass
class Batch:
    """A unit ready for the tuner: per cached pass, its input rows and kept groups; the output rows (counted across
    the passes in order) of each pair's two sides."""

    subs: list[tuple[Tensor, list[Any]]]  # ([tokens, d] layer input, groups) per pass
    chosen: Tensor  # [P] output rows
    rejected: Tensor  # [P]
    pairs: list[int]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] for h, _ in self.subs)

    def pooled(self, top: PreTrainedModel, pooling: Pooling) -> Tensor:
        """[outputs, d] the responses' pooled features through `top`, passes concatenated."""
        return torch.cat([run_top(top, h, groups).pooled(pooling) for h, groups in self.subs])


def make_batch(caches: list[LayerCache], ref: PassRef, ds: Dataset, pairs: set[int]) -> Batch | None:
    """The groups of the unit's passes that hold `pairs`' responses, and where each pair's sides come out."""
    wanted = [p for p in ref.pairs if p in pairs]
    if not wanted:
        return None
    offsets = [a for a, _ in part_bounds(ds)]
    sides = {i for p in wanted for i in ds.pair_items[p]}
    row: dict[int, int] = {}
    subs = []
    for c, s, j in ref.passes:
        groups, items = caches[c].pass_groups(s, j)
        keep = [k for k, group in enumerate(items) if sides.intersection(offsets[c] + i for i in group)]
        for k in keep:  # output rows: the kept groups' responses, in order
            for i in items[k]:
                row[offsets[c] + i] = len(row)
        subs.append(_sub_pass(caches[c].pass_input(s, j), groups, keep))
    device = subs[0][0].device  # the rewards these rows index come out on the cached inputs' device
    chosen = torch.tensor([row[ds.pair_items[p][0]] for p in wanted], device=device)
    rejected = torch.tensor([row[ds.pair_items[p][1]] for p in wanted], device=device)
    return Batch(subs, chosen, rejected, wanted)


def pair_diffs(
    top: PreTrainedModel,
    pooling: Pooling,
    caches: list[LayerCache],
    refs: list[PassRef],
    ds: Dataset,
    desc: str | None = None,
) -> tuple[list[int], Tensor]:
    """The pairs of `refs` and their pooled-feature differences h_chosen − h_rejected [P, d] (on the CPU) through
    `top` (the tuner's layers; no gradients). A linear head's reward margin is then head.weight · diff. With `desc`,
    a progress bar."""
    pairs = {p for r in refs for p in r.pairs}
    ids: list[int] = []
    diffs: list[Tensor] = []
    with torch.inference_mode():
        for ref in tqdm(refs, desc=desc, unit="pass", disable=desc is None):
            b = make_batch(caches, ref, ds, pairs)
            if b is None:
                continue
            h = b.pooled(top, pooling)  # [outputs, d]
            ids.extend(b.pairs)
            diffs.append((h[b.chosen] - h[b.rejected]).cpu())
    return ids, torch.cat(diffs)
