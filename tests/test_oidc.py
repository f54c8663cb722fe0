"""Tests for lockkit.oidc: real JWTs, real JWKS over loopback HTTP (LocalIssuer)."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm, get_default_algorithms

from lockkit.errors import (
    ConfigurationError,
    ExpiredCredentialError,
    IdentityError,
    InvalidCredentialError,
    ProviderUnavailableError,
)
from lockkit.oidc import (
    ALLOWED_ALGORITHMS,
    Claims,
    IssuerConfig,
    IssuerRouter,
    JWKSCache,
    OIDCVerifier,
    TokenVerifier,
    _parse_jwk,
)
from lockkit.testing import LocalIssuer

from .providers.scripted_op import _Listener

NOW = 1_700_000_000.0
TTL = 300.0  # JWKS cache ttl (IssuerConfig default)
INTERVAL = 30.0  # min refetch interval (IssuerConfig default)


# ----------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64(value if isinstance(value, bytes) else json.dumps(value).encode())


def sign_raw(header: Any, payload: Any, key: Any, alg: str = "RS256") -> str:
    """A compact JWS with arbitrary header/payload JSON, signed by PyJWT's algorithm."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = get_default_algorithms()[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def claims_for(idp: LocalIssuer, **extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": idp.issuer,
        "aud": idp.audience,
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW + 300),
    }
    claims.update(extra)
    return claims


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def reject(
    verifier: OIDCVerifier, token: Any, match: str, *, now: float = NOW
) -> InvalidCredentialError:
    with pytest.raises(InvalidCredentialError, match=match) as info:
        verifier.verify(token, now=now)
    err = info.value
    assert err.reason == "invalid"
    if isinstance(token, str) and token:
        assert token not in err.message and token not in err.detail and token not in repr(err)
    return err


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def idp() -> Iterator[LocalIssuer]:
    """A shared issuer that tests must not mutate (no rotate/retire/outage)."""
    with LocalIssuer() as issuer:
        yield issuer


@pytest.fixture
def fresh_idp() -> Iterator[LocalIssuer]:
    """An issuer of the test's own, for rotation and outage tests."""
    with LocalIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def es_idp() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithm="ES256") as issuer:
        yield issuer


@pytest.fixture
def verifier(idp: LocalIssuer) -> OIDCVerifier:
    return OIDCVerifier(idp.issuer_config())


# ----------------------------------------------------------------------------- success


def test_valid_token_returns_verified_claims(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    token = idp.mint("alice", now=NOW, org_id="acme", scopes=["read"])
    claims = verifier.verify(token, now=NOW)
    assert claims == {
        "iss": idp.issuer,
        "aud": idp.audience,
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW + 300),
        "org_id": "acme",
        "scopes": ["read"],
    }
    assert verifier.jwks is not None and verifier.jwks.fetch_count == 1


def test_es256_token_verifies(es_idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(es_idp.issuer_config())
    claims = verifier.verify(es_idp.mint("bob", now=NOW), now=NOW)
    assert claims is not None and claims["sub"] == "bob"


def test_keys_are_cached_between_tokens(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    for i in range(5):
        assert verifier.verify(idp.mint(f"user{i}", now=NOW), now=NOW + i) is not None
    assert verifier.jwks is not None and verifier.jwks.fetch_count == 1


def test_jwks_is_refetched_after_ttl(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    verifier.verify(idp.mint(now=NOW), now=NOW)
    verifier.verify(idp.mint(now=NOW + TTL), now=NOW + TTL)
    assert verifier.jwks is not None and verifier.jwks.fetch_count == 2


def test_aud_list_containing_our_audience_is_accepted(
    idp: LocalIssuer, verifier: OIDCVerifier
) -> None:
    token = idp.mint(now=NOW, aud=["other-api", idp.audience])
    claims = verifier.verify(token, now=NOW)
    assert claims is not None and claims["aud"] == ["other-api", idp.audience]


def test_token_without_kid_is_accepted_when_the_issuer_has_one_key(
    idp: LocalIssuer, verifier: OIDCVerifier
) -> None:
    token = idp.mint(now=NOW, headers={"kid": None})
    assert "kid" not in jwt.get_unverified_header(token)
    claims = verifier.verify(token, now=NOW)
    assert claims is not None and claims["sub"] == "alice"


def test_namespace_defaults_to_issuer_and_can_be_set(idp: LocalIssuer) -> None:
    assert OIDCVerifier(idp.issuer_config()).namespace == idp.issuer
    named = OIDCVerifier(idp.issuer_config(namespace="corp"))
    assert named.namespace == "corp" == named.config.identity_namespace
    assert named.issuer == idp.issuer


def test_repr_shows_no_secrets(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    token = idp.mint(now=NOW)
    verifier.verify(token, now=NOW)
    for text in (repr(verifier), repr(verifier.jwks), repr(verifier.config)):
        assert token not in text
    assert "BEGIN" not in repr(IssuerConfig("https://i", audiences=("a",), static_keys=(idp.public_key_pem().decode(),)))


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("suffix", ["/", "/other", ":1"])
def test_token_of_another_issuer_returns_none(
    idp: LocalIssuer, verifier: OIDCVerifier, suffix: str
) -> None:
    token = idp.mint(now=NOW, iss=idp.issuer + suffix)
    assert verifier.verify(token, now=NOW) is None


def test_other_issuer_is_not_fetched_for(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    assert verifier.verify(idp.mint(now=NOW, iss="https://elsewhere.example"), now=NOW) is None
    assert verifier.jwks is not None and verifier.jwks.fetch_count == 0


@pytest.mark.parametrize("iss", [None, "", 42, ["x"]])
def test_missing_or_non_string_iss_is_invalid(
    idp: LocalIssuer, verifier: OIDCVerifier, iss: Any
) -> None:
    claims = claims_for(idp)
    if iss is None:
        del claims["iss"]
    else:
        claims["iss"] = iss
    token = sign_raw({"alg": "RS256", "kid": idp.current_kid}, claims, idp.private_key())
    reject(verifier, token, "no issuer")


def test_router_routes_each_token_to_its_issuer(idp: LocalIssuer, es_idp: LocalIssuer) -> None:
    first = OIDCVerifier(idp.issuer_config(namespace="first"))
    second = OIDCVerifier(es_idp.issuer_config(namespace="second"))
    router = IssuerRouter([first, second])

    owner, claims = router.verify(idp.mint("alice", now=NOW), now=NOW)
    assert owner is first and claims["sub"] == "alice"
    owner, claims = router.verify(es_idp.mint("bob", now=NOW), now=NOW)
    assert owner is second and owner.namespace == "second" and claims["sub"] == "bob"


def test_router_rejects_untrusted_issuer_including_trailing_slash(idp: LocalIssuer) -> None:
    router = IssuerRouter([OIDCVerifier(idp.issuer_config())])
    with pytest.raises(InvalidCredentialError, match="issuer is not trusted") as info:
        router.verify(idp.mint(now=NOW, iss=idp.issuer + "/"), now=NOW)
    assert info.value.reason == "invalid"


def test_router_propagates_the_owning_verifiers_rejection(idp: LocalIssuer) -> None:
    router = IssuerRouter([OIDCVerifier(idp.issuer_config())])
    with pytest.raises(ExpiredCredentialError) as info:
        router.verify(idp.mint(now=NOW, ttl=60), now=NOW + 3600)
    assert info.value.reason == "expired"


def test_router_accepts_any_token_verifier_plugin(idp: LocalIssuer) -> None:
    class StaticPlugin:
        namespace = "plugin"

        def verify(self, token: str, now: float | None = None) -> Claims | None:
            return {"sub": "from-plugin"} if token == "plugin-token" else None

    plugin: TokenVerifier = StaticPlugin()
    router = IssuerRouter([plugin, OIDCVerifier(idp.issuer_config())])
    owner, claims = router.verify("plugin-token", now=NOW)
    assert owner is plugin and claims == {"sub": "from-plugin"}
    owner, claims = router.verify(idp.mint("carol", now=NOW), now=NOW)
    assert owner is not plugin and claims["sub"] == "carol"


def test_router_needs_a_verifier() -> None:
    with pytest.raises(ConfigurationError, match="at least one trusted issuer"):
        IssuerRouter([])


# ----------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "AAAA"])
def test_alg_none_is_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, alg: str, signature: str
) -> None:
    token = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims_for(idp))}.{signature}"
    reject(verifier, token, "malformed" if not signature else "algorithm is not allowed")


def test_hs256_signed_with_the_public_key_pem_is_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier
) -> None:
    # The classic key-confusion attack: HMAC keyed with the RSA public key PEM.
    signing_input = f"{segment({'alg': 'HS256', 'kid': idp.current_kid})}.{segment(claims_for(idp))}"
    mac = hmac.new(idp.public_key_pem(), signing_input.encode(), hashlib.sha256).digest()
    err = reject(verifier, f"{signing_input}.{b64(mac)}", "algorithm is not allowed")
    assert "HS256" in err.detail


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES256", "HS512", "", None, 1, ["RS256"]])
def test_algorithm_outside_the_pinned_list_is_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, alg: Any
) -> None:
    header: dict[str, Any] = {"kid": idp.current_kid}
    if alg is not None:
        header["alg"] = alg
    token = sign_raw(header, claims_for(idp), idp.private_key())
    reject(verifier, token, "algorithm is not allowed")


