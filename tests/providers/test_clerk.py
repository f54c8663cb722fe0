"""The Clerk provider plugin (providers/clerk): configuration, Clerk's session-token rules on
top of the core verifier, token lookup (Bearer vs the ``__session`` cookie, CSRF), the Backend
API JWKS fetched with the secret key, and the Flask flows (cookie sign-in, 401 ``expired`` for
APIs, the refresh page for HTML).

Everything is real: RS256 Clerk-shaped session tokens signed with keys made here, the Backend
API JWKS served over HTTP on 127.0.0.1 by a server that demands the secret key, and the
embedded token and key services behind a Flask app.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify, request
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm

from lockkit import (
    ClientInitError,
    ConfigurationError,
    ExpiredCredentialError,
    IdentityError,
    InvalidCredentialError,
    MissingCredentialError,
    ProviderUnavailableError,
    encrypted_column,
    encrypted_table,
)
from lockkit.flask import LockKit, current_claims, current_lock_context, get_state, lock_context_required
from lockkit.keys.keyring import Keyring
from lockkit.oidc import OIDCVerifier
from lockkit.plugins import identity_provider_classes, make_plugin_manager
from lockkit.provider import IdentityProvider
from lockkit_clerk import (
    CAT_IGNORE,
    CAT_JWT_TEMPLATE,
    CAT_M2M_TOKEN,
    CAT_SESSION_TOKEN,
    ClerkProvider,
    cookie_suffix,
    frontend_api_from_publishable_key,
)

from ..example_support import route_offline

FAPI = "fancy-fox-12.clerk.accounts.dev"
ISSUER = f"https://{FAPI}"
PK = "pk_test_" + base64.b64encode(f"{FAPI}$".encode()).decode().rstrip("=")
SK = "sk_test_" + "LockkitFakeSecret0123456789abcdefABCDEF"
APP = "https://app.example.test"
KID = "ins_2lockkitTESTkey"
ALICE, BOB = "user_2lockkitALICE", "user_2lockkitBOB"
T0 = 1_750_000_000  # issue time of tokens in now= tests
WORKSPACE = "crn:local:ws-clerk-tests"

Mint = Callable[..., str]


# --------------------------------------------------------------------------- keys and tokens


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def instance_key() -> rsa.RSAPrivateKey:
    """The Clerk instance's signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    """Another instance's key (signatures made with it must fail)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def public_pem(instance_key: rsa.RSAPrivateKey) -> str:
    return _pem(instance_key)


