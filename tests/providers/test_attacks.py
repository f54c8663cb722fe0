"""One attack suite, run against every identity provider (issue #3).

The same attack list (``attack_support.ATTACKS``) runs against each provider exactly as an app
builds it (entry point, ``LockKit``):

* ``dev``        lockkit-dev: EdDSA, key derived from ``SECRET_KEY`` (static key)
* ``clerk-pem``  lockkit-clerk with ``CLERK_JWT_KEY`` (a static RS256 key made here)
* ``clerk-jwks`` lockkit-clerk with ``CLERK_SECRET_KEY``: the JWKS from a loopback Backend API
* ``oidc``       lockkit-oidc against a real OpenID provider (oidc-provider on loopback)
* ``auth0``      lockkit-auth0 against the same OP (issuer overridden)

Every attack is refused through the provider's public ``verify(token, now=)`` with an
``IdentityError`` subclass and the expected coarse ``reason`` (another issuer's token returns
``None``, by contract), and through a Flask request to a protected ``/api/`` route, which
answers 401 with that reason: never 500, never a session cookie, never the token in a log.
Tokens are forged with keys the test controls (the OP's signing keys are made here too), so
claim-level attacks carry a valid signature and change one thing at a time.

Also: key rotation against a JWKS on loopback for every JWKS-based provider (a new key verifies
after one refetch; a retired key is refused once the JWKS TTL has passed, via ``now=``), RSA
keys under 2048 bits (published in a JWKS: never used; configured statically: refused at
start-up), and ES256 ``r = s = 0`` where ES256 is allowed.

Known provider bugs (``attack_support.KNOWN_BUGS``) are strict xfails naming the exception the
provider raises instead of an ``IdentityError``; they turn into failures once fixed.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path as FsPath
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask

from lockkit import ConfigurationError, IdentityError
from lockkit.flask import get_state
from lockkit.plugins import identity_provider_classes, make_plugin_manager
from lockkit.provider import IdentityProvider
from lockkit_auth0 import Auth0Provider
from lockkit_clerk import CAT_SESSION_TOKEN, ClerkProvider
from lockkit_dev import AUDIENCE as DEV_AUDIENCE, DevProvider
from lockkit_oidc import OIDCProvider

from .attack_support import (
    ATTACKS,
    KNOWN_BUGS,
    SPECS,
    Attack,
    JWKSServer,
    Path,
    Target,
    b64,
    b64json,
    iter_cases,
    jws,
    private_jwk,
    public_jwk,
    public_pem,
)
from .op_fixture import API_AUDIENCE, SPA_CLIENT, WEB_CLIENT, OPServer, bearer, lockkit_app, spa_access_token

NOW = int(time.time())  # every token and check in this module is relative to this instant
JWKS_TTL = 300  # the providers' default JWKS cache lifetime
MIN_REFETCH = 30  # ... and the least time between two refetches for an unknown kid

# Clerk: a development instance (publishable key -> Frontend API = issuer), its app's origin
FAPI = "attack-ant-42.clerk.accounts.dev"
CLERK_ISSUER = f"https://{FAPI}"
CLERK_PK = "pk_test_" + b64(f"{FAPI}$".encode())
CLERK_SK = "sk_test_" + secrets.token_urlsafe(24)
CLERK_APP = "https://app.attack.test"
CLERK_KID = "ins_2lockkitATTACK"


# --------------------------------------------------------------------------- claims


def clerk_claims(path: Path, now: int) -> dict[str, Any]:
    """A Clerk v2 session token's claims (the same on every path)."""
    return {
        "azp": CLERK_APP, "exp": now + 60, "iat": now, "iss": CLERK_ISSUER, "jti": secrets.token_hex(8),
        "nbf": now - 10, "sid": "sess_2lockkitATTACK", "sts": "active", "sub": "user_2lockkitALICE", "v": 2,
    }


def clerk_cookie(token: str, now: int) -> str:
    return f"__session={token}; __client_uat={now - 3600}"


