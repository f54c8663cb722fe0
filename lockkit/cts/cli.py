"""``lockkit cts serve``: run the token service over HTTP (development server).

Production should run the same app under a real WSGI server, behind TLS::

    gunicorn --bind 0.0.0.0:8787 'lockkit.cts.server:create_app()'
"""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_settings
from ..errors import LockkitError

__all__ = ["cts", "serve"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@click.command(
    "serve",
    help=(
        "Serve the token service (CTS) over HTTP: POST /api/authorize, "
        "GET /.well-known/jwks.json, GET /healthz. Uses the workspace, keyring and trusted "
        "issuers from lockkit.toml / LOCKKIT_* variables. This is a development server; in "
        "production run a real WSGI server behind TLS, e.g. "
        "gunicorn 'lockkit.cts.server:create_app()'."
    ),
)
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port to listen on")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="config file to read (default: LOCKKIT_CONFIG or ./lockkit.toml)")
def serve(host: str, port: int, config_path: Path | None) -> None:
    from werkzeug.serving import run_simple

    from .server import create_app

    try:
        app = create_app(load_settings(config_path))
    except LockkitError as err:
        raise click.ClickException(err.message) from err
    if host not in _LOOPBACK:
        click.echo(
            "warning: serving plain HTTP beyond loopback; put TLS in front of it, and use a "
            "production WSGI server (gunicorn 'lockkit.cts.server:create_app()')",
            err=True,
        )
    click.echo(f"lockkit CTS for {app.workspace_crn} on http://{host}:{port} (development server)")
    run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)


@click.group("cts", help="The token service (CTS).")
def cts() -> None:
    pass


cts.add_command(serve)
