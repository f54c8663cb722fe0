"""A real OpenID Provider for the provider tests: panva's ``oidc-provider`` (Node), run from
``tests/providers/op/server.mjs`` on 127.0.0.1, plus helpers that drive it with plain HTTP.

* ``op`` (module-scoped fixture): one running OP per test module; yields an :class:`OPServer`.
* ``make_op`` (fixture): a factory for dedicated OPs (a test that restarts or rotates keys).
* :func:`drive_to_app` follows the OP's redirects (signing in by name through the test
  interaction) until the OP sends the browser back to the app.
* :func:`spa_access_token`: a public client's PKCE flow (Authlib's requests client) that ends
  with a JWT access token for an API audience, as a single-page app would get one.

The first use runs ``npm ci`` into ``tests/providers/op/node_modules`` when it is missing
(the npm registry is reachable on developer machines and CI). Without ``node`` the tests skip
with a reason (a failure under ``CI=true``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, render_template_string, request
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm
from werkzeug.test import TestResponse

from lockkit import encrypted_column, encrypted_table
from lockkit.flask import LockKit, current_claims, current_lock_context, get_state, lock_context_required
from lockkit.keys.keyring import Keyring

from ..process_support import dies_with_us

OP_DIR = Path(__file__).resolve().parent / "op"
APP_ORIGIN = "http://localhost"  # Flask's test client
API_AUDIENCE = "https://api.lockkit.test"
OTHER_AUDIENCE = "https://other.lockkit.test"
WEB_CLIENT = "lockkit-web"
SHORT_CLIENT = "lockkit-short"  # ID tokens live 30 s: shorter than the kit's refresh window
SPA_CLIENT = "lockkit-spa"
SPA_REDIRECT = f"{APP_ORIGIN}/spa/callback"
SHORT_ID_TOKEN_TTL = 30
START_TIMEOUT = 20.0
NPM_TIMEOUT = 300

_npm_lock = threading.Lock()


def provider_of(app: Flask, cls: type[Any]) -> Any:
    """The app's one identity provider, checked to be a ``cls``."""
    provider = get_state(app).providers[0]
    assert isinstance(provider, cls)
    return provider


def unsealed_entry(app: Flask, client: FlaskClient, key: str, purpose: str) -> dict[str, Any] | None:
    """A provider's sealed session entry ``key``, unsealed for ``purpose`` (``None`` when absent)."""
    with client.session_transaction() as sess:
        raw = sess.get(key)
    if raw is None:
        return None
    value = get_state(app).sealer.unseal(purpose, raw)
    assert isinstance(value, dict)
    return value


def new_signing_key() -> dict[str, Any]:
    """A fresh RS256 private JWK (with ``kid``) for the OP's JWKS."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    jwk.pop("key_ops", None)  # oidc-provider selects JWT access token keys "for verify"
    jwk.update(kid=f"op-{secrets.token_hex(6)}", alg="RS256", use="sig")
    return jwk


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node() -> str:
    """The ``node`` binary, with ``node_modules`` installed; skips when Node is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip(reason="node is not installed: the OpenID provider tests run panva's oidc-provider on Node")
    with _npm_lock:
        if not (OP_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
            npm = shutil.which("npm")
            if npm is None:
                pytest.skip(reason="npm is not installed: cannot install tests/providers/op dependencies")
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=OP_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False,
            )
            if proc.returncode != 0:
                pytest.skip(reason=f"npm ci failed in tests/providers/op: {proc.stderr.strip()[-500:]}")
    return node


