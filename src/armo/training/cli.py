"""`armo train …` and `armo eval` (placeholder until the training pipeline lands)."""

from __future__ import annotations

import typer

train_app = typer.Typer(no_args_is_help=True, help="Offline training jobs.")


@train_app.command("run")
def train_run() -> None:
    """Run every training stage end to end."""
    raise typer.Exit(code=1)


def eval_command() -> None:
    """Evaluate an artifact on RewardBench."""
    raise typer.Exit(code=1)
