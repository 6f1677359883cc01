"""The opt-in int8 backbone: per-token int8 Linear with SmoothQuant, its compiled kernel, and what it replaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from armo.model_store import quant
from armo.model_store.backbone import RESIDUAL_WRITERS, Backbone, load_backbone
from armo.model_store.quant import Int8Linear, Int8Part, SharedInputInt8, int8_matmul
from armo.model_store.reward_model import RewardModel, ScoreItem
from tests.conftest import default_scoring, make_artifact


def _outlier_input(rows: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g)
    x[:, 7] *= 80.0  # one "massive activation" channel, as in real LLM residual streams
    return x


def _rel_err(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).norm() / exact.norm())


def test_int8_linear_is_close_to_fp32_and_smoothing_tames_an_outlier_channel() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 48)
    x = _outlier_input()
    exact = linear(x).detach()
    plain = Int8Linear(linear, None)(x)
    smoothed = Int8Linear(linear, x.abs().amax(dim=0))(x)
    assert plain.shape == smoothed.shape == (64, 48)
    assert _rel_err(smoothed, exact) < 0.02
    assert _rel_err(smoothed, exact) < 0.5 * _rel_err(plain, exact)
    assert _rel_err(smoothed, exact) > 0  # it is an approximation, and the docs say so


def test_int8_linear_rows_are_independent_of_their_batch() -> None:
    torch.manual_seed(1)
    q = Int8Linear(nn.Linear(96, 32, bias=False), _outlier_input().abs().amax(dim=0))
    x = _outlier_input(rows=9, seed=3)
    together = q(x.reshape(3, 3, 96))  # leading dims are kept
    assert together.shape == (3, 3, 32)
    for i in range(9):
        torch.testing.assert_close(q(x[i : i + 1])[0], together.reshape(9, 32)[i], rtol=0, atol=0)


def test_compiled_kernel_equals_the_eager_one() -> None:
    x = _outlier_input(rows=37)
    q = Int8Linear(nn.Linear(96, 40, bias=False), x.abs().amax(dim=0))
    args = (x, q.inv_smooth, q.weight_t, q.weight_scale)
    torch.testing.assert_close(quant.KERNEL(*args), int8_matmul(*args), rtol=0, atol=1e-6)


def test_kernel_falls_back_to_eager_when_compilation_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn: object, **kwargs: object) -> object:
        def run(*args: object) -> object:
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    kernel = quant._Kernel()
    x = _outlier_input(rows=5)
    q = Int8Linear(nn.Linear(96, 8, bias=False), None)
    args = (x, q.inv_smooth, q.weight_t, q.weight_scale)
    torch.testing.assert_close(kernel(*args), int8_matmul(*args))
    assert kernel._fn is int8_matmul


def test_calibration_covers_every_linear_and_finds_the_shared_inputs(tiny_backbone: Backbone) -> None:
    batches = quant.calibration_batches(tiny_backbone.tokenizer)
    assert len(batches) >= 12 and all(b["input_ids"].shape[0] == 1 for b in batches)
    calibration = quant.calibrate(tiny_backbone.model, batches)
    stats = calibration.absmax
    linears = {n: m for n, m in tiny_backbone.model.named_modules() if isinstance(m, nn.Linear)}
    assert set(stats) == set(linears)
    for name, m in linears.items():
        assert stats[name].shape == (m.in_features,) and bool((stats[name] > 0).all())
    layers = tiny_backbone.model.config.num_hidden_layers
    expected = []
    for i in range(layers):  # found by tracing which Linears read the same tensor, not by name
        expected.append(tuple(f"layers.{i}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")))
        expected.append(tuple(f"layers.{i}.mlp.{p}" for p in ("gate_proj", "up_proj")))
    assert calibration.shared_input == tuple(expected)
    for group in calibration.shared_input:  # one input, so one set of maxima
        for name in group[1:]:
            torch.testing.assert_close(stats[name], stats[group[0]], rtol=0, atol=0)


def test_shared_input_parts_read_one_product_and_match_separate_calls() -> None:
    torch.manual_seed(2)
    linears = [nn.Linear(96, 32), nn.Linear(96, 16, bias=False), nn.Linear(96, 16)]
    x = _outlier_input(rows=11)
    shared = SharedInputInt8(linears, x.abs().amax(dim=0))
    parts = [Int8Part(shared, i) for i in range(3)]
    calls = 0
    product = shared.product.forward

    def counting(t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return product(t)

    shared.product.forward = counting  # type: ignore[method-assign]
    together = [p(x) for p in parts]  # q, k, v order on one tensor: one product
    assert calls == 1 and shared._memo is None  # the last reader releases the input
    apart = [p(x.clone()) for p in parts]  # a new tensor each time: each recomputes, same numbers
    assert calls == 4
    for part, linear, a, b in zip(parts, linears, together, apart, strict=True):
        assert a.shape == (11, linear.out_features) == (11, part.out_features)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        exact = linear(x).detach()
        assert 0 < _rel_err(a, exact) < 0.02


ITEMS = [
    ScoreItem([{"role": "user", "content": "How do I boil an egg?"}], "Put it in boiling water for 8 minutes."),
    ScoreItem([{"role": "user", "content": "How do I boil an egg?"}], "No."),
    ScoreItem([{"role": "user", "content": "Name a prime."}], "Seven is prime, and so is 11."),
]


@pytest.mark.parametrize("mode", ["int8", "int8-mixed"])
def test_int8_backbone_is_opt_in_close_and_batch_invariant(tiny_backbone_dir: Path, mode: str) -> None:
    fp32 = load_backbone(str(tiny_backbone_dir))
    int8 = load_backbone(str(tiny_backbone_dir), quantize=mode)  # type: ignore[arg-type]
    kinds = {name.rsplit(".", 1)[-1]: type(m) for name, m in int8.model.named_modules() if name.endswith("proj")}
    assert set(kinds) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    for name, kind in kinds.items():
        if name in RESIDUAL_WRITERS:  # o_proj, down_proj: each reads its own input
            assert kind is (nn.Linear if mode == "int8-mixed" else Int8Linear), name
        elif name in quant.SHARED_INPUT:  # q/k/v read one tensor: one product
            assert kind is Int8Part, name
        else:  # gate/up also read one tensor, but are kept apart (accuracy)
            assert kind is Int8Linear, name
    assert not any(isinstance(m, (Int8Linear, Int8Part)) for m in fp32.model.modules())
    manifest, head = make_artifact(fp32)
    exact = [r.score for r in RewardModel(fp32, head, manifest, default_scoring(manifest)).score(ITEMS)]
    rm = RewardModel(int8, head, manifest, default_scoring(manifest))
    approx = [r.score for r in rm.score(ITEMS)]
    assert approx != exact
    assert approx == pytest.approx(exact, abs=0.5)
    assert [rm.score([it])[0].score for it in ITEMS] == pytest.approx(approx, abs=1e-6)