def session_token(
    key: Any,
    *,
    now: float = T0,
    algorithm: str = "RS256",
    headers: dict[str, Any] | None = None,
    omit: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A Clerk v2 session token as the Frontend API mints it (claims per Clerk's docs,
    ``docs/guides/sessions/session-tokens.mdx``); ``claims`` override, ``omit`` removes,
    ``headers`` override the header (``None`` removes a field)."""
    payload: dict[str, Any] = {
        "azp": APP,
        "exp": int(now) + 60,
        "fea": "u:encryption",
        "fva": [0, -1],
        "iat": int(now),
        "iss": ISSUER,
        "jti": secrets.token_hex(10),
        "nbf": int(now) - 10,
        "pla": "u:free",
        "sid": "sess_2lockkitSESSION",
        "sts": "active",
        "sub": ALICE,
        "v": 2,
    }
    payload.update(claims)
    for name in omit:
        payload.pop(name, None)
    header: dict[str, Any] = {"kid": KID, "typ": "JWT", "cat": CAT_SESSION_TOKEN, **(headers or {})}
    # PyJWT drops a falsy typ; every other None means "leave the field out"
    header = {k: ("" if v is None else v) for k, v in header.items() if v is not None or k == "typ"}
    return jwt.encode(payload, key, algorithm=algorithm, headers=header)


@pytest.fixture
def mint(instance_key: rsa.RSAPrivateKey) -> Mint:
    """mint(now=T0, headers=..., omit=..., **claims) -> a session token of the instance."""

    def _mint(**kwargs: Any) -> str:
        return session_token(instance_key, **kwargs)

    return _mint


# --------------------------------------------------------------------------- the Backend API


class BackendAPI:
    """Clerk's Backend API on 127.0.0.1, reduced to ``GET /v1/jwks``: like
    ``https://api.clerk.com/v1/jwks`` it answers only a request whose ``Authorization`` header
    is ``Bearer <secret key>`` (compared in constant time), and 401 otherwise."""

    def __init__(self, secret_key: str, jwks: dict[str, Any]) -> None:
        self._expected = f"Bearer {secret_key}".encode()
        self.jwks = jwks
        self.lock = threading.Lock()
        self.authorized = 0
        self.refused = 0
        self.auth_headers: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> BackendAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _answer(self, path: str, auth: str | None) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.auth_headers.append(auth)
            if path != "/v1/jwks":
                return 404, {"errors": [{"code": "resource_not_found"}]}
            if auth is None or not hmac.compare_digest(auth.encode(), self._expected):
                self.refused += 1
                return 401, {"errors": [{"code": "authentication_invalid", "message": "Unauthorized"}]}
            self.authorized += 1
            return 200, self.jwks

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                status, doc = api._answer(self.path.split("?", 1)[0], self.headers.get("Authorization"))
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                """Quiet."""

        return Handler


@pytest.fixture(scope="module")
def backend_api(instance_key: rsa.RSAPrivateKey) -> Iterator[BackendAPI]:
    jwk = RSAAlgorithm.to_jwk(instance_key.public_key(), as_dict=True)
    jwk.update(kid=KID, alg="RS256", use="sig")
    with BackendAPI(SK, {"keys": [jwk]}) as api:
        yield api


# --------------------------------------------------------------------------- providers


@pytest.fixture(scope="module")
def clerk_cls() -> type[IdentityProvider]:
    """The provider class exactly as an app gets it: through the plugin manager."""
    return identity_provider_classes(make_plugin_manager())["clerk"]


def base_config(public_pem: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "CLERK_JWT_KEY": public_pem,
        "CLERK_PUBLISHABLE_KEY": PK,
        "CLERK_AUTHORIZED_PARTIES": [APP],
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.fixture
def provider(clerk_cls: type[IdentityProvider], public_pem: str) -> IdentityProvider:
    """Networkless mode: the instance's PEM public key (CLERK_JWT_KEY)."""
    return clerk_cls.from_config(base_config(public_pem))


@pytest.fixture
def jwks_provider(clerk_cls: type[IdentityProvider], backend_api: BackendAPI) -> IdentityProvider:
    """Backend API mode: CLERK_SECRET_KEY, JWKS from the loopback Backend API."""
    return clerk_cls.from_config(
        {
            "CLERK_SECRET_KEY": SK,
            "CLERK_PUBLISHABLE_KEY": PK,
            "CLERK_AUTHORIZED_PARTIES": APP,
            "CLERK_API_URL": backend_api.url,
        }
    )


# --------------------------------------------------------------------------- plugin and config


def test_plugin_manager_registers_the_clerk_provider(clerk_cls: type[IdentityProvider], provider: IdentityProvider) -> None:
    assert clerk_cls is ClerkProvider
    assert clerk_cls.name == "clerk" and clerk_cls.redirect_login
    assert isinstance(provider, ClerkProvider)
    assert provider.namespace == ISSUER  # keys are bound to the Clerk instance


def test_issuer_is_the_frontend_api_from_the_publishable_key(provider: IdentityProvider) -> None:
    assert frontend_api_from_publishable_key(PK) == ("development", FAPI)
    live = "pk_live_" + base64.b64encode(b"clerk.example.com$").decode()
    assert frontend_api_from_publishable_key(live) == ("production", "clerk.example.com")
    assert isinstance(provider, ClerkProvider) and provider.issuer == ISSUER


def test_cookie_suffix_matches_clerks_algorithm() -> None:
    # base64url(SHA-1(publishable key))[:8], as packages/shared/src/keys.ts computes it
    import hashlib

    expected = base64.urlsafe_b64encode(hashlib.sha1(PK.encode()).digest()).decode()[:8]
    assert cookie_suffix(PK) == expected and len(expected) == 8


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"CLERK_JWT_KEY": None}, ("CLERK_SECRET_KEY", "CLERK_JWT_KEY")),
        ({"CLERK_PUBLISHABLE_KEY": None}, ("CLERK_PUBLISHABLE_KEY", "LOCKKIT_CLERK_ISSUER")),
        ({"CLERK_AUTHORIZED_PARTIES": None}, ("CLERK_AUTHORIZED_PARTIES",)),
        ({"CLERK_AUTHORIZED_PARTIES": " , "}, ("CLERK_AUTHORIZED_PARTIES",)),
        ({"CLERK_AUTHORIZED_PARTIES": [APP + "/"]}, ("CLERK_AUTHORIZED_PARTIES", "trailing slash")),
        ({"CLERK_AUTHORIZED_PARTIES": [APP + "/app"]}, ("not an origin",)),
        ({"CLERK_AUTHORIZED_PARTIES": ["app.example.test"]}, ("not an origin",)),
        ({"CLERK_PUBLISHABLE_KEY": "sk_test_abc"}, ("CLERK_PUBLISHABLE_KEY",)),
        ({"CLERK_PUBLISHABLE_KEY": "pk_test_" + base64.b64encode(b"no-dollar.example").decode()}, ("CLERK_PUBLISHABLE_KEY",)),
        ({"CLERK_PUBLISHABLE_KEY": "pk_test_" + base64.b64encode(b"a\"><x.test$").decode()}, ("not a host name",)),
        ({"CLERK_PUBLISHABLE_KEY": "pk_test_%%%"}, ("CLERK_PUBLISHABLE_KEY",)),
        ({"CLERK_JWT_KEY": "not a key"}, ("CLERK_JWT_KEY",)),
        ({"CLERK_JWT_KEY": None, "CLERK_SECRET_KEY": "pk_test_wrong"}, ("CLERK_SECRET_KEY",)),
        ({"CLERK_SECRET_KEY": "sk_live_" + "x" * 20}, ("different instances",)),
        ({"LOCKKIT_CLERK_CLOCK_SKEW_MS": 600_000}, ("LOCKKIT_CLERK_CLOCK_SKEW_MS",)),
        ({"LOCKKIT_CLERK_JS_VERSION": "6/../../evil"}, ("LOCKKIT_CLERK_JS_VERSION",)),
        ({"CLERK_SECRET_KEY": 42}, ("CLERK_SECRET_KEY",)),
        ({"CLERK_SIGN_IN_URL": "//evil.example.test/sign-in"}, ("CLERK_SIGN_IN_URL",)),
        ({"CLERK_SIGN_IN_URL": "javascript:alert(1)"}, ("CLERK_SIGN_IN_URL",)),
        ({"CLERK_JWT_KEY": None, "CLERK_SECRET_KEY": SK, "CLERK_API_URL": "http://api.example.com"}, ("CLERK_API_URL",)),
        ({"CLERK_JWT_KEY": None, "CLERK_SECRET_KEY": SK, "CLERK_API_URL": "api.clerk.com"}, ("CLERK_API_URL",)),
    ],
    ids=[
        "no-keys", "no-instance", "no-authorized-parties", "blank-authorized-parties",
        "trailing-slash", "path", "no-scheme", "not-a-publishable-key", "no-dollar",
        "hostile-host", "bad-base64", "bad-pem", "bad-secret-prefix", "dev-pk-live-sk",
        "huge-skew", "bad-js-version", "non-string", "sign-in-url-off-site", "sign-in-url-script",
        "api-url-cleartext", "api-url-no-scheme",
    ],
)
def test_bad_or_missing_configuration_names_the_key(
    clerk_cls: type[IdentityProvider], public_pem: str, overrides: dict[str, Any], names: tuple[str, ...]
) -> None:
    config = base_config(public_pem)
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    with pytest.raises(ConfigurationError) as info:
        clerk_cls.from_config(config)
    assert isinstance(info.value, ClientInitError)
    for name in names:
        assert name in info.value.message


