"""Tests for lockkit.testing.LocalIssuer: a real issuer on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from lockkit.errors import ConfigurationError
from lockkit.oidc import IssuerConfig, OIDCVerifier
from lockkit.testing import LocalIssuer

NOW = 1_700_000_000.0


@pytest.fixture
def idp() -> Iterator[LocalIssuer]:
    with LocalIssuer() as issuer:
        yield issuer


def decode(idp: LocalIssuer, token: str, kid: str | None = None) -> dict[str, Any]:
    """Check the signature with the issuer's public key, nothing else."""
    key = load_pem_public_key(idp.public_key_pem(kid))
    return jwt.decode(
        token,
        key,  # type: ignore[arg-type]
        algorithms=[idp.algorithm],
        options={"verify_exp": False, "verify_iat": False, "verify_aud": False},
    )


def get(url: str) -> requests.Response:
    with requests.get(url, timeout=5) as response:
        response.content  # read the body before the connection closes
        return response


# ----------------------------------------------------------------------------- lifecycle


def test_context_manager_serves_on_loopback_and_closes() -> None:
    with LocalIssuer() as idp:
        assert idp.issuer.startswith("http://127.0.0.1:")
        assert idp.jwks_uri == idp.issuer + "/.well-known/jwks.json"
        assert get(idp.jwks_uri).status_code == 200
        uri = idp.jwks_uri
    with pytest.raises(requests.ConnectionError):
        get(uri)


def test_start_and_close_are_idempotent() -> None:
    idp = LocalIssuer()
    assert idp.start() is idp.start()
    idp.close()
    idp.close()
    with pytest.raises(RuntimeError, match="not started"):
        idp.jwks_uri


def test_urls_need_a_started_server_unless_issuer_is_given() -> None:
    idp = LocalIssuer()
    with pytest.raises(RuntimeError, match="context manager or call start"):
        idp.issuer
    named = LocalIssuer(issuer="https://idp.test")
    assert named.issuer == "https://idp.test"
    assert "not started" in repr(idp)


def test_explicit_issuer_is_used_in_tokens_and_discovery() -> None:
    with LocalIssuer(issuer="https://idp.test", audience="api") as idp:
        claims = decode(idp, idp.mint(now=NOW))
        assert claims["iss"] == "https://idp.test" and claims["aud"] == "api"
        discovery = get(idp.base_url + "/.well-known/openid-configuration").json()
        assert discovery["issuer"] == "https://idp.test"
        assert discovery["jwks_uri"] == idp.jwks_uri


def test_unsupported_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="supports"):
        LocalIssuer(algorithm="HS256")


# ----------------------------------------------------------------------------- HTTP


def test_jwks_publishes_public_keys_with_kid_alg_use(idp: LocalIssuer) -> None:
    response = get(idp.jwks_uri)
    assert response.headers["Content-Type"] == "application/json"
    keys = response.json()["keys"]
    assert [key["kid"] for key in keys] == [idp.current_kid]
    (key,) = keys
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
    assert "d" not in key and "p" not in key  # never private material
    assert idp.jwks_requests == 1


def test_discovery_document(idp: LocalIssuer) -> None:
    doc = get(idp.issuer + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == idp.issuer
    assert doc["jwks_uri"] == idp.jwks_uri
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert idp.jwks_requests == 0  # only JWKS requests are counted


def test_unknown_path_is_404(idp: LocalIssuer) -> None:
    assert get(idp.issuer + "/nope").status_code == 404


def test_server_does_not_log_requests(idp: LocalIssuer, capfd: pytest.CaptureFixture[str]) -> None:
    get(idp.jwks_uri)
    get(idp.issuer + "/nope")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_outage_answers_503_until_available_again(idp: LocalIssuer) -> None:
    idp.set_available(False)
    assert get(idp.jwks_uri).status_code == 503
    assert get(idp.issuer + "/.well-known/openid-configuration").status_code == 503
    idp.set_available(True)
    assert get(idp.jwks_uri).status_code == 200
    assert idp.jwks_requests == 2


# ----------------------------------------------------------------------------- minting


def test_mint_sets_standard_claims_without_nbf(idp: LocalIssuer) -> None:
    token = idp.mint("alice", now=NOW, ttl=120)
    claims = decode(idp, token)
    assert claims == {
        "iss": idp.issuer,
        "aud": "lockkit-test",
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW + 120),
    }
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "kid": idp.current_kid, "typ": "JWT"}


