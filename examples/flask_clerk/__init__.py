"""Private notes: the lockkit example app. ``create_app()`` builds it; ``python -m
examples.flask_clerk`` (what ``make demo`` runs) serves it on 127.0.0.1:5000."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from lockkit.errors import ConfigurationError, DecryptionError, EncryptionError, LockContextError, LockkitError
from lockkit.flask import LockKit

from .db import Database

csrf = CSRFProtect()
lockkit = LockKit()


def _secret_key(instance: Path) -> str:
    """SECRET_KEY from the environment, else one generated once into the instance folder."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = instance / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app. Clerk signs users in when ``CLERK_PUBLISHABLE_KEY`` and ``CLERK_SECRET_KEY``
    (or ``CLERK_JWT_KEY``) are set; otherwise the built-in dev sign-in (debug/testing only)."""
    app = Flask(__name__, instance_relative_config=True)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    for key in ("CLERK_PUBLISHABLE_KEY", "CLERK_SECRET_KEY", "CLERK_JWT_KEY", "CLERK_AUTHORIZED_PARTIES",
                "DATABASE_URL", "REDIS_URL"):
        if os.environ.get(key):
            app.config[key] = os.environ[key]
    app.config.update(config or {})
    if not app.config.get("SECRET_KEY"):  # Flask's default is None, so no setdefault
        app.config["SECRET_KEY"] = _secret_key(Path(app.instance_path))
    app.config.setdefault("DATABASE_URL", f"sqlite:///{Path(app.instance_path) / 'notes.db'}")
    clerk = bool(app.config.get("CLERK_PUBLISHABLE_KEY") and (app.config.get("CLERK_SECRET_KEY") or app.config.get("CLERK_JWT_KEY")))
    app.config.setdefault("LOCKKIT_PROVIDERS", ["clerk"] if clerk else ["dev"])
    if len(app.config["LOCKKIT_PROVIDERS"]) != 1:
        # notes are stored per `sub`: two providers could both have a user "alice", who would
        # then see (not decrypt, but list and delete) each other's notes
        raise ConfigurationError(
            "the notes example keys notes by the user's sub, so it signs users in with one identity "
            f"provider: set LOCKKIT_PROVIDERS to one of {list(app.config['LOCKKIT_PROVIDERS'])}"
        )
    app.config["NOTES_SIGN_IN"] = "clerk" if "clerk" in app.config["LOCKKIT_PROVIDERS"] else "dev"

    if app.config.get("REDIS_URL"):
        # several app servers: sessions live in Redis (the cookie holds only a session id)
        import redis
        from flask_session import Session

        app.config.setdefault("SESSION_TYPE", "redis")
        app.config.setdefault("SESSION_REDIS", redis.Redis.from_url(app.config["REDIS_URL"]))
        app.config.setdefault("SESSION_KEY_PREFIX", "notes:")
        Session(app)

    csrf.init_app(app)
    lockkit.init_app(app)
    for name in ("lockkit_dev",):  # provider routes carry their own CSRF protection
        if name in app.blueprints:
            csrf.exempt(app.blueprints[name])
    db = Database(app.config["DATABASE_URL"])
    db.create_schema()
    app.extensions["notes_db"] = db
    app.teardown_appcontext(lambda exc: db.close())  # one connection per request thread, closed after

    @app.errorhandler(404)
    def not_found(err: Exception) -> tuple[str, int]:
        from flask import render_template

        return render_template("404.html"), 404

    @app.errorhandler(LockContextError)
    def lock_context_refused(err: LockContextError) -> Any:
        """The request's lock context was refused (expired mid-request, keys changed): forget
        the session's CTS token and sign in again, never a 500."""
        from flask import flash, jsonify, redirect, request, session, url_for

        from lockkit.flask import get_state

        session.pop(get_state().session_key, None)
        if request.path.startswith("/api/"):
            return jsonify(error="lock_context", message="sign in again"), 401
        flash("Please sign in again.", "error")
        return redirect(url_for("notes.signin", next=request.full_path if request.method == "GET" else "/"))

    @app.errorhandler(LockkitError)
    def lockkit_failed(err: LockkitError) -> Any:
        """Any other lockkit error that reached a view (a key service down, a value that does
        not decrypt): a clear answer, never a traceback."""
        from flask import jsonify, render_template, request

        status = 500 if isinstance(err, DecryptionError | EncryptionError) else 503
        if request.path.startswith("/api/"):
            return jsonify(error=type(err).__name__), status
        heading = "Could not open your data" if status == 500 else "Temporarily unavailable"
        return render_template("error.html", heading=heading, message=err.message), status

    import datetime as dt

    app.jinja_env.filters["utc"] = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    from . import admin  # noqa: F401  (`flask notes rekey|key-usage|retire-key` on the blueprint's CLI group)
    from .views import bp

    app.register_blueprint(bp)
    return app
