"""`armo batch score IN OUT`: score a JSONL or Parquet file offline with the service's model and code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

batch_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Offline scoring of files.")


@batch_app.command("score")
def score(
    src: Annotated[
        str,
        typer.Argument(help="rows to score: a .jsonl or .parquet file; with --ray also a directory, glob or URI"),
    ],
    dst: Annotated[
        str, typer.Argument(help="scored rows (input columns kept): a .jsonl or .parquet file; with --ray a directory")
    ],
    layout: Annotated[
        str | None, typer.Option(help="items | pairs | best_of_n (default: from the first row's columns)")
    ] = None,
    explain: Annotated[bool, typer.Option(help="also write per-objective rewards and gating weights")] = False,
    limit: Annotated[int | None, typer.Option(help="score only the first N (selected) rows")] = None,
    shard: Annotated[str, typer.Option(help="i/n: only rows whose index is i modulo n (one of n workers)")] = "0/1",
    shard_rows: Annotated[int, typer.Option(help="rows per resumable shard")] = 256,
    store: Annotated[
        Path | None, typer.Option(help="model store root (default: ARMO_STORE_ROOT, else bundled)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name (default: ARMO_MODEL)")] = None,
    alias: Annotated[str | None, typer.Option(help="alias or version (default: ARMO_ALIAS, i.e. current)")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="score on Ray Data: a pool of actors, one model each")] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="a running Ray cluster (implies --ray); default: local")
    ] = None,
    actors: Annotated[int, typer.Option(help="--ray: actors (models) in the pool")] = 2,
    threads_per_actor: Annotated[int, typer.Option(help="--ray: CPUs (torch threads) per actor")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(help="--ray: GPUs per actor")] = 0.0,
    input_format: Annotated[
        str | None, typer.Option(help="--ray on a directory/URI: jsonl | parquet (default: from the file names)")
    ] = None,
    output_format: Annotated[str, typer.Option(help="--ray into a directory/URI: parquet | jsonl")] = "parquet",
) -> None:
    """Score every row (resumable: re-run the same command after a kill). Settings as for `armo serve`."""
    from armo.batch import rows
    from armo.batch.runner import Options, load_model, score_file
    from armo.settings import Settings

    if layout is not None and layout not in rows.LAYOUTS:
        raise typer.BadParameter(f"one of {', '.join(rows.LAYOUTS)}", param_hint="--layout")
    try:
        i, n = (int(x) for x in shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise typer.BadParameter("i/n with 0 <= i < n, e.g. 0/4", param_hint="--shard") from None
    overrides: dict[str, Any] = {"store_root": store, "model": model, "alias": alias}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})  # the environment fills the rest
    options = Options(layout=layout, explain=explain, shard_rows=shard_rows, limit=limit, shard=(i, n))  # type: ignore[arg-type]
    pool_args = (actors, threads_per_actor, gpus_per_actor, ray_address)
    from armo.batch.streaming import FORMATS, is_dataset_path

    if is_dataset_path(src) or is_dataset_path(dst):
        if not (ray or ray_address):
            raise typer.BadParameter("a directory, glob or URI is read and written by Ray: add --ray", param_hint="SRC")
        for name, value in (("--input-format", input_format), ("--output-format", output_format)):
            if value is not None and value not in FORMATS:
                raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint=name)
        from armo.batch.streaming import score_dataset_ray
        from armo.ray_pool import Pool

        try:
            count, seconds = score_dataset_ray(
                settings, src, dst, options, Pool(*pool_args), in_format=input_format, out_format=output_format
            )
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        typer.echo(f"{count} rows scored into {dst} in {seconds:.1f} s on Ray's datasources ({actors} actors)")
        return
    if not Path(src).is_file():
        raise typer.BadParameter(f"{src}: no such file", param_hint="SRC")
    if ray or ray_address:
        from armo.batch.on_ray import score_file_ray
        from armo.ray_pool import Pool

        summary = score_file_ray(settings, Path(src), Path(dst), options, Pool(*pool_args))
        where = f"Ray ({actors} actors)"
    else:
        rm = load_model(settings)
        summary = score_file(rm, Path(src), Path(dst), options)
        where = f"{rm.name}/{rm.version}"
    typer.echo(
        f"{summary.rows} rows scored into {dst} ({summary.errors} with an error), {summary.tokens} tokens in "
        f"{summary.seconds:.1f} s ({summary.tokens / max(summary.seconds, 1e-9):.0f} tokens/s) on {where}"
    )
