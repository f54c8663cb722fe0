"""The encryption client: encrypt/decrypt values and models, in bulk, and search terms.

Every operation returns an :class:`Operation`: chain ``.with_lock_context(lc)`` to lock it to
an identity; it runs once, when its result is first read (``.data``, ``.failure``,
``.result()`` or ``.unwrap()``). Each operation makes exactly one key-service call, however
many values or columns it touches.
"""

from __future__ import annotations

import binascii
import datetime as dt
import gc
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import islice, repeat
from operator import contains, is_, is_not, itemgetter, setitem
from typing import Any, Generic, Literal, TypeVar

from cryptography.exceptions import InvalidTag

from . import payload as pl
from .audit import AuditContext
from .audit import current_context as audit_context
from .config import Settings, check_name, load_settings
from .errors import (
    ClientInitError,
    DecryptionError,
    EncryptionError,
    LockContextError,
    LockkitError,
    Result,
    _consume,
    ok_results,
)
from .identity import LockContext, TokenService
from .keys import _GATHER4, ColumnKey, KeyRequest, KeyService, Lock
from .schema import EncryptedColumn, EncryptedTable
from .search import TermHasher

T = TypeVar("T")
QueryType = Literal["equality", "match"]


class Operation(Generic[T]):
    """A lazy operation. ``with_lock_context`` returns a new operation; the first read of its
    result runs it (once, thread-safely) and caches the :class:`Result`."""

    __slots__ = ("_fn", "_lc", "_result", "_mutex", "_audit")

    def __init__(
        self,
        fn: Callable[[LockContext | None], T],
        lock_context: LockContext | None = None,
        audit: AuditContext | None = None,
    ) -> None:
        self._fn = fn
        self._lc = _bound(lock_context) if lock_context is not None else None
        self._audit = audit
        self._result: Result[T] | None = None
        self._mutex = threading.Lock()

    def _check_pending(self) -> None:
        if self._result is not None:
            raise RuntimeError("this operation already ran; build a new one")

    def with_lock_context(self, lock_context: LockContext) -> Operation[T]:
        """This operation, locked to ``lock_context``'s identity.

        :raises TypeError: not a LockContext.
        :raises RuntimeError: the operation already ran.
        """
        lock_context = _bound(lock_context)
        self._check_pending()
        return Operation(self._fn, lock_context, self._audit)

    def audit(self, *, records: Iterable[object] = (), **metadata: str) -> Operation[T]:
        """This operation, with record ids (and string metadata) added to its audit events:
        ``client.decrypt(p).audit(records=[note_id]).with_lock_context(lc)``.

        :raises RuntimeError: the operation already ran.
        """
        self._check_pending()
        ctx = AuditContext(tuple(str(r) for r in records), {k: str(v) for k, v in metadata.items()})
        return Operation(self._fn, self._lc, ctx)

    def result(self) -> Result[T]:
        """Run the operation if it has not run yet, and return its :class:`Result`."""
        with self._mutex:
            if self._result is None:
                token = audit_context.set(self._audit)
                try:
                    self._result = Result(self._fn(self._lc))
                except LockkitError as err:
                    self._result = Result.from_error(err)
                finally:
                    audit_context.reset(token)
            return self._result

    @property
    def data(self) -> T | None:
        return self.result().data

    @property
    def failure(self) -> Any:
        return self.result().failure

    def unwrap(self) -> T:
        """:raises LockkitError: the error the operation failed with."""
        return self.result().unwrap()

    def __repr__(self) -> str:
        state = "pending" if self._result is None else ("failed" if self._result.failure else "done")
        return f"<Operation {state}{' locked' if self._lc else ''}>"


class _Item:
    """One value to encrypt (internal)."""

    __slots__ = ("table", "col", "value")

    def __init__(self, table: EncryptedTable, col: EncryptedColumn, value: Any) -> None:
        self.table, self.col, self.value = table, col, value


def _bound(lock_context: Any) -> LockContext:
    """``lock_context`` as a LockContext: a proxy (e.g. lockkit.flask's current_lock_context)
    is resolved now, so the operation may run later, outside the request.

    :raises TypeError: not a LockContext (a token string or a CtsToken: wrap it in
        ``LockContext(cts_token=...)``).
    """
    if type(lock_context) is not LockContext:
        resolve = getattr(lock_context, "_get_current_object", None)
        if resolve is not None:
            lock_context = resolve()
        if not isinstance(lock_context, LockContext):
            raise TypeError(
                f"a lock context must be a LockContext, not {type(lock_context).__name__} "
                "(a CTS token goes in LockContext(cts_token=...))"
            )
    return lock_context


def _lock_for(lc: LockContext | None) -> Lock | None:
    if lc is None:
        return None
    return Lock(lc.require_token(), lc.identity_claim)


