"""`armo store list | show | verify | promote | rollback | import-armorm`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_ALIAS
from armo.model_store.errors import ArmoError
from armo.model_store.store import ModelStore

store_app = typer.Typer(no_args_is_help=True, help="Inspect and manage the versioned model store.")
console = Console()
RootOption = typer.Option(BUNDLED_ROOT, "--root", envvar="ARMO_STORE_ROOT", help="Model store root directory.")


def _fail(e: ArmoError) -> typer.Exit:
    console.print(f"[red]error:[/red] {e.message}")
    return typer.Exit(code=1)


@store_app.command("list")
def list_(root: Path = RootOption) -> None:
    """Models, their versions and aliases."""
    store = ModelStore(root)
    table = Table("model", "version", "aliases", "created", "objectives")
    for model in store.models():
        aliases = store.aliases(model)
        for version in store.versions(model):
            try:
                m = store.read_manifest(model, version)
                created, n = m.created_at, str(len(m.objectives))
            except ArmoError:
                created, n = "[red]unreadable[/red]", "-"
            names = ", ".join(a for a, v in aliases.items() if v == version)
            table.add_row(model, version, names, created, n)
    console.print(table)


@store_app.command()
def show(model: str, ref: str = typer.Argument(DEFAULT_ALIAS), root: Path = RootOption) -> None:
    """Print the manifest of a version or alias."""
    store = ModelStore(root)
    try:
        manifest = store.read_manifest(model, store.resolve(model, ref))
    except ArmoError as e:
        raise _fail(e) from e
    console.print_json(manifest.model_dump_json())


@store_app.command()
def verify(model: str, ref: str = typer.Argument(DEFAULT_ALIAS), root: Path = RootOption) -> None:
    """Check checksums and that the heads load; exit 1 naming the bad file otherwise."""
    store = ModelStore(root)
    try:
        version = store.resolve(model, ref)
        store.load(model, version)
    except ArmoError as e:
        raise _fail(e) from e
    console.print(f"[green]ok[/green] {model}/{version}")


@store_app.command()
def promote(model: str, version: str, alias: str = DEFAULT_ALIAS, root: Path = RootOption) -> None:
    """Point an alias (default `current`) at a verified version."""
    try:
        ModelStore(root).promote(model, version, alias)
    except ArmoError as e:
        raise _fail(e) from e
    console.print(f"{model}/{alias} → {version}")


@store_app.command()
def rollback(model: str, alias: str = DEFAULT_ALIAS, root: Path = RootOption) -> None:
    """Point an alias back at the version it pointed to before."""
    try:
        version = ModelStore(root).rollback(model, alias)
    except ArmoError as e:
        raise _fail(e) from e
    console.print(f"{model}/{alias} → {version}")


@store_app.command("import-armorm")
def import_armorm_command(
    directory: Path,
    model: str = "armorm-llama3-8b",
    version: str | None = None,
    alias: str = DEFAULT_ALIAS,
    root: Path = RootOption,
) -> None:
    """Turn a local RLHFlow/ArmoRM-Llama3-8B-v0.1 checkpoint into an artifact (the backbone stays in DIRECTORY and is
    named relative to the store root: move both together, or name DIRECTORY where it is mounted with ARMO_BACKBONE).
    To serve a checkpoint without a store of your own: armo serve DIRECTORY."""
    from armo.model_store.armorm_import import import_armorm

    try:
        manifest, head = import_armorm(directory, store_root=root, model=model, version=version)
        path = ModelStore(root).publish(manifest, head, alias=alias)
    except ArmoError as e:
        raise _fail(e) from e
    console.print(json.dumps({"published": str(path), "objectives": len(manifest.objectives)}))
