"""A tiny database layer: SQLite by default, PostgreSQL when DATABASE_URL says so.

Payloads are stored as JSON text; the equality term of each tag sits in its own indexed
column so tag search is an index lookup, not a scan.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS notes (
        id {pk},
        owner TEXT NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        submit_token TEXT)""",
    "CREATE INDEX IF NOT EXISTS notes_owner ON notes (owner)",
    """CREATE TABLE IF NOT EXISTS note_tags (
        note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
        owner TEXT NOT NULL,
        tag TEXT NOT NULL,
        tag_hm TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS note_tags_lookup ON note_tags (owner, tag_hm)",
    "CREATE INDEX IF NOT EXISTS note_tags_note ON note_tags (note_id)",
]
#: added to databases created before it existed (see ``Database.create_schema``): the token of
#: the new-note form a note was saved from, so that sending the same form again (after a
#: response that never arrived) finds that note instead of saving a second copy
SUBMIT_TOKEN_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS notes_submit_token ON notes (owner, submit_token) "
                      "WHERE submit_token IS NOT NULL")
#: PostgreSQL: how long a connection attempt may take (seconds), and any one statement
#: (milliseconds), unless DATABASE_URL (or PGCONNECT_TIMEOUT / PGOPTIONS) says otherwise. Without
#: them a PostgreSQL that accepts connections but does not answer holds every request for
#: libpq's own limits (minutes), and a runaway query holds its connection without end.
CONNECT_TIMEOUT, STATEMENT_TIMEOUT_MS = 5, 15_000
#: PostgreSQL: one schema creation at a time (app servers starting together on an empty
#: database would otherwise collide on CREATE TABLE IF NOT EXISTS)
_SCHEMA_LOCK = 0x6C6F636B6B6974  # "lockkit"
#: the largest id a note can have (SQLite INTEGER; PostgreSQL SERIAL is smaller and just finds none)
MAX_ID = 2**63 - 1


class Database:
    """Connections per thread; ``?`` placeholders in every query, translated for PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._local = threading.local()
        if not self.postgres and not url.startswith("sqlite:///"):
            raise ValueError("DATABASE_URL must be sqlite:///path or postgresql://...")
        #: what this database's driver raises
        self.errors: tuple[type[Exception], ...] = (sqlite3.Error,)
        #: what it raises when a constraint (a unique index) refuses a write
        self.conflicts: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
        if self.postgres:
            import psycopg

            self.errors, self.conflicts = (psycopg.Error,), (psycopg.IntegrityError,)

    def _connect(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.postgres:
                import psycopg

                conn = psycopg.connect(self.url, autocommit=False, **self.connect_options())
            else:
                conn = sqlite3.connect(self.url[len("sqlite:///"):], timeout=30)
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA journal_mode = WAL")
            self._local.conn = conn
        return conn

    def connect_options(self) -> dict[str, Any]:
        """PostgreSQL: ``connect_timeout`` and ``statement_timeout`` unless DATABASE_URL (or the
        ``PGCONNECT_TIMEOUT`` / ``PGOPTIONS`` environment) sets them; other ``options`` kept."""
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.url)
        extra: dict[str, Any] = {}
        if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
            extra["connect_timeout"] = CONNECT_TIMEOUT
        # libpq takes the URL's options, else PGOPTIONS: passing options replaces both, so keep them
        options = str(params.get("options") or os.environ.get("PGOPTIONS") or "")
        if not re.search(r"statement[_-]timeout", options):
            extra["options"] = f"{options} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
        return extra

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor in a transaction: committed on success, rolled back on any error, so a
        failed request never leaves half a note behind."""
        conn = self._connect()
        cur = conn.cursor()
        try:
            yield _Cursor(cur, self._sql)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.close()

    def create_schema(self) -> None:
        pk = "SERIAL PRIMARY KEY" if self.postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
        with self.transaction() as cur:
            if self.postgres:
                cur.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for stmt in SCHEMA:
                cur.execute(stmt.format(pk=pk))
            # databases made before submit_token existed get the column (and its index) here;
            # looked up first: ALTER TABLE would lock the table against every reader, even as a no-op
            if self.postgres:
                if not cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                                   "AND table_name = 'notes' AND column_name = 'submit_token'").fetchone():
                    cur.execute("ALTER TABLE notes ADD COLUMN IF NOT EXISTS submit_token TEXT")
            elif "submit_token" not in {r[1] for r in cur.execute("PRAGMA table_info(notes)").fetchall()}:
                try:
                    cur.execute("ALTER TABLE notes ADD COLUMN submit_token TEXT")
                except sqlite3.OperationalError as err:  # another process added it meanwhile
                    if "duplicate column" not in str(err):
                        raise
            cur.execute(SUBMIT_TOKEN_INDEX)


class _Cursor:
    def __init__(self, cur: Any, sql: Any) -> None:
        self._cur, self._sql = cur, sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        self._cur.execute(self._sql(sql), tuple(params))
        return self

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT and return the new row's id."""
        if self._sql("?") == "%s":
            self._cur.execute(self._sql(sql) + " RETURNING id", tuple(params))
            return int(self._cur.fetchone()[0])
        self._cur.execute(sql, tuple(params))
        return int(self._cur.lastrowid)

    def lock_notes(self, owner: str, ids: Sequence[int]) -> None:
        """Lock these notes' rows for this transaction, in id order (PostgreSQL; SQLite has one
        writer at a time). Every writer takes a note's row before its tag rows, so two
        transactions never wait on each other in a cycle."""
        if ids and self._sql("?") == "%s":
            self._cur.execute("SELECT id FROM notes WHERE owner = %s AND id = ANY(%s) ORDER BY id FOR UPDATE",
                              (owner, sorted(set(ids))))

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._cur.fetchall())

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cur.fetchone()
        return tuple(row) if row is not None else None


def dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"))


def loads(text: str) -> Any:
    return json.loads(text)
