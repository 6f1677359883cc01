"""Packed passes: the row layout, the tree-shaped attention, and that nothing leaks between segments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import MistralConfig, MistralModel

from armo.model_store import packing
from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.encoding import Truncation, encode
from armo.model_store.forward import PassBudget, SharedPrompt, run_packed, run_padded

USER = {"role": "user", "content": "What is the capital of France?"}


def test_plan_lays_out_positions_and_tree_masks_by_hand() -> None:
    units = [packing.Unit([1, 2, 3], [[4, 5], [6]]), packing.Unit([7, 8]), packing.Unit([9], [[10, 11]])]
    ids, positions, placed = packing.plan(units)
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert positions == [0, 1, 2, 3, 4, 3, 0, 1, 0, 1, 2]  # every child continues at the root's length
    first, second, third = placed
    assert (first.start, first.root, second.start, second.root, third.start) == (0, 3, 6, 2, 8)
    assert [(c.start, c.length) for c in first.children] == [(3, 2), (5, 1)]
    rows = packing.segment_rows(placed).view(-1, 3).tolist()  # (start, length, index of its root or -1)
    assert rows == [[0, 3, -1], [3, 2, 0], [5, 1, 0], [6, 2, -1], [8, 1, -1], [9, 2, 4]]
    # child [4, 5]: sees the whole root (3 keys), then itself causally (additive mask: 0 visible, -inf hidden)
    mask = packing.child_mask(3, 2, torch.float32, torch.device("cpu"))
    assert (mask == 0).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert mask[0, 4] == float("-inf")
    masks = packing._MASKS.get(rows, torch.float32, torch.device("cpu"))
    assert set(masks) == {(3, 2), (3, 1)}  # [10, 11] is longer than its root: the causal kernel over both instead
    assert first.last() == [4, 5] and second.last() == [7]


def _dense_mask(placed: list[packing.Placed], n: int) -> torch.Tensor:
    """[n, n] boolean: which key each query of the packed row may see, written out from the tree's rule."""
    seen = torch.zeros(n, n, dtype=torch.bool)
    for u in placed:
        root = range(u.start, u.start + u.root)
        for i in root:
            seen[i, u.start : i + 1] = True
        for c in u.children:
            for i in range(c.start, c.start + c.length):
                seen[i, root.start : root.stop] = True
                seen[i, c.start : i + 1] = True
    return seen