def oidc_claims(issuer: str, *, auth0: bool = False) -> Callable[[Path, int], dict[str, Any]]:
    """ID tokens for ``verify`` (aud = the client); API access tokens for bearer requests."""

    def claims(path: Path, now: int) -> dict[str, Any]:
        base = {"iss": issuer, "sub": "alice", "iat": now, "exp": now + 600, "jti": secrets.token_hex(8)}
        if path == "verify":
            return {**base, "aud": WEB_CLIENT, "nonce": secrets.token_hex(8), "auth_time": now}
        if auth0:  # Auth0 access tokens: aud [API, userinfo], azp = the calling client
            return {**base, "aud": [API_AUDIENCE, issuer + "/userinfo"], "azp": SPA_CLIENT, "scope": "openid notes:read"}
        return {**base, "aud": API_AUDIENCE, "client_id": SPA_CLIENT, "scope": "notes:read"}

    return claims


# --------------------------------------------------------------------------- targets


def _pinned_clock(app: Flask) -> Flask:
    get_state(app).clock = lambda: float(NOW)  # the middleware's clock (no patching of time)
    return app


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _weak_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="module")
def target_dev() -> Target:
    app = _pinned_clock(lockkit_app("dev"))
    provider = get_state(app).providers[0]
    assert isinstance(provider, DevProvider)
    # the issuer key is derived from SECRET_KEY (documented): derive it as the provider does,
    # and check it is the key the provider publishes
    seed = HKDF(hashes.SHA256(), 32, b"lockkit-dev", b"issuer key").derive(app.config["SECRET_KEY"].encode())
    key = Ed25519PrivateKey.from_private_bytes(seed)
    published = provider.jwks()["keys"][0]
    assert public_jwk(key)["x"] == published["x"]
    return Target(
        name="dev", app=app, provider=provider, issuer=provider.issuer, alg="EdDSA", key=key, kid=provider.kid,
        claims_for=lambda path, now: {"iss": provider.issuer, "aud": DEV_AUDIENCE, "sub": "alice", "iat": now,
                                      "exp": now + 3600},
        published_jwk=published,
    )


def _clerk_target(name: str, key: rsa.RSAPrivateKey, kid: str, **config: Any) -> Target:
    app = _pinned_clock(lockkit_app("clerk", CLERK_PUBLISHABLE_KEY=CLERK_PK, CLERK_AUTHORIZED_PARTIES=[CLERK_APP], **config))
    provider = get_state(app).providers[0]
    assert isinstance(provider, ClerkProvider) and provider.issuer == CLERK_ISSUER
    return Target(
        name=name, app=app, provider=provider, issuer=CLERK_ISSUER, alg="RS256", key=key, kid=kid,
        claims_for=clerk_claims, header_extra={"typ": "JWT", "cat": CAT_SESSION_TOKEN}, leeway=5.0,
        cookie=clerk_cookie,
    )


@pytest.fixture(scope="module")
def target_clerk_pem() -> Target:
    key = _rsa()
    return _clerk_target("clerk-pem", key, CLERK_KID, CLERK_JWT_KEY=public_pem(key).decode())


@pytest.fixture(scope="module")
def clerk_backend_api() -> Iterator[tuple[JWKSServer, dict[str, Any]]]:
    """Clerk's Backend API JWKS on loopback (two instance keys and a 1024-bit one)."""
    keys = {"current": _rsa(), "previous": _rsa(), "weak": _weak_rsa()}
    kids = {"current": CLERK_KID, "previous": "ins_2lockkitPREVIOUS", "weak": "ins_2lockkitWEAK"}
    jwks = [public_jwk(keys[n], kid=kids[n], alg="RS256", use="sig") for n in keys]
    with JWKSServer(jwks, bearer=CLERK_SK) as server:
        yield server, {"keys": keys, "kids": kids, "jwks": jwks}


@pytest.fixture(scope="module")
def target_clerk_jwks(clerk_backend_api: tuple[JWKSServer, dict[str, Any]]) -> Target:
    server, info = clerk_backend_api
    target = _clerk_target("clerk-jwks", info["keys"]["current"], CLERK_KID,
                           CLERK_SECRET_KEY=CLERK_SK, CLERK_API_URL=server.base_url)
    target.published_jwk = info["jwks"][0]
    target.weak_key, target.weak_kid, target.jwks_uri = info["keys"]["weak"], info["kids"]["weak"], server.url
    return target


@pytest.fixture(scope="module")
def op_keys() -> dict[str, Any]:
    """The OP's signing keys, made here: two RSA keys, an EC key and a 1024-bit RSA key."""
    return {"current": _rsa(), "previous": _rsa(), "ec": ec.generate_private_key(ec.SECP256R1()), "weak": _weak_rsa()}