def test_jwt_key_must_be_rsa(clerk_cls: type[IdentityProvider]) -> None:
    ec_pem = _pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConfigurationError, match="RSA"):
        clerk_cls.from_config(base_config(ec_pem))


def test_jwt_key_with_escaped_newlines_and_comma_separated_parties(
    clerk_cls: type[IdentityProvider], public_pem: str, mint: Mint
) -> None:
    """Env files often carry the PEM on one line with literal \\n; the parties as a string."""
    provider = clerk_cls.from_config(
        base_config(
            public_pem.replace("\n", "\\n"),
            CLERK_AUTHORIZED_PARTIES=f"https://admin.example.test, {APP}",
        )
    )
    assert isinstance(provider, ClerkProvider)
    assert provider.authorized_parties == ("https://admin.example.test", APP)
    claims = provider.verify(mint(), now=T0 + 1)
    assert claims is not None and claims["sub"] == ALICE


def test_issuer_override(clerk_cls: type[IdentityProvider], public_pem: str, mint: Mint) -> None:
    """LOCKKIT_CLERK_ISSUER (a proxy or satellite Frontend API URL) replaces the derived iss."""
    proxy = "https://clerk.proxy.example.test"
    provider = clerk_cls.from_config(base_config(public_pem, LOCKKIT_CLERK_ISSUER=proxy))
    claims = provider.verify(mint(iss=proxy), now=T0 + 1)
    assert claims is not None and claims["iss"] == proxy
    assert provider.verify(mint(), now=T0 + 1) is None  # the other issuer's token: not ours


def test_lockkit_refuses_to_start_without_clerk_configuration() -> None:
    app = Flask(__name__)
    app.config.update(
        TESTING=True, SECRET_KEY="x" * 32, LOCKKIT_PROVIDERS=["clerk"],
        LOCKKIT_WORKSPACE_CRN=WORKSPACE, LOCKKIT_KEYRING_JSON=Keyring.generate(WORKSPACE).to_json(),
    )
    with pytest.raises(ConfigurationError, match="CLERK_SECRET_KEY"):
        LockKit(app)


# --------------------------------------------------------------------------- verification


def test_valid_session_token_networkless(provider: IdentityProvider, mint: Mint, backend_api: BackendAPI) -> None:
    before = len(backend_api.auth_headers)
    claims = provider.verify(mint(), now=T0 + 1)
    assert claims is not None
    assert (claims["sub"], claims["sid"], claims["azp"], claims["iss"]) == (ALICE, "sess_2lockkitSESSION", APP, ISSUER)
    assert len(backend_api.auth_headers) == before  # no network in PEM mode


def test_both_keys_prefer_the_networkless_jwt_key(
    clerk_cls: type[IdentityProvider], public_pem: str, mint: Mint, backend_api: BackendAPI
) -> None:
    provider = clerk_cls.from_config(
        base_config(public_pem, CLERK_SECRET_KEY=SK, CLERK_API_URL=backend_api.url)
    )
    before = len(backend_api.auth_headers)
    assert provider.verify(mint(), now=T0 + 1) is not None
    assert len(backend_api.auth_headers) == before