def test_a_training_pass_attends_and_differentiates_as_the_dense_tree_mask() -> None:
    units = [packing.Unit([1] * 5, [[2] * 3, [3] * 2]), packing.Unit([4] * 2, [[5] * 4]), packing.Unit([6] * 3)]
    ids, _, placed = packing.plan(units)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, len(ids), 8, dtype=torch.float64) for _ in range(3))
    frozen, _ = packing.segment_attention(torch.nn.Identity(), q, k, v, None, **{packing.PLAN_KWARG: placed})
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    trained, _ = packing.segment_attention(torch.nn.Identity(), *leaves, None, **{packing.PLAN_KWARG: placed})
    torch.testing.assert_close(trained, frozen)  # the training loop computes what the inference loop does
    dense_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    mask = _dense_mask(placed, len(ids))
    dense = torch.nn.functional.scaled_dot_product_attention(*dense_leaves, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(trained, dense)
    weights = torch.randn_like(dense)
    (trained * weights).sum().backward()
    (dense * weights).sum().backward()
    for got, want in zip(leaves, dense_leaves, strict=True):
        assert got.grad is not None and want.grad is not None
        torch.testing.assert_close(got.grad, want.grad)


def test_passes_respect_budget_and_rows_but_never_split_a_unit() -> None:
    units = [packing.Unit([0] * 10, [[0] * 5] * 2), packing.Unit([0] * 30), packing.Unit([0] * 50, [[0] * 40] * 4)]
    assert [u.tokens for u in units] == [20, 30, 210]
    assert packing.passes(units, max_tokens=64, max_rows=64) == [[0, 1], [2]]  # 210 > 64 runs alone
    assert packing.passes(units, max_tokens=1000, max_rows=64) == [[0, 1, 2]]
    assert packing.passes(units, max_tokens=1000, max_rows=3) == [[0, 1], [2]]  # rows: 2 + 1, then 4


def _group(backbone: Backbone, responses: list[str]) -> tuple[SharedPrompt, list]:  # type: ignore[type-arg]
    enc = [encode(backbone.tokenizer, [USER], r, Truncation(512)) for r in responses]
    p = enc[0].prefix_length
    return SharedPrompt(enc[0].input_ids[:p], enc[0].prompt_index, tuple(e.input_ids[p:] for e in enc)), enc


def test_children_never_see_their_siblings_or_other_units(tiny_backbone: Backbone) -> None:
    # children shorter and longer than the prompt: both attention forms (mask, causal over root + child)
    with_b, enc = _group(tiny_backbone, ["Paris.", "Lyon, I think, but I am not sure at all. " * 3])
    assert len(with_b.suffixes[0]) < len(with_b.prompt_ids) < len(with_b.suffixes[1])
    with_c, _ = _group(tiny_backbone, ["Paris.", "Marseille"])
    other, _ = _group(tiny_backbone, ["Bordeaux, obviously.", "Nice"])
    a = run_packed(tiny_backbone, [with_b, other], PassBudget(1024, 64))
    b = run_packed(tiny_backbone, [other, with_c], PassBudget(1024, 64))
    # "Paris." is row 0 in the first pass and row 2 in the second: same keys seen, same feature
    for f in ("response", "prompt", "response_mean"):
        assert torch.allclose(getattr(a, f)[0], getattr(b, f)[2], atol=1e-6)
    assert not torch.allclose(a.response[0], a.response[1], atol=1e-3)  # rows differ: not vacuous
    alone = run_padded(tiny_backbone, [enc[1]])
    assert torch.allclose(a.response[1], alone.response[0], atol=1e-5)
    assert torch.allclose(a.response_mean[1], alone.response_mean[0], atol=1e-5)


def test_a_backbone_with_eager_attention_is_not_packed(tiny_backbone_dir: Path) -> None:
    backbone = load_backbone(str(tiny_backbone_dir), attn_implementation="eager")
    assert not backbone.packed
    assert backbone.model.config._attn_implementation == "eager"


def test_a_sliding_window_model_is_not_packed(tmp_path: Path, tiny_backbone: Backbone) -> None:
    config = MistralConfig(
        vocab_size=len(tiny_backbone.tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
    )
    MistralModel(config).save_pretrained(tmp_path)
    tiny_backbone.tokenizer.save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path))
    assert not backbone.packed and backbone.model.config._attn_implementation == "sdpa"


def test_segment_attention_without_a_plan_is_plain_sdpa(tiny_backbone: Backbone) -> None:
    assert tiny_backbone.packed and tiny_backbone.model.config._attn_implementation == packing.ATTENTION
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    module = tiny_backbone.model.layers[0].self_attn
    out, _ = packing.segment_attention(module, q, k, v, None, scaling=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), is_causal=True, scale=0.3
    )
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("budget", [16, 4096])
def test_packed_unshared_sequences_match_single_passes(tiny_backbone: Backbone, budget: int) -> None:
    enc = [encode(tiny_backbone.tokenizer, [USER], r, Truncation(512)) for r in ("Paris.", "It is Paris. " * 5, "Lyon")]
    wholes = [SharedPrompt(e.input_ids, e.prompt_index, ()) for e in enc]
    packed = run_packed(tiny_backbone, wholes, PassBudget(budget, 64))
    for i, e in enumerate(enc):
        alone = run_padded(tiny_backbone, [e])
        for f in ("response", "prompt", "response_mean"):
            assert torch.allclose(getattr(packed, f)[i], getattr(alone, f)[0], atol=1e-5)
