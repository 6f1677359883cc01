"""Encoded sequences → (response feature, prompt feature) from the backbone, by one of three forward strategies.

- packed (`run_packed`, the default): sequences end to end in unpadded rows, each prompt once with its responses
  after it (`armo.model_store.packing`);
- prefix-cached (`run_prefix_cached`): prompts in one right-padded pass, responses on their prompt's key/value
  cache, for a backbone that cannot be packed;
- padded (`run_padded`): plain length-sorted padded batches, for sequences that share nothing.

`item_features` (any list of sequences, in order) and `group_features` (prompts with their responses) choose the
strategy. Two response features come out of every pass (`Features.pooled`, chosen per artifact in its manifest):
the hidden state at the response's end-of-turn token ("last", ArmoRM's choice for an 8B backbone) and the mean of
the hidden states over the response span — every token after the prompt boundary through that end-of-turn token
("mean"; on the 135M backbone it carries more preference signal, docs/RESULTS.md). The mean costs one small matmul
per pass.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import Tensor

from armo.model_store import packing
from armo.model_store.batching import Budget, Piece, cut
from armo.model_store.encoding import Encoded
from armo.model_store.manifest import Pooling

if TYPE_CHECKING:  # annotations only: the backbone module starts engines that read `Features` from here
    from armo.model_store.backbone import Backbone

PaddingSide = Literal["left", "right"]


@dataclass
class Features:
    response: Tensor  # [B, d] hidden state at the last real token (end-of-turn after the response)
    prompt: Tensor  # [B, d] hidden state at the end-of-turn token of the last user turn
    response_mean: Tensor  # [B, d] mean hidden state over the response span (after the boundary, through the end)

    def pooled(self, pooling: Pooling) -> Tensor:
        """The response feature an artifact's heads read."""
        return self.response if pooling == "last" else self.response_mean

    @classmethod
    def empty(cls, n: int, hidden_size: int) -> Features:
        return cls(*(torch.empty((n, hidden_size)) for _ in range(3)))

    def put(self, rows: Sequence[int] | slice, other: Features) -> None:
        """Write `other`'s rows into rows `rows` of this one (on the CPU)."""
        self.response[rows] = other.response.cpu()
        self.prompt[rows] = other.prompt.cpu()
        self.response_mean[rows] = other.response_mean.cpu()


def _pad_token_id(backbone: Backbone) -> int:
    """Any id the embedding can look up: padded positions are masked out, so the value never matters —
    but e.g. ArmoRM's pad id 128256 may lie outside the embedding table of a backbone loaded without it."""
    vocab = backbone.model.get_input_embeddings().num_embeddings
    for candidate in (backbone.tokenizer.pad_token_id, backbone.tokenizer.eos_token_id):
        if candidate is not None and 0 <= candidate < vocab:
            return int(candidate)
    return 0


@torch.inference_mode()
def run_padded(backbone: Backbone, batch: Sequence[Encoded], padding_side: PaddingSide = "right") -> Features:
    """One forward pass over a padded batch; features are gathered with the attention mask, not 'last position'.

    Position ids are derived from the mask so that left and right padding give the same features.
    """
    width = max(e.length for e in batch)
    pad = _pad_token_id(backbone)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    last = torch.empty(len(batch), dtype=torch.long)
    boundary = torch.empty(len(batch), dtype=torch.long)
    for row, e in enumerate(batch):
        start = width - e.length if padding_side == "left" else 0
        input_ids[row, start : start + e.length] = torch.tensor(e.input_ids)
        mask[row, start : start + e.length] = 1
        last[row] = start + e.length - 1
        boundary[row] = start + e.prompt_index
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    device = backbone.device
    out = backbone.model(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=False,
    )
    hidden = out.last_hidden_state.float()  # [B, T, d]
    rows = torch.arange(len(batch), device=device)
    t = torch.arange(width)
    span = (t > boundary[:, None]) & (t <= last[:, None])  # [B, T] the response span of each row
    return Features(
        response=hidden[rows, last.to(device)],
        prompt=hidden[rows, boundary.to(device)],
        response_mean=_masked_mean(hidden, span.to(device)),
    )


def _masked_sum(hidden: Tensor, mask: Tensor) -> Tensor:
    """[B, T, d], [B, T] 0/1 -> [B, d] sum of the masked positions (as one matmul, not a gather)."""
    return torch.einsum("bt,btd->bd", mask.to(hidden.dtype), hidden)


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    return _masked_sum(hidden, mask) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)


# Padding a padded pass may carry, as a share of its real tokens. Sorted neighbours can still differ a lot in length
# (a pair's chosen and rejected answers do), and padded rows cost full compute: with no cap, RewardBench-like pairs
# carried 28 % padding, which ate the whole 17 % saved by sharing the prompt. With none allowed at all, most rows
# run alone and lose what batching gives on this CPU. 5-15 % measured best (docs/BENCHMARKS.md).
MAX_PADDING = 0.1


