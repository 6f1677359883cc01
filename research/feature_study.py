"""Which backbone feature carries preference signal? A training-data-only study (RewardBench is never read).

The product reads one hidden state per response: the last layer at the end-of-turn token (ArmoRM's choice, made
for an 8B backbone). A 135M backbone may carry more in other layers or in the mean over the response tokens. This
script featurises a balanced sample of the training pairs once with every layer's hidden states (packed passes:
each pair's prompt once, both responses after it), and scores each candidate feature with the same linear
Bradley-Terry probe as training (`armo.training.objective_fits.bt_weights`), **cross-fitted by prompt**: K folds keyed
by the prompt (so no prompt or shared response is on both sides, see research/NOTEBOOK.md on the id-split leak), the L2
strength picked on an inner fold of the training folds, every pair scored once out of fold. It prints pair accuracy
per data group, the balanced mean with its standard error, and each feature's paired difference from the product's
feature. It changes nothing in the product.

    .venv/bin/python -m research.feature_study --per-group 300
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from armo.model_store import packing
from armo.model_store.backbone import Backbone, load_backbone
from armo.training.config import DataConfig, ProbeConfig
from armo.training.data import id_fraction, load_pairs, stratified_sample
from armo.training.extract import EncodedGroup, ExtractConfig, encode_group
from armo.training.objective_fits import bt_weights
from armo.training.prepare import pair_group, prompt_key, valid


def _fold(messages: Sequence[dict[str, str]], k: int) -> int:
    return min(k - 1, int(id_fraction(prompt_key(messages), salt="feature-study") * k))


def _featurise(
    backbone: Backbone, groups: Sequence[EncodedGroup], layers: Sequence[int], budget: int
) -> dict[str, list[np.ndarray]]:
    """name -> one vector per response (chosen, rejected of every pair, in order)."""
    feats: dict[str, list[np.ndarray]] = defaultdict(list)
    units = [packing.Unit(g.prompt_ids, g.suffixes) for g in groups]
    top = max(layers)
    for idx in tqdm(packing.passes(units, budget, 64), desc="passes"):
        ids, positions, placed = packing.plan([units[i] for i in idx])
        with torch.inference_mode():
            hs = backbone.model(
                input_ids=torch.tensor([ids]),
                position_ids=torch.tensor([positions]),
                use_cache=False,
                output_hidden_states=True,
                **{packing.PLAN_KWARG: placed},
            ).hidden_states  # [layers + 1] x [1, N, d]; hidden_states[0] is the embedding output
        for u in placed:
            for c in u.children:
                span = slice(c.start, c.start + c.length)  # the response tokens and their end-of-turn token
                for layer in layers:
                    h = hs[layer][0, span].float()
                    feats[f"last@{layer}"].append(h[-1].numpy())
                    feats[f"mean@{layer}"].append(h.mean(0).numpy())
                h = hs[top][0, span].float()
                feats[f"last+mean@{top}"].append(np.concatenate([h[-1].numpy(), h.mean(0).numpy()]))
    return feats


def _out_of_fold(diff: np.ndarray, fold: np.ndarray, k: int, l2s: Sequence[float]) -> np.ndarray:
    """Margin of every pair from a probe fitted on the other folds; L2 picked on the next fold of those."""
    margin = np.zeros(len(diff))
    for f in range(k):
        inner = (f + 1) % k
        tr, va = (fold != f) & (fold != inner), fold == inner
        l2 = max(l2s, key=lambda a: float(np.mean((diff[va] @ bt_weights(diff[tr], a)) > 0)))
        margin[fold == f] = diff[fold == f] @ bt_weights(diff[fold != f], l2)
    return margin


def main(
    per_group: Annotated[int, typer.Option(help="pairs per <source>/<objective> group")] = 150,
    max_length: Annotated[int, typer.Option(help="token cap (left-truncated like training)")] = 320,
    folds: Annotated[int, typer.Option(help="cross-fit folds, keyed by prompt")] = 5,
    budget: Annotated[int, typer.Option(help="real tokens per packed pass")] = 1024,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("runs/feature_study.json"),
    backbone_spec: Annotated[
        str, typer.Option("--backbone", help="'embedded' or a local directory (research.gemma3_backbone)")
    ] = "embedded",
) -> None:
    torch.set_num_threads(2)
    data = DataConfig()
    pairs = []
    for f in data.pairwise:
        rows = [p for p in load_pairs(Path(data.root) / f) if valid(p.messages, p.chosen, p.rejected)]
        groups = sorted({pair_group(p) for p in rows})
        pairs += stratified_sample(rows, pair_group, dict.fromkeys(groups, per_group), seed=1)
    backbone = load_backbone(backbone_spec)
    window = getattr(backbone.model.config, "sliding_window", None)
    if not backbone.packed and window and max_length <= window:
        # The product refuses sliding-window models (`packing.enable`), since a segment longer than the window
        # would see keys the model would not. Here no sequence exceeds the cap, so none exceeds the window:
        # segment attention is exact (Gemma 3: 512-token windows, 320-token cap).
        backbone.model.set_attn_implementation(packing.ATTENTION)
    elif not backbone.packed:
        raise SystemExit("the study needs a packed backbone (SDPA attention)")
    n_layers = int(backbone.model.config.num_hidden_layers)
    layers = sorted({n_layers // 2, (3 * n_layers) // 4, n_layers})
    cap = ExtractConfig(max_length=max_length)
    encoded = [encode_group(backbone, p.messages, [p.chosen, p.rejected], cap) for p in pairs]  # training's cap
    tokens = sum(len(g.prompt_ids) + sum(map(len, g.suffixes)) for g in encoded)
    started = time.perf_counter()
    feats = _featurise(backbone, encoded, layers, budget)
    seconds = time.perf_counter() - started
    fold = np.array([_fold(p.messages, folds) for p in pairs])
    group = np.array([pair_group(p) for p in pairs])
    names = sorted(set(group))
    wins: dict[str, np.ndarray] = {}
    for name, rows in feats.items():
        h = np.asarray(rows, dtype=np.float64).reshape(len(pairs), 2, -1)
        margin = _out_of_fold(h[:, 0] - h[:, 1], fold, folds, ProbeConfig().weight_decays)  # chosen − rejected
        wins[name] = (margin > 0) + 0.5 * (margin == 0)

    def balanced(x: np.ndarray) -> tuple[float, float]:
        """Mean over groups of the per-group mean, and its standard error."""
        means = [float(x[group == g].mean()) for g in names]
        var = [float(x[group == g].var(ddof=1)) / int((group == g).sum()) for g in names]
        return float(np.mean(means)), float(np.sqrt(sum(var)) / len(names))

    product = f"last@{n_layers}"
    results: dict[str, dict[str, float]] = {}
    for name, win in wins.items():
        bal, se = balanced(win)
        delta, delta_se = balanced(win - wins[product])  # paired: same pairs, same folds
        per = {g: float(win[group == g].mean()) for g in names}
        results[name] = {"balanced": bal, "se": se, "vs_product": delta, "vs_product_se": delta_se, **per}
    table = Table(
        "feature",
        "balanced ± SE",
        f"vs {product} (paired)",
        *names,
        title=f"out-of-fold pair accuracy %, {len(pairs)} pairs, {folds} folds by prompt",
    )
    for name, r in sorted(results.items()):
        row = [f"{100 * r[g]:.1f}" for g in names]
        vs = f"{100 * r['vs_product']:+.1f} ± {100 * r['vs_product_se']:.1f}"
        table.add_row(name, f"{100 * r['balanced']:.1f} ± {100 * r['se']:.1f}", vs, *row)
    Console(width=200).print(table)
    print(f"{len(pairs)} pairs, {tokens} tokens featurised in {seconds:.0f} s ({tokens / seconds:.0f} tok/s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"per_group": per_group, "max_length": max_length, "folds": folds, "pairs": len(pairs)}
    out.write_text(json.dumps(summary | {"tokens": tokens, "seconds": seconds, "results": results}, indent=2))


if __name__ == "__main__":
    typer.run(main)
