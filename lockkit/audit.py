"""Audit: every key release and every denial becomes an event; the built-in sink is an
append-only, hash-chained and MACed log that ``lockkit audit verify`` checks.

An event says who (the subject from the *verified* token, never from the caller), what
(operation, table, column, count, optional record ids the app passes with ``.audit()``),
when, and the outcome (``granted`` / ``denied`` with a reason). Never plaintext, tokens or key
material.

Log format: one JSON object per line::

    {"seq": n, "prev": <hex SHA-256 of line n-1>, "event": {...}, "mac": <hex HMAC-SHA256>}

``mac`` is HMAC-SHA256 under the audit key over ``[seq, prev, event]``; the first entry's
``prev`` is 64 zeros. A sidecar ``<log>.head`` holds the last ``seq`` and hash and the committed
size, MACed, so that cutting entries off the end is detected too. The head is one small JSON
object padded to a fixed size and rewritten in place with a single ``pwrite`` at offset 0 (one
sector: a process killed mid-write cannot leave half of it). Writers take an exclusive
``flock`` on ``<log>.lock``, so threads and processes append to one valid chain; every writer
re-reads the head under the lock. Readers never hold the lock for long: ``verify`` takes the
head under it and checks the committed prefix after releasing it, and the queries read only
committed bytes, streamed (``who_accessed`` / ``accessed_by`` with a ``limit`` read backwards
from the end).
"""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives import hashes, hmac

from .errors import LockkitError

log = logging.getLogger("lockkit.audit")

GENESIS = "0" * 64
#: the head file's fixed size: one JSON object, space-padded, newline-terminated (one sector)
HEAD_BYTES = 256
OPERATIONS = {"encrypt": "encrypt", "decrypt": "decrypt", "index": "query"}