def test_the_backend_api_on_loopback_is_never_reached_through_a_proxy(
    clerk_cls: type[IdentityProvider], mint: Mint, backend_api: BackendAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JWKS request carries the secret key: over plain http (loopback only) it must not go
    to an HTTP_PROXY from the environment, which would see the key and could serve its own."""
    import socket

    with socket.socket() as trap:  # a "proxy" that accepts connections and never answers
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        proxy = f"http://127.0.0.1:{trap.getsockname()[1]}"
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, proxy)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        provider = clerk_cls.from_config({"CLERK_SECRET_KEY": SK, "CLERK_PUBLISHABLE_KEY": PK,
                                          "CLERK_AUTHORIZED_PARTIES": APP, "CLERK_API_URL": backend_api.url})
        before = backend_api.authorized
        claims = provider.verify(mint(), now=T0 + 1)
        assert claims is not None and claims["sub"] == ALICE
        assert backend_api.authorized == before + 1  # fetched from the Backend API itself
        trap.setblocking(False)
        with pytest.raises(BlockingIOError):
            trap.accept()  # nobody connected to the proxy


def test_version_1_claims_are_accepted(provider: IdentityProvider, mint: Mint) -> None:
    token = mint(omit=("v", "fea", "pla", "sts", "fva"), org_id="org_2x", org_role="org:admin")
    claims = provider.verify(token, now=T0 + 1)
    assert claims is not None and claims["org_id"] == "org_2x"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sts": "pending"}, MissingCredentialError, "pending"),
        ({"sts": "ended"}, InvalidCredentialError, "not active"),
        # M2M JWT: sub mch_…, no sid, M2M category (tokens/machine.ts, jwtCategories.ts)
        ({"sub": "mch_2lockkitMACHINE", "omit": ("sid", "sts"), "headers": {"cat": CAT_M2M_TOKEN}},
         InvalidCredentialError, "machine"),
        ({"sub": "mch_2lockkitMACHINE"}, InvalidCredentialError, "machine"),
        ({"headers": {"cat": CAT_M2M_TOKEN}}, InvalidCredentialError, "machine"),
        # JWT template: template category; often an aud for the service it was made for
        ({"headers": {"cat": CAT_JWT_TEMPLATE}, "aud": "convex"}, InvalidCredentialError, "audience"),
        ({"headers": {"cat": CAT_JWT_TEMPLATE}}, InvalidCredentialError, "JWT template"),
        ({"headers": {"cat": None}, "aud": "supabase"}, InvalidCredentialError, "audience"),
        ({"headers": {"cat": "cl_somethingNEW"}}, InvalidCredentialError, "not a Clerk session token"),
        # OAuth access token JWT (RFC 9068 typ), as Clerk's isOAuthJwt detects it
        ({"headers": {"typ": "at+jwt"}}, InvalidCredentialError, "not a Clerk session token"),
        ({"omit": ("sid",)}, InvalidCredentialError, "session id"),
        ({"sid": "2lockkit"}, InvalidCredentialError, "session id"),
        ({"sub": "alice"}, InvalidCredentialError, "not a Clerk user"),
        ({"omit": ("azp",)}, InvalidCredentialError, "authorized party"),
        ({"azp": ""}, InvalidCredentialError, "authorized party"),
        ({"azp": "https://evil.example.test"}, InvalidCredentialError, "authorized party"),
        ({"azp": APP + "/"}, InvalidCredentialError, "authorized party"),
        ({"act": {"sub": "user_2admin", "sid": "sess_2admin", "iss": "https://dashboard.clerk.com"}},
         InvalidCredentialError, "impersonation"),
        ({"omit": ("iat",)}, InvalidCredentialError, "iat"),
        ({"omit": ("exp",)}, InvalidCredentialError, "exp"),
        ({"algorithm": "RS384"}, InvalidCredentialError, "algorithm"),
        ({"headers": {"kid": "ins_unknown"}, "algorithm": "RS512"}, InvalidCredentialError, "algorithm"),
    ],
    ids=[
        "pending-session", "ended-session", "m2m-token", "machine-subject", "m2m-category",
        "jwt-template-with-aud", "jwt-template-category", "aud-without-category",
        "unknown-category", "oauth-access-token", "no-sid", "bad-sid", "non-user-subject",
        "no-azp", "empty-azp", "wrong-azp", "azp-trailing-slash", "impersonation", "no-iat",
        "no-exp", "rs384", "rs512",
    ],
)
def test_session_token_rules(
    provider: IdentityProvider, mint: Mint, kwargs: dict[str, Any], error: type[IdentityError], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        provider.verify(mint(**kwargs), now=T0 + 1)
    assert type(info.value) is error
    assert info.value.reason == ("missing" if error is MissingCredentialError else "invalid")


@pytest.mark.parametrize(
    "kwargs",
    [{"headers": {"cat": None}}, {"headers": {"cat": CAT_IGNORE}}, {"headers": {"typ": None}}, {"omit": ("sts",)}],
    ids=["pre-category-token", "ignore-category", "no-typ", "no-sts"],
)
def test_tolerated_variants_clerk_also_accepts(provider: IdentityProvider, mint: Mint, kwargs: dict[str, Any]) -> None:
    claims = provider.verify(mint(**kwargs), now=T0 + 1)
    assert claims is not None and claims["sub"] == ALICE


def test_impersonation_only_when_allowed(clerk_cls: type[IdentityProvider], public_pem: str, mint: Mint) -> None:
    token = mint(act={"sub": "user_2admin", "sid": "sess_2admin", "iss": "https://dashboard.clerk.com"})
    provider = clerk_cls.from_config(base_config(public_pem, LOCKKIT_CLERK_ALLOW_ACTOR=True))
    claims = provider.verify(token, now=T0 + 1)
    assert claims is not None and claims["act"]["sub"] == "user_2admin"


@pytest.mark.parametrize("value", ["false", "0", "no", False])
def test_impersonation_stays_refused_when_the_flag_is_a_false_string(
    clerk_cls: type[IdentityProvider], public_pem: str, mint: Mint, value: Any
) -> None:
    token = mint(act={"sub": "user_2admin", "sid": "sess_2admin", "iss": "https://dashboard.clerk.com"})
    provider = clerk_cls.from_config(base_config(public_pem, LOCKKIT_CLERK_ALLOW_ACTOR=value))
    with pytest.raises(InvalidCredentialError):
        provider.verify(token, now=T0 + 1)


def test_wrong_issuer_is_another_providers_token(provider: IdentityProvider, mint: Mint) -> None:
    assert provider.verify(mint(iss="https://other-instance.clerk.accounts.dev"), now=T0 + 1) is None


def test_signature_from_another_instance_key(provider: IdentityProvider, other_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidCredentialError, match="signature"):
        provider.verify(session_token(other_key), now=T0 + 1)


def test_symmetric_algorithm_with_the_public_key_is_refused(provider: IdentityProvider, public_pem: str) -> None:
    """The classic confusion: HS256 keyed with the (public) PEM. The algorithm is pinned."""
    body = {"iss": ISSUER, "sub": ALICE, "sid": "sess_2x", "azp": APP, "iat": T0, "exp": T0 + 60}
    forged = _hs256(body, public_pem.encode())
    with pytest.raises(InvalidCredentialError, match="algorithm"):
        provider.verify(forged, now=T0 + 1)


def _hs256(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT built by hand (PyJWT refuses PEM-looking HMAC keys, rightly)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(secret, signing_input.encode(), "sha256").digest()
    return signing_input + "." + b64(sig)


@pytest.mark.parametrize(
    ("offset", "expired"),
    [(0, False), (64, False), (64.999, False), (65, True), (65.001, True), (120, True)],
)
def test_expiry_uses_clerks_five_second_skew_boundary(
    provider: IdentityProvider, mint: Mint, offset: float, expired: bool
) -> None:
    """exp = T0 + 60; Clerk's assertExpirationClaim: expired when exp <= now - 5 s."""
    token = mint()
    if expired:
        with pytest.raises(ExpiredCredentialError) as info:
            provider.verify(token, now=T0 + offset)
        assert info.value.reason == "expired"
    else:
        assert provider.verify(token, now=T0 + offset) is not None


@pytest.mark.parametrize(("claim", "ahead", "ok"), [("nbf", 5, True), ("nbf", 6, False), ("iat", 5, True), ("iat", 6, False)])
def test_not_before_and_issued_at_skew(provider: IdentityProvider, mint: Mint, claim: str, ahead: int, ok: bool) -> None:
    token = mint(**{claim: T0 + ahead})
    if ok:
        assert provider.verify(token, now=T0) is not None
    else:
        with pytest.raises(InvalidCredentialError):
            provider.verify(token, now=T0)


def test_clock_skew_is_configurable(clerk_cls: type[IdentityProvider], public_pem: str, mint: Mint) -> None:
    strict = clerk_cls.from_config(base_config(public_pem, LOCKKIT_CLERK_CLOCK_SKEW_MS=0))
    assert strict.verify(mint(), now=T0 + 59.9) is not None
    with pytest.raises(ExpiredCredentialError):
        strict.verify(mint(), now=T0 + 60)


# --------------------------------------------------------------------------- Backend API JWKS


def test_backend_api_jwks_sends_the_secret_key(jwks_provider: IdentityProvider, mint: Mint, backend_api: BackendAPI) -> None:
    before_ok, before_headers = backend_api.authorized, len(backend_api.auth_headers)
    claims = jwks_provider.verify(mint(), now=T0 + 1)
    assert claims is not None and claims["sub"] == ALICE
    assert backend_api.authorized == before_ok + 1
    assert backend_api.auth_headers[before_headers:] == [f"Bearer {SK}"]
    # cached per provider instance: a second token needs no second fetch
    assert jwks_provider.verify(mint(sub=BOB), now=T0 + 2) is not None
    assert backend_api.authorized == before_ok + 1


def test_backend_api_refuses_a_wrong_secret_key(
    clerk_cls: type[IdentityProvider], mint: Mint, backend_api: BackendAPI
) -> None:
    wrong = "sk_test_" + "WrongSecret" * 3
    provider = clerk_cls.from_config(
        {"CLERK_SECRET_KEY": wrong, "CLERK_PUBLISHABLE_KEY": PK, "CLERK_AUTHORIZED_PARTIES": [APP],
         "CLERK_API_URL": backend_api.url + "/"}
    )
    before = backend_api.refused
    with pytest.raises(ProviderUnavailableError) as info:
        provider.verify(mint(), now=T0 + 1)
    assert info.value.reason == "unavailable" and "401" in info.value.detail
    assert backend_api.refused == before + 1
    assert wrong not in info.value.detail and wrong not in info.value.message


def test_unknown_kid_refetches_once_then_fails(jwks_provider: IdentityProvider, mint: Mint, backend_api: BackendAPI) -> None:
    assert jwks_provider.verify(mint(), now=T0 + 1) is not None
    before = backend_api.authorized
    with pytest.raises(InvalidCredentialError, match="signing key"):
        jwks_provider.verify(mint(headers={"kid": "ins_rotated"}), now=T0 + 60)
    with pytest.raises(InvalidCredentialError, match="signing key"):
        jwks_provider.verify(mint(headers={"kid": "ins_rotated"}), now=T0 + 61)
    assert backend_api.authorized == before + 1  # rate-limited: one refetch


def test_secret_key_never_shows(
    jwks_provider: IdentityProvider, mint: Mint, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = jwks_provider.verifier
    assert isinstance(verifier, OIDCVerifier) and verifier.jwks is not None
    texts = [repr(jwks_provider), repr(verifier), repr(verifier.jwks), repr(vars(jwks_provider)), repr(vars(verifier))]
    assert all(SK not in text for text in texts)
    with caplog.at_level(logging.DEBUG):
        assert jwks_provider.verify(mint(), now=T0 + 1) is not None
    assert SK not in caplog.text


# --------------------------------------------------------------------------- token lookup


def _cookie(*pairs: tuple[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in pairs)


@pytest.fixture
def ctx_app() -> Flask:
    return Flask("clerk-lookup")


def _lookup(app: Flask, provider: IdentityProvider, method: str = "GET", **headers: str) -> str | None:
    with app.test_request_context("/x", method=method, headers={k.replace("_", "-"): v for k, v in headers.items()}):
        return provider.token_from_request(request)


def test_bearer_wins_over_the_cookie(ctx_app: Flask, provider: IdentityProvider, mint: Mint) -> None:
    bearer, cookie = mint(sub=ALICE), mint(sub=BOB)
    got = _lookup(ctx_app, provider, Authorization=f"Bearer {bearer}",
                  Cookie=_cookie(("__session", cookie), ("__client_uat", str(T0 - 5))))
    assert got == bearer


def test_cookie_used_when_there_is_no_bearer(ctx_app: Flask, provider: IdentityProvider, mint: Mint) -> None:
    token = mint()
    got = _lookup(ctx_app, provider, Cookie=_cookie(("__session", token), ("__client_uat", str(T0 - 5))))
    assert got == token


@pytest.mark.parametrize("uat", [None, "0", "", "abc", "-5", "1e9"], ids=["absent", "zero", "empty", "text", "negative", "float"])
def test_cookie_ignored_when_client_is_signed_out(ctx_app: Flask, provider: IdentityProvider, mint: Mint, uat: str | None) -> None:
    """Clerk's authenticateRequest does not sign a request in without a positive __client_uat."""
    pairs = [("__session", mint())] + ([("__client_uat", uat)] if uat is not None else [])
    assert _lookup(ctx_app, provider, Cookie=_cookie(*pairs)) is None


def test_suffixed_cookies_win(ctx_app: Flask, provider: IdentityProvider, mint: Mint) -> None:
    sfx = cookie_suffix(PK)
    plain, suffixed = mint(sub=BOB), mint(sub=ALICE)
    both = [("__session", plain), ("__client_uat", str(T0 - 5)), (f"__session_{sfx}", suffixed)]
    assert _lookup(ctx_app, provider, Cookie=_cookie(*both, (f"__client_uat_{sfx}", str(T0 - 5)))) == suffixed
    # the instance's own (suffixed) client state says signed out: signed out
    assert _lookup(ctx_app, provider, Cookie=_cookie(*both, (f"__client_uat_{sfx}", "0"))) is None
    # no suffixed client state at all: the un-suffixed pair is used
    assert _lookup(ctx_app, provider, Cookie=_cookie(*both)) == plain


def test_cookie_older_than_client_uat_is_stale(ctx_app: Flask, provider: IdentityProvider, mint: Mint) -> None:
    """A sign-out (or new sign-in) in another tab moves __client_uat past the token's iat."""
    token = mint()
    for uat, stale in ((T0 - 5, False), (T0, False), (T0 + 1, True)):
        with ctx_app.test_request_context("/x", headers={"Cookie": _cookie(("__session", token), ("__client_uat", str(uat)))}):
            assert provider.token_from_request(request) == token
            if stale:
                with pytest.raises(ExpiredCredentialError):
                    provider.verify(token, now=T0 + 1)
            else:
                assert provider.verify(token, now=T0 + 1) is not None
    # the same token as a Bearer header is not subject to the cookie's client state
    with ctx_app.test_request_context("/x", headers={"Authorization": f"Bearer {token}",
                                                     "Cookie": _cookie(("__client_uat", str(T0 + 1)))}):
        assert provider.token_from_request(request) == token
        assert provider.verify(token, now=T0 + 1) is not None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example.test", "Sec-Fetch-Site": "cross-site"},
        {"Origin": APP, "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example.test", "Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example.test"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Origin": APP, "Sec-Fetch-Site": "none"},
        {},
    ],
    ids=["cross-site", "cross-site-listed-origin", "sibling-subdomain", "foreign-origin",
         "opaque-origin", "no-origin", "user-initiated", "no-headers"],
)
def test_cookie_never_authenticates_a_cross_site_state_change(
    ctx_app: Flask, provider: IdentityProvider, mint: Mint, method: str, headers: dict[str, str]
) -> None:
    cookie = _cookie(("__session", mint()), ("__client_uat", str(T0 - 5)))
    assert _lookup(ctx_app, provider, method, Cookie=cookie, **{k.replace("-", "_"): v for k, v in headers.items()}) is None


@pytest.mark.parametrize("site", ["same-origin", "same-site", None])
def test_same_site_state_change_with_the_cookie(ctx_app: Flask, provider: IdentityProvider, mint: Mint, site: str | None) -> None:
    token = mint()
    headers = {"Cookie": _cookie(("__session", token), ("__client_uat", str(T0 - 5))), "Origin": APP}
    if site is not None:
        headers["Sec-Fetch-Site"] = site
    with ctx_app.test_request_context("/x", method="POST", headers=headers):
        assert provider.token_from_request(request) == token


def test_cross_site_get_and_bearer_post_still_authenticate(ctx_app: Flask, provider: IdentityProvider, mint: Mint) -> None:
    """Safe methods keep the cookie (top-level navigation); a Bearer header is never ambient."""
    token = mint()
    cross = {"Origin": "https://evil.example.test", "Sec-Fetch-Site": "cross-site"}
    with ctx_app.test_request_context("/x", method="GET", headers={**cross, "Cookie": _cookie(("__session", token), ("__client_uat", "1"))}):
        assert provider.token_from_request(request) == token
    with ctx_app.test_request_context("/x", method="POST", headers={**cross, "Authorization": f"Bearer {token}"}):
        assert provider.token_from_request(request) == token


# --------------------------------------------------------------------------- the Flask kit

NOTES = encrypted_table("clerk_notes", body=encrypted_column("body"))


def make_app(public_pem: str, **config: Any) -> Flask:
    """A small app on LockKit with LOCKKIT_PROVIDERS=["clerk"] (loaded via the entry point)."""
    app = Flask("clerk-app")
    app.config.update(
        TESTING=True,
        SECRET_KEY=secrets.token_hex(32),
        LOCKKIT_PROVIDERS=["clerk"],
        LOCKKIT_WORKSPACE_CRN=WORKSPACE,
        LOCKKIT_KEYRING_JSON=Keyring.generate(WORKSPACE).to_json(),
        **base_config(public_pem, CLERK_AUTHORIZED_PARTIES=APP),
    )
    app.config.update(config)
    LockKit(app)

    @app.get("/notes")
    @lock_context_required
    def notes_page() -> str:
        client = get_state().encryption([NOTES])
        sealed = client.encrypt("hello from the page", column=NOTES.body, table=NOTES).with_lock_context(current_lock_context).unwrap()
        opened = client.decrypt(sealed).with_lock_context(current_lock_context).unwrap()
        return f"<p>{opened}</p>"

    @app.get("/api/me")
    @lock_context_required
    def me() -> Any:
        claims = current_claims() or {}
        return jsonify(sub=claims.get("sub"))

    @app.post("/api/notes")
    @lock_context_required
    def write_note() -> Any:
        client = get_state().encryption([NOTES])
        body = (request.get_json(silent=True) or {}).get("body")
        payload = client.encrypt(body, column=NOTES.body, table=NOTES).with_lock_context(current_lock_context).unwrap()
        return jsonify(payload=payload)

    @app.post("/api/notes/read")
    @lock_context_required
    def read_note() -> Any:
        client = get_state().encryption([NOTES])
        res = client.decrypt((request.get_json(silent=True) or {}).get("payload")).with_lock_context(current_lock_context)
        if res.failure is not None:
            return jsonify(error=res.failure.type), 403
        return jsonify(body=res.data)

    return app


def live_token(key: rsa.RSAPrivateKey, *, age: float = 1, ttl: float = 60, **claims: Any) -> str:
    """A session token relative to the real clock (the middleware verifies with time.time())."""
    issued = time.time() - age
    return session_token(key, now=issued, exp=int(issued + ttl), **claims)


def sign_in_cookie(client: FlaskClient, token: str, *, uat: int | None = None) -> None:
    client.set_cookie("__session", token)
    client.set_cookie("__client_uat", str(uat if uat is not None else int(time.time()) - 3600))


@pytest.fixture
def app(public_pem: str) -> Flask:
    return make_app(public_pem)


def test_cookie_session_gets_a_lock_context(app: Flask, instance_key: rsa.RSAPrivateKey) -> None:
    client = app.test_client()
    sign_in_cookie(client, live_token(instance_key))
    page = client.get("/notes")
    assert page.status_code == 200 and b"hello from the page" in page.data
    me = client.get("/api/me")
    assert me.status_code == 200 and me.get_json() == {"sub": ALICE}


def test_cookie_and_same_origin_post_encrypt_and_decrypt(app: Flask, instance_key: rsa.RSAPrivateKey) -> None:
    client = app.test_client()
    sign_in_cookie(client, live_token(instance_key))
    same_origin = {"Origin": APP, "Sec-Fetch-Site": "same-origin"}
    wrote = client.post("/api/notes", json={"body": "alice's secret"}, headers=same_origin)
    assert wrote.status_code == 200
    payload = wrote.get_json()["payload"]
    assert "alice's secret" not in json.dumps(payload)
    read = client.post("/api/notes/read", json={"payload": payload}, headers=same_origin)
    assert read.status_code == 200 and read.get_json() == {"body": "alice's secret"}


def test_another_clerk_user_cannot_decrypt(app: Flask, instance_key: rsa.RSAPrivateKey) -> None:
    alice = {"Authorization": f"Bearer {live_token(instance_key)}"}
    bob = {"Authorization": f"Bearer {live_token(instance_key, sub=BOB, sid='sess_2lockkitBOB')}"}
    payload = app.test_client().post("/api/notes", json={"body": "only alice"}, headers=alice).get_json()["payload"]
    denied = app.test_client().post("/api/notes/read", json={"payload": payload}, headers=bob)
    assert denied.status_code == 403 and denied.get_json() == {"error": "DecryptionError"}
    allowed = app.test_client().post("/api/notes/read", json={"payload": payload}, headers=alice)
    assert allowed.get_json() == {"body": "only alice"}


def test_cross_site_post_with_the_cookie_has_no_credential(app: Flask, instance_key: rsa.RSAPrivateKey) -> None:
    client = app.test_client()
    sign_in_cookie(client, live_token(instance_key))
    resp = client.post("/api/notes", json={"body": "csrf"}, headers={"Origin": "https://evil.example.test", "Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 401 and resp.get_json() == {"error": "missing"}


def test_expired_cookie_on_an_api_path_is_401_expired(app: Flask, instance_key: rsa.RSAPrivateKey) -> None:
    client = app.test_client()
    sign_in_cookie(client, live_token(instance_key, age=200))
    resp = client.get("/api/me")
    assert resp.status_code == 401 and resp.get_json() == {"error": "expired"}
    assert "invalid_token" in resp.headers["WWW-Authenticate"]


def test_expired_cookie_on_a_page_goes_to_the_refresh_page(app: Flask, instance_key: rsa.RSAPrivateKey) -> None:
    client = app.test_client()
    sign_in_cookie(client, live_token(instance_key, age=200))
    resp = client.get("/notes?tab=2")
    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/lockkit/clerk/refresh"
    assert parse_qs(location.query) == {"next": ["/notes?tab=2"]}
    page = client.get(resp.headers["Location"])
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    text = page.get_data(as_text=True)
    assert f'data-publishable-key="{PK}"' in text
    assert f'data-clerk-js="https://{FAPI}/npm/@clerk/clerk-js@6/dist/clerk.browser.js"' in text
    assert 'data-next="/notes?tab=2"' in text
    assert "getToken({ skipCache: true })" in text and "redirectToSignIn" in text
    assert 'data-sign-in-url=""' in text  # the instance's own sign-in page


def test_refresh_page_uses_the_apps_sign_in_url(public_pem: str) -> None:
    app = make_app(public_pem, CLERK_SIGN_IN_URL="/sign-in", LOCKKIT_CLERK_JS_VERSION="5")
    text = app.test_client().get("/lockkit/clerk/refresh?next=/notes").get_data(as_text=True)
    assert 'data-sign-in-url="/sign-in"' in text
    assert f'data-clerk-js="https://{FAPI}/npm/@clerk/clerk-js@5/dist/clerk.browser.js"' in text


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"sts": "pending"}, "missing"), ({"omit": ("azp",)}, "invalid")],
    ids=["pending-session", "navigation-token-without-azp"],
)
def test_refused_cookie_tokens_on_pages_and_apis(
    app: Flask, instance_key: rsa.RSAPrivateKey, kwargs: dict[str, Any], reason: str
) -> None:
    """A pending session is signed out; a cookie token minted on a top-level navigation may
    lack azp — pages send the browser to the refresh page (Clerk's SDK mints a fresh token
    with azp there), APIs answer 401 with the coarse reason."""
    client = app.test_client()
    sign_in_cookie(client, live_token(instance_key, **kwargs))
    page = client.get("/notes")
    assert page.status_code == 302 and urlsplit(page.headers["Location"]).path == "/lockkit/clerk/refresh"
    api = client.get("/api/me")
    assert api.status_code == 401 and api.get_json() == {"error": reason}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("//evil.example.test/x", "/"), ("https://evil.example.test", "/"), ("/\\evil", "/"),
     ('/x"><script>alert(1)</script>', "/x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"), ("", "/")],
    ids=["scheme-relative", "absolute", "backslash", "markup", "empty"],
)
def test_refresh_page_never_redirects_off_site(app: Flask, raw: str, expected: str) -> None:
    page = app.test_client().get("/lockkit/clerk/refresh", query_string={"next": raw})
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and f'data-next="{expected}"' in text
    assert "<script>alert(1)" not in text


