"""The example app ("Private notes", ``examples/flask_clerk``) through Flask's test client with
CSRF enabled: dev sign-in through its real form, create/read/edit/delete through the real forms,
tag and text search, no plaintext in the database, another user's note ids (404, no key
released), sign-out and a replayed cookie, validation, PostgreSQL, and
``python -m examples.flask_clerk`` serving for real."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from lockkit import LockContext
from lockkit.flask import get_state
from lockkit.keys.local import LocalKeyService

from .process_support import dies_with_us
from .example_support import (  # noqa: F401  (fixtures)
    ROOT,
    SHORT_QUERY_MESSAGE,
    User,
    assert_no_plaintext,
    clerk_example,
    example_app,
    example_env,
    form_posting_to,
    forms,
    free_port,
    location,
    notes_app,
    pg_app,
    pg_database_url,
    sqlite_dump,
    sqlite_file_bytes,
    sqlite_path,
    text,
)

from examples.flask_clerk.notes import NoteStore, notes_table  # noqa: E402  (example_support puts the repository on sys.path)

# alice's notes: distinctive words (no hex-only or short words, so ciphertext cannot contain
# them by chance)
PLAN = {"title": "Quarterly planning", "body": "Discuss the pangolin migration budget with finance.",
        "tags": "Workplace, strategy"}
SHOP = {"title": "Groceries list", "body": "zucchini, oatmeal and marmalade", "tags": "household"}
ALICE_PLAINTEXT = ["Quarterly planning", "Quarterly", "planning", "pangolin", "migration", "finance",
                   "Workplace", "strategy", "Groceries", "zucchini", "oatmeal", "marmalade", "household"]


@pytest.fixture
def alice(notes_app: Flask) -> User:
    user = User(notes_app, "alice")
    user.sign_in()
    return user


@pytest.fixture
def bob(notes_app: Flask) -> User:
    user = User(notes_app, "bob")
    user.sign_in()
    return user


@pytest.fixture
def alice_notes(alice: User) -> dict[str, int]:
    return {"plan": alice.create(**PLAN), "shop": alice.create(**SHOP)}


def _count(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def _raw_row(db: Path, note_id: int) -> tuple[Any, ...]:
    conn = sqlite3.connect(db)
    try:
        note = conn.execute("SELECT owner, title, body, updated_at FROM notes WHERE id = ?", (note_id,)).fetchone()
        tags = conn.execute("SELECT tag, tag_hm FROM note_tags WHERE note_id = ? ORDER BY tag_hm", (note_id,)).fetchall()
        return (note, tuple(tags))
    finally:
        conn.close()


# -- sign-in and the note lifecycle ----------------------------------------------------------
def test_anonymous_visitor_sees_landing_and_protected_pages_redirect(notes_app: Flask) -> None:
    c = notes_app.test_client()
    landing = c.get("/")
    assert landing.status_code == 200
    assert "Development sign-in." in text(landing) and "Sign in to start" in text(landing)
    for path in ("/notes/new", "/notes/1", "/notes/1/edit", "/search?tag=x", "/database"):
        assert location(c.get(path)).startswith("/lockkit/dev/login?next="), path
    api = c.get("/api/notes")
    assert api.status_code == 401 and api.get_json() == {"error": "missing"}


def test_sign_in_create_read_edit_delete_through_the_forms(alice: User, sqlite_path: Path) -> None:
    plan = alice.create(**PLAN)
    shop = alice.create(**SHOP)
    assert plan != shop

    page = text(alice.client.get(f"/notes/{plan}"))
    assert "<h1>Quarterly planning</h1>" in page
    assert PLAN["body"] in page
    assert '<a class="tag" href="/search?tag=strategy">strategy</a>' in page
    assert '<a class="tag" href="/search?tag=workplace">workplace</a>' in page  # tags lower-cased
    assert "Note saved (encrypted)." in page  # the flash after the redirect

    assert sorted(alice.titles("/")) == ["Groceries list", "Quarterly planning"]
    api = {n["id"]: n for n in alice.api_notes()}
    assert api[plan] == {"id": plan, "title": PLAN["title"], "body": PLAN["body"], "tags": ["strategy", "workplace"]}
    assert api[shop]["tags"] == ["household"]
    one = alice.client.get(f"/api/notes/{shop}")
    assert one.status_code == 200 and one.get_json()["body"] == SHOP["body"]

    # edit: the form is pre-filled with the decrypted values
    form = form_posting_to(text(alice.client.get(f"/notes/{plan}/edit")), f"/notes/{plan}")
    assert form.fields["title"] == PLAN["title"] and form.fields["body"] == PLAN["body"]
    assert form.fields["tags"] == "strategy, workplace"
    resp = alice.edit(plan, title="Yearly planning", body="Discuss the armadillo budget.", tags="roadmap")
    assert location(resp) == f"/notes/{plan}"
    page = text(alice.client.get(f"/notes/{plan}"))
    assert "<h1>Yearly planning</h1>" in page and "armadillo" in page and "pangolin" not in page
    assert "Note updated." in page
    assert alice.titles("/search?tag=strategy") == []
    assert alice.titles("/search?tag=roadmap") == ["Yearly planning"]
    assert alice.titles("/search?q=pangolin") == []
    assert alice.titles("/search?q=armadillo") == ["Yearly planning"]
    assert _count(sqlite_path, "note_tags") == 2  # roadmap + household: the old tags are gone

    # delete
    resp = alice.delete(shop)
    assert location(resp) == "/"
    assert "Note deleted." in text(alice.client.get("/"))
    assert alice.client.get(f"/notes/{shop}").status_code == 404
    assert alice.client.get(f"/api/notes/{shop}").status_code == 404
    assert [n["id"] for n in alice.api_notes()] == [plan]
    assert _count(sqlite_path, "notes") == 1 and _count(sqlite_path, "note_tags") == 1


def test_posts_without_a_valid_csrf_token_are_refused(alice: User, bob: User, alice_notes: dict[str, int],
                                                      sqlite_path: Path) -> None:
    plan = alice_notes["plan"]
    before = _raw_row(sqlite_path, plan)
    good = {"title": "Forged", "body": "forged body", "tags": "forged"}
    c = alice.client
    assert c.post("/notes", data=good).status_code == 400
    assert c.post("/notes", data={**good, "csrf_token": "not-a-token"}).status_code == 400
    # a real token, but from bob's session
    assert c.post("/notes", data={**good, "csrf_token": bob.csrf()}).status_code == 400
    assert c.post(f"/notes/{plan}", data=good).status_code == 400
    assert c.post(f"/notes/{plan}/delete", data={}).status_code == 400
    assert c.post("/signout", data={}).status_code == 400
    assert _count(sqlite_path, "notes") == 2
    assert _raw_row(sqlite_path, plan) == before
    assert sorted(alice.titles("/")) == ["Groceries list", "Quarterly planning"]  # still signed in
    # and with alice's own token the same create works
    resp = c.post("/notes", data={**good, "csrf_token": alice.csrf()})
    assert re.fullmatch(r"/notes/\d+", location(resp))


# -- search ----------------------------------------------------------------------------------
def test_tag_and_text_search_find_the_right_notes(alice: User, alice_notes: dict[str, int]) -> None:
    assert alice.titles("/search?tag=household") == ["Groceries list"]
    assert alice.titles("/search?tag=HouseHold") == ["Groceries list"]  # tags are case-insensitive
    assert alice.titles("/search?tag=strategy") == ["Quarterly planning"]
    assert alice.titles("/search?tag=workplace") == ["Quarterly planning"]
    assert alice.titles("/search?tag=house") == []  # exact, not a prefix
    assert alice.titles("/search?q=pangolin") == ["Quarterly planning"]  # a word of the body
    assert alice.titles("/search?q=Marmalade") == ["Groceries list"]
    assert alice.titles("/search?q=Groceries") == ["Groceries list"]  # a word of the title
    assert alice.titles("/search?q=pangolin%20budget") == ["Quarterly planning"]  # every word
    assert alice.titles("/search?q=pangolin%20zucchini") == []
    assert alice.titles("/search?q=xylophone") == []
    page = text(alice.client.get("/search?tag=household"))
    assert "Notes tagged “household”" in page
    assert 'value="household"' in page  # the search box keeps the term


@pytest.mark.parametrize("query", [
    "quarterly pangolin",   # one word in the title, one in the body
    "pangolin, budget",     # punctuation between words
    "finance!",             # punctuation after a word
    "QUARTERLY",            # case
    "plann migr",           # fragments of words
])
def test_text_search_finds_words_across_title_and_body(alice: User, alice_notes: dict[str, int], query: str) -> None:
    assert alice.titles(f"/search?q={query}") == ["Quarterly planning"]


def test_text_search_normalises_like_the_index(alice: User) -> None:
    """Accents typed decomposed (NFD, as macOS often does) and full-width letters match their
    plain forms, in both directions."""
    import unicodedata

    alice.create(title=unicodedata.normalize("NFD", "Café crème"), body="Ｗｉｄｅ letters", tags="")
    for query in ("café", unicodedata.normalize("NFD", "crème"), "wide", "ＣＡＦÉ"):
        assert alice.titles(f"/search?q={query}") == [unicodedata.normalize("NFD", "Café crème")], query
    assert alice.titles("/search?q=pangolin") == []


def test_one_damaged_note_does_not_hide_the_others(alice: User, alice_notes: dict[str, int], sqlite_path: Path) -> None:
    """A note whose stored ciphertext was damaged shows as unreadable (and can be deleted);
    the other notes, the API and search keep working."""
    conn = sqlite3.connect(sqlite_path)
    try:
        raw = json.loads(conn.execute("SELECT body FROM notes WHERE id = ?", (alice_notes["shop"],)).fetchone()[0])
        raw["c"] = raw["c"][:-8] + ("A" * 8 if not raw["c"].endswith("A" * 8) else "B" * 8)
        conn.execute("UPDATE notes SET body = ? WHERE id = ?", (json.dumps(raw), alice_notes["shop"]))
        conn.commit()
    finally:
        conn.close()
    assert alice.titles("/") == ["Unreadable note", "Quarterly planning"]
    assert alice.titles("/search?tag=workplace") == ["Quarterly planning"]
    notes = {n["id"]: n for n in alice.api_notes()}
    assert notes[alice_notes["shop"]] == {"id": alice_notes["shop"], "error": "unreadable"}
    assert notes[alice_notes["plan"]]["title"] == "Quarterly planning"
    page = alice.client.get(f"/notes/{alice_notes['shop']}")
    assert page.status_code == 200 and 'id="unreadable"' in text(page) and "zucchini" not in text(page)
    assert location(alice.client.get(f"/notes/{alice_notes['shop']}/edit")) == f"/notes/{alice_notes['shop']}"
    assert location(alice.delete(alice_notes["shop"])) == "/"
    assert alice.titles("/") == ["Quarterly planning"]


def test_a_refused_lock_context_signs_in_again_instead_of_a_500(example_env: str, sqlite_path: Path) -> None:
    """Every operation of a user whose token lacks a claim the lock needs raises
    LockContextError: pages send them to sign in, the API answers 401 JSON, never a 500."""
    with example_app(f"sqlite:///{sqlite_path}", example_env) as plain:  # a note stored the usual way
        owner = User(plain, "alice")
        owner.sign_in()
        owner.create(**PLAN)
    with example_app(f"sqlite:///{sqlite_path}", example_env, LOCKKIT_CTS_CLAIMS=["org_id"],
                     LOCKKIT_IDENTITY_CLAIM=["sub", "org_id"]) as app:
        user = User(app, "alice")  # the dev provider's tokens carry no org_id
        start = user.client.get("/notes/new")
        login = location(start)
        page = user.client.get(login)
        form = form_posting_to(text(page), "/lockkit/dev/login")
        user.client.post(form.action, data={**form.fields, "name": "alice"})
        search = user.client.get("/search?tag=household")  # the query term needs the lock
        assert search.status_code == 302 and location(search).startswith("/signin?next=")
        api = user.client.get("/api/notes")  # alice's stored note needs the lock to open
        assert api.status_code == 401 and api.get_json() == {"error": "lock_context", "message": "sign in again"}
        form = form_posting_to(text(user.client.get("/notes/new")), "/notes")
        made = user.client.post("/notes", data={**form.fields, "title": "t", "body": "b", "tags": ""})
        assert made.status_code == 302 and location(made).startswith("/signin")
        assert _count(sqlite_path, "notes") == 1  # nothing stored


@pytest.mark.parametrize("query", ["a", "ab", "zu", "!!", "?!", "é"])
def test_short_or_wordless_text_search_never_fails(alice: User, alice_notes: dict[str, int], query: str) -> None:
    resp = alice.client.get("/search", query_string={"q": query}, follow_redirects=True)
    assert resp.status_code == 200
    page = text(resp)
    assert SHORT_QUERY_MESSAGE in page or "Notes matching" in page


def test_wordless_query_shows_the_flash_message(alice: User, alice_notes: dict[str, int]) -> None:
    resp = alice.client.get("/search", query_string={"q": "!!"})
    assert location(resp) == "/"
    page = text(alice.client.get("/"))
    assert SHORT_QUERY_MESSAGE in page


@pytest.mark.parametrize("query", ["ab", "zu"])
def test_one_or_two_letter_search_shows_the_flash_message(alice: User, alice_notes: dict[str, int],
                                                          query: str) -> None:
    resp = alice.client.get("/search", query_string={"q": query}, follow_redirects=True)
    assert resp.status_code == 200
    assert SHORT_QUERY_MESSAGE in text(resp)


# -- bounded work per request: search size, audit-log reads, key-service outages ----------------
@pytest.fixture
def audited_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    """The example app with lockkit's audit log (as ``lockkit init`` configures it)."""
    secret, db = request.getfixturevalue("example_env"), request.getfixturevalue("sqlite_path")
    with example_app(f"sqlite:///{db}", secret, LOCKKIT_AUDIT_LOG=str(tmp_path / "audit.log")) as app:
        yield app


