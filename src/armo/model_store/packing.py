"""Packed forward passes: many sequences in one row, no padding, attention computed segment by segment.

A pass concatenates *units* into one row of tokens. A unit is a root segment (a prompt, or a whole unshared
sequence) followed by zero or more child segments (the responses to that prompt). Attention is a tree of depth
two: the root attends causally to itself; each child attends to the whole root and causally to itself, never to
its siblings or to other units. Position ids restart at the root's length for every child, so each child sees
exactly the positions and keys it would see at the end of its own full sequence.

Why: on this CPU padding costs full compute, and a padded pair batch spent more on padding (and on masked attention
over a cached prompt) than sharing the prompt saved (measured in docs/BENCHMARKS.md). Packed, the Linear
layers — ~90 % of the FLOPs — run on real tokens only, in passes as large as the budget, and the prompt runs once.

The Linear layers see one [1, N, d] row, so nothing but attention changes. Attention goes through transformers'
`AttentionInterface`: `enable` switches a model to `segment_attention`, which runs one scaled-dot-product call per
segment when a pass carries a plan and is plain SDPA otherwise (padded batches still work on the same model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from armo.model_store.batching import Budget, Piece, cut

ATTENTION = "armo_segments"
PLAN_KWARG = "armo_plan"  # the model forward passes unknown keyword arguments down to the attention function


@dataclass(frozen=True)
class Unit:
    """A root (prompt or whole sequence) and the children that continue it."""

    root: Sequence[int]
    children: Sequence[Sequence[int]] = ()

    @property
    def tokens(self) -> int:
        return len(self.root) + sum(len(c) for c in self.children)


@dataclass(frozen=True)
class Child:
    start: int
    length: int
    # [length, root + length] additive float: 0 on the whole root and causally over the child, -inf elsewhere.
    # None: the child is longer than its root, and its attention runs as the causal kernel over root + child
    # (queries of the root recomputed and dropped) — SDPA skips masked blocks only for is_causal, so that costs
    # (root + length)² / 2 score products against length × (root + length) with the mask.
    mask: Tensor | None


@dataclass(frozen=True)
class Placed:
    """Where a unit's segments sit in the packed row."""

    start: int
    root: int  # root length
    children: tuple[Child, ...]

    def last(self) -> list[int]:
        """Row positions whose hidden state is the unit's output: each child's last token, or the root's."""
        if not self.children:
            return [self.start + self.root - 1]
        return [c.start + c.length - 1 for c in self.children]

    def spans(self, boundary: int) -> list[tuple[range, ...]]:
        """Per output (as in `last`), the row positions of its tokens after root position `boundary`: the root's
        tail (shared by every child) and the child itself, or the root's tail alone for a unit without children."""
        tail = range(self.start + boundary + 1, self.start + self.root)
        if not self.children:
            return [(tail,)]
        return [(tail, range(c.start, c.start + c.length)) for c in self.children]


def _child_mask(root: int, length: int, dtype: torch.dtype = torch.float32) -> Tensor:
    # Additive, in the compute dtype: SDPA would convert a boolean mask in every layer (a measured 1.5 % of a pass).
    mask = torch.zeros((length, root + length), dtype=dtype)
    mask[:, root:] = torch.full((length, length), float("-inf"), dtype=dtype).triu(1)
    return mask