def test_algorithm_that_does_not_fit_the_key_is_rejected(idp: LocalIssuer) -> None:
    # ES256 is pinned too, but the kid names an RSA key: the header cannot switch key types.
    verifier = OIDCVerifier(idp.issuer_config(algorithms=("RS256", "ES256")))
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = sign_raw({"alg": "ES256", "kid": idp.current_kid}, claims_for(idp), attacker, "ES256")
    reject(verifier, token, "does not match its signing key")


def test_ps256_token_with_rs256_pinned_key_is_rejected(idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(idp.issuer_config(algorithms=("RS256", "PS256")))
    token = sign_raw({"alg": "PS256", "kid": idp.current_kid}, claims_for(idp), idp.private_key(), "PS256")
    # the published JWK says alg RS256, so it must not be used for PS256
    reject(verifier, token, "does not match its signing key")


# ----------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("jwk", {"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
        ("b64", True),
    ],
)
def test_headers_that_name_their_own_keys_or_extensions_are_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, name: str, value: Any
) -> None:
    header = {"alg": "RS256", "kid": idp.current_kid, name: value}
    token = sign_raw(header, claims_for(idp), idp.private_key())
    err = reject(verifier, token, "header is not accepted")
    assert name in err.detail


def test_jwk_header_with_attackers_key_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    attacker = rsa_key()
    embedded = RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    token = idp.mint(now=NOW, headers={"jwk": embedded})
    reject(verifier, token, "header is not accepted")


@pytest.mark.parametrize("kid", [7, ["a"], {"k": 1}, True])
def test_non_string_kid_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier, kid: Any) -> None:
    token = sign_raw({"alg": "RS256", "kid": kid}, claims_for(idp), idp.private_key())
    reject(verifier, token, "malformed")


# ----------------------------------------------------------------------------- keys


def test_unknown_kid_is_rejected_after_one_refetch(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    verifier.verify(idp.mint(now=NOW), now=NOW)  # warm the cache
    token = idp.mint(now=NOW, headers={"kid": "no-such-key"})
    err = reject(verifier, token, "signing key is not known", now=NOW + INTERVAL)
    assert "no-such-key" in err.detail
    assert verifier.jwks is not None and verifier.jwks.fetch_count == 2


def test_missing_kid_with_several_keys_is_rejected(fresh_idp: LocalIssuer) -> None:
    fresh_idp.rotate()
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    token = fresh_idp.mint(now=NOW, headers={"kid": None})
    reject(verifier, token, "no key id")


def test_rsa_1024_key_in_jwks_is_refused() -> None:
    warning = getattr(jwt, "InsecureKeyLengthWarning", None)  # PyJWT >= 2.10 warns when signing with it
    with LocalIssuer(key_size=1024) as weak:
        with pytest.warns(warning) if warning is not None else contextlib.nullcontext():
            token = weak.mint(now=NOW)
        verifier = OIDCVerifier(weak.issuer_config())
        reject(verifier, token, "signing key is not known")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"use": "enc"}, "encryption key"),
        ({"alg": "HS256"}, "symmetric alg"),
        ({"alg": "ES256"}, "alg that does not fit an RSA key"),
        ({"key_ops": ["encrypt"]}, "not for verify"),
        ({"kid": 5}, "non-string kid"),
        ({"n": "%%%"}, "unparseable modulus"),
        ({"kty": "oct", "k": "c2VjcmV0"}, "symmetric key"),
        ({"kty": "XYZ"}, "unknown kty"),
        ({"d": "AQAB"}, "private key material"),
    ],
)
def test_unusable_jwks_entries_are_skipped(
    idp: LocalIssuer, change: dict[str, Any], why: str
) -> None:
    good = idp.public_jwk()
    assert _parse_jwk(good) is not None
    assert _parse_jwk({**good, **change}) is None, why


def test_rsa_1024_jwk_is_skipped() -> None:
    weak = RSAAlgorithm.to_jwk(rsa_key(1024).public_key(), as_dict=True)
    assert _parse_jwk(weak) is None
    assert _parse_jwk(RSAAlgorithm.to_jwk(rsa_key(2048).public_key(), as_dict=True)) is not None


def test_usable_key_published_next_to_junk_still_verifies(fresh_idp: LocalIssuer) -> None:
    fresh_idp.publish_jwk({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})
    fresh_idp.publish_jwk({"kid": "junk"})
    fresh_idp.publish_jwk({**fresh_idp.public_jwk(), "kid": "enc-key", "use": "enc"})
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    assert verifier.verify(fresh_idp.mint(now=NOW), now=NOW) is not None
    # the same key published only for encryption must not verify signatures
    reject(verifier, fresh_idp.mint(now=NOW, headers={"kid": "enc-key"}), "signing key is not known")
    reject(verifier, fresh_idp.mint(now=NOW, headers={"kid": "hmac"}), "signing key is not known")


