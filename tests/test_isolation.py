"""The rule that matters most: a value locked to one identity opens, and is found, only with
that identity. Every test here depends on ``client``/``key_service`` so it runs on every
key-service backend the ``backend`` fixture is parametrised with."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lockkit import (
    CtsToken,
    DecryptionError,
    EncryptedTable,
    Encryption,
    LockContext,
    LockContextError,
    Operation,
    matches,
)
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.identity import EXPIRED_MESSAGE
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.oidc import OIDCVerifier
from lockkit.testing import LocalIssuer

Identify = Callable[..., LockContext]

EMAILS = ["alice@example.com", "alice.work@example.com", "shared@example.com"]
MODELS = [
    {"id": 1, "email": "alice@example.com", "name": "Alice Liddell", "age": 30, "notes": {"k": 1}},
    {"id": 2, "email": "alice.work@example.com", "name": "Alice Work", "age": 31, "notes": [1, 2]},
]


def _sealed(op: Operation[dict[str, Any] | None]) -> dict[str, Any]:
    """The payload of an encrypt operation that must produce one."""
    payload = op.unwrap()
    assert payload is not None
    return payload


def _assert_failed(res: Any, failure_type: str, fragment: str | None = None) -> None:
    assert res.data is None
    assert res.failure is not None, "expected a failure"
    assert res.failure.type == failure_type, res.failure
    if fragment is not None:
        assert fragment.lower() in res.failure.message.lower(), res.failure.message


def _assert_every_item_failed(res: Any, failure_type: str, fragment: str | None = None) -> None:
    """A failure of the whole operation, or (bulk, per-item results) a failure on every item."""
    if res.failure is None and isinstance(res.data, list):
        assert res.data, "no items"
        for r in res.data:
            _assert_failed(r, failure_type, fragment)
    else:
        _assert_failed(res, failure_type, fragment)


class _Released:
    """Asserts that no key was released (no release() call got past verification)."""

    def __init__(self, key_service: LocalKeyService) -> None:
        self.ks = key_service
        self.calls = key_service.release_calls
        self.derivations = key_service.derivations

    def assert_none(self) -> None:
        assert self.ks.release_calls == self.calls
        assert self.ks.derivations == self.derivations


@pytest.fixture
def alice_data(client: Encryption, users: EncryptedTable, alice: LockContext) -> dict[str, Any]:
    """Alice's values, encrypted in every shape the client produces."""
    single = _sealed(client.encrypt(EMAILS[0], column=users.email, table=users).with_lock_context(alice))
    bulk = [
        r.unwrap() for r in client.bulk_encrypt(EMAILS, column=users.email, table=users).with_lock_context(alice).unwrap()
    ]
    model = client.encrypt_model(MODELS[0], users).with_lock_context(alice).unwrap()
    models = client.bulk_encrypt_models(MODELS, users).with_lock_context(alice).unwrap()
    return {"single": single, "bulk": bulk, "model": model, "models": models}


# -- the other user's lock context -----------------------------------------------------------


def test_alice_reads_her_own_values(client: Encryption, alice: LockContext, alice_data: dict[str, Any]) -> None:
    """The positive control for everything below."""
    assert client.decrypt(alice_data["single"]).with_lock_context(alice).unwrap() == EMAILS[0]
    assert [r.data for r in client.bulk_decrypt(alice_data["bulk"]).with_lock_context(alice).unwrap()] == EMAILS
    assert client.decrypt_model(alice_data["model"]).with_lock_context(alice).unwrap() == MODELS[0]
    assert client.bulk_decrypt_models(alice_data["models"]).with_lock_context(alice).unwrap() == MODELS


def test_bob_cannot_decrypt_alices_value(
    client: Encryption, bob: LockContext, alice_data: dict[str, Any], key_service: LocalKeyService
) -> None:
    res = client.decrypt(alice_data["single"]).with_lock_context(bob)
    _assert_failed(res, "DecryptionError", "locked to another identity")
    assert EMAILS[0] not in res.failure.message
    with pytest.raises(DecryptionError):
        res.unwrap()
    assert key_service.last_subject == "bob"  # the key service was asked, as bob, and said no


