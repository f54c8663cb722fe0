"""The encryption client: every operation with and without a lock context, laziness, one
key-service call per operation, typed round trips, lock-context forms, keysets, rotation."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from lockkit.errors import LockkitError
from lockkit import (
    CtsToken,
    DecryptionError,
    EncryptedTable,
    Encryption,
    EncryptionError,
    LockContext,
    Operation,
    Result,
    encrypted_column,
    encrypted_table,
    matches,
)
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.testing import LocalIssuer

Identify = Callable[..., LockContext]
PAYLOAD_KEYS = {"v", "k", "i", "ks", "kid", "c"}

# The client engine is the same code on every backend; these tests exercise it on the local
# backend (they use unlocked values, keysets, rotation). The isolation and tamper suites run on
# every backend.
pytestmark = pytest.mark.backends("local")


def _sealed(op: Operation[dict[str, Any] | None]) -> dict[str, Any]:
    """The payload of an encrypt operation that must produce one."""
    payload = op.unwrap()
    assert payload is not None
    return payload


def _lock(request: pytest.FixtureRequest, locked: bool) -> LockContext | None:
    """The ``alice`` fixture when ``locked``, else no lock context."""
    return request.getfixturevalue("alice") if locked else None


def _run(op: Any, lc: LockContext | None) -> Any:
    return op.with_lock_context(lc) if lc is not None else op


def _failure_type(res: Result[Any]) -> str | None:
    return res.failure.type if res.failure is not None else None


# -- single values -------------------------------------------------------------------------


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_encrypt_decrypt_round_trip(
    request: pytest.FixtureRequest, client: Encryption, users: EncryptedTable, locked: bool
) -> None:
    lc = _lock(request, locked)
    enc = _run(client.encrypt("alice@example.com", column=users.email, table=users), lc)
    payload = enc.data
    assert enc.failure is None
    assert PAYLOAD_KEYS <= set(payload)
    assert payload["v"] == 1 and payload["k"] == "ct"
    assert payload["i"] == {"t": "users", "c": "email"}
    assert payload["ks"] == "default"
    assert "alice@example.com" not in json.dumps(payload)
    assert ("lc" in payload) is locked
    if locked:
        assert payload["lc"] == ["sub"]
    # the column has both indexes
    assert isinstance(payload["hm"], str) and isinstance(payload["bf"], list) and payload["bf"]
    dec = _run(client.decrypt(payload), lc)
    assert dec.failure is None
    assert dec.data == "alice@example.com"
    assert dec.unwrap() == "alice@example.com"


def test_two_encryptions_of_one_value_differ(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    a = _sealed(client.encrypt("same", column=users.email, table=users).with_lock_context(alice))
    b = _sealed(client.encrypt("same", column=users.email, table=users).with_lock_context(alice))
    assert a["c"] != b["c"]  # random nonce per value
    assert a["hm"] == b["hm"]  # deterministic equality term for one identity


def test_keyword_lock_context_form(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    payload = _sealed(client.encrypt("kw@example.com", column=users.email, table=users, lock_context=alice))
    assert payload["lc"] == ["sub"]
    assert client.decrypt(payload, lock_context=alice).unwrap() == "kw@example.com"
    assert client.decrypt(payload).with_lock_context(alice).unwrap() == "kw@example.com"
    # without one: the keyword form really locked it
    assert _failure_type(client.decrypt(payload).result()) == "LockContextError"
    results = client.bulk_encrypt(["a", "b"], column="email", table="users", lock_context=alice).unwrap()
    got = client.bulk_decrypt([r.data for r in results], lock_context=alice).unwrap()
    assert [r.data for r in got] == ["a", "b"]
    model = client.encrypt_model({"email": "m@x.io"}, users, lock_context=alice).unwrap()
    assert client.decrypt_model(model, lock_context=alice).unwrap() == {"email": "m@x.io"}
    term = client.encrypt_query("m@x.io", column=users.email, table=users, lock_context=alice).unwrap()
    assert matches(term, model["email"])


def test_payload_survives_json_storage(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    payload = _sealed(client.encrypt("stored", column=users.email, table=users).with_lock_context(alice))
    text = json.dumps(payload)
    assert client.decrypt(json.loads(text)).with_lock_context(alice).unwrap() == "stored"
    # a JSON string (e.g. straight from a text column) is accepted too
    assert client.decrypt(text).with_lock_context(alice).unwrap() == "stored"


def test_none_stays_none_without_a_key_release(
    client: Encryption, users: EncryptedTable, alice: LockContext, key_service: LocalKeyService
) -> None:
    before = key_service.release_calls
    enc = client.encrypt(None, column=users.email, table=users).with_lock_context(alice)
    assert enc.failure is None and enc.data is None
    dec = client.decrypt(None).with_lock_context(alice)
    assert dec.failure is None and dec.data is None
    assert key_service.release_calls == before


def test_unknown_table_or_column_is_a_failure(client: Encryption, users: EncryptedTable) -> None:
    assert _failure_type(client.encrypt("x", column="email", table="nope").result()) == "ClientInitError"
    assert _failure_type(client.encrypt("x", column="nope", table=users).result()) == "ClientInitError"


# -- bulk ----------------------------------------------------------------------------------


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_bulk_round_trip(
    request: pytest.FixtureRequest, client: Encryption, users: EncryptedTable, locked: bool
) -> None:
    lc = _lock(request, locked)
    values = ["a@example.com", None, "b@example.com", "", "ünïcødé@example.com"]
    enc = _run(client.bulk_encrypt(values, column=users.email, table=users), lc).unwrap()
    assert len(enc) == len(values)
    assert all(r.failure is None for r in enc)
    assert enc[1].data is None
    payloads = [r.data for r in enc]
    for p in payloads:
        if p is not None:
            assert ("lc" in p) is locked
    dec = _run(client.bulk_decrypt(payloads), lc).unwrap()
    assert [r.failure for r in dec] == [None] * len(values)
    assert [r.data for r in dec] == values


def test_bulk_encrypt_one_bad_item_does_not_sink_the_batch(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    res = client.bulk_encrypt([1, "two", 3, None, True], column=users.age, table=users).with_lock_context(alice)
    items = res.unwrap()
    assert [_failure_type(r) for r in items] == [None, "EncryptionError", None, None, "EncryptionError"]
    assert "int" in items[1].failure.message  # type: ignore[union-attr]
    assert items[3].data is None
    back = client.bulk_decrypt([items[0].data, items[2].data]).with_lock_context(alice).unwrap()
    assert [r.data for r in back] == [1, 3]


def test_bulk_decrypt_one_bad_item_does_not_sink_the_batch(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    good = client.bulk_encrypt(["x@y.z", "p@q.r"], column=users.email, table=users).with_lock_context(alice)
    p1, p2 = (r.data for r in good.unwrap())
    assert p1 is not None
    broken = dict(p1, c=p1["c"][:-8] + "AAAAAAA=")
    batch = [p1, {"garbage": 1}, "not json", broken, None, 42, p2, ["v", "k"]]
    out = client.bulk_decrypt(batch).with_lock_context(alice).unwrap()
    assert [_failure_type(r) for r in out] == [
        None, "DecryptionError", "DecryptionError", "DecryptionError", None, "DecryptionError", None,
        "DecryptionError",
    ]
    assert [out[0].data, out[4].data, out[6].data] == ["x@y.z", None, "p@q.r"]
    assert all(r.data is None for r in out if r.failure is not None)


def test_bulk_decrypt_groups_by_header_and_keeps_every_item_in_place(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    """The decrypt engine groups payloads by header and checks each header once; every odd
    payload still gets its own precise error, in its own position."""
    emails = client.bulk_encrypt(["a@x.y", "b@x.y", "c@x.y"], column=users.email, table=users)
    e1, e2, e3 = (r.data for r in emails.with_lock_context(alice).unwrap())
    name = _sealed(client.encrypt("Alice", column=users.name, table=users))  # unlocked
    assert e1 is not None and e2 is not None and e3 is not None
    other_keyset = Encryption([users], key_service=client.key_service, keyset="tenant-b")
    foreign = _sealed(other_keyset.encrypt("t@x.y", column=users.email, table=users).with_lock_context(alice))
    batch: list[Any] = [
        e1,
        name,
        dict(e1, zz=1),                      # an unexpected field
        dict(e1, lc=None),                   # "lc" present but null: unlocked header, locked ciphertext
        dict(e1, lc=["sub", "scopes"]),      # other lock claims than the lock context's
        foreign,                             # another keyset
        dict(e1, i={"t": "users", "c": "email", "x": 1}),
        dict(e1, v=True),
        dict(e1, c=e1["c"].encode()),        # bytes, not text
        dict(e1, kid=1),
        e2,
        None,
        dict(name, i={"t": "users", "c": "email"}),  # moved to another column
        e3,
    ]
    out = client.bulk_decrypt(batch).with_lock_context(alice).unwrap()
    assert [r.data for r in out] == [
        "a@x.y", "Alice", None, None, None, None, None, None, None, None, "b@x.y", None, None, "c@x.y",
    ]
    expected = {
        2: ("DecryptionError", "unexpected fields ['zz']"),
        3: ("DecryptionError", "encrypted under other keys"),  # another key: its key check fails
        4: ("LockContextError", "locked to the claims ['sub', 'scopes']"),
        5: ("DecryptionError", "keyset 'tenant-b'"),
        6: ("DecryptionError", "'i' must be"),
        7: ("DecryptionError", "version True"),
        8: ("DecryptionError", "missing 'ks', 'kid' or 'c'"),
        9: ("DecryptionError", "missing 'ks', 'kid' or 'c'"),
        12: ("DecryptionError", "encrypted under other keys"),
    }
    for i, r in enumerate(out):
        if i in expected:
            assert r.failure is not None, i
            assert r.failure.type == expected[i][0] and expected[i][1] in r.failure.message, (i, r.failure)
        else:
            assert r.failure is None, (i, r.failure)
    # the same payloads without a lock context: the locked ones say so, the unlocked one opens
    plain = client.bulk_decrypt([e1, name, e2]).unwrap()
    assert [_failure_type(r) for r in plain] == ["LockContextError", None, "LockContextError"]
    assert plain[1].data == "Alice"


# -- models --------------------------------------------------------------------------------


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_model_round_trip(
    request: pytest.FixtureRequest, client: Encryption, users: EncryptedTable, locked: bool
) -> None:
    lc = _lock(request, locked)
    extra = {"k": "v", "nested": [1, 2]}
    user = {"id": 7, "email": "alice@example.com", "name": "Alice", "age": 41, "notes": None, "extra": extra}
    enc = _run(client.encrypt_model(user, users), lc).unwrap()
    assert user["email"] == "alice@example.com"  # the input is not modified
    assert enc["id"] == 7 and enc["extra"] is extra  # non-schema fields pass through untouched
    assert enc["notes"] is None
    for field in ("email", "name", "age"):
        assert PAYLOAD_KEYS <= set(enc[field]) and ("lc" in enc[field]) is locked
        assert enc[field]["i"]["c"] == field
    assert "hm" not in enc["age"] and "bf" not in enc["age"]
    assert "bf" in enc["name"] and "hm" not in enc["name"]
    assert _run(client.decrypt_model(enc), lc).unwrap() == user
    assert _run(client.decrypt_model(enc, users), lc).unwrap() == user
    assert _run(client.decrypt_model(enc, "users"), lc).unwrap() == user


def test_model_fields_absent_stay_absent(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    enc = client.encrypt_model({"email": "only@example.com"}, users).with_lock_context(alice).unwrap()
    assert set(enc) == {"email"}
    assert client.decrypt_model(enc, users).with_lock_context(alice).unwrap() == {"email": "only@example.com"}


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_bulk_models_round_trip(
    request: pytest.FixtureRequest, client: Encryption, users: EncryptedTable, locked: bool
) -> None:
    lc = _lock(request, locked)
    models = [
        {"id": i, "email": f"u{i}@example.com", "name": None if i % 3 == 0 else f"User {i}", "age": i,
         "notes": {"tags": ["a", i], "ok": i % 2 == 0}}
        for i in range(10)
    ]
    enc = _run(client.bulk_encrypt_models(models, users), lc).unwrap()
    assert len(enc) == 10
    assert [m["id"] for m in enc] == list(range(10))
    assert enc[0]["name"] is None and enc[3]["name"] is None
    assert all(("lc" in m["email"]) is locked for m in enc)
    assert _run(client.bulk_decrypt_models(enc), lc).unwrap() == models
    assert _run(client.bulk_decrypt_models(enc, users), lc).unwrap() == models


def test_bulk_encrypt_models_bad_field_fails_the_operation(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    models: list[dict[str, Any]] = [{"email": "a@x.io", "age": 1}, {"email": "b@x.io", "age": "forty"}]
    res = client.bulk_encrypt_models(models, users).with_lock_context(alice)
    assert res.data is None
    assert res.failure is not None and res.failure.type == "EncryptionError"
    assert "age" in res.failure.message
    with pytest.raises(EncryptionError):
        res.unwrap()


def test_decrypt_model_with_table_refuses_plaintext_in_an_encrypted_field(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    res = client.decrypt_model({"email": "plain@example.com"}, users).with_lock_context(alice)
    assert _failure_type(res.result()) == "DecryptionError"
    assert "email" in res.failure.message


# -- search terms --------------------------------------------------------------------------


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_encrypt_query_equality_and_match(
    request: pytest.FixtureRequest, client: Encryption, users: EncryptedTable, locked: bool
) -> None:
    lc = _lock(request, locked)
    emails = ["alice@example.com", "bob@example.com", "carol@other.org", "Alice@Example.com"]
    payloads = [r.data for r in _run(client.bulk_encrypt(emails, column=users.email, table=users), lc).unwrap()]

    eq = _run(client.encrypt_query("alice@example.com", column=users.email, table=users, query_type="equality"), lc)
    term = eq.unwrap()
    assert set(term) == {"hm"}
    assert [matches(term, p) for p in payloads] == [True, False, False, False]  # exact, case-sensitive

    mt = _run(client.encrypt_query("example", column=users.email, table=users, query_type="match"), lc).unwrap()
    assert set(mt) == {"bf"}
    assert [matches(mt, p) for p in payloads] == [True, True, False, True]  # match is case-insensitive
    other = _run(client.encrypt_query("other", column="email", table="users", query_type="match"), lc).unwrap()
    assert [matches(other, p) for p in payloads] == [False, False, True, False]

    both = _run(client.encrypt_query("bob@example.com", column=users.email, table=users), lc).unwrap()
    assert set(both) == {"hm", "bf"}
    assert [matches(both, p) for p in payloads] == [False, True, False, False]


def test_match_only_column_query(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    models = client.bulk_encrypt_models(
        [{"name": "Ada Lovelace"}, {"name": "Grace Hopper"}], users
    ).with_lock_context(alice).unwrap()
    term = client.encrypt_query("lovelace", column="name", table=users).with_lock_context(alice).unwrap()
    assert set(term) == {"bf"}
    assert [matches(term, m["name"]) for m in models] == [True, False]


def test_unlocked_terms_do_not_match_locked_payloads(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    locked = _sealed(client.encrypt("a@example.com", column=users.email, table=users).with_lock_context(alice))
    unlocked = _sealed(client.encrypt("a@example.com", column=users.email, table=users))
    t_unlocked = client.encrypt_query("a@example.com", column=users.email, table=users, query_type="equality")
    t_locked = client.encrypt_query("a@example.com", column=users.email, table=users, query_type="equality")
    term_u, term_l = t_unlocked.unwrap(), t_locked.with_lock_context(alice).unwrap()
    assert term_u != term_l
    assert matches(term_u, unlocked) and not matches(term_u, locked)
    assert matches(term_l, locked) and not matches(term_l, unlocked)


@pytest.mark.parametrize(
    ("value", "column", "query_type", "fragment"),
    [
        ("x", "name", "equality", "no equality index"),
        ("x", "age", None, "no search index"),
        (3, "age", "match", "no match index"),
        (None, "email", None, "None"),
        ("!! ..", "email", "match", "at least one word"),
        (5, "name", "match", "text"),
    ],
)
def test_encrypt_query_refusals(
    client: Encryption,
    users: EncryptedTable,
    alice: LockContext,
    value: Any,
    column: str,
    query_type: Any,
    fragment: str,
) -> None:
    res = client.encrypt_query(value, column=column, table=users, query_type=query_type).with_lock_context(alice)
    assert res.data is None
    assert res.failure is not None and res.failure.type == "EncryptionError"
    assert fragment in res.failure.message


# -- laziness ------------------------------------------------------------------------------


def test_operation_runs_once_when_first_read(
    client: Encryption, users: EncryptedTable, alice: LockContext, key_service: LocalKeyService
) -> None:
    before = key_service.release_calls
    op = client.encrypt("lazy", column=users.email, table=users).with_lock_context(alice)
    assert key_service.release_calls == before  # built, not run
    assert "pending" in repr(op)
    first = op.data
    assert key_service.release_calls == before + 1
    assert op.data is first  # cached: the same payload, not a re-encryption
    assert op.failure is None and op.unwrap() is first and op.result() is op.result()
    assert key_service.release_calls == before + 1
    assert "done" in repr(op) and "locked" in repr(op)

    dec = client.decrypt(first).with_lock_context(alice)
    assert key_service.release_calls == before + 1
    assert dec.failure is None  # reading .failure runs it too
    assert key_service.release_calls == before + 2
    assert dec.data == "lazy"
    assert key_service.release_calls == before + 2


def test_a_failed_operation_is_cached_too(
    client: Encryption, users: EncryptedTable, bob: LockContext, alice: LockContext, key_service: LocalKeyService
) -> None:
    payload = _sealed(client.encrypt("s", column=users.email, table=users).with_lock_context(alice))
    before = key_service.release_calls
    op = client.decrypt(payload).with_lock_context(bob)
    assert op.failure is not None and op.failure.type == "DecryptionError"
    assert op.failure is op.failure and op.data is None
    assert key_service.release_calls == before + 1
    with pytest.raises(DecryptionError):
        op.unwrap()
    assert key_service.release_calls == before + 1


def test_with_lock_context_returns_a_new_operation(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    base = client.encrypt("v", column=users.email, table=users)
    locked = base.with_lock_context(alice)
    assert locked is not base
    assert "lc" in _sealed(locked)
    assert "lc" not in _sealed(base)  # the original stays unlocked
    with pytest.raises(TypeError):
        base.with_lock_context("alice")  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["encrypt", "decrypt", "bulk_encrypt", "encrypt_model", "encrypt_query"])
def test_with_lock_context_after_it_ran_raises(
    client: Encryption, users: EncryptedTable, alice: LockContext, which: str
) -> None:
    ops: dict[str, Callable[[], Operation[Any]]] = {
        "encrypt": lambda: client.encrypt("v", column=users.email, table=users),
        "decrypt": lambda: client.decrypt(None),
        "bulk_encrypt": lambda: client.bulk_encrypt(["v"], column=users.email, table=users),
        "encrypt_model": lambda: client.encrypt_model({"email": "v"}, users),
        "encrypt_query": lambda: client.encrypt_query("v", column=users.email, table=users),
    }
    op = ops[which]()
    op.result()
    with pytest.raises(RuntimeError, match="already ran"):
        op.with_lock_context(alice)


# -- one key-service call per operation ----------------------------------------------------


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_one_key_service_call_for_a_1000_value_bulk(
    request: pytest.FixtureRequest,
    client: Encryption,
    users: EncryptedTable,
    key_service: LocalKeyService,
    locked: bool,
) -> None:
    lc = _lock(request, locked)
    values = [f"user{i}@example.com" for i in range(1000)]
    calls = key_service.release_calls
    enc = _run(client.bulk_encrypt(values, column=users.email, table=users), lc).unwrap()
    assert key_service.release_calls == calls + 1
    dec = _run(client.bulk_decrypt([r.data for r in enc]), lc).unwrap()
    assert key_service.release_calls == calls + 2
    assert [r.data for r in dec] == values


def test_a_bulk_longer_than_the_encrypt_chunk_keeps_order_and_fresh_nonces(
    client: Encryption, users: EncryptedTable, alice: LockContext, key_service: LocalKeyService
) -> None:
    """Nonces and key checks are made a chunk at a time: values on both sides of each chunk
    boundary (and None there) stay in place, each payload has its own nonce, one key call."""
    from lockkit.client import _ENCRYPT_CHUNK

    n = 2 * _ENCRYPT_CHUNK + 3
    values: list[str | None] = [f"u{i}@example.com" for i in range(n)]
    for i in (0, _ENCRYPT_CHUNK - 1, _ENCRYPT_CHUNK, 2 * _ENCRYPT_CHUNK, n - 1):
        values[i] = None
    calls = key_service.release_calls
    enc = [r.unwrap() for r in client.bulk_encrypt(values, column=users.email, table=users).with_lock_context(alice).unwrap()]
    assert key_service.release_calls == calls + 1
    assert [e is None for e in enc] == [v is None for v in values]
    nonces = {base64.b64decode(e["c"])[:12] for e in enc if e is not None}
    assert len(nonces) == n - 5
    dec = client.bulk_decrypt(enc).with_lock_context(alice).unwrap()
    assert [r.unwrap() for r in dec] == values


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_one_key_service_call_for_a_50_model_bulk(
    request: pytest.FixtureRequest,
    client: Encryption,
    users: EncryptedTable,
    key_service: LocalKeyService,
    locked: bool,
) -> None:
    lc = _lock(request, locked)
    models = [
        {"email": f"u{i}@example.com", "name": f"User {i}", "age": i, "notes": {"i": i}} for i in range(50)
    ]
    calls = key_service.release_calls
    enc = _run(client.bulk_encrypt_models(models, users), lc).unwrap()
    assert key_service.release_calls == calls + 1
    assert _run(client.bulk_decrypt_models(enc, users), lc).unwrap() == models
    assert key_service.release_calls == calls + 2
    one = _run(client.encrypt_model(models[0], users), lc).unwrap()  # 4 columns, one call
    assert key_service.release_calls == calls + 3
    assert _run(client.decrypt_model(one), lc).unwrap() == models[0]
    assert key_service.release_calls == calls + 4
    _run(client.encrypt_query("u1@example.com", column=users.email, table=users), lc).unwrap()
    assert key_service.release_calls == calls + 5


def test_mixed_locked_and_unlocked_bulk_decrypt_is_one_call(
    client: Encryption, users: EncryptedTable, alice: LockContext, key_service: LocalKeyService
) -> None:
    locked = _sealed(client.encrypt("l", column=users.email, table=users).with_lock_context(alice))
    plain = _sealed(client.encrypt("p", column=users.email, table=users))
    calls = key_service.release_calls
    out = client.bulk_decrypt([locked, plain, locked]).with_lock_context(alice).unwrap()
    assert [r.data for r in out] == ["l", "p", "l"]
    assert key_service.release_calls == calls + 1


# -- typed round trips ---------------------------------------------------------------------


@pytest.fixture
def typed() -> EncryptedTable:
    return encrypted_table(
        "typed",
        t_text=encrypted_column("t_text").equality(),
        t_int=encrypted_column("t_int").data_type("int").equality(),
        t_float=encrypted_column("t_float").data_type("float"),
        t_bool=encrypted_column("t_bool").data_type("bool"),
        t_date=encrypted_column("t_date").data_type("date"),
        t_datetime=encrypted_column("t_datetime").data_type("datetime"),
        t_json=encrypted_column("t_json").data_type("json"),
    )


@pytest.fixture
def typed_client(
    typed: EncryptedTable, key_service: LocalKeyService, token_service: EmbeddedTokenService
) -> Encryption:
    return Encryption([typed], key_service=key_service, token_service=token_service)


IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
TYPED_VALUES: list[tuple[str, Any]] = [
    ("t_text", "plain"),
    ("t_text", ""),
    ("t_text", "émoji 🔐 and 漢字\n\t\x00"),
    ("t_int", 0),
    ("t_int", -42),
    ("t_int", 2**200),
    ("t_float", 3.141592653589793),
    ("t_float", 0.0),
    ("t_float", -0.0),
    ("t_float", math.inf),
    ("t_float", -math.inf),
    ("t_float", math.nan),
    ("t_float", 5e-324),
    ("t_bool", True),
    ("t_bool", False),
    ("t_date", dt.date(2024, 2, 29)),
    ("t_date", dt.date(1, 1, 1)),
    ("t_datetime", dt.datetime(2024, 5, 17, 13, 45, 7, 123456)),
    ("t_datetime", dt.datetime(2024, 5, 17, 13, 45, 7, tzinfo=dt.timezone.utc)),
    ("t_datetime", dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=IST)),
    ("t_json", {"a": [1, 2.5, None, True, {"b": {"c": ["deep", {"d": []}]}}], "e": {}}),
    ("t_json", [1, "two", [3, [4, [5]]]]),
    ("t_json", "just a string"),
    ("t_json", 17),
    ("t_json", None),  # JSON null in a json column is None: stays None
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime):
        return a == b and (a.tzinfo is None) == (b.tzinfo is None) and a.utcoffset() == b.utcoffset()
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(("column", "value"), TYPED_VALUES, ids=[f"{c}-{v!r}"[:40] for c, v in TYPED_VALUES])
def test_typed_round_trip(
    typed_client: Encryption, typed: EncryptedTable, alice: LockContext, column: str, value: Any
) -> None:
    enc = typed_client.encrypt(value, column=column, table=typed).with_lock_context(alice)
    assert enc.failure is None
    back = typed_client.decrypt(enc.data).with_lock_context(alice).unwrap()
    assert type(back) is type(value)
    assert _same(back, value)


def test_typed_model_and_bulk_round_trip(typed_client: Encryption, typed: EncryptedTable, alice: LockContext) -> None:
    model = {
        "t_text": "x", "t_int": 1, "t_float": -0.0, "t_bool": False, "t_date": dt.date(2020, 1, 2),
        "t_datetime": dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=IST), "t_json": {"k": [1, {"v": None}]},
    }
    back = typed_client.decrypt_model(
        typed_client.encrypt_model(model, typed).with_lock_context(alice).unwrap(), typed
    ).with_lock_context(alice).unwrap()
    assert back == model
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in model.items()}
    assert math.copysign(1.0, back["t_float"]) == -1.0
    values = [dt.date(2000, 1, 1), None, dt.date(2038, 1, 19)]
    enc = typed_client.bulk_encrypt(values, column="t_date", table=typed).with_lock_context(alice).unwrap()
    dec = typed_client.bulk_decrypt([r.data for r in enc]).with_lock_context(alice).unwrap()
    assert [r.data for r in dec] == values


class _Opaque:
    pass


_circular: list[Any] = []
_circular.append(_circular)

WRONG_TYPES: list[tuple[str, Any]] = [
    ("t_text", 1),
    ("t_text", b"bytes"),
    ("t_text", "lone surrogate \ud800"),
    ("t_int", "1"),
    ("t_int", 1.0),
    ("t_int", True),
    ("t_float", "1.5"),
    ("t_float", True),
    ("t_bool", 1),
    ("t_bool", "true"),
    ("t_date", "2024-01-01"),
    ("t_date", dt.datetime(2024, 1, 1, 12, 0)),
    ("t_datetime", dt.date(2024, 1, 1)),
    ("t_datetime", "2024-01-01T00:00:00"),
    ("t_json", _Opaque()),
    ("t_json", {1, 2}),
    ("t_json", _circular),
]


@pytest.mark.parametrize(("column", "value"), WRONG_TYPES, ids=[f"{c}-{type(v).__name__}" for c, v in WRONG_TYPES])
def test_wrong_type_for_a_column_is_an_encryption_error(
    typed_client: Encryption, typed: EncryptedTable, alice: LockContext, column: str, value: Any
) -> None:
    res = typed_client.encrypt(value, column=column, table=typed).with_lock_context(alice)
    assert res.data is None
    assert res.failure is not None and res.failure.type == "EncryptionError"
    assert f"typed.{column}" in res.failure.message
    with pytest.raises(EncryptionError):
        res.unwrap()
    bulk = typed_client.bulk_encrypt([value], column=column, table=typed).with_lock_context(alice).unwrap()
    assert _failure_type(bulk[0]) == "EncryptionError"


def test_date_column_refuses_a_datetime(typed_client: Encryption, typed: EncryptedTable, alice: LockContext) -> None:
    res = typed_client.encrypt(dt.datetime(2024, 1, 1), column="t_date", table=typed).with_lock_context(alice)
    assert res.failure is not None and res.failure.type == "EncryptionError"
    assert "date" in res.failure.message and "datetime" in res.failure.message
    ok = typed_client.encrypt(dt.date(2024, 1, 1), column="t_date", table=typed).with_lock_context(alice)
    assert ok.failure is None


@pytest.mark.parametrize("column", ["t_text", "t_int", "t_float", "t_bool", "t_date", "t_datetime", "t_json"])
def test_none_stays_none_in_every_type(
    typed_client: Encryption, typed: EncryptedTable, alice: LockContext, column: str
) -> None:
    assert typed_client.encrypt(None, column=column, table=typed).with_lock_context(alice).unwrap() is None
    enc = typed_client.encrypt_model({column: None, "other": 1}, typed).with_lock_context(alice).unwrap()
    assert enc == {column: None, "other": 1}
    assert typed_client.decrypt_model(enc, typed).with_lock_context(alice).unwrap() == {column: None, "other": 1}
    assert [r.data for r in typed_client.bulk_decrypt([None]).unwrap()] == [None]


def test_equality_terms_are_typed(typed_client: Encryption, typed: EncryptedTable, alice: LockContext) -> None:
    p = _sealed(typed_client.encrypt(7, column="t_int", table=typed).with_lock_context(alice))
    same = typed_client.encrypt_query(7, column="t_int", table=typed).with_lock_context(alice).unwrap()
    other = typed_client.encrypt_query(8, column="t_int", table=typed).with_lock_context(alice).unwrap()
    assert matches(same, p) and not matches(other, p)
    bad = typed_client.encrypt_query("7", column="t_int", table=typed).with_lock_context(alice)
    assert bad.failure is not None and bad.failure.type == "EncryptionError"


# -- lock-context forms --------------------------------------------------------------------


def test_lock_context_from_a_cts_token_decrypts_without_an_exchange(
    client: Encryption,
    users: EncryptedTable,
    alice: LockContext,
    token_service: EmbeddedTokenService,
) -> None:
    payload = _sealed(client.encrypt("tok@example.com", column=users.email, table=users).with_lock_context(alice))
    token = alice.cts_token
    assert token is not None
    calls = token_service.calls
    rebuilt = LockContext(cts_token=CtsToken(access_token=token.access_token, expiry=token.expiry))
    assert client.decrypt(payload).with_lock_context(rebuilt).unwrap() == "tok@example.com"
    from_wire = LockContext(cts_token=token.to_dict())
    assert client.decrypt(payload).with_lock_context(from_wire).unwrap() == "tok@example.com"
    again = _sealed(client.encrypt("new", column=users.email, table=users).with_lock_context(from_wire))
    assert client.decrypt(again).with_lock_context(alice).unwrap() == "new"
    assert token_service.calls == calls


def test_cts_token_wire_round_trip(alice: LockContext) -> None:
    token = alice.cts_token
    assert token is not None
    wire = token.to_dict()
    assert set(wire) == {"accessToken", "expiry"}
    assert wire["accessToken"] == token.access_token and wire["expiry"] == token.expiry
    assert isinstance(wire["expiry"], int)
    assert CtsToken.from_dict(json.loads(json.dumps(wire))) == token
    assert token.access_token not in repr(token) and token.access_token not in repr(alice)


def test_an_unidentified_lock_context_is_a_lock_context_error(client: Encryption, users: EncryptedTable) -> None:
    res = client.encrypt("x", column=users.email, table=users).with_lock_context(LockContext())
    assert res.failure is not None and res.failure.type == "LockContextError"
    assert "identify" in res.failure.message


@pytest.mark.parametrize("claims", [["sub"], ["sub", "scopes"]])
def test_reference_context_form(
    client: Encryption,
    users: EncryptedTable,
    idp: LocalIssuer,
    token_service: EmbeddedTokenService,
    claims: list[str],
) -> None:
    lc = LockContext(context={"identityClaim": claims}, token_service=token_service)
    bound = lc.identify(idp.mint("alice", scope="read")).unwrap()
    assert bound.identity_claim == tuple(claims)
    payload = _sealed(client.encrypt("ctx", column=users.email, table=users).with_lock_context(bound))
    assert payload["lc"] == claims
    assert client.decrypt(payload).with_lock_context(bound).unwrap() == "ctx"
    same = LockContext(identity_claim=tuple(claims), token_service=token_service)
    same_bound = same.identify(idp.mint("alice", scope="read")).unwrap()
    assert client.decrypt(payload).with_lock_context(same_bound).unwrap() == "ctx"


def test_scopes_are_part_of_the_identity(client: Encryption, users: EncryptedTable, identify: Identify) -> None:
    claim = ("sub", "scopes")
    reader = identify("alice", identity_claim=claim, scope="read")
    admin = identify("alice", identity_claim=claim, scope="read admin")
    admin_reordered = identify("alice", identity_claim=claim, scope="admin read")
    p_reader = _sealed(client.encrypt("r", column=users.email, table=users).with_lock_context(reader))
    p_admin = _sealed(client.encrypt("a", column=users.email, table=users).with_lock_context(admin))
    assert p_reader["lc"] == ["sub", "scopes"]
    assert client.decrypt(p_reader).with_lock_context(reader).unwrap() == "r"
    assert client.decrypt(p_admin).with_lock_context(admin).unwrap() == "a"
    for payload, other in ((p_reader, admin), (p_admin, reader)):
        res = client.decrypt(payload).with_lock_context(other)
        assert res.failure is not None and res.failure.type == "DecryptionError"
        assert res.data is None
    # scope order does not matter: the same set of scopes is the same identity
    assert client.decrypt(p_admin).with_lock_context(admin_reordered).unwrap() == "a"
    # terms differ too
    t_reader = client.encrypt_query("r", column=users.email, table=users).with_lock_context(reader).unwrap()
    t_admin = client.encrypt_query("r", column=users.email, table=users).with_lock_context(admin).unwrap()
    assert matches(t_reader, p_reader) and not matches(t_admin, p_reader)


def test_org_id_claim_shares_within_an_org(client: Encryption, users: EncryptedTable, identify: Identify) -> None:
    claim = ("org_id",)
    alice = identify("alice", identity_claim=claim, org_id="acme")
    bob = identify("bob", identity_claim=claim, org_id="acme")
    carol = identify("carol", identity_claim=claim, org_id="globex")
    payload = _sealed(client.encrypt("shared", column=users.email, table=users).with_lock_context(alice))
    assert payload["lc"] == ["org_id"]
    assert client.decrypt(payload).with_lock_context(alice).unwrap() == "shared"
    assert client.decrypt(payload).with_lock_context(bob).unwrap() == "shared"
    res = client.decrypt(payload).with_lock_context(carol)
    assert res.failure is not None and res.failure.type == "DecryptionError" and res.data is None
    t_bob = client.encrypt_query("shared", column=users.email, table=users).with_lock_context(bob).unwrap()
    t_carol = client.encrypt_query("shared", column=users.email, table=users).with_lock_context(carol).unwrap()
    assert matches(t_bob, payload) and not matches(t_carol, payload)
    # a value locked to alice's sub is still hers alone
    mine = client.encrypt("mine", column=users.email, table=users).with_lock_context(
        identify("alice", org_id="acme")
    ).unwrap()
    assert client.decrypt(mine).with_lock_context(identify("bob", org_id="acme")).failure is not None


@pytest.mark.parametrize("org", [None, "", [], {}])
def test_a_null_or_empty_lock_claim_is_no_identity(
    client: Encryption, users: EncryptedTable, identify: Identify, org: Any
) -> None:
    """Users whose org_id is null or empty must not share an "empty org" lock: every operation
    that would bind a key to it is refused before any key is released."""
    claim = ("org_id",)
    alice = identify("alice", identity_claim=claim, org_id=org)
    bob = identify("bob", identity_claim=claim, org_id=org)
    real = identify("carol", identity_claim=claim, org_id="acme")
    payload = client.encrypt("x", column=users.email, table=users).with_lock_context(real).unwrap()
    ops = [
        client.encrypt("secret", column=users.email, table=users),
        client.bulk_encrypt(["secret"], column=users.email, table=users),
        client.encrypt_model({"email": "secret"}, users),
        client.encrypt_query("secret", column=users.email, table=users),
        client.decrypt(payload),
        client.decrypt_model({"email": payload}, users),
    ]
    for op in ops:
        for lc in (alice, bob):
            res = op.with_lock_context(lc).result()
            assert res.failure is not None and res.failure.type == "LockContextError", op
            assert "null or empty" in res.failure.message
    bulk = client.bulk_decrypt([payload]).with_lock_context(bob).result()
    assert bulk.failure is not None and bulk.failure.type == "LockContextError"


def test_a_scopes_only_lock_needs_scopes(client: Encryption, users: EncryptedTable, identify: Identify) -> None:
    """Locking to scopes alone: a token without scopes has no identity to lock to (with sub
    in the lock, no scopes is a fine value: sub tells users apart)."""
    unscoped = identify("alice", identity_claim=("scopes",))
    res = client.encrypt("x", column=users.email, table=users).with_lock_context(unscoped).result()
    assert res.failure is not None and res.failure.type == "LockContextError" and "all empty" in res.failure.message
    with_sub = identify("alice", identity_claim=("sub", "scopes"))
    payload = client.encrypt("x", column=users.email, table=users).with_lock_context(with_sub).unwrap()
    assert client.decrypt(payload).with_lock_context(with_sub).unwrap() == "x"
    other = identify("bob", identity_claim=("sub", "scopes"))
    assert client.decrypt(payload).with_lock_context(other).failure is not None


def test_a_column_that_requires_a_lock_context(key_service: Any, token_service: Any, identify: Identify) -> None:
    """``.require_lock_context()``: every encrypting or querying operation without a lock
    context is refused, and an unlocked payload of the column (encrypted before the flag, or
    swapped in by someone who can write the database) does not decrypt, even for its owner."""
    loose = encrypted_table("accounts", iban=encrypted_column("iban").equality(), label=encrypted_column("label"))
    strict = encrypted_table("accounts", iban=encrypted_column("iban").equality().require_lock_context(),
                             label=encrypted_column("label"))
    assert strict.iban.lock_required and not strict.label.lock_required
    old = Encryption([loose], key_service=key_service, token_service=token_service)
    c = Encryption([strict], key_service=key_service, token_service=token_service)
    alice = identify("alice")
    swapped = old.encrypt("DE00 ATTACKER", column="iban", table="accounts").unwrap()  # unlocked, same column
    mine = c.encrypt("DE89 3704", column="iban", table="accounts").with_lock_context(alice).unwrap()
    assert mine["lc"] == ["sub"]

    unlocked_ops = [
        c.encrypt("x", column="iban", table="accounts"),
        c.bulk_encrypt(["x", None], column="iban", table="accounts"),
        c.encrypt_model({"iban": "x", "label": "y"}, "accounts"),
        c.bulk_encrypt_models([{"iban": "x"}], "accounts"),
        c.encrypt_query("x", column="iban", table="accounts"),
    ]
    for op in unlocked_ops:
        res = op.result()
        assert res.failure is not None and res.failure.type == "LockContextError", op
        assert "accounts.iban requires a lock context" in res.failure.message
    streamed = list(c.stream_encrypt(["x", "y"], column="iban", table="accounts"))
    assert [r.failure.type for r in streamed if r.failure] == ["LockContextError"] * 2
    # the other column and None values need nothing
    assert c.encrypt("home", column="label", table="accounts").unwrap()["k"] == "ct"
    assert c.bulk_encrypt([None], column="iban", table="accounts").unwrap()[0].data is None

    # an unlocked payload of the column is refused, with and without a lock context
    for lc in (alice, None):
        for op in (c.decrypt(swapped), c.decrypt_model({"iban": swapped}, "accounts")):
            res = (op.with_lock_context(lc) if lc else op).result()
            assert res.failure is not None and res.failure.type == "DecryptionError"
            assert "requires values locked to an identity" in res.failure.message
    bulk = c.bulk_decrypt([mine, swapped]).with_lock_context(alice).unwrap()
    assert bulk[0].unwrap() == "DE89 3704" and bulk[1].failure is not None
    assert [r.failure.type for r in c.stream_decrypt([swapped], lock_context=alice) if r.failure] == ["DecryptionError"]
    # the owner's locked value still opens; the old client (no flag) still reads the old value
    assert c.decrypt(mine).with_lock_context(alice).unwrap() == "DE89 3704"
    assert old.decrypt(swapped).unwrap() == "DE00 ATTACKER"
    other = c.decrypt(mine).with_lock_context(identify("bob")).result()
    assert other.failure is not None and other.failure.type == "DecryptionError"


# -- keysets -------------------------------------------------------------------------------


def test_keysets_are_independent(
    client: Encryption,
    users: EncryptedTable,
    alice: LockContext,
    key_service: LocalKeyService,
    token_service: EmbeddedTokenService,
) -> None:
    tenant = Encryption([users], key_service=key_service, token_service=token_service, keyset="tenant-a")
    assert tenant.keyset == "tenant-a" and client.keyset == "default"
    for lc in (alice, None):
        p_default = _run(client.encrypt("d", column=users.email, table=users), lc).unwrap()
        p_tenant = _run(tenant.encrypt("t", column=users.email, table=users), lc).unwrap()
        assert p_default["ks"] == "default" and p_tenant["ks"] == "tenant-a"
        assert _run(client.decrypt(p_default), lc).unwrap() == "d"
        assert _run(tenant.decrypt(p_tenant), lc).unwrap() == "t"

        for reader, payload in ((tenant, p_default), (client, p_tenant)):
            res = _run(reader.decrypt(payload), lc)
            assert res.failure is not None and res.failure.type == "DecryptionError"
            assert "'default'" in res.failure.message and "'tenant-a'" in res.failure.message
            # editing ks to match the reader does not help: the keys themselves differ (the key
            # check says so before the AEAD even runs), not only the authenticated header
            forged = dict(payload, ks=reader.keyset)
            res = _run(reader.decrypt(forged), lc)
            assert res.failure is not None and res.failure.type == "DecryptionError" and res.data is None
            assert ("another identity" if lc is not None else "other keys") in res.failure.message

        # terms are per keyset too
        t_tenant = _run(tenant.encrypt_query("d", column=users.email, table=users), lc).unwrap()
        assert not matches(t_tenant, p_default)


# -- rotation ------------------------------------------------------------------------------


def test_rotation_new_values_use_the_new_key_old_ones_still_decrypt(
    client: Encryption, users: EncryptedTable, alice: LockContext, keyring: Keyring
) -> None:
    old_locked = _sealed(client.encrypt("old", column=users.email, table=users).with_lock_context(alice))
    old_plain = _sealed(client.encrypt("old-plain", column=users.email, table=users))
    assert old_locked["kid"] == old_plain["kid"] == "1"
    assert keyring.rotate() == 2
    new_locked = _sealed(client.encrypt("new", column=users.email, table=users).with_lock_context(alice))
    new_plain = _sealed(client.encrypt("new-plain", column=users.email, table=users))
    assert new_locked["kid"] == new_plain["kid"] == "2"
    out = client.bulk_decrypt([old_locked, new_locked, old_plain, new_plain]).with_lock_context(alice).unwrap()
    assert [r.data for r in out] == ["old", "new", "old-plain", "new-plain"]
    # search terms do not depend on the key version: old and new rows are found alike
    term = client.encrypt_query("old", column=users.email, table=users).with_lock_context(alice).unwrap()
    assert matches(term, old_locked)
    new_term = client.encrypt_query("new", column=users.email, table=users).with_lock_context(alice).unwrap()
    assert matches(new_term, new_locked)
    # a kid edited to the other version does not open
    res = client.decrypt(dict(old_locked, kid="2")).with_lock_context(alice)
    assert res.failure is not None and res.failure.type == "DecryptionError"


def test_identify_after_rotation_still_works(
    client: Encryption, users: EncryptedTable, alice: LockContext, keyring: Keyring, identify: Identify
) -> None:
    """Rotation also rotates the CTS signing key: the key service must trust the new one."""
    before = _sealed(client.encrypt("before", column=users.email, table=users).with_lock_context(alice))
    keyring.rotate()
    fresh = identify("alice")
    assert fresh.cts_token is not None and fresh.cts_token != alice.cts_token
    assert client.decrypt(before).with_lock_context(fresh).unwrap() == "before"
    after = _sealed(client.encrypt("after", column=users.email, table=users).with_lock_context(fresh))
    assert after["kid"] == "2"
    assert client.decrypt(after).with_lock_context(alice).unwrap() == "after"  # old token, still valid


# -- schema ------------------------------------------------------------------------------


def test_a_column_field_called_name(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    """DESIGN.md's own example declares a ``name`` column; the table's name is ``table_name``."""
    table = encrypted_table("people", name=encrypted_column("name"))
    assert table.table_name == "people" and table.name is table.columns["name"]
    payload = _sealed(client.encrypt("Ada", column=users.name, table=users).with_lock_context(alice))
    assert payload["i"] == {"t": "users", "c": "name"}
    assert client.decrypt(payload).with_lock_context(alice).unwrap() == "Ada"


def _decoded(plains: list[bytes]) -> list[Any]:
    """What payload.decode_value gives for each plaintext: a value, or (error type, message)."""
    from lockkit.payload import decode_value

    out: list[Any] = []
    for p in plains:
        try:
            out.append(decode_value(p))
        except LockkitError as err:
            out.append((type(err).__name__, err.message))
    return out


@pytest.mark.parametrize(
    "plains",
    [
        [b"sal@x.y", b"s", "s\u00e9\U0001f512".encode()],
        [b"i42", b"i-7", b"i" + b"9" * 60],
        [b"d2024-02-29", b"d1999-12-31"],
        [b"t2024-02-29T10:11:12+01:00", b"t2024-02-29T10:11:12.123456"],
        [b"sone", b"i1", b"b\x01", b"f" + bytes(8), b'j{"a":[1]}', b"d2024-01-01"],  # one group, many tags
        [b"sok", b"s\xff\xfe"],          # a text value that is not UTF-8
        [b"i12", b"ix"],                  # an int that is not a number
        [b"d2024-13-01", b"d2024-01-01"],  # not a date
        [b"sok", b""],                    # no type tag at all
        [b"qnew", b"qnewer"],             # a tag from a newer lockkit
    ],
    ids=["text", "int", "date", "datetime", "mixed", "bad-utf8", "bad-int", "bad-date", "empty", "unknown"],
)
def test_the_bulk_decoder_agrees_with_decode_value_for_every_tag(plains: list[bytes]) -> None:
    """A batch's plaintexts are decoded all at once when they share a type tag, and value by
    value otherwise: either way each value, and each error, is exactly decode_value's."""
    from lockkit.client import _decode_all

    got = [(type(v).__name__, v.message) if isinstance(v, LockkitError) else v for v in _decode_all(plains)]
    want = _decoded(plains)
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want]