@pytest.fixture
def audited_alice(audited_app: Flask) -> User:
    user = User(audited_app, "alice")
    user.sign_in()
    user.create(**PLAN)
    user.create(**SHOP)
    return user


def _entries(app: Flask) -> int:
    log = get_state(app).audit_log
    assert log is not None
    return sum(1 for _ in log.events())


def _words(n: int) -> list[str]:
    """``n`` distinct words of three letters or more."""
    return [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(n)]


def test_a_search_with_too_many_words_or_characters_is_refused_before_any_key_release(
    audited_app: Flask, audited_alice: User
) -> None:
    """Query words are bounded (all of a search's terms are one key release per column): a query of more than
    MAX_QUERY_WORDS distinct words or MAX_QUERY_CHARS characters is a 400 with a message, on
    the page and in the API, and asks for no key (writes nothing to the audit log)."""
    from examples.flask_clerk.notes import MAX_QUERY_CHARS, MAX_QUERY_WORDS

    ks = get_state(audited_app).key_service
    before, releases = _entries(audited_app), ks.release_calls
    too_many = " ".join(_words(MAX_QUERY_WORDS + 1))
    too_long = "pangolin " + "x" * MAX_QUERY_CHARS  # two words, too many characters
    for q in (too_many, too_long, " ".join(_words(3000))):
        page = audited_alice.client.get("/search", query_string={"q": q})
        assert page.status_code == 400
        assert f"Search for at most {MAX_QUERY_WORDS} words" in html.unescape(text(page))
        assert 'id="empty"' not in text(page)
        api = audited_alice.client.get("/api/notes", query_string={"q": q})
        assert api.status_code == 400 and api.get_json()["error"] == "query_too_long"
    assert (_entries(audited_app), ks.release_calls) == (before, releases)
    # repeated words count once, and short ones are not searched for
    same = " ".join(["pangolin"] * 20 + ["of"] * 20)
    assert len(same) <= MAX_QUERY_CHARS
    assert audited_alice.titles(f"/search?q={same}") == ["Quarterly planning"]
    assert [n["title"] for n in audited_alice.client.get("/api/notes?q=pangolin").get_json()["notes"]] == [
        "Quarterly planning"]


def test_a_search_of_the_most_words_costs_a_bounded_number_of_key_releases(
    audited_app: Flask, audited_alice: User
) -> None:
    from examples.flask_clerk.notes import MAX_QUERY_WORDS

    ks = get_state(audited_app).key_service
    before, releases = _entries(audited_app), ks.release_calls
    words = ["pangolin", "budget", "finance", "quarterly", *_words(MAX_QUERY_WORDS - 4)]
    assert audited_alice.titles("/search?q=" + "%20".join(words)) == []
    assert audited_alice.titles("/search?q=" + "%20".join(words[:4])) == ["Quarterly planning"]
    # two searches: each asks for all its match terms in one key-service call (one audit entry
    # per column: title, body), then decrypts its candidates in one more (title, body, tag)
    assert ks.release_calls - releases == 2 + 1
    assert _entries(audited_app) - before <= 2 * 2 + 3


