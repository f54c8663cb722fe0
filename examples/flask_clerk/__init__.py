"""Private notes: the lockkit example app. ``create_app()`` builds it; ``python -m
examples.flask_clerk`` (what ``make demo`` runs) serves it on 127.0.0.1:5000."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import InternalServerError

from lockkit.errors import ConfigurationError, DecryptionError, EncryptionError, LockContextError, LockkitError
from lockkit.flask import LockKit

from .db import Database
from .notes import submit_key

csrf = CSRFProtect()
lockkit = LockKit()
log = logging.getLogger(__name__)

#: what the 503 page says when the database or the session store (Redis) does not answer
STORE_UNAVAILABLE = ("Your notes are temporarily unavailable: the app cannot reach its database or session "
                     "store right now. Try again shortly. If you were saving a new note, sending the same "
                     "form again saves it once.")
#: where a request keeps the error of a session store that failed it (see _guard_session_store)
_SESSION_STORE_ERROR = "notes.session_store_error"


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


def content_security_policy(clerk_publishable_key: str = "") -> str:
    """The pages' Content-Security-Policy. Scripts, styles and images from this origin only
    (inline styles allowed; no inline script); no plugins, framing or <base>; forms post here.
    With Clerk, what Clerk documents it needs: its Frontend API (named in the publishable key)
    for scripts and requests, its image host, Cloudflare's bot-protection challenge and Clerk's
    fraud-protection hosts, workers from blob:, and runtime inline styles."""
    from urllib.parse import urlsplit

    from .views import clerk_js_url

    directives = {
        "default-src": ["'self'"], "script-src": ["'self'"], "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"], "connect-src": ["'self'"], "object-src": ["'none'"],
        "base-uri": ["'none'"], "frame-ancestors": ["'none'"], "form-action": ["'self'"],
    }
    url = clerk_js_url(clerk_publishable_key) if clerk_publishable_key else ""
    if url:
        parts = urlsplit(url)
        fapi = f"{parts.scheme}://{parts.netloc}"
        directives["script-src"] += [fapi, "https://challenges.cloudflare.com", "https://*.protect.clerk.com"]
        directives["connect-src"] += [fapi, "https://*.protect.clerk.com:*"]
        directives["img-src"] += ["https://img.clerk.com"]
        directives["worker-src"] = ["'self'", "blob:"]
        directives["frame-src"] = ["https://challenges.cloudflare.com", "https://*.protect.clerk.com"]
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


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
        _guard_session_store(app, (redis.RedisError,))

    csrf.init_app(app)
    lockkit.init_app(app)
    for name in ("lockkit_dev",):  # provider routes carry their own CSRF protection
        if name in app.blueprints:
            csrf.exempt(app.blueprints[name])
    db = Database(app.config["DATABASE_URL"])
    db.create_schema()
    app.extensions["notes_db"] = db
    app.extensions["notes_submit_key"] = submit_key(app.config["SECRET_KEY"])  # new-note digests (notes.py)
    app.teardown_appcontext(lambda exc: db.close())  # one connection per request thread, closed after
    policy = content_security_policy(app.config.get("CLERK_PUBLISHABLE_KEY", "") if app.config["NOTES_SIGN_IN"] == "clerk"
                                     else "")

    @app.after_request
    def security_headers(response: Response) -> Response:
        """Pages show decrypted notes: no script but this origin's (and Clerk's), no framing
        (the delete buttons cannot be clickjacked), no sniffing, no note URLs in Referer."""
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.errorhandler(404)
    def not_found(err: Exception) -> tuple[str, int]:
        from flask import render_template

        return render_template("404.html"), 404

    @app.errorhandler(LockContextError)
    def lock_context_refused(err: LockContextError) -> Any:
        """The request's lock context was refused (expired mid-request, keys changed): forget
        the session's CTS token and sign in again, never a 500. Unless the request has no lock
        context because of an outage (the token service, OpenBao login or identity provider
        down): then 503, and the session is kept (signing in again would loop back here)."""
        from flask import flash, jsonify, redirect, request, session, url_for

        from lockkit.flask import get_state

        from .views import SIGN_IN_UNAVAILABLE, sign_in_unavailable, unavailable

        if err.retryable or sign_in_unavailable():
            log.warning("no lock context during an outage on %s %s: %s", request.method, request.path, err.message)
            return unavailable(SIGN_IN_UNAVAILABLE)
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

        from .views import unavailable

        if err.retryable:  # a passing outage (key service, token service, IdP, audit log)
            log.warning("%s during an outage on %s %s: %s", type(err).__name__, request.method, request.path, err.message)
            return unavailable("A service your notes depend on is not answering right now. "
                               "Nothing was lost; try again shortly.")
        status = 500 if isinstance(err, DecryptionError | EncryptionError) else 503
        if request.path.startswith("/api/"):
            return jsonify(error=type(err).__name__), status
        heading = "Could not open your data" if status == 500 else "Temporarily unavailable"
        return render_template("error.html", heading=heading, message=err.message), status

    # the database or the session store down: 503 "Temporarily unavailable", never Flask's bare
    # 500 (nor, under /api/, HTML). Only an outage: any other error of theirs (a query with a
    # bug, a value refused) is a 500 with its traceback logged, not a "try again shortly" that
    # never comes right
    store_outages: tuple[type[Exception], ...] = ()
    not_outages: tuple[type[Exception], ...] = ()
    try:
        import redis
    except ImportError:  # optional: only with REDIS_URL
        pass
    else:
        # not answering, or answering but refusing writes for a while (full under noeviction, a
        # read-only replica after a failover, a cluster that is down or resharding)
        errs = redis.exceptions
        store_outages = (redis.ConnectionError, redis.TimeoutError, errs.ReadOnlyError, errs.OutOfMemoryError,
                         errs.ClusterDownError, errs.TryAgainError)
        # refused credentials are redis.ConnectionError too, but a wrong password does not pass
        not_outages = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)

    def is_outage(err: BaseException | None) -> bool:
        """The database or the session store not answering (it passes): see Database.is_outage."""
        if isinstance(err, store_outages):
            return not isinstance(err, not_outages)
        return err is not None and db.is_outage(err)

    def store_unavailable(err: Exception) -> Any:
        from flask import request

        from .views import unavailable

        # the type and SQLSTATE only: a driver's message may quote the values of a statement
        code = getattr(err, "sqlstate", None)
        log.warning("%s unavailable (%s%s) on %s %s", "database" if isinstance(err, db.errors) else "session store",
                    type(err).__name__, f", SQLSTATE {code}" if code else "", request.method, request.path)
        return unavailable(STORE_UNAVAILABLE)

    def store_failed(err: Exception) -> Any:
        """A database (or Redis) error reached a view: 503 for an outage; anything else is a bug
        and Flask's 500, its traceback logged at ERROR (raised instead when Flask propagates
        errors: testing, debug)."""
        from flask import request

        if is_outage(err):
            return store_unavailable(err)
        propagate = app.config.get("PROPAGATE_EXCEPTIONS")
        if propagate if propagate is not None else (app.testing or app.debug):
            raise err
        log.error("%s error (%s) on %s %s", "database" if isinstance(err, db.errors) else "session store",
                  type(err).__name__, request.method, request.path,
                  exc_info=db.loggable(err) if isinstance(err, db.errors) else err)
        return InternalServerError(original_exception=err)

    for error in (*db.errors, *store_outages):
        app.register_error_handler(error, store_failed)

    @app.errorhandler(InternalServerError)
    def internal_error(err: InternalServerError) -> Any:
        """An error outside the view reaches Flask as a 500 (saving the session after the
        response was made): the outages above still answer 503."""
        original = err.original_exception
        if isinstance(original, Exception) and is_outage(original):
            return store_unavailable(original)
        return err

    import datetime as dt

    app.jinja_env.filters["utc"] = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    from . import admin  # noqa: F401  (`flask notes rekey|key-usage|retire-key` on the blueprint's CLI group)
    from .views import bp

    app.register_blueprint(bp)
    return app


def _guard_session_store(app: Flask, errors: tuple[type[Exception], ...]) -> None:
    """Flask-Session opens the session before Flask looks for error handlers: a session store
    that fails then (Redis down) would be Flask's bare 500. Here the failure is kept and raised
    again from the first before-request function, where the app's handler answers 503; the
    request runs on an empty null session meanwhile (nothing is written back). A session that
    cannot be saved is not retried by Flask's error path (one failure, one log line)."""
    from flask import request

    interface = app.session_interface
    open_session, save_session = interface.open_session, interface.save_session

    def guarded_open(app: Flask, req: Request) -> Any:
        try:
            return open_session(app, req)
        except errors as err:
            req.environ[_SESSION_STORE_ERROR] = err
            return None  # Flask uses a null session

    def guarded_save(app: Flask, session: Any, response: Response) -> None:
        if _SESSION_STORE_ERROR in request.environ:
            return  # failed once in this request: not again while answering that failure
        try:
            save_session(app, session, response)
        except errors as err:
            request.environ[_SESSION_STORE_ERROR] = err
            raise

    interface.open_session = guarded_open  # type: ignore[method-assign]
    interface.save_session = guarded_save  # type: ignore[method-assign]

    @app.before_request
    def session_store_failed() -> None:  # registered before LockKit's: runs first
        err = request.environ.get(_SESSION_STORE_ERROR)
        if err is not None:
            raise err