class Encryption:
    """The encryption client.

    ``Encryption(schemas=[users])`` uses the embedded defaults from ``lockkit.toml`` /
    ``LOCKKIT_*`` (embedded token service, local keyring). Pass ``keyset="tenant-a"`` for an
    independent key hierarchy, or ``key_service=`` / ``token_service=`` for other backends.

    :raises ConfigurationError: no workspace configured, or a bad keyring.
    """

    def __init__(
        self,
        schemas: Sequence[EncryptedTable] = (),
        *,
        settings: Settings | None = None,
        keyset: str | None = None,
        key_service: KeyService | None = None,
        token_service: TokenService | None = None,
    ) -> None:
        if key_service is None:
            if token_service is not None:
                raise ClientInitError("pass key_service= together with token_service=")
            from .cts import default_services

            settings = settings or load_settings()
            token_service, key_service = default_services(settings)
        if not callable(getattr(key_service, "release", None)) or not isinstance(
            getattr(key_service, "workspace_crn", None), str
        ):
            raise ClientInitError("key_service= must be a key service (with release() and workspace_crn)")
        if isinstance(schemas, EncryptedTable) or not isinstance(schemas, Iterable):
            raise ClientInitError("schemas must be a list of encrypted_table(...) objects")
        self.workspace_crn = key_service.workspace_crn
        self.keyset = check_name("keyset", keyset or (settings.keyset if settings else "default"))
        self.key_service = key_service
        self.token_service = token_service
        self._aad_cache: dict[tuple[str, str, str, tuple[str, ...] | None], bytes] = {}
        self._tables: dict[str, EncryptedTable] = {}
        for t in schemas:
            if not isinstance(t, EncryptedTable):
                raise ClientInitError("schemas must be encrypted_table(...) objects")
            if t.table_name in self._tables:
                raise ClientInitError(f"table {t.table_name!r} is declared twice")
            self._tables[t.table_name] = t
        #: (table, column) of the columns whose values must be locked to an identity
        self._lock_required = frozenset(
            (t.table_name, c.name) for t in self._tables.values() for c in t.columns.values() if c.lock_required
        )

    def lock_context(self, **kwargs: Any) -> LockContext:
        """A :class:`LockContext` that exchanges through this client's token service."""
        return LockContext(token_service=self.token_service, **kwargs)

    # -- resolution ----------------------------------------------------------------------
    def table(self, name: str) -> EncryptedTable:
        """The declared table called ``name``.

        :raises ClientInitError: no such table in ``schemas``.
        """
        return self._table(name)

    def _table(self, table: EncryptedTable | str) -> EncryptedTable:
        """The declared table: by name, or the object itself. Another table object, even of the
        same name, is refused: the declaration (types, lock requirements) is what counts."""
        if isinstance(table, EncryptedTable):
            declared = self._tables.get(table.table_name)
            if declared is None or (declared is not table and declared != table):
                raise ClientInitError(
                    f"table {table.table_name!r} is not the one declared in Encryption(schemas=[...])"
                )
            return declared
        if not isinstance(table, str):
            raise ClientInitError(f"a table is named by a string or given as encrypted_table(...), not {type(table).__name__}")
        t = self._tables.get(table)
        if t is None:
            raise ClientInitError(f"unknown table {table!r}: pass it in Encryption(schemas=[...])")
        return t

    # -- public operations ---------------------------------------------------------------
    def encrypt(
        self,
        value: Any,
        *,
        column: EncryptedColumn | str,
        table: EncryptedTable | str,
        lock_context: LockContext | None = None,
    ) -> Operation[dict[str, Any] | None]:
        """Encrypt one value for ``table.column``. ``None`` stays ``None``."""
        def run(lc: LockContext | None) -> dict[str, Any] | None:
            t = self._table(table)
            out = self._encrypt_items([_Item(t, t.column(column), value)], lc)[0]
            if isinstance(out, LockkitError):
                raise out
            return out
        return Operation(run, lock_context)

    def bulk_encrypt(
        self,
        values: Iterable[Any],
        *,
        column: EncryptedColumn | str,
        table: EncryptedTable | str,
        lock_context: LockContext | None = None,
    ) -> Operation[list[Result[dict[str, Any] | None]]]:
        """Encrypt many values for one column; per-item results in input order."""
        values = list(values)

        def run(lc: LockContext | None) -> list[Result[dict[str, Any] | None]]:
            t = self._table(table)
            with gc_paused(len(values)):
                return ok_results(self._encrypt_batches([(t, t.column(column), values)], lc)[0])
        return Operation(run, lock_context)

    def stream_encrypt(
        self,
        values: Iterable[Any],
        *,
        column: EncryptedColumn | str,
        table: EncryptedTable | str,
        lock_context: LockContext | None = None,
        chunk_size: int = 1000,
    ) -> Iterator[Result[dict[str, Any] | None]]:
        """Encrypt an iterable of any length, yielding per-item results in order, one
        key-service call per ``chunk_size`` values: memory stays flat however long the input.
        A problem with the lock context (expired, forged) yields failures for the rest of the
        chunk and stops.
        """
        lock_context = _bound(lock_context) if lock_context is not None else None
        t = self._table(table)
        col = t.column(column)
        for chunk in _chunks(values, chunk_size):
            try:
                outs = self._encrypt_batches([(t, col, chunk)], lock_context)[0]
            except LockkitError as err:
                failure: Result[Any] = Result.from_error(err)
                yield from (failure for _ in chunk)
                return
            yield from (_as_result(o) for o in outs)

    def stream_decrypt(
        self, payloads: Iterable[Any], *, lock_context: LockContext | None = None, chunk_size: int = 1000
    ) -> Iterator[Result[Any]]:
        """Decrypt an iterable of payloads, yielding per-item results in order, one
        key-service call per ``chunk_size`` payloads (see :meth:`stream_encrypt`)."""
        lock_context = _bound(lock_context) if lock_context is not None else None
        for chunk in _chunks(payloads, chunk_size):
            try:
                outs = self._decrypt_items(chunk, lock_context)
            except LockkitError as err:
                failure: Result[Any] = Result.from_error(err)
                yield from (failure for _ in chunk)
                return
            yield from (_as_result(o) for o in outs)

    def decrypt(self, payload: Any, *, lock_context: LockContext | None = None) -> Operation[Any]:
        """Decrypt one payload. ``None`` stays ``None``."""
        def run(lc: LockContext | None) -> Any:
            out = self._decrypt_items([payload], lc)[0]
            if isinstance(out, LockkitError):
                raise out
            return out
        return Operation(run, lock_context)

    def bulk_decrypt(
        self, payloads: Iterable[Any], *, lock_context: LockContext | None = None
    ) -> Operation[list[Result[Any]]]:
        """Decrypt many payloads; per-item results (one bad payload does not sink the batch)."""
        payloads = list(payloads)

        def run(lc: LockContext | None) -> list[Result[Any]]:
            with gc_paused(len(payloads)):
                return ok_results(self._decrypt_items(payloads, lc))
        return Operation(run, lock_context)

    def encrypt_model(
        self, model: Mapping[str, Any], table: EncryptedTable | str, *, lock_context: LockContext | None = None
    ) -> Operation[dict[str, Any]]:
        """Encrypt the schema's fields of a dict; other fields pass through untouched."""
        def run(lc: LockContext | None) -> dict[str, Any]:
            return self._encrypt_models([model], self._table(table), lc)[0]
        return Operation(run, lock_context)

    def bulk_encrypt_models(
        self,
        models: Iterable[Mapping[str, Any]],
        table: EncryptedTable | str,
        *,
        lock_context: LockContext | None = None,
    ) -> Operation[list[dict[str, Any]]]:
        """Encrypt many models in one key-service call; any bad field fails the operation."""
        models = list(models)

        def run(lc: LockContext | None) -> list[dict[str, Any]]:
            with gc_paused(len(models)):
                return self._encrypt_models(models, self._table(table), lc)
        return Operation(run, lock_context)

    def decrypt_model(
        self,
        model: Mapping[str, Any],
        table: EncryptedTable | str | None = None,
        *,
        lock_context: LockContext | None = None,
    ) -> Operation[dict[str, Any]]:
        """Decrypt every payload field of a dict; other fields pass through. With ``table``,
        each field's payload must belong to that field's column (a moved payload fails)."""
        def run(lc: LockContext | None) -> dict[str, Any]:
            return self._decrypt_models([model], table, lc)[0]
        return Operation(run, lock_context)

    def bulk_decrypt_models(
        self,
        models: Iterable[Mapping[str, Any]],
        table: EncryptedTable | str | None = None,
        *,
        lock_context: LockContext | None = None,
    ) -> Operation[list[dict[str, Any]]]:
        """Decrypt many models in one key-service call; any bad field fails the operation."""
        models = list(models)

        def run(lc: LockContext | None) -> list[dict[str, Any]]:
            with gc_paused(len(models)):
                return self._decrypt_models(models, table, lc)
        return Operation(run, lock_context)

    def encrypt_query(
        self,
        value: Any,
        *,
        column: EncryptedColumn | str,
        table: EncryptedTable | str,
        query_type: QueryType | None = None,
        lock_context: LockContext | None = None,
    ) -> Operation[dict[str, Any]]:
        """Search term(s) for ``value``: ``{"hm": ...}`` (equality), ``{"bf": [...]}`` (match),
        or both when ``query_type`` is None and the column has both indexes. Compare with
        :func:`lockkit.search.matches`, or in SQL (``hm = :hm``, ``bf @> :bf``)."""
        def run(lc: LockContext | None) -> dict[str, Any]:
            out = self._query_terms([(value, column, table, query_type)], lc)[0]
            if isinstance(out, LockkitError):
                raise out
            return out
        return Operation(run, lock_context)

    def bulk_encrypt_query(
        self, terms: Iterable[Mapping[str, Any]], *, lock_context: LockContext | None = None
    ) -> Operation[list[Result[dict[str, Any]]]]:
        """Search terms for many values in one key-service call (one key release, and one
        audit event, per column instead of one per value). Each term is a dict like
        ``encrypt_query``'s arguments: ``{"value": ..., "column": ..., "table": ...}`` and
        optionally ``"query_type"``. Per-item results, in order: a bad term (unknown column,
        no such index, ``None``...) fails alone.

        :raises TypeError: a term is not a dict of those keys (at the call, before anything runs).
        """
        specs: list[tuple[Any, Any, Any, Any]] = []
        for term in terms:
            if not isinstance(term, Mapping) or not {"value", "column", "table"} <= set(term) or (
                set(term) - {"value", "column", "table", "query_type"}
            ):
                raise TypeError('each term is a dict: {"value", "column", "table"} and optionally "query_type"')
            specs.append((term["value"], term["column"], term["table"], term.get("query_type")))

        def run(lc: LockContext | None) -> list[Result[dict[str, Any]]]:
            with gc_paused(len(specs)):
                return ok_results(self._query_terms(specs, lc))
        return Operation(run, lock_context)

    def _query_terms(
        self, specs: Sequence[tuple[Any, Any, Any, Any]], lc: LockContext | None
    ) -> list[dict[str, Any] | LockkitError]:
        """Search terms for ``(value, column, table, query_type)`` specs, or the error of each
        bad one; one key-service call for all of them (one index key per column)."""
        out: list[dict[str, Any] | LockkitError] = [EncryptionError("no term")] * len(specs)
        groups: dict[tuple[str, str], tuple[EncryptedColumn, list[tuple[int, Any, bytes | None, bool, str]]]] = {}
        for i, (value, column, table, query_type) in enumerate(specs):
            try:
                t = self._table(table)
                col = t.column(column)
                where = f"{t.table_name}.{col.name}"
                if query_type not in (None, "equality", "match"):
                    raise EncryptionError(f"{where}: query_type must be 'equality', 'match' or None")
                want_eq = col.equality_index and query_type in (None, "equality")
                want_bf = col.match_index is not None and query_type in (None, "match")
                if query_type == "equality" and not col.equality_index:
                    raise EncryptionError(f"{where} has no equality index: declare .equality()")
                if query_type == "match" and col.match_index is None:
                    raise EncryptionError(f"{where} has no match index: declare .free_text_search()")
                if not (want_eq or want_bf):
                    raise EncryptionError(f"{where} has no search index")
                if value is None:
                    raise EncryptionError(f"{where}: cannot search for None")
                # the typed value first: a value of the wrong type says so ("expects text, got int")
                eq_bytes = pl.index_bytes(col.kind, value, where) if want_eq else None
                if want_bf and not isinstance(value, str):
                    raise EncryptionError(f"{where}: a match query must be text")
                if lc is None and col.lock_required:
                    raise _lock_required(t.table_name, col.name)
            except LockkitError as err:
                out[i] = err
                continue
            group = groups.setdefault((t.table_name, col.name), (col, []))
            group[1].append((i, value, eq_bytes, want_bf, where))
        if not groups:
            return out
        requests = [KeyRequest(tn, cn, "index", count=len(items), locked=lc is not None, operation="query")
                    for (tn, cn), (_, items) in groups.items()]
        keys = self._release(self._acquire(lc, requests), requests)
        for (col, items), key in zip(groups.values(), keys):
            if isinstance(key, LockkitError):
                for i, *_ in items:
                    out[i] = key
                continue
            hasher = TermHasher(key.material)
            for i, value, eq_bytes, want_bf, where in items:
                try:
                    term: dict[str, Any] = {}
                    if eq_bytes is not None:
                        term["hm"] = hasher.equality(eq_bytes)
                    if want_bf:
                        assert col.match_index is not None
                        bits = hasher.match(value, col.match_index)
                        if not bits:
                            raise EncryptionError(f"{where}: a match query needs at least one word")
                        term["bf"] = bits
                    out[i] = term
                except LockkitError as err:
                    out[i] = err
        return out

    # -- the two engines -----------------------------------------------------------------
    def _release(self, lock: Lock | None, requests: list[KeyRequest]) -> list[ColumnKey | LockkitError]:
        return self.key_service.release(keyset=self.keyset, lock=lock, requests=requests)

    def _acquire(self, lc: LockContext | None, requests: list[KeyRequest]) -> Lock | None:
        """The lock for a batch; a lock context refused here (no token, expired) is reported to
        an auditing key service as a denial before the error propagates."""
        try:
            return _lock_for(lc)
        except LockContextError as err:
            report = getattr(self.key_service, "report_denial", None)
            if report is not None and requests:
                report(keyset=self.keyset, lock=None, requests=requests, reason=err.message)
            raise

    def _aad(self, tn: str, cn: str, kid: str, lc: tuple[str, ...] | None) -> bytes:
        key = (tn, cn, kid, lc)
        aad = self._aad_cache.get(key)
        if aad is None:
            if len(self._aad_cache) >= 4096:  # bounded: drop the oldest entry (dicts keep order)
                # another thread may drop the same one first: never a KeyError from an operation
                for oldest in self._aad_cache:
                    self._aad_cache.pop(oldest, None)
                    break
            aad = self._aad_cache[key] = pl.associated_data(
                self.workspace_crn, self.keyset, tn, cn, kid, list(lc) if lc else None
            )
        return aad

    def _encrypt_items(self, items: list[_Item], lc: LockContext | None) -> list[dict[str, Any] | None | LockkitError]:
        """Encrypt items of any columns: one key-service call for all of them."""
        batches: dict[tuple[str, str], tuple[EncryptedTable, EncryptedColumn, list[int]]] = {}
        for i, it in enumerate(items):
            k = (it.table.table_name, it.col.name)
            b = batches.get(k)
            if b is None:
                b = batches[k] = (it.table, it.col, [])
            b[2].append(i)
        outs = self._encrypt_batches(
            [(t, col, [items[i].value for i in idxs]) for t, col, idxs in batches.values()], lc
        )
        out: list[dict[str, Any] | None | LockkitError] = [None] * len(items)
        for (_, _, idxs), results in zip(batches.values(), outs):
            for i, r in zip(idxs, results):
                out[i] = r
        return out

    def _encrypt_batches(
        self, batches: list[tuple[EncryptedTable, EncryptedColumn, list[Any]]], lc: LockContext | None
    ) -> list[list[dict[str, Any] | None | LockkitError]]:
        """Encrypt ``(table, column, values)`` batches with one key-service call in all.
        Returns, per batch, a payload, ``None`` (for ``None``) or an error per value."""
        locked = lc is not None
        requests: list[KeyRequest] = []
        counts = [sum(1 for v in values if v is not None) for _, _, values in batches]
        if not locked:
            for (t, col, _), n in zip(batches, counts):
                if n and col.lock_required:
                    raise _lock_required(t.table_name, col.name)
        for (t, col, values), n in zip(batches, counts):
            if n:
                requests.append(KeyRequest(t.table_name, col.name, "encrypt", count=n, locked=locked))
                if col.searchable:  # terms for the same values: part of the encrypt event (count 0)
                    requests.append(KeyRequest(t.table_name, col.name, "index", count=0, locked=locked,
                                               operation="encrypt"))
        lock = self._acquire(lc, requests) if requests else None
        live = [n > 0 for n in counts]
        keys = iter(self._release(lock, requests) if requests else [])
        lc_names = lock.claim_names if lock else None
        keyset = self.keyset
        b64 = binascii.b2a_base64
        encode_value = pl.encode_value
        results: list[list[dict[str, Any] | None | LockkitError]] = []
        for (t, col, values), has_values in zip(batches, live):
            if not has_values:
                results.append([None] * len(values))
                continue
            tn, cn = t.table_name, col.name
            data_key = next(keys)
            index_key = next(keys) if col.searchable else None
            for released in (data_key, index_key):
                if isinstance(released, LockkitError):
                    raise released
            assert isinstance(data_key, ColumnKey)
            hasher = TermHasher(index_key.material) if isinstance(index_key, ColumnKey) else None
            kid = data_key.key_id
            enc = data_key.aead().encrypt
            aad = self._aad(tn, cn, data_key.aad_id, lc_names)
            where = f"{tn}.{cn}"
            kind = col.kind
            text = kind == "text"
            eq = hasher is not None and col.equality_index
            match = col.match_index if hasher is not None else None
            out: list[dict[str, Any] | None | LockkitError] = []
            append = out.append
            ident = {"t": tn, "c": cn}
            names = list(lc_names) if lc_names else None
            template: dict[str, Any] = {"v": 1, "k": "ct", "i": None, "ks": keyset, "kid": kid, "c": None}
            if names is not None:
                template["lc"] = None
            # nonces and key checks a chunk at a time: the scratch memory stays small (and in
            # cache) however long the batch
            for start in range(0, len(values), _ENCRYPT_CHUNK):
                part = values[start : start + _ENCRYPT_CHUNK]
                n = len(part)
                rnd = os.urandom(12 * n)
                nonces = [rnd[k : k + 12] for k in range(0, 12 * n, 12)]
                prefixes = _interleave(rnd, data_key.key_checks(nonces), n)  # nonce | key check, per value
                raws = _encode_all(kind, part)
                if raws is not None:  # the usual chunk: every value of the column's type, no None
                    heads = map(prefixes.__getitem__, map(slice, range(0, 16 * n, 16), range(16, 16 * n + 16, 16)))
                    sealed = map(bytes.__add__, heads, map(enc, nonces, raws, repeat(aad, n)))
                    cs = [b64(blob, newline=False).decode() for blob in sealed]
                    if hasher is None:  # the loop below's dicts, copied from a template (a memcpy each)
                        for c in cs:
                            payload = template.copy()
                            payload["i"], payload["c"] = ident.copy(), c
                            if names is not None:
                                payload["lc"] = names.copy()
                            append(payload)
                        continue
                else:
                    cs = None
                for j, value in enumerate(part):
                    if value is None:
                        append(None)
                        continue
                    try:
                        if cs is not None:
                            c = cs[j]
                        else:
                            if text and type(value) is str:
                                raw = b"s" + value.encode()
                            else:
                                raw = encode_value(kind, value, where)
                            o = 16 * j
                            c = b64(prefixes[o : o + 16] + enc(nonces[j], raw, aad), newline=False).decode()
                        p = template.copy()
                        p["i"], p["c"] = ident.copy(), c
                        if names is not None:
                            p["lc"] = names.copy()
                        if hasher is not None:
                            if eq:
                                p["hm"] = hasher.equality(pl.index_bytes(kind, value, where))
                            if match is not None:
                                p["bf"] = hasher.match(value, match)
                        append(p)
                    except UnicodeEncodeError:
                        append(EncryptionError(f"{where}: text is not valid Unicode (lone surrogate?)"))
                    except LockkitError as err:
                        append(err)
            results.append(out)
        return results

    def _decrypt_items(
        self, payloads: Sequence[Any], lc: LockContext | None, expected: Sequence[tuple[str, str] | None] | None = None
    ) -> list[Any]:
        """Decrypt a batch of payloads (``expected``: per payload, the (table, column) it must
        belong to, or None): one key-service call. Returns values, or a LockkitError per
        failed item.

        Payloads are grouped by header (table, column, keyset, key id, lock claims); the
        header checks run once per group, and each value costs a few dict reads, one base64
        decode and its AEAD call."""
        out: list[Any] = [None] * len(payloads)
        groups: dict[tuple[Any, ...], _Group] = {}
        claims = lc.identity_claim if lc is not None else None
        claims_list = list(claims) if claims is not None else None
        a2b, fast_keys, min_raw = _a2b, _FAST_KEY_COUNT, _MIN_RAW
        for i, obj in enumerate(payloads):
            if obj is None:
                continue
            g: _Group | None = None
            raw = b""
            if type(obj) is dict:  # the fast path: a well-formed dict as json.loads gives it
                try:
                    v, ident, lcv = obj["v"], obj["i"], obj.get("lc")
                    if (
                        type(v) is int and v == 1 and obj["k"] == "ct" and type(ident) is dict
                        and len(ident) == 2 and (lcv is None or lcv == claims_list)
                        # no field beyond the known ones: every present optional field counted
                        and len(obj) == fast_keys + (lcv is not None) + ("hm" in obj) + ("bf" in obj)
                    ):
                        header = (ident["t"], ident["c"], obj["ks"], obj["kid"], None if lcv is None else claims)
                        g = groups.get(header)
                        if g is None:
                            g = self._group(groups, header, claims, fast=True)
                        c = obj["c"]
                        if g is not None and type(c) is str:
                            raw = a2b(c, strict_mode=True)
                        else:
                            g = None
                except (KeyError, TypeError, ValueError, binascii.Error):
                    g = None
            if g is None or len(raw) < min_raw:  # anything unusual: parsed with exact errors
                parsed = _parse(obj)
                if isinstance(parsed, LockkitError):
                    out[i] = parsed
                    continue
                tn, cn, ks, kid, plc, raw = parsed
                header = (tn, cn, ks, kid, plc)
                g = groups.get(header)
                if g is None:
                    g = self._group(groups, header, claims)
                    assert g is not None  # payload.parse checked the header's types
            if expected is not None:
                want = expected[i]
                if want is not None and g.where != want:
                    out[i] = DecryptionError(
                        f"payload belongs to {g.table}.{g.column}, not {want[0]}.{want[1]} (was it moved?)"
                    )
                    continue
            if g.error is not None:
                out[i] = type(g.error)(g.error.message)
                continue
            g.index.append(i)
            g.raws.append(raw)
        live = [g for g in groups.values() if g.index]
        if not live:
            return out
        for g in live:  # split every value's nonce, key check and body, in C
            g.nonces = list(map(_NONCE, g.raws))
            g.bodies = list(map(_BODY, g.raws))
        requests = [
            KeyRequest(g.table, g.column, "decrypt", key_id=g.kid, count=len(g.index), locked=g.lc is not None,
                       probe=(g.nonces, b"".join(map(_CHECK, g.raws))))
            for g in live
        ]
        need_lock = any(g.lc is not None for g in live)
        lock = self._acquire(lc, requests) if need_lock else None
        keys = self._release(lock, requests)
        decode_value = pl.decode_value
        denials: list[tuple[KeyRequest, str]] = []
        for g, key in zip(live, keys):
            if isinstance(key, LockkitError):
                for i in g.index:
                    out[i] = key
                continue
            n = len(g.index)
            opened = key.opened
            if opened is None or len(opened) != n:  # a key service that did not probe
                mine, given = key.key_checks(g.nonces), b"".join(map(_CHECK, g.raws))
                opened = bytes([hmac.compare_digest(mine[4 * j : 4 * j + 4], given[4 * j : 4 * j + 4]) for j in range(n)])
            dec = key.aead().decrypt
            aad = self._aad(g.table, g.column, key.aad_id, g.lc)
            every = opened == b"\x01" * n  # the check bytes are not covered by the AEAD: check them
            if every:  # the usual case: all at once, with no Python code per value
                try:
                    plains = list(map(dec, g.nonces, g.bodies, repeat(aad, n)))
                except InvalidTag:  # one was tampered with: value by value below, for exact results
                    plains = None
                if plains is not None:
                    values = _decode_all(plains)
                    first, last = g.index[0], g.index[-1]
                    if last - first == n - 1:  # a run of the batch (indexes ascend): one slice
                        out[first : last + 1] = values
                    else:
                        for i, value in zip(g.index, values):
                            out[i] = value
                    continue
            refused = 0
            for j, (i, nonce, body) in enumerate(zip(g.index, g.nonces, g.bodies)):
                if not every and not opened[j]:
                    out[i] = DecryptionError(  # the key service audited these as denied
                        "this value is locked to another identity" if g.lc is not None else
                        "this value was encrypted under other keys (another workspace or keyring?)"
                    )
                    continue
                try:
                    plain = dec(nonce, body, aad)
                except InvalidTag:
                    out[i] = DecryptionError("the payload was tampered with (authentication failed)")
                    refused += 1
                    continue
                if plain[:1] == b"s":
                    try:
                        out[i] = plain[1:].decode()
                        continue
                    except UnicodeDecodeError:
                        pass
                try:
                    out[i] = decode_value(plain)
                except LockkitError as err:
                    out[i] = err
            if refused:
                denials.append((KeyRequest(g.table, g.column, "decrypt", key_id=g.kid, count=refused,
                                           locked=g.lc is not None), "the payload was tampered with"))
        if denials:
            self._report_denials(lock, denials)
        return out

    def _group(
        self,
        groups: dict[tuple[Any, ...], _Group],
        header: tuple[Any, Any, Any, Any, tuple[str, ...] | None],
        claims: tuple[str, ...] | None,
        *,
        fast: bool = False,
    ) -> _Group | None:
        """The group for a new payload header (carrying the error its payloads get, if any), or
        None when the header is malformed (the caller then parses the payload for the exact
        error). ``claims``: the lock context's claim names; ``fast``: from the fast path, whose
        headers name no lock claims or exactly the lock context's."""
        tn, cn, ks, kid, plc = header
        if not (type(tn) is str and type(cn) is str and type(ks) is str and type(kid) is str):
            return None
        g = groups[header] = _Group(tn, cn, kid, plc)
        if ks != self.keyset:
            g.error = DecryptionError(f"payload was encrypted under keyset {ks!r}; this client uses {self.keyset!r}")
        elif plc is not None and claims is None:
            g.error = LockContextError("this value is locked to an identity: decrypt it with .with_lock_context(...)")
        elif plc is None and (tn, cn) in self._lock_required:
            g.error = DecryptionError(
                f"{tn}.{cn} requires values locked to an identity, and this payload is not (was it "
                "encrypted without a lock context, or put there from elsewhere?)"
            )
        elif plc is not None and not fast and plc != claims:
            g.error = LockContextError(
                f"this value is locked to the claims {list(plc)}, but the lock context names {list(claims or ())}"
            )
        return g

    def _report_denials(self, lock: Lock | None, denials: list[tuple[KeyRequest, str]]) -> None:
        """Tell an auditing key service about values its keys did not open."""
        report = getattr(self.key_service, "report_denial", None)
        if report is None:
            return
        for req, reason in denials:
            report(keyset=self.keyset, lock=lock, requests=[req], reason=reason)

    def _encrypt_models(
        self, models: list[Mapping[str, Any]], table: EncryptedTable, lc: LockContext | None
    ) -> list[dict[str, Any]]:
        done = self._encrypt_full_models(models, table, lc)
        if done is not None:
            return done
        items: list[_Item] = []
        slots: list[tuple[int, str]] = []
        for m_i, model in enumerate(models):
            if not isinstance(model, Mapping):
                raise EncryptionError(f"models must be dicts, got {type(model).__name__}")
            for field, col in table.columns.items():
                if field in model:
                    items.append(_Item(table, col, model[field]))
                    slots.append((m_i, field))
        return _fill_models(models, slots, self._encrypt_items(items, lc))

    def _encrypt_full_models(
        self, models: list[Mapping[str, Any]], t: EncryptedTable, lc: LockContext | None
    ) -> list[dict[str, Any]] | None:
        """:meth:`_encrypt_models` column by column, for the usual batch: dicts that hold every
        one of the table's fields. The same batches (one per column, in the table's order) go to
        the same single key-service call; the values are gathered and stored with ``map``. None
        for any other batch (a field missing, a model that is not a dict), which the caller
        takes model by model.

        :raises LockkitError: the failure of the first failed value, as the model-by-model path
            raises it (models in order, each model's fields in the table's order).
        """
        m = len(models)
        if not m or set(map(type, models)) != {dict}:
            return None
        fields = list(t.columns)
        batches: list[tuple[EncryptedTable, EncryptedColumn, list[Any]]] = []
        for field in fields:
            values = list(map(_DICT_GET, models, repeat(field, m), repeat(_ABSENT, m)))
            if any(map(is_, values, repeat(_ABSENT, m))):  # by identity: never a value's own __eq__
                return None
            batches.append((t, t.columns[field], values))
        outs = self._encrypt_batches(batches, lc)
        if any(any(map(isinstance, out, repeat(LockkitError, m))) for out in outs):
            for i in range(m):  # the first failure in model-by-model order
                for field, out in zip(fields, outs):
                    o = out[i]
                    if isinstance(o, LockkitError):
                        raise type(o)(f"{field}: {o.message}", retryable=o.retryable) from o
        result = list(map(dict, models))
        for field, out in zip(fields, outs):
            _consume(map(setitem, result, repeat(field, m), out))
        return result

    def _decrypt_models(
        self, models: list[Mapping[str, Any]], table: EncryptedTable | str | None, lc: LockContext | None
    ) -> list[dict[str, Any]]:
        t = self._table(table) if table is not None else None
        if t is not None:
            done = self._decrypt_full_models(models, t, lc)
            if done is not None:
                return done
        # with a table: its columns' fields, each payload checked to belong to its column
        wanted = {f: (t.table_name, col.name) for f, col in t.columns.items()} if t is not None else None
        payloads: list[Any] = []
        expected: list[tuple[str, str] | None] = []
        slots: list[tuple[int, str]] = []
        for m_i, model in enumerate(models):
            if not isinstance(model, Mapping):
                raise DecryptionError(f"models must be dicts, got {type(model).__name__}")
            for field, value in model.items():
                if wanted is not None:
                    want = wanted.get(field)
                    if want is None:
                        continue
                    if value is not None and not _is_payload(value):
                        raise DecryptionError(f"{field}: expected an encrypted payload")
                elif _is_payload(value):
                    want = None
                else:
                    continue
                payloads.append(value)
                expected.append(want)
                slots.append((m_i, field))
        return _fill_models(models, slots, self._decrypt_items(payloads, lc, expected))

    def _decrypt_full_models(
        self, models: list[Mapping[str, Any]], t: EncryptedTable, lc: LockContext | None
    ) -> list[dict[str, Any]] | None:
        """:meth:`_decrypt_models` with a table, column by column, for the usual batch: dicts
        holding a payload dict (or None) in every one of the table's fields. The values are gathered,
        checked, decrypted (in one key-service call, as one run of the batch per column) and
        stored with ``map`` over C functions. None for any other batch (a field missing, a
        value that is not a payload dict), which the caller takes model by model.

        :raises LockkitError: the failure of the first failed value, as the model-by-model
            path raises it (models in order, each model's fields in its own order).
        """
        m = len(models)
        if not m or set(map(type, models)) != {dict}:
            return None
        fields = list(t.columns)
        payloads: list[Any] = []
        expected: list[tuple[str, str]] = []
        for field in fields:
            values = list(map(_DICT_GET, models, repeat(field, m), repeat(_ABSENT, m)))
            kinds = set(map(type, values))
            if not kinds <= _DICT_OR_NONE:  # also: no field missing (the sentinel is neither)
                return None
            found = values if type(None) not in kinds else list(filter(partial(is_not, None), values))
            k = len(found)
            if (
                list(map(_DICT_GET, found, repeat("k", k))).count("ct") != k
                or sum(map(contains, found, repeat("c", k))) != k
                or sum(map(contains, found, repeat("v", k))) != k
            ):
                return None
            payloads += values
            expected += repeat((t.table_name, t.columns[field].name), m)
        outs = self._decrypt_items(payloads, lc, expected)
        if any(map(isinstance, outs, repeat(LockkitError, len(outs)))):
            at = {f: k * m for k, f in enumerate(fields)}
            for i, model in enumerate(models):  # the first failure in model-by-model order
                for field in model:
                    o = outs[at[field] + i] if field in at else None
                    if isinstance(o, LockkitError):
                        raise type(o)(f"{field}: {o.message}", retryable=o.retryable) from o
        result = list(map(dict, models))
        for k, field in enumerate(fields):
            _consume(map(setitem, result, repeat(field, m), outs[k * m : (k + 1) * m]))
        return result

    def __repr__(self) -> str:
        return f"Encryption(workspace_crn={self.workspace_crn!r}, keyset={self.keyset!r}, tables={list(self._tables)})"