def test_without_publishable_key_there_is_no_refresh_page(public_pem: str, instance_key: rsa.RSAPrivateKey) -> None:
    app = make_app(public_pem, CLERK_PUBLISHABLE_KEY="", LOCKKIT_CLERK_ISSUER=ISSUER)
    client = app.test_client()
    assert client.get("/lockkit/clerk/refresh?next=/").status_code == 404
    sign_in_cookie(client, live_token(instance_key, age=200))
    page = client.get("/notes")
    assert page.status_code == 401 and b"expired" in page.data  # no login view configured
    sign_in_cookie(client, live_token(instance_key))
    assert client.get("/notes").status_code == 200


# --------------------------------------------------------------------------- the refresh page in a browser

CHROMIUM = "/usr/bin/chromium"
CLERK_JS = f"https://{FAPI}/npm/@clerk/clerk-js@6/dist/clerk.browser.js"


def _fake_clerk_js(fresh_token: str | None) -> str:
    """A stand-in for Clerk's browser SDK, served to the browser in place of the Frontend API
    (no request leaves loopback): ``getToken`` writes the fresh token to ``__session`` as the
    real SDK's AuthCookieService does; with no session it redirects to sign-in."""
    session = (
        "{status: 'active', getToken: function (opts) {"
        "  if (!opts || opts.skipCache !== true) { throw new Error('expected skipCache'); }"
        f"  document.cookie = '__session={fresh_token}; path=/'; return Promise.resolve('x'); }}}}"
        if fresh_token
        else "null"
    )
    return (
        "window.Clerk = {session: " + session + ","
        " load: function () { return Promise.resolve(); },"
        " redirectToSignIn: function (o) {"
        "  window.location.href = '/signed-out?to=' + encodeURIComponent(o.signInForceRedirectUrl);"
        "  return Promise.resolve(); }};"
    )