def test_token_signed_by_another_key_with_a_known_kid_is_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier
) -> None:
    token = sign_raw({"alg": "RS256", "kid": idp.current_kid}, claims_for(idp), rsa_key())
    err = reject(verifier, token, "signature is invalid")
    assert isinstance(err.__cause__, jwt.InvalidSignatureError)


# ----------------------------------------------------------------------------- rotation


def test_rotated_key_verifies_after_exactly_one_refetch(fresh_idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    old_token = fresh_idp.mint(now=NOW)
    assert verifier.verify(old_token, now=NOW) is not None
    assert fresh_idp.jwks_requests == 1

    new_kid = fresh_idp.rotate()
    new_token = fresh_idp.mint(now=NOW + INTERVAL)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    claims = verifier.verify(new_token, now=NOW + INTERVAL)
    assert claims is not None
    assert fresh_idp.jwks_requests == 2
    assert verifier.jwks is not None and verifier.jwks.fetch_count == 2
    # the old key stays published, so its tokens still verify without another fetch
    assert verifier.verify(old_token, now=NOW + INTERVAL + 1) is not None
    assert fresh_idp.jwks_requests == 2


def test_rotated_key_within_the_refetch_interval_is_not_fetched_again(
    fresh_idp: LocalIssuer,
) -> None:
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    verifier.verify(fresh_idp.mint(now=NOW), now=NOW)
    fresh_idp.rotate()
    # one second after the last fetch: the unknown kid may not trigger a refetch yet
    reject(verifier, fresh_idp.mint(now=NOW), "signing key is not known", now=NOW + 1)
    assert fresh_idp.jwks_requests == 1


def test_retired_key_is_refused(fresh_idp: LocalIssuer) -> None:
    old_kid = fresh_idp.current_kid
    old_token = fresh_idp.mint(now=NOW)
    fresh_idp.rotate()
    fresh_idp.retire(old_kid)
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    reject(verifier, old_token, "signing key is not known")
    assert verifier.verify(fresh_idp.mint(now=NOW), now=NOW) is not None


def test_retired_key_is_refused_once_the_cache_refreshes(fresh_idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    old_kid = fresh_idp.current_kid
    assert verifier.verify(fresh_idp.mint(now=NOW), now=NOW) is not None
    fresh_idp.rotate()
    fresh_idp.retire(old_kid)
    later = NOW + TTL
    reject(verifier, fresh_idp.mint(now=later, kid=old_kid), "signing key is not known", now=later)


def test_unknown_kid_refetch_is_rate_limited(fresh_idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    verifier.verify(fresh_idp.mint(now=NOW), now=NOW)
    assert fresh_idp.jwks_requests == 1

    for i in range(50):  # a burst of junk kids within one interval: one refetch
        junk = fresh_idp.mint(now=NOW, headers={"kid": f"junk-{i}"})
        reject(verifier, junk, "signing key is not known", now=NOW + INTERVAL + i * 0.5)
    assert fresh_idp.jwks_requests == 2

    junk = fresh_idp.mint(now=NOW, headers={"kid": "junk-late"})
    reject(verifier, junk, "signing key is not known", now=NOW + 2 * INTERVAL)
    assert fresh_idp.jwks_requests == 3
    assert verifier.jwks is not None and verifier.jwks.fetch_count == 3


def test_concurrent_first_requests_fetch_once(fresh_idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    tokens = [fresh_idp.mint(f"user{i}", now=NOW) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda token: verifier.verify(token, now=NOW), tokens))
    assert [claims["sub"] for claims in results if claims] == [f"user{i}" for i in range(16)]
    assert fresh_idp.jwks_requests == 1


# ----------------------------------------------------------------------------- outages


def test_jwks_down_with_nothing_cached_is_provider_unavailable(fresh_idp: LocalIssuer) -> None:
    fresh_idp.set_available(False)
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    token = fresh_idp.mint(now=NOW)
    with pytest.raises(ProviderUnavailableError, match="keys are unavailable") as info:
        verifier.verify(token, now=NOW)
    assert info.value.reason == "unavailable"
    assert "503" in info.value.detail and token not in info.value.detail
    assert info.value.__cause__ is not None

    # recovery is picked up, but not faster than the refetch interval
    fresh_idp.set_available(True)
    with pytest.raises(ProviderUnavailableError):
        verifier.verify(token, now=NOW + 1)
    assert verifier.verify(token, now=NOW + INTERVAL) is not None
    assert fresh_idp.jwks_requests == 2


def test_a_failed_jwks_fetch_is_logged_with_its_cause_and_no_token(
    fresh_idp: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients are told only "keys are unavailable"; the operator's log says which URL failed
    and why, and whether stale keys are still in use."""
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    fresh_idp.set_available(False)
    token = fresh_idp.mint(now=NOW)
    with caplog.at_level(logging.WARNING, logger="lockkit.oidc"), pytest.raises(ProviderUnavailableError):
        verifier.verify(token, now=NOW)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    message = caplog.records[0].getMessage()
    assert fresh_idp.jwks_uri in message and "503" in message and "no keys to verify with" in message
    assert token not in caplog.text

    caplog.clear()
    fresh_idp.set_available(True)
    assert verifier.verify(token, now=NOW + INTERVAL) is not None
    assert caplog.records == []  # a good fetch logs nothing
    fresh_idp.set_available(False)
    later = NOW + INTERVAL + TTL + 1
    with caplog.at_level(logging.WARNING, logger="lockkit.oidc"):
        assert verifier.verify(fresh_idp.mint(now=later), now=later) is not None
    assert "still verifying with the keys fetched before" in caplog.text


def test_a_jwks_outage_is_logged_once_per_cause_and_interval(
    fresh_idp: LocalIssuer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With refetches allowed on every request (min refetch interval 0), a JWKS outage does not
    write a warning per request: the same cause once per FETCH_WARNING_INTERVAL."""
    import lockkit.oidc as oidc

    verifier = OIDCVerifier(fresh_idp.issuer_config(jwks_min_refetch_interval=0))
    fresh_idp.set_available(False)
    clock = [1000.0]
    monkeypatch.setattr(oidc.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="lockkit.oidc"):
        for _ in range(20):
            with pytest.raises(ProviderUnavailableError):
                verifier.verify(fresh_idp.mint(now=NOW), now=NOW)
        assert fresh_idp.jwks_requests == 20 and len(caplog.records) == 1
        clock[0] += oidc.FETCH_WARNING_INTERVAL
        with pytest.raises(ProviderUnavailableError):
            verifier.verify(fresh_idp.mint(now=NOW), now=NOW)
    assert len(caplog.records) == 2


def test_a_slow_log_handler_holds_up_no_verification(fresh_idp: LocalIssuer) -> None:
    """The failed fetch is logged after the refresh's lock is released: while the fetching
    thread sits in a slow handler, another verification goes on with the cached keys."""
    import threading
    import time

    entered, release = threading.Event(), threading.Event()

    class SlowHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            entered.set()
            release.wait(10)

    handler = SlowHandler(level=logging.WARNING)
    logger = logging.getLogger("lockkit.oidc")
    logger.addHandler(handler)
    try:
        verifier = OIDCVerifier(fresh_idp.issuer_config())
        assert verifier.verify(fresh_idp.mint(now=NOW), now=NOW) is not None
        fresh_idp.set_available(False)
        later = NOW + TTL + 1  # stale: the next verification refreshes, and the fetch fails
        first = threading.Thread(target=verifier.verify, args=(fresh_idp.mint(now=later),), kwargs={"now": later})
        first.start()
        assert entered.wait(10), "the failed fetch was not logged"
        start = time.monotonic()
        assert verifier.verify(fresh_idp.mint(now=later), now=later) is not None
        assert time.monotonic() - start < 2.0
    finally:
        release.set()
        first.join(10)
        logger.removeHandler(handler)


def test_jwks_down_keeps_serving_stale_keys(fresh_idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    assert verifier.verify(fresh_idp.mint(now=NOW), now=NOW) is not None
    fresh_idp.set_available(False)
    later = NOW + TTL + 10
    assert verifier.verify(fresh_idp.mint(now=later), now=later) is not None
    assert fresh_idp.jwks_requests == 2  # the refresh was tried and failed
    # and a failed refresh does not hammer the IdP on every request
    assert verifier.verify(fresh_idp.mint(now=later), now=later + 1) is not None
    assert fresh_idp.jwks_requests == 2


class _GatedJWKS:
    """A JWKS endpoint on loopback serving ``idp``'s keys; from the ``hold_from``-th request
    on, each answer waits until :meth:`release` (a slow identity provider)."""

    def __init__(self, idp: LocalIssuer, hold_from: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.gate, self.requests, self.held = threading.Event(), 0, threading.Event()
        gated = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                gated.requests += 1
                if gated.requests >= hold_from:
                    gated.held.set()
                    gated.gate.wait(30)
                body = json.dumps(idp.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_slow_jwks_refresh_does_not_hold_up_other_verifications(idp: LocalIssuer) -> None:
    """While one request refreshes the stale key set (the IdP answering slowly), the others
    verify with the cached keys instead of queueing behind the network call."""
    import threading

    jwks = _GatedJWKS(idp, hold_from=2)
    try:
        verifier = OIDCVerifier(idp.issuer_config(jwks_uri=jwks.uri, http_timeout=20.0))
        assert verifier.verify(idp.mint("a", now=NOW), now=NOW) is not None  # fetch 1: cached
        later = NOW + TTL + 1  # stale: the next verification refreshes, and the IdP hangs
        refreshing = threading.Thread(target=verifier.verify, args=(idp.mint("b", now=later),), kwargs={"now": later})
        refreshing.start()
        assert jwks.held.wait(10), "the refresh reached the IdP"
        others: list[Any] = []
        other = threading.Thread(target=lambda: others.append(verifier.verify(idp.mint("c", now=later), now=later)))
        other.start()
        other.join(10)
        assert not other.is_alive() and others[0]["sub"] == "c"  # done while the refresh still hangs
        assert refreshing.is_alive() and jwks.requests == 2  # one fetch in flight, no second one
        jwks.release()
        refreshing.join(10)
        assert not refreshing.is_alive()
    finally:
        jwks.close()


def test_unreachable_jwks_is_provider_unavailable() -> None:
    issuer = LocalIssuer()
    issuer.start()
    config = issuer.issuer_config(http_timeout=2.0)
    token = issuer.mint(now=NOW)
    issuer.close()  # nothing listens on the port any more
    with pytest.raises(ProviderUnavailableError) as info:
        OIDCVerifier(config).verify(token, now=NOW)
    assert info.value.reason == "unavailable"


@pytest.mark.parametrize("path", ["/nope", "/.well-known/openid-configuration"])
def test_jwks_uri_without_a_key_set_is_provider_unavailable(idp: LocalIssuer, path: str) -> None:
    cache = JWKSCache(idp.issuer + path, ttl=TTL, min_refetch_interval=INTERVAL, timeout=2.0)
    with pytest.raises(ProviderUnavailableError):
        cache.get_signing_key(idp.current_kid, "RS256", now=NOW)
    assert cache.fetch_count == 1


def test_jwks_cache_returns_the_published_key(idp: LocalIssuer) -> None:
    cache = JWKSCache(idp.jwks_uri, ttl=TTL, min_refetch_interval=INTERVAL, timeout=2.0)
    key = cache.get_signing_key(idp.current_kid, "RS256", now=NOW)
    private = idp.private_key()
    assert isinstance(key, rsa.RSAPublicKey) and isinstance(private, rsa.RSAPrivateKey)
    assert key.public_numbers() == private.public_key().public_numbers()
    assert cache.fetch_count == 1
    assert idp.jwks_uri in repr(cache)


# ----------------------------------------------------------------------------- signatures


def test_tampered_header_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    header, payload, signature = idp.mint(now=NOW).split(".")
    forged = segment({"alg": "RS256", "kid": idp.current_kid, "typ": "at+jwt"})
    assert forged != header
    reject(verifier, f"{forged}.{payload}.{signature}", "signature is invalid")


def test_tampered_payload_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    header, _, signature = idp.mint("alice", now=NOW).split(".")
    forged = segment(claims_for(idp, sub="admin"))
    reject(verifier, f"{header}.{forged}.{signature}", "signature is invalid")


def test_stripped_signature_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    header, payload, _ = idp.mint(now=NOW).split(".")
    reject(verifier, f"{header}.{payload}.", "malformed")
    reject(verifier, f"{header}.{payload}", "malformed")


@pytest.mark.parametrize("cut", [1, 2, 4, 100])
def test_truncated_signature_is_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, cut: int
) -> None:
    token = idp.mint(now=NOW)
    reject(verifier, token[:-cut], "signature is invalid")


def test_es256_zero_signature_is_rejected(es_idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(es_idp.issuer_config())
    header, payload, _ = es_idp.mint(now=NOW).split(".")
    zero = b64(bytes(64))  # r = s = 0 ("psychic signature")
    reject(verifier, f"{header}.{payload}.{zero}", "signature is invalid")


@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgw_-9z"))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_single_character_change_is_rejected_with_an_identity_error(
    idp: LocalIssuer, verifier: OIDCVerifier, position: int, replacement: str
) -> None:
    token = idp.mint(now=NOW)
    index = position % len(token)
    assume(token[index] not in (replacement, "."))  # a real change inside a segment
    mutated = token[:index] + replacement + token[index + 1 :]
    try:
        result = verifier.verify(mutated, now=NOW)
    except IdentityError as err:
        assert mutated not in err.message and mutated not in err.detail
    else:
        # only a change to the routed iss can yield None; nothing forged is ever accepted
        assert result is None


# ----------------------------------------------------------------------------- time claims


def test_expired_token_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    token = idp.mint(now=NOW, ttl=60)
    assert verifier.verify(token, now=NOW + 60 + 5) is not None  # within the leeway
    with pytest.raises(ExpiredCredentialError, match="expired") as info:
        verifier.verify(token, now=NOW + 60 + 5.5)
    assert info.value.reason == "expired"
    assert token not in info.value.detail


def test_leeway_is_configurable(idp: LocalIssuer) -> None:
    strict = OIDCVerifier(idp.issuer_config(leeway=0))
    token = idp.mint(now=NOW, ttl=60)
    with pytest.raises(ExpiredCredentialError):
        strict.verify(token, now=NOW + 60.5)


def test_nbf_in_the_future_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    assert verifier.verify(idp.mint(now=NOW, nbf=NOW + 5), now=NOW) is not None  # leeway
    reject(verifier, idp.mint(now=NOW, nbf=NOW + 60), "not valid yet")


def test_iat_far_in_the_future_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    assert verifier.verify(idp.mint(now=NOW, iat=int(NOW) + 5), now=NOW) is not None
    reject(verifier, idp.mint(now=NOW, iat=int(NOW) + 3600), "issued in the future")


def test_missing_exp_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    reject(verifier, idp.mint(now=NOW, omit=("exp",)), "no exp claim")


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [str(int(NOW) + 300), True, False, None, [1], {"t": 1}])
def test_non_numeric_time_claims_are_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, name: str, value: Any
) -> None:
    reject(verifier, idp.mint(now=NOW, **{name: value}), f"{name} claim is not a number")


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_overflowing_time_claims_are_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, name: str
) -> None:
    huge: dict[str, Any] = {name: 10**400}
    reject(verifier, idp.mint(now=NOW, **huge), f"{name} claim is out of range")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, constant: str
) -> None:
    body = json.dumps(claims_for(idp, exp=0)).replace('"exp": 0', f'"exp": {constant}')
    token = sign_raw({"alg": "RS256", "kid": idp.current_kid}, body.encode(), idp.private_key())
    reject(verifier, token, "malformed")


# ----------------------------------------------------------------------------- iss/aud/azp/sub


@pytest.mark.parametrize(
    "aud", ["another-app", ["another-app", "third"], [], None, 5, [5], ["lockkit-test", 5]]
)
def test_wrong_or_malformed_audience_is_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, aud: Any
) -> None:
    token = idp.mint(now=NOW, aud=aud) if aud is not None else idp.mint(now=NOW, omit=("aud",))
    reject(verifier, token, "audience|not meant for this application")


def test_wrong_audience_says_so(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    reject(verifier, idp.mint(now=NOW, aud="another-app"), "not meant for this application")


@pytest.fixture
def azp_only(idp: LocalIssuer) -> OIDCVerifier:
    return OIDCVerifier(idp.issuer_config(audiences=(), authorized_parties=("web-app",)))


def test_azp_only_config_requires_azp(idp: LocalIssuer, azp_only: OIDCVerifier) -> None:
    reject(azp_only, idp.mint(now=NOW, omit=("aud",)), "no authorized party")
    claims = azp_only.verify(idp.mint(now=NOW, azp="web-app", omit=("aud",)), now=NOW)
    assert claims is not None and claims["azp"] == "web-app"


@pytest.mark.parametrize("aud", ["anything", ["web-app"], "", []])
def test_azp_only_config_refuses_a_token_with_an_audience(idp: LocalIssuer, azp_only: OIDCVerifier, aud: Any) -> None:
    """With no audience configured, a token that names one was meant for some audience, not
    necessarily this app; OpenBao's role refuses it as well, so both backends agree."""
    reject(azp_only, idp.mint(now=NOW, azp="web-app", aud=aud), "has an audience, but none is configured")


@pytest.mark.parametrize("azp", ["evil-app", "", 5, ["web-app"]])
def test_unlisted_azp_is_rejected(
    idp: LocalIssuer, azp_only: OIDCVerifier, azp: Any
) -> None:
    reject(azp_only, idp.mint(now=NOW, azp=azp, omit=("aud",)), "authorized party is not allowed")


def test_azp_with_audiences_is_optional_but_checked_when_present(idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(idp.issuer_config(authorized_parties=("web-app",)))
    assert verifier.verify(idp.mint(now=NOW), now=NOW) is not None
    assert verifier.verify(idp.mint(now=NOW, azp="web-app"), now=NOW) is not None
    reject(verifier, idp.mint(now=NOW, azp="evil-app"), "authorized party is not allowed")
    reject(verifier, idp.mint(now=NOW, azp="web-app", aud="other"), "not meant for this application")


@pytest.mark.parametrize("sub", ["", 123, None, ["alice"], "x" * 256])
def test_bad_subject_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier, sub: Any) -> None:
    token = idp.mint(sub, now=NOW)  # None leaves the claim out
    reject(verifier, token, "subject is missing or invalid")


def test_subject_of_255_characters_is_accepted(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    claims = verifier.verify(idp.mint("x" * 255, now=NOW), now=NOW)
    assert claims is not None and len(claims["sub"]) == 255


# ----------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("token", [None, 123, b"a.b.c", ["a", "b", "c"]])
def test_non_string_token_is_rejected(verifier: OIDCVerifier, token: Any) -> None:
    reject(verifier, token, "malformed")


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "a..c", ".b.c", "a!.b.c", "a.b c.d", "é.b.c", "a.b.c\n"],
)
def test_not_three_base64url_segments_is_rejected(verifier: OIDCVerifier, token: str) -> None:
    reject(verifier, token, "malformed")


def test_oversized_token_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    token = idp.mint(now=NOW, padding="x" * 20_000)
    reject(verifier, token, "too large")
    small = OIDCVerifier(idp.issuer_config(max_token_bytes=1024))
    reject(small, idp.mint(now=NOW, padding="x" * 800), "too large")
    assert small.verify(idp.mint(now=NOW), now=NOW) is not None


@pytest.mark.parametrize("payload", [["a", "list"], "a string", 42, None])
def test_non_object_payload_is_rejected(
    idp: LocalIssuer, verifier: OIDCVerifier, payload: Any
) -> None:
    token = sign_raw({"alg": "RS256", "kid": idp.current_kid}, payload, idp.private_key())
    err = reject(verifier, token, "malformed")
    assert "not an object" in err.detail


def test_non_object_header_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    token = sign_raw(["RS256"], claims_for(idp), idp.private_key())
    reject(verifier, token, "malformed")


@pytest.mark.parametrize(
    "raw",
    [b'{"sub":"alice","sub":"admin"}', b"not json", b"\xff\xfe", b"[" * 3000 + b"]" * 3000],
)
def test_bad_payload_json_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier, raw: bytes) -> None:
    token = sign_raw({"alg": "RS256", "kid": idp.current_kid}, raw, idp.private_key())
    reject(verifier, token, "malformed")