def test_bob_cannot_decrypt_alices_model(client: Encryption, users: EncryptedTable, bob: LockContext,
                                         alice_data: dict[str, Any]) -> None:
    for table in (None, users):
        res = client.decrypt_model(alice_data["model"], table).with_lock_context(bob)
        _assert_failed(res, "DecryptionError", "locked to another identity")


def test_bob_cannot_decrypt_any_item_of_alices_bulk(client: Encryption, bob: LockContext,
                                                    alice_data: dict[str, Any]) -> None:
    out = client.bulk_decrypt(alice_data["bulk"]).with_lock_context(bob).unwrap()
    assert len(out) == len(EMAILS)
    for r in out:
        _assert_failed(r, "DecryptionError", "locked to another identity")


def test_bob_cannot_decrypt_alices_bulk_models(client: Encryption, users: EncryptedTable, bob: LockContext,
                                               alice_data: dict[str, Any]) -> None:
    for table in (None, users):
        res = client.bulk_decrypt_models(alice_data["models"], table).with_lock_context(bob)
        _assert_failed(res, "DecryptionError", "locked to another identity")
    # nor one model at a time, nor one field at a time
    for model in alice_data["models"]:
        for field in ("email", "name", "age", "notes"):
            _assert_failed(client.decrypt(model[field]).with_lock_context(bob), "DecryptionError")


def test_bob_cannot_decrypt_alices_values_mixed_with_his_own(
    client: Encryption, users: EncryptedTable, bob: LockContext, alice_data: dict[str, Any]
) -> None:
    own = _sealed(client.encrypt("bob@example.com", column=users.email, table=users).with_lock_context(bob))
    out = client.bulk_decrypt([own, alice_data["single"], own]).with_lock_context(bob).unwrap()
    assert out[0].data == out[2].data == "bob@example.com"
    _assert_failed(out[1], "DecryptionError", "locked to another identity")


def test_alice_cannot_decrypt_bobs_value(client: Encryption, users: EncryptedTable, alice: LockContext,
                                         bob: LockContext) -> None:
    payload = _sealed(client.encrypt("bob@example.com", column=users.email, table=users).with_lock_context(bob))
    _assert_failed(client.decrypt(payload).with_lock_context(alice), "DecryptionError", "locked to another identity")
    assert client.decrypt(payload).with_lock_context(bob).unwrap() == "bob@example.com"


def test_bobs_search_terms_match_none_of_alices_payloads(
    client: Encryption, users: EncryptedTable, alice: LockContext, bob: LockContext, alice_data: dict[str, Any]
) -> None:
    payloads = [alice_data["single"], *alice_data["bulk"], *(m["email"] for m in alice_data["models"])]
    names = [m["name"] for m in alice_data["models"]]
    for value in EMAILS:
        for qt in ("equality", "match", None):
            bob_term = client.encrypt_query(value, column=users.email, table=users, query_type=qt)
            alice_term = client.encrypt_query(value, column=users.email, table=users, query_type=qt)
            b, a = bob_term.with_lock_context(bob).unwrap(), alice_term.with_lock_context(alice).unwrap()
            assert [matches(b, p) for p in payloads] == [False] * len(payloads)
            assert any(matches(a, p) for p in payloads)
            if qt == "equality":
                assert a["hm"] != b["hm"]
                assert sum(matches(a, p) for p in alice_data["bulk"]) == 1
    for word in ("alice", "liddell", "work"):
        b = client.encrypt_query(word, column="name", table=users).with_lock_context(bob).unwrap()
        a = client.encrypt_query(word, column="name", table=users).with_lock_context(alice).unwrap()
        assert [matches(b, p) for p in names] == [False, False]
        assert any(matches(a, p) for p in names)
        assert a["bf"] != b["bf"]


