"""Why the int8 path is built the way it is (docs/BENCHMARKS.md, lessons 7 and 8). Not part of the unit tests.

1. Accuracy of int8 variants against fp32 on validation pairs of the training data (never RewardBench): the old
   `torch.ao` dynamic quantisation (one activation scale per batch), per-token scales without SmoothQuant, and
   the product's `int8` / `int8-mixed` (per-token + SmoothQuant). Reported: score correlation with fp32 and the
   share of pairs whose preferred side agrees with fp32.
2. Time per Linear at the backbone's shapes: fp32, the int8 layer (compiled), and `torch._int_mm` alone; and per
   group of Linears that read one input (q/k/v, gate/up): quantised apart, or sharing one quantised input.

    .venv/bin/python -m research.int8_study --pairs 150
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch
import typer
from torch import nn

from armo.model_store import quant
from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.errors import InputError
from armo.model_store.encoding import encode
from armo.model_store.reward_model import RewardModel, ScoreItem, ScoringConfig
from armo.model_store.store import ModelStore
from armo.training.config import load_config
from armo.training.prepare import build_training_set


def _validation_items(backbone: Backbone, n_pairs: int, max_length: int) -> list[ScoreItem]:
    ds = build_training_set(load_config("configs/default.json").data)
    val = [i for i, v in enumerate(ds.pair_val) if v]
    random.Random(0).shuffle(val)
    items: list[ScoreItem] = []
    for i in val[:n_pairs]:
        pair = [ds.items[k] for k in ds.pair_items[i]]
        try:  # pairs the extraction cap would truncate past the prompt boundary are skipped
            for it in pair:
                encode(backbone.tokenizer, list(it.messages), it.response, max_length=max_length)
        except InputError:
            continue
        items += [ScoreItem(list(it.messages), it.response) for it in pair]
    return items


def _variant(name: str) -> Backbone:
    if name == "int8 (per-token + SmoothQuant)":
        return load_backbone("embedded", quantize="int8")  # the product's path: calibration + SmoothQuant
    if name == "int8-mixed":
        return load_backbone("embedded", quantize="int8-mixed")
    b = load_backbone("embedded")
    if name == "dynamic per-batch (torch.ao)":
        b.model = torch.ao.quantization.quantize_dynamic(b.model, {nn.Linear}, dtype=torch.qint8)
    elif name == "per-token, no smoothing":
        quant.quantize_linears(b.model, None)
    return b


def accuracy(n_pairs: int, max_length: int = 320) -> None:
    fp32 = load_backbone("embedded")
    manifest, head = ModelStore("src/armo/bundled").load("armo-smollm2")
    items = _validation_items(fp32, n_pairs, max_length)

    def scores(backbone: Backbone) -> torch.Tensor:
        rm = RewardModel(backbone, head, manifest, ScoringConfig(max_length=max_length))
        return torch.tensor([r.score for k in range(0, len(items), 16) for r in rm.score(items[k : k + 16])])

    ref = scores(fp32)
    print(f"{len(items) // 2} validation pairs of the training data; v0.4.0 heads")
    for name in (
        "dynamic per-batch (torch.ao)",
        "per-token, no smoothing",
        "int8 (per-token + SmoothQuant)",
        "int8-mixed",
    ):
        s = scores(_variant(name))
        corr = float(torch.corrcoef(torch.stack([s, ref]))[0, 1])
        agree = float(((s[0::2] > s[1::2]) == (ref[0::2] > ref[1::2])).float().mean())
        print(f"  {name:32s} score correlation with fp32 {corr:.3f}, same preferred side {100 * agree:.1f} %")


def _ms(fn: Callable[[], Any], n: int = 30) -> float:
    fn()
    fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e3


@torch.inference_mode()
def timings(rows: int = 1024) -> None:
    print(f"per Linear at {rows} rows (ms): fp32 / int8 layer / _int_mm alone")
    for k, n in ((576, 576), (576, 192), (576, 1536), (1536, 576)):
        linear = nn.Linear(k, n, bias=False)
        x = torch.randn(rows, k)
        layer = quant.Int8Linear(linear, x.abs().amax(dim=0))
        xq = torch.randint(-127, 127, (rows, k), dtype=torch.int8)
        f = _ms(lambda linear=linear, x=x: linear(x))
        q = _ms(lambda layer=layer, x=x: layer(x))
        mm = _ms(lambda xq=xq, w=layer.weight_t: torch._int_mm(xq, w))
        print(f"  {k:>4} → {n:<4}  {f:5.2f} / {q:5.2f} / {mm:5.2f}   layer {f / q:.2f} × fp32, product {f / mm:.2f} ×")
    print(f"per group of Linears reading one input, at {rows} rows (ms): fp32 / int8 layers apart / int8 shared input")
    for k, outs in ((576, (576, 192, 192)), (576, (1536, 1536))):  # q/k/v; gate/up
        linears = [nn.Linear(k, n, bias=False) for n in outs]
        x = torch.randn(rows, k)
        apart = [quant.Int8Linear(m, x.abs().amax(dim=0)) for m in linears]
        shared = quant.SharedInputInt8(linears, x.abs().amax(dim=0))
        parts = [quant.Int8Part(shared, i) for i in range(len(outs))]
        f = _ms(lambda ms=linears, x=x: [m(x) for m in ms])
        a = _ms(lambda ms=apart, x=x: [m(x) for m in ms])
        g = _ms(lambda ms=parts, x=x: [m(x) for m in ms])
        label = "+".join(map(str, outs))
        print(f"  {k:>4} → {label:<14} {f:5.2f} / {a:5.2f} / {g:5.2f}   apart {f / a:.2f} × fp32, shared {f / g:.2f} ×")


def main(pairs: int = typer.Option(150, help="Validation pairs to score (before the length filter).")) -> None:
    torch.set_num_threads(2)
    accuracy(pairs)
    timings()


if __name__ == "__main__":
    typer.run(main)