_Parsed = tuple[str, str, str, str, "tuple[str, ...] | None", bytes]
_a2b = binascii.a2b_base64
_MIN_RAW = pl.MIN_RAW
#: values per round of nonce and key-check generation while encrypting
_ENCRYPT_CHUNK = 2048
#: the fields every payload has (v, k, i, ks, kid, c); lc, hm and bf are optional
_FAST_KEY_COUNT = 6


def _parse(obj: Any) -> _Parsed | LockkitError:
    """A payload's (table, column, keyset, kid, lock claims, raw ciphertext), or the error that
    says precisely what is wrong with it (the path for payloads the decrypt fast path did not
    take)."""
    try:
        p = pl.parse(obj)
    except LockkitError as err:
        return err
    return (p.table, p.column, p.keyset, p.kid, p.lc, p.nonce + p.check + p.ciphertext)


def _interleave(nonces: bytes, checks: bytes, n: int) -> bytes:
    """``nonce_j | check_j`` for each of ``n`` 12-byte nonces and 4-byte checks, gathered in C
    (views of 4-byte words: three from each nonce, then one from its check)."""
    if not _GATHER4:
        return b"".join([nonces[12 * j : 12 * j + 12] + checks[4 * j : 4 * j + 4] for j in range(n)])
    out = bytearray(16 * n)
    words, nw, cw = memoryview(out).cast("I"), memoryview(nonces).cast("I"), memoryview(checks).cast("I")
    words[0::4], words[1::4], words[2::4], words[3::4] = nw[0::3], nw[1::3], nw[2::3], cw
    return bytes(out)


