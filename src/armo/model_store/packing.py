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

import threading
from collections.abc import Callable, Sequence
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


def child_mask(root: int, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[length, root + length] additive mask: 0 on the whole root and causally over the child, -inf elsewhere. In
    the compute dtype: SDPA would convert a boolean mask in every layer (a measured 1.5 % of a pass).

    Only for a child no longer than its root. A longer child's attention runs as the causal kernel over root +
    child instead, the root's queries recomputed and dropped: SDPA skips masked blocks only for is_causal, so that
    costs (root + length)² / 2 score products against length × (root + length) with the mask."""
    mask = torch.zeros((length, root + length), dtype=dtype, device=device)
    mask[:, root:] = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)
    return mask


def plan(units: Sequence[Unit]) -> tuple[list[int], list[int], list[Placed]]:
    """(token ids, position ids, placement) of one packed row."""
    ids: list[int] = []
    positions: list[int] = []
    placed: list[Placed] = []
    for u in units:
        start, p = len(ids), len(u.root)
        ids += u.root
        positions += range(p)
        children = []
        for c in u.children:
            children.append(Child(len(ids), len(c)))
            ids += c
            positions += range(p, p + len(c))
        placed.append(Placed(start, p, tuple(children)))
    return ids, positions, placed


def segment_rows(placed: Sequence[Placed]) -> Tensor:
    """The plan as the attention reads it: [segments × 3] int64, per segment in row order (start, length, index of
    its root segment or -1 for a root). A tensor, not Python objects, so a compiled model takes any plan as an
    input instead of specialising (and recompiling) on each one; flat, so that its size is never 1 (a size of 1 is
    compiled as a special case: one pass of one sequence would recompile)."""
    rows: list[tuple[int, int, int]] = []
    for u in placed:
        root = len(rows)
        rows.append((u.start, u.root, -1))
        rows += [(c.start, c.length, root) for c in u.children]
    return torch.tensor(rows, dtype=torch.int64).flatten()


class _Masks(threading.local):
    """The child masks of the pass being run, built in its first layer and reused by the others (one pass at a
    time per thread; a new plan replaces them)."""

    key: tuple[Any, ...] = ()
    masks: dict[tuple[int, int], Tensor] = {}  # noqa: RUF012  # replaced, never mutated, per thread

    def get(self, rows: list[list[int]], dtype: torch.dtype, device: torch.device) -> dict[tuple[int, int], Tensor]:
        key = (tuple(map(tuple, rows)), dtype, device)
        if key != self.key:
            wanted = {(rows[r][1], n) for _, n, r in rows if r >= 0 and rows[r][1] >= n}
            self.key, self.masks = key, {(p, n): child_mask(p, n, dtype, device) for p, n in wanted}
        return self.masks


_MASKS = _Masks()


@torch.library.custom_op("armo::segment_attention", mutates_args=())
def _attend(query: Tensor, key: Tensor, value: Tensor, rows: Tensor, scale: float | None) -> Tensor:
    """Inference attention of one packed pass ([1, H, N, D] each, keys already repeated for grouped queries): one
    SDPA call per segment. A custom op so that a compiled model (armo.model_store.compiled) runs it as one opaque
    call: compiled, the Python loop would unroll into the graph and specialise it on the plan."""
    plan = rows.view(-1, 3).tolist()
    masks = _MASKS.get(plan, query.dtype, query.device)
    out = torch.empty_like(query)
    for start, length, root in plan:
        s = slice(start, start + length)
        if root < 0:
            out[:, :, s] = scaled_dot_product_attention(
                query[:, :, s], key[:, :, s], value[:, :, s], is_causal=True, scale=scale
            )
            continue
        r = slice(plan[root][0], plan[root][0] + plan[root][1])
        k = torch.cat([key[:, :, r], key[:, :, s]], dim=2)
        v = torch.cat([value[:, :, r], value[:, :, s]], dim=2)
        mask = masks.get((plan[root][1], length))
        if mask is None:
            q = torch.cat([query[:, :, r], query[:, :, s]], dim=2)
            out[:, :, s] = scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[:, :, r.stop - r.start :]
        else:
            out[:, :, s] = scaled_dot_product_attention(query[:, :, s], k, v, attn_mask=mask, scale=scale)
    return out


@_attend.register_fake
def _(query: Tensor, key: Tensor, value: Tensor, rows: Tensor, scale: float | None) -> Tensor:
    return torch.empty_like(query)


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
    """transformers' attention function for packed passes. The plan (PLAN_KWARG) is `segment_rows`' tensor, or the
    placement itself (converted here)."""
    plan: Tensor | Sequence[Placed] | None = kwargs.pop(PLAN_KWARG, None)
    if plan is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    rows = plan if isinstance(plan, Tensor) else segment_rows(plan)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: one copy of the keys per pass is cheaper than per segment
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if query.requires_grad:
        out = _differentiable_segments(query, key, value, rows.view(-1, 3).tolist(), scaling)
    else:
        out = _attend(query, key, value, rows, scaling)
    return out.transpose(1, 2), None  # [1, N, H, D], as the attention modules expect


def _differentiable_segments(
    query: Tensor, key: Tensor, value: Tensor, plan: list[list[int]], scaling: float | None
) -> Tensor:
    """`segment_attention`'s loop for a pass that trains: segments from one `split` per tensor, outputs joined by
    one `cat`. Slices and writes into slices, as the inference loop uses (4-7 % faster there), make each slice's
    backward write a zero-filled gradient of the whole row: quadratic in a pass's segments, 60 % of a
    whole-backbone training step; split and cat each have one linear backward."""
    masks = _MASKS.get(plan, query.dtype, query.device)
    qs, ks, vs = (t.split([n for _, n, _ in plan], dim=2) for t in (query, key, value))
    outs: list[Tensor] = []
    for i, (_, length, root) in enumerate(plan):
        if root < 0:
            outs.append(scaled_dot_product_attention(qs[i], ks[i], vs[i], is_causal=True, scale=scaling))
            continue
        k = torch.cat([ks[root], ks[i]], dim=2)
        v = torch.cat([vs[root], vs[i]], dim=2)
        mask = masks.get((plan[root][1], length))
        if mask is None:
            q = torch.cat([qs[root], qs[i]], dim=2)
            outs.append(scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)[:, :, plan[root][1] :])
        else:
            outs.append(scaled_dot_product_attention(qs[i], k, v, attn_mask=mask, scale=scaling))
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


def forward(
    model: PreTrainedModel, units: Sequence[Unit], call: Callable[..., Any] | None = None
) -> tuple[Tensor, list[Placed]]:
    """One packed pass (the model must be `enable`d; `call`: the model compiled, armo.model_store.compiled).
    -> (last hidden state [N, d], placement)."""
    device = next(model.parameters()).device
    ids, positions, placed = plan(units)
    hidden = (model if call is None else call)(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        use_cache=False,
        **{PLAN_KWARG: segment_rows(placed)},
    ).last_hidden_state[0]
    return hidden, placed


def passes(units: Sequence[Unit], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Consecutive units cut into passes of at most `max_tokens` real tokens and `max_rows` outputs. A unit is
    never split (its prompt would run twice), so one prompt with many responses may make a pass on its own that
    is larger than the budget; memory grows linearly with a pass, as attention never spans more than one unit."""
    pieces = [Piece(u.tokens, max(1, len(u.children))) for u in units]
    return cut(pieces, Budget(max_tokens, max_rows), padded=False)