def test_non_canonical_base64_is_rejected(idp: LocalIssuer, verifier: OIDCVerifier) -> None:
    header, payload, signature = idp.mint(now=NOW).split(".")
    # flip unused low bits of the last character: decodes to the same bytes, different text
    if len(payload) % 4 in (2, 3):
        last = payload[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        twin = alphabet[alphabet.index(last) ^ 1]
        reject(verifier, f"{header}.{payload[:-1]}{twin}.{signature}", "malformed|signature")
    reject(verifier, f"{header}.{payload}==.{signature}", "malformed")


# ----------------------------------------------------------------------------- static keys


def test_static_pem_key_verifies(idp: LocalIssuer) -> None:
    config = IssuerConfig(
        issuer=idp.issuer, audiences=(idp.audience,), static_keys=(idp.public_key_pem().decode(),)
    )
    verifier = OIDCVerifier(config)
    assert verifier.jwks is None
    assert verifier.verify(idp.mint(now=NOW), now=NOW) is not None
    assert verifier.verify(idp.mint(now=NOW, headers={"kid": None}), now=NOW) is not None
    reject(verifier, sign_raw({"alg": "RS256"}, claims_for(idp), rsa_key()), "signature is invalid")


def test_static_jwk_and_jwks_strings_verify(idp: LocalIssuer, es_idp: LocalIssuer) -> None:
    jwk = json.dumps(idp.public_jwk())
    jwks = json.dumps({"keys": [es_idp.public_jwk()]})
    config = IssuerConfig(
        issuer="https://static.example",
        audiences=("lockkit-test",),
        static_keys=(jwk, jwks),
        algorithms=("RS256", "ES256"),
    )
    verifier = OIDCVerifier(config)
    rsa_token = idp.mint(now=NOW, iss="https://static.example")
    es_token = es_idp.mint(now=NOW, iss="https://static.example")
    assert verifier.verify(rsa_token, now=NOW) is not None
    assert verifier.verify(es_token, now=NOW) is not None
    reject(verifier, idp.mint(now=NOW, iss="https://static.example", headers={"kid": "x"}), "not known")
    reject(verifier, idp.mint(now=NOW, iss="https://static.example", headers={"kid": None}), "no key id")


def test_static_certificate_verifies(idp: LocalIssuer) -> None:
    key = idp.private_key()
    assert isinstance(key, rsa.RSAPrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lockkit test")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    config = IssuerConfig(
        issuer=idp.issuer,
        audiences=(idp.audience,),
        static_keys=(cert.public_bytes(serialization.Encoding.PEM).decode(),),
    )
    assert OIDCVerifier(config).verify(idp.mint(now=NOW), now=NOW) is not None


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("not a key", "not a PEM public key"),
        ("{not json", "not valid JWK/JWKS JSON"),
        ('{"keys": []}', "non-empty 'keys' list"),
        ('{"kty": "oct", "k": "c2VjcmV0"}', "not a usable public signing key"),
    ],
)
def test_bad_static_keys_fail_at_configuration(source: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        IssuerConfig(issuer="https://i", audiences=("a",), static_keys=(source,))


def test_private_or_weak_static_keys_are_refused(idp: LocalIssuer) -> None:
    with pytest.raises(ConfigurationError, match="never configure a private key"):
        IssuerConfig("https://i", audiences=("a",), static_keys=(idp.private_key_pem().decode(),))
    with pytest.raises(ConfigurationError, match="at least 2048 bits"):
        IssuerConfig("https://i", audiences=("a",), static_keys=(pem(rsa_key(1024)),))


# ----------------------------------------------------------------------------- configuration


def test_config_defaults() -> None:
    config = IssuerConfig("https://id.example", audiences=("app",), jwks_uri="https://id.example/jwks")
    assert config.algorithms == ("RS256",)
    assert config.leeway == 5.0
    assert config.identity_namespace == "https://id.example"
    assert config.max_token_bytes == 16384
    assert ALLOWED_ALGORITHMS >= set(config.algorithms)


BASE: dict[str, Any] = {"issuer": "https://id.example", "audiences": ("app",), "jwks_uri": "https://id.example/jwks"}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"issuer": ""}, "set issuer"),
        ({"issuer": "   "}, "set issuer"),
        ({"audiences": ()}, "set audience .*for issuer 'https://id.example'"),
        ({"audiences": "app"}, "audiences .* must be a tuple of strings"),
        ({"audiences": ("",)}, "non-empty strings"),
        ({"static_keys": ("x",)}, "exactly one key source"),
        ({"jwks_uri": None}, "exactly one key source"),
        ({"jwks_uri": "http://id.example/jwks"}, "https://"),
        ({"jwks_uri": "ftp://id.example/jwks"}, "https://"),
        ({"algorithms": ()}, "set algorithms"),
        ({"algorithms": ("none",)}, "not allowed"),
        ({"algorithms": ("HS256",)}, "not allowed"),
        ({"algorithms": ("RS256", "HS512")}, "not allowed"),
        ({"algorithms": ("rs256",)}, "not allowed"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": 301}, "leeway"),
        ({"leeway": float("nan")}, "leeway"),
        ({"leeway": True}, "leeway"),
        ({"namespace": ""}, "namespace"),
        ({"max_token_bytes": 0}, "max_token_bytes"),
        ({"max_token_bytes": 1.5}, "max_token_bytes"),
        ({"jwks_ttl": 0}, "jwks_ttl"),
        ({"jwks_min_refetch_interval": -1}, "jwks_min_refetch_interval"),
        ({"http_timeout": float("inf")}, "http_timeout"),
    ],
)
def test_invalid_config_names_what_to_fix(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        IssuerConfig(**{**BASE, **changes})


def test_loopback_http_jwks_is_allowed_and_lists_become_tuples() -> None:
    config = IssuerConfig(
        "http://127.0.0.1:9",
        audiences=["a", "b"],  # type: ignore[arg-type]
        jwks_uri="http://localhost:9/jwks",
    )
    assert config.audiences == ("a", "b")
    hash(config)  # frozen and hashable


def test_from_mapping_accepts_the_toml_shape(idp: LocalIssuer) -> None:
    config = IssuerConfig.from_mapping(
        {
            "issuer": "https://id.example",
            "audience": "app",
            "authorized_parties": ["web"],
            "jwks_uri": "https://id.example/jwks",
            "algorithms": ["RS256", "ES256"],
            "leeway": 10,
            "namespace": "corp",
        }
    )
    assert config == IssuerConfig(
        "https://id.example",
        audiences=("app",),
        authorized_parties=("web",),
        jwks_uri="https://id.example/jwks",
        algorithms=("RS256", "ES256"),
        leeway=10,
        namespace="corp",
    )
    static = IssuerConfig.from_mapping(
        {"issuer": "https://i", "audience": ["a", "b"], "keys": [idp.public_key_pem().decode()]}
    )
    assert static.audiences == ("a", "b") and len(static.static_keys) == 1


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"issuer": "https://i", "audience": "a", "jwks_uri": "https://i/j", "audiences": ["a"]}, "unknown .*audiences"),
        ({"issuer": "https://i", "audience": "a", "jwks_uri": "https://i/j", "verify": False}, "unknown"),
        ({"audience": "a", "jwks_uri": "https://i/j"}, "set issuer"),
        ({"issuer": "https://i", "jwks_uri": "https://i/j"}, "set audience"),
        ({"issuer": "https://i", "audience": "a", "jwks_uri": "https://i/j", "algorithms": "RS256"}, "algorithms .* list"),
        ({"issuer": "https://i", "audience": "a", "jwks_uri": 5}, "jwks_uri .* string"),
        ({"issuer": "https://i", "audience": "a", "jwks_uri": "https://i/j", "leeway": "5"}, "leeway"),
        ({"issuer": "https://i", "audience": "a", "jwks_uri": "https://i/j", "algorithms": ["none"]}, "not allowed"),
    ],
)
def test_from_mapping_rejects_bad_tables(mapping: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        IssuerConfig.from_mapping(mapping)


def test_from_mapping_rejects_non_mappings() -> None:
    with pytest.raises(ConfigurationError, match="mapping"):
        IssuerConfig.from_mapping(["issuer"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- URLs and slow or odd key sets


@pytest.mark.parametrize("uri", [
    "HTTP://127.0.0.1:9/jwks.json",  # judged as http on loopback, sent through HTTP_PROXY before
    " http://127.0.0.1:9/jwks.json",
    "http://idp.example\\@127.0.0.1/jwks.json",  # urllib3 connects to idp.example, in the clear
    "http://user:pw@127.0.0.1:9/jwks.json",
    "http://127.0.0.1:9/jw ks.json",
    "http://127.0.0.1:9/jwks\x7f.json",
    "https://idp.example/jwks\u00e9.json",
])
def test_urls_that_parsers_could_read_differently_are_refused(idp: LocalIssuer, uri: str) -> None:
    """Only URLs that lockkit's check and the HTTP client read alike may carry tokens or keys."""
    from lockkit.oidc import protected_url

    assert not protected_url(uri)
    with pytest.raises(ConfigurationError):
        idp.issuer_config(jwks_uri=uri)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/jwks.json", "http://[::1]:9/jwks.json", "http://localhost/x",
                                 "https://idp.example.com/.well-known/jwks.json", "https://IdP.Example.com/x"])
def test_plain_urls_stay_accepted(uri: str) -> None:
    from lockkit.oidc import protected_url

    assert protected_url(uri)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "HTTP://127.0.0.1:9/x"])
