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
        submit_token TEXT,
        submit_digest TEXT)""",
    "CREATE INDEX IF NOT EXISTS notes_owner ON notes (owner)",
    """CREATE TABLE IF NOT EXISTS note_tags (
        note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
        owner TEXT NOT NULL,
        tag TEXT NOT NULL,
        tag_hm TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS note_tags_lookup ON note_tags (owner, tag_hm)",
    "CREATE INDEX IF NOT EXISTS note_tags_note ON note_tags (note_id)",
]
#: columns added to databases created before they existed (see ``Database.create_schema``):
#: the token of the new-note form a note was saved from, and a keyed digest of what was saved
#: with it (``notes.submit_digest``): sending the same form again with the same content (after
#: a response that never arrived) finds that note instead of saving a second copy; the same
#: form with other content (reused after Back) is another note
ADDED_COLUMNS = ("submit_token", "submit_digest")
SUBMIT_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS notes_submitted ON notes (owner, submit_token, submit_digest) "
                "WHERE submit_token IS NOT NULL")
#: the index before submit_digest existed: one note per form, whatever it held (replaced by SUBMIT_INDEX)
OLD_SUBMIT_INDEX = "notes_submit_token"
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
#: PostgreSQL SQLSTATE classes of an outage: connection exception (08), insufficient resources
#: (53: too many connections, disk full), operator intervention (57: a statement timeout, a
#: server shutting down). psycopg raises OperationalError for these; any error it raises with
#: one of them counts too.
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
#: SQLite's primary result code for a statement that cannot run (a syntax error, no such table
#: or column): sqlite3 raises it as OperationalError, but it is a bug, not an outage
_SQLITE_ERROR = 1


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

    def is_outage(self, err: BaseException) -> bool:
        """Is ``err`` the database not answering (unreachable, locked, full, timed out, shutting
        down: it passes, and the request may be tried again) rather than a statement or value it
        refuses (ProgrammingError, IntegrityError, DataError, InterfaceError, a syntax error: a
        bug, which trying again does not fix)?"""
        if self.postgres:
            import psycopg

            code = getattr(err, "sqlstate", None)
            if isinstance(code, str) and code:  # the server answered: its class says whether it passes
                return isinstance(err, psycopg.Error) and code[:2] in OUTAGE_SQLSTATE_CLASSES
            # no SQLSTATE: the connection itself failed (refused, reset, timed out)
            return isinstance(err, psycopg.OperationalError)
        if isinstance(err, sqlite3.OperationalError):
            code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11
            return not (isinstance(code, int) and code & 0xFF == _SQLITE_ERROR)
        return False

    def loggable(self, err: BaseException) -> BaseException:
        """What to log of a database error: SQLite's own (its messages name SQL and the schema,
        never a bound value), else a stand-in with the driver's type and SQLSTATE and the same
        traceback (a PostgreSQL message may quote the values of a statement)."""
        if isinstance(err, sqlite3.Error):
            return err
        code = getattr(err, "sqlstate", None)
        kind = f"{type(err).__module__}.{type(err).__qualname__}" + (f", SQLSTATE {code}" if code else "")
        return DatabaseFailure(f"{kind} (the message is not logged: it may quote a statement's values)").with_traceback(
            err.__traceback__)

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
            # databases made before submit_token / submit_digest existed get the columns (and the
            # index) here; looked up first: ALTER TABLE (and CREATE or DROP INDEX) would lock the
            # table against every reader, even as a no-op
            for column in ADDED_COLUMNS:
                if self.postgres:
                    if not cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                                       "AND table_name = 'notes' AND column_name = ?", (column,)).fetchone():
                        cur.execute(f"ALTER TABLE notes ADD COLUMN IF NOT EXISTS {column} TEXT")
                elif column not in {r[1] for r in cur.execute("PRAGMA table_info(notes)").fetchall()}:
                    try:
                        cur.execute(f"ALTER TABLE notes ADD COLUMN {column} TEXT")
                    except sqlite3.OperationalError as err:  # another process added it meanwhile
                        if "duplicate column" not in str(err):
                            raise
            if self.postgres:
                indexes = {r[0] for r in cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                                                     "AND tablename = 'notes'").fetchall()}
            else:
                indexes = {r[1] for r in cur.execute("PRAGMA index_list(notes)").fetchall()}
            if "notes_submitted" not in indexes:
                cur.execute(f"DROP INDEX IF EXISTS {OLD_SUBMIT_INDEX}")
                cur.execute(SUBMIT_INDEX)


class DatabaseFailure(Exception):
    """Stands in for a database driver's error in the log (see :meth:`Database.loggable`)."""


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