def test_bobs_bulk_search_terms_match_none_of_alices_payloads(
    client: Encryption, users: EncryptedTable, alice: LockContext, bob: LockContext, alice_data: dict[str, Any]
) -> None:
    """bulk_encrypt_query: one key release per column, bound to the lock context's identity
    like encrypt_query's; bob's terms match none of alice's payloads, alice's are hers."""
    payloads = [alice_data["single"], *alice_data["bulk"], *(m["email"] for m in alice_data["models"])]
    names = [m["name"] for m in alice_data["models"]]
    specs = [{"value": v, "column": users.email, "table": users, "query_type": qt}
             for v in EMAILS for qt in ("equality", "match", None)]
    specs += [{"value": w, "column": "name", "table": "users"} for w in ("alice", "liddell", "work")]
    b = [r.unwrap() for r in client.bulk_encrypt_query(specs).with_lock_context(bob).unwrap()]
    a = [r.unwrap() for r in client.bulk_encrypt_query(specs).with_lock_context(alice).unwrap()]
    one_by_one = [client.encrypt_query(s["value"], column=s["column"], table=s["table"], query_type=s.get("query_type"))
                  .with_lock_context(alice).unwrap() for s in specs]
    assert a == one_by_one
    n = 3 * len(EMAILS)
    assert not any(matches(t, p) for t in b[:n] for p in payloads)
    assert not any(matches(t, p) for t in b[n:] for p in names)
    assert all(any(matches(t, p) for p in payloads) for t in a[:n])
    assert all(any(matches(t, p) for p in names) for t in a[n:])
    assert all(x != y for x, y in zip(a, b))


def test_equality_term_differs_per_identity_for_the_same_value(
    client: Encryption, users: EncryptedTable, alice: LockContext, bob: LockContext
) -> None:
    def term(lc: LockContext) -> str:
        q = client.encrypt_query("same@example.com", column=users.email, table=users, query_type="equality")
        return str(q.with_lock_context(lc).unwrap()["hm"])

    assert term(alice) == term(alice)
    assert term(alice) != term(bob)
    a = _sealed(client.encrypt("same@example.com", column=users.email, table=users).with_lock_context(alice))
    b = _sealed(client.encrypt("same@example.com", column=users.email, table=users).with_lock_context(bob))
    assert a["hm"] != b["hm"] and a["hm"] == term(alice) and b["hm"] == term(bob)
    assert a["bf"] != b["bf"]


# -- no lock context ---------------------------------------------------------------------------


@pytest.mark.backends("local")  # OpenBao mode has no unlocked values; see test_openbao.py
def test_locked_values_need_a_lock_context(
    client: Encryption, users: EncryptedTable, alice_data: dict[str, Any], key_service: LocalKeyService
) -> None:
    released = _Released(key_service)
    _assert_failed(client.decrypt(alice_data["single"]).result(), "LockContextError", "with_lock_context")
    _assert_every_item_failed(client.bulk_decrypt(alice_data["bulk"]).result(), "LockContextError")
    for table in (None, users):
        _assert_failed(client.decrypt_model(alice_data["model"], table).result(), "LockContextError")
        _assert_failed(client.bulk_decrypt_models(alice_data["models"], table).result(), "LockContextError")
    released.assert_none()


@pytest.mark.backends("local")  # OpenBao mode has no unlocked values; see test_openbao.py
def test_unlocked_terms_match_none_of_alices_payloads(
    client: Encryption, users: EncryptedTable, alice_data: dict[str, Any]
) -> None:
    for qt in ("equality", "match"):
        term = client.encrypt_query(EMAILS[0], column=users.email, table=users, query_type=qt).unwrap()
        assert not any(matches(term, p) for p in alice_data["bulk"])


# -- a claim the token does not carry ----------------------------------------------------------


@pytest.fixture
def department(client: Encryption, identify: Identify) -> LockContext:
    """Alice, locking to ``department``: the IdP sends it, but the CTS does not copy it."""
    return identify("alice", identity_claim=("department",), department="sales")


def _encrypt_ops(client: Encryption, users: EncryptedTable) -> dict[str, Any]:
    return {
        "encrypt": client.encrypt("x@example.com", column=users.email, table=users),
        "bulk_encrypt": client.bulk_encrypt(["x@example.com", "y@example.com"], column=users.email, table=users),
        "encrypt_model": client.encrypt_model(MODELS[0], users),
        "bulk_encrypt_models": client.bulk_encrypt_models(MODELS, users),
        "encrypt_query_equality": client.encrypt_query("x", column=users.email, table=users, query_type="equality"),
        "encrypt_query_match": client.encrypt_query("xyz", column=users.email, table=users, query_type="match"),
        "bulk_encrypt_query": client.bulk_encrypt_query([{"value": "x", "column": users.email, "table": users},
                                                         {"value": "xyz", "column": "name", "table": users}]),
    }