def test_plain_http_is_sent_without_the_environments_proxy(url: str) -> None:
    import requests

    from lockkit.oidc import http_client

    with http_client(url, None) as http:
        assert isinstance(http, requests.Session) and http.trust_env is False


def test_a_malformed_entry_never_throws_away_the_good_keys(fresh_idp: LocalIssuer) -> None:
    """An entry with a list or an object where a string belongs is skipped like other junk
    (it raised TypeError, and the whole key set was lost)."""
    other = RSAAlgorithm.to_jwk(rsa_key().public_key(), as_dict=True)
    for junk in ({**other, "alg": ["RS256"], "kid": "a"}, {**other, "alg": {"x": 1}, "kid": "b"},
                 {**other, "kty": ["RSA"], "kid": "c"}):
        assert _parse_jwk(junk) is None
        fresh_idp.publish_jwk(junk)
    verifier = OIDCVerifier(fresh_idp.issuer_config())
    assert verifier.verify(fresh_idp.mint(now=NOW), now=NOW) is not None


class _Body:
    """An HTTP server on loopback answering every request with ``body``, ``per_write`` bytes
    at a time with ``pause`` seconds between writes (a trickling server)."""

    def __init__(self, body: bytes, *, per_write: int = 65536, pause: float = 0.0) -> None:
        import threading
        import time as _time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), per_write):
                        self.wfile.write(body[i : i + per_write])
                        self.wfile.flush()
                        _time.sleep(pause)
                except OSError:
                    pass  # the client gave up

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_deeply_nested_jwks_is_provider_unavailable_not_a_crash(idp: LocalIssuer) -> None:
    with _Body(b"[" * 100_000 + b"]" * 100_000) as server:
        verifier = OIDCVerifier(idp.issuer_config(jwks_uri=server.url + "/jwks.json", http_timeout=2.0))
        with pytest.raises(ProviderUnavailableError):
            verifier.verify(idp.mint(now=NOW), now=NOW)


