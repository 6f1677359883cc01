"""The `armo` command: `armo serve`, `armo store …`, `armo train …`, `armo eval …`, `armo batch …`.

Each package owns its sub-commands; this file only wires them together.
"""

from __future__ import annotations

import typer

from armo.batch.cli import batch_app
from armo.model_store.cli import store_app
from armo.service.cli import serve
from armo.training.cli import eval_command, train_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Interpretable, steerable reward-model service.")
app.add_typer(store_app, name="store")
app.add_typer(train_app, name="train")
app.add_typer(batch_app, name="batch")
app.command("serve")(serve)
app.command("eval")(eval_command)

if __name__ == "__main__":
    app()
