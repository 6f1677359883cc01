"""`armo train …` and `armo eval`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal, cast, get_args

import typer

from armo.model_store.bundled import BUNDLED_ROOT
from armo.training.config import TrainConfig, load_config

log = logging.getLogger(__name__)

train_app = typer.Typer(no_args_is_help=True, help="Offline training jobs.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="JSON config (TrainConfig); defaults if absent")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override, e.g. --set gating.input=response (JSON value)")
]
TryOpt = Annotated[
    list[str], typer.Option("--try", help="a variant: overrides separated by ';', e.g. 'pooling=mean;gating.lr=0.003'")
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="also write the table as JSON here")]


def _overrides(values: list[str] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for v in values or []:
        key, _, raw = v.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _config(config: Path | None, sets: list[str] | None) -> TrainConfig:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return load_config(config, _overrides(sets))


@train_app.command("extract")
def train_extract(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    eval_set: Annotated[bool, typer.Option("--eval", help="featurise the RewardBench evaluation set instead")] = False,
    fast: Annotated[bool, typer.Option("--fast/--full", help="evaluation set: stratified sample or all rows")] = True,
    part: Annotated[int | None, typer.Option("--part", help="only this extraction job of the training set")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="compute the missing shards on a Ray Data actor pool")] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="a running Ray cluster (implies --ray); default: local")
    ] = None,
    actors: Annotated[int, typer.Option(help="--ray: actors (backbones) in the pool")] = 2,
    threads_per_actor: Annotated[int, typer.Option(help="--ray: CPUs (torch threads) per actor")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(help="--ray: GPUs per actor")] = 0.0,
) -> None:
    """Featurise the training set (or the evaluation set) into the feature cache; resumable, locally or on Ray."""
    from armo.training.featurize import featurize, run_backbone
    from armo.training.prepare import build_eval_set, build_training_set

    cfg = _config(config, sets)
    if eval_set:
        ds = build_eval_set(cfg.eval, fast)
        name = "rewardbench-fast" if fast else "rewardbench-full"
    else:
        ds = build_training_set(cfg.data)
        name = "train"
    pool = None
    if ray or ray_address:
        from armo.ray_pool import Pool
        from armo.training.on_ray import ray_pool

        if gpus_per_actor and cfg.device == "cpu":
            raise typer.BadParameter(
                "GPUs per actor need a GPU device: add --set device=cuda", param_hint="--gpus-per-actor"
            )
        pool = ray_pool(
            run_backbone(cfg),  # the key the cache is filed under; the actors load the same (stage0.delta included)
            cfg.backbone,
            Pool(actors, threads_per_actor, gpus_per_actor, ray_address),
            cfg.device,
            delta=cfg.stage0.delta,
        )
    _, seconds = featurize(cfg, ds, name, only_part=part, pool=pool)
    typer.echo(f"{name}: {len(ds.items)} responses featurised in {seconds:.0f} s")


@train_app.command("run")
def train_run(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    run_name: Annotated[str, typer.Option("--name", help="run name (output directory under out_dir)")] = "default",
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="publish the artifact to the config's store ($ARMO_STORE_ROOT, else runs/store) and point its alias "
            'at it (also: "publish": true in the config)',
        ),
    ] = False,
) -> None:
    """Run every stage end to end: features → objectives → debias → gating → evaluate; with --publish, publish."""
    from armo.training.pipeline import run
    from armo.training.report import print_scores

    cfg = _config(config, sets)
    if publish:
        cfg.publish = True
    result = run(cfg, run_name)
    out = Path(cfg.out_dir) / run_name / "result.json"
    saved = json.loads(out.read_text())
    saved["command"] = "armo " + " ".join(sys.argv[1:])
    out.write_text(json.dumps(saved, indent=2))
    if result.eval is not None:
        print_scores(result.eval.scores, title=f"{run_name}: {result.manifest.model}/{result.manifest.version}")
    typer.echo(f"results: {Path(cfg.out_dir) / run_name / 'result.json'}")
    if cfg.publish:
        typer.echo(f"published: {result.manifest.model}/{result.manifest.version} in {cfg.store} (alias {cfg.alias})")


@train_app.command("backbone")
def train_backbone(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    run_name: Annotated[str, typer.Option("--name", help="run name (directory under stage0.out_dir)")] = "default",
    variants: TryOpt = [],  # noqa: B006 (typer reads the default)
    out: OutOpt = None,
) -> None:
    """Stage 0: reward-tune the backbone's top layers (Bradley-Terry on the training pairs; resumable). With --try,
    every variant is its own run (<name>-0 is the config, <name>-1 … the variants), compared on validation pairs;
    the best is printed. The delta is <out_dir>/<run>/backbone_delta.safetensors: train on it with
    `armo train run --set stage0.delta=<that path>`."""
    from armo.training.stage0.tuning import tune

    _config(config, sets)  # logging, and a bad config fails before the cache is built
    tried = _variants(config, sets, variants)
    results: dict[str, dict[str, float]] = {}
    best: tuple[float, str, Path] | None = None
    for i, (label, cfg) in enumerate(tried.items()):
        name = run_name if len(tried) == 1 else f"{run_name}-{i}"
        result = tune(cfg, name)
        val = next(h for h in result.report["history"] if h["epoch"] == result.report["best_epoch"])["val"]
        results[label or "(config)"] = {
            "balanced": val["balanced"],
            "balanced_se": val["balanced_se"],
            "all": val["all"],
            **val["groups"],
        }
        typer.echo(
            f"{name}: best epoch {result.report['best_epoch']}, validation balanced {100 * val['balanced']:.1f} "
            f"± {100 * val['balanced_se']:.1f}, {result.report['wall_seconds']['total']:.0f} s"
        )
        if best is None or val["balanced"] > best[0]:
            best = (val["balanced"], label or "(config)", result.delta)
    if len(tried) > 1 and best is not None:
        _print_accuracies(results, "variant", out, "stage 0: validation pair accuracy % of the best epoch")
        typer.echo(f"best: {best[1]} → {best[2]}")
    elif best is not None:
        typer.echo(f"delta: {best[2]}")


@train_app.command("sweep")
def train_sweep(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    variants: TryOpt = [],  # noqa: B006 (typer reads the default)
    out: OutOpt = None,
) -> None:
    """Validation-only model selection over variants of one config (cached features; RewardBench never read)."""
    from armo.training.pipeline import sweep

    base = _config(config, sets)
    tried = _variants(config, sets, variants)
    _print_accuracies(sweep(base, tried), "variant", out)


def _variants(config: Path | None, sets: list[str] | None, variants: list[str]) -> dict[str, TrainConfig]:
    """The config (key "") and each `--try` variant on top of it."""
    return {
        v: load_config(config, {**_overrides(sets), **_overrides([s for s in v.split(";") if s])})
        for v in ["", *variants]
    }


@train_app.command("cv")
def train_cv(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    variants: TryOpt = [],  # noqa: B006 (typer reads the default)
    folds: Annotated[int, typer.Option("--folds", help="folds, keyed like the train/validation split")] = 5,
    out: OutOpt = None,
    by: Annotated[
        Literal["category"] | None,
        typer.Option("--by", help="also per source category (RMB's topics), paired; written to <out>.by.json"),
    ] = None,
) -> None:
    """Cross-validated selection: every training pair scored out of fold, variants compared pairwise with the
    config (cached features; RewardBench never read)."""
    from armo.training.crossval import cross_validate
    from armo.training.prepare import pair_category

    base = _config(config, sets)
    tried = _variants(config, sets, variants)
    results, detail = cross_validate(base, tried, folds, pair_category if by else None)
    _print_accuracies(results, "variant", out, f"out-of-fold pair accuracy %, {folds} folds")
    if by:
        _print_by_label(detail, list(tried), None if out is None else out.with_suffix(".by.json"))


def _print_by_label(detail: dict[str, dict[str, float]], names: list[str], out: Path | None) -> None:
    """One row per label: pairs, the first variant's accuracy, each other variant's paired difference ± SE."""
    from rich.console import Console
    from rich.table import Table

    table = Table("label", "pairs", "#0 acc", *(f"#{i} − #0" for i in range(1, len(names))), title="by label (%)")
    for label, row in detail.items():
        table.add_row(
            label,
            f"{row['n']:.0f}",
            f"{100 * row[names[0]]:.1f}",
            *(f"{100 * row[f'{n} vs']:+.1f} ± {100 * row[f'{n} vs_se']:.1f}" for n in names[1:]),
        )
    console = Console(width=200)
    console.print(table)
    for i, n in enumerate(names):
        console.print(f"#{i}: {n or '(config)'}")
    if out is not None:
        out.write_text(json.dumps(detail, indent=2))


def _print_accuracies(
    results: dict[str, dict[str, float]], what: str, out: Path | None, title: str = "validation pair accuracy %"
) -> None:
    from rich.console import Console
    from rich.table import Table

    from armo.training.bradley_terry import SUMMARY_KEYS

    nan = float("nan")

    def pm(acc: dict[str, float], key: str) -> str:
        if key not in acc:  # the first row, which the others are paired with
            return "—"
        return f"{100 * acc[key]:+.1f} ± {100 * acc.get(key + '_se', nan):.1f}"

    groups = sorted({g for r in results.values() for g in r} - set(SUMMARY_KEYS))
    paired = any("vs_base" in r for r in results.values())
    first = (next(iter(results)) or "(config)") if results else ""
    columns = ["balanced ± se", *([f"vs {first}, paired"] if paired else []), "all", *groups]
    table = Table(what, *columns, title=f"{title} (ties 0.5)")
    for name, acc in results.items():
        table.add_row(
            name or "(config)",
            f"{100 * acc.get('balanced', nan):.1f} ± {100 * acc.get('balanced_se', nan):.1f}",
            *([pm(acc, "vs_base")] if paired else []),
            *(f"{100 * acc.get(k, nan):.1f}" for k in ["all", *groups]),
        )
    Console(width=200).print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))


@train_app.command("compare")
def train_compare(
    versions: Annotated[list[str], typer.Argument(help="published versions (or aliases) of the config's model")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="model store root (default: the config's store, where runs publish)")
    ] = None,
    out: OutOpt = None,
) -> None:
    """Published artifacts side by side on this config's validation pairs: the promotion check between
    versions trained on different samples (RewardBench never read)."""
    from armo.training.compare import validation_accuracy

    cfg = _config(config, sets)
    _print_accuracies(validation_accuracy(cfg, versions, store or Path(cfg.store)), "version", out)


@train_app.command("precision")
def train_precision(
    version: Annotated[str, typer.Argument(help="published version (or alias) of the config's model")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="model store root (default: the config's store, where runs publish)")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="the precision to measure against the fit one")] = "bfloat16",
    pairs: Annotated[int, typer.Option("--pairs", help="validation pairs scored in both precisions")] = 400,
    write: Annotated[bool, typer.Option("--write", help="state the agreement in the artifact's manifest")] = False,
) -> None:
    """Scores of validation pairs in the heads' precision and in `--dtype`, compared; with --write, stated in the
    manifest, which lets the service serve the artifact in that precision (RewardBench never read)."""
    from armo.model_store.store import ModelStore
    from armo.training.precision_check import measure_agreement

    cfg = _config(config, sets)
    models = ModelStore(store or Path(cfg.store))
    agreement = measure_agreement(cfg, models, cfg.name, version, dtype, pairs)
    typer.echo(agreement.model_dump_json(indent=2))
    if write:
        models.state_precision(cfg.name, models.resolve(cfg.name, version), dtype, agreement)
        typer.echo(f"stated in {cfg.name}/{models.resolve(cfg.name, version)}'s manifest")


@train_app.command("split-check")
def train_split_check(config: ConfigOpt = None, sets: SetOpt = None) -> None:
    """How many validation pairs share a response or the prompt with a training pair, per group (data only)."""
    from rich.console import Console
    from rich.table import Table

    from armo.training.prepare import build_training_set, split_overlap

    cfg = _config(config, sets)
    table = Table("group", "validation pairs", "share a response", "share the prompt")
    for group, row in split_overlap(build_training_set(cfg.data)).items():
        table.add_row(group, *(str(v) for v in row.values()))
    Console(width=200).print(table)


@train_app.command("report")
def train_report(
    runs: Annotated[list[Path], typer.Argument(help="result.json files (or run directories), first = default")],
    out: Annotated[Path, typer.Option("--out", help="markdown file to write the tables to")] = Path("runs/report.md"),
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG comparing the runs' four-section means")] = None,
) -> None:
    """Markdown tables (default's full RewardBench table + one row per run) from result.json files."""
    from armo.training.report import write_report

    write_report([r / "result.json" if r.is_dir() else r for r in runs], out, plot)
    typer.echo(f"wrote {out}")


def eval_command(
    model: Annotated[str, typer.Option("--model", help="model name in the store")] = "armo-smollm2",
    version: Annotated[str, typer.Option("--version", help="version or alias")] = "current",
    store: Annotated[
        Path,
        typer.Option(
            "--store",
            envvar="ARMO_STORE_ROOT",
            help="model store root (default: the packaged store; e.g. runs/store for a training run's artifact)",
        ),
    ] = BUNDLED_ROOT,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    fast: Annotated[bool, typer.Option("--fast/--full", help="stratified sample of every subset, or all pairs")] = True,
    out: Annotated[Path, typer.Option("--out", help="directory for rewardbench.json and plots")] = Path("runs/eval"),
    quantize: Annotated[
        str,
        typer.Option("--quantize", help="none | int8 | int8-mixed: score with the opt-in int8 backbone (own cache)"),
    ] = "none",
    compile: Annotated[
        bool, typer.Option("--compile", help="score with the compiled backbone, as armo serve runs it on a CPU")
    ] = False,
) -> None:
    """Evaluate a published artifact on RewardBench v1 (features cached; same cap as the training config)."""
    from armo.model_store.backbone import Quantize
    from armo.model_store.quant import SCHEME
    from armo.model_store.store import ModelStore
    from armo.training.evaluate import evaluate_artifact
    from armo.training.featurize import featurize, load_artifact
    from armo.training.prepare import build_eval_set
    from armo.training.report import print_scores

    if quantize not in get_args(Quantize):
        raise typer.BadParameter(f"must be one of {', '.join(get_args(Quantize))}", param_hint="--quantize")
    cfg = _config(config, sets)
    if quantize != "none":  # the cache key does not see quantisation: own directory per mode/scheme
        cfg = _config(config, [*(sets or []), f"cache_dir={Path(cfg.cache_dir) / quantize / SCHEME}"])
    rm = load_artifact(cfg, ModelStore(store), model, version, cast(Quantize, quantize), compile)
    ds = build_eval_set(cfg.eval, fast)
    table, seconds = featurize(cfg, ds, "rewardbench-fast" if fast else "rewardbench-full", rm.backbone)
    result = evaluate_artifact(rm, ds, table, out, fast=fast)
    result.scores["extract_seconds"] = seconds
    (out / "rewardbench.json").write_text(json.dumps(result.scores, indent=2))
    print_scores(result.scores, title=f"{rm.name}/{rm.version}")
    typer.echo(f"results: {out / 'rewardbench.json'}")