def test_a_trickling_jwks_is_cut_off_after_twice_the_timeout(idp: LocalIssuer) -> None:
    """The timeout bounds each read; a server sending a byte every 0.1 s (500 bytes: 50 s)
    is cut off at 2 x timeout instead of holding the request and every refresh behind it."""
    import time as _time

    body = json.dumps(idp.jwks()).encode().ljust(500)
    with _Body(body, per_write=1, pause=0.1) as server:
        verifier = OIDCVerifier(idp.issuer_config(jwks_uri=server.url + "/jwks.json", http_timeout=0.5))
        started = _time.monotonic()
        with pytest.raises(ProviderUnavailableError):
            verifier.verify(idp.mint(now=NOW), now=NOW)
        assert _time.monotonic() - started < 5


class _TricklingHead(_Listener):
    """A loopback server that sends a status line, then its headers one byte every 0.1 s
    (each byte within any read timeout, the whole head never; at most 10 s, so a client that
    is never cut off fails the test rather than hanging it)."""

    def __init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self.cut_off = threading.Event()  # the client went away mid-head
        super().__init__()
        self.url = self.issuer

    def _take(self, conn: Any) -> None:
        import threading

        threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: Any) -> None:
        import time as _time

        give_up = _time.monotonic() + 10
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self._stop.wait(0.1) and _time.monotonic() < give_up:
                    conn.sendall(b"X")
            except OSError:
                self.cut_off.set()

    def __enter__(self) -> _TricklingHead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.close()


