"""Human-readable RewardBench results: a rich table on the console and markdown tables of runs side by side."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from armo.training.rewardbench import SECTIONS


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def print_scores(scores: dict[str, Any], title: str = "RewardBench v1") -> None:
    table = Table(title=f"{title} ({scores.get('mode', '')}, {scores['n_pairs']} pairs, {scores['ties']} ties)")
    table.add_column("section / subset")
    table.add_column("n", justify="right")
    table.add_column("acc %", justify="right")
    for section, subsets in SECTIONS.items():
        table.add_row(f"[bold]{section}", "", f"[bold]{_f(scores['per_section'].get(section))}")
        for s in subsets:
            table.add_row(f"  {s}", str(scores["n_per_subset"].get(s, 0)), _f(scores["per_subset"].get(s)))
    table.add_row("[bold]four-section mean", "", f"[bold]{_f(scores['four_section_mean'])}")
    table.add_row("prior (anthropic_hhh)", str(scores["n_per_subset"].get("anthropic_hhh", 0)), _f(scores["prior"]))
    table.add_row("[bold]v1 score", "", f"[bold]{_f(scores['v1_score'])}")
    Console().print(table)


def full_table(scores: dict[str, Any]) -> str:
    lines = ["| section | subset | pairs evaluated | ties | accuracy % |", "|---|---|---:|---:|---:|"]
    ties = scores.get("ties_per_subset", {})
    for section, subsets in SECTIONS.items():
        for s in subsets:
            n = scores["n_per_subset"].get(s, 0)
            lines.append(f"| {section} | {s} | {n} | {ties.get(s, 0)} | {_f(scores['per_subset'].get(s))} |")
        lines.append(f"| **{section}** | *weighted* | | | **{_f(scores['per_section'].get(section))}** |")
    lines.append(
        f"| **four-section mean** | | {scores['n_pairs']} | {scores['ties']} | **{_f(scores['four_section_mean'])}** |"
    )
    lines.append(
        f"| Prior Sets | anthropic_hhh | {scores['n_per_subset'].get('anthropic_hhh', 0)} | "
        f"{ties.get('anthropic_hhh', 0)} | {_f(scores['prior'])} |"
    )
    lines.append(f"| **v1 score** | (2·Σ4 + prior)/9 | | | **{_f(scores['v1_score'])}** |")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return _f(100 * x) if x is not None else "–"


def ablation_table(results: Sequence[dict[str, Any]]) -> str:
    head = (
        "| run | Chat | Chat Hard | Safety | Reasoning | 4-section mean | prior (hhh) | v1 | ties "
        "| val pair acc (balanced ± se / all) | command |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        s = r["metrics"].get("rewardbench", {})
        sec = s.get("per_section", {})
        val = r["metrics"].get("val_pair_accuracy", {})
        cells = [_f(sec.get(n)) for n in SECTIONS]
        validation = f"{_pct(val.get('balanced'))} ± {_pct(val.get('balanced_se'))} / {_pct(val.get('all'))}"
        lines.append(
            f"| {r['run']} | {' | '.join(cells)} | **{_f(s.get('four_section_mean'))}** "
            f"± {_f(s.get('four_section_mean_se'))} | {_f(s.get('prior'))} | "
            f"{_f(s.get('v1_score'))} | {s.get('ties', '–')} | {validation} | `{r.get('command', '')}` |"
        )
    return "\n".join(lines)


def objectives_table(metrics: dict[str, Any]) -> str:
    """Validation metrics per learned objective and Spearman with verbosity before/after debiasing."""
    lines = [
        "| objective | fit | validation | Spearman vs verbosity before | λ | after |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, corr in metrics.get("verbosity_spearman", {}).items():
        m = metrics.get("objectives", {}).get(name, {})
        if "val_r2" in m:
            fit = f"ridge α={m['alpha']:g}, n={m['n_train']:.0f}"
            val = f"R² {m['val_r2']:.3f}, MSE {m['val_mse']:.3f} (var {m['val_baseline_mse']:.3f}), n={m['n_val']:.0f}"
        elif "val_accuracy" in m:
            fit = f"BT probe L2={m['l2']:g}, n={m['n_train']:.0f}"
            val = (
                f"pair acc {100 * m['val_accuracy']:.1f}% (train {100 * m['train_accuracy']:.1f}%), n={m['n_val']:.0f}"
            )
        else:
            fit, val = "rule", ""
        lines.append(f"| {name} | {fit} | {val} | {corr['before']:.3f} | {corr['lambda']:.2f} | {corr['after']:.3f} |")
    return "\n".join(lines)


def write_report(paths: Sequence[Path], out: Path, plot: Path | None = None) -> None:
    results = [json.loads(Path(p).read_text()) for p in paths]
    parts = [
        "## Default\n",
        full_table(results[0]["metrics"]["rewardbench"]),
        "\n\n## Runs\n",
        ablation_table(results),
        "\n\n## Objectives of the default\n",
        objectives_table(results[0]["metrics"]),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts) + "\n")
    if plot is not None:
        from armo.training.plots import runs_bars

        runs_bars(results, plot)
