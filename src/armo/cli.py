"""The `armo` command: `armo serve`, `armo store …`, `armo train …`, `armo eval …`, `armo batch …`.

Each package owns its sub-commands; this file only wires them together. The console script is installed with the
base package too (the client and the RL integrations, no typer, no torch), so this module imports nothing beyond
the standard library until a command runs: `main` first checks that the extra the command needs is installed and
otherwise says in one line which one to install. `armo.cli.app`, the typer app, is built on first use.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

# The modules each extra brings that the commands import (probed with find_spec, which imports nothing, so
# `armo --help` stays fast); `train` includes `serve`, as the extra does. peft (stage 0 only) and Ray (`--ray`)
# are checked where they are used, with their own message.
_SERVE_MODULES = (
    "typer",
    "rich",
    "tqdm",
    "numpy",
    "torch",
    "transformers",
    "safetensors",
    "gguf",
    "fastapi",
    "uvicorn",
    "pydantic_settings",
    "prometheus_client",
)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "serve": _SERVE_MODULES,
    "train": (*_SERVE_MODULES, "scipy", "sklearn", "matplotlib"),
}
COMMAND_EXTRA = {"serve": "serve", "store": "serve", "batch": "serve", "train": "train", "eval": "train"}


def missing_extra(command: str | None) -> str | None:
    """The one-line hint for `armo COMMAND` when the extra it needs is not installed; None when it is. No command,
    `--help` or an unknown one need the command line itself (typer), which comes with `serve`."""
    extra = COMMAND_EXTRA.get(command or "", "serve")
    lacking = [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]
    if not lacking:
        return None
    what = f"armo {command}" if command in COMMAND_EXTRA else "the armo command"
    shown = ", ".join(lacking[:3]) + (", …" if len(lacking) > 3 else "")
    return f"{what} needs the {extra} extra: pip install 'armo-rm[{extra}]' (missing: {shown})"


@cache
def _app() -> typer.Typer:
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
    return app


def __getattr__(name: str) -> Any:
    # `from armo.cli import app` (tests, `typer.testing.CliRunner`) builds the app; a plain `import armo.cli` does not.
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """The console script: the hint for a command whose extra is missing (exit status 1), else the typer app.
    The command is the first word that is not an option: `armo` has no options of its own besides --help."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    hint = missing_extra(command)
    if hint is not None:
        print(hint, file=sys.stderr)
        raise SystemExit(1)
    _app()()


if __name__ == "__main__":
    main()