def _fill_models(models: Sequence[Mapping[str, Any]], slots: list[tuple[int, str]], outs: list[Any]) -> list[dict[str, Any]]:
    """Copies of ``models`` with each ``(model index, field)`` slot set to its output; the first
    failed item fails the operation, naming its field."""
    result = [dict(m) for m in models]
    for (m_i, field), o in zip(slots, outs):
        if isinstance(o, LockkitError):
            raise type(o)(f"{field}: {o.message}", retryable=o.retryable) from o
        result[m_i][field] = o
    return result


def _lock_required(table: str, column: str) -> LockContextError:
    return LockContextError(
        f"{table}.{column} requires a lock context (declared .require_lock_context()): "
        "use .with_lock_context(...)"
    )


def _is_payload(value: Any) -> bool:
    """:func:`payload.is_payload`, with a quick answer for plain dicts."""
    if type(value) is dict:
        return value.get("k") == "ct" and "c" in value and "v" in value
    return pl.is_payload(value)


class _Group:
    """Payloads of one header in a decrypt batch (internal)."""

    __slots__ = ("table", "column", "where", "kid", "lc", "error", "index", "raws", "nonces", "bodies")

    def __init__(self, table: str, column: str, kid: str, lc: tuple[str, ...] | None) -> None:
        self.table, self.column, self.kid, self.lc = table, column, kid, lc
        self.where = (table, column)
        self.error: LockkitError | None = None
        self.index: list[int] = []
        self.raws: list[bytes] = []  # nonce | key check | ciphertext and tag
        self.nonces: list[bytes] = []
        self.bodies: list[bytes] = []