@pytest.mark.backends("local")  # OpenBao mode has no claims other than sub; see test_openbao.py
def test_absent_claim_fails_every_encrypt_before_any_key_is_released(
    client: Encryption, users: EncryptedTable, department: LockContext, key_service: LocalKeyService
) -> None:
    for name, op in _encrypt_ops(client, users).items():
        released = _Released(key_service)
        res = op.with_lock_context(department)
        _assert_failed(res, "LockContextError", "department")
        with pytest.raises(LockContextError):
            res.unwrap()
        released.assert_none()
        assert name


@pytest.mark.backends("local")  # OpenBao mode has no claims other than sub; see test_openbao.py
def test_absent_claim_fails_decrypt_before_any_key_is_released(
    client: Encryption,
    users: EncryptedTable,
    idp: LocalIssuer,
    keyring: Keyring,
    key_service: LocalKeyService,
    department: LockContext,
) -> None:
    # a token service that does carry `department`, sharing the keyring (and so the key service)
    dept_cts = EmbeddedTokenService(
        workspace_crn=key_service.workspace_crn,
        keyring=keyring,
        verifiers=[OIDCVerifier(idp.issuer_config())],
        claims=("org_id", "department"),
    )

    def dept(sub: str, value: str) -> LockContext:
        lc = LockContext(identity_claim=("department",), token_service=dept_cts)
        return lc.identify(idp.mint(sub, department=value)).unwrap()

    sales = dept("alice", "sales")
    payload = _sealed(client.encrypt("q3 numbers", column=users.email, table=users).with_lock_context(sales))
    model = client.encrypt_model(MODELS[0], users).with_lock_context(sales).unwrap()
    assert payload["lc"] == ["department"]
    assert client.decrypt(payload).with_lock_context(dept("carol", "sales")).unwrap() == "q3 numbers"
    _assert_failed(client.decrypt(payload).with_lock_context(dept("dave", "legal")), "DecryptionError")

    released = _Released(key_service)
    _assert_failed(client.decrypt(payload).with_lock_context(department), "LockContextError", "department")
    _assert_every_item_failed(
        client.bulk_decrypt([payload, payload]).with_lock_context(department).result(), "LockContextError", "department"
    )
    _assert_failed(client.decrypt_model(model, users).with_lock_context(department), "LockContextError")
    _assert_failed(client.bulk_decrypt_models([model]).with_lock_context(department), "LockContextError")
    released.assert_none()


# -- expired CTS token -------------------------------------------------------------------------


@pytest.fixture
def expired_token(idp: LocalIssuer, token_service: EmbeddedTokenService) -> CtsToken:
    then = time.time() - 3600
    token = token_service.authorize(idp.mint("alice", now=then), now=then)
    assert token.is_expired()
    return token


def _all_ops(client: Encryption, users: EncryptedTable, alice_data: dict[str, Any]) -> dict[str, Any]:
    return {
        **_encrypt_ops(client, users),
        "decrypt": client.decrypt(alice_data["single"]),
        "bulk_decrypt": client.bulk_decrypt(alice_data["bulk"]),
        "decrypt_model": client.decrypt_model(alice_data["model"]),
        "bulk_decrypt_models": client.bulk_decrypt_models(alice_data["models"]),
    }


def _assert_expired(res: Any) -> None:
    _assert_every_item_failed(res, "LockContextError", "Call identify again")


@pytest.mark.backends("local")  # OpenBao mode has no minting CTS tokens in the past; see test_openbao.py
def test_expired_cts_token_fails_every_operation_before_any_key_is_released(
    client: Encryption,
    users: EncryptedTable,
    alice_data: dict[str, Any],
    expired_token: CtsToken,
    key_service: LocalKeyService,
) -> None:
    lc = LockContext(cts_token=expired_token)
    for op in _all_ops(client, users, alice_data).values():
        released = _Released(key_service)
        _assert_expired(op.with_lock_context(lc).result())
        released.assert_none()