@dataclass(frozen=True)
class PassBudget:
    """The size of one forward pass: `tokens` real tokens when packed, rows × longest when padded; `rows` outputs."""

    tokens: int
    rows: int
    max_padding: float = MAX_PADDING

    def budget(self) -> Budget:
        return Budget(self.tokens, self.rows, self.max_padding)


def padded_passes(lengths: Sequence[int], budget: PassBudget) -> list[list[int]]:
    """Indices sorted by length, cut into padded passes within the budget and its padding cap."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    passes = cut([Piece(lengths[i]) for i in order], budget.budget(), padded=True)
    return [[order[k] for k in p] for p in passes]


class PrefixGroup(Protocol):
    """A prompt and the continuations (response + end-of-turn) of every response to it."""

    @property
    def prompt_ids(self) -> Sequence[int]: ...

    @property
    def prompt_index(self) -> int: ...

    @property
    def suffixes(self) -> Sequence[Sequence[int]]: ...


@dataclass(frozen=True)
class SharedPrompt:
    prompt_ids: tuple[int, ...]
    prompt_index: int
    suffixes: tuple[tuple[int, ...], ...]


@torch.inference_mode()
def run_prefix_cached(backbone: Backbone, groups: Sequence[PrefixGroup], budget: PassBudget) -> Features:
    """Responses to several prompts: all prompts run once, in one right-padded pass; then every response runs on
    its own prompt's key/value cache (length-sorted padded passes within the budget). Rows: the groups' responses
    in order.

    Exact up to float reordering: attention over the cached prefix computes what the full pass computes, and the
    padded prompt positions are masked out (each response continues at its own prompt's length).
    """
    device = backbone.device
    pad = _pad_token_id(backbone)
    lp = max(len(g.prompt_ids) for g in groups)
    ids = torch.full((len(groups), lp), pad, dtype=torch.long)
    mask = torch.zeros((len(groups), lp), dtype=torch.long)
    for i, g in enumerate(groups):
        ids[i, : len(g.prompt_ids)] = torch.tensor(g.prompt_ids)
        mask[i, : len(g.prompt_ids)] = 1
    out = backbone.model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=torch.arange(lp).expand(len(groups), lp).to(device),
        use_cache=True,
    )
    boundary = torch.tensor([g.prompt_index for g in groups])
    prompt_hidden = out.last_hidden_state.float()  # [G, lp, d]
    prompt = prompt_hidden[torch.arange(len(groups), device=device), boundary.to(device)].cpu()  # [G, d]
    # The prompt's tail after the boundary (the template's trailing whitespace) opens every response's span.
    tail = (torch.arange(lp) > boundary[:, None]) & mask.bool()  # [G, lp]
    tail_sum, tail_n = _masked_sum(prompt_hidden, tail.to(device)).cpu(), tail.sum(dim=1)  # [G, d], [G]

    owner = torch.tensor([i for i, g in enumerate(groups) for _ in g.suffixes])  # [N] group of each response
    suffixes = [s for g in groups for s in g.suffixes]
    prompt_len = mask.sum(dim=1)  # [G]
    response = torch.empty((len(suffixes), backbone.hidden_size))
    response_mean = torch.empty_like(response)
    chunks = padded_passes([len(s) for s in suffixes], budget)
    for n, idx in enumerate(chunks):
        width = max(len(suffixes[k]) for k in idx)
        rids = torch.full((len(idx), width), pad, dtype=torch.long)
        rmask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, k in enumerate(idx):
            rids[row, : len(suffixes[k])] = torch.tensor(suffixes[k])
            rmask[row, : len(suffixes[k])] = 1
        own = owner[idx]
        # The forward appends to the cache and reorder_cache gathers in place: keep the prompts' cache pristine
        # for the chunks after this one.
        cache = out.past_key_values if n == len(chunks) - 1 else copy.deepcopy(out.past_key_values)
        cache.reorder_cache(own.to(device))  # [G, …] -> [n, …]: each response gets its prompt's keys/values
        hidden = backbone.model(
            input_ids=rids.to(device),
            attention_mask=torch.cat([mask[own], rmask], dim=1).to(device),
            position_ids=(prompt_len[own][:, None] + torch.arange(width)).to(device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state.float()  # [n, width, d]
        last = torch.tensor([len(suffixes[k]) - 1 for k in idx], device=device)
        response[idx] = hidden[torch.arange(len(idx), device=device), last].cpu()
        total = _masked_sum(hidden, rmask.to(device)).cpu() + tail_sum[own]
        response_mean[idx] = total / (rmask.sum(dim=1) + tail_n[own])[:, None].to(total.dtype)
    return Features(response=response, prompt=prompt[owner], response_mean=response_mean)


@torch.inference_mode()
def run_packed(backbone: Backbone, groups: Sequence[PrefixGroup], budget: PassBudget) -> Features:
    """Packed passes (`armo.model_store.packing`; the backbone must have `packed` set): each group's prompt runs
    once, its responses continue it in the same row, and nothing is padded. A group without suffixes is one whole
    sequence. Rows: each group's responses in order (one row for a group without suffixes).

    Exact up to float reordering: every segment attends to exactly the keys its own full sequence has.
    """
    units = [packing.Unit(g.prompt_ids, g.suffixes) for g in groups]
    out = Features.empty(sum(max(1, len(g.suffixes)) for g in groups), backbone.hidden_size)
    first = 0
    for idx in packing.passes(units, budget.tokens, budget.rows):
        hidden, placed = packing.forward(backbone.model, [units[i] for i in idx], backbone.compiled)
        feats = packed_outputs(hidden, placed, [groups[i] for i in idx])
        out.put(slice(first, first + feats.response.shape[0]), feats)
        first += feats.response.shape[0]
    return out


def packed_outputs(hidden: Tensor, placed: Sequence[packing.Placed], groups: Sequence[PrefixGroup]) -> Features:
    """The features of one packed pass's outputs from its last hidden state [N, d] (the groups in pass order);
    rows: each group's responses in order. Shared by serving and by training's cached top layers (stage 0)."""
    hidden = hidden.float()
    last: list[int] = []
    boundary: list[int] = []
    spans: list[tuple[range, ...]] = []
    for g, u in zip(groups, placed, strict=True):
        ends = u.last()
        last += ends
        boundary += [u.start + g.prompt_index] * len(ends)
        spans += u.spans(g.prompt_index)
    pool = torch.zeros((len(spans), hidden.shape[0]), dtype=hidden.dtype)  # [outputs, N]: 1/n over each span
    for row, ranges in enumerate(spans):
        n = sum(len(r) for r in ranges)
        for r in ranges:
            pool[row, r.start : r.stop] = 1.0 / n
    return Features(response=hidden[last], prompt=hidden[boundary], response_mean=pool.to(hidden.device) @ hidden)


def group_features(backbone: Backbone, groups: Sequence[PrefixGroup], budget: PassBudget) -> Features:
    """Responses to shared prompts, packed where the backbone allows it, else on a key/value cache. Rows: the
    groups' responses in order."""
    if backbone.packed:
        return run_packed(backbone, groups, budget)
    return run_prefix_cached(backbone, groups, budget)


def _shared_prompts(encoded: Sequence[Encoded]) -> tuple[list[SharedPrompt], list[list[int]]]:
    """Untruncated sequences with the same prompt as one group each (groups of two or more), with their indices."""
    by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, e in enumerate(encoded):
        if e.prefix_length:
            by_prefix[e.input_ids[: e.prefix_length]].append(i)
    shared = [idx for idx in by_prefix.values() if len(idx) > 1]
    groups = [
        SharedPrompt(
            encoded[idx[0]].input_ids[: encoded[idx[0]].prefix_length],
            encoded[idx[0]].prompt_index,
            tuple(encoded[k].input_ids[encoded[k].prefix_length :] for k in idx),
        )
        for idx in shared
    ]
    return groups, shared


def item_features(
    backbone: Backbone,
    encoded: Sequence[Encoded],
    budget: PassBudget,
    *,
    padding_side: PaddingSide = "right",
    share_prompts: bool = True,
) -> Features:
    """Features for any list of sequences, returned in input order.

    Responses that share a prompt (and were not truncated) reuse one prompt computation. A packed backbone runs
    everything in unpadded packed passes (`run_packed`). Otherwise shared prompts go through `run_prefix_cached`
    (several prompts per pass, responses on their key/value cache) and the rest run in length-sorted padded passes
    (`run_padded`) within the budget and its padding cap. A backbone on another backend (vLLM) computes them its
    own way (`Backbone.engine`).
    """
    if backbone.engine is not None:
        return backbone.engine.features(encoded)
    out = Features.empty(len(encoded), backbone.hidden_size)
    groups, shared = _shared_prompts(encoded) if share_prompts else ([], [])
    in_shared = {i for idx in shared for i in idx}
    singles = [i for i in range(len(encoded)) if i not in in_shared]
    if backbone.packed:
        whole = [SharedPrompt(encoded[i].input_ids, encoded[i].prompt_index, ()) for i in singles]
        out.put([i for idx in shared for i in idx] + singles, run_packed(backbone, groups + whole, budget))
        return out
    for pack in padded_passes([len(g.prompt_ids) for g in groups], budget):
        feats = run_prefix_cached(backbone, [groups[g] for g in pack], budget)
        out.put([i for g in pack for i in shared[g]], feats)
    for chunk in padded_passes([encoded[i].length for i in singles], budget):
        idx = [singles[k] for k in chunk]
        out.put(idx, run_padded(backbone, [encoded[k] for k in idx], padding_side))
    return out
