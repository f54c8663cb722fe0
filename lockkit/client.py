"""The encryption client: encrypt/decrypt values and models, in bulk, and search terms.

Every operation returns an :class:`Operation`: chain ``.with_lock_context(lc)`` to lock it to
an identity; it runs once, when its result is first read (``.data``, ``.failure``,
``.result()`` or ``.unwrap()``). Each operation makes exactly one key-service call, however
many values or columns it touches.
"""

from __future__ import annotations

import base64
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from . import payload as pl
from .config import Settings, check_name, load_settings
from .errors import (
    ClientInitError,
    DecryptionError,
    EncryptionError,
    LockContextError,
    LockkitError,
    Result,
)
from .identity import LockContext, TokenService
from .keys import ColumnKey, KeyRequest, KeyService, Lock
from .schema import EncryptedColumn, EncryptedTable
from .search import TermHasher

T = TypeVar("T")
QueryType = Literal["equality", "match"]
_ZERO4 = b"\x00" * 4


class Operation(Generic[T]):
    """A lazy operation. ``with_lock_context`` returns a new operation; the first read of its
    result runs it (once, thread-safely) and caches the :class:`Result`."""

    __slots__ = ("_fn", "_lc", "_result", "_mutex")

    def __init__(self, fn: Callable[[LockContext | None], T], lock_context: LockContext | None = None) -> None:
        self._fn = fn
        self._lc = lock_context
        self._result: Result[T] | None = None
        self._mutex = threading.Lock()

    def with_lock_context(self, lock_context: LockContext) -> Operation[T]:
        """This operation, locked to ``lock_context``'s identity.

        :raises TypeError: not a LockContext.
        :raises RuntimeError: the operation already ran.
        """
        if not isinstance(lock_context, LockContext):
            raise TypeError("with_lock_context() takes a LockContext")
        if self._result is not None:
            raise RuntimeError("this operation already ran; build a new one")
        return Operation(self._fn, lock_context)

    def result(self) -> Result[T]:
        """Run the operation if it has not run yet, and return its :class:`Result`."""
        with self._mutex:
            if self._result is None:
                try:
                    self._result = Result(self._fn(self._lc))
                except LockkitError as err:
                    self._result = Result.from_error(err)
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
            settings = settings or load_settings()
            from .cts import default_token_service
            from .cts.embedded import EmbeddedTokenService
            from .keys.local import LocalKeyService

            token_service = token_service or default_token_service(settings)
            if not isinstance(token_service, EmbeddedTokenService):
                raise ClientInitError("pass key_service= when using a non-embedded token service")
            key_service = LocalKeyService(token_service._keyring, token_service.verifier())
        self.workspace_crn = key_service.workspace_crn
        self.keyset = check_name("keyset", keyset or (settings.keyset if settings else "default"))
        self.key_service = key_service
        self.token_service = token_service
        self._tables: dict[str, EncryptedTable] = {}
        for t in schemas:
            if not isinstance(t, EncryptedTable):
                raise ClientInitError("schemas must be encrypted_table(...) objects")
            if t.table_name in self._tables:
                raise ClientInitError(f"table {t.table_name!r} is declared twice")
            self._tables[t.table_name] = t

    def lock_context(self, **kwargs: Any) -> LockContext:
        """A :class:`LockContext` that exchanges through this client's token service."""
        return LockContext(token_service=self.token_service, **kwargs)

    # -- resolution ----------------------------------------------------------------------
    def _table(self, table: EncryptedTable | str) -> EncryptedTable:
        if isinstance(table, EncryptedTable):
            return table
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
            out = self._encrypt_items([_Item(t, t.column(column), value)], _lock_for(lc))[0]
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
            col = t.column(column)
            outs = self._encrypt_items([_Item(t, col, v) for v in values], _lock_for(lc))
            return [_as_result(o) for o in outs]
        return Operation(run, lock_context)

    def decrypt(self, payload: Any, *, lock_context: LockContext | None = None) -> Operation[Any]:
        """Decrypt one payload. ``None`` stays ``None``."""
        def run(lc: LockContext | None) -> Any:
            out = self._decrypt_items([(payload, None)], lc)[0]
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
            return [_as_result(o) for o in self._decrypt_items([(p, None) for p in payloads], lc)]
        return Operation(run, lock_context)

    def encrypt_model(
        self, model: Mapping[str, Any], table: EncryptedTable | str, *, lock_context: LockContext | None = None
    ) -> Operation[dict[str, Any]]:
        """Encrypt the schema's fields of a dict; other fields pass through untouched."""
        def run(lc: LockContext | None) -> dict[str, Any]:
            return self._encrypt_models([model], self._table(table), _lock_for(lc))[0]
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
            return self._encrypt_models(models, self._table(table), _lock_for(lc))
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
            t = self._table(table)
            col = t.column(column)
            where = f"{t.table_name}.{col.name}"
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
            lock = _lock_for(lc)
            key = self._release(lock, [KeyRequest(t.table_name, col.name, "index", locked=lock is not None)])[0]
            if isinstance(key, LockkitError):
                raise key
            hasher = TermHasher(key.material)
            term: dict[str, Any] = {}
            if want_eq:
                term["hm"] = hasher.equality(pl.index_bytes(col.kind, value, where))
            if want_bf:
                assert col.match_index is not None
                if not isinstance(value, str):
                    raise EncryptionError(f"{where}: a match query must be text")
                bits = hasher.match(value, col.match_index)
                if not bits:
                    raise EncryptionError(f"{where}: a match query needs at least one word")
                term["bf"] = bits
            return term
        return Operation(run, lock_context)

    # -- the two engines -----------------------------------------------------------------
    def _release(self, lock: Lock | None, requests: list[KeyRequest]) -> list[ColumnKey | LockkitError]:
        return self.key_service.release(keyset=self.keyset, lock=lock, requests=requests)

    def _encrypt_items(self, items: list[_Item], lock: Lock | None) -> list[dict[str, Any] | None | LockkitError]:
        """Encrypt a batch (any columns): one key-service call for all of them."""
        out: list[dict[str, Any] | None | LockkitError] = [None] * len(items)
        groups: dict[tuple[str, str], list[int]] = {}
        cols: dict[tuple[str, str], tuple[EncryptedTable, EncryptedColumn]] = {}
        for i, it in enumerate(items):
            if it.value is None:
                continue
            k = (it.table.table_name, it.col.name)
            groups.setdefault(k, []).append(i)
            cols[k] = (it.table, it.col)
        if not groups:
            return out
        locked = lock is not None
        requests: list[KeyRequest] = []
        for (tn, cn), idxs in groups.items():
            requests.append(KeyRequest(tn, cn, "encrypt", count=len(idxs), locked=locked))
            if cols[(tn, cn)][1].searchable:
                requests.append(KeyRequest(tn, cn, "index", count=len(idxs), locked=locked))
        keys = iter(self._release(lock, requests))
        lc_names = list(lock.claim_names) if lock else None
        b64 = base64.b64encode
        for (tn, cn), idxs in groups.items():
            t, col = cols[(tn, cn)]
            data_key = next(keys)
            index_key = next(keys) if col.searchable else None
            for released in (data_key, index_key):
                if isinstance(released, LockkitError):
                    raise released
            assert isinstance(data_key, ColumnKey)
            hasher = TermHasher(index_key.material) if isinstance(index_key, ColumnKey) else None
            aead = AESGCMSIV(data_key.material[:32])
            kid = data_key.key_id
            aad = pl.associated_data(self.workspace_crn, self.keyset, tn, cn, kid, lc_names)
            n = len(idxs)
            nonces = os.urandom(pl.NONCE_BYTES * n)
            checks = _key_checks(data_key.material[32:], nonces, n)
            where = f"{tn}.{cn}"
            ident = {"t": tn, "c": cn}
            enc = aead.encrypt
            for j, i in enumerate(idxs):
                value = items[i].value
                try:
                    raw = pl.encode_value(col.kind, value, where)
                    nonce = nonces[12 * j : 12 * j + 12]
                    p: dict[str, Any] = {
                        "v": 1, "k": "ct", "i": ident, "ks": self.keyset, "kid": kid,
                        "c": b64(nonce + checks[16 * j : 16 * j + 4] + enc(nonce, raw, aad)).decode(),
                    }
                    if lc_names:
                        p["lc"] = lc_names
                    if hasher is not None:
                        if col.equality_index:
                            p["hm"] = hasher.equality(pl.index_bytes(col.kind, value, where))
                        if col.match_index is not None:
                            p["bf"] = hasher.match(value, col.match_index)
                    out[i] = p
                except LockkitError as err:
                    out[i] = err
        return out

    def _decrypt_items(
        self, items: list[tuple[Any, tuple[str, str] | None]], lc: LockContext | None
    ) -> list[Any]:
        """Decrypt a batch of ``(payload, expected (table, column) or None)``: one key-service
        call. Returns values, or a LockkitError per failed item."""
        out: list[Any] = [None] * len(items)
        parsed: dict[int, pl.Parsed] = {}
        need_lock = False
        for i, (obj, expected) in enumerate(items):
            if obj is None:
                continue
            try:
                p = pl.parse(obj)
                if expected is not None and (p.table, p.column) != expected:
                    raise DecryptionError(
                        f"payload belongs to {p.table}.{p.column}, not {expected[0]}.{expected[1]} "
                        "(was it moved?)"
                    )
                if p.keyset != self.keyset:
                    raise DecryptionError(
                        f"payload was encrypted under keyset {p.keyset!r}; this client uses {self.keyset!r}"
                    )
                if p.lc is not None:
                    if lc is None:
                        raise LockContextError(
                            "this value is locked to an identity: decrypt it with .with_lock_context(...)"
                        )
                    if p.lc != lc.identity_claim:
                        raise LockContextError(
                            f"this value is locked to the claims {list(p.lc)}, but the lock context "
                            f"names {list(lc.identity_claim)}"
                        )
                    need_lock = True
                parsed[i] = p
            except LockkitError as err:
                out[i] = err
        if not parsed:
            return out
        lock = _lock_for(lc) if need_lock else None
        groups: dict[tuple[str, str, str, bool], list[int]] = {}
        for i, p in parsed.items():
            groups.setdefault((p.table, p.column, p.kid, p.lc is not None), []).append(i)
        requests = [KeyRequest(t, c, "decrypt", key_id=kid, count=len(ix), locked=lk) for (t, c, kid, lk), ix in groups.items()]
        keys = self._release(lock, requests)
        for ((tn, cn, kid, locked), idxs), key in zip(groups.items(), keys):
            if isinstance(key, LockkitError):
                for i in idxs:
                    out[i] = key
                continue
            aead = AESGCMSIV(key.material[:32])
            lc_names = list(lc.identity_claim) if locked and lc else None
            aad = pl.associated_data(self.workspace_crn, self.keyset, tn, cn, kid, lc_names)
            nonces = b"".join(parsed[i].nonce for i in idxs)
            checks = _key_checks(key.material[32:], nonces, len(idxs))
            dec = aead.decrypt
            for j, i in enumerate(idxs):
                p = parsed[i]
                if not hmac.compare_digest(checks[16 * j : 16 * j + 4], p.check):
                    out[i] = DecryptionError(
                        "this value is locked to another identity" if locked else
                        "this value was encrypted under other keys (another workspace or keyring?)"
                    )
                    continue
                try:
                    out[i] = pl.decode_value(dec(p.nonce, p.ciphertext, aad))
                except InvalidTag:
                    out[i] = DecryptionError("the payload was tampered with (authentication failed)")
                except LockkitError as err:
                    out[i] = err
        return out

    def _encrypt_models(
        self, models: list[Mapping[str, Any]], table: EncryptedTable, lock: Lock | None
    ) -> list[dict[str, Any]]:
        items: list[_Item] = []
        slots: list[tuple[int, str]] = []
        for m_i, model in enumerate(models):
            if not isinstance(model, Mapping):
                raise EncryptionError(f"models must be dicts, got {type(model).__name__}")
            for field, col in table.columns.items():
                if field in model:
                    items.append(_Item(table, col, model[field]))
                    slots.append((m_i, field))
        outs = self._encrypt_items(items, lock)
        result = [dict(m) for m in models]
        for (m_i, field), o in zip(slots, outs):
            if isinstance(o, LockkitError):
                raise type(o)(f"{field}: {o.message}") from o
            result[m_i][field] = o
        return result

    def _decrypt_models(
        self, models: list[Mapping[str, Any]], table: EncryptedTable | str | None, lc: LockContext | None
    ) -> list[dict[str, Any]]:
        t = self._table(table) if table is not None else None
        items: list[tuple[Any, tuple[str, str] | None]] = []
        slots: list[tuple[int, str]] = []
        for m_i, model in enumerate(models):
            if not isinstance(model, Mapping):
                raise DecryptionError(f"models must be dicts, got {type(model).__name__}")
            for field, value in model.items():
                col = t.columns.get(field) if t is not None else None
                if col is not None and value is not None and not pl.is_payload(value):
                    raise DecryptionError(f"{field}: expected an encrypted payload")
                if col is not None or (t is None and pl.is_payload(value)):
                    items.append((value, (t.table_name, col.name) if t is not None and col is not None else None))
                    slots.append((m_i, field))
        outs = self._decrypt_items(items, lc)
        result = [dict(m) for m in models]
        for (m_i, field), o in zip(slots, outs):
            if isinstance(o, LockkitError):
                raise type(o)(f"{field}: {o.message}") from o
            result[m_i][field] = o
        return result

    def __repr__(self) -> str:
        return f"Encryption(workspace_crn={self.workspace_crn!r}, keyset={self.keyset!r}, tables={list(self._tables)})"


def _key_checks(check_key: bytes, nonces: bytes, n: int) -> bytes:
    """AES-256 of ``nonce | 0^32`` for each nonce, in one call (the first 4 bytes of each
    16-byte block are that value's key check)."""
    blocks = b"".join(nonces[12 * j : 12 * j + 12] + _ZERO4 for j in range(n))
    enc = Cipher(algorithms.AES(check_key), modes.ECB()).encryptor()
    return enc.update(blocks) + enc.finalize()


def _as_result(o: Any) -> Result[Any]:
    return Result.from_error(o) if isinstance(o, LockkitError) else Result(o)
