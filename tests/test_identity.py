from __future__ import annotations

import pickle

import pytest

from lockkit import CtsToken, CtsTokenError, LockContext, LockContextError
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.testing import LocalIssuer


def test_cts_token_wire_shape_and_redaction() -> None:
    tok = CtsToken.from_dict({"accessToken": "secret-token-value", "expiry": 1900000000})
    assert tok.to_dict() == {"accessToken": "secret-token-value", "expiry": 1900000000}
    assert "secret" not in repr(tok) and "secret" not in str(tok)
    with pytest.raises(TypeError, match="pickling"):
        pickle.dumps(tok)
    assert tok == CtsToken("secret-token-value", 1900000000) != CtsToken("other", 1900000000)


@pytest.mark.parametrize(
    "bad", [{}, {"accessToken": "x"}, {"accessToken": "", "expiry": 1}, {"accessToken": "x", "expiry": "soon"},
            {"accessToken": "x", "expiry": True}, {"accessToken": 5, "expiry": 1}, ["x", 1]],
)
def test_cts_token_from_bad_dict(bad: object) -> None:
    with pytest.raises(CtsTokenError):
        CtsToken.from_dict(bad)  # type: ignore[arg-type]


def test_expiry_checks_take_now() -> None:
    tok = CtsToken("t", 1000)
    assert not tok.is_expired(now=999) and tok.is_expired(now=1000)
    assert tok.is_expired(now=950, margin=60)


def test_lock_context_claim_forms() -> None:
    assert LockContext().identity_claim == ("sub",)
    assert LockContext(identity_claim=("sub", "scopes")).identity_claim == ("sub", "scopes")
    assert LockContext(identity_claim="org_id").identity_claim == ("org_id",)
    assert LockContext(context={"identityClaim": ["sub", "scopes"]}).identity_claim == ("sub", "scopes")
    for bad in ((), ("sub", "sub"), ("bad claim",), ("",)):
        with pytest.raises(LockContextError):
            LockContext(identity_claim=bad)
    with pytest.raises(LockContextError):
        LockContext(context={"identity": ["sub"]})
    with pytest.raises(LockContextError):
        LockContext(identity_claim=("sub",), context={"identityClaim": ["sub"]})


def test_lock_context_from_token_does_not_exchange(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    tok = token_service.authorize(idp.mint("alice"))
    calls = token_service.calls
    lc = LockContext(cts_token=tok.to_dict())
    assert lc.cts_token == tok and lc.require_token() is lc.cts_token
    assert token_service.calls == calls
    assert "identified" in repr(lc) and tok.access_token not in repr(lc)
    with pytest.raises(TypeError):
        pickle.dumps(lc)


def test_with_token_keeps_the_claims_and_service(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    template = LockContext(identity_claim=("sub", "scopes"), token_service=token_service)
    tok = token_service.authorize(idp.mint("alice"))
    calls = token_service.calls
    bound = template.with_token(tok)
    assert bound is not template and template.cts_token is None  # the template is unchanged
    assert bound.identity_claim == ("sub", "scopes") and bound.require_token() is tok
    assert token_service.calls == calls  # no exchange
    again = bound.identify(idp.mint("alice")).unwrap()  # the same token service exchanges
    assert token_service.calls == calls + 1 and again.identity_claim == ("sub", "scopes")
    with pytest.raises(TypeError):
        template.with_token({"accessToken": "t", "expiry": 1})  # type: ignore[arg-type]


def test_require_token_errors() -> None:
    with pytest.raises(LockContextError, match="Call identify first"):
        LockContext().require_token()
    with pytest.raises(LockContextError, match="The CTS token has expired. Call identify again"):
        LockContext(cts_token=CtsToken("t", 1000)).require_token(now=2000)


def test_identify_failure_shape(token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    res = LockContext(token_service=token_service).identify(idp.mint("alice", ttl=-3600))
    assert res.failure is not None and res.failure.type == "CtsTokenError"
    assert "expired" in res.failure.message
    ok = LockContext(identity_claim=("sub", "scopes"), token_service=token_service).identify(idp.mint("alice"))
    assert ok.data is not None and ok.data.identity_claim == ("sub", "scopes") and ok.data.cts_token is not None
