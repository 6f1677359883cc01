"""`armo serve`: validate settings, configure JSON logs, run uvicorn on the app."""

from __future__ import annotations

from types import FrameType

import typer
from pydantic import ValidationError


def serve(
    host: str | None = typer.Option(None, help="Interface to bind (default: ARMO_HOST, else 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to bind (default: ARMO_PORT, else 8000)."),
) -> None:
    """Run the scoring service (settings from ARMO_* environment variables, see docs/SERVICE.md)."""
    import uvicorn  # imported here so `armo --help` stays fast

    from armo.service.app import create_app
    from armo.service.logs import configure
    from armo.settings import Settings

    try:
        settings = Settings()
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
