"""Shared helpers for the Flask kit's tests: an app factory and a loopback provider plugin.

``make_app(**config)`` builds a small notes app on ``LockKit``: the workspace comes from
``LOCKKIT_WORKSPACE_CRN`` + ``LOCKKIT_KEYRING_JSON`` (a fresh keyring per app unless given),
``TESTING=True``, a random ``SECRET_KEY`` per app, the dev provider by default, and these
routes:

- ``GET /``                 public page (no lock context needed)
- ``GET /notes``            protected HTML page (redirects to sign-in)
- ``GET /api/me``           protected JSON: the verified ``sub``
- ``POST /api/notes``       protected: ``{"body": str}`` -> ``{"payload": <encrypted body>}``
- ``POST /api/notes/read``  protected: ``{"payload": ...}`` -> ``{"body": str}``, or 403
  ``{"error": <failure type>}`` when this identity cannot decrypt it

``LoopbackProvider`` is a third-party-style provider plugin for a
:class:`lockkit.testing.LocalIssuer`; :func:`plugin_manager` registers it exactly as a plugin
distribution would be, next to the entry points (which bring the dev provider).
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Mapping
from typing import Any, Protocol, cast

from flask import Flask, request
from flask.sessions import SessionInterface
from flask.testing import FlaskClient
from markupsafe import escape
from werkzeug.test import TestResponse

import pluggy
from lockkit import EncryptedTable, encrypted_column, encrypted_table, hookimpl
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.flask import LockKit, current_claims, current_lock_context, get_state, lock_context_required
from lockkit.flask.extension import SESSION_PURPOSE
from lockkit.keys.keyring import Keyring
from lockkit.oidc import IssuerConfig, OIDCVerifier
from lockkit.plugins import make_plugin_manager
from lockkit.provider import IdentityProvider
from lockkit.testing import LocalIssuer

WORKSPACE = "crn:local:ws-flask-tests"
SESSION_COOKIE = "session"

#: the app's encrypted table: one column, locked to the current user in every route
NOTES: EncryptedTable = encrypted_table("notes", body=encrypted_column("body"))


class DevIssuer(Protocol):
    """What tests use of the dev provider (``lockkit_dev.DevProvider``)."""

    issuer: str
    ttl: int

    @property
    def namespace(self) -> str: ...

    def mint(self, sub: str, *, now: float | None = None, **claims: Any) -> str: ...


# -- the loopback provider plugin ---------------------------------------------------------
class LoopbackProvider(IdentityProvider):
    """Bearer tokens from a :class:`~lockkit.testing.LocalIssuer`, verified by the core
    verifier. Config: ``LOCKKIT_LOOPBACK_ISSUER``, ``LOCKKIT_LOOPBACK_AUDIENCE``,
    ``LOCKKIT_LOOPBACK_JWKS_URI`` and optionally ``LOCKKIT_LOOPBACK_ALGORITHMS``."""

    name = "loopback"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LoopbackProvider:
        algorithms = config.get("LOCKKIT_LOOPBACK_ALGORITHMS") or ("RS256",)
        return cls(
            OIDCVerifier(
                IssuerConfig(
                    issuer=cls.require(config, "LOCKKIT_LOOPBACK_ISSUER"),
                    audiences=(cls.require(config, "LOCKKIT_LOOPBACK_AUDIENCE"),),
                    jwks_uri=cls.require(config, "LOCKKIT_LOOPBACK_JWKS_URI"),
                    algorithms=tuple(algorithms),
                )
            )
        )


class LoopbackPlugin:
    """What a third-party distribution's plugin module would hold: one hook implementation."""

    @hookimpl
    def register_identity_providers(self, register: Any) -> None:
        register(LoopbackProvider)


def plugin_manager() -> pluggy.PluginManager:
    """Entry-point plugins (the dev provider) plus the loopback plugin."""
    return make_plugin_manager(load_entrypoints=True, plugins=[LoopbackPlugin()])


def loopback_config(issuer: LocalIssuer) -> dict[str, Any]:
    """App config that selects the loopback provider and trusts ``issuer``."""
    return {
        "LOCKKIT_PROVIDERS": ["loopback"],
        "LOCKKIT_LOOPBACK_ISSUER": issuer.issuer,
        "LOCKKIT_LOOPBACK_AUDIENCE": issuer.audience,
        "LOCKKIT_LOOPBACK_JWKS_URI": issuer.jwks_uri,
        "LOCKKIT_LOOPBACK_ALGORITHMS": [issuer.algorithm],
    }


# -- the app ------------------------------------------------------------------------------
def new_keyring_json(workspace_crn: str = WORKSPACE) -> str:
    """A fresh throwaway keyring, as ``LOCKKIT_KEYRING_JSON`` carries it."""
    return Keyring.generate(workspace_crn).to_json()


def base_config(**config: Any) -> dict[str, Any]:
    """The test app's config; ``config`` overrides the defaults."""
    out: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "LOCKKIT_WORKSPACE_CRN": WORKSPACE,
        "LOCKKIT_PROVIDERS": ["dev"],
        "LOCKKIT_KEY_BACKEND": "local",  # the embedded CTS, whose exchanges tests count
    }
    out.update(config)
    if "LOCKKIT_KEYRING_JSON" not in out:
        out["LOCKKIT_KEYRING_JSON"] = new_keyring_json(out["LOCKKIT_WORKSPACE_CRN"])
    return out


