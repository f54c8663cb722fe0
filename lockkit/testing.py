"""Test helpers: a real OIDC issuer on loopback, and a signed-in Flask test client.

:class:`LocalIssuer` signs real JWTs with keys it generates and publishes them as a JWKS over
HTTP on ``127.0.0.1``, so tests and demos exercise the same verification path as production,
with no account and no network::

    with LocalIssuer() as idp:
        verifier = OIDCVerifier(idp.issuer_config())
        claims = verifier.verify(idp.mint("alice"))

:func:`signed_in_client` gives an app's own tests a Flask test client that is already signed
in, with the CTS token in its session (the steady state)::

    client = signed_in_client(app, "alice")          # the dev provider mints alice's token
    client.get("/notes")                              # a protected view: 200, no exchange

For tests only: keys are throwaway and the server has no authentication.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, TypeAlias

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from lockkit.oidc import IssuerConfig

__all__ = ["LocalIssuer", "signed_in_client"]

#: a path no app serves: the seeding request only needs lockkit's middleware to run
SEED_PATH: Final = "/__lockkit_testing_seed__"

JWKS_PATH: Final = "/.well-known/jwks.json"
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
SUPPORTED_ALGORITHMS: Final = ("RS256", "ES256")

_PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_kid_counter = itertools.count(1)


class LocalIssuer:
    """A real OIDC issuer on ``127.0.0.1``: signing keys, JWKS, discovery document.

    :param audience: the ``aud`` of minted tokens (and of :meth:`issuer_config`).
    :param algorithm: ``RS256`` or ``ES256``.
    :param key_size: RSA modulus size (tests may pass 1024 to check that it is refused).
    :param issuer: the ``iss`` value; defaults to ``http://127.0.0.1:<port>``.
    :raises ValueError: for an unsupported algorithm.
    """

    def __init__(
        self,
        *,
        audience: str = "lockkit-test",
        algorithm: str = "RS256",
        key_size: int = 2048,
        issuer: str | None = None,
    ) -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"LocalIssuer supports {SUPPORTED_ALGORITHMS}, not {algorithm!r}")
        self._audience = audience
        self._algorithm = algorithm
        self._key_size = key_size
        self._issuer = issuer
        self._lock = threading.Lock()
        self._keys: dict[str, _PrivateKey] = {}  # every key ever made, retired ones too
        self._published: list[str] = []
        self._extra_jwks: list[dict[str, Any]] = []
        self._available = True
        self._jwks_requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._current_kid = self._new_key()

    def __repr__(self) -> str:
        where = self.issuer if self._server is not None or self._issuer else "not started"
        return f"LocalIssuer({where!r}, algorithm={self._algorithm!r}, kid={self._current_kid!r})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalIssuer:
        """Start serving on a free loopback port (idempotent).

        :raises OSError: when the socket cannot be bound.
        """
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so close() returns quickly
            name="lockkit-local-issuer",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def close(self) -> None:
        """Stop the server and free its port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``.

        :raises RuntimeError: before :meth:`start`.
        """
        if self._server is None:
            raise RuntimeError("LocalIssuer is not started: use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def issuer(self) -> str:
        """The ``iss`` of minted tokens.

        :raises RuntimeError: before :meth:`start` when no explicit issuer was given.
        """
        return self._issuer if self._issuer is not None else self.base_url

    @property
    def jwks_uri(self) -> str:
        """URL of the published JWKS.

        :raises RuntimeError: before :meth:`start`.
        """
        return self.base_url + JWKS_PATH

    @property
    def audience(self) -> str:
        return self._audience

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def current_kid(self) -> str:
        """The ``kid`` new tokens are signed with."""
        return self._current_kid

    @property
    def published_kids(self) -> tuple[str, ...]:
        """The ``kid`` of every key currently in the JWKS."""
        with self._lock:
            return tuple(self._published)

    @property
    def jwks_requests(self) -> int:
        """How many times the JWKS has been requested (including 503 answers)."""
        with self._lock:
            return self._jwks_requests

    # ------------------------------------------------------------------ keys

    def _new_key(self) -> str:
        key: _PrivateKey
        if self._algorithm == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=self._key_size)
        kid = f"test-{next(_kid_counter)}-{secrets.token_hex(4)}"
        with self._lock:
            self._keys[kid] = key
            self._published.append(kid)
        return kid

    def rotate(self) -> str:
        """Make a new signing key current; older keys stay published.

        :returns: the new ``kid``.
        """
        self._current_kid = self._new_key()
        return self._current_kid

    def retire(self, kid: str) -> None:
        """Remove a key from the JWKS (it can still sign, for tests of retired keys).

        :raises ValueError: for an unknown or the current ``kid`` (rotate first).
        """
        if kid == self._current_kid:
            raise ValueError("cannot retire the current key; call rotate() first")
        with self._lock:
            if kid not in self._published:
                raise ValueError(f"kid {kid!r} is not published")
            self._published.remove(kid)

    def set_available(self, available: bool) -> None:
        """When ``False``, the JWKS and discovery endpoints answer 503 (an outage)."""
        with self._lock:
            self._available = available

    def publish_jwk(self, jwk: dict[str, Any]) -> None:
        """Publish an arbitrary extra JWK as-is (for tests of broken or hostile key sets)."""
        with self._lock:
            self._extra_jwks.append(dict(jwk))

    def public_jwk(self, kid: str | None = None) -> dict[str, Any]:
        """The public JWK (with ``kid``, ``alg``, ``use``) for ``kid`` (default: current).

        :raises ValueError: for an unknown ``kid``.
        """
        self._key(kid)
        return self._public_jwk(self._current_kid if kid is None else kid)

    def jwks(self) -> dict[str, Any]:
        """The published JWKS document."""
        with self._lock:
            keys = [self._public_jwk(kid) for kid in self._published]
            return {"keys": keys + [dict(jwk) for jwk in self._extra_jwks]}

    def _public_jwk(self, kid: str) -> dict[str, Any]:
        public = self._keys[kid].public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        jwk.update(kid=kid, alg=self._algorithm, use="sig")
        return jwk

    def _key(self, kid: str | None) -> _PrivateKey:
        try:
            return self._keys[self._current_kid if kid is None else kid]
        except KeyError:
            raise ValueError(f"LocalIssuer has no key {kid!r}") from None

    def private_key(self, kid: str | None = None) -> _PrivateKey:
        """The private key object for ``kid`` (default: current)."""
        return self._key(kid)

    def private_key_pem(self, kid: str | None = None) -> bytes:
        """PKCS#8 PEM of the private key for ``kid`` (default: current). Tests only."""
        return self._key(kid).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_key_pem(self, kid: str | None = None) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key for ``kid`` (default: current)."""
        return self._key(kid).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # ------------------------------------------------------------------ tokens

    def mint(
        self,
        sub: str | None = "alice",
        *,
        now: float | None = None,
        ttl: float = 300,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
        omit: Iterable[str] = (),
        **claims: Any,
    ) -> str:
        """Sign a JWT with ``iss``, ``aud``, ``sub``, ``iat`` and ``exp = now + ttl``.

        :param sub: the subject; ``None`` leaves ``sub`` out.
        :param now: unix time of issue; defaults to ``time.time()``.
        :param kid: sign with this key (default: current); it is also the header ``kid``.
        :param headers: extra or overriding header fields; a value of ``None`` removes the
            field (``headers={"kid": None}`` makes a token without ``kid``).
        :param omit: standard claims to leave out, e.g. ``omit=("exp",)``.
        :param claims: extra claims; they override the standard ones.
        :raises ValueError: for an unknown ``kid``.
        """
        now = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self._audience,
            "iat": int(now),
            "exp": int(now + ttl),
        }
        if sub is not None:
            payload["sub"] = sub
        payload.update(claims)
        for name in omit:
            payload.pop(name, None)
        signing_kid = self._current_kid if kid is None else kid
        key = self._key(signing_kid)
        header: dict[str, Any] = {"kid": signing_kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(payload, key, algorithm=self._algorithm, headers=header)

    def issuer_config(self, **overrides: Any) -> IssuerConfig:
        """An :class:`IssuerConfig` that trusts this issuer (its JWKS, audience, algorithm).

        :raises ConfigurationError: when the overrides make it invalid.
        """
        fields: dict[str, Any] = {
            "issuer": self.issuer,
            "audiences": (self._audience,),
            "jwks_uri": self.jwks_uri,
            "algorithms": (self._algorithm,),
        }
        fields.update(overrides)
        return IssuerConfig(**fields)

    # ------------------------------------------------------------------ HTTP

    def _respond(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if path == JWKS_PATH:
                self._jwks_requests += 1
            if path not in (JWKS_PATH, DISCOVERY_PATH):
                return 404, {"error": "not_found"}
            if not self._available:
                return 503, {"error": "temporarily_unavailable"}
        if path == JWKS_PATH:
            return 200, self.jwks()
        return 200, {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": [self._algorithm],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
        }


def _make_handler(issuer: LocalIssuer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            status, document = issuer._respond(self.path.split("?", 1)[0])
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            """Silence per-request logging (tests must stay quiet)."""

    return _Handler


def signed_in_client(app: Any, sub: str | None = None, *, token: str | None = None, **claims: Any) -> Any:
    """A test client of ``app`` that sends an identity token with every request
    (``Authorization: Bearer``) and whose session already holds the CTS token exchanged for it,
    so the test's own requests run in the steady state.

    :param sub: mint the token with the app's dev provider (``LOCKKIT_PROVIDERS`` includes
        ``"dev"``), with ``claims`` added (e.g. ``scope="notes:write"``).
    :param token: or pass an identity token the app accepts (e.g. ``LocalIssuer.mint(...)``
        for an app that trusts that issuer).
    :raises ValueError: neither or both of ``sub`` and ``token``.
    :raises RuntimeError: ``sub`` without the dev provider, or the app did not accept the
        token (no CTS token in the session after the seeding request).
    """
    from flask.sessions import SessionMixin

    from .flask import get_state

    if (sub is None) == (token is None):
        raise ValueError("pass sub= (minted by the dev provider) or token=, not both")
    if token is None:
        dev = app.extensions.get("lockkit_dev")
        if dev is None:
            raise RuntimeError('signed_in_client(sub=...) needs the dev provider (LOCKKIT_PROVIDERS = ["dev"]); '
                               "or pass token=")
        token = dev.mint(sub, **claims)
    elif claims:
        raise ValueError("claims go with sub=; a token= already carries its claims")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    client.get(SEED_PATH)  # lockkit's middleware verifies the token and stores the CTS token
    key = get_state(app).session_key
    with client.session_transaction() as session:
        assert isinstance(session, SessionMixin)
        if key not in session:
            raise RuntimeError("the app did not accept the identity token: no CTS token in the session "
                               "(is its issuer one of the app's providers?)")
    return client