class _Text(str):
    """A str subclass: encrypted value by value (encode_value's isinstance), never in bulk."""


class _BadZone(dt.tzinfo):
    """A tzinfo whose offset is not a timedelta: ``isoformat()`` raises TypeError."""

    def utcoffset(self, when: dt.datetime | None) -> Any:
        return 3600

    def dst(self, when: dt.datetime | None) -> Any:
        return None


@pytest.mark.parametrize(
    ("kind", "values", "bulk"),
    [
        ("text", ["sal@x.y", "", "s\u00e9\U0001f512"], True),
        ("int", [0, -7, 10**50], True),
        ("date", [dt.date(2024, 2, 29), dt.date(1, 1, 1)], True),
        ("datetime", [dt.datetime(2024, 2, 29, 10, 11, 12, 123456),
                      dt.datetime(2024, 2, 29, 10, 11, tzinfo=dt.timezone(dt.timedelta(hours=1)))], True),
        ("text", ["ok", None], False),             # None stays None: value by value
        ("text", ["ok", "\ud800"], False),         # a lone surrogate: its own EncryptionError
        ("text", ["ok", _Text("sub")], False),      # a str subclass
        ("text", ["ok", 7], False),                # a value of another type
        ("int", [1, True], False),                 # a bool is not an int column's value
        ("int", [1, 10**5000], False),             # too long for str(): its own EncryptionError
        ("date", [dt.datetime(2024, 1, 1)], False),  # a datetime in a date column
        ("datetime", [dt.date(2024, 1, 1)], False),  # a date in a datetime column
        ("datetime", [dt.datetime(2024, 1, 1, tzinfo=_BadZone())], False),  # isoformat() raises TypeError
        ("float", [1.5, 2.5], False),              # kinds the bulk encoder leaves to encode_value
        ("json", [{"a": 1}], False),
        ("text", [], False),
    ],
    ids=["text", "int", "date", "datetime", "none", "surrogate", "subclass", "mixed", "bool", "huge-int",
         "datetime-as-date", "date-as-datetime", "bad-tzinfo", "float", "json", "empty"],
)
def test_the_bulk_encoder_agrees_with_encode_value(kind: str, values: list[Any], bulk: bool) -> None:
    """A chunk whose values all have exactly the column's type is encoded all at once, to
    exactly encode_value's bytes; any other chunk is left to encode_value, value by value."""
    from lockkit.client import _encode_all
    from lockkit.payload import encode_value

    got = _encode_all(kind, values)
    assert got == ([encode_value(kind, v, "t.c") for v in values] if bulk else None)