_NONCE = itemgetter(slice(0, pl.NONCE_BYTES))
_CHECK = itemgetter(slice(pl.NONCE_BYTES, pl.NONCE_BYTES + pl.CHECK_BYTES))
_BODY = itemgetter(slice(pl.NONCE_BYTES + pl.CHECK_BYTES, None))
_REST = itemgetter(slice(1, None))


def _encode_all(kind: str, values: list[Any]) -> list[bytes] | None:
    """:func:`payload.encode_value` of each value, in C with ``map``, when every value has
    exactly the column's type (text, int, date or datetime: no None, no subclass, no bool);
    None otherwise, or when any value would not encode, for the value-by-value path (which
    gives each value its exact result)."""
    types = set(map(type, values))
    if len(types) != 1:
        return None
    ty = types.pop()
    try:
        if ty is str and kind == "text":
            return list(map(_TAG_S, map(str.encode, values)))
        if ty is int and kind == "int":
            return list(map(_TAG_I, map(str.encode, map(str, values))))
        if ty is dt.date and kind == "date":
            return list(map(_TAG_D, map(str.encode, map(dt.date.isoformat, values))))
        if ty is dt.datetime and kind == "datetime":
            return list(map(_TAG_T, map(str.encode, map(dt.datetime.isoformat, values))))
    except (TypeError, ValueError, OverflowError, RecursionError):  # what encode_value turns into
        return None  # a value's own EncryptionError: a lone surrogate, a huge int, an odd tzinfo
    return None