@pytest.fixture
def live(public_pem: str) -> Iterator[str]:
    """The Flask app served by werkzeug's threaded server on 127.0.0.1."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, make_app(public_pem), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(reason=f"{CHROMIUM} is not installed (CI installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            yield b
        finally:
            b.close()


OpenPage = Callable[[str, str, "str | None"], "tuple[Any, list[str]]"]


@pytest.fixture
def open_page(browser: Any) -> Iterator[OpenPage]:
    """open_page(base, expired_token, fresh_token) -> (page, requests that tried to leave
    loopback, and Content-Security-Policy violations as "CSP: ..."). The browser starts with an
    expired ``__session`` cookie; the fake Clerk SDK hands out ``fresh_token`` (``None``: no
    Clerk session)."""
    contexts: list[Any] = []

    def _open(base: str, expired: str, fresh: str | None) -> tuple[Any, list[str]]:
        context = browser.new_context()
        contexts.append(context)
        uat = str(int(time.time()) - 3600)
        context.add_cookies([{"name": "__session", "value": expired, "url": base},
                             {"name": "__client_uat", "value": uat, "url": base}])
        outside: list[str] = []
        route_offline(context, base, {CLERK_JS: _fake_clerk_js(fresh)}, outside)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("console", lambda m: outside.append("CSP: " + m.text) if "Content Security Policy" in m.text else None)
        return page, outside

    yield _open
    for context in contexts:
        context.close()


def test_browser_refreshes_an_expired_cookie_and_comes_back(
    open_page: OpenPage, live: str, instance_key: rsa.RSAPrivateKey
) -> None:
    page, outside = open_page(live, live_token(instance_key, age=200), live_token(instance_key))
    page.goto(live + "/notes?tab=2")
    page.wait_for_url(live + "/notes?tab=2")
    page.wait_for_selector("text=hello from the page")
    assert outside == []


def test_browser_refresh_loop_stops_after_three_tries(
    open_page: OpenPage, live: str, instance_key: rsa.RSAPrivateKey
) -> None:
    """The refreshed token is still refused (here: minted for another origin's azp)."""
    bad = live_token(instance_key, azp="https://elsewhere.example.test")
    page, outside = open_page(live, live_token(instance_key, age=200), bad)
    page.goto(live + "/notes")
    page.wait_for_selector("text=could not be refreshed")
    assert urlsplit(page.url).path == "/lockkit/clerk/refresh"
    tries = page.evaluate("JSON.parse(sessionStorage.getItem('lockkit-clerk-refresh:/notes'))")
    assert isinstance(tries, list) and len(tries) == 3
    assert outside == []


def test_browser_without_a_clerk_session_goes_to_sign_in(
    open_page: OpenPage, live: str, instance_key: rsa.RSAPrivateKey
) -> None:
    page, outside = open_page(live, live_token(instance_key, age=200), None)
    page.goto(live + "/notes")
    page.wait_for_url(re.compile(r"/signed-out\?to="))
    assert parse_qs(urlsplit(page.url).query)["to"] == [live + "/notes"]
    assert outside == []


def test_the_refresh_page_policy_allows_its_own_script_only(
    open_page: OpenPage, live: str, instance_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh page's policy allows its one inline script by hash: with another hash the
    browser refuses the script, and nothing is refreshed (so the tests above do run it under
    the policy)."""
    import lockkit_clerk

    monkeypatch.setattr(lockkit_clerk, "_REFRESH_SCRIPT_HASH", base64.b64encode(b"\0" * 32).decode())
    page, outside = open_page(live, live_token(instance_key, age=200), live_token(instance_key))
    resp = page.goto(live + "/notes")
    assert resp is not None and urlsplit(page.url).path == "/lockkit/clerk/refresh"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    for _ in range(50):  # console messages arrive as events: wait for the refusal's
        if any(o.startswith("CSP: ") for o in outside):
            break
        page.wait_for_timeout(100)
    assert any(o.startswith("CSP: ") and "inline script" in o for o in outside), outside
    assert page.inner_text("#lockkit-clerk-status") == "Refreshing your session\u2026"