@pytest.fixture(scope="module")
def attack_op(tmp_path_factory: pytest.TempPathFactory, op_keys: dict[str, Any]) -> Iterator[OPServer]:
    """A real OpenID provider (oidc-provider) whose JWKS publishes every key in ``op_keys``."""
    jwks = [
        private_jwk(op_keys["current"], kid="op-current", alg="RS256", use="sig"),
        private_jwk(op_keys["previous"], kid="op-previous", alg="RS256", use="sig"),
        private_jwk(op_keys["ec"], kid="op-ec", alg="ES256", use="sig"),
        private_jwk(op_keys["weak"], kid="op-weak", alg="RS256", use="sig"),
    ]
    server = OPServer(tmp_path_factory.mktemp("attack-op"), keys=jwks)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def oidc_config(server: OPServer, **extra: Any) -> dict[str, Any]:
    return {
        "LOCKKIT_OIDC_ISSUER": server.issuer, "LOCKKIT_OIDC_CLIENT_ID": WEB_CLIENT,
        "LOCKKIT_OIDC_CLIENT_SECRET": server.web_secret, "LOCKKIT_OIDC_AUDIENCE": API_AUDIENCE, **extra,
    }


def auth0_config(server: OPServer, **extra: Any) -> dict[str, Any]:
    return {
        "LOCKKIT_AUTH0_ISSUER": server.issuer, "AUTH0_CLIENT_ID": WEB_CLIENT,
        "AUTH0_CLIENT_SECRET": server.web_secret, "AUTH0_AUDIENCE": API_AUDIENCE, **extra,
    }


def _op_target(name: str, server: OPServer, keys: dict[str, Any], config: dict[str, Any]) -> Target:
    app = _pinned_clock(lockkit_app(name, **config))
    provider = get_state(app).providers[0]
    assert isinstance(provider, OIDCProvider) and type(provider).name == name
    return Target(
        name=name, app=app, provider=provider, issuer=server.issuer, alg="RS256", key=keys["current"],
        kid="op-current", claims_for=oidc_claims(server.issuer, auth0=name == "auth0"),
        published_jwk=next(k for k in requests.get(server.issuer + "/jwks", timeout=5).json()["keys"]
                           if k["kid"] == "op-current"),
        weak_key=keys["weak"], weak_kid="op-weak", jwks_uri=server.issuer + "/jwks",
    )


@pytest.fixture(scope="module")
def target_oidc(attack_op: OPServer, op_keys: dict[str, Any]) -> Target:
    return _op_target("oidc", attack_op, op_keys, oidc_config(attack_op))


@pytest.fixture(scope="module")
def target_auth0(attack_op: OPServer, op_keys: dict[str, Any]) -> Target:
    return _op_target("auth0", attack_op, op_keys, auth0_config(attack_op))


TARGET_FIXTURES = {name: "target_" + name.replace("-", "_") for name in SPECS}


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Target:
    """The provider named by the test's parameter."""
    found = request.getfixturevalue(TARGET_FIXTURES[request.param])
    assert isinstance(found, Target)
    return found


# --------------------------------------------------------------------------- checks


def request_with(target: Target, transport: Path, token: str) -> Any:
    client = target.app.test_client(use_cookies=False)  # the raw Cookie header is sent as given
    if transport == "bearer":
        return client.get("/api/me", headers=bearer(token))
    assert target.cookie is not None
    return client.get("/api/me", headers={"Cookie": target.cookie(token, NOW)})


def assert_refused(err: IdentityError, attack: Attack, target: Target, token: Any) -> None:
    assert err.reason == attack.expect, f"{attack.id}: reason {err.reason!r} ({err.message}; {err.detail})"
    pattern = attack.message_for(target.spec)
    if pattern is not None:
        assert re.search(pattern, err.message), f"{attack.id}: message {err.message!r} does not match {pattern!r}"
    if isinstance(token, str) and len(token) >= 40:  # error texts never carry the token
        assert token not in err.message and token not in err.detail and token not in repr(err)


