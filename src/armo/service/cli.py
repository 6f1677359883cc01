"""`armo serve`: validate settings, configure JSON logs, run uvicorn on the app."""

from __future__ import annotations

from pathlib import Path
from types import FrameType
from typing import Any

import typer
from pydantic import ValidationError


def model_settings(spec: str | None) -> dict[str, Any]:
    """The settings `armo serve MODEL` stands for. MODEL is an artifact's version folder (`STORE/MODEL/VERSION`), a
    model folder of a store with an optional version or alias (`STORE/MODEL[@VERSION]`), or a model name of the
    configured store (`MODEL[@VERSION]`, ARMO_STORE_ROOT); nothing: the settings as they are (the embedded default)."""
    from armo.model_store.manifest import MANIFEST_FILE

    if spec is None:
        return {}
    base, at, version = spec.rpartition("@")
    if not at or "/" in version:
        base, version = spec, ""
    path = Path(base)
    pinned = {"alias": version} if version else {}
    if (path / MANIFEST_FILE).is_file():
        if version:
            raise typer.BadParameter(f"{base} is one version already; drop @{version}", param_hint="MODEL")
        return {"store_root": path.resolve().parent.parent, "model": path.resolve().parent.name, "alias": path.name}
    if (path / "config.json").is_file():
        raise typer.BadParameter(
            f"{base} is a model checkpoint, not an artifact: import it first (armo store import-armorm {base} --root "
            "STORE), then serve STORE/MODEL",
            param_hint="MODEL",
        )
    if path.is_dir():
        return {"store_root": path.resolve().parent, "model": path.name, **pinned}
    if "/" in base or path.exists():
        raise typer.BadParameter(f"{base}: no artifact or model folder there", param_hint="MODEL")
    return {"model": base, **pinned}


def serve(
    model: str | None = typer.Argument(
        None,
        help="An artifact folder (STORE/MODEL/VERSION), a model folder STORE/MODEL or a model name of "
        "ARMO_STORE_ROOT, either optionally @VERSION (or @ALIAS); default: ARMO_MODEL (the embedded default).",
        show_default=False,
    ),
    host: str | None = typer.Option(None, help="Interface to bind (default: ARMO_HOST, else 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to bind (default: ARMO_PORT, else 8000)."),
    backend: str | None = typer.Option(None, help="transformers | vllm (default: ARMO_BACKEND)."),
    device: str | None = typer.Option(None, help="cpu | cuda | cuda:N | mps (default: ARMO_DEVICE)."),
    dtype: str | None = typer.Option(None, help="auto | float32 | bfloat16 | float16 (default: ARMO_DTYPE)."),
) -> None:
    """Run the scoring service (settings from ARMO_* environment variables, see docs/SERVICE.md; an option or MODEL
    wins over its variable)."""
    import uvicorn  # imported here so `armo --help` stays fast

    from armo.service.app import create_app
    from armo.service.logs import configure
    from armo.settings import Settings

    flags = {"backend": backend, "device": device, "dtype": dtype}
    overrides = {k: v for k, v in flags.items() if v is not None} | model_settings(model)
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        # A clear list of bad variables, not a stack trace.
        lines = [
            f"  ARMO_{'_'.join(str(x) for x in err['loc']).upper()}: {err['msg']}" if err["loc"] else f"  {err['msg']}"
            for err in e.errors()
        ]
        typer.echo("invalid settings:\n" + "\n".join(lines), err=True)
        raise typer.Exit(code=2) from None
    configure(settings.log_level, settings.log_json)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_config=None,  # keep the JSON handlers installed by configure()
        access_log=False,  # the service writes its own access log, with request ids
        # One setting: the service answers everything it holds within drain_s, and uvicorn cancels nothing before.
        timeout_graceful_shutdown=int(settings.drain_s) + 2,
    )
    services = app.state.services

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                services.batcher.begin_drain(settings.drain_s)
            super().handle_exit(sig, frame)

    DrainingServer(config).run()


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
