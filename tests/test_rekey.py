"""Key lifecycle: rotate, rekey, retire.

The example app's SQLite database is rotated and rekeyed through its real commands (``flask
notes rekey|key-usage|retire-key`` via Flask's CLI runner, and as a subprocess killed with
SIGKILL mid-run, then run again); the library API (:mod:`lockkit.rekey`) on the embedded key
service and on a real OpenBao; ``Keyring.retire``; ``lockkit keys usage|retire``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import requests
from click.testing import CliRunner
from flask import Flask

from lockkit import ConfigurationError, Encryption, LockContext, matches
from lockkit.audit import AuditLog, audit_key
from lockkit.errors import DecryptionError
from lockkit.flask import get_state
from lockkit.keys.keyring import Keyring
from lockkit.rekey import (
    RekeyError,
    RekeyJob,
    kid_label,
    kid_version,
    needs_rekey,
    openbao_current_kid,
    rekey_local,
    rekey_openbao,
)
from lockkit.rekey_cli import add_key_lifecycle_commands
from lockkit.schema import EncryptedTable
from lockkit.testing import LocalIssuer

from .conftest import WORKSPACE
from .example_support import ROOT, example_env  # noqa: F401  (fixture; puts the repository on sys.path)

from examples.flask_clerk import create_app  # noqa: E402
from examples.flask_clerk.notes import NoteStore, notes_table  # noqa: E402

CRN = "crn:local:ws-rekey"


# -- the example app on a keyring file -----------------------------------------------------
@pytest.fixture
def ring_path(tmp_path: Path, example_env: str, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    """A keyring file, named by LOCKKIT_KEYRING (the app and `lockkit keys ...` both read it)."""
    path = tmp_path / "keys" / "keyring.json"
    Keyring.generate(CRN).save(path)
    monkeypatch.setenv("LOCKKIT_WORKSPACE_CRN", CRN)
    monkeypatch.setenv("LOCKKIT_KEYRING", str(path))
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "notes.db"


class Apps:
    """Builds the example app (a fresh one reads the keyring as it is on disk now, like a
    restarted server) and closes each one's database connection at the end."""

    def __init__(self, db_path: Path, secret: str) -> None:
        self.db_path, self.secret = db_path, secret
        self.made: list[Flask] = []

    def __call__(self) -> Flask:
        app = create_app({"TESTING": True, "SECRET_KEY": self.secret, "DATABASE_URL": f"sqlite:///{self.db_path}",
                          "LOCKKIT_PROVIDERS": ["dev"]})
        self.made.append(app)
        return app

    def close(self) -> None:
        for app in self.made:
            app.extensions["notes_db"].close()


@pytest.fixture
def apps(ring_path: Path, db_path: Path, example_env: str) -> Iterator[Apps]:  # noqa: F811
    made = Apps(db_path, example_env)
    yield made
    made.close()


def lock_context(app: Flask, sub: str) -> LockContext:
    """``sub``'s lock context through the app's token service (a real dev-issuer JWT)."""
    dev = app.extensions["lockkit_dev"]
    return LockContext(token_service=get_state(app).token_service).identify(dev.mint(sub)).unwrap()


def store(app: Flask, sub: str) -> NoteStore:
    return NoteStore(app.extensions["notes_db"], get_state(app).encryption([notes_table]), sub, lock_context(app, sub))


def seed(app: Flask, users: dict[str, int]) -> dict[str, dict[int, tuple[str, str, list[str]]]]:
    """``n`` notes per user, each tagged "shared" and one unique tag; returns what was written."""
    made: dict[str, dict[int, tuple[str, str, list[str]]]] = {}
    for sub, n in users.items():
        s = store(app, sub)
        made[sub] = {}
        for i in range(n):
            note = (f"{sub} title {i}", f"{sub} body {i}: ünïcode and more words", sorted(["shared", f"t{i}"]))
            made[sub][s.create(*note)] = note
    return made


def rotate(path: Path) -> int:
    """What `lockkit keys rotate` does."""
    ring = Keyring.load(path)
    v = ring.rotate()
    ring.save(path, overwrite=True)
    return v