def _cases(paths: tuple[Path, ...]) -> list[Any]:
    cases = []
    for name, path, attack in iter_cases(paths):
        bug = KNOWN_BUGS.get((name, attack.id))
        marks = [pytest.mark.xfail(strict=True, reason=bug[0], raises=bug[1])] if bug else []
        if paths == ("verify",):
            cases.append(pytest.param(name, attack, id=f"{name}-{attack.id}", marks=marks))
        else:
            cases.append(pytest.param(name, path, attack, id=f"{name}-{path}-{attack.id}", marks=marks))
    return cases


# --------------------------------------------------------------------------- controls


@pytest.mark.parametrize("target", list(SPECS), indirect=True)
def test_forged_valid_token_is_accepted(target: Target) -> None:
    """The control: a token built the way the attacks build theirs, with nothing changed, is
    accepted, so every refusal below is the attack's doing."""
    claims = target.provider.verify(target.token("verify", NOW), now=NOW)
    assert claims is not None and claims["sub"] == target.claims("verify", NOW)["sub"]
    for transport in target.spec.transports:
        resp = request_with(target, transport, target.token(transport, NOW))
        assert resp.status_code == 200, (transport, resp.get_json())
        assert resp.get_json() == {"sub": target.claims(transport, NOW)["sub"]}


def test_every_provider_is_covered() -> None:
    """The suite runs against every provider an app can load, each by its real class."""
    classes = identity_provider_classes(make_plugin_manager())
    assert {name.split("-")[0] for name in SPECS} == set(classes)
    assert (classes["dev"], classes["clerk"], classes["oidc"], classes["auth0"]) == (
        DevProvider, ClerkProvider, OIDCProvider, Auth0Provider)
    assert len(ATTACKS) >= 60


# --------------------------------------------------------------------------- the attack matrix


@pytest.mark.parametrize(("target", "attack"), _cases(("verify",)), indirect=["target"])
def test_attack_is_refused_by_verify(target: Target, attack: Attack) -> None:
    token = attack.build(target, "verify", NOW)
    if attack.expect is None:
        assert target.provider.verify(token, now=NOW) is None  # another issuer's token
    else:
        with pytest.raises(IdentityError) as info:
            target.provider.verify(token, now=NOW)
        assert_refused(info.value, attack, target, token)


@pytest.mark.parametrize(("target", "transport", "attack"), _cases(("bearer", "cookie")), indirect=["target"])
def test_attack_is_refused_over_http(
    target: Target, transport: Path, attack: Attack, caplog: pytest.LogCaptureFixture
) -> None:
    token = attack.build(target, transport, NOW)
    with caplog.at_level(logging.DEBUG):
        resp = request_with(target, transport, token)
    assert resp.status_code == 401, resp.get_data(as_text=True)[:200]
    assert resp.get_json() == {"error": attack.expect or "invalid"}
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "Set-Cookie" not in resp.headers  # nothing was stored for the refused credential
    assert token not in caplog.text


# --------------------------------------------------------------------------- keys


def _jwks_kids(target: Target) -> list[str]:
    assert target.jwks_uri is not None
    headers = {"Authorization": f"Bearer {CLERK_SK}"} if target.name.startswith("clerk") else {}
    doc = requests.get(target.jwks_uri, headers=headers, timeout=5).json()
    return [str(k["kid"]) for k in doc["keys"]]


@pytest.mark.parametrize("target", [n for n, s in SPECS.items() if s.jwks], indirect=True)
def test_weak_rsa_key_is_published_but_never_used(target: Target) -> None:
    """The 1024-bit key the rsa-1024 attack signs with really is in the JWKS the provider
    fetches (so its refusal is the key-size rule, not a missing key)."""
    assert target.weak_kid in _jwks_kids(target)
    assert target.weak_key is not None and target.weak_key.key_size == 1024
    token = target.token("verify", NOW, key=target.weak_key, header={"kid": target.weak_kid})
    with pytest.raises(IdentityError, match="signing key is not known") as info:
        target.provider.verify(token, now=NOW)
    assert info.value.reason == "invalid"


