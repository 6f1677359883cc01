"""`armo serve`: validate settings, configure JSON logs, run uvicorn on the app."""

from __future__ import annotations

from pathlib import Path
from types import FrameType
from typing import Any

import typer
from pydantic import ValidationError


def model_settings(spec: str | None, cache_dir: Path | None = None) -> dict[str, Any]:
    """The settings `armo serve MODEL` stands for. MODEL is an artifact's version folder (`STORE/MODEL/VERSION`), a
    model folder of a store with an optional version or alias (`STORE/MODEL[@VERSION]`), an ArmoRM-style checkpoint
    directory (a `config.json` and safetensors: imported on first use into the cache store under `cache_dir`,
    default ARMO_CACHE_DIR or ~/.cache/armo, and served with the directory as its backbone), or a model name of the
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
        return _artifact(path)
    if (path / "config.json").is_file():
        if version:
            raise typer.BadParameter(f"{base} is a checkpoint, one version; drop @{version}", param_hint="MODEL")
        return _checkpoint(path, cache_dir)
    if path.is_dir():
        return {"store_root": path.resolve().parent, "model": path.name, **pinned}
    if "/" in base or path.exists():
        raise typer.BadParameter(
            f"{base}: no artifact, model folder or checkpoint there (an artifact folder holds {MANIFEST_FILE}, a "
            "checkpoint config.json)",
            param_hint="MODEL",
        )
    return {"model": base, **pinned}


def _artifact(version_dir: Path) -> dict[str, Any]:
    """An artifact's version folder STORE/MODEL/VERSION, pinned."""
    return {
        "store_root": version_dir.resolve().parent.parent,
        "model": version_dir.resolve().parent.name,
        "alias": version_dir.name,
    }


def _checkpoint(directory: Path, cache_dir: Path | None) -> dict[str, Any]:
    """A checkpoint directory: its cached import, pinned, with the directory named as the backbone (ARMO_BACKBONE),
    so the import made where it was mounted before still serves it here."""
    from armo.model_store.armorm_import import import_cached
    from armo.model_store.backbone import default_cache_dir
    from armo.model_store.errors import ArmoError

    try:
        version_dir = import_cached(directory, cache_dir or default_cache_dir())
    except ArmoError as e:
        raise typer.BadParameter(
            f"{directory}: cannot import it as an ArmoRM-style checkpoint: {e.message}", param_hint="MODEL"
        ) from None
    typer.echo(
        f"serving checkpoint {directory} as {version_dir.parent.name}/{version_dir.name} ({version_dir})", err=True
    )
    return {**_artifact(version_dir), "backbone": str(directory.resolve())}


def serve(
    model: str | None = typer.Argument(
        None,
        help="An artifact folder (STORE/MODEL/VERSION); a model folder STORE/MODEL or a model name of "
        "ARMO_STORE_ROOT, either optionally @VERSION (or @ALIAS); or an ArmoRM-style checkpoint directory (imported "
        "once into ARMO_CACHE_DIR, default ~/.cache/armo). Default: ARMO_MODEL (the embedded default).",
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

    options = {"backend": backend, "device": device, "dtype": dtype}
    flags: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    try:
        settings = Settings(**flags)
        if model is not None:  # the settings first: a checkpoint is imported under their cache_dir
            settings = Settings(**flags, **model_settings(model, settings.cache_dir))
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
