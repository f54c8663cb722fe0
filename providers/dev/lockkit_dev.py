"""lockkit-dev: a local OpenID-style issuer inside the app, for development and tests.

A sign-in page accepts any name and mints a real signed JWT (EdDSA, key derived from the app's
``SECRET_KEY`` so every worker agrees), published at ``/lockkit/dev/jwks.json`` and verified by
the same core verifier as every other provider. It refuses to start unless the app is in
debug or testing mode, or ``LOCKKIT_DEV_ALLOW_IN_PRODUCTION`` is set — and it always says so
loudly in the log.
"""

from __future__ import annotations

import hashlib
import html
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Blueprint, Flask, Response, abort, jsonify, redirect, request, session, url_for

from lockkit import ConfigurationError, hookimpl
from lockkit.config import flag
from lockkit.oidc import IssuerConfig, OIDCVerifier
from lockkit.provider import IdentityProvider, RequestLike, bearer_token, safe_next

log = logging.getLogger("lockkit.dev")

AUDIENCE = "lockkit-dev"
SESSION_KEY = "_lockkit_dev"
CSRF_KEY = "_lockkit_dev_csrf"
DEFAULT_TTL = 8 * 3600


class DevProvider(IdentityProvider):
    """Sign in as anyone, locally. Never for production."""

    name = "dev"
    redirect_login = True

    def __init__(self, secret_key: str | bytes, *, ttl: int = DEFAULT_TTL) -> None:
        raw = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
        seed = HKDF(hashes.SHA256(), 32, b"lockkit-dev", b"issuer key").derive(raw)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        pub = self._key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = hashlib.sha256(pub).hexdigest()[:16]
        self.issuer = f"urn:lockkit:dev:{self.kid}"
        self.ttl = ttl
        super().__init__(
            OIDCVerifier(IssuerConfig(issuer=self.issuer, audiences=(AUDIENCE,), static_keys=(pub.decode(),), algorithms=("EdDSA",)))
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DevProvider:
        allowed = config.get("DEBUG") or config.get("TESTING") or flag(config, "LOCKKIT_DEV_ALLOW_IN_PRODUCTION")
        if not allowed:
            raise ConfigurationError(
                "the dev identity provider lets anyone sign in as anyone: it runs only in debug or "
                "testing mode (set LOCKKIT_DEV_ALLOW_IN_PRODUCTION=True to override, knowingly)"
            )
        secret = cls.require(config, "SECRET_KEY")
        log.warning(
            "LOCKKIT DEV IDENTITY PROVIDER ENABLED: anyone can sign in as anyone. "
            "Never use it in production."
        )
        return cls(secret, ttl=int(config.get("LOCKKIT_DEV_TOKEN_TTL", DEFAULT_TTL)))

    def mint(self, sub: str, *, now: float | None = None, **claims: Any) -> str:
        """A signed identity token for ``sub`` (tests use it directly)."""
        iat = int(time.time() if now is None else now)
        payload = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "iat": iat, "exp": iat + self.ttl, **claims}
        return jwt.encode(payload, self._key, algorithm="EdDSA", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        import json

        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "alg": "EdDSA", "use": "sig"})
        return {"keys": [jwk]}

    def token_from_request(self, request: RequestLike) -> str | None:
        got = bearer_token(request)
        if got:
            return got
        from lockkit.flask import get_state

        stored = get_state().sealer.unseal("dev-id-token", session.get(SESSION_KEY))
        return stored if isinstance(stored, str) else None

    def login_url(self, next_url: str) -> str | None:
        return url_for("lockkit_dev.login", next=next_url)

    def init_app(self, app: Flask) -> None:
        if "lockkit_dev" not in app.blueprints:
            app.register_blueprint(_blueprint())
        app.extensions["lockkit_dev"] = self


def _provider() -> DevProvider:
    from flask import current_app

    return current_app.extensions["lockkit_dev"]  # type: ignore[no-any-return]


_FORM = """<!doctype html><html><head><meta charset="utf-8"><title>Dev sign-in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto}}
.banner{{background:#fff3cd;border:1px solid #e0c36c;padding:.6rem;border-radius:.4rem}}</style></head>
<body><p class="banner"><strong>Development sign-in.</strong> Anyone can sign in as anyone; this
page exists only in debug or testing mode.</p>
<h1>Sign in</h1>
<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="next" value="{next}">
<label>Name <input name="name" autofocus required maxlength="64" pattern="[A-Za-z0-9_.@-]+"></label>
<button type="submit">Sign in</button></form></body></html>"""


def _blueprint() -> Blueprint:
    bp = Blueprint("lockkit_dev", __name__, url_prefix="/lockkit/dev")

    @bp.get("/jwks.json")
    def jwks() -> Response:
        return jsonify(_provider().jwks())

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET":
            token = session.get(CSRF_KEY) or secrets.token_urlsafe(24)
            session[CSRF_KEY] = token
            return _FORM.format(
                action=html.escape(url_for("lockkit_dev.login")),
                csrf=html.escape(token),
                next=html.escape(safe_next(request.args.get("next"))),
            )
        expected = session.get(CSRF_KEY)
        if not expected or not secrets.compare_digest(str(expected), request.form.get("csrf", "")):
            abort(400, "sign-in form expired; reload the page")
        name = request.form.get("name", "").strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "_.@-" for c in name):
            abort(400, "name: use 1-64 letters, digits or _.@-")
        from flask import current_app

        from lockkit.flask import get_state

        regenerate = getattr(current_app.session_interface, "regenerate", None)
        if callable(regenerate):
            regenerate(session)  # server-side sessions: a new id on sign-in (no fixation)
        session[SESSION_KEY] = get_state().sealer.seal("dev-id-token", _provider().mint(name))
        return redirect(safe_next(request.form.get("next")))

    @bp.post("/logout")
    def logout() -> Any:
        expected = session.get(CSRF_KEY)
        if not expected or not secrets.compare_digest(str(expected), request.form.get("csrf", "")):
            abort(400, "sign-out form expired; reload the page")
        from lockkit.flask import end_session

        end_session()  # revoke/forget the CTS token, a new server-side session id
        session.clear()
        return redirect(safe_next(request.form.get("next")))

    return bp


def csrf_token() -> str:
    """The token the sign-out form must carry (templates: ``lockkit_dev_csrf()``)."""
    token = session.get(CSRF_KEY)
    if not token:
        token = session[CSRF_KEY] = secrets.token_urlsafe(24)
    return str(token)


@hookimpl
def register_identity_providers(register: Any) -> None:
    register(DevProvider)