def _payloads(client: Encryption, users: EncryptedTable, lc: LockContext | None, column: str,
              values: list[Any]) -> list[Any]:
    op = client.bulk_encrypt(values, column=column, table=users)
    return [r.unwrap() for r in (op.with_lock_context(lc) if lc is not None else op).unwrap()]


@pytest.mark.parametrize("column", ["age", "email"])  # no search index / equality and match terms
@pytest.mark.parametrize("locked", [True, False])
def test_bulk_encrypt_builds_the_same_payloads_on_either_path(
    client: Encryption, users: EncryptedTable, alice: LockContext, column: str, locked: bool
) -> None:
    """A chunk of plain values is encrypted all at once; with a None in it, value by value.
    Both give payloads with the same fields in the same order, the same terms, each payload
    with its own ``i`` dict and ``lc`` list, and the same values back."""
    values: list[Any] = [40 + i for i in range(30)] if column == "age" else [f"u{i}@x.y" for i in range(30)]
    lc = alice if locked else None
    fast = _payloads(client, users, lc, column, values)
    slow = _payloads(client, users, lc, column, [*values, None])
    assert slow[-1] is None
    assert [list(p) for p in fast] == [list(p) for p in slow[:-1]]
    assert list(fast[0])[:6] == ["v", "k", "i", "ks", "kid", "c"] and ("lc" in fast[0]) == locked
    assert [{k: v for k, v in p.items() if k != "c"} for p in fast] == [
        {k: v for k, v in p.items() if k != "c"} for p in slow[:-1]]  # same header, same terms
    assert len({id(p["i"]) for p in fast}) == len(fast)
    if locked:
        assert len({id(p["lc"]) for p in fast}) == len(fast) and fast[0]["lc"] == ["sub"]
    fast[0]["i"]["t"] = "edited"  # one payload's header edited: no other payload changes
    assert all(p["i"] == {"t": "users", "c": column} for p in fast[1:])
    fast[0]["i"]["t"] = "users"
    op = client.bulk_decrypt(fast)
    assert [r.unwrap() for r in (op.with_lock_context(lc) if lc is not None else op).unwrap()] == values