def test_a_jwks_server_trickling_its_headers_is_cut_off(idp: LocalIssuer) -> None:
    """The read timeout bounds each read, and read_body bounds the body: the status line and
    headers are cut off at twice the timeout too (DeadlineAdapter), so a refresh, and every
    later one waiting behind it, is not held for as long as the server trickles."""
    import time as _time

    with _TricklingHead() as server:
        verifier = OIDCVerifier(idp.issuer_config(jwks_uri=server.url + "/jwks.json", http_timeout=0.5))
        started = _time.monotonic()
        with pytest.raises(ProviderUnavailableError) as info:
            verifier.verify(idp.mint(now=NOW), now=NOW)
        assert _time.monotonic() - started < 5
        assert info.value.detail.endswith("the answer's status line and headers took too long to arrive")
        assert server.cut_off.wait(5)  # the connection was shut down, not left open


def test_head_deadlines_share_one_watchdog_thread_and_release_every_socket(idp: LocalIssuer) -> None:
    """Many requests through deadline sessions start no thread each: one watchdog thread for
    the process, and once the answers are in it holds none of their sockets."""
    import threading

    from lockkit.oidc import _WATCHDOG, deadline_session

    with deadline_session(trust_env=False) as session:
        for _ in range(25):
            assert session.get(idp.jwks_uri, timeout=5).status_code == 200
        started: list[str] = []
        real_start = threading.Thread.start

        def start(thread: threading.Thread) -> None:
            started.append(thread.name)
            real_start(thread)

        threading.Thread.start = start  # type: ignore[method-assign]
        try:
            for _ in range(25):
                assert session.get(idp.jwks_uri, timeout=5).status_code == 200
        finally:
            threading.Thread.start = real_start  # type: ignore[method-assign]
        # the issuer's server starts a handler per connection; lockkit starts nothing
        assert [name for name in started if "process_request_thread" not in name] == []
    assert [t.name for t in threading.enumerate()].count("lockkit-head-deadline") == 1
    with _WATCHDOG._cond:
        assert all(entry[2].sock is None for entry in _WATCHDOG._heap)