def db_rows(db: Path) -> tuple[list[tuple[int, str, dict[str, Any], dict[str, Any]]], list[tuple[int, str, dict[str, Any], str]]]:
    """``(notes [(id, owner, title, body)], tags [(note_id, owner, tag, tag_hm)])`` straight from SQLite."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        notes = [(i, o, json.loads(t), json.loads(b)) for i, o, t, b in
                 conn.execute("SELECT id, owner, title, body FROM notes ORDER BY id")]
        tags = [(n, o, json.loads(t), hm) for n, o, t, hm in
                conn.execute("SELECT note_id, owner, tag, tag_hm FROM note_tags ORDER BY note_id, tag_hm")]
    finally:
        conn.close()
    return notes, tags


def kids(db: Path) -> dict[str, int]:
    notes, tags = db_rows(db)
    out: dict[str, int] = {}
    for _, _, t, b in notes:
        for p in (t, b):
            out[p["kid"]] = out.get(p["kid"], 0) + 1
    for _, _, p, _ in tags:
        out[p["kid"]] = out.get(p["kid"], 0) + 1
    return out


def assert_all_decrypt(app: Flask, made: dict[str, dict[int, tuple[str, str, list[str]]]]) -> None:
    """Every note of every owner opens for that owner, as written; tag (equality) search
    finds all of them."""
    for sub, notes in made.items():
        s = store(app, sub)
        listed: Any = s.all_notes()
        got = {n.id: (n.title, n.body, n.tags) for n in listed}
        assert got == notes, f"{sub}'s notes differ after the rekey"
        assert {n.id for n in s.by_tag("shared")} == set(notes)


def cli(app: Flask, *args: str) -> click.testing.Result:
    return app.test_cli_runner().invoke(args=list(args))


# -- the example app: rotate, rekey, retire ---------------------------------------------------
def test_rotate_rekey_retire_through_the_example_commands(apps: Apps, ring_path: Path, db_path: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit_path = tmp_path / "audit.log"
    monkeypatch.setenv("LOCKKIT_AUDIT_LOG", str(audit_path))
    made = seed(apps(), {"alice": 4, "bob": 3})
    _, tags_before = db_rows(db_path)
    assert kids(db_path) == {"1": 7 * 2 + 7 * 2}
    assert rotate(ring_path) == 2
    app = apps()  # restarted after the rotation

    usage = cli(app, "notes", "key-usage")
    assert usage.exit_code == 0, usage.output
    lines = [line.split() for line in usage.output.splitlines()]
    assert ["notes.title", "1", "7"] in lines and ["notes.body", "1", "7"] in lines and ["note_tags.tag", "1", "14"] in lines
    assert "keyring versions: 1, 2 (primary 2)" in usage.output

    refused = cli(app, "notes", "retire-key", "1")
    assert refused.exit_code != 0
    assert ("28 payloads in notes.title (7), notes.body (7), note_tags.tag (14) still use key version 1; "
            "run `notes rekey` first") in refused.output
    assert cli(app, "notes", "retire-key", "2").exit_code != 0  # the primary

    res = cli(app, "notes", "rekey", "--batch-size", "3")
    assert res.exit_code == 0, res.output
    assert "rekeyed 21 rows of 2 owners" in res.output
    assert kids(db_path) == {"2": 28}
    notes_after, tags_after = db_rows(db_path)
    # search terms are untouched: the stored equality column and each payload's hm/bf
    assert [(n, o, p["hm"], hm) for n, o, p, hm in tags_after] == [(n, o, p["hm"], hm) for n, o, p, hm in tags_before]
    assert all(p["i"] == {"t": "notes", "c": "tag"} and p["lc"] == ["sub"] for _, _, p, _ in tags_after)
    assert_all_decrypt(app, made)
    assert_all_decrypt(apps(), made)  # and for a server started afterwards
    # alice's lock context does not open bob's rekeyed values
    bob_title = next(t for _, o, t, _ in notes_after if o == "bob")
    client = get_state(app).encryption([notes_table])
    res_other = client.decrypt(bob_title).with_lock_context(lock_context(app, "alice"))
    assert res_other.failure is not None and "another identity" in res_other.failure.message

    again = cli(app, "notes", "rekey")  # idempotent: nothing left
    assert again.exit_code == 0 and "rekeyed 0 rows" in again.output

    # every rekey release was audited with the owner as subject and actor=rekey
    log = AuditLog(audit_path, audit_key(Keyring.load(ring_path)))
    assert log.verify().ok
    for sub, notes in made.items():
        events = [e for e in log.query(subject=sub) if e.metadata.get("actor") == "rekey"]
        # decrypt and encrypt (the index keys that recompute the unchanged search terms may be
        # recorded as queries of their own), all granted
        ops = {(e.operation, e.outcome) for e in events}
        assert {("decrypt", "granted"), ("encrypt", "granted")} <= ops <= {("decrypt", "granted"), ("encrypt", "granted"),
                                                                        ("query", "granted")}
        assert {e.subject for e in events} == {sub}
        assert {f"notes:{i}" for i in notes} <= {r for e in events for r in e.records}

    done = cli(app, "notes", "retire-key", "1")
    assert done.exit_code == 0, done.output
    assert [v.version for v in Keyring.load(ring_path).versions()] == [2]
    listed = cli(app, "lockkit", "keys", "list")
    assert listed.exit_code == 0, listed.output
    assert [line.split()[0] for line in listed.output.splitlines()[2:]] == ["2"]
    assert_all_decrypt(apps(), made)


def test_retire_key_refuses_an_inline_keyring(example_env: str, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ring = Keyring.generate(CRN)
    ring.rotate()
    app = create_app({"TESTING": True, "SECRET_KEY": example_env, "DATABASE_URL": f"sqlite:///{db_path}",
                      "LOCKKIT_PROVIDERS": ["dev"], "LOCKKIT_WORKSPACE_CRN": CRN, "LOCKKIT_KEYRING_JSON": ring.to_json()})
    try:
        res = cli(app, "notes", "retire-key", "1")
        assert res.exit_code != 0 and "LOCKKIT_KEYRING_JSON" in res.output
    finally:
        app.extensions["notes_db"].close()


def _child_env(db_path: Path, ring_path: Path, secret: str, home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
        "FLASK_DEBUG": "1",  # the dev sign-in provider runs only in debug or testing mode
        "SECRET_KEY": secret, "DATABASE_URL": f"sqlite:///{db_path}",
        "LOCKKIT_WORKSPACE_CRN": CRN, "LOCKKIT_KEYRING": str(ring_path),
    }


KILL_AFTER = 12  # committed batches of one row before the child kills itself

# `flask notes rekey --batch-size 1`, with the example's storage wrapped so that the process
# SIGKILLs itself right after its N-th committed batch (nothing is mocked: real rekey, real
# commits, a real kill).
_KILLED_REKEY = """
import os, signal, sys
from examples.flask_clerk import admin
limit = int(sys.argv[1])
write = admin.NotesRekeyStorage.write
done = [0]
def write_then_maybe_die(self, rows):
    n = write(self, rows)
    done[0] += 1
    if done[0] >= limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return n