@pytest.mark.backends("local")  # OpenBao mode has no minting CTS tokens in the past; see test_openbao.py
def test_key_service_checks_expiry_itself(
    client: Encryption,
    users: EncryptedTable,
    alice_data: dict[str, Any],
    expired_token: CtsToken,
    key_service: LocalKeyService,
) -> None:
    """A client that lies about the expiry (``CtsToken.expiry`` is not signed) gets nothing."""
    lying = LockContext(cts_token=CtsToken(expired_token.access_token, time.time() + 600))
    assert lying.require_token() is not None
    for op in _all_ops(client, users, alice_data).values():
        released = _Released(key_service)
        _assert_expired(op.with_lock_context(lying).result())
        released.assert_none()


def test_expired_message_is_the_reference_message(expired_token: CtsToken) -> None:
    with pytest.raises(LockContextError) as err:
        LockContext(cts_token=expired_token).require_token()
    assert err.value.message == EXPIRED_MESSAGE and "Call identify again" in EXPIRED_MESSAGE


# -- claim names that differ from the payload's ------------------------------------------------


@pytest.mark.parametrize(
    ("encrypt_claims", "decrypt_claims"),
    [
        (("sub",), ("sub", "scopes")),
        (("sub", "scopes"), ("sub",)),
        (("sub", "scopes"), ("scopes", "sub")),
        (("sub",), ("org_id",)),
        (("org_id",), ("sub",)),
    ],
)
@pytest.mark.backends("local")  # OpenBao mode has no claims other than sub; see test_openbao.py
def test_claim_names_must_match_the_payload(
    client: Encryption,
    users: EncryptedTable,
    identify: Identify,
    key_service: LocalKeyService,
    encrypt_claims: tuple[str, ...],
    decrypt_claims: tuple[str, ...],
) -> None:
    writer = identify("alice", identity_claim=encrypt_claims, org_id="acme", scope="read")
    reader = identify("alice", identity_claim=decrypt_claims, org_id="acme", scope="read")
    payload = _sealed(client.encrypt("v", column=users.email, table=users).with_lock_context(writer))
    model = client.encrypt_model({"email": "v"}, users).with_lock_context(writer).unwrap()
    assert payload["lc"] == list(encrypt_claims)
    released = _Released(key_service)
    _assert_failed(client.decrypt(payload).with_lock_context(reader), "LockContextError", "claims")
    _assert_every_item_failed(client.bulk_decrypt([payload]).with_lock_context(reader).result(), "LockContextError")
    _assert_failed(client.decrypt_model(model).with_lock_context(reader), "LockContextError")
    _assert_failed(client.bulk_decrypt_models([model], users).with_lock_context(reader), "LockContextError")
    released.assert_none()
    assert client.decrypt(payload).with_lock_context(writer).unwrap() == "v"


# -- identity namespaces -----------------------------------------------------------------------


@pytest.fixture
def idp2() -> Iterator[LocalIssuer]:
    """A second, independent issuer (another port, so another ``iss``)."""
    with LocalIssuer(audience="lockkit-test") as issuer:
        yield issuer


def _two_issuer_cts(key_service: LocalKeyService, keyring: Keyring, *issuers: LocalIssuer,
                    **config: Any) -> EmbeddedTokenService:
    return EmbeddedTokenService(
        workspace_crn=key_service.workspace_crn,
        keyring=keyring,
        verifiers=[OIDCVerifier(issuers[0].issuer_config()),
                   *(OIDCVerifier(i.issuer_config(**config)) for i in issuers[1:])],
        claims=("org_id",),
    )