def plan(
    units: Sequence[Unit], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[list[int], list[int], list[Placed]]:
    """(token ids, position ids, placement) of one packed row; masks in the model's dtype, on its device."""
    ids: list[int] = []
    positions: list[int] = []
    placed: list[Placed] = []
    for u in units:
        start, p = len(ids), len(u.root)
        ids += u.root
        positions += range(p)
        children = []
        for c in u.children:
            mask = _child_mask(p, len(c), dtype).to(device) if p >= len(c) else None
            children.append(Child(len(ids), len(c), mask))
            ids += c
            positions += range(p, p + len(c))
        placed.append(Placed(start, p, tuple(children)))
    return ids, positions, placed


def segment_attention(
    module: torch.nn.Module,
    query: Tensor,  # [1, H, N, D]
    key: Tensor,  # [1, H_kv, N, D]
    value: Tensor,  # [1, H_kv, N, D]
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    placed: Sequence[Placed] | None = kwargs.pop(PLAN_KWARG, None)
    if placed is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: one copy of the keys per pass is cheaper than per segment
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if query.requires_grad:
        out = _differentiable_segments(query, key, value, placed, scaling)
    else:
        out = torch.empty_like(query)
        for u in placed:
            r = slice(u.start, u.start + u.root)
            q, k, v = query[:, :, r], key[:, :, r], value[:, :, r]
            out[:, :, r] = scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
            for c in u.children:
                s = slice(c.start, c.start + c.length)
                k = torch.cat([key[:, :, r], key[:, :, s]], dim=2)
                v = torch.cat([value[:, :, r], value[:, :, s]], dim=2)
                if c.mask is None:
                    q = torch.cat([query[:, :, r], query[:, :, s]], dim=2)
                    out[:, :, s] = scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)[:, :, u.root :]
                else:
                    out[:, :, s] = scaled_dot_product_attention(query[:, :, s], k, v, attn_mask=c.mask, scale=scaling)
    return out.transpose(1, 2), None  # [1, N, H, D], as the attention modules expect


def _differentiable_segments(
    query: Tensor, key: Tensor, value: Tensor, placed: Sequence[Placed], scaling: float | None
) -> Tensor:
    """`segment_attention`'s loop for a pass that trains: segments from one `split` per tensor, outputs joined by
    one `cat`. Slices and writes into slices, as the inference loop uses (4-7 % faster there), make each slice's
    backward write a zero-filled gradient of the whole row: quadratic in a pass's segments, 60 % of a
    whole-backbone training step; split and cat each have one linear backward."""
    lengths = [n for u in placed for n in (u.root, *(c.length for c in u.children))]
    qs, ks, vs = (t.split(lengths, dim=2) for t in (query, key, value))
    outs: list[Tensor] = []
    i = 0
    for u in placed:
        q_r, k_r, v_r = qs[i], ks[i], vs[i]
        outs.append(scaled_dot_product_attention(q_r, k_r, v_r, is_causal=True, scale=scaling))
        for j, c in enumerate(u.children, start=i + 1):
            k = torch.cat([k_r, ks[j]], dim=2)
            v = torch.cat([v_r, vs[j]], dim=2)
            if c.mask is None:
                q = torch.cat([q_r, qs[j]], dim=2)
                outs.append(scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)[:, :, u.root :])
            else:
                outs.append(scaled_dot_product_attention(qs[j], k, v, attn_mask=c.mask, scale=scaling))
        i += 1 + len(u.children)
    return torch.cat(outs, dim=2)


AttentionInterface.register(ATTENTION, segment_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # padded (unplanned) passes get SDPA's masks


def enable(model: PreTrainedModel) -> bool:
    """Route the model's attention through `segment_attention`. False (model unchanged) when the model uses another
    attention than SDPA (e.g. flash attention chosen on a GPU), does not dispatch through AttentionInterface, or
    changes attention in ways the segments do not model (sliding windows, logit soft-capping: Mistral, Gemma 2)."""
    cfg = model.config
    if cfg._attn_implementation != "sdpa":
        return False
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    try:
        model.set_attn_implementation(ATTENTION)
    except (ValueError, ImportError):
        return False
    return bool(model.config._attn_implementation == ATTENTION)


def forward(model: PreTrainedModel, units: Sequence[Unit]) -> tuple[Tensor, list[Placed]]:
    """One packed pass (the model must be `enable`d). -> (last hidden state [N, d], placement)."""
    weight = next(model.parameters())
    device = weight.device
    ids, positions, placed = plan(units, weight.dtype if weight.is_floating_point() else torch.float32, device)
    hidden = model(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        use_cache=False,
        **{PLAN_KWARG: placed},
    ).last_hidden_state[0]
    return hidden, placed


def passes(units: Sequence[Unit], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Consecutive units cut into passes of at most `max_tokens` real tokens and `max_rows` outputs. A unit is
    never split (its prompt would run twice), so one prompt with many responses may make a pass on its own that
    is larger than the budget; memory grows linearly with a pass, as attention never spans more than one unit."""
    pieces = [Piece(u.tokens, max(1, len(u.children))) for u in units]
    return cut(pieces, Budget(max_tokens, max_rows), padded=False)
