"""Which backbone feature carries preference signal? A validation-only study (RewardBench is never read).

The product reads one hidden state per response: the last layer at the end-of-turn token (ArmoRM's choice, made
for an 8B backbone). A 135M backbone may carry more in other layers or in the mean over the response tokens. This
script featurises a balanced sample of the training pairs once with every layer's hidden states, fits the same
linear Bradley-Terry probe (`armo.training.objectives.fit_bt_probe`, L2 chosen on validation) per candidate
feature, and prints validation pair accuracy per data group. It changes nothing in the product.

    .venv/bin/python -m benchmarks.feature_study --per-group 150
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from armo.model_store.backbone import load_backbone
from armo.training.config import DataConfig, ProbeConfig
from armo.training.data import id_fraction, load_pairs, stratified_sample
from armo.training.extract import ExtractConfig, encode_group
from armo.training.objectives import fit_bt_probe
from armo.training.prepare import pair_group, valid


def main(
    per_group: Annotated[int, typer.Option(help="pairs per <source>/<objective> group")] = 150,
    max_length: Annotated[int, typer.Option(help="token cap (left-truncated like training)")] = 320,
    out: Annotated[Path, typer.Option(help="JSON results")] = Path("runs/feature_study.json"),
) -> None:
    torch.set_num_threads(2)
    data = DataConfig()
    pairs = []
    for f in data.pairwise:
        rows = [p for p in load_pairs(Path(data.root) / f) if valid(p.messages, p.chosen, p.rejected)]
        groups = sorted({pair_group(p) for p in rows})
        pairs += stratified_sample(rows, pair_group, dict.fromkeys(groups, per_group), seed=1)
    backbone = load_backbone("embedded")
    n_layers = int(backbone.model.config.num_hidden_layers)
    layers = sorted({n_layers // 2, (3 * n_layers) // 4, n_layers})
    feats: dict[str, list[np.ndarray]] = defaultdict(list)  # name -> per response [d]
    started, tokens = time.perf_counter(), 0
    cap = ExtractConfig(max_length=max_length)
    for p in tqdm(pairs, desc="pairs"):
        g = encode_group(backbone, p.messages, [p.chosen, p.rejected], cap)  # the training cap and truncation
        for suffix in g.suffixes:
            ids = [*g.prompt_ids, *suffix]
            with torch.inference_mode():
                hs = backbone.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            tokens += len(ids)
            span = slice(len(g.prompt_ids), len(ids))  # the response tokens and their end-of-turn token
            for layer in layers:
                h = hs[layer][0].float()  # [T, d]; hidden_states[0] is the embedding output
                feats[f"last@{layer}"].append(h[-1].numpy())
                feats[f"mean@{layer}"].append(h[span].mean(0).numpy())
            top = hs[n_layers][0].float()
            feats[f"last+mean@{n_layers}"].append(np.concatenate([top[-1].numpy(), top[span].mean(0).numpy()]))
    seconds = time.perf_counter() - started
    val = np.array([id_fraction(p.id) < data.val_fraction for p in pairs])
    group = np.array([pair_group(p) for p in pairs])
    results: dict[str, dict[str, float]] = {}
    for name, rows in feats.items():
        h = np.asarray(rows, dtype=np.float64).reshape(len(pairs), 2, -1)
        diff = h[:, 0] - h[:, 1]  # chosen − rejected
        probe = fit_bt_probe(name, diff[~val], diff[val], ProbeConfig(), "study")
        margin = diff[val] @ probe.w
        win = (margin > 0) + 0.5 * (margin == 0)
        acc = {g: float(win[group[val] == g].mean()) for g in sorted(set(group[val]))}
        results[name] = {"balanced": float(np.mean(list(acc.values()))), "all": float(win.mean()), **acc}
    groups = sorted({g for r in results.values() for g in r} - {"balanced", "all"})
    table = Table("feature", "balanced", "all", *groups, title=f"validation pair accuracy %, {int(val.sum())} pairs")
    for name, r in results.items():
        table.add_row(name, *(f"{100 * r[k]:.1f}" for k in ["balanced", "all", *groups]))
    Console(width=200).print(table)
    print(f"{len(pairs)} pairs, {tokens} tokens in {seconds:.0f} s; train/val {int((~val).sum())}/{int(val.sum())}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"per_group": per_group, "max_length": max_length, "results": results}, indent=2))


if __name__ == "__main__":
    typer.run(main)