def test_static_rsa_key_under_2048_bits_is_a_configuration_error() -> None:
    """Static-key providers: a 1024-bit key in the configuration fails at start-up. (lockkit-dev
    has no configurable key: its Ed25519 key is derived from SECRET_KEY.)"""
    weak = public_pem(_weak_rsa()).decode()
    config = {"CLERK_JWT_KEY": weak, "CLERK_PUBLISHABLE_KEY": CLERK_PK, "CLERK_AUTHORIZED_PARTIES": [CLERK_APP]}
    with pytest.raises(ConfigurationError, match="at least 2048 bits"):
        identity_provider_classes(make_plugin_manager())["clerk"].from_config(config)
    with pytest.raises(ConfigurationError, match="at least 2048 bits"):
        lockkit_app("clerk", **config)  # LockKit(app) refuses to start


@pytest.mark.parametrize("name", ["oidc", "auth0"])
def test_es256_zero_signature_where_es256_is_allowed(
    name: str, attack_op: OPServer, op_keys: dict[str, Any]
) -> None:
    """With ES256 allowed and an EC key in the OP's JWKS, ``r = s = 0`` reaches the signature
    check and fails there (a properly signed ES256 token passes: the control)."""
    prefix = "LOCKKIT_OIDC_" if name == "oidc" else "LOCKKIT_AUTH0_"
    config = (oidc_config if name == "oidc" else auth0_config)(attack_op, **{prefix + "ALGORITHMS": "RS256 ES256"})
    provider = get_state(lockkit_app(name, **config)).providers[0]
    claims = json.dumps(oidc_claims(attack_op.issuer)("verify", NOW)).encode()
    header = {"alg": "ES256", "typ": "JWT", "kid": "op-ec"}
    good = jws(header, claims, op_keys["ec"], "ES256")
    assert provider.verify(good, now=NOW) is not None
    zero = f"{b64json(header)}.{b64(claims)}.{b64(bytes(64))}"
    with pytest.raises(IdentityError, match="signature is invalid") as info:
        provider.verify(zero, now=NOW)
    assert info.value.reason == "invalid"