@dataclass(frozen=True)
class AuditEvent:
    """One key release or denial (one per column per batch)."""

    time: float
    workspace: str
    keyset: str
    backend: str
    operation: str  # encrypt | decrypt | query
    table: str
    column: str
    count: int
    outcome: str  # granted | denied
    subject: str | None = None
    namespace: str | None = None
    reason: str | None = None
    records: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # built by hand: dataclasses.asdict deep-copies, and this runs on every key release
        return {
            "time": self.time, "workspace": self.workspace, "keyset": self.keyset, "backend": self.backend,
            "operation": self.operation, "table": self.table, "column": self.column, "count": self.count,
            "outcome": self.outcome, "subject": self.subject, "namespace": self.namespace, "reason": self.reason,
            "records": list(self.records), "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuditEvent:
        """Read an event; fields a newer lockkit added are ignored."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{**d, "records": tuple(d.get("records", ())), "metadata": dict(d.get("metadata", {}))})


@dataclass(frozen=True)
class AuditContext:
    """What the app adds to an operation's events: ``op.audit(records=[...], reason="...")``."""

    records: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


#: the audit context of the operation running in this thread/task (set by Operation)
current_context: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("lockkit_audit", default=None)


class AuditError(LockkitError):
    """The audit sink could not record an event; with fail-closed auditing no key is released."""


#: how the message of the error a refused key release raises (an ``EncryptionError`` or a
#: ``DecryptionError``, whose message is all that survives a :class:`~lockkit.errors.Result`)
#: begins when the audit sink could not record the release: an outage, not a bad value
NOT_RECORDED = "the audit log could not record the key release"


class AuditSink(Protocol):
    """Where events go. ``write`` must raise if it could not record them."""

    def write(self, events: Sequence[AuditEvent]) -> None: ...


class Auditor:
    """Fans events out to sinks. Fail closed by default: if a sink cannot write, the caller
    (a key service) releases no key."""

    def __init__(self, sinks: Sequence[AuditSink], *, fail_closed: bool = True) -> None:
        self.sinks = list(sinks)
        self.fail_closed = fail_closed

    def record(self, events: Sequence[AuditEvent]) -> None:
        """Write ``events`` to every sink.

        :raises AuditError: a sink failed and auditing is fail-closed. Sinks that had already
            recorded the events then get a compensating ``aborted`` event for each, so no sink
            is left claiming a release that was refused.
        """
        if not events:
            return
        done: list[AuditSink] = []
        for sink in self.sinks:
            try:
                sink.write(events)
                done.append(sink)
            except BaseException as err:  # any sink failure is an audit failure (a timeout or an interrupt too)
                log.error("audit sink %r failed: %s", sink, err if isinstance(err, Exception) else type(err).__name__)
                fatal = not isinstance(err, Exception)  # KeyboardInterrupt, a green-thread timeout...
                if self.fail_closed or fatal:
                    self._abort(done, sink, events)
                    if fatal:
                        raise  # the release is refused anyway: the key service never returns
                    raise AuditError(f"{NOT_RECORDED} ({type(err).__name__}); no key was released") from err

    @staticmethod
    def _abort(done: Sequence[AuditSink], failed: AuditSink, events: Sequence[AuditEvent]) -> None:
        """Tell the sinks that recorded a release that it was refused after all."""
        aborted = [replace(ev, outcome="aborted", reason=f"audit sink {type(failed).__name__} failed; "
                           "the release was refused") for ev in events if ev.outcome == "granted"]
        if not aborted:
            return
        for other in done:
            try:
                other.write(aborted)
            except Exception as err2:  # pragma: no cover - best effort
                log.error("audit sink %r failed to record an abort: %s", other, err2)

    def events(
        self,
        *,
        workspace: str,
        keyset: str,
        backend: str,
        requests: Iterable[Any],
        outcome: str,
        subject: str | None,
        namespace: str | None = None,
        reason: str | None = None,
        now: float | None = None,
    ) -> list[AuditEvent]:
        """Events for a batch of key requests (one per request)."""
        ctx = current_context.get()
        ts = time.time() if now is None else now
        merged: dict[tuple[str, str, str], int] = {}
        for r in requests:  # one event per operation and column, however the keys were grouped
            key = (getattr(r, "operation", "") or OPERATIONS.get(r.purpose, r.purpose), r.table, r.column)
            merged[key] = merged.get(key, 0) + r.count
        return [
            AuditEvent(
                time=ts, workspace=workspace, keyset=keyset, backend=backend,
                operation=op, table=table, column=column,
                count=count, outcome=outcome, subject=subject, namespace=namespace, reason=reason,
                records=ctx.records if ctx else (), metadata=dict(ctx.metadata) if ctx else {},
            )
            for (op, table, column), count in merged.items()
        ]


def record_release(
    auditor: Auditor,
    *,
    workspace: str,
    keyset: str,
    backend: str,
    grants: Sequence[Any],
    denials: Sequence[tuple[Any, str]],
    subject: str | None,
    namespace: str | None,
    now: float | None = None,
) -> None:
    """Record a batch's grants and denials (key requests whose ``count`` says how many values
    each covers) before its keys are handed out.

    :raises EncryptionError | DecryptionError: the sink failed and auditing is fail-closed:
        no key is released. The message begins with :data:`NOT_RECORDED`.
    """
    events = auditor.events(workspace=workspace, keyset=keyset, backend=backend, requests=grants,
                            outcome="granted", subject=subject, namespace=namespace, now=now)
    by_reason: dict[str, list[Any]] = {}
    for r, reason in denials:
        by_reason.setdefault(reason, []).append(r)
    for reason, reqs in by_reason.items():
        events += auditor.events(workspace=workspace, keyset=keyset, backend=backend, requests=reqs,
                                 outcome="denied", subject=subject, namespace=namespace, reason=reason, now=now)
    try:
        auditor.record(events)
    except AuditError as err:
        from .errors import DecryptionError, EncryptionError

        cls = DecryptionError if any(r.purpose == "decrypt" for r in grants) or any(
            r.purpose == "decrypt" for r, _ in denials) else EncryptionError
        # begins with NOT_RECORDED; an outage (a full disk), not a fault of the values: apps answer 503
        refused = cls(err.message, retryable=True)
        raise refused from err


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Problem:
    """The first bad entry a verification found."""

    line: int  # 1-based line number in the log file (0: the head file)
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = "head file" if self.line == 0 else f"line {self.line}" + (f" (seq {self.seq})" if self.seq else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    problem: Problem | None = None


class AuditLog:
    """The built-in sink: an append-only, hash-chained, MACed JSON-lines log.

    :param key: the 32-byte audit key (from the keyring: ``audit_key(keyring)``).
    :param fsync: flush to disk on every write (durable across power loss; slower).
    """

    def __init__(self, path: str | Path, key: bytes, *, fsync: bool = False) -> None:
        if len(key) < 32:
            raise ValueError("the audit key must be at least 32 bytes")
        self.path = Path(path)
        self._key = key
        self.fsync = fsync
        self._thread_lock = threading.Lock()
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        # the head's bytes as last read or written, and what they say: a head read under the
        # lock that has the same bytes needs no second MAC check
        self._head_cache: tuple[bytes, tuple[int, str, int]] | None = None

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def _mac(self, data: bytes) -> str:
        h = hmac.HMAC(self._key, hashes.SHA256())
        h.update(data)
        return h.finalize().hex()

    def _entry_mac(self, seq: int, prev: str, event: dict[str, Any]) -> str:
        return self._mac(b"entry\x00" + _canonical([seq, prev, event]))

    def _head_mac(self, seq: int, digest: str, size: int) -> str:
        return self._mac(b"head\x00" + _canonical([seq, digest, size]))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _read_head(self) -> tuple[int, str, int]:
        """``(seq, hash, committed size)`` from the head.

        :raises AuditError: the head is missing while the log has entries, or is not genuine.
        """
        try:
            fd = os.open(self.head_path, os.O_RDONLY)
        except FileNotFoundError:
            return self._no_head()
        except OSError as err:
            raise AuditError(f"audit head {self.head_path} is unreadable") from err
        try:
            return self._parse_head(os.pread(fd, HEAD_BYTES + 1, 0))
        except OSError as err:
            raise AuditError(f"audit head {self.head_path} is unreadable") from err
        finally:
            os.close(fd)

    def _no_head(self) -> tuple[int, str, int]:
        if self.path.exists() and self.path.stat().st_size > 0:
            raise AuditError(f"audit head {self.head_path} is missing; run `lockkit audit verify`")
        return 0, GENESIS, 0

    def _parse_head(self, raw: bytes) -> tuple[int, str, int]:
        cached = self._head_cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        if not raw.strip():  # created but never written (a writer died at once): no head yet
            return self._no_head()
        try:
            head = json.loads(raw)
        except ValueError as err:
            raise AuditError(f"audit head {self.head_path} is unreadable") from err
        seq, digest, size = (head.get("seq"), head.get("hash"), head.get("size")) if isinstance(head, dict) else (None,) * 3
        if not (isinstance(seq, int) and isinstance(digest, str) and isinstance(size, int)) or not hmac_equal(
            str(head.get("mac")), self._head_mac(seq, digest, size)
        ):
            raise AuditError(f"audit head {self.head_path} fails its MAC; run `lockkit audit verify`")
        self._head_cache = (raw, (seq, digest, size))
        return seq, digest, size

    def write(self, events: Sequence[AuditEvent]) -> None:
        """Append events to the chain. The head (written last, in place) records how many bytes
        are committed: a write that fails half-way is rolled back, and bytes a failed or killed
        earlier write left past the committed size are dropped before appending."""
        with self._locked():
            try:
                head_fd = os.open(self.head_path, os.O_RDWR)
            except FileNotFoundError:
                self._no_head()  # raises when the log has entries: the end of the chain is unknown
                head_fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    # a genuine empty head before the first entry: a writer killed during the
                    # first append leaves "nothing committed", which the next writer repairs,
                    # not an empty head file that would block the log for good
                    if not os.pread(head_fd, HEAD_BYTES + 1, 0).strip():
                        self._put_head(head_fd, 0, GENESIS, 0)
                except BaseException:
                    os.close(head_fd)
                    raise
            except OSError as err:
                raise AuditError(f"audit head {self.head_path} cannot be opened for writing") from err
            try:
                self._append(head_fd, events)
            finally:
                os.close(head_fd)

    def _append(self, head_fd: int, events: Sequence[AuditEvent]) -> None:
        seq, prev, size = self._parse_head(os.pread(head_fd, HEAD_BYTES + 1, 0))
        lines = []
        for ev in events:
            seq += 1
            body = ev.to_dict()
            entry = {"seq": seq, "prev": prev, "event": body, "mac": self._entry_mac(seq, prev, body)}
            line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            prev = hashlib.sha256(line.encode()).hexdigest()
            lines.append(line + "\n")
        data = "".join(lines).encode()
        log_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            current = os.fstat(log_fd).st_size
            if current < size:
                raise AuditError(f"audit log {self.path} is shorter than its head records (truncated?); "
                                 "run `lockkit audit verify`")
            if current > size:
                log.warning("audit log %s: dropping %d uncommitted bytes from an interrupted write", self.path, current - size)
                os.ftruncate(log_fd, size)
            try:
                _write_all(log_fd, data)
                if self.fsync:
                    os.fsync(log_fd)
                new_size = size + len(data)
                self._put_head(head_fd, seq, prev, new_size)
            except BaseException:
                self._head_cache = None
                try:  # roll back: the entries were never committed (the release is refused)
                    if os.fstat(log_fd).st_size > size:
                        os.ftruncate(log_fd, size)
                except OSError:  # pragma: no cover - the next write drops them anyway
                    pass
                raise
        finally:
            os.close(log_fd)

    def _put_head(self, head_fd: int, seq: int, digest: str, size: int) -> None:
        """Write the MACed head in place (one fixed-size pwrite at offset 0)."""
        head = json.dumps({"seq": seq, "hash": digest, "size": size, "mac": self._head_mac(seq, digest, size)}).encode()
        if len(head) > HEAD_BYTES - 1:  # pragma: no cover - a 19-digit seq and size still fit
            raise AuditError("audit head record is too long")
        raw = head.ljust(HEAD_BYTES - 1) + b"\n"
        if os.pwrite(head_fd, raw, 0) != len(raw):
            raise OSError("short write of the audit head")
        if self.fsync:
            os.fsync(head_fd)
        self._head_cache = (raw, (seq, digest, size))

    def verify(self) -> Verification:
        """Check the log: every entry's MAC, the chain, and the head; name the first bad entry.
        Detects edited, deleted, inserted, reordered and forged entries, cut tails, and bytes
        after the committed end (appended lines, or an interrupted write).

        The head and the log's length are read under the writers' lock; the entries are then
        read (streamed, in blocks) without it, so key releases go on during a long check. That
        is sound because writers only append: the committed bytes never change, and a writer
        truncates only bytes past the committed end. Entries appended meanwhile are not
        covered (the result is about the log as it was when the check began). A log with bytes
        past its committed end, which the next writer would drop, is checked under the lock."""
        with self._locked():
            try:
                head = self._read_head()
            except AuditError as err:
                reason = ("head file missing: the end of the log cannot be checked" if "missing" in err.message
                          else "head MAC mismatch: the head was edited or forged" if "MAC" in err.message
                          else "head file unreadable")
                return Verification(False, 0, Problem(0, None, reason))
            try:
                length = os.stat(self.path).st_size
            except FileNotFoundError:
                length = 0
            except OSError as err:
                return Verification(False, 0, Problem(1, None, f"log unreadable ({type(err).__name__})"))
            if length != head[2]:  # not as a writer leaves it: the next writer would change the tail
                return self._verify(head, length)
        return self._verify(head, length)

    def _verify(self, head: tuple[int, str, int], length: int) -> Verification:
        """Verify the log's first ``length`` bytes against ``head``."""
        h_seq, h_hash, h_size = head
        prev, seq, n, read, committed_lines = GENESIS, 0, 0, 0, 0
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            fh = None
        except OSError as err:
            return Verification(False, 0, Problem(1, None, f"log unreadable ({type(err).__name__})"))
        try:
            # entries end with "\n" only; str.splitlines() would also break at U+2028, U+2029
            # or U+0085, which JSON leaves raw inside strings (a record id, a subject)
            for n, raw in enumerate(_read_lines(fh, length) if fh is not None else (), start=1):
                read += len(raw)
                if not raw.endswith(b"\n"):
                    return Verification(False, seq, Problem(n, None, "partial last line (truncated mid-entry)"))
                if read <= h_size:
                    committed_lines = n
                raw = raw[:-1]
                try:
                    line = raw.decode()
                except UnicodeDecodeError:
                    return Verification(False, seq, Problem(n, None, "log is not UTF-8 text"))
                try:
                    entry = json.loads(line)
                    e_seq, e_prev, body, mac = entry["seq"], entry["prev"], entry["event"], entry["mac"]
                except (ValueError, KeyError, TypeError):
                    return Verification(False, n - 1, Problem(n, None, "not a log entry (malformed JSON)"))
                if set(entry) != {"seq", "prev", "event", "mac"}:
                    return Verification(False, n - 1, Problem(n, e_seq, "unexpected fields"))
                if not isinstance(mac, str) or not hmac_equal(mac, self._entry_mac(e_seq, e_prev, body)):
                    return Verification(False, n - 1, Problem(n, e_seq, "MAC mismatch: the entry was edited or forged"))
                if e_seq != seq + 1:
                    return Verification(False, n - 1, Problem(
                        n, e_seq, f"sequence jumps from {seq} to {e_seq}: entries were removed, reordered or inserted"))
                if e_prev != prev:
                    return Verification(False, n - 1, Problem(
                        n, e_seq, "previous-hash mismatch: an entry before it was removed, reordered or changed"))
                seq, prev = e_seq, hashlib.sha256(raw).hexdigest()
        except OSError as err:
            return Verification(False, seq, Problem(n + 1, None, f"log unreadable ({type(err).__name__})"))
        finally:
            if fh is not None:
                fh.close()
        if read < h_size or h_seq > seq:
            return Verification(False, seq, Problem(0, h_seq, f"log ends at seq {seq} but the head records seq {h_seq}: "
                                                      "entries were cut off the end"))
        if h_seq < seq or read > h_size:
            return Verification(False, h_seq, Problem(committed_lines + 1, h_seq + 1, f"{read - h_size} bytes after the "
                                                      f"committed end (seq {h_seq}): appended entries, or an interrupted write"))
        if h_seq != seq or h_hash != prev:
            return Verification(False, seq, Problem(0, h_seq, "the head does not match the last entry"))
        return Verification(True, seq)

    def _committed(self) -> int | None:
        """The committed size (entries appended after the head was read are not committed yet),
        or None when there is no readable head (then everything is read: verify says what is
        wrong)."""
        try:
            return self._read_head()[2]
        except AuditError:
            return None

    def _open_committed(self) -> tuple[BinaryIO, int] | None:
        """The log opened for reading and how many of its bytes the head commits (all of them
        when there is no head yet), or ``None`` when there is no log."""
        committed = self._committed()
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return None
        size = os.fstat(fh.fileno()).st_size
        return fh, size if committed is None else min(committed, size)

    def events(self) -> Iterator[tuple[int, AuditEvent]]:
        """``(seq, event)`` for every committed entry, oldest first, read as a stream (no MAC
        or chain check: call :meth:`verify` for that; ``lockkit audit show`` does and warns).
        Bytes past the size the head commits (a write that was interrupted, or is in progress)
        are not read.

        :raises AuditError: a line is damaged (not an entry).
        """
        opened = self._open_committed()
        if opened is None:
            return
        fh, end = opened
        with fh:
            for n, raw in enumerate(_read_lines(fh, end), start=1):
                try:
                    entry = json.loads(raw.decode("utf-8", errors="replace"))
                    yield entry["seq"], AuditEvent.from_dict(entry["event"])
                except (ValueError, KeyError, TypeError) as err:
                    raise AuditError(f"audit log {self.path}: line {n} is damaged; run `lockkit audit verify`") from err

    def _newest(self, needle: bytes) -> Iterator[AuditEvent]:
        """The committed events whose line holds ``needle`` (the JSON text of a value the
        caller then checks exactly), newest first. The file is read backwards in blocks: memory
        stays bounded however long the log, and a caller that stops early reads only the end.

        :raises AuditError: a line holding ``needle`` is damaged.
        """
        opened = self._open_committed()
        if opened is None:
            return
        fh, end = opened
        with fh:
            for offset, raw in _lines_backwards(fh, end, needle):
                try:
                    entry = json.loads(raw.decode("utf-8", errors="replace"))
                    entry["seq"]
                    ev = AuditEvent.from_dict(entry["event"])
                except (ValueError, KeyError, TypeError) as err:
                    raise AuditError(f"audit log {self.path}: the entry at byte {offset} is damaged; "
                                     "run `lockkit audit verify`") from err
                yield ev

    def query(
        self,
        *,
        subject: str | None = None,
        table: str | None = None,
        column: str | None = None,
        record: str | None = None,
        operation: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[AuditEvent]:
        """Events matching every given filter, oldest first."""
        out = []
        for _, ev in self.events():
            if subject is not None and ev.subject != subject:
                continue
            if table is not None and ev.table != table:
                continue
            if column is not None and ev.column != column:
                continue
            if record is not None and record not in ev.records:
                continue
            if operation is not None and ev.operation != operation:
                continue
            if outcome is not None and ev.outcome != outcome:
                continue
            if since is not None and ev.time < since:
                continue
            if until is not None and ev.time > until:
                continue
            out.append(ev)
        return out

    def who_accessed(self, table: str, record: str, *, limit: int | None = None) -> list[AuditEvent]:
        """Who decrypted ``record`` of ``table``, and when (granted decrypts only; a grant the
        log later marks ``aborted``, its key release refused after all, is left out).

        :param limit: only the ``limit`` newest, **newest first**; the log is then read from
            its end and only as far back as needed. Without it: every one, oldest first (the
            whole log is read, as a stream).
        """
        record = str(record)
        if limit is not None and limit <= 0:
            return []
        found: list[AuditEvent] = []
        aborted: set[tuple[Any, ...]] = set()  # an abort is written after its grant: seen first here
        for ev in self._newest(_json_text(record)):
            if ev.table != table or ev.operation != "decrypt" or record not in ev.records:
                continue
            if ev.outcome == "aborted":
                aborted.add(_same_release(ev))
            elif ev.outcome == "granted" and _same_release(ev) not in aborted:
                found.append(ev)
                if limit is not None and len(found) >= limit:
                    break
        return found if limit is not None else found[::-1]

    def accessed_by(self, subject: str, *, limit: int | None = None) -> list[AuditEvent]:
        """Everything ``subject`` did (grants and denials).

        :param limit: only the ``limit`` newest, **newest first**, read from the log's end;
            without it: every one, oldest first.
        """
        if limit is not None and limit <= 0:
            return []
        found: list[AuditEvent] = []
        for ev in self._newest(b'"subject":' + _json_text(subject)):
            if ev.subject == subject:
                found.append(ev)
                if limit is not None and len(found) >= limit:
                    break
        return found if limit is not None else found[::-1]


#: bytes per read when the log is streamed
_BLOCK = 1 << 20


def _json_text(value: str) -> bytes:
    """``value`` as the log spells it inside an entry (a JSON string, raw UTF-8)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def _read_lines(fh: BinaryIO, end: int | None) -> Iterator[bytes]:
    """The lines of ``fh``'s first ``end`` bytes (all of it when None), oldest first, each with
    its ``\\n``; a last line without one (a torn write) is yielded as it is. Reads in blocks."""
    left = end
    pending: list[bytes] = []  # the start of a line that continues in the next block
    while left is None or left > 0:
        block = fh.read(_BLOCK if left is None else min(_BLOCK, left))
        if not block:
            break
        if left is not None:
            left -= len(block)
        cut = block.rfind(b"\n")
        if cut < 0:
            pending.append(block)
            continue
        data = b"".join(pending) + block[: cut + 1] if pending else block[: cut + 1]
        pending = [block[cut + 1 :]] if cut + 1 < len(block) else []
        for line in data[:-1].split(b"\n"):  # on "\n" only (bytes.splitlines would also cut at "\r")
            yield line + b"\n"
    if pending:
        yield b"".join(pending)


def _lines_backwards(fh: BinaryIO, end: int, needle: bytes) -> Iterator[tuple[int, bytes]]:
    """``(offset, line without its newline)`` for the lines of ``fh``'s first ``end`` bytes that
    hold ``needle``, newest first. Reads blocks from the end; a block without ``needle`` is
    skipped unparsed."""
    pos = end
    tail: list[bytes] = []  # bytes after pos up to the oldest line handled so far (no "\n"), newest first
    while pos > 0:
        n = min(_BLOCK, pos)
        pos -= n
        fh.seek(pos)
        block = fh.read(n)
        if len(block) != n:  # cut while read: the rest is read no more
            raise AuditError("the audit log became shorter while it was read; run `lockkit audit verify`")
        start = pos
        if pos > 0:
            cut = block.find(b"\n")
            if cut < 0:
                tail.append(block)
                continue
            data = block[cut + 1 :] + b"".join(reversed(tail))
            tail = [block[:cut]]
            start = pos + cut + 1
        else:
            data = block + b"".join(reversed(tail))
        if needle not in data:
            continue
        stop = start + len(data)
        for line in reversed(data.split(b"\n")):
            first = stop - len(line)
            if needle in line:
                yield first, line
            stop = first - 1


def _same_release(ev: AuditEvent) -> tuple[Any, ...]:
    """What a grant and the ``aborted`` event written for it have in common."""
    return (ev.time, ev.subject, ev.namespace, ev.workspace, ev.keyset, ev.table, ev.column, ev.operation, ev.count, ev.records)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def hmac_equal(a: str, b: str) -> bool:
    import hmac as _hmac

    return _hmac.compare_digest(a.encode(), b.encode())


def audit_key(keyring: Any) -> bytes:
    """The audit MAC key, derived from the keyring's (non-rotating) index root."""
    return bytes(keyring.derive(None, ["audit", keyring.workspace_crn]))
