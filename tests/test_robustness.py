"""Bad arguments to the public API get typed, clear errors (never an AttributeError or
KeyError from deep inside), and values that would not come back as they went in are refused
when encrypting rather than changed or lost."""

from __future__ import annotations

from typing import Any

import pytest

from lockkit import (
    ClientInitError,
    CtsToken,
    CtsTokenError,
    EncryptedTable,
    Encryption,
    EncryptionError,
    LockContext,
    LockContextError,
    encrypted_column,
    encrypted_table,
    matches,
)
from lockkit.payload import MAX_JSON_DEPTH


@pytest.mark.parametrize("bad", ["a.cts.token", CtsToken("tok", 2_000_000_000), {"accessToken": "t", "expiry": 1}, 5])
def test_lock_context_keyword_takes_only_a_lock_context(client: Encryption, users: EncryptedTable, alice: LockContext,
                                                         bad: Any) -> None:
    """As ``.with_lock_context()`` does: a TypeError when the operation is built that says what
    to pass, instead of an AttributeError when it runs."""
    payload = client.encrypt("x", column="email", table=users).with_lock_context(alice).unwrap()
    builders = [
        lambda: client.encrypt("a", column="email", table=users, lock_context=bad),
        lambda: client.decrypt(payload, lock_context=bad),
        lambda: client.bulk_encrypt(["a"], column="email", table=users, lock_context=bad),
        lambda: client.bulk_decrypt([payload], lock_context=bad),
        lambda: client.encrypt_model({"email": "a"}, users, lock_context=bad),
        lambda: client.decrypt_model({"email": payload}, users, lock_context=bad),
        lambda: client.encrypt_query("abc", column="email", table=users, lock_context=bad),
        lambda: list(client.stream_encrypt(["a"], column="email", table=users, lock_context=bad)),
        lambda: list(client.stream_decrypt([payload], lock_context=bad)),
        lambda: client.encrypt("a", column="email", table=users).with_lock_context(bad),
    ]
    for build in builders:
        with pytest.raises(TypeError, match="LockContext\\(cts_token=...\\)"):
            build()


def test_only_the_declared_table_is_used(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    """Another table object of the same name (other column types, no lock requirement) or an
    undeclared one is refused: the declaration decides types and locks."""
    fake = encrypted_table("users", email=encrypted_column("email"), age=encrypted_column("age").data_type("json"))
    ghost = encrypted_table("ghost", email=encrypted_column("email"))
    for table in (fake, ghost):
        for op in (client.encrypt("x", column="email", table=table), client.encrypt_model({"email": "x"}, table),
                   client.encrypt_query("abc", column="email", table=table)):
            res = op.with_lock_context(alice).result()
            assert res.failure is not None and res.failure.type == "ClientInitError", op
    same = encrypted_table("users", **users.columns)  # an equal declaration is the same table
    assert client.encrypt("x", column="email", table=same).with_lock_context(alice).result().failure is None


@pytest.mark.parametrize("bad", [["users"], {"t": 1}, 5, 2.5])
def test_tables_and_columns_of_the_wrong_type(client: Encryption, users: EncryptedTable, bad: Any) -> None:
    with pytest.raises(ClientInitError):
        client.table(bad)
    assert client.encrypt("x", column="email", table=bad).result().failure.type == "ClientInitError"  # type: ignore[union-attr]
    assert client.encrypt("x", column=bad, table=users).result().failure.type == "ClientInitError"  # type: ignore[union-attr]
    assert client.decrypt_model({}, bad).result().failure.type == "ClientInitError"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [{1: "a"}, {"a": {None: 1}}, [{"x": {2.5: "y"}}], {True: 1}, {"1": "b", 1: "a"}])
def test_json_with_non_string_keys_is_refused(client: Encryption, users: EncryptedTable, alice: LockContext,
                                              value: Any) -> None:
    """JSON has string keys only: {1: "a"} would come back as {"1": "a"} (and {"1": .., 1: ..}
    would lose a member). Refused, not changed."""
    res = client.encrypt(value, column="notes", table=users).with_lock_context(alice).result()
    assert res.failure is not None and res.failure.type == "EncryptionError"
    assert "keys must be strings" in res.failure.message


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_json_depth_is_bounded_so_what_encrypts_always_decrypts(client: Encryption, users: EncryptedTable,
                                                                 alice: LockContext) -> None:
    res = client.encrypt(_nested(MAX_JSON_DEPTH + 1), column="notes", table=users).with_lock_context(alice).result()
    assert res.failure is not None and res.failure.type == "EncryptionError" and "deeper than" in res.failure.message
    payload = client.encrypt(_nested(MAX_JSON_DEPTH), column="notes", table=users).with_lock_context(alice).unwrap()

    def deep(n: int) -> Any:  # decrypt from far down the stack, as inside a web framework
        return deep(n - 1) if n else client.decrypt(payload).with_lock_context(alice).unwrap()

    assert deep(400) == _nested(MAX_JSON_DEPTH)


@pytest.mark.parametrize(("term", "stored"), [
    ({"bf": [1]}, {"bf": [[1]]}), ({"bf": None}, {"bf": []}), ({"bf": [[1]]}, {"bf": [1]}),
    ({"bf": [1]}, {"bf": "1"}), ({"hm": 5}, {"hm": None}), ({}, {"bf": [1]}),
])
def test_matches_never_raises_on_junk(term: dict[str, Any], stored: dict[str, Any]) -> None:
    """Stored search terms are not authenticated: anything may be in the database."""
    assert matches(term, stored) is False


def test_cts_tokens_and_lock_contexts_refuse_odd_values() -> None:
    for expiry in (10**400, float("inf"), float("nan"), True, "1"):
        with pytest.raises(CtsTokenError):
            CtsToken("tok", expiry)  # type: ignore[arg-type]
        with pytest.raises(CtsTokenError):
            LockContext(cts_token={"accessToken": "tok", "expiry": expiry})
    for claim in (5, 3.5, {"sub"}.__iter__()):
        with pytest.raises(LockContextError):
            LockContext(identity_claim=claim)  # type: ignore[arg-type]
    with pytest.raises(LockContextError):
        LockContext(context={"identityClaim": 5})


def test_client_construction_checks_its_arguments(key_service: Any, token_service: Any, users: EncryptedTable) -> None:
    for schemas in (None, 5, users):
        with pytest.raises(ClientInitError, match="schemas"):
            Encryption(schemas, key_service=key_service, token_service=token_service)  # type: ignore[arg-type]
    with pytest.raises(ClientInitError, match="key_service"):
        Encryption([users], key_service=object(), token_service=token_service)  # type: ignore[arg-type]