@pytest.mark.parametrize("name", ["oidc", "auth0"])
def test_real_op_access_token_is_accepted(name: str, attack_op: OPServer) -> None:
    """The forged tokens are shaped like the real thing: an access token the OP itself issues
    (signed with the same key the attacks use) opens the same protected route."""
    config = (oidc_config if name == "oidc" else auth0_config)(attack_op)
    app = lockkit_app(name, **config)  # the real clock: the OP's token is fresh
    token = spa_access_token(attack_op, "alice")["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == "op-current"
    resp = app.test_client().get("/api/me", headers=bearer(token))
    assert resp.status_code == 200 and resp.get_json() == {"sub": "alice"}


# --------------------------------------------------------------------------- rotation


class _Issuer:
    """JWKS-based providers and the loopback server whose keys a test rotates."""

    def __init__(self, providers: list[IdentityProvider],
                 set_keys: Callable[[list[tuple[str, rsa.RSAPrivateKey]]], None],
                 mint: Callable[[str, rsa.RSAPrivateKey, int], str]) -> None:
        self.providers, self.set_keys, self.mint = providers, set_keys, mint

    def verify_all(self, kid: str, key: rsa.RSAPrivateKey, now: int) -> None:
        """Every provider accepts a token that ``kid``/``key`` signed at ``now``."""
        for provider in self.providers:
            assert provider.verify(self.mint(kid, key, now), now=now) is not None, provider

    def refuse_all(self, kid: str, key: rsa.RSAPrivateKey, now: int) -> None:
        for provider in self.providers:
            with pytest.raises(IdentityError, match="signing key is not known") as info:
                provider.verify(self.mint(kid, key, now), now=now)
            assert info.value.reason == "invalid"

    def fetches(self) -> list[int]:
        """JWKS fetches so far, per provider."""
        counts = []
        for provider in self.providers:
            verifier = provider.discovery.id_verifier if isinstance(provider, OIDCProvider) else provider.verifier
            jwks = getattr(verifier, "jwks", None)
            assert jwks is not None
            counts.append(int(jwks.fetch_count))
        return counts


#: the JWKS-based providers, by the issuer they rotate against (lockkit-oidc and lockkit-auth0
#: share one real OP, so it restarts half as often)
ROTATING = {"clerk-jwks": ("clerk",), "oidc-and-auth0": ("oidc", "auth0")}
assert {n for names in ROTATING.values() for n in names} == {n.split("-")[0] for n, s in SPECS.items() if s.jwks}


@pytest.fixture
def rotating(request: pytest.FixtureRequest, tmp_path: FsPath) -> Iterator[Callable[[list[tuple[str, rsa.RSAPrivateKey]]], _Issuer]]:
    """``rotating(keys)``: fresh providers of the parametrised kind whose issuer publishes
    ``keys`` (``[(kid, key)]``) on loopback; ``issuer.set_keys`` replaces them."""
    names = ROTATING[request.param]
    classes = identity_provider_classes(make_plugin_manager())
    stop: list[Callable[[], None]] = []

    def make(keys: list[tuple[str, rsa.RSAPrivateKey]]) -> _Issuer:
        if names == ("clerk",):
            server = JWKSServer([public_jwk(k, kid=kid, alg="RS256", use="sig") for kid, k in keys], bearer=CLERK_SK)
            server.__enter__()
            stop.append(lambda: server.__exit__(None, None, None))
            provider = classes["clerk"].from_config({
                "CLERK_SECRET_KEY": CLERK_SK, "CLERK_PUBLISHABLE_KEY": CLERK_PK,
                "CLERK_AUTHORIZED_PARTIES": [CLERK_APP], "CLERK_API_URL": server.base_url,
            })

            def set_clerk(new: list[tuple[str, rsa.RSAPrivateKey]]) -> None:
                server.set_keys([public_jwk(k, kid=kid, alg="RS256", use="sig") for kid, k in new])

            def mint_clerk(kid: str, key: rsa.RSAPrivateKey, now: int) -> str:
                head = {"alg": "RS256", "kid": kid, "typ": "JWT", "cat": CAT_SESSION_TOKEN}
                return jws(head, json.dumps(clerk_claims("verify", now)).encode(), key, "RS256")

            return _Issuer([provider], set_clerk, mint_clerk)

        op = OPServer(tmp_path, keys=[private_jwk(k, kid=kid, alg="RS256", use="sig") for kid, k in keys])
        op.start()
        stop.append(op.stop)
        providers = [classes["oidc"].from_config(oidc_config(op)), classes["auth0"].from_config(auth0_config(op))]

        def set_op(new: list[tuple[str, rsa.RSAPrivateKey]]) -> None:
            op.restart(keys=[private_jwk(k, kid=kid, alg="RS256", use="sig") for kid, k in new])

        def mint_op(kid: str, key: rsa.RSAPrivateKey, now: int) -> str:
            body = json.dumps(oidc_claims(op.issuer)("verify", now)).encode()
            return jws({"alg": "RS256", "kid": kid, "typ": "JWT"}, body, key, "RS256")

        return _Issuer(providers, set_op, mint_op)

    try:
        yield make
    finally:
        for fn in reversed(stop):
            fn()


@pytest.mark.parametrize("rotating", list(ROTATING), indirect=True)
def test_key_rotation_against_a_loopback_jwks(rotating: Callable[[list[tuple[str, rsa.RSAPrivateKey]]], _Issuer]) -> None:
    old, new = _rsa(), _rsa()
    issuer = rotating([("k-old", old)])
    n = len(issuer.providers)
    issuer.verify_all("k-old", old, NOW)
    assert issuer.fetches() == [1] * n

    # rotation: the new key signs, the old one stays published for tokens already issued
    issuer.set_keys([("k-new", new), ("k-old", old)])
    t1 = NOW + MIN_REFETCH + 1
    issuer.verify_all("k-new", new, t1)
    assert issuer.fetches() == [2] * n  # exactly one refetch, for the unknown kid
    issuer.verify_all("k-old", old, t1 + 1)
    issuer.verify_all("k-new", new, t1 + 2)
    assert issuer.fetches() == [2] * n  # both keys now cached

    # the old key is retired: once the cached JWKS is older than its TTL, it is refused
    issuer.set_keys([("k-new", new)])
    issuer.verify_all("k-old", old, t1 + JWKS_TTL - 10)  # still cached, inside the TTL
    t2 = t1 + JWKS_TTL + 1
    issuer.refuse_all("k-old", old, t2)
    assert issuer.fetches() == [3] * n  # one refetch (stale), not one per refused token
    issuer.refuse_all("k-old", old, t2 + 1)
    issuer.verify_all("k-new", new, t2 + 2)
    assert issuer.fetches() == [3] * n