@dataclass
class OPServer:
    """One ``node server.mjs`` process and its configuration."""

    workdir: Path
    keys: list[dict[str, Any]] = field(default_factory=lambda: [new_signing_key()])
    port: int = field(default_factory=_free_port)
    web_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    log_path: Path | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def current_kid(self) -> str:
        return str(self.keys[0]["kid"])

    def config(self) -> dict[str, Any]:
        web_redirects = [f"{APP_ORIGIN}/lockkit/oidc/callback", f"{APP_ORIGIN}/lockkit/auth0/callback"]
        confidential = {
            "client_secret": self.web_secret,
            "redirect_uris": web_redirects,
            "post_logout_redirect_uris": [f"{APP_ORIGIN}/", f"{APP_ORIGIN}/bye"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        return {
            "port": self.port,
            "jwks": {"keys": self.keys},
            "cookieKeys": [secrets.token_urlsafe(32)],
            "clients": [
                {"client_id": WEB_CLIENT, **confidential},
                {"client_id": SHORT_CLIENT, **confidential},
                {
                    "client_id": SPA_CLIENT,
                    "redirect_uris": [SPA_REDIRECT],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                },
            ],
            "idTokenTTL": {SHORT_CLIENT: SHORT_ID_TOKEN_TTL},
            "resources": {
                API_AUDIENCE: {"scope": "notes:read", "accessTokenTTL": 600},
                OTHER_AUDIENCE: {"scope": "other:read", "accessTokenTTL": 600},
            },
        }

    def start(self) -> None:
        node = _node()
        config_path = self.workdir / f"op-config-{self.port}.json"
        config_path.write_text(json.dumps(self.config()))
        config_path.chmod(0o600)
        log_path = self.log_path = self.workdir / f"op-{self.port}-{self.restarts}.log"
        log = log_path.open("wb")
        env = {"PATH": os.environ.get("PATH", ""), "OP_CONFIG": str(config_path), "NODE_ENV": "test"}
        self.proc = subprocess.Popen(dies_with_us([node, "server.mjs"]), cwd=OP_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        url = self.issuer + "/.well-known/openid-configuration"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the test OP exited with {self.proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the test OP did not serve {url} within {START_TIMEOUT}s")
            time.sleep(0.05)  # polling a server that is starting (not a test clock)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, keys: list[dict[str, Any]] | None = None) -> None:
        """Restart on the same port (same issuer), optionally with another JWKS: the first key
        signs. In-memory OP state (sessions, grants, refresh tokens) is lost."""
        self.stop()
        if keys is not None:
            self.keys = keys
        self.restarts += 1
        self.start()

    def events(self) -> dict[str, Any]:
        """Counters from the OP: ``{"grants": {grant_type: n}, "endSessions": n}``."""
        data: dict[str, Any] = requests.get(self.issuer + "/__test__/events", timeout=5).json()
        return data

    def discovery(self) -> dict[str, Any]:
        data: dict[str, Any] = requests.get(self.issuer + "/.well-known/openid-configuration", timeout=5).json()
        return data


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OPServer]:
    """One real OpenID provider per test module."""
    server = OPServer(tmp_path_factory.mktemp("op"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_op(tmp_path: Path) -> Iterator[Callable[..., OPServer]]:
    """``make_op(keys=[...])``: a dedicated, started OP, stopped after the test."""
    started: list[OPServer] = []

    def make(**kwargs: Any) -> OPServer:
        server = OPServer(tmp_path, **kwargs)
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


def drive_to_app(
    authorize_url: str, login: str = "alice", *, browser: requests.Session | None = None, deny: bool = False,
    max_hops: int = 12,
) -> str:
    """Follow the OP's redirects like a browser, signing in as ``login`` (or refusing, with
    ``deny``) when the OP asks, until it redirects back to the app. Returns that URL."""
    browser = browser or requests.Session()
    url = authorize_url
    for _ in range(max_hops):
        path = urlsplit(url).path
        if path.startswith("/interaction/"):
            url = url + "?" + urlencode({"deny": "1"} if deny else {"login": login})
        resp = browser.get(url, allow_redirects=False, timeout=10)
        if resp.status_code not in (302, 303):
            raise AssertionError(f"the OP answered {resp.status_code} at {path}: {resp.text[:500]}")
        url = urljoin(url, resp.headers["Location"])
        if url.startswith(APP_ORIGIN + "/"):
            return url
    raise AssertionError("too many redirects at the OP")


def spa_access_token(server: OPServer, login: str, resource: str = API_AUDIENCE) -> dict[str, Any]:
    """A public client's authorization code flow with PKCE for ``resource``; the token
    response (``access_token`` is a JWT for ``resource``, ``id_token`` is for the SPA)."""
    meta = server.discovery()
    with OAuth2Session(
        SPA_CLIENT, scope="openid notes:read other:read", redirect_uri=SPA_REDIRECT,
        code_challenge_method="S256", token_endpoint_auth_method="none",
    ) as client:
        verifier = secrets.token_urlsafe(48)
        url, state = client.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier, nonce=secrets.token_urlsafe(16), resource=resource
        )
        back = drive_to_app(url, login)
        query = parse_qs(urlsplit(back).query)
        assert query["state"] == [state]
        token: dict[str, Any] = client.fetch_token(
            meta["token_endpoint"], code=query["code"][0], code_verifier=verifier, resource=resource
        )
    return token


# -- the Flask app under test ---------------------------------------------------------------
WORKSPACE = "crn:local:ws-providers"
NOTES = encrypted_table("notes", body=encrypted_column("body"))


def lockkit_app(provider: str, **config: Any) -> Flask:
    """A small notes app with LockKit and the named provider (entry points loaded, as an app
    would). Routes: ``/`` (public), ``/notes`` (HTML, protected: encrypts and decrypts a note
    under the user's lock context), ``/api/me``, ``POST /api/notes`` (encrypt),
    ``POST /api/notes/read`` (decrypt; 403 with the failure type), ``/logout-form`` (the
    sign-out form token through the provider's template global)."""
    app = Flask(f"lockkit_{provider}_test")
    app.config.update(
        TESTING=True,
        SECRET_KEY=secrets.token_urlsafe(32),
        LOCKKIT_PROVIDERS=[provider],
        LOCKKIT_WORKSPACE_CRN=WORKSPACE,
        LOCKKIT_KEYRING_JSON=Keyring.generate(WORKSPACE).to_json(),
    )
    app.config.update(config)

    @app.get("/")
    def public() -> str:
        return "public page"

    @app.get("/notes")
    @lock_context_required
    def notes() -> dict[str, Any]:
        claims = current_claims() or {}
        client = get_state().encryption([NOTES])
        enc = client.encrypt(f"note of {claims['sub']}", column=NOTES.body, table=NOTES)
        payload = enc.with_lock_context(current_lock_context).unwrap()
        plain = client.decrypt(payload).with_lock_context(current_lock_context).unwrap()
        return {"sub": claims["sub"], "plain": plain, "locked": payload is not None and "lc" in payload}

    @app.get("/api/me")
    @lock_context_required
    def me() -> dict[str, Any]:
        return {"sub": (current_claims() or {}).get("sub")}

    @app.post("/api/notes")
    @lock_context_required
    def write_note() -> dict[str, Any]:
        body = (request.get_json(silent=True) or {}).get("body")
        op = get_state().encryption([NOTES]).encrypt(body, column=NOTES.body, table=NOTES)
        return {"payload": op.with_lock_context(current_lock_context).unwrap()}

    @app.post("/api/notes/read")
    @lock_context_required
    def read_note() -> Any:
        payload = (request.get_json(silent=True) or {}).get("payload")
        res = get_state().encryption([NOTES]).decrypt(payload).with_lock_context(current_lock_context).result()
        if res.failure is not None:
            return {"error": res.failure.type}, 403
        return {"body": res.data}

    @app.get("/logout-form")
    def logout_form() -> str:
        return render_template_string("{{ csrf() }}", csrf=app.jinja_env.globals[f"lockkit_{provider}_csrf"])

    LockKit(app)
    return app


def sign_in(
    client: FlaskClient, name: str = "alice", *, provider: str = "oidc", next_url: str = "/notes",
    browser: requests.Session | None = None,
) -> TestResponse:
    """The whole browser round trip: app login -> OP (sign in as ``name``) -> app callback.
    Returns the callback's response."""
    start = client.get(f"/lockkit/{provider}/login", query_string={"next": next_url})
    assert start.status_code == 302, start.get_data(as_text=True)
    back = drive_to_app(start.headers["Location"], name, browser=browser)
    return client.get(back[len(APP_ORIGIN):])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