admin.NotesRekeyStorage.write = write_then_maybe_die
from flask.cli import main
sys.argv = ["flask", "--app", "examples.flask_clerk", "notes", "rekey", "--batch-size", "1"]
main()
"""


def test_rekey_killed_mid_run_then_run_again_loses_and_skips_nothing(
    apps: Apps, ring_path: Path, db_path: Path, example_env: str, tmp_path: Path  # noqa: F811
) -> None:
    made = seed(apps(), {"alice": 60, "bob": 60})
    notes_before, tags_before = db_rows(db_path)
    total = 2 * len(notes_before) + len(tags_before)
    rotate(ring_path)

    # the real CLI in a child that SIGKILLs itself right after its KILL_AFTER-th committed batch:
    # a kill mid-run at a known point, however fast the rekey runs on this machine
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_REKEY, str(KILL_AFTER)],
        cwd=tmp_path, env=_child_env(db_path, ring_path, example_env, tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out = child.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, f"the rekey ended before it was killed: {out[-2000:]}"
    moved = sum(1 for _, _, p, _ in db_rows(db_path)[1] if p["kid"] == "2")
    assert moved >= 3

    # after the kill: every row is wholly old or wholly new, none lost; search finds both
    notes_mid, tags_mid = db_rows(db_path)
    assert [(i, o) for i, o, _, _ in notes_mid] == [(i, o) for i, o, _, _ in notes_before]
    assert [(n, o, hm) for n, o, _, hm in tags_mid] == [(n, o, hm) for n, o, _, hm in tags_before]
    assert all(t["kid"] == b["kid"] for _, _, t, b in notes_mid), "a note row is half rekeyed"
    mid = kids(db_path)
    assert set(mid) == {"1", "2"} and sum(mid.values()) == total and 0 < mid["2"] < total
    app = apps()
    client = get_state(app).encryption([notes_table])
    shared_hm = client.encrypt_query("shared", column="tag", table=notes_table, query_type="equality") \
        .with_lock_context(lock_context(app, "alice")).unwrap()["hm"]
    shared = [p["kid"] for _, o, p, hm in tags_mid if o == "alice" and hm == shared_hm]
    assert len(shared) == 60 and {"1", "2"} == set(shared), "alice's tag rows are half moved (owners go in order)"
    assert_all_decrypt(app, made)  # tag search finds old and new rows during the rekey
    refused = cli(app, "notes", "retire-key", "1")
    assert refused.exit_code != 0 and f"{mid['1']} payloads in " in refused.output

    # run again: it finishes the rest
    res = cli(app, "notes", "rekey", "--batch-size", "7")
    assert res.exit_code == 0, res.output
    assert kids(db_path) == {"2": total}
    notes_after, tags_after = db_rows(db_path)
    assert [(i, o) for i, o, _, _ in notes_after] == [(i, o) for i, o, _, _ in notes_before]
    assert [(n, o, p["hm"], hm) for n, o, p, hm in tags_after] == [(n, o, p["hm"], hm) for n, o, p, hm in tags_before]
    assert_all_decrypt(app, made)
    assert cli(app, "notes", "retire-key", "1").exit_code == 0
    assert_all_decrypt(apps(), made)


# -- the library: the embedded key service ------------------------------------------------
@pytest.mark.backends("local")
def test_rekey_local_keeps_types_terms_and_locks(client: Encryption, keyring: Keyring, users: EncryptedTable,
                                                 alice: LockContext, bob: LockContext) -> None:
    model = {"email": "alice@example.com", "name": "Alice Liddell", "age": 41, "notes": {"a": [1, 2.5, None]}}
    locked = client.encrypt_model(model, users).with_lock_context(alice).unwrap()
    unlocked = client.encrypt("shared@example.com", column="email", table=users).unwrap()
    old = [locked["email"], locked["name"], locked["age"], locked["notes"], unlocked]
    keyring.rotate()
    assert all(needs_rekey(p, "2") for p in old) and not any(needs_rekey(p, "1") for p in old)
    service: Any = client.key_service
    calls = service.release_calls
    got_locked = rekey_local(client, [*old[:4], None], alice, records=["row-1"])
    assert service.release_calls == calls + 2  # one bulk decrypt, one bulk encrypt
    assert got_locked[-1] is None
    new = [p for p in got_locked[:4] + rekey_local(client, [unlocked], None) if p is not None]  # unlocked: no lock context
    assert len(new) == 5
    mixed = [p for p in rekey_local(client, old, alice) if p is not None]  # locked and unlocked in one batch: re-encrypted apart
    assert [p["kid"] for p in mixed] == ["2"] * 5 and "lc" not in mixed[4] and mixed[0]["lc"] == ["sub"]
    for o, n in zip(old, new):
        assert n["kid"] == "2" and n["c"] != o["c"]
        assert {k: v for k, v in n.items() if k not in ("kid", "c")} == {k: v for k, v in o.items() if k not in ("kid", "c")}
    assert "lc" not in new[4]  # an unlocked value stays unlocked
    got = client.bulk_decrypt(new[:4]).with_lock_context(alice).unwrap()
    assert [g.unwrap() for g in got] == ["alice@example.com", "Alice Liddell", 41, {"a": [1, 2.5, None]}]
    assert client.decrypt(new[4]).unwrap() == "shared@example.com"
    term = client.encrypt_query("alice@example.com", column="email", table=users, query_type="equality").with_lock_context(alice).unwrap()
    assert term["hm"] == old[0]["hm"] == new[0]["hm"]
    # another identity's lock context opens nothing, and nothing comes back
    with pytest.raises(DecryptionError, match="another identity"):
        rekey_local(client, old[:2], bob)
    # locked payloads without a lock context: refused
    with pytest.raises(Exception, match="locked to an identity"):
        rekey_local(client, old[:1], None)


@pytest.mark.backends("local")
def test_rekey_rewrites_a_match_filter_from_an_older_tokenizer(client: Encryption, keyring: Keyring,
                                                               users: EncryptedTable, alice: LockContext) -> None:
    """A match filter written by an older lockkit (words split differently) is no reason to
    refuse a rekey: the new payload gets the filter the current tokenizer computes, and the
    equality term is kept exactly."""
    p = client.encrypt("नमस्ते İstanbul", column="email", table=users).with_lock_context(alice).unwrap()
    old = {**p, "bf": sorted(set(p["bf"]) ^ {0, 1, 2})}  # as a different tokenizer would have set it
    keyring.rotate()
    [new] = rekey_local(client, [old], alice)
    assert new is not None and new["kid"] == "2" and new["hm"] == p["hm"] and new["bf"] == p["bf"]
    term = client.encrypt_query("मस्ते", column="email", table=users, query_type="match").with_lock_context(alice).unwrap()
    assert matches(term, new)


@pytest.mark.backends("local")
def test_rekey_local_takes_json_text_and_gives_text_back(client: Encryption, keyring: Keyring, users: EncryptedTable,
                                                          alice: LockContext) -> None:
    """Payloads as a text column holds them (JSON text, str or bytes) are rekeyed like dicts and
    come back as text; anything else is a DecryptionError, never a TypeError."""
    p = client.encrypt("alice@example.com", column="email", table=users).with_lock_context(alice).unwrap()
    keyring.rotate()
    got = rekey_local(client, [json.dumps(p), None, json.dumps(p).encode(), p], alice)
    assert isinstance(got[0], str) and got[1] is None and isinstance(got[2], str) and isinstance(got[3], dict)
    for new in (json.loads(got[0]), json.loads(got[2]), got[3]):
        assert new["kid"] == "2" and client.decrypt(new).with_lock_context(alice).unwrap() == "alice@example.com"
    for bad in ("not json", b"\xff", "[1, 2]", 5):
        with pytest.raises(DecryptionError, match="not a lockkit payload"):
            rekey_local(client, [bad], alice)


def test_needs_rekey_and_key_ids() -> None:
    local = {"v": 1, "k": "ct", "kid": "1", "c": "x"}
    bao = {"v": 1, "k": "ct", "kid": "vault:v1:abc", "c": "x"}
    assert needs_rekey(local, "2") and not needs_rekey(local, "1") and not needs_rekey(None, "2")
    assert needs_rekey(json.dumps(local), "2")
    assert needs_rekey(bao, "vault:v2:") and not needs_rekey(bao, "vault:v1:")
    assert needs_rekey({**bao, "kid": "vault:v10:abc"}, "vault:v1:")  # a prefix match, not "starts with v1"
    assert kid_label("vault:v12:abc") == "vault:v12" and kid_label("3") == "3"
    assert kid_version("vault:v12:abc") == 12 and kid_version("3") == 3 and kid_version("03") is None
    for bad in ({"k": "ct"}, "not json", 5, {"kid": "1"}):
        with pytest.raises(DecryptionError):
            needs_rekey(bad, "2")


class MemoryStorage:
    """A :class:`RekeyStorage` over a dict that re-queries by key id (no cursor), with a
    transaction that commits the whole batch at once."""

    def __init__(self, rows: dict[int, dict[str, Any]], current: str) -> None:
        self.rows, self.current, self.commits = rows, current, 0

    def pending(self, batch_size: int) -> list[tuple[Any, dict[str, Any]]]:
        stale = [(i, dict(f)) for i, f in sorted(self.rows.items()) if any(needs_rekey(p, self.current) for p in f.values())]
        return stale[:batch_size]

    def write(self, rows: list[tuple[Any, dict[str, Any]]]) -> int:
        staged = {i: dict(f) for i, f in rows}
        self.rows.update(staged)  # all at once: one "transaction"
        self.commits += 1
        return len(staged)


@pytest.mark.backends("local")
def test_rekey_job_is_resumable_and_refuses_to_loop(client: Encryption, keyring: Keyring, users: EncryptedTable,
                                                    alice: LockContext) -> None:
    models = client.bulk_encrypt_models([{"email": f"u{i}@x.org", "age": i} for i in range(10)], users).with_lock_context(alice).unwrap()
    rows = {i: m for i, m in enumerate(models)}
    keyring.rotate()
    storage = MemoryStorage(rows, "2")
    batches = [0]

    def crashing(payloads: list[dict[str, Any]], *, records: Any) -> list[dict[str, Any]]:
        batches[0] += 1
        if batches[0] == 3:
            raise KeyboardInterrupt  # the process dies mid-batch: nothing of it is written
        return [p for p in rekey_local(client, payloads, alice, records=records) if p is not None]

    seen: list[tuple[int, int | None]] = []
    with pytest.raises(KeyboardInterrupt):
        RekeyJob(storage, crashing, "2", batch_size=3, progress=lambda d, t: seen.append((d, t)), total=10).run()
    assert storage.commits == 2 and seen == [(3, 10), (6, 10)]
    assert sum(1 for f in rows.values() if f["email"]["kid"] == "2") == 6
    assert all(f["email"]["kid"] == f["age"]["kid"] for f in rows.values())  # never half a row
    report = RekeyJob(storage, crashing, "2", batch_size=3).run()  # run again: it finishes the rest
    assert (report.rows, report.payloads) == (4, 8)
    assert all(not needs_rekey(p, "2") for f in rows.values() for p in f.values())
    got = client.bulk_decrypt_models(list(rows.values()), users).with_lock_context(alice).unwrap()
    assert [(g["email"], g["age"]) for g in got] == [(f"u{i}@x.org", i) for i in range(10)]
    assert RekeyJob(storage, crashing, "2").run().rows == 0  # idempotent

    # a key service still encrypting under the old key (not restarted): refused, not looped
    stale = MemoryStorage({0: dict(models[0])}, "3")
    with pytest.raises(RekeyError, match="restart the app"):
        RekeyJob(stale, crashing, "3").run()
    with pytest.raises(ValueError):
        RekeyJob(stale, crashing, "3", batch_size=0)


# -- Keyring.retire and `lockkit keys usage|retire` -----------------------------------------
def test_keyring_retire() -> None:
    ring = Keyring.generate(WORKSPACE)
    with pytest.raises(ConfigurationError, match="primary"):
        ring.retire(1)
    ring.rotate()
    ring.rotate()
    with pytest.raises(ConfigurationError, match="not in keyring"):
        ring.retire(7)
    with pytest.raises(ConfigurationError):
        ring.retire(True)
    ring.retire(1)
    assert [v.version for v in ring.versions()] == [2, 3] and not ring.has_version(1)
    assert "cts-v1" not in ring.cts_public_keys()
    again = Keyring.from_json(ring.to_json())
    assert [v.version for v in again.versions()] == [2, 3] and again.primary == 3
    assert again.rotate() == 4  # numbers are never reused
    again.retire(2)
    with pytest.raises(ConfigurationError, match="primary"):
        again.retire(4)
    primary_not_newest = Keyring.from_json(json.dumps({**json.loads(again.to_json()), "primary": 3}))
    with pytest.raises(ConfigurationError, match="newest"):
        primary_not_newest.retire(4)


@pytest.fixture
def keys_group() -> click.Group:
    @click.group()
    def keys() -> None:
        pass

    add_key_lifecycle_commands(keys)
    return keys


def test_lockkit_keys_retire_needs_proof_of_no_use(keys_group: click.Group, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("LOCKKIT_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "keyring.json"
    ring = Keyring.generate(CRN)
    ring.rotate()
    ring.save(path)
    monkeypatch.setenv("LOCKKIT_WORKSPACE_CRN", CRN)
    monkeypatch.setenv("LOCKKIT_KEYRING", str(path))
    runner = CliRunner()
    res = runner.invoke(keys_group, ["retire", "1"])
    assert res.exit_code != 0 and "--confirm-unused" in res.output and "cannot see your database" in res.output
    assert Keyring.load(path).has_version(1)
    res = runner.invoke(keys_group, ["retire", "2", "--confirm-unused"])
    assert res.exit_code != 0 and "primary" in res.output
    res = runner.invoke(keys_group, ["retire", "5", "--confirm-unused"])
    assert res.exit_code != 0 and "not in keyring" in res.output
    res = runner.invoke(keys_group, ["retire", "1", "--confirm-unused"])
    assert res.exit_code == 0, res.output
    assert [v.version for v in Keyring.load(path).versions()] == [2]
    assert os.stat(path).st_mode & 0o777 == 0o600
    monkeypatch.setenv("LOCKKIT_KEYRING_JSON", Keyring.generate(CRN).to_json())
    res = runner.invoke(keys_group, ["retire", "1", "--confirm-unused"])
    assert res.exit_code != 0 and "LOCKKIT_KEYRING_JSON" in res.output


def test_lockkit_keys_usage_counts_payloads_per_key(keys_group: click.Group, tmp_path: Path) -> None:
    p1 = {"v": 1, "k": "ct", "i": {"t": "t", "c": "c"}, "ks": "default", "kid": "1", "c": "AAAA"}
    p2 = dict(p1, kid="2")
    pb = dict(p1, kid="vault:v3:xyz")
    lines = "\n".join([json.dumps(p1), json.dumps(p2), json.dumps(p2), "", "not json", json.dumps(pb)])  # psql -At
    res = CliRunner().invoke(keys_group, ["usage"], input=lines)
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines()[1:]]
    assert rows == [["1", "1"], ["2", "2"], ["vault:v3", "1"]]
    # sqlite3 -json: payloads stored as JSON text inside rows
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps([{"id": 1, "title": json.dumps(p1), "body": json.dumps(p1)}, {"id": 2, "title": json.dumps(p2)}]))
    res = CliRunner().invoke(keys_group, ["usage", str(dump)])
    assert [line.split() for line in res.output.splitlines()[1:]] == [["1", "2"], ["2", "1"]]
    assert "no payloads found" in CliRunner().invoke(keys_group, ["usage"], input="nothing\n").output


def test_lockkit_keys_usage_reads_several_columns_and_refuses_what_it_cannot_read(
    keys_group: click.Group, tmp_path: Path
) -> None:
    """A count that misses payloads could call a key version unused before `retire` (values
    lost): payloads among other text are found, and payload text that cannot be read fails the
    command instead of being skipped."""
    import csv
    import io

    p1 = {"v": 1, "k": "ct", "i": {"t": "t", "c": "c"}, "ks": "default", "kid": "1", "c": "AAAA"}
    p2 = dict(p1, kid="2")
    # psql -At with two columns: "p1|p2" per row
    res = CliRunner().invoke(keys_group, ["usage"], input=f"{json.dumps(p1)}|{json.dumps(p2)}\n7|{json.dumps(p1)}\n")
    assert res.exit_code == 0, res.output
    assert [line.split() for line in res.output.splitlines()[1:]] == [["1", "2"], ["2", "1"]]
    # sqlite3 -csv doubles the quotes: not JSON; refused, not "no payloads found"
    out = io.StringIO()
    csv.writer(out).writerows([[1, json.dumps(p1), json.dumps(p2)], [2, json.dumps(p1), ""]])
    res = CliRunner().invoke(keys_group, ["usage"], input=out.getvalue())
    assert res.exit_code != 0 and "3 of 3 payloads" in res.output and "no payloads found" not in res.output
    # one cut line among good ones: refused too
    cut = json.dumps(p1)[:-10]
    res = CliRunner().invoke(keys_group, ["usage"], input="\n".join([json.dumps(p1), cut, json.dumps(p2)]))
    assert res.exit_code != 0 and "1 of 3 payloads" in res.output
    # JSON text inside JSON (sqlite3 -json), escaped quotes and all, is still read
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps([{"id": 1, "a": json.dumps(p2), "b": json.dumps(p2)}]))
    res = CliRunner().invoke(keys_group, ["usage", str(dump)])
    assert res.exit_code == 0 and [line.split() for line in res.output.splitlines()[1:]] == [["2", "2"]]


# -- OpenBao: the app's token rotates and rewraps; never decrypts ------------------------------
def _app_token(bao: Any) -> str:
    from lockkit.keys.openbao_setup import APP_POLICY

    r = requests.post(f"{bao.addr}/v1/auth/token/create", headers={"X-Vault-Token": bao.root_token},
                      json={"policies": [APP_POLICY], "no_default_policy": True, "ttl": "5m"}, timeout=10)
    r.raise_for_status()
    return str(r.json()["auth"]["client_token"])


@pytest.mark.backends("openbao")
def test_openbao_rotate_and_rewrap_with_the_app_token(backend: str, bao: Any, bao_config: Any, client: Encryption,
                                                      users: EncryptedTable, idp: LocalIssuer) -> None:
    from dataclasses import replace

    from lockkit.keys.openbao import OpenBaoHTTP, OpenBaoKeyService, decode_token, key_name

    alice = client.lock_context().identify(idp.mint("alice-rekey")).unwrap()
    bob = client.lock_context().identify(idp.mint("bob-rekey")).unwrap()
    assert alice.cts_token is not None
    key = decode_token(alice.cts_token.access_token)[1]
    assert key == key_name(bao_config, "alice-rekey")
    batches = [client.bulk_encrypt_models([{"email": f"a{i}{j}@x.org", "age": i} for j in range(2)], users)
               .with_lock_context(alice).unwrap() for i in range(3)]  # three data keys
    old = [m[f] for ms in batches for m in ms for f in ("email", "age")]
    assert len({p["kid"] for p in old}) == 3 and all(p["kid"].startswith("vault:v1:") for p in old)
    token = _app_token(bao)
    config = replace(bao_config, max_batch=2)  # three distinct data keys: two rewrap calls
    http = OpenBaoHTTP(config)
    assert openbao_current_kid(http, token, config, key) == "vault:v1:"
    r = requests.post(f"{bao.addr}/v1/transit/keys/{key}/rotate", headers={"X-Vault-Token": token}, timeout=10)
    assert r.status_code in (200, 204)
    current = openbao_current_kid(http, token, config, key)
    assert current == "vault:v2:" and all(needs_rekey(p, current) for p in old)

    calls = http.requests
    new = rekey_openbao(http, token, config, [*old, None], key=key)
    assert http.requests == calls + 2 and new[-1] is None
    for o, n in zip(old, new):
        assert n is not None and n["kid"].startswith("vault:v2:") and not needs_rekey(n, current)
        assert {k: v for k, v in n.items() if k != "kid"} == {k: v for k, v in o.items() if k != "kid"}  # only kid changes
    fresh = Encryption([users], key_service=OpenBaoKeyService(bao_config, WORKSPACE), token_service=client.token_service)
    got = fresh.bulk_decrypt(new[:-1]).with_lock_context(alice).unwrap()
    assert [g.unwrap() for g in got] == [x for i in range(3) for j in range(2) for x in (f"a{i}{j}@x.org", i)]
    # the app token only rewraps: decrypting a data key is forbidden
    r = requests.post(f"{bao.addr}/v1/transit/decrypt/{key}", headers={"X-Vault-Token": token},
                      json={"ciphertext": new[0]["kid"]}, timeout=10)  # type: ignore[index]
    assert r.status_code == 403
    # bob's payload under alice's key: OpenBao cannot rewrap it; nothing is returned
    bobs = client.encrypt("bob@x.org", column="email", table=users).with_lock_context(bob).unwrap()
    with pytest.raises(RekeyError, match="could not rewrap"):
        rekey_openbao(http, token, config, [old[0], bobs], key=key)
    with pytest.raises(DecryptionError):
        rekey_openbao(http, token, config, [dict(old[0], kid="1")], key=key)


# -- OpenBao: the example app's `notes rekey` rewraps with the app token -------------------------
@pytest.fixture(scope="module")
def bao_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An OpenBao dev node of this module's own (its lockkit-app policy names its own prefix)."""
    from .bao_support import iter_dev

    yield from iter_dev(tmp_path_factory.mktemp("bao-rekey"))