def make_app(*, extension: LockKit | None = None, **config: Any) -> Flask:
    """A notes app with LockKit bound (see the module docstring for its routes).

    :param extension: an unbound ``LockKit`` to bind (default: a new one on
        :func:`plugin_manager`).
    :raises ClientInitError: from ``LockKit.init_app`` for bad configuration.
    """
    app = Flask(__name__)
    app.config.update(base_config(**config))
    _add_routes(app)
    (extension or LockKit(plugin_manager=plugin_manager())).init_app(app)
    return app


def _add_routes(app: Flask) -> None:
    @app.get("/")
    def public() -> str:
        return "public page"

    @app.get("/notes")
    @lock_context_required
    def notes_page() -> str:
        claims = current_claims() or {}
        return f"<!doctype html><p>notes of {escape(claims.get('sub'))}</p>"

    @app.get("/api/me")
    @lock_context_required
    def me() -> dict[str, Any]:
        claims = current_claims() or {}
        return {"sub": claims.get("sub")}

    @app.post("/api/notes")
    @lock_context_required
    def write_note() -> dict[str, Any]:
        body = (request.get_json(silent=True) or {}).get("body")
        client = get_state().encryption([NOTES])
        op = client.encrypt(body, column=NOTES.body, table=NOTES).with_lock_context(current_lock_context)
        return {"payload": op.unwrap()}

    @app.post("/api/notes/read")
    @lock_context_required
    def read_note() -> Any:
        payload = (request.get_json(silent=True) or {}).get("payload")
        res = get_state().encryption([NOTES]).decrypt(payload).with_lock_context(current_lock_context).result()
        if res.failure is not None:
            return {"error": res.failure.type}, 403
        return {"body": res.data}


# -- small helpers ------------------------------------------------------------------------
def bearer(token: str) -> dict[str, str]:
    """``Authorization: Bearer <token>`` headers."""
    return {"Authorization": f"Bearer {token}"}


def dev_provider(app: Flask) -> DevIssuer:
    """The app's dev provider instance (mints identity tokens its app accepts)."""
    return cast(DevIssuer, app.extensions["lockkit_dev"])


def exchanges(app: Flask) -> int:
    """How many CTS exchanges the app's (embedded) token service has made."""
    service = get_state(app).token_service
    assert isinstance(service, EmbeddedTokenService), f"not the embedded token service: {service!r}"
    return service.calls


def cookie_value(client: FlaskClient, name: str = SESSION_COOKIE) -> str | None:
    """The value of a cookie in the test client's jar, or ``None``."""
    cookie = client.get_cookie(name)
    return cookie.value if cookie is not None else None


def open_session(app: Flask, cookie: str | None) -> dict[str, Any]:
    """The session ``app``'s session interface (signed cookie or server-side) loads for
    ``cookie``, as a plain dict (empty when the cookie is missing or refused)."""
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    with app.test_request_context("/", headers=headers):
        interface: SessionInterface = app.session_interface
        sess = interface.open_session(app, request)
        return dict(sess) if sess is not None else {}


def stored_cts(app: Flask, cookie: str | None) -> dict[str, Any] | None:
    """The unsealed CTS entry of the session behind ``cookie`` (``tok``, ``exp``, ``sub``,
    ``ns``), or ``None`` when the session holds none this app can unseal."""
    state = get_state(app)
    sealed = open_session(app, cookie).get(state.session_key)
    value = state.sealer.unseal(SESSION_PURPOSE, sealed)
    return cast("dict[str, Any] | None", value)


_CSRF_RE = re.compile(r'name="csrf" value="([^"]*)"')
_NEXT_RE = re.compile(r'name="next" value="([^"]*)"')


def form_field(page: str, field: str) -> str:
    """A hidden field's value in the dev sign-in form.

    :raises AssertionError: the field is not in the page.
    """
    match = (_CSRF_RE if field == "csrf" else _NEXT_RE).search(page)
    assert match is not None, f"no {field} field in the sign-in form"
    return html.unescape(match.group(1))


def dev_sign_in(client: FlaskClient, name: str, next_url: str = "/") -> TestResponse:
    """Sign in through the dev provider's form (GET, then POST with its CSRF token)."""
    form = client.get("/lockkit/dev/login", query_string={"next": next_url})
    assert form.status_code == 200
    csrf = form_field(form.get_data(as_text=True), "csrf")
    return client.post("/lockkit/dev/login", data={"name": name, "csrf": csrf, "next": next_url})


def json_of(resp: TestResponse) -> dict[str, Any]:
    """The JSON object body of a response.

    :raises AssertionError: the body is not a JSON object.
    """
    data = resp.get_json(silent=True)
    assert isinstance(data, dict), f"expected a JSON object, got {resp.status} {resp.get_data(as_text=True)[:200]!r}"
    return data


def set_cookie_headers(resp: TestResponse, name: str = SESSION_COOKIE) -> list[str]:
    """The ``Set-Cookie`` headers of ``resp`` that set cookie ``name``."""
    return [h for h in resp.headers.getlist("Set-Cookie") if h.startswith(f"{name}=")]
