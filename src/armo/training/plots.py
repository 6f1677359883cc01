"""Plots of an evaluation (matplotlib, Agg): section bars, gating weights by subset, score vs response length."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from armo.training.extract import FeatureTable
from armo.training.prepare import Dataset
from armo.training.rewardbench import SECTIONS

if TYPE_CHECKING:
    from armo.training.evaluate import EvalResult

BASELINE_SHORTER = 54.3


def section_bars(sections: dict[str, float], path: Path, title: str = "RewardBench v1 sections") -> None:
    names = list(sections)
    fig, ax = plt.subplots(figsize=(5, 3), dpi=90)
    ax.bar(names, [sections[n] for n in names], color="#4c72b0")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.axhline(BASELINE_SHORTER, color="#c44e52", lw=0.8, ls="--", label="always shorter (4-section mean)")
    for i, n in enumerate(names):
        ax.text(i, sections[n] + 1, f"{sections[n]:.1f}", ha="center", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def gating_heatmap(result: EvalResult, ds: Dataset, path: Path) -> None:
    order = [s for sec in SECTIONS.values() for s in sec] + ["anthropic_hhh"]
    rows: dict[str, list[np.ndarray]] = defaultdict(list)
    w = result.item_weights.numpy()
    for p, (c, r) in zip(ds.pairs, ds.pair_items, strict=True):
        rows[p.subset].extend([w[c], w[r]])
    subsets = [s for s in order if s in rows]
    mat = np.array([np.mean(rows[s], axis=0) for s in subsets])
    mat = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1e-12)  # share of β per objective
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + 0.45 * mat.shape[1]), 1.0 + 0.28 * len(subsets)), dpi=90)
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    ax.set_xticks(range(mat.shape[1]), result.objectives, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(subsets)), subsets, fontsize=7)
    ax.set_title("mean gating weight (share) by RewardBench subset", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def score_vs_length(result: EvalResult, table: FeatureTable, path: Path) -> None:
    x = table.response_tokens.numpy()
    y = result.item_scores.numpy()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=90)
    ax.scatter(x, y, s=4, alpha=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("score R")
    if len(x) > 2 and np.std(y) > 0:
        from scipy.stats import spearmanr

        ax.set_title(f"score vs length (Spearman {spearmanr(x, y).statistic:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_plots(result: EvalResult, ds: Dataset, table: FeatureTable, out_dir: Path) -> None:
    sections = result.scores.get("per_section", {})
    if sections:
        section_bars(sections, out_dir / "sections.png")
    gating_heatmap(result, ds, out_dir / "gating_by_subset.png")
    score_vs_length(result, table, out_dir / "score_vs_length.png")


def runs_bars(results: list[dict[str, Any]], path: Path) -> None:
    """Four-section mean (± binomial SE) of several runs, with the length baselines on the same sample."""
    names = [r["run"] for r in results]
    rb = [r["metrics"]["rewardbench"] for r in results]
    means = [s["four_section_mean"] for s in rb]
    se = [s.get("four_section_mean_se") or 0.0 for s in rb]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    ax.barh(names, means, xerr=se, color="#4c72b0")
    shorter = rb[0].get("baseline_always_shorter", {}).get("four_section_mean")
    if shorter is not None:
        ax.axvline(shorter, color="#c44e52", lw=0.8, ls="--", label=f"always shorter, same sample ({shorter:.1f})")
    ax.axvline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlim(40, 75)
    ax.invert_yaxis()
    full = rb[0].get("mode") == "full"  # evaluate.py records which set the runs were scored on
    ax.set_xlabel(f"RewardBench four-section mean ({'full set' if full else 'fast sample'})")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