def test_example_rekey_in_openbao_mode_rewraps_without_user_tokens(
    bao_node: Any, example_env: str, db_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from lockkit.config import OpenBaoConfig
    from lockkit.keys.openbao import key_name
    from lockkit.keys.openbao_setup import setup
    from lockkit_dev import AUDIENCE  # type: ignore[import-not-found]

    from .example_support import serve

    monkeypatch.setenv("LOCKKIT_WORKSPACE_CRN", CRN)
    monkeypatch.setenv("LOCKKIT_KEY_BACKEND", "openbao")
    monkeypatch.setenv("LOCKKIT_OPENBAO_ADDR", bao_node.addr)
    apps = Apps(db_path, example_env)
    try:
        app = apps()
        with serve(app) as base:  # OpenBao fetches the dev issuer's keys from the app
            dev = app.extensions["lockkit_dev"]
            config = OpenBaoConfig(addr=bao_node.addr)
            setup(config, bao_node.root_token, issuer=dev.issuer, jwks_url=f"{base}/lockkit/dev/jwks.json",
                  audiences=[AUDIENCE])
            made = seed(app, {"alice": 3, "bob": 2})
            assert {kid_label(k) for k in kids(db_path)} == {"vault:v1"}
            token = _app_token(bao_node)
            for sub in made:
                r = requests.post(f"{bao_node.addr}/v1/transit/keys/{key_name(config, sub)}/rotate",
                                  headers={"X-Vault-Token": token}, timeout=10)
                assert r.status_code in (200, 204)
            assert cli(app, "notes", "rekey").exit_code != 0  # no app token: refused
            monkeypatch.setenv("LOCKKIT_OPENBAO_APP_TOKEN", token)
            notes_before, tags_before = db_rows(db_path)
            res = cli(app, "notes", "rekey", "--batch-size", "2")
            assert res.exit_code == 0, res.output
            assert "rekeyed 15 rows of 2 owners" in res.output
            assert {kid_label(k) for k in kids(db_path)} == {"vault:v2"}
            notes_after, tags_after = db_rows(db_path)
            pairs = ([(b[2], a[2]) for b, a in zip(notes_before, notes_after)] + [(b[3], a[3]) for b, a in zip(notes_before, notes_after)]
                     + [(b[2], a[2]) for b, a in zip(tags_before, tags_after)])
            assert len(pairs) == 20
            for old, new in pairs:  # only the wrapped data key changed
                assert new["kid"] != old["kid"] and {**new, "kid": ""} == {**old, "kid": ""}
            assert_all_decrypt(app, made)  # with each user's own OpenBao token
            usage = cli(app, "notes", "key-usage")
            assert ["notes.title", "vault:v2", "5"] in [line.split() for line in usage.output.splitlines()]
            refused = cli(app, "notes", "retire-key", "1")
            assert refused.exit_code != 0 and "OpenBao" in refused.output
    finally:
        apps.close()