_TAG_S, _TAG_I, _TAG_D, _TAG_T = b"s".__add__, b"i".__add__, b"d".__add__, b"t".__add__


def _decode_all(plains: list[bytes]) -> list[Any]:
    """:func:`payload.decode_value` of each plaintext (or the error it raises). When all have
    one common type tag (a column's values), in C with ``map``; otherwise value by value."""
    try:
        tags = bytes(map(_first_byte, plains))
        tag = tags[:1]
        if tags.count(tag) == len(tags):
            if tag == b"s":
                return list(map(_REST, map(bytes.decode, plains)))  # the tag is one ASCII character
            if tag == b"i":
                return list(map(int, map(_REST, plains)))
            if tag == b"d":
                return list(map(_date, map(bytes.decode, map(_REST, plains))))
            if tag == b"t":
                return list(map(_datetime, map(bytes.decode, map(_REST, plains))))
    except (IndexError, ValueError):  # UnicodeDecodeError too: decode_value says which value and why
        pass
    out: list[Any] = []
    for plain in plains:
        try:
            out.append(pl.decode_value(plain))
        except LockkitError as err:
            out.append(err)
    return out


_first_byte = itemgetter(0)
_ABSENT = object()  # a model without the field
_DICT_GET: Any = dict.get  # a model's field (models are checked to be dicts first)
_DICT_OR_NONE = frozenset({dict, type(None)})
_date, _datetime = dt.date.fromisoformat, dt.datetime.fromisoformat


