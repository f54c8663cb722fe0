from __future__ import annotations

import time

import jwt
import pytest

from lockkit import CtsTokenError, LockContextError
from lockkit.cts import CtsUnavailableError
from lockkit.cts.embedded import CTS_ISSUER, EmbeddedTokenService, normalise_scopes
from lockkit.keys.keyring import Keyring
from lockkit.oidc import OIDCVerifier
from lockkit.testing import LocalIssuer

from .conftest import WORKSPACE


def test_minted_token_carries_identity(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    now = time.time()
    tok = token_service.authorize(idp.mint("alice", scope="notes:read notes:write", org_id="acme", secret="x"), now=now)
    claims = token_service.verifier().verify(tok.access_token, now=now)
    assert claims["iss"] == CTS_ISSUER and claims["aud"] == WORKSPACE
    assert claims["sub"] == "alice" and claims["idp"] == idp.issuer
    assert claims["scopes"] == ["notes:read", "notes:write"]
    assert claims["ctx"] == {"org_id": "acme"}  # only configured claims are carried
    assert tok.expiry == int(now) + 900
    assert jwt.get_unverified_header(tok.access_token)["alg"] == "EdDSA"


def test_lifetime_is_configurable(idp: LocalIssuer, keyring: Keyring) -> None:
    svc = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=keyring,
                               verifiers=[OIDCVerifier(idp.issuer_config())], lifetime=60)
    now = time.time()
    assert svc.authorize(idp.mint("a"), now=now).expiry == int(now) + 60


def test_a_token_too_large_to_verify_is_never_minted(idp: LocalIssuer, keyring: Keyring) -> None:
    """Verifiers refuse CTS tokens over their size limit: minting one would hand out a token
    every key service calls "malformed". The exchange fails instead, naming the claim."""
    svc = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=keyring,
                               verifiers=[OIDCVerifier(idp.issuer_config())], claims=("groups",))
    with pytest.raises(CtsTokenError, match="over the 8192-byte limit: the claim 'groups'"):
        svc.authorize(idp.mint("alice", groups=[f"group-{i:04d}" for i in range(600)]))
    ok = svc.authorize(idp.mint("alice", groups=["a", "b"]))
    assert svc.verifier().verify(ok.access_token)["ctx"] == {"groups": ["a", "b"]}


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [({"scope": "b a a"}, ["a", "b"]), ({"scp": ["x", "y"]}, ["x", "y"]), ({"scopes": "s"}, ["s"]), ({}, [])],
)
def test_scope_normalisation(claims: dict[str, object], scopes: list[str]) -> None:
    assert normalise_scopes(claims) == scopes


def test_rejected_jwt_is_cts_token_error(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    with pytest.raises(CtsTokenError, match="rejected by CTS"):
        token_service.authorize(idp.mint("a", aud="other-app"))
    with pytest.raises(CtsTokenError, match="rejected by CTS"):
        token_service.authorize("not-a-jwt")


def test_no_trusted_issuer_explains(keyring: Keyring) -> None:
    svc = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=keyring, verifiers=[])
    with pytest.raises(CtsTokenError, match="LOCKKIT_TRUSTED_ISSUER"):
        svc.authorize("a.b.c")


def test_jwks_down_is_unavailable(keyring: Keyring) -> None:
    with LocalIssuer() as down:
        svc = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=keyring,
                                   verifiers=[OIDCVerifier(down.issuer_config())])
        token = down.mint("a")
        down.set_available(False)
        with pytest.raises(CtsUnavailableError) as info:
            svc.authorize(token)
        assert info.value.failure_type == "CtsTokenError"


def test_verifier_caches_until_expiry(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    now = time.time()
    tok = token_service.authorize(idp.mint("a"), now=now)
    v = token_service.verifier()
    for _ in range(5):
        v.verify(tok.access_token, now=now)
    assert v.verifications == 1
    with pytest.raises(LockContextError, match="Call identify again"):
        v.verify(tok.access_token, now=tok.expiry + 1)


def test_token_from_another_workspace_is_rejected(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    other = EmbeddedTokenService(workspace_crn="crn:local:ws-other", keyring=Keyring.generate("crn:local:ws-other"),
                                 verifiers=[OIDCVerifier(idp.issuer_config())])
    tok = other.authorize(idp.mint("alice"))
    with pytest.raises(LockContextError, match="rejected"):
        token_service.verifier().verify(tok.access_token)


def test_jwks_document_verifies_tokens(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    tok = token_service.authorize(idp.mint("alice"))
    jwks = jwt.PyJWKSet.from_dict(token_service.jwks())
    kid = jwt.get_unverified_header(tok.access_token)["kid"]
    claims = jwt.decode(tok.access_token, jwks[kid].key, algorithms=["EdDSA"], audience=WORKSPACE)
    assert claims["sub"] == "alice"
    assert all(k["kty"] == "OKP" and "d" not in k for k in token_service.jwks()["keys"])