def test_mint_extra_claims_override_and_omit(idp: LocalIssuer) -> None:
    claims = decode(idp, idp.mint(now=NOW, aud=["a", "b"], org_id="acme", omit=("iat", "exp")))
    assert claims["aud"] == ["a", "b"] and claims["org_id"] == "acme"
    assert "iat" not in claims and "exp" not in claims
    assert "sub" not in decode(idp, idp.mint(None, now=NOW))


def test_mint_headers_add_override_and_remove(idp: LocalIssuer) -> None:
    header = jwt.get_unverified_header(idp.mint(now=NOW, headers={"kid": "other", "x-test": 1}))
    assert header["kid"] == "other" and header["x-test"] == 1
    assert "kid" not in jwt.get_unverified_header(idp.mint(now=NOW, headers={"kid": None}))


def test_mint_uses_the_real_clock_by_default(idp: LocalIssuer) -> None:
    verifier = OIDCVerifier(idp.issuer_config())
    claims = verifier.verify(idp.mint("dana"))
    assert claims is not None and claims["sub"] == "dana"


def test_mint_with_unknown_kid_is_an_error(idp: LocalIssuer) -> None:
    with pytest.raises(ValueError, match="no key"):
        idp.mint(kid="missing")


def test_es256_issuer() -> None:
    with LocalIssuer(algorithm="ES256") as idp:
        (key,) = get(idp.jwks_uri).json()["keys"]
        assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256"
        assert isinstance(idp.private_key(), ec.EllipticCurvePrivateKey)
        token = idp.mint(now=NOW)
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        assert decode(idp, token)["sub"] == "alice"
        assert OIDCVerifier(idp.issuer_config()).verify(token, now=NOW) is not None


# ----------------------------------------------------------------------------- keys


def test_rotate_keeps_old_keys_published(idp: LocalIssuer) -> None:
    first = idp.current_kid
    old_token = idp.mint(now=NOW)
    second = idp.rotate()
    assert second != first and idp.current_kid == second
    assert idp.published_kids == (first, second)
    assert [k["kid"] for k in get(idp.jwks_uri).json()["keys"]] == [first, second]
    new_token = idp.mint(now=NOW)
    assert jwt.get_unverified_header(new_token)["kid"] == second
    assert decode(idp, new_token, second)["sub"] == "alice"
    with pytest.raises(jwt.InvalidSignatureError):
        decode(idp, old_token, second)


def test_retire_removes_a_key_but_it_can_still_sign(idp: LocalIssuer) -> None:
    first = idp.current_kid
    idp.rotate()
    idp.retire(first)
    assert first not in [k["kid"] for k in get(idp.jwks_uri).json()["keys"]]
    token = idp.mint(now=NOW, kid=first)
    assert jwt.get_unverified_header(token)["kid"] == first
    assert decode(idp, token, first)["sub"] == "alice"


def test_retire_refuses_current_and_unknown_keys(idp: LocalIssuer) -> None:
    with pytest.raises(ValueError, match="rotate"):
        idp.retire(idp.current_kid)
    with pytest.raises(ValueError, match="not published"):
        idp.retire("nope")


def test_key_pems_round_trip(idp: LocalIssuer) -> None:
    private = load_pem_private_key(idp.private_key_pem(), password=None)
    public = load_pem_public_key(idp.public_key_pem())
    assert isinstance(private, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey)
    assert private.public_key().public_numbers() == public.public_numbers()
    assert public.key_size == 2048
    assert b"PRIVATE" not in idp.public_key_pem()