#: list-based bulk operations of at least this many items pause the cyclic garbage collector
GC_PAUSE_MIN_ITEMS = 10_000
_gc_lock = threading.Lock()
_gc_holders = 0
_gc_resume = False


@contextmanager
def gc_paused(items: int) -> Iterator[None]:
    """Python's cyclic garbage collector paused while a large list-based bulk operation builds
    its results (``items`` >= :data:`GC_PAUSE_MIN_ITEMS`).

    Each result is a few objects the collector tracks, and every full collection walks all of
    them again: at a million values those walks doubled the time per value (5.6 us instead of
    2.6; measured, ``bench/bench_scaling.py``), so the cost grew with the batch instead of
    linearly. Paused, it is linear. The pause is process-wide (the collector has no other
    switch) and lasts only the operation; concurrent operations share it, and the collector is
    enabled again only if it was enabled when the first of them began. Values the collector
    would have freed meanwhile (reference cycles made by other threads) are freed after it.
    Streams (``stream_encrypt``/``stream_decrypt``) never pause it: they hold one chunk at a
    time."""
    global _gc_holders, _gc_resume
    if items < GC_PAUSE_MIN_ITEMS:
        yield
        return
    with _gc_lock:
        if _gc_holders == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_resume:
                gc.enable()


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if size < 1:
        raise ValueError("chunk_size must be at least 1")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _as_result(o: Any) -> Result[Any]:
    return Result.from_error(o) if isinstance(o, LockkitError) else Result(o)