@pytest.mark.backends("local")  # OpenBao mode has no several issuers (one OpenBao auth mount trusts one issuer); see test_openbao.py
def test_same_sub_from_another_issuer_is_another_identity(
    client: Encryption,
    users: EncryptedTable,
    alice: LockContext,
    idp: LocalIssuer,
    idp2: LocalIssuer,
    keyring: Keyring,
    key_service: LocalKeyService,
) -> None:
    assert idp.issuer != idp2.issuer
    cts = _two_issuer_cts(key_service, keyring, idp, idp2)
    other_alice = LockContext(token_service=cts).identify(idp2.mint("alice")).unwrap()
    alice_via_new_cts = LockContext(token_service=cts).identify(idp.mint("alice")).unwrap()

    mine = _sealed(client.encrypt("from idp1", column=users.email, table=users).with_lock_context(alice))
    theirs = _sealed(client.encrypt("from idp2", column=users.email, table=users).with_lock_context(other_alice))
    # positive controls: each reads its own; the new CTS is a valid issuer of alice@idp1 tokens
    assert client.decrypt(theirs).with_lock_context(other_alice).unwrap() == "from idp2"
    assert client.decrypt(mine).with_lock_context(alice_via_new_cts).unwrap() == "from idp1"

    _assert_failed(client.decrypt(mine).with_lock_context(other_alice), "DecryptionError", "another identity")
    _assert_failed(client.decrypt(theirs).with_lock_context(alice), "DecryptionError", "another identity")
    _assert_failed(client.decrypt(theirs).with_lock_context(alice_via_new_cts), "DecryptionError")
    t_other = client.encrypt_query("from idp1", column=users.email, table=users).with_lock_context(other_alice)
    assert not matches(t_other.unwrap(), mine)


@pytest.mark.backends("local")  # OpenBao mode has no identity namespaces; see test_openbao.py
def test_an_explicit_shared_namespace_is_one_identity(
    client: Encryption,
    users: EncryptedTable,
    alice: LockContext,
    idp: LocalIssuer,
    idp2: LocalIssuer,
    keyring: Keyring,
    key_service: LocalKeyService,
) -> None:
    """What makes the two issuers distinct is the namespace: configured equal, they share."""
    cts = _two_issuer_cts(key_service, keyring, idp, idp2, namespace=idp.issuer)
    same_alice = LockContext(token_service=cts).identify(idp2.mint("alice")).unwrap()
    mine = _sealed(client.encrypt("shared ns", column=users.email, table=users).with_lock_context(alice))
    assert client.decrypt(mine).with_lock_context(same_alice).unwrap() == "shared ns"
    bob2 = LockContext(token_service=cts).identify(idp2.mint("bob")).unwrap()
    _assert_failed(client.decrypt(mine).with_lock_context(bob2), "DecryptionError")


@pytest.mark.parametrize("variant", ["ALICE", "Alice", "alice ", " alice", "alicе"])  # last: Cyrillic е
def test_subject_variants_are_distinct_identities(
    client: Encryption, users: EncryptedTable, alice: LockContext, identify: Identify, variant: str
) -> None:
    other = identify(variant)
    mine = _sealed(client.encrypt("case", column=users.email, table=users).with_lock_context(alice))
    theirs = _sealed(client.encrypt("case", column=users.email, table=users).with_lock_context(other))
    _assert_failed(client.decrypt(mine).with_lock_context(other), "DecryptionError", "another identity")
    _assert_failed(client.decrypt(theirs).with_lock_context(alice), "DecryptionError", "another identity")
    assert mine["hm"] != theirs["hm"]
    assert client.decrypt(theirs).with_lock_context(other).unwrap() == "case"


def test_a_fresh_identify_of_the_same_user_is_the_same_identity(
    client: Encryption, users: EncryptedTable, alice: LockContext, identify: Identify
) -> None:
    """The lock is the identity, not the token: a new session reads old values."""
    payload = _sealed(client.encrypt("old session", column=users.email, table=users).with_lock_context(alice))
    again = identify("alice")
    assert again.cts_token != alice.cts_token
    assert client.decrypt(payload).with_lock_context(again).unwrap() == "old session"


def test_a_lock_context_carrying_bobs_token_is_bob(
    client: Encryption, users: EncryptedTable, alice_data: dict[str, Any], bob: LockContext
) -> None:
    """Claim names come from the caller, values only from the verified token."""
    assert bob.cts_token is not None
    for claims in (("sub",), "sub"):
        forged = LockContext(identity_claim=claims, cts_token=bob.cts_token)
        _assert_failed(client.decrypt(alice_data["single"]).with_lock_context(forged), "DecryptionError")