def test_bulk_encrypt_gives_bad_values_their_own_errors_in_a_plain_chunk(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    """A chunk that cannot be encoded all at once (a lone surrogate, a bool among ints) goes
    value by value: the bad value fails alone with encode_value's error."""
    texts = client.bulk_encrypt(["a@x.y", "\ud800", "b@x.y"], column="email", table=users).with_lock_context(alice).unwrap()
    assert [r.failure is None for r in texts] == [True, False, True]
    assert texts[1].failure is not None and "lone surrogate" in texts[1].failure.message
    ints = client.bulk_encrypt([1, True, 10**5000], column="age", table=users).with_lock_context(alice).unwrap()
    assert [r.failure is None for r in ints] == [True, False, False]
    assert ints[1].failure is not None and ints[1].failure.message == "users.age expects int, got bool"
    assert ints[2].failure is not None and "cannot be encoded as int" in ints[2].failure.message
    table = encrypted_table("events", when=encrypted_column("when").data_type("datetime"))
    events = Encryption([table], key_service=client.key_service)
    moments = [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=_BadZone()), dt.datetime(2025, 1, 1)]
    for batch in ([moments[0], moments[1]], moments):
        got = events.bulk_encrypt(batch, column="when", table=table).with_lock_context(alice).unwrap()
        assert got[1].failure is not None and got[1].failure.type == "EncryptionError"
        assert got[1].failure.message == "events.when: value cannot be encoded as datetime (TypeError)"
        assert got[0].failure is None and all(r.failure is None for r in got[2:])