def test_publish_jwk_adds_an_entry_as_is(idp: LocalIssuer) -> None:
    idp.publish_jwk({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})
    keys = get(idp.jwks_uri).json()["keys"]
    assert keys[-1] == {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
    assert idp.public_jwk()["kid"] == idp.current_kid


# ----------------------------------------------------------------------------- config


def test_issuer_config_trusts_this_issuer(idp: LocalIssuer) -> None:
    config = idp.issuer_config()
    assert config == IssuerConfig(
        issuer=idp.issuer,
        audiences=("lockkit-test",),
        jwks_uri=idp.jwks_uri,
        algorithms=("RS256",),
    )
    claims = OIDCVerifier(config).verify(idp.mint("erin", now=NOW), now=NOW)
    assert claims is not None and claims["sub"] == "erin"


def test_issuer_config_overrides(idp: LocalIssuer) -> None:
    config = idp.issuer_config(leeway=0, namespace="dev", authorized_parties=("web",))
    assert config.leeway == 0 and config.identity_namespace == "dev"
    assert config.authorized_parties == ("web",)
    with pytest.raises(ConfigurationError, match="not allowed"):
        idp.issuer_config(algorithms=("HS256",))


# -- signed_in_client ------------------------------------------------------------------------


def test_signed_in_client_starts_in_the_steady_state() -> None:
    from lockkit.testing import signed_in_client

    from .flask_support import exchanges, json_of, make_app

    app = make_app()
    client = signed_in_client(app, "alice")
    assert exchanges(app) == 1  # the seeding request exchanged the token
    for _ in range(3):
        assert json_of(client.get("/api/me")) == {"sub": "alice"}
    written = client.post("/api/notes", json={"body": "hi"})
    assert written.status_code == 200
    read = client.post("/api/notes/read", json={"payload": json_of(written)["payload"]})
    assert json_of(read) == {"body": "hi"}
    assert exchanges(app) == 1  # the test's own requests made none
    bob = signed_in_client(app, "bob")
    assert bob.post("/api/notes/read", json={"payload": json_of(written)["payload"]}).status_code == 403


def test_signed_in_client_passes_claims_and_takes_any_accepted_token(idp: LocalIssuer) -> None:
    from lockkit.testing import signed_in_client

    from .flask_support import cookie_value, json_of, loopback_config, make_app, stored_cts

    app = make_app(LOCKKIT_IDENTITY_CLAIM=["sub", "scopes"])
    client = signed_in_client(app, "alice", scope="notes:read notes:write")
    assert client.get("/api/me").status_code == 200
    stored = stored_cts(app, cookie_value(client))
    assert stored is not None
    cts_claims = jwt.decode(stored["tok"], options={"verify_signature": False})
    assert cts_claims["sub"] == "alice" and sorted(cts_claims["scopes"]) == ["notes:read", "notes:write"]
    other = make_app(**loopback_config(idp))
    via_token = signed_in_client(other, token=idp.mint("carol", ttl=600))
    assert json_of(via_token.get("/api/me")) == {"sub": "carol"}


def test_signed_in_client_refuses_what_it_cannot_do(idp: LocalIssuer) -> None:
    from lockkit.testing import signed_in_client

    from .flask_support import loopback_config, make_app

    app = make_app()
    with pytest.raises(ValueError, match="not both"):
        signed_in_client(app)
    with pytest.raises(ValueError, match="not both"):
        signed_in_client(app, "alice", token="x")
    with pytest.raises(ValueError, match="claims go with sub"):
        signed_in_client(app, token=idp.mint("alice"), scope="x")
    with pytest.raises(RuntimeError, match="did not accept"):
        signed_in_client(app, token=idp.mint("alice"))  # this app does not trust the loopback issuer
    with pytest.raises(RuntimeError, match="needs the dev provider"):
        signed_in_client(make_app(**loopback_config(idp)), "alice")
