"""`armo serve` (placeholder until the service lands)."""

from __future__ import annotations

import typer


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
) -> None:
    """Run the scoring service."""
    raise typer.Exit(code=1)
