"""Private notes: every field encrypted under the owner's lock context before it is stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lockkit import DecryptionError, Encryption, LockContext, encrypted_column, encrypted_table, matches
from lockkit.errors import EncryptionError, LockkitError
from lockkit.search import normalise
from lockkit.search import words as search_words

from .db import MAX_ID, Database, dumps, loads

notes_table = encrypted_table(
    "notes",
    # every note field belongs to one user: never written or read without their lock context
    title=encrypted_column("title").free_text_search().require_lock_context(),
    body=encrypted_column("body").free_text_search().require_lock_context(),
    tag=encrypted_column("tag").equality().require_lock_context(),
)

MAX_TITLE, MAX_BODY, MAX_TAGS, MAX_TAG = 200, 20_000, 20, 40
#: a text search: every distinct word (of three or more letters) costs two key releases, one per
#: column (each an audit-log entry), so a query has a bounded number of words and characters
MAX_QUERY_WORDS, MAX_QUERY_CHARS = 16, 256
_SUBMIT_TOKEN = re.compile(r"[0-9a-f]{32}")
#: note ids per IN (...) query (PostgreSQL takes at most 65,535 parameters, SQLite builds less)
_ID_CHUNK = 5000


@dataclass
class Note:
    id: int
    title: str
    body: str
    tags: list[str]
    created_at: float
    updated_at: float
    #: False when the note did not decrypt (damaged or moved in the database): title and body
    #: are then empty, and the note can only be deleted
    readable: bool = True


class ValidationError(ValueError):
    pass


class NotesUnavailable(Exception):
    """The key service cannot release keys right now (it is down, or its audit log cannot
    record the release: fail-closed auditing). Nothing is wrong with the notes: try again
    later. Not to be confused with a note that does not decrypt (damaged or moved), which
    shows as unreadable."""


def is_outage(err: LockkitError) -> bool:
    """Was this operation refused because keys could not be released now (the key service or
    its audit log down, sealed or full), not because of the values? lockkit says so with
    ``retryable``; only an error that is not retryable makes a note unreadable."""
    return err.retryable


@contextmanager
def _key_service() -> Iterator[None]:
    """Turn an outage of the key service (or of its audit log) into :class:`NotesUnavailable`."""
    try:
        yield
    except (EncryptionError, DecryptionError) as err:
        if is_outage(err):
            raise NotesUnavailable(err.message) from err
        raise


def query_words(text: str) -> list[str]:
    """The distinct words (three or more letters, normalised) a text search looks for.

    :raises ValidationError: more than ``MAX_QUERY_CHARS`` characters or ``MAX_QUERY_WORDS``
        words (checked before any key is asked for).
    """
    if len(text) > MAX_QUERY_CHARS:
        raise ValidationError(f"Search for at most {MAX_QUERY_WORDS} words ({MAX_QUERY_CHARS} characters).")
    wanted = list(dict.fromkeys(w for w in search_words(text) if len(w) >= 3))
    if len(wanted) > MAX_QUERY_WORDS:
        raise ValidationError(f"Search for at most {MAX_QUERY_WORDS} words ({MAX_QUERY_CHARS} characters).")
    return wanted


def new_submit_token() -> str:
    """A token for one new-note form (hex: it can never spell a word of a note)."""
    return secrets.token_hex(16)


def submit_token(value: str | None) -> str | None:
    """The form's token if it is one :func:`new_submit_token` makes; else ``None`` (no
    duplicate check: a client that sends none saves a note per request, as before)."""
    return value if value is not None and _SUBMIT_TOKEN.fullmatch(value) else None


def submit_key(secret_key: str | bytes) -> bytes:
    """The key of :func:`submit_digest`, derived from the app's ``SECRET_KEY`` (HMAC-SHA256
    with a label of its own: never the key that signs sessions itself)."""
    secret = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
    return hmac.new(secret, b"examples.flask_clerk notes: new-note submit digest v1", hashlib.sha256).digest()


def submit_digest(key: bytes, owner: str, token: str, title: str, body: str, tags: list[str]) -> str:
    """A keyed digest (HMAC-SHA256, hex) of a new note's content as saved, stored with the
    form's submit token: the same form sent again with the same content finds the note it
    saved; with other content (the form reused after Back) it is another note. Keyed by the
    app's secret and bound to the owner and the token, it tells the database nothing about the
    content, not even which notes hold the same."""
    message = json.dumps([owner, token, title, body, tags], separators=(",", ":"))  # ASCII: any string encodes
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def clean(title: str, body: str, tags: str) -> tuple[str, str, list[str]]:
    title, body = title.strip(), body.strip()
    tag_list = sorted({t.strip().lower() for t in tags.replace(";", ",").split(",") if t.strip()})
    if not title or len(title) > MAX_TITLE:
        raise ValidationError(f"A title of 1-{MAX_TITLE} characters is required.")
    if len(body) > MAX_BODY:
        raise ValidationError(f"The body may have at most {MAX_BODY} characters.")
    if len(tag_list) > MAX_TAGS or any(len(t) > MAX_TAG for t in tag_list):
        raise ValidationError(f"At most {MAX_TAGS} tags of up to {MAX_TAG} characters.")
    return title, body, tag_list


class NoteStore:
    """Reads and writes notes for one owner. ``owner`` is the verified ``sub``: every query
    is scoped by it, and every value is sealed with the owner's lock context."""

    def __init__(self, db: Database, client: Encryption, owner: str, lock_context: LockContext, *,
                 submit_key: bytes | None = None) -> None:
        self.db, self.client, self.owner, self.lc = db, client, owner, lock_context
        #: the key of the submitted notes' digests (see :func:`submit_key`); needed to save with a submit token
        self.submit_key = submit_key

    def _encrypt(self, title: str, body: str, tags: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with _key_service():
            row = self.client.encrypt_model({"title": title, "body": body}, notes_table).with_lock_context(self.lc).unwrap()
            tag_payloads = [
                r.unwrap() for r in self.client.bulk_encrypt(tags, column="tag", table=notes_table).with_lock_context(self.lc).unwrap()
            ]
        return row, tag_payloads

    def create(self, title: str, body: str, tags: list[str], *, now: float | None = None,
               submit_token: str | None = None) -> int:
        """Encrypt and store a new note; returns its id. With a ``submit_token`` (see
        :func:`submit_token`) the same content already saved with it is not saved again: that
        note's id is returned (a form sent twice, when the answer to the first never arrived).
        Other content sent with the same token (the form reused after Back) is a new note."""
        digest = None
        if submit_token is not None:
            if self.submit_key is None:
                raise ValueError("saving with a submit token needs the store's submit_key")
            digest = submit_digest(self.submit_key, self.owner, submit_token, title, body, tags)
            done = self.submitted(submit_token, digest)
            if done is not None:
                return done
        row, tag_payloads = self._encrypt(title, body, tags)  # encrypt first: a failure stores nothing
        ts = time.time() if now is None else now
        try:
            with self.db.transaction() as cur:
                note_id = cur.insert(
                    "INSERT INTO notes (owner, title, body, created_at, updated_at, submit_token, submit_digest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self.owner, dumps(row["title"]), dumps(row["body"]), ts, ts, submit_token, digest),
                )
                for p in tag_payloads:
                    cur.execute("INSERT INTO note_tags (note_id, owner, tag, tag_hm) VALUES (?, ?, ?, ?)",
                                (note_id, self.owner, dumps(p), p["hm"]))
        except self.db.conflicts:
            # the same form sent twice at once with the same content: the other request's note
            # holds the token and digest (the unique index refused this one, rolled back)
            done = self.submitted(submit_token, digest) if submit_token is not None and digest is not None else None
            if done is None:
                raise
            return done
        return note_id

    def submitted(self, token: str, digest: str) -> int | None:
        """The id of this owner's note saved from the form carrying ``token`` with the content
        whose :func:`submit_digest` is ``digest``, if any. (A note saved before digests existed
        has none, and is not found: a copy, never a note dropped.)"""
        with self.db.transaction() as cur:
            row = cur.execute("SELECT id FROM notes WHERE owner = ? AND submit_token = ? AND submit_digest = ?",
                              (self.owner, token, digest)).fetchone()
        return int(row[0]) if row is not None else None

    def update(self, note_id: int, title: str, body: str, tags: list[str]) -> bool:
        if not 0 < note_id <= MAX_ID:
            return False
        row, tag_payloads = self._encrypt(title, body, tags)
        with self.db.transaction() as cur:
            cur.execute("UPDATE notes SET title = ?, body = ?, updated_at = ? WHERE id = ? AND owner = ?",
                        (dumps(row["title"]), dumps(row["body"]), time.time(), note_id, self.owner))
            if cur._cur.rowcount != 1:
                return False
            cur.execute("DELETE FROM note_tags WHERE note_id = ? AND owner = ?", (note_id, self.owner))
            for p in tag_payloads:
                cur.execute("INSERT INTO note_tags (note_id, owner, tag, tag_hm) VALUES (?, ?, ?, ?)",
                            (note_id, self.owner, dumps(p), p["hm"]))
        return True

    def delete(self, note_id: int) -> bool:
        if not 0 < note_id <= MAX_ID:
            return False
        with self.db.transaction() as cur:
            cur.lock_notes(self.owner, [note_id])  # the note's row before its tags, as every writer
            cur.execute("DELETE FROM note_tags WHERE note_id = ? AND owner = ?", (note_id, self.owner))
            cur.execute("DELETE FROM notes WHERE id = ? AND owner = ?", (note_id, self.owner))
            return bool(cur._cur.rowcount == 1)

    def _rows(self, where: str = "", params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.db.transaction() as cur:
            return cur.execute(
                "SELECT id, title, body, created_at, updated_at FROM notes WHERE owner = ?" + where
                + " ORDER BY updated_at DESC, id DESC", (self.owner, *params)).fetchall()

    def _tags(self, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        if not ids:
            return {}
        rows: list[tuple[Any, ...]] = []
        with self.db.transaction() as cur:
            for start in range(0, len(ids), _ID_CHUNK):  # placeholders per query are limited
                part = ids[start : start + _ID_CHUNK]
                rows += cur.execute(
                    f"SELECT note_id, tag FROM note_tags WHERE owner = ? AND note_id IN ({','.join('?' * len(part))})",
                    (self.owner, *part)).fetchall()
        out: dict[int, list[dict[str, Any]]] = {}
        for note_id, tag in rows:
            out.setdefault(note_id, []).append(loads(tag))
        return out

    def _open(self, rows: list[tuple[Any, ...]]) -> list[Note]:
        """Decrypt rows (titles, bodies and tags) in one bulk operation."""
        if not rows:
            return []
        tags = self._tags([r[0] for r in rows])
        ids = [r[0] for r in rows]  # audit events name the notes that were opened
        # one operation (one key-service call) for the notes and their tags, each payload checked
        # against its own column
        models = [{"title": loads(r[1]), "body": loads(r[2])} for r in rows]
        models += [{"tag": p} for r in rows for p in tags.get(r[0], [])]
        try:
            with _key_service():
                plain = self.client.bulk_decrypt_models(models, notes_table).audit(records=ids).with_lock_context(self.lc).unwrap()
        except DecryptionError:
            # some payload did not open (damaged or moved in the database): open the notes one
            # by one, so that one bad note does not hide the others (an outage of the key
            # service is NotesUnavailable instead: no note is to blame)
            return [self._open_one(r, tags.get(r[0], [])) for r in rows]
        opened = iter(m["tag"] for m in plain[len(rows):])
        notes = []
        for r, m in zip(rows, plain):
            note_tags = sorted(next(opened) for _ in tags.get(r[0], []))
            notes.append(Note(r[0], m["title"], m["body"], note_tags, r[3], r[4]))
        return notes

    def _open_one(self, r: tuple[Any, ...], tags: list[dict[str, Any]]) -> Note:
        models = [{"title": loads(r[1]), "body": loads(r[2])}, *({"tag": p} for p in tags)]
        try:
            with _key_service():
                plain = self.client.bulk_decrypt_models(models, notes_table).audit(records=[r[0]]).with_lock_context(self.lc).unwrap()
        except DecryptionError:  # this note's own data: tampered with, or moved from elsewhere
            return Note(r[0], "", "", [], r[3], r[4], readable=False)
        return Note(r[0], plain[0]["title"], plain[0]["body"], sorted(m["tag"] for m in plain[1:]), r[3], r[4])

    def all_notes(self) -> list[Note]:
        return self._open(self._rows())

    def get(self, note_id: int) -> Note | None:
        """The note if this owner has it; ``None`` otherwise (another user's id included) —
        and then no key is asked for."""
        if not 0 < note_id <= MAX_ID:  # no such row (and SQLite cannot even bind the number)
            return None
        rows = self._rows(" AND id = ?", (note_id,))
        return self._open(rows)[0] if rows else None

    def by_tag(self, tag: str) -> list[Note]:
        tag = tag.strip().lower()
        if len(tag) > MAX_TAG:  # no note has such a tag: no key is asked for
            return []
        with _key_service():
            term = self.client.encrypt_query(tag, column="tag", table=notes_table,
                                             query_type="equality").with_lock_context(self.lc).unwrap()
        with self.db.transaction() as cur:
            ids = [r[0] for r in cur.execute(
                "SELECT DISTINCT note_id FROM note_tags WHERE owner = ? AND tag_hm = ?", (self.owner, term["hm"])).fetchall()]
        if not ids:
            return []
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), _ID_CHUNK):
            part = ids[start : start + _ID_CHUNK]
            rows += self._rows(f" AND id IN ({','.join('?' * len(part))})", tuple(part))
        rows.sort(key=lambda r: (r[4], r[0]), reverse=True)  # newest first, as one query orders them
        return self._open(rows)

    def search(self, text: str) -> list[Note]:
        """Notes holding every word of ``text`` (of three or more letters), each in the title or
        in the body, whole or as part of a word ("plan" finds "planning"); case, accents typed
        either way and punctuation do not matter. Match terms (bloom filters, one per word and
        column) are compared without decrypting; only candidates are decrypted, then re-checked
        exactly on the same normalised words (bloom filters can over-match).

        A search asks for at most ``2 * MAX_QUERY_WORDS`` match terms, in one key-service
        call (``bulk_encrypt_query``: one key release per column), and one decryption of the
        candidates.

        :raises ValidationError: the query is too long (see :func:`query_words`); no key was
            asked for.
        """
        wanted = query_words(text)
        if not wanted:
            return []
        with _key_service():
            specs = [{"value": w, "column": col, "table": notes_table, "query_type": "match"}
                     for w in wanted for col in ("title", "body")]
            found_terms = [r.unwrap() for r in self.client.bulk_encrypt_query(specs).with_lock_context(self.lc).unwrap()]
            terms = list(zip(found_terms[0::2], found_terms[1::2]))
        with self.db.transaction() as cur:
            rows = cur.execute("SELECT id, title, body, created_at, updated_at FROM notes WHERE owner = ?"
                               " ORDER BY updated_at DESC, id DESC", (self.owner,)).fetchall()
        candidates = []
        for r in rows:
            title, body = loads(r[1]), loads(r[2])
            if all(matches(t, title) or matches(b, body) for t, b in terms):
                candidates.append(r)
        found = []
        for n in self._open(candidates):
            title, body = normalise(n.title), normalise(n.body)  # once per note, not once per word
            if all(w in title or w in body for w in wanted):
                found.append(n)
        return found

    def raw(self) -> list[dict[str, Any]]:
        """What the database holds for this owner (the "what the database sees" page)."""
        with self.db.transaction() as cur:
            notes = cur.execute("SELECT id, owner, title, body FROM notes WHERE owner = ? ORDER BY id", (self.owner,)).fetchall()
            tags = cur.execute("SELECT note_id, tag, tag_hm FROM note_tags WHERE owner = ? ORDER BY note_id", (self.owner,)).fetchall()
        return [{"table": "notes", "id": r[0], "owner": r[1], "title": loads(r[2]), "body": loads(r[3])} for r in notes] + [
            {"table": "note_tags", "note_id": r[0], "tag": loads(r[1]), "tag_hm": r[2]} for r in tags
        ]