def test_search_normalises_each_candidate_once(alice: User, alice_notes: dict[str, int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact re-check normalises a candidate's title and body once each, not once per
    query word (NFKC of a 20,000-character body is not cheap)."""
    from examples.flask_clerk import notes as notes_module

    calls: list[str] = []
    real = notes_module.normalise

    def counting(value: str) -> str:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(notes_module, "normalise", counting)
    query = "quarterly planning pangolin migration budget finance discuss"
    assert alice.titles(f"/search?q={query}") == ["Quarterly planning"]
    assert 0 < len(calls) <= 2 * len(alice_notes)  # title and body of each candidate, at most


def test_a_key_service_or_audit_outage_is_temporarily_unavailable_not_unreadable(
    audited_app: Flask, audited_alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the audit log cannot record a key release (a full disk: fail-closed auditing), no
    note is "unreadable, can only be deleted": pages answer 503 "temporarily unavailable", the
    API 503 JSON, nothing is stored or lost, and everything works again afterwards."""
    import errno

    from lockkit.audit import AuditLog

    note_id = int(audited_alice.api_notes()[0]["id"])

    def full(self: AuditLog, events: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AuditLog, "write", full)
    c = audited_alice.client
    for path in ("/", f"/notes/{note_id}", f"/notes/{note_id}/edit", "/search?q=pangolin", "/search?tag=household"):
        page = c.get(path)
        assert page.status_code == 503, path
        assert "Temporarily unavailable" in text(page) and 'id="unreadable"' not in text(page), path
        assert "can only be deleted" not in text(page), path
    for path in ("/api/notes", f"/api/notes/{note_id}", "/api/notes?q=pangolin"):
        api = c.get(path)
        assert api.status_code == 503 and api.get_json()["error"] == "unavailable", path
    form = form_posting_to(text(c.get("/notes/new")), "/notes")
    made = c.post("/notes", data={**form.fields, "title": "during the outage", "body": "b", "tags": ""})
    assert made.status_code == 503 and _count(Path(audited_app.config["DATABASE_URL"].removeprefix("sqlite:///")), "notes") == 2
    monkeypatch.undo()
    assert sorted(n["title"] for n in audited_alice.api_notes()) == ["Groceries list", "Quarterly planning"]
    assert c.get(f"/notes/{note_id}").status_code == 200


def test_note_pages_and_history_read_only_the_end_of_the_audit_log_and_do_not_verify_it(
    audited_app: Flask, audited_alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A note page shows the 10 newest openings and /history the 200 newest events, read from
    the log's end: neither reads the whole log (``AuditLog.events``) nor verifies it per
    request (that read all of it while holding the writers' lock)."""
    from lockkit.audit import AuditLog

    note_id = int(audited_alice.api_notes()[0]["id"])
    for _ in range(12):
        assert audited_alice.client.get(f"/api/notes/{note_id}").status_code == 200
    verified: list[AuditLog] = []
    real_verify = AuditLog.verify

    def counting_verify(self: AuditLog) -> Any:
        verified.append(self)
        return real_verify(self)

    def whole_log(self: AuditLog) -> Any:
        raise AssertionError("the whole audit log was read")

    monkeypatch.setattr(AuditLog, "verify", counting_verify)
    monkeypatch.setattr(AuditLog, "events", whole_log)
    page = text(audited_alice.client.get(f"/notes/{note_id}"))
    opened = re.findall(r"<li>([^<]*) by alice \((\w+)\)</li>", page)
    log = get_state(audited_app).audit_log
    assert log is not None
    newest = log.who_accessed("notes", str(note_id))[::-1][:10]  # every one (oldest first), reversed
    assert len(opened) == 10 and [col for _, col in opened] == [ev.column for ev in newest]
    assert [t for t, _ in opened] == sorted((t for t, _ in opened), reverse=True)
    history = audited_alice.client.get("/history")
    assert history.status_code == 200 and verified == []
    rows = re.findall(r'<tr class="(granted|denied|aborted)">', text(history))
    assert 10 < len(rows) <= 200
    assert "has not been verified from this page yet" in text(history)
    # verifying is an explicit POST, at most once per interval (per process), whoever asks
    form = form_posting_to(text(history), "/history/verify")
    done = audited_alice.client.post(form.action, data=form.fields)
    assert location(done) == "/history" and len(verified) == 1
    assert "Chain verified at" in text(audited_alice.client.get("/history"))
    bob = User(audited_app, "bob")
    bob.sign_in()
    again = bob.client.post(form.action, data={"csrf_token": bob.csrf("/history")})
    assert location(again) == "/history" and len(verified) == 1
    assert "verified less than 60 seconds ago" in text(bob.client.get("/history"))
    assert bob.client.post(form.action, data={}).status_code == 400  # CSRF-protected


# -- what the database holds --------------------------------------------------------------
def test_database_holds_no_plaintext(alice: User, alice_notes: dict[str, int], sqlite_path: Path) -> None:
    dump = sqlite_dump(sqlite_path)
    assert dump.count("alice") >= 2  # the owner column is the plain user id, by design
    assert_no_plaintext(dump, ALICE_PLAINTEXT, "the notes database (sqlite3 query)")
    assert_no_plaintext(sqlite_file_bytes(sqlite_path), ALICE_PLAINTEXT, "the notes database files")
    conn = sqlite3.connect(sqlite_path)
    try:
        titles = [r[0] for r in conn.execute("SELECT title FROM notes")]
        hms = [r[0] for r in conn.execute("SELECT tag_hm FROM note_tags")]
    finally:
        conn.close()
    assert all(t.startswith("{") and '"c":' in t for t in titles)
    assert len(hms) == 3 and len(set(hms)) == 3 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hms)


def test_database_page_shows_payloads_not_plaintext(alice: User, alice_notes: dict[str, int]) -> None:
    resp = alice.client.get("/database")
    assert resp.status_code == 200
    raw = re.findall(r'<pre class="raw">(.*?)</pre>', text(resp), flags=re.S)
    shown = [html.unescape(r) for r in raw]
    assert len(shown) == 5  # two notes, three tags
    assert sum('"table": "notes"' in r for r in shown) == 2
    assert sum('"table": "note_tags"' in r for r in shown) == 3
    assert all('"c": "' in r and '"kid": ' in r for r in shown)
    assert_no_plaintext("\n".join(shown), ALICE_PLAINTEXT, "the /database page")


# -- another user --------------------------------------------------------------------------
def _without_csrf(body: bytes) -> bytes:
    """A page with its CSRF token blanked: the token carries a timestamp, so two renderings a
    second apart differ there and only there (the sign-out form is on every page)."""
    return re.sub(rb'name="csrf_token" value="[^"]*"', b'name="csrf_token" value=""', body)


def test_bob_gets_404_for_alice_note_and_no_key_is_released(
    notes_app: Flask, alice: User, alice_notes: dict[str, int], bob: User, sqlite_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = alice_notes["plan"]
    before = _raw_row(sqlite_path, target)
    ks = get_state(notes_app).key_service
    assert isinstance(ks, LocalKeyService)
    subjects: list[str | None] = []
    original = ks.release

    def spy(**kwargs: Any) -> Any:
        out = original(**kwargs)
        subjects.append(ks.last_subject)
        return out

    monkeypatch.setattr(ks, "release", spy)
    bob.create("Bob's own", "bob writes about kestrels", "birds")  # bob's keys: last_subject = bob
    assert ks.last_subject == "bob" and subjects and set(subjects) == {"bob"}

    token = bob.csrf()
    attempts = [
        ("GET", f"/notes/{target}", None),
        ("GET", f"/notes/{target}/edit", None),
        ("POST", f"/notes/{target}", {"csrf_token": token, "title": "pwned", "body": "pwned", "tags": "pwned"}),
        ("POST", f"/notes/{target}", {"csrf_token": token, "title": "", "body": "", "tags": ""}),
        ("POST", f"/notes/{target}/delete", {"csrf_token": token}),
        ("GET", f"/api/notes/{target}", None),
    ]
    calls, seen = ks.release_calls, len(subjects)
    for method, path, data in attempts:
        resp = bob.client.open(path, method=method, data=data)
        assert resp.status_code == 404, (method, path, resp.status_code)
        assert ks.release_calls == calls, f"{method} {path} asked the key service for keys"
        assert ks.last_subject != "alice"
        if path.startswith("/api/"):
            assert resp.get_json() == {"error": "not_found"}
        # a note that does not exist at all answers the same: no existence oracle
        other = bob.client.open(path.replace(str(target), "987654"), method=method, data=data)
        assert (other.status_code, _without_csrf(other.get_data())) == (resp.status_code, _without_csrf(resp.get_data()))
    assert len(subjects) == seen and "alice" not in subjects

    assert _raw_row(sqlite_path, target) == before
    calls = ks.release_calls
    note = alice.client.get(f"/api/notes/{target}").get_json()
    assert note == {"id": target, "title": PLAN["title"], "body": PLAN["body"], "tags": ["strategy", "workplace"]}
    assert ks.release_calls == calls + 1  # title, body and tags: one key-service call


def test_bob_finds_nothing_of_alice(alice: User, alice_notes: dict[str, int], bob: User, sqlite_path: Path) -> None:
    assert bob.api_notes() == []
    assert bob.titles("/") == []
    for path in ("/search?tag=household", "/search?tag=strategy", "/search?q=pangolin", "/search?q=marmalade",
                 "/search?q=Groceries"):
        page = text(bob.client.get(path))
        assert 'id="empty"' in page, path
        assert_no_plaintext(page, ["Groceries list", "Quarterly planning", "zucchini", "pangolin budget"], path)
    # bob writes the very same tag and word: his searches find only his note, and the stored
    # equality terms differ per user
    mine = bob.create("Bob's pantry", "bob buys marmalade", "household")
    assert bob.titles("/search?tag=household") == ["Bob's pantry"]
    assert bob.titles("/search?q=marmalade") == ["Bob's pantry"]
    assert [n["id"] for n in bob.api_notes()] == [mine]
    assert alice.titles("/search?tag=household") == ["Groceries list"]
    conn = sqlite3.connect(sqlite_path)
    try:
        hms = dict(conn.execute("SELECT note_id, tag_hm FROM note_tags WHERE note_id IN (?, ?)",
                                (alice_notes["shop"], mine)).fetchall())
    finally:
        conn.close()
    assert hms[alice_notes["shop"]] != hms[mine]


# -- sign-out -------------------------------------------------------------------------------
def test_long_id_lists_are_queried_in_chunks(alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL takes at most 65,535 parameters per query: ids go in chunks (here of 2,
    across 5 notes), and every note and tag still comes back, newest first."""
    from examples.flask_clerk import notes as notes_module

    made = [alice.create(f"Chunk note {i}", f"body {i}", f"common, t{i}") for i in range(5)]
    monkeypatch.setattr(notes_module, "_ID_CHUNK", 2)
    assert alice.titles("/") == [f"Chunk note {i}" for i in reversed(range(5))]
    assert alice.titles("/search?tag=common") == [f"Chunk note {i}" for i in reversed(range(5))]
    assert {n["id"]: n["tags"] for n in alice.api_notes()} == {m: ["common", f"t{i}"] for i, m in enumerate(made)}


@pytest.mark.parametrize("note_id", [0, 2**63 - 1, 2**63, 10**20])
def test_note_ids_beyond_the_database_range_are_404(alice: User, note_id: int) -> None:
    assert alice.client.get(f"/notes/{note_id}").status_code == 404
    assert alice.client.get(f"/notes/{note_id}/edit").status_code == 404
    assert alice.client.get(f"/api/notes/{note_id}").status_code == 404
    csrf = alice.csrf()
    assert alice.client.post(f"/notes/{note_id}/delete", data={"csrf_token": csrf}).status_code == 404
    assert alice.client.post(f"/notes/{note_id}", data={"csrf_token": csrf, "title": "t"}).status_code == 404


def test_sign_out_then_a_replayed_cookie_without_the_dev_token_shows_nothing(
    notes_app: Flask, alice: User, alice_notes: dict[str, int]
) -> None:
    cookie = alice.client.get_cookie("session")
    assert cookie is not None
    old = cookie.value

    resp = alice.sign_out()
    assert location(resp) == "/"
    landing = text(alice.client.get("/"))
    assert "Sign in to start" in landing and "Quarterly planning" not in landing
    for path in ("/notes/new", f"/notes/{alice_notes['plan']}", "/search?tag=household", "/database"):
        assert location(alice.client.get(path)).startswith("/lockkit/dev/login"), path
    assert alice.client.get("/api/notes").status_code == 401

    # the old cookie, minus the sealed dev identity token: the sealed CTS token alone is no
    # credential, and the middleware drops it
    serializer = notes_app.session_interface.get_signing_serializer(notes_app)  # type: ignore[attr-defined]
    assert serializer is not None
    data = dict(serializer.loads(old))
    assert "_lockkit_dev" in data and "_lockkit_cts" in data
    del data["_lockkit_dev"]
    replay = notes_app.test_client()
    replay.set_cookie("session", serializer.dumps(data))
    api = replay.get("/api/notes")
    assert api.status_code == 401 and "notes" not in (api.get_json() or {})
    assert location(replay.get(f"/notes/{alice_notes['plan']}")).startswith("/lockkit/dev/login")
    page = text(replay.get("/"))
    assert "Sign in to start" in page and "Quarterly planning" not in page
    after = replay.get_cookie("session")
    assert after is not None and "_lockkit_cts" not in dict(serializer.loads(after.value))


def test_sign_out_revokes_the_openbao_token_and_forgets_its_data_keys(example_env: str, sqlite_path: Path,
                                                                      tmp_path: Path) -> None:
    """With cookie sessions, a copy of the cookie taken before sign-out still carries the
    sealed identity and CTS tokens. In OpenBao mode sign-out revokes the OpenBao token and the
    key service drops the data keys it cached for it: the copy reads nothing."""
    from lockkit_dev import AUDIENCE

    from lockkit.config import OpenBaoConfig
    from lockkit.flask.extension import SESSION_PURPOSE
    from lockkit.keys.openbao import decode_token
    from lockkit.keys.openbao_setup import setup

    from .bao_support import iter_dev
    from .example_support import serve

    (tmp_path / "bao").mkdir()
    node_iter = iter_dev(tmp_path / "bao")
    node = next(node_iter)
    try:
        with example_app(f"sqlite:///{sqlite_path}", example_env, LOCKKIT_KEY_BACKEND="openbao",
                         LOCKKIT_OPENBAO_ADDR=node.addr) as app, serve(app) as url:
            # OpenBao verifies the dev issuer's tokens with the keys the app serves
            setup(OpenBaoConfig(addr=node.addr), node.root_token, issuer=app.extensions["lockkit_dev"].issuer,
                  jwks_url=f"{url}/lockkit/dev/jwks.json", audiences=[AUDIENCE])
            alice = User(app, "alice")
            alice.sign_in()
            alice.create(**PLAN)
            assert [n["title"] for n in alice.api_notes()] == [PLAN["title"]]  # data key cached now
            kept = alice.client.get_cookie("session")
            assert kept is not None
            serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
            sealed = serializer.loads(kept.value)[get_state(app).session_key]
            stored = get_state(app).sealer.unseal(SESSION_PURPOSE, sealed)
            bao_token, _, _ = decode_token(stored["tok"])
            assert location(alice.sign_out()) == "/"
            lookup = requests.get(f"{node.addr}/v1/auth/token/lookup-self", headers={"X-Vault-Token": bao_token}, timeout=10)
            assert lookup.status_code == 403  # revoked at OpenBao
            thief = app.test_client()
            thief.set_cookie("session", kept.value)
            stolen = thief.get("/api/notes")
            assert stolen.status_code != 200 and PLAN["title"] not in stolen.get_data(as_text=True)
    finally:
        node_iter.close()


@pytest.fixture
def redis_notes_app(example_env: str, sqlite_path: Path) -> Iterator[tuple[Flask, Any, str]]:
    """The example app with server-side sessions in Redis (``REDIS_URL``), under a key prefix of
    its own; skips when Redis on 127.0.0.1:6379 is unreachable."""
    redis = pytest.importorskip("redis")
    probe = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        probe.ping()
    except redis.RedisError as err:
        probe.close()
        pytest.skip(reason=f"Redis is not reachable at 127.0.0.1:6379 ({type(err).__name__})")
    prefix = f"notes-example-test-{secrets.token_hex(4)}:"
    with example_app(f"sqlite:///{sqlite_path}", example_env, REDIS_URL="redis://127.0.0.1:6379/0",
                     SESSION_KEY_PREFIX=prefix) as app:
        try:
            yield app, probe, prefix
        finally:
            for key in probe.scan_iter(prefix + "*"):
                probe.delete(key)
            app.config["SESSION_REDIS"].close()
            probe.close()


def test_with_redis_sessions_the_old_cookie_is_dead_after_sign_out(redis_notes_app: tuple[Flask, Any, str]) -> None:
    app, store, prefix = redis_notes_app
    alice = User(app, "alice")
    alice.sign_in()
    note = alice.create(**PLAN)
    cookie = alice.client.get_cookie("session")
    assert cookie is not None
    old = cookie.value
    assert list(store.scan_iter(prefix + "*")), "the session lives in Redis"
    assert "pangolin" not in old and len(old) < 200  # the cookie holds only a session id

    assert location(alice.sign_out()) == "/"
    replay = app.test_client()
    replay.set_cookie("session", old)  # the whole old cookie, as a thief would keep it
    assert replay.get("/api/notes").status_code == 401
    assert location(replay.get(f"/notes/{note}")).startswith("/lockkit/dev/login")
    assert "Quarterly planning" not in text(replay.get("/"))


# -- security headers -------------------------------------------------------------------------
def _policy(resp: Any) -> dict[str, list[str]]:
    header = resp.headers.get("Content-Security-Policy", "")
    return {d.split()[0]: d.split()[1:] for d in header.split("; ") if d}


def test_every_response_carries_the_security_headers(alice: User, alice_notes: dict[str, int]) -> None:
    """Pages show decrypted notes: scripts from this origin only (none inline), no framing, no
    plugins or <base>, forms post here; no MIME sniffing; no note URL in a Referer."""
    note = alice_notes["plan"]
    anonymous = alice.client.application.test_client()
    for resp in (alice.client.get("/"), alice.client.get(f"/notes/{note}"), alice.client.get(f"/api/notes/{note}"),
                 alice.client.get("/nope"), anonymous.get("/"), anonymous.get("/lockkit/dev/login")):
        policy = _policy(resp)
        assert policy["script-src"] == ["'self'"] and policy["default-src"] == ["'self'"], resp.request.path
        assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
        assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'self'"]
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "same-origin"


def test_clerk_mode_policy_names_clerks_hosts(example_env: str, sqlite_path: Path) -> None:
    """With Clerk: its Frontend API (from the publishable key) for scripts and requests, and
    the other hosts Clerk documents; the refresh page allows its own inline script by hash."""
    from .example_support import CLERK_HOST

    ctx, _ = clerk_example(example_env, sqlite_path)
    with ctx as app:
        client = app.test_client()
        policy = _policy(client.get("/signin"))
        fapi = f"https://{CLERK_HOST}"
        assert policy["script-src"] == ["'self'", fapi, "https://challenges.cloudflare.com", "https://*.protect.clerk.com"]
        assert policy["connect-src"] == ["'self'", fapi, "https://*.protect.clerk.com:*"]
        assert "https://img.clerk.com" in policy["img-src"] and policy["worker-src"] == ["'self'", "blob:"]
        refresh = _policy(client.get("/lockkit/clerk/refresh?next=/notes"))
        assert refresh["script-src"][0].startswith("'sha256-") and fapi in refresh["script-src"]
        assert "'unsafe-inline'" not in refresh["script-src"] and refresh["frame-ancestors"] == ["'none'"]


# -- the Clerk sign-in page ---------------------------------------------------------------
def _clerk_example(example_env: str, sqlite_path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    publishable = "pk_test_" + base64.b64encode(b"fancy-fox-12.clerk.accounts.dev$").decode().rstrip("=")
    return example_app(f"sqlite:///{sqlite_path}", example_env, LOCKKIT_PROVIDERS=["clerk"],
                       CLERK_PUBLISHABLE_KEY=publishable, CLERK_JWT_KEY=pem,
                       CLERK_AUTHORIZED_PARTIES="http://localhost")


@pytest.mark.parametrize(("given", "kept"), [
    ("javascript:alert(document.cookie)", "/"),
    ("JaVaScRiPt:fetch('/api/notes')", "/"),
    ("https://evil.example/phish", "/"),
    ("//evil.example/x", "/"),
    ("/\\evil.example", "/"),
    ("data:text/html,<script>alert(1)</script>", "/"),
    ("/notes/new", "/notes/new"),
    ("/search?tag=household", "/search?tag=household"),
])
def test_clerk_sign_in_page_sends_only_same_site_paths_to_the_browser(
    example_env: str, sqlite_path: Path, given: str, kept: str
) -> None:
    """The Clerk sign-in page hands ``next`` to ``window.location`` and to Clerk's redirect, so
    a ``javascript:`` URL there would run in this origin (reading the user's decrypted notes)
    and another host would be an open redirect: only a same-site path reaches the page."""
    with _clerk_example(example_env, sqlite_path) as app:
        assert app.config["NOTES_SIGN_IN"] == "clerk"
        page = app.test_client().get("/signin", query_string={"next": given})
        assert page.status_code == 200
        body = page.get_data(as_text=True)
        sent = re.findall(r'data-next="([^"]*)"', body)
        assert [html.unescape(v) for v in sent] == [kept], sent
        assert "evil.example" not in body and "javascript:" not in body.lower()
        assert "<script>" not in body and " onload=" not in body  # no inline script: the CSP allows none


def test_clerk_pages_keep_the_session_token_fresh_and_an_expired_post_returns_to_its_form(
    example_env: str, sqlite_path: Path
) -> None:
    """Clerk session tokens live 60 s. Every page of a signed-in user loads Clerk's script,
    which renews the cookie in the background (the sign-in and sign-out pages load it once,
    themselves). A form posted with an expired token goes through the refresh page back to
    the page that sent it, never to the post's own path (a GET there was a 405)."""
    import time
    from urllib.parse import parse_qs, urlsplit

    ctx, mint = clerk_example(example_env, sqlite_path)
    with ctx as app:
        client = app.test_client()
        client.set_cookie("__session", mint("user_2alice"))
        client.set_cookie("__client_uat", str(int(time.time()) - 3600))
        page = client.get("/notes/new")
        assert page.status_code == 200
        body = page.get_data(as_text=True)
        assert body.count("clerk.browser.js") == 1 and 'data-step="keepalive"' in body
        client.set_cookie("__session", "")
        assert client.get("/signin").get_data(as_text=True).count("clerk.browser.js") == 1
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', body)
        assert csrf is not None
        form = {"title": "t", "body": "b", "csrf_token": csrf.group(1)}
        client.set_cookie("__session", mint("user_2alice", issued=time.time() - 70))  # expired
        sent = client.post("/notes", data=form,
                           headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin",
                                    "Referer": "http://localhost/notes/new"})
        assert sent.status_code == 302
        target = parse_qs(urlsplit(sent.headers["Location"]).query)["next"]
        assert target == ["/notes/new"]
        sent = client.post("/notes", data=form,
                           headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin",
                                    "Referer": "https://evil.example/notes/new"})
        assert parse_qs(urlsplit(sent.headers["Location"]).query)["next"] == ["/"]


def test_the_example_refuses_several_identity_providers(example_env: str, sqlite_path: Path) -> None:
    """Notes are stored per ``sub``: with two providers, a "alice" of each would list and
    delete the other's notes (not decrypt them), so the example runs with one provider."""
    from lockkit.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="one identity provider"):
        with example_app(f"sqlite:///{sqlite_path}", example_env, LOCKKIT_PROVIDERS=["dev", "clerk"]):
            pass


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "message"), [
    ({"title": "", "body": "b", "tags": ""}, "A title of 1-200 characters is required."),
    ({"title": "   ", "body": "b", "tags": ""}, "A title of 1-200 characters is required."),
    ({"title": "x" * 201, "body": "b", "tags": ""}, "A title of 1-200 characters is required."),
    ({"title": "t", "body": "b" * 20_001, "tags": ""}, "The body may have at most 20000 characters."),
    ({"title": "t", "body": "b", "tags": ",".join(f"tag{i}" for i in range(21))}, "At most 20 tags of up to 40 characters."),
    ({"title": "t", "body": "b", "tags": "y" * 41}, "At most 20 tags of up to 40 characters."),
])
def test_invalid_notes_are_refused_and_nothing_is_stored(alice: User, sqlite_path: Path, fields: dict[str, str],
                                                         message: str) -> None:
    resp = alice.client.post("/notes", data={**fields, "csrf_token": alice.csrf()})
    assert resp.status_code == 400
    page = text(resp)
    assert message in page and 'class="flash error"' in page
    form = form_posting_to(page, "/notes")
    assert form.fields["body"] == fields["body"]  # the user's input is kept in the form
    assert _count(sqlite_path, "notes") == 0 and _count(sqlite_path, "note_tags") == 0
    assert alice.api_notes() == []


def test_invalid_edit_is_refused_and_the_note_is_unchanged(alice: User, alice_notes: dict[str, int],
                                                           sqlite_path: Path) -> None:
    plan = alice_notes["plan"]
    before = _raw_row(sqlite_path, plan)
    resp = alice.edit(plan, title="", body="changed")
    assert resp.status_code == 400 and "A title of 1-200 characters is required." in text(resp)
    resp = alice.edit(plan, tags=",".join(f"t{i}" for i in range(21)))
    assert resp.status_code == 400 and "At most 20 tags" in text(resp)
    assert _raw_row(sqlite_path, plan) == before


# -- PostgreSQL ------------------------------------------------------------------------------
def _pg_rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        return list(conn.execute(sql, params).fetchall())


def test_postgres_create_read_search(pg_app: Flask, pg_database_url: str) -> None:
    suffix = secrets.token_hex(4)
    alice, bob = User(pg_app, f"alice-{suffix}"), User(pg_app, f"bob-{suffix}")
    alice.sign_in()
    bob.sign_in()
    plan, shop = alice.create(**PLAN), alice.create(**SHOP)
    assert text(alice.client.get(f"/notes/{plan}")).count("Quarterly planning") >= 2
    assert {n["id"]: n["title"] for n in alice.api_notes()} == {plan: PLAN["title"], shop: SHOP["title"]}
    assert alice.titles("/search?tag=household") == ["Groceries list"]
    assert alice.titles("/search?q=pangolin") == ["Quarterly planning"]
    assert location(alice.edit(shop, tags="household, pantry")) == f"/notes/{shop}"
    assert alice.titles("/search?tag=pantry") == ["Groceries list"]

    assert bob.api_notes() == []
    assert bob.titles("/search?tag=household") == []
    assert bob.titles("/search?q=pangolin") == []
    assert bob.client.get(f"/notes/{plan}").status_code == 404

    rows = _pg_rows(pg_database_url, "SELECT owner, title, body FROM notes WHERE owner = %s", (alice.name,))
    tags = _pg_rows(pg_database_url, "SELECT tag, tag_hm FROM note_tags WHERE owner = %s", (alice.name,))
    assert len(rows) == 2 and len(tags) == 4
    assert_no_plaintext(repr(rows) + repr(tags), ALICE_PLAINTEXT + ["pantry"], "the PostgreSQL tables")

    assert location(alice.delete(plan)) == "/"
    assert [n["id"] for n in alice.api_notes()] == [shop]
    assert _pg_rows(pg_database_url, "SELECT count(*) FROM note_tags WHERE note_id = %s", (plan,)) == [(0,)]


def test_postgres_tag_lookup_uses_the_index(pg_app: Flask, pg_database_url: str) -> None:
    import psycopg

    indexes = dict(_pg_rows(pg_database_url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'note_tags'"))
    assert "note_tags_lookup" in indexes
    assert "(owner, tag_hm)" in indexes["note_tags_lookup"]

    user = User(pg_app, f"carol-{secrets.token_hex(4)}")
    user.sign_in()
    note = user.create("Indexed", "a note to look up", "needle")
    [(hm,)] = _pg_rows(pg_database_url, "SELECT tag_hm FROM note_tags WHERE note_id = %s", (note,))
    # enough rows of other owners that a sequential scan is the worse plan
    with psycopg.connect(pg_database_url, connect_timeout=5) as conn:
        filler = f"filler-{secrets.token_hex(4)}"
        [(fid,)] = conn.execute("INSERT INTO notes (owner, title, body, created_at, updated_at) "
                                "VALUES (%s, '{}', '{}', 0, 0) RETURNING id", (filler,)).fetchall()
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO note_tags (note_id, owner, tag, tag_hm) VALUES (%s, %s, '{}', %s)",
                            [(fid, f"{filler}-{i % 50}", secrets.token_hex(32)) for i in range(5000)])
        conn.execute("ANALYZE note_tags")
        conn.commit()
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT DISTINCT note_id FROM note_tags WHERE owner = %s AND tag_hm = %s", (user.name, hm)))
    assert "note_tags_lookup" in plan and "Index" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert user.titles("/search?tag=needle") == ["Indexed"]


def test_postgres_request_threads_leave_no_open_connection(pg_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    created: list[Any] = []
    real_connect = psycopg.connect

    def recording_connect(*args: Any, **kwargs: Any) -> Any:
        conn = real_connect(*args, **kwargs)
        created.append(conn)
        return conn

    monkeypatch.setattr(psycopg, "connect", recording_connect)
    token = pg_app.extensions["lockkit_dev"].mint(f"dave-{secrets.token_hex(4)}")
    statuses: list[int] = []

    def one_request() -> None:
        resp = pg_app.test_client().get("/api/notes", headers={"Authorization": f"Bearer {token}"})
        statuses.append(resp.status_code)

    try:
        for _ in range(3):  # like a threaded server: each request on its own thread
            t = threading.Thread(target=one_request)
            t.start()
            t.join(timeout=30)
        assert statuses == [200, 200, 200]
        assert created, "the requests used the database"
        still_open = [c for c in created if not c.closed]
        assert not still_open, f"{len(still_open)} of {len(created)} request connections left open"
    finally:
        for c in created:
            c.close()


def test_create_app_takes_secret_key_from_the_environment(example_env: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.flask_clerk import create_app
    from lockkit.keys.keyring import Keyring

    from .example_support import WORKSPACE

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("LOCKKIT_WORKSPACE_CRN", WORKSPACE)
    monkeypatch.setenv("LOCKKIT_KEYRING_JSON", Keyring.generate(WORKSPACE).to_json())
    app = create_app({"TESTING": True})
    try:
        assert app.config["SECRET_KEY"] == example_env
        assert User(app, "frank").sign_in().status_code == 200
    finally:
        app.extensions["notes_db"].close()


def test_postgres_schema_creation_is_safe_when_app_servers_start_together() -> None:
    """Several app servers starting on an empty database all create the schema at once."""
    import psycopg

    from examples.flask_clerk.db import Database

    from .example_support import PG_ADMIN_URL, PG_BASE_URL

    name = f"lockkit_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def start() -> None:
            db = Database(PG_BASE_URL + name)
            try:
                barrier.wait()
                db.create_schema()
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)
            finally:
                db.close()

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_postgres_delete_and_a_rekey_batch_take_locks_in_one_order(pg_app: Flask, pg_database_url: str) -> None:
    """A rekey batch holds a note's row and then rewrites its tag rows; a user deleting that
    note meanwhile must wait for the note's row *before* touching its tags, or the two would
    deadlock (PostgreSQL would abort one of them)."""
    import psycopg

    owner = User(pg_app, f"dana-{secrets.token_hex(4)}")
    owner.sign_in()
    note = owner.create("Locked", "a note deleted during a rekey batch", "alpha, beta")
    store = NoteStore(pg_app.extensions["notes_db"], get_state(pg_app).encryption([notes_table]), owner.name,
                      LockContext(token_service=get_state(pg_app).token_service).identify(
                          pg_app.extensions["lockkit_dev"].mint(owner.name)).unwrap())
    batch = psycopg.connect(pg_database_url, connect_timeout=5)  # the rekey batch's transaction
    try:
        cur = batch.cursor()
        cur.execute("SELECT id FROM notes WHERE owner = %s AND id = ANY(%s) ORDER BY id FOR UPDATE", (owner.name, [note]))
        cur.execute("UPDATE notes SET updated_at = updated_at WHERE id = %s", (note,))
        outcome: list[Any] = []
        def delete() -> None:
            try:
                outcome.append(store.delete(note))
            finally:
                pg_app.extensions["notes_db"].close()  # this thread's connection

        deleting = threading.Thread(target=delete)
        deleting.start()
        for _ in range(200):  # until the delete waits on a lock
            if _pg_rows(pg_database_url, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0]:
                break
            time.sleep(0.01)
        cur.execute("UPDATE note_tags SET tag = tag WHERE note_id = %s", (note,))  # deadlocked here before
        batch.commit()
    finally:
        batch.close()
    deleting.join(30)
    assert outcome == [True]
    assert _pg_rows(pg_database_url, "SELECT count(*) FROM note_tags WHERE note_id = %s", (note,)) == [(0,)]


# -- python -m examples.flask_clerk --------------------------------------------------------
@contextmanager
def served_module(tmp_path: Path) -> Iterator[str]:
    """``lockkit init --if-missing`` in a temp directory, then ``python -m examples.flask_clerk``
    there on a free port; yields the base URL. Terminated afterwards."""
    lockkit = Path(sys.executable).with_name("lockkit")
    port = free_port()
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "PORT": str(port),
        "SECRET_KEY": secrets.token_urlsafe(32),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'notes.db'}",
    }
    init = subprocess.run([str(lockkit), "init", "--if-missing"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "lockkit.toml").exists()
    with open(tmp_path / "stdout.log", "wb") as out, open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen(dies_with_us([sys.executable, "-m", "examples.flask_clerk"]), cwd=tmp_path, env=env,
                                stdout=out, stderr=err)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(base + "/", timeout=2):
                        break
                except (urllib.error.URLError, ConnectionError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("the example app did not answer within 30 s:\n"
                                + (tmp_path / "stderr.log").read_text(errors="replace")[-2000:])
                try:  # the pause between polls; also notices the server exiting early
                    code = proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"the example app exited with {code}:\n"
                            + (tmp_path / "stderr.log").read_text(errors="replace")[-2000:])
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_python_m_examples_flask_clerk_serves(tmp_path: Path) -> None:
    logs = tmp_path
    with served_module(tmp_path) as base, requests.Session() as s:
        home = s.get(base + "/", timeout=10)
        assert home.status_code == 200
        assert "Development sign-in." in home.text and "Private notes" in home.text
        # and a real sign-in over HTTP works
        signin = s.get(base + "/notes/new", timeout=10)
        assert signin.status_code == 200 and signin.url.startswith(base + "/lockkit/dev/login")
        form = form_posting_to(signin.text, "/lockkit/dev/login")
        back = s.post(base + form.action, data={**form.fields, "name": "erin"}, timeout=10)
        assert back.status_code == 200 and back.url == base + "/notes/new"
        assert 'id="whoami">erin<' in back.text
        assert forms(back.text)
    out = (logs / "stdout.log").read_text()
    assert f"Private notes: {base}/  (sign-in: dev)" in out
    err = (logs / "stderr.log").read_text()
    assert "LOCKKIT DEV IDENTITY PROVIDER ENABLED" in err
    assert (logs / "notes.db").exists()


# -- outages of the token service, identity provider, database and session store ---------------
def _unavailable_page(resp: Any, path: str) -> None:
    assert resp.status_code == 503, (path, resp.status_code, resp.headers.get("Location"))
    assert "Location" not in resp.headers, path
    assert "<h1>Temporarily unavailable</h1>" in text(resp), path


def _unavailable_json(resp: Any, path: str) -> None:
    assert resp.status_code == 503, (path, resp.status_code)
    assert resp.is_json and resp.get_json()["error"] == "unavailable", (path, text(resp)[:200])


@pytest.mark.parametrize("down", ["token service", "identity provider"])
def test_a_token_service_or_identity_provider_outage_is_503_on_the_home_page_not_a_sign_in_loop(
    notes_app: Flask, alice: User, monkeypatch: pytest.MonkeyPatch, down: str
) -> None:
    """A signed-in user whose CTS token must be obtained again while the token service (or the
    identity provider's keys) is down: the home page answers 503, not "sign in again" (signing
    in lands back on the home page: a loop), and the session survives the outage."""
    from lockkit.cts.embedded import CtsUnavailableError
    from lockkit.errors import ProviderUnavailableError

    alice.create(**PLAN)
    state = get_state(notes_app)
    with monkeypatch.context() as m:
        if down == "token service":
            with alice.client.session_transaction() as s:  # a CTS token must be exchanged again
                s.pop(state.session_key)

            def authorize(*args: Any, **kwargs: Any) -> Any:
                raise CtsUnavailableError("CTS unavailable: the token service is unreachable")

            m.setattr(state.token_service, "authorize", authorize)
        else:
            def verify(*args: Any, **kwargs: Any) -> Any:
                raise ProviderUnavailableError("identity provider keys are unavailable", detail="JWKS unreachable")

            m.setattr(state.providers[0], "verify", verify)
        home = alice.client.get("/")
        _unavailable_page(home, "/")
        assert "Sign-in is temporarily unavailable" in text(home) and "Sign in to start" not in text(home)
        assert home.headers.get("Retry-After")
        assert alice.client.get("/notes/new").status_code == 503  # as @lock_context_required answers
        _unavailable_json(alice.client.get("/api/notes"), "/api/notes")
    assert alice.titles("/") == [PLAN["title"]]  # back, without signing in again


def test_a_retryable_lock_context_error_is_503_and_keeps_the_session(
    notes_app: Flask, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LockContextError of an outage (retryable) is no reason to drop the session's CTS token
    and send the user to sign in: 503, JSON 503 under /api/."""
    from lockkit.errors import LockContextError

    alice.create(**PLAN)

    def refused(self: NoteStore, *args: Any, **kwargs: Any) -> Any:
        raise LockContextError("the token service is unreachable", retryable=True)

    monkeypatch.setattr(NoteStore, "all_notes", refused)
    _unavailable_page(alice.client.get("/"), "/")
    _unavailable_json(alice.client.get("/api/notes"), "/api/notes")
    with alice.client.session_transaction() as s:
        assert get_state(notes_app).session_key in s  # kept


def test_a_search_during_a_key_service_outage_is_503_not_a_short_query(
    alice: User, alice_notes: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage reaching the search views as a retryable EncryptionError is 503, not "Search
    for a word of three or more letters." (pages) nor "no note matches" (API)."""
    from lockkit.errors import EncryptionError

    def outage(self: NoteStore, *args: Any, **kwargs: Any) -> Any:
        raise EncryptionError("the key service is unreachable", retryable=True)

    monkeypatch.setattr(NoteStore, "search", outage)
    monkeypatch.setattr(NoteStore, "by_tag", outage)
    for path in ("/search?q=pangolin", "/search?tag=household"):
        page = alice.client.get(path)
        _unavailable_page(page, path)
        assert SHORT_QUERY_MESSAGE not in text(page)
    _unavailable_json(alice.client.get("/api/notes?q=pangolin"), "/api/notes?q=pangolin")


@contextmanager
def _database_gone(path: Path) -> Iterator[None]:
    """The SQLite file cannot be opened (a directory stands where it was): every connection
    attempt raises sqlite3.OperationalError, as for a lost volume."""
    kept = path.with_name(path.name + ".kept")
    path.rename(kept)
    path.mkdir()
    try:
        yield
    finally:
        path.rmdir()
        kept.rename(path)


def test_the_database_down_is_503_html_and_json_and_logged_as_a_warning(
    notes_app: Flask, alice: User, sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    note_id = alice.create(**PLAN)
    form = form_posting_to(text(alice.client.get("/notes/new")), "/notes")
    notes_app.extensions["notes_db"].close()
    caplog.set_level("WARNING")
    with _database_gone(sqlite_path):
        for path in ("/", f"/notes/{note_id}", "/search?tag=workplace", "/database"):
            _unavailable_page(alice.client.get(path), path)
        for path in ("/api/notes", f"/api/notes/{note_id}"):
            _unavailable_json(alice.client.get(path), path)
        _unavailable_page(alice.client.post("/notes", data={**form.fields, "title": "t", "body": "b", "tags": ""}), "POST /notes")
    warnings = [r for r in caplog.records if r.name == "examples.flask_clerk" and r.levelname == "WARNING"]
    assert warnings and all("database unavailable (OperationalError)" in r.getMessage() for r in warnings)
    assert not [r for r in caplog.records if r.levelno >= 40], "no error/traceback logged for an outage"
    assert [n["title"] for n in alice.api_notes()] == [PLAN["title"]]  # back, nothing lost or added


def _failing_query(sql: str, params: tuple[Any, ...] = (), before: str | None = None) -> Any:
    """A NoteStore.all_notes that runs ``sql`` (a query with a bug, or one that times out),
    after ``before`` in the same transaction."""

    def all_notes(self: NoteStore) -> list[Any]:
        with self.db.transaction() as cur:
            if before:
                cur.execute(before)
            cur.execute(sql, params).fetchall()
        return []

    return all_notes


def _assert_a_logged_500(app: Flask, user: User, caplog: pytest.LogCaptureFixture, error: type[Exception]) -> str:
    """``/`` and ``/api/notes`` answer Flask's 500 (not "temporarily unavailable", no
    Retry-After), each logged once at ERROR with the traceback; returns the logged text."""
    caplog.clear()
    caplog.set_level("INFO")
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production
    for path in ("/", "/api/notes"):
        resp = user.client.get(path)
        assert resp.status_code == 500, (path, resp.status_code, text(resp)[:300])
        assert "Retry-After" not in resp.headers and "Temporarily unavailable" not in text(resp), path
    errors = [r for r in caplog.records if r.name == "examples.flask_clerk" and r.levelno == 40]
    assert len(errors) == 2, [r.getMessage() for r in caplog.records]
    assert all(f"database error ({error.__name__})" in r.getMessage() and r.exc_info for r in errors)
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
    logged = "\n".join(caplog.handler.format(r) for r in errors)
    assert "Traceback (most recent call last)" in logged and "in all_notes" in logged
    app.config["PROPAGATE_EXCEPTIONS"] = None  # testing: Flask raises it to the test, as before
    with pytest.raises(error):
        user.client.get("/api/notes")
    return logged


@pytest.mark.parametrize(("sql", "error"), [
    ("SELECT id FROM notes WHERE owner = ? AND id > ?", sqlite3.ProgrammingError),  # one binding missing
    ("SELECT no_such_column FROM notes WHERE owner = ?", sqlite3.OperationalError),  # SQLITE_ERROR: a bug
])
def test_a_bug_in_a_query_is_a_500_with_a_traceback_not_temporarily_unavailable(
    notes_app: Flask, alice: User, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    sql: str, error: type[Exception]
) -> None:
    """Only an outage is 503 "try again shortly": a query with a bug fails every time, and
    must show up in the logs as the error it is."""
    monkeypatch.setattr(NoteStore, "all_notes", _failing_query(sql, ("alice",)))
    logged = _assert_a_logged_500(notes_app, alice, caplog, error)
    assert f"sqlite3.{error.__name__}: " in logged  # SQLite's message: never a bound value


def test_postgres_a_bug_in_a_query_is_a_500_and_a_statement_timeout_is_503(
    pg_app: Flask, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    user = User(pg_app, f"dave-{secrets.token_hex(4)}")
    user.sign_in()
    # a value the query refuses (DataError, SQLSTATE 22P02): PostgreSQL's message quotes it
    monkeypatch.setattr(NoteStore, "all_notes", _failing_query("SELECT ?::integer", ("value-of-a-statement",)))
    logged = _assert_a_logged_500(pg_app, user, caplog, psycopg.errors.InvalidTextRepresentation)
    assert "SQLSTATE 22P02" in logged and "value-of-a-statement" not in logged
    # a statement timeout (QueryCanceled, SQLSTATE 57014): an outage
    monkeypatch.setattr(NoteStore, "all_notes", _failing_query("SELECT pg_sleep(2)", before="SET LOCAL statement_timeout = 50"))
    pg_app.config["PROPAGATE_EXCEPTIONS"] = False
    caplog.clear()
    _unavailable_page(user.client.get("/"), "/")
    _unavailable_json(user.client.get("/api/notes"), "/api/notes")
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30 and r.name == "examples.flask_clerk"] == [
        "database unavailable (QueryCanceled, SQLSTATE 57014) on GET /",
        "database unavailable (QueryCanceled, SQLSTATE 57014) on GET /api/notes"]


def test_database_outages_are_told_from_bugs() -> None:
    """What counts as an outage (503, try again) for each driver."""
    import psycopg

    from examples.flask_clerk.db import Database

    pg, lite = Database("postgresql://app@127.0.0.1:5432/notes"), Database("sqlite:///notes.db")
    for err in (psycopg.OperationalError("server closed the connection unexpectedly"),
                psycopg.errors.QueryCanceled(), psycopg.errors.AdminShutdown(), psycopg.errors.TooManyConnections(),
                psycopg.errors.DeadlockDetected()):
        assert pg.is_outage(err), err
    for err in (psycopg.ProgrammingError("syntax"), psycopg.errors.UniqueViolation(), psycopg.DataError("bad"),
                psycopg.InterfaceError("misuse"), psycopg.errors.UndefinedColumn(),
                # OperationalErrors the server answers that never pass: a limit, refused credentials
                psycopg.errors.ProgramLimitExceeded(), psycopg.errors.InvalidPassword(),
                psycopg.errors.ObjectNotInPrerequisiteState()):
        assert not pg.is_outage(err), err
    conn = sqlite3.connect(":memory:")
    try:
        with pytest.raises(sqlite3.OperationalError) as syntax:
            conn.execute("SELEC 1")
    finally:
        conn.close()
    assert not lite.is_outage(syntax.value)
    assert not lite.is_outage(sqlite3.ProgrammingError("Incorrect number of bindings supplied"))
    assert not lite.is_outage(sqlite3.IntegrityError("UNIQUE constraint failed"))
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # type: ignore[attr-defined]  # SQLITE_BUSY
    assert lite.is_outage(locked)


def test_the_session_store_down_is_503_html_and_json(example_env: str, sqlite_path: Path) -> None:
    """Redis (server-side sessions) unreachable: the session cannot even be opened, before any
    view runs. 503 page / 503 JSON, not Flask's bare 500."""
    pytest.importorskip("redis")
    with example_app(f"sqlite:///{sqlite_path}", example_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                     SESSION_KEY_PREFIX=f"notes-example-test-{secrets.token_hex(4)}:") as app:
        c = app.test_client()
        c.set_cookie("session", secrets.token_urlsafe(32))  # a session id: it must be looked up
        _unavailable_page(c.get("/"), "/")
        _unavailable_page(c.get("/notes/new"), "/notes/new")
        _unavailable_json(c.get("/api/notes"), "/api/notes")
        assert c.get("/api/notes").headers.get("Set-Cookie") is None  # nothing written back
        fresh = app.test_client()  # no session to look up: the landing page still shows
        assert fresh.get("/").status_code == 200


def test_a_note_saved_before_the_session_store_failed_is_not_saved_twice(
    redis_notes_app: tuple[Flask, Any, str], sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis drops after the note's transaction committed (the session cannot be saved): 503,
    and sending the same form again shows the saved note instead of saving a copy."""
    import redis

    app, _, _ = redis_notes_app
    app.config["PROPAGATE_EXCEPTIONS"] = False  # the failure comes after the view, as in production
    alice = User(app, "alice")
    alice.sign_in()
    form = form_posting_to(text(alice.client.get("/notes/new")), "/notes")
    assert re.fullmatch(r"[0-9a-f]{32}", form.fields.get("submit_token", ""))
    interface: Any = app.session_interface
    working, dead = interface.client, redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=2)
    create = NoteStore.create

    def create_then_redis_drops(self: NoteStore, *args: Any, **kwargs: Any) -> int:
        note_id = create(self, *args, **kwargs)
        interface.client = dead
        return note_id

    data = {**form.fields, **PLAN}
    with monkeypatch.context() as m:
        m.setattr(NoteStore, "create", create_then_redis_drops)
        m.setattr(interface, "client", working)  # put back when the context ends
        failed = alice.client.post("/notes", data=data)
    dead.close()
    _unavailable_page(failed, "POST /notes")
    assert "sending the same form again saves it once" in text(failed)
    assert _count(sqlite_path, "notes") == 1  # saved before the failure
    again = alice.client.post("/notes", data=data)  # the user sends the form again
    note_id = int(location(again).rsplit("/", 1)[1])
    assert _count(sqlite_path, "notes") == 1 and _count(sqlite_path, "note_tags") == 2
    assert [n["id"] for n in alice.api_notes()] == [note_id]


@pytest.mark.parametrize("refusal", ["ReadOnlyError", "OutOfMemoryError", "TryAgainError"])
def test_a_session_store_that_refuses_writes_for_a_while_is_503(
    redis_notes_app: tuple[Flask, Any, str], sqlite_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """Redis answering but refusing writes (a read-only replica after a failover, full under
    noeviction, a cluster resharding) passes like an unreachable one: 503 and "sending the same
    form again saves it once", not Flask's bare 500 after the note was saved."""
    import redis

    app, _, _ = redis_notes_app
    app.config["PROPAGATE_EXCEPTIONS"] = False
    alice = User(app, "alice")
    alice.sign_in()
    form = form_posting_to(text(alice.client.get("/notes/new")), "/notes")
    interface: Any = app.session_interface
    error = getattr(redis.exceptions, refusal)

    class Refusing:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def set(self, *args: Any, **kwargs: Any) -> Any:
            raise error("refused for a while")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    create = NoteStore.create

    def create_then_redis_refuses(self: NoteStore, *args: Any, **kwargs: Any) -> int:
        note_id = create(self, *args, **kwargs)
        interface.client = Refusing(interface.client)
        return note_id

    with monkeypatch.context() as m:
        m.setattr(NoteStore, "create", create_then_redis_refuses)
        m.setattr(interface, "client", interface.client)  # put back when the context ends
        failed = alice.client.post("/notes", data={**form.fields, **PLAN})
    _unavailable_page(failed, "POST /notes")
    assert "sending the same form again saves it once" in text(failed)
    assert _count(sqlite_path, "notes") == 1


def test_sending_the_new_note_form_twice_saves_one_note(alice: User, sqlite_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    page = text(alice.client.get("/notes/new"))
    form = form_posting_to(page, "/notes")
    data = {**form.fields, **PLAN}
    first = location(alice.client.post("/notes", data=data))
    assert location(alice.client.post("/notes", data=data)) == first
    assert _count(sqlite_path, "notes") == 1 and _count(sqlite_path, "note_tags") == 2
    # two requests at once: both miss the first lookup, the unique index refuses the second
    form = form_posting_to(text(alice.client.get("/notes/new")), "/notes")
    assert form.fields["submit_token"] != data["submit_token"]  # a new form, a new note
    data = {**form.fields, **SHOP}
    second = location(alice.client.post("/notes", data=data))
    submitted = NoteStore.submitted
    calls: list[str] = []

    def missed_once(self: NoteStore, token: str, digest: str) -> int | None:
        calls.append(token)
        return None if len(calls) == 1 else submitted(self, token, digest)

    monkeypatch.setattr(NoteStore, "submitted", missed_once)
    assert location(alice.client.post("/notes", data=data)) == second
    assert len(calls) == 2
    assert _count(sqlite_path, "notes") == 2 and _count(sqlite_path, "note_tags") == 3
    # a client sending no token (or not one of ours) saves a note per request, as before
    for token in (None, "x" * 32):
        fields = {k: v for k, v in form.fields.items() if k != "submit_token"}
        if token:
            fields["submit_token"] = token
        assert location(alice.client.post("/notes", data={**fields, "title": "untokened"})).startswith("/notes/")
    assert _count(sqlite_path, "notes") == 4


def _submitted_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT id, owner, submit_token, submit_digest FROM notes ORDER BY id"))
    finally:
        conn.close()


def test_the_same_form_with_other_content_saves_another_note(alice: User, sqlite_path: Path) -> None:
    """Save note A, press Back (a browser may show the same form, with the same token), write
    note B in it and save: B is a note of its own, never dropped for A. Sent again, each is
    still saved once."""
    page = alice.client.get("/notes/new")
    assert page.headers.get("Cache-Control") == "no-store"  # Back fetches a new form (a new token)
    form = form_posting_to(text(page), "/notes")
    first = location(alice.client.post("/notes", data={**form.fields, **PLAN}))
    other = location(alice.client.post("/notes", data={**form.fields, **SHOP}))  # same token, other content
    assert other != first
    assert location(alice.client.post("/notes", data={**form.fields, **SHOP})) == other  # B sent twice: once
    assert location(alice.client.post("/notes", data={**form.fields, **PLAN})) == first
    # the same content as saved (stripped, tags normalised) is the same note
    same = {**PLAN, "title": f"  {PLAN['title']} ", "tags": "strategy; workplace"}
    assert location(alice.client.post("/notes", data={**form.fields, **same})) == first
    assert _count(sqlite_path, "notes") == 2 and _count(sqlite_path, "note_tags") == 3
    notes = {n["title"]: n for n in alice.api_notes()}
    assert sorted(notes) == sorted([PLAN["title"], SHOP["title"]])
    assert notes[SHOP["title"]]["body"] == SHOP["body"] and notes[PLAN["title"]]["body"] == PLAN["body"]
    rows = _submitted_rows(sqlite_path)
    assert {r[2] for r in rows} == {form.fields["submit_token"]} and len({r[3] for r in rows}) == 2


def test_the_submit_digest_is_keyed_by_the_app_secret(example_env: str, tmp_path: Path) -> None:
    """The digest stored with a submit token is an HMAC of the content under a key derived from
    the app's SECRET_KEY: the same note (same user, token and content) in two apps with
    different secrets gets unrelated digests, and neither is a plain hash of the content."""
    import hashlib

    from examples.flask_clerk.notes import submit_digest, submit_key

    token = secrets.token_hex(16)
    digests = []
    for n, secret in enumerate((secrets.token_urlsafe(32), secrets.token_urlsafe(32))):
        db = tmp_path / f"notes-{n}.db"
        with example_app(f"sqlite:///{db}", secret) as app:
            user = User(app, "alice")
            user.sign_in()
            fields = form_posting_to(text(user.client.get("/notes/new")), "/notes").fields
            location(user.client.post("/notes", data={**fields, "submit_token": token, **PLAN}))
        (_, owner, stored_token, digest), = _submitted_rows(db)
        assert stored_token == token and re.fullmatch(r"[0-9a-f]{64}", digest)
        title, body, tags = PLAN["title"], PLAN["body"], ["strategy", "workplace"]
        assert digest == submit_digest(submit_key(secret), owner, token, title, body, tags)
        unkeyed = [json.dumps(v).encode() for v in ([owner, token, title, body, tags], [title, body, tags])]
        unkeyed += [title.encode(), body.encode(), (title + body).encode()]
        assert digest not in {hashlib.sha256(v).hexdigest() for v in unkeyed}
        assert_no_plaintext(sqlite_dump(db), ALICE_PLAINTEXT, "the notes database")
        digests.append(digest)
    assert digests[0] != digests[1]


def test_a_form_saved_before_digests_existed_never_drops_a_note(example_env: str, sqlite_path: Path) -> None:
    """A database of yesterday's schema (submit_token under a unique index on (owner,
    submit_token), no digest) is brought up to date in place: a note saved there with a token
    has no digest, so that form sent again saves a copy, never drops its content."""
    conn = sqlite3.connect(sqlite_path)
    with conn:
        for stmt in OLD_SCHEMA:
            conn.execute(stmt)
        conn.execute("ALTER TABLE notes ADD COLUMN submit_token TEXT")
        conn.execute("CREATE UNIQUE INDEX notes_submit_token ON notes (owner, submit_token) WHERE submit_token IS NOT NULL")
    conn.close()
    token = secrets.token_hex(16)
    with example_app(f"sqlite:///{sqlite_path}", example_env) as app:
        user = User(app, "alice")
        user.sign_in()
        fields = {**form_posting_to(text(user.client.get("/notes/new")), "/notes").fields, "submit_token": token}
        untokened = {k: v for k, v in fields.items() if k != "submit_token"}
        location(user.client.post("/notes", data={**untokened, "title": "saved yesterday", "body": "", "tags": ""}))
        conn = sqlite3.connect(sqlite_path)
        with conn:  # as yesterday's app saved it: with the form's token, without a digest
            conn.execute("UPDATE notes SET submit_token = ?", (token,))
        conn.close()
        first = location(user.client.post("/notes", data={**fields, **SHOP}))
        assert location(user.client.post("/notes", data={**fields, **SHOP})) == first
        assert sorted(n["title"] for n in user.api_notes()) == sorted(["saved yesterday", SHOP["title"]])
    conn = sqlite3.connect(sqlite_path)
    try:
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(notes)")}
        assert "notes_submitted" in indexes and "notes_submit_token" not in indexes
    finally:
        conn.close()


OLD_SCHEMA = [  # the notes table as databases made before submit_token have it
    """CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, title TEXT NOT NULL,
        body TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX notes_owner ON notes (owner)",
]


def test_an_existing_sqlite_database_gets_the_submit_token_column(example_env: str, sqlite_path: Path) -> None:
    conn = sqlite3.connect(sqlite_path)
    with conn:
        for stmt in OLD_SCHEMA:
            conn.execute(stmt)
    conn.close()
    for _ in range(2):  # and again: idempotent
        with example_app(f"sqlite:///{sqlite_path}", example_env) as app:
            user = User(app, "alice")
            user.sign_in()
            data = {**form_posting_to(text(user.client.get("/notes/new")), "/notes").fields, **PLAN}
            assert location(user.client.post("/notes", data=data)) == location(user.client.post("/notes", data=data))
    conn = sqlite3.connect(sqlite_path)
    try:
        assert {"submit_token", "submit_digest"} <= {r[1] for r in conn.execute("PRAGMA table_info(notes)")}
        assert "notes_submitted" in {r[1] for r in conn.execute("PRAGMA index_list(notes)")}
    finally:
        conn.close()
    assert _count(sqlite_path, "notes") == 2


@pytest.mark.parametrize("before", ["no submit_token", "no submit_digest"])
def test_postgres_the_same_form_twice_saves_one_note_and_old_databases_get_the_columns(
    pg_app: Flask, pg_database_url: str, example_env: str, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    import psycopg

    with psycopg.connect(pg_database_url, autocommit=True, connect_timeout=5) as conn:
        if before == "no submit_token":  # as before either column existed
            conn.execute("ALTER TABLE notes DROP COLUMN submit_token, DROP COLUMN submit_digest")
        else:  # yesterday's schema: one note per (owner, submit_token), whatever it held
            conn.execute("ALTER TABLE notes DROP COLUMN submit_digest")
            # notes other tests saved from one form with different contents: that index cannot hold them
            conn.execute("UPDATE notes SET submit_token = NULL WHERE (owner, submit_token) IN (SELECT owner, submit_token "
                         "FROM notes WHERE submit_token IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1)")
            conn.execute("CREATE UNIQUE INDEX notes_submit_token ON notes (owner, submit_token) WHERE submit_token IS NOT NULL")
    name = f"carol-{secrets.token_hex(4)}"
    with example_app(pg_database_url, example_env) as app:  # a restarted app server brings the schema up to date
        user = User(app, name)
        user.sign_in()
        fields = form_posting_to(text(user.client.get("/notes/new")), "/notes").fields
        data = {**fields, **PLAN}
        first = location(user.client.post("/notes", data=data))
        assert location(user.client.post("/notes", data=data)) == first
        submitted = NoteStore.submitted
        calls: list[str] = []

        def missed_once(self: NoteStore, token: str, digest: str) -> int | None:
            calls.append(token)
            return None if len(calls) == 1 else submitted(self, token, digest)

        with monkeypatch.context() as m:
            m.setattr(NoteStore, "submitted", missed_once)  # the unique index decides
            assert location(user.client.post("/notes", data=data)) == first
        assert len(calls) == 2
        assert [n["title"] for n in user.api_notes()] == [PLAN["title"]]
        other = location(user.client.post("/notes", data={**fields, **SHOP}))  # the same form, other content
        assert other != first and location(user.client.post("/notes", data={**fields, **SHOP})) == other
        assert sorted(n["title"] for n in user.api_notes()) == sorted([PLAN["title"], SHOP["title"]])
    assert _pg_rows(pg_database_url, "SELECT count(*) FROM notes WHERE owner = %s", (name,)) == [(2,)]
    indexes = "SELECT indexname FROM pg_indexes WHERE indexname IN ('notes_submitted', 'notes_submit_token')"
    assert _pg_rows(pg_database_url, indexes) == [("notes_submitted",)]  # yesterday's index replaced


def test_postgres_connections_have_a_connect_and_a_statement_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL that accepts connections but does not answer would hold each request for
    libpq's own limits; DATABASE_URL's own settings (and PGCONNECT_TIMEOUT / PGOPTIONS) win."""
    import psycopg

    from examples.flask_clerk.db import Database

    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def connect(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        raise psycopg.OperationalError("not connecting in this test")

    monkeypatch.setattr(psycopg, "connect", connect)
    for var in ("PGCONNECT_TIMEOUT", "PGOPTIONS"):
        monkeypatch.delenv(var, raising=False)

    def options(url: str) -> dict[str, Any]:
        seen.clear()
        with pytest.raises(psycopg.OperationalError):
            Database(url)._connect()
        (args, kwargs), = seen
        assert args == (url,) and kwargs.pop("autocommit") is False
        return kwargs

    base = "postgresql://app@127.0.0.1:5432/notes"
    assert options(base) == {"connect_timeout": 5, "options": "-c statement_timeout=15000"}
    assert options(base + "?options=-c%20search_path%3Dnotes") == {
        "connect_timeout": 5, "options": "-c search_path=notes -c statement_timeout=15000"}
    assert options(base + "?connect_timeout=2&options=-c%20statement_timeout%3D1000") == {}
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=2000")
    assert options(base) == {}
    monkeypatch.setenv("PGOPTIONS", "-c search_path=notes")
    assert options(base) == {"options": "-c search_path=notes -c statement_timeout=15000"}


def test_postgres_statement_timeout_is_set_on_the_app_connections(pg_app: Flask) -> None:
    db = pg_app.extensions["notes_db"]
    with db.transaction() as cur:
        assert cur.execute("SHOW statement_timeout").fetchone() == ("15s",)


@pytest.mark.parametrize("command", [["notes", "key-usage"], ["notes", "retire-key", "1"]])
def test_key_usage_and_retire_key_with_the_database_down_fail_cleanly(
    example_env: str, sqlite_path: Path, tmp_path: Path, command: list[str]
) -> None:
    from lockkit.keys.keyring import Keyring

    from .example_support import WORKSPACE

    ring_path = tmp_path / "keyring.json"
    ring = Keyring.generate(WORKSPACE)
    ring.rotate()
    ring.save(ring_path)
    with example_app(f"sqlite:///{sqlite_path}", example_env, LOCKKIT_KEYRING_JSON="",
                     LOCKKIT_KEYRING=str(ring_path)) as app:
        app.extensions["notes_db"].close()
        with _database_gone(sqlite_path):
            result = app.test_cli_runner().invoke(args=command)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    assert "Error: database error (OperationalError)" in result.output and "Traceback" not in result.output
    assert [v.version for v in Keyring.load(ring_path).versions()] == [1, 2]  # nothing retired