def _column_path(monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """What each call of a column-by-column models path (``Encryption.<method>``) did: "done",
    "raised" or "declined" (the batch went model by model)."""
    seen: list[str] = []
    real = getattr(Encryption, method)

    def spy(self: Encryption, *args: Any) -> Any:
        try:
            out = real(self, *args)
        except LockkitError:
            seen.append("raised")
            raise
        seen.append("declined" if out is None else "done")
        return out

    monkeypatch.setattr(Encryption, method, spy)
    return seen


@pytest.fixture
def encrypt_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each bulk_encrypt_models call's column-by-column path did (see _column_path)."""
    return _column_path(monkeypatch, "_encrypt_full_models")


def test_full_models_encrypt_column_by_column_like_model_by_model(
    client: Encryption, users: EncryptedTable, alice: LockContext, encrypt_path: list[str]
) -> None:
    """Models holding every column are encrypted column by column; a batch with a model
    missing a field goes model by model. Both give the same fields, in the same order, with
    the pass-through fields untouched, and decrypt to the input."""
    models: list[dict[str, Any]] = [
        {"id": i, "notes": {"n": i}, "age": i, "name": f"User {i}", "email": f"u{i}@x.y", "extra": "kept"}
        for i in range(12)
    ]
    models[3]["name"] = None
    fast = client.bulk_encrypt_models(models, users).with_lock_context(alice).unwrap()
    slow = client.bulk_encrypt_models([*models, {"id": 99, "email": None}], users).with_lock_context(alice).unwrap()
    assert encrypt_path == ["done", "declined"]
    assert slow[-1] == {"id": 99, "email": None}
    assert [list(m) for m in fast] == [list(m) for m in slow[:-1]] == [list(m) for m in models]
    assert fast[3]["name"] is None and fast[5]["extra"] == "kept" and fast[5]["id"] == 5
    assert [{f: (v["hm"] if isinstance(v, dict) and "hm" in v else None) for f, v in m.items()} for m in fast] == [
        {f: (v["hm"] if isinstance(v, dict) and "hm" in v else None) for f, v in m.items()} for m in slow[:-1]]
    assert models[5]["email"] == "u5@x.y"  # the input models are not changed
    for batch in (fast, slow[:-1]):
        assert client.bulk_decrypt_models(batch, users).with_lock_context(alice).unwrap() == models


def test_full_models_encrypt_raises_the_first_failure_in_model_order(
    client: Encryption, users: EncryptedTable, alice: LockContext, encrypt_path: list[str]
) -> None:
    """Column by column or model by model, a bad batch fails with the same error: the first
    failed value's, models in order and each model's fields in the table's order."""
    models: list[dict[str, Any]] = [{"email": f"u{i}@x.y", "name": "n", "age": i, "notes": None} for i in range(6)]
    models[4]["notes"] = {1: "a"}  # JSON keys must be strings
    models[4]["age"] = "forty"     # the table declares age before notes: this one is reported
    models[5]["email"] = 12        # a later model fails too: not the one reported

    def failure(batch: list[dict[str, Any]]) -> tuple[str, str]:
        res = client.bulk_encrypt_models(batch, users).with_lock_context(alice).result()
        assert res.failure is not None and res.data is None
        return res.failure.type, res.failure.message

    fast, slow = failure(models), failure([*models, {"id": 1}])
    assert fast == slow == ("EncryptionError", "age: users.age expects int, got str")
    assert encrypt_path == ["raised", "declined"]


def test_a_tampered_value_in_an_authentic_batch_fails_alone(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    """The whole batch is opened at once; a value failing authentication in it (its key check
    intact, its ciphertext edited) fails alone and the others still decrypt, in place."""
    emails = [f"u{i}@x.y" for i in range(50)]
    payloads = [r.unwrap() for r in client.bulk_encrypt(emails, column=users.email, table=users)
                .with_lock_context(alice).unwrap()]
    raw = bytearray(base64.b64decode(payloads[17]["c"]))
    raw[-1] ^= 0x01  # the tag's last byte: the key check still says "this key"
    payloads[17] = dict(payloads[17], c=base64.b64encode(bytes(raw)).decode())
    out = client.bulk_decrypt(payloads).with_lock_context(alice).unwrap()
    assert [r.data for r in out] == [None if i == 17 else e for i, e in enumerate(emails)]
    assert out[17].failure is not None and out[17].failure.type == "DecryptionError"
    assert "tampered" in out[17].failure.message
    assert all(r.failure is None for i, r in enumerate(out) if i != 17)


def _full_models(client: Encryption, users: EncryptedTable, lc: LockContext, n: int) -> list[dict[str, Any]]:
    models = [{"id": i, "notes": {"n": i}, "age": i, "name": f"User {i}", "email": f"u{i}@x.y", "extra": "kept"}
              for i in range(n)]
    return client.bulk_encrypt_models(models, users).with_lock_context(lc).unwrap()


@pytest.fixture
def column_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each bulk_decrypt_models call's column-by-column path did (see _column_path)."""
    return _column_path(monkeypatch, "_decrypt_full_models")


def test_full_models_decrypt_column_by_column_like_model_by_model(
    client: Encryption, users: EncryptedTable, alice: LockContext, column_path: list[str]
) -> None:
    """A batch with a payload in every column (decrypted column by column) gives what the
    model-by-model path gives: the same values, fields, key order and pass-through fields."""
    enc = _full_models(client, users, alice, 12)
    enc[3]["name"] = enc[7]["age"] = None  # a null column value stays None, on either path
    fast = client.bulk_decrypt_models(enc, users).with_lock_context(alice).unwrap()
    slow = client.bulk_decrypt_models([*enc, {"id": 99, "email": None}], users).with_lock_context(alice).unwrap()
    assert fast == slow[:-1] and slow[-1] == {"id": 99, "email": None}
    assert [list(m) for m in fast] == [list(m) for m in enc]
    assert fast[5] == {"id": 5, "notes": {"n": 5}, "age": 5, "name": "User 5", "email": "u5@x.y", "extra": "kept"}
    assert fast[3]["name"] is None and fast[7]["age"] is None and fast[3]["age"] == 3
    assert enc[5]["email"]["k"] == "ct"  # the input models are not changed
    assert column_path == ["done", "declined"]  # the model without most fields goes model by model
    for odd in ({}, {"k": "ct", "c": "x"}, "text", 7):  # not a payload: the exact error, model by model
        batch = [dict(m) for m in enc]
        batch[2]["notes"] = odd
        res = client.bulk_decrypt_models(batch, users).with_lock_context(alice).result()
        assert res.failure is not None and res.failure.message == "notes: expected an encrypted payload"
    assert column_path[2:] == ["declined"] * 4


@pytest.mark.parametrize("how", ["moved", "tampered", "other-identity", "foreign-keyset"])
def test_full_models_raise_the_first_failure_in_model_order(
    client: Encryption, users: EncryptedTable, alice: LockContext, bob: LockContext, how: str,
    column_path: list[str],
) -> None:
    """Column by column or model by model, a bad batch fails with the same error: the first
    failed value's, models in order and each model's fields in its own order."""
    enc = _full_models(client, users, alice, 6)
    other = _full_models(client, users, bob, 1)[0]
    if how == "moved":
        enc[4]["name"] = dict(enc[4]["email"])  # a payload of another column
    elif how == "tampered":
        raw = bytearray(base64.b64decode(enc[4]["name"]["c"]))
        raw[-1] ^= 0x80
        enc[4]["name"] = dict(enc[4]["name"], c=base64.b64encode(bytes(raw)).decode())
    elif how == "other-identity":
        enc[4]["name"] = other["name"]
    else:
        tenant = Encryption([users], key_service=client.key_service, keyset="tenant-b")
        enc[4]["name"] = tenant.encrypt("x", column="name", table=users).with_lock_context(alice).unwrap()
    enc[5]["age"] = dict(enc[5]["email"])  # a later model fails too: not the one reported
    enc[4] = {k: enc[4][k] for k in ("id", "email", "name", "notes", "age", "extra")}  # its own field order

    def failure(batch: list[dict[str, Any]]) -> tuple[str, str]:
        res = client.bulk_decrypt_models(batch, users).with_lock_context(alice).result()
        assert res.failure is not None and res.data is None
        return res.failure.type, res.failure.message

    fast, slow = failure(enc), failure([*enc, {"email": None}])
    assert fast == slow and column_path == ["raised", "declined"]
    assert fast[1].startswith("name: ")


def test_bulk_encrypt_query_is_one_key_service_call_with_per_term_results(
    client: Encryption, users: EncryptedTable, alice: LockContext, key_service: LocalKeyService
) -> None:
    """Many search terms, one key release (one index key per column); a bad term fails alone,
    with encrypt_query's own error, and asks for no key of its own."""
    specs: list[dict[str, Any]] = [
        {"value": "a@x.y", "column": users.email, "table": users, "query_type": "equality"},
        {"value": "liddell", "column": "name", "table": "users"},
        {"value": None, "column": "email", "table": users},                        # nothing to search for
        {"value": 5, "column": "name", "table": users},                            # match needs text
        {"value": 5, "column": "age", "table": users},                             # no search index
        {"value": "x", "column": "nope", "table": users},                          # no such column
        {"value": "x", "column": "name", "table": users, "query_type": "equality"},  # no equality index
        {"value": "x", "column": "email", "table": users, "query_type": "range"},   # no such query type
        {"value": 5, "column": "email", "table": users},                           # an int for a text column
        {"value": "b@x.y", "column": users.email, "table": users},
    ]
    calls = key_service.release_calls
    out = client.bulk_encrypt_query(specs).with_lock_context(alice).unwrap()
    assert key_service.release_calls == calls + 1
    assert [r.failure.type if r.failure else None for r in out] == [
        None, None, "EncryptionError", "EncryptionError", "EncryptionError", "ClientInitError", "EncryptionError",
        "EncryptionError", "EncryptionError", None,
    ]
    assert out[8].failure is not None and out[8].failure.message == "users.email expects text, got int"
    for spec, r in zip(specs, out):
        single = client.encrypt_query(spec["value"], column=spec["column"], table=spec["table"],
                                      query_type=spec.get("query_type")).with_lock_context(alice).result()
        assert (r.data, r.failure) == (single.data, single.failure)
    assert set(out[0].unwrap()) == {"hm"} and set(out[1].unwrap()) == {"bf"} and set(out[9].unwrap()) == {"hm", "bf"}
    calls = key_service.release_calls
    only_bad = client.bulk_encrypt_query(specs[2:9]).with_lock_context(alice).unwrap()
    assert all(r.failure is not None for r in only_bad)
    assert client.bulk_encrypt_query([]).with_lock_context(alice).unwrap() == []
    assert key_service.release_calls == calls  # bad terms ask for no key


@pytest.mark.parametrize("term", [("a", "email", "users"), {"value": "a", "column": "email"},
                                  {"value": "a", "column": "email", "table": "users", "limit": 3}])
def test_bulk_encrypt_query_refuses_a_malformed_term_at_the_call(client: Encryption, term: Any) -> None:
    with pytest.raises(TypeError, match="each term is a dict"):
        client.bulk_encrypt_query([term])