def test_many_disarmed_deadlines_do_not_pile_up() -> None:
    """Requests answered long before their deadline leave entries that only the deadline
    would clear; the heap is rebuilt without them once they are most of it."""
    import socket as _socket

    from lockkit.oidc import _Watchdog

    dog = _Watchdog()
    far = _time_now() + 3600
    with _socket.socket() as sock:
        for _ in range(5000):
            assert dog.disarm(dog.arm(far, sock)) is False
        assert len(dog._heap) <= 2 * _Watchdog.COMPACT_AT + 2
        kept = dog.arm(far, sock)  # an armed entry survives every rebuild
        for _ in range(3000):
            dog.disarm(dog.arm(far, sock))
        assert any(entry[2] is kept for entry in dog._heap) and kept.sock is sock
        assert dog.disarm(kept) is False


def test_the_watchdog_survives_what_it_cannot_shut_down_and_unwraps_tls_in_tls() -> None:
    """An entry whose socket is a TLS-in-TLS wrapper (urllib3's SSLTransport, for HTTPS
    through an HTTPS proxy) is cut at the socket it wraps; one it cannot shut down at all
    does not stop the thread, and the deadlines after it are still kept."""
    import socket as _socket
    import time as _time

    from lockkit.oidc import _Watchdog

    class Wrapper:  # holds the socket it wraps as .socket, like SSLTransport
        def __init__(self, sock: _socket.socket) -> None:
            self.socket = sock

    dog = _Watchdog()
    a, b = _socket.socketpair()
    c, d = _socket.socketpair()
    with a, b, c, d:
        odd = dog.arm(_time_now(), object())          # nothing to shut down
        wrapped = dog.arm(_time_now(), Wrapper(a))    # the wrapped socket is shut down
        later = dog.arm(_time_now() + 0.3, c)         # kept after both
        give_up = _time.monotonic() + 5
        while not later.fired and _time.monotonic() < give_up:
            _time.sleep(0.02)  # polling the watchdog thread
        assert odd.fired and wrapped.fired and later.fired
        assert a.recv(1) == b"" and c.recv(1) == b""  # both shut down: reads return at once
        assert dog._thread is not None and dog._thread.is_alive()


def test_a_timeout_that_is_not_finite_sets_no_head_deadline() -> None:
    """A NaN deadline would sit at the head of the heap, never due, and hold back every other
    request's: a NaN or infinite timeout gives no head deadline, and the watchdog refuses one."""
    import math
    import socket as _socket

    from lockkit.oidc import _head_budget, _Watchdog

    nan, inf = math.nan, math.inf
    for timeout in (nan, inf, (1, nan), (nan, 1), (1, inf)):
        assert _head_budget(timeout) is None, timeout
    assert _head_budget((1, 2)) == 5.0 and _head_budget(1.5) == 3.0 and _head_budget(None) is None
    with _socket.socket() as sock, pytest.raises(ValueError):
        _Watchdog().arm(nan, sock)


def test_an_interrupted_wait_for_a_head_leaves_nothing_armed() -> None:
    """Whatever ends the wait for an answer's head, a KeyboardInterrupt too, the socket is
    no longer watched afterwards."""
    import socket as _socket

    from lockkit.oidc import _HEAD_BY, _WATCHDOG, _HeadDeadline

    class Interrupted:
        def getresponse(self) -> Any:
            raise KeyboardInterrupt

    class Connection(_HeadDeadline, Interrupted):
        pass

    with _socket.socket() as sock:
        conn = Connection()
        conn.sock = sock
        token = _HEAD_BY.set(_time_now() + 60)
        try:
            with pytest.raises(KeyboardInterrupt):
                conn.getresponse()
        finally:
            _HEAD_BY.reset(token)
        with _WATCHDOG._cond:
            assert all(entry[2].sock is not sock for entry in _WATCHDOG._heap)


def _time_now() -> float:
    import time as _time

    return _time.monotonic()


def test_a_forked_process_cuts_off_a_trickling_head_too(idp: LocalIssuer, tmp_path: Path) -> None:
    """A worker forked while the watchdog's lock was held (a pre-forking server forks at any
    moment) gets its own watchdog: its requests are cut off at their deadline, not hung."""
    import os
    import threading
    import time as _time
    import warnings

    from lockkit.oidc import _WATCHDOG, deadline_session

    report = tmp_path / "child.txt"
    with deadline_session(trust_env=False) as session:  # the parent's watchdog thread is running
        assert session.get(idp.jwks_uri, timeout=5).status_code == 200
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another thread holds the watchdog's lock across the fork
        with _WATCHDOG._cond:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    with _TricklingHead() as server:
        pid = -1
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns about forking a threaded process: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        finally:
            if pid != 0:
                release.set()
                holder.join(5)
        if pid == 0:  # the child: reports by exit status, and why in a file
            code = 3
            try:
                with deadline_session(trust_env=False) as child:
                    child.get(server.url + "/x", timeout=0.25)
                code = 1  # answered: not expected
            except BaseException as err:
                code = 0 if "headers took too long" in str(err) else 2
                report.write_text(repr(err))
            finally:
                os._exit(code)
        give_up = _time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if _time.monotonic() > give_up:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung on the watchdog's lock")
            _time.sleep(0.05)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, report.read_text() if report.exists() else "")


def test_every_session_lockkit_makes_cuts_off_a_trickling_head() -> None:
    """The sessions lockkit and its providers create themselves carry DeadlineAdapter: the
    direct and proxied ones for JWKS, discovery and CTS, OpenBao's, Clerk's Backend API's and
    the OIDC provider's token-endpoint session (a caller's own session is used as given)."""
    from lockkit.config import OpenBaoConfig
    from lockkit.keys.openbao import OpenBaoHTTP
    from lockkit.oidc import DeadlineAdapter, http_client
    from lockkit_clerk import _backend_api_session
    from lockkit_oidc import _TokenEndpointSession

    sessions = [OpenBaoHTTP(OpenBaoConfig(addr="http://127.0.0.1:8200"))._session,
                _backend_api_session("sk_test_x", "https://api.clerk.com"), _TokenEndpointSession("client")]
    with http_client("http://127.0.0.1:1/x", None) as direct, http_client("https://idp.example/x", None) as proxied:
        sessions += [direct, proxied]
        assert (direct.trust_env, proxied.trust_env) == (False, True)
    for session in sessions:
        for scheme in ("http://x", "https://x"):
            assert isinstance(session.get_adapter(scheme), DeadlineAdapter), (session, scheme)


@pytest.mark.parametrize("where", [0, 10, -1])
def test_a_token_that_is_not_ascii_is_invalid_not_a_crash(
    idp: LocalIssuer, verifier: OIDCVerifier, where: int
) -> None:
    token = idp.mint(now=NOW)
    for odd in ("\ud800", "\u00e9"):
        bad = token[:where] + odd + token[where:] if where >= 0 else token + odd
        reject(verifier, bad, "malformed")
