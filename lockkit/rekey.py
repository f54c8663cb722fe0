"""Key lifecycle: move stored payloads onto the newest key (rekey), for any storage.

A payload names the key it was sealed under (``kid``) but not the identity it is locked to:
its keys are bound to the owner's verified identity, so moving it needs either the owner's
lock context or a key service that can re-wrap without one.

* **local keyring** (embedded mode): :func:`rekey_local` decrypts and re-encrypts a batch under
  the keyring's primary version with the *owner's* lock context: one bulk decrypt and one bulk
  encrypt (per table) per batch, typed values preserved. In embedded mode the app process holds
  the keyring and can mint CTS tokens for any identity (see the threat model), so an operator's
  tool may mint one per owner; every such key release is audited like any other, with the owner
  as subject and ``actor="rekey"`` in the event metadata. Search terms (``hm``/``bf``) come from
  the non-rotating index root, so they are unchanged: equality search finds rows before, during
  and after a rekey (checked for every payload: a term that would change aborts the batch).
* **OpenBao**: :func:`rekey_openbao` asks ``transit/rewrap`` (``batch_input``, chunked to
  ``max_batch``) to re-wrap each payload's data key under the newest version of the owner's
  transit key, with the app's service token (policy ``lockkit-app``): no user token, and
  nobody sees a data key or plaintext. Only ``kid`` changes (the associated data names the
  constant ``"openbao"``). OpenBao's own audit device records these calls; lockkit's key
  release events are not involved because no key is released.

:class:`RekeyJob` drives either over a :class:`RekeyStorage` adapter in batches: each batch is
written in one transaction, so a run killed at any point leaves every row fully old or fully
new; running again finishes the rest (rows already on the current key are not touched).

``current kid``: for the local keyring ``str(keyring.primary)`` (:func:`local_current_kid`);
for OpenBao the prefix ``vault:v<latest>:`` of the owner's key (:func:`openbao_current_kid`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import DecryptionError, LockContextError, LockkitError

if TYPE_CHECKING:
    from .client import Encryption
    from .config import OpenBaoConfig
    from .identity import LockContext
    from .keys.keyring import Keyring
    from .keys.openbao import OpenBaoHTTP

Payload = dict[str, Any]
RowId = Hashable
Row = tuple[RowId, dict[str, Payload]]

#: audit metadata of every key release a rekey makes
AUDIT_ACTOR = "rekey"
_BAO_KID = re.compile(r"vault:v([1-9][0-9]{0,8}):")


class RekeyError(LockkitError):
    """A rekey batch could not be completed; nothing of that batch was written."""

    failure_type = "EncryptionError"


# -- which key is current -------------------------------------------------------------------
def local_current_kid(keyring: Keyring) -> str:
    """The key id new payloads get from a local keyring: its primary version."""
    return str(keyring.primary)


def openbao_latest_version(http: OpenBaoHTTP, app_token: str, config: OpenBaoConfig, key: str) -> int:
    """The latest version of transit key ``key`` (``GET transit/keys/<key>`` with the app's
    token: the ``lockkit-app`` policy may read key metadata).

    :raises RekeyError: the key does not exist, or OpenBao answered something unusable.
    :raises LockContextError: the token may not read the key's metadata (403).
    """
    from .keys.openbao import BaoError, BaoUnavailable

    try:
        doc = http.call("GET", f"{config.transit_mount}/keys/{key}", token=app_token)
    except BaoUnavailable as err:
        raise RekeyError(f"OpenBao is unreachable: {err}", retryable=True) from err
    except BaoError as err:
        if err.status == 403:
            raise LockContextError(f"the app token may not read transit key {key} (policy lockkit-app?)") from err
        if err.status == 404:
            raise RekeyError(f"transit key {key} does not exist") from err
        raise RekeyError(f"OpenBao refused to read transit key {key} ({err.status})") from err
    latest = (doc.get("data") or {}).get("latest_version")
    if isinstance(latest, bool) or not isinstance(latest, int) or latest < 1:
        raise RekeyError(f"OpenBao returned no latest_version for transit key {key}")
    return latest


def openbao_current_kid(http: OpenBaoHTTP, app_token: str, config: OpenBaoConfig, key: str) -> str:
    """``vault:v<latest>:``, the prefix of every data key wrapped under ``key``'s newest version.

    :raises RekeyError | LockContextError: see :func:`openbao_latest_version`.
    """
    return f"vault:v{openbao_latest_version(http, app_token, config, key)}:"


# -- payload inspection --------------------------------------------------------------------
def payload_kid(payload: Any) -> str:
    """The key id a payload (dict or JSON text) records.

    :raises DecryptionError: not a lockkit payload.
    """
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise DecryptionError("not a lockkit payload: invalid JSON") from err
    if not isinstance(payload, Mapping) or payload.get("k") != "ct" or not isinstance(payload.get("kid"), str):
        raise DecryptionError("not a lockkit payload: no key id")
    kid: str = payload["kid"]
    return kid


def _as_dicts(payloads: Sequence[Any]) -> tuple[list[Payload | None], list[bool]]:
    """Payloads given as dicts or as JSON text (as a text column holds them), each as a dict,
    and which were text (they are given back as text).

    :raises DecryptionError: an item is neither ``None``, a dict nor a payload's JSON text.
    """
    items: list[Payload | None] = []
    texts: list[bool] = []
    for p in payloads:
        text = isinstance(p, str | bytes)
        if text:
            try:
                p = json.loads(p)
            except (ValueError, UnicodeDecodeError, RecursionError) as err:
                raise DecryptionError("rekey: not a lockkit payload: invalid JSON") from err
        if p is not None and not isinstance(p, Mapping):
            raise DecryptionError(f"rekey: not a lockkit payload: a {type(p).__name__}")
        items.append(None if p is None else dict(p))
        texts.append(text)
    return items, texts


def _as_given(out: list[Payload | None], texts: list[bool]) -> list[Payload | str | None]:
    return [json.dumps(p, separators=(",", ":")) if t and p is not None else p for p, t in zip(out, texts)]


def kid_label(kid: str) -> str:
    """A key id as people count it: the local version (``"2"``), or ``vault:v2`` for an
    OpenBao-wrapped data key (the version of the owner's own transit key)."""
    m = _BAO_KID.match(kid)
    return f"vault:v{m.group(1)}" if m else kid


def kid_version(kid: str) -> int | None:
    """The key version a key id names (local ``"3"`` or OpenBao ``vault:v3:...``), else None."""
    m = _BAO_KID.match(kid)
    if m:
        return int(m.group(1))
    if kid.isascii() and kid.isdigit() and len(kid) <= 9 and str(int(kid)) == kid and int(kid) >= 1:
        return int(kid)
    return None


def needs_rekey(payload: Any, current_kid: str) -> bool:
    """True when ``payload`` is not under the current key. ``current_kid`` is a local key id
    (``"2"``: exact match) or an OpenBao prefix (``"vault:v2:"``: prefix match). ``None``
    (a NULL column) never needs a rekey.

    :raises DecryptionError: ``payload`` is not a lockkit payload (fail closed: never guess).
    """
    if payload is None:
        return False
    kid = payload_kid(payload)
    if _BAO_KID.fullmatch(current_kid):
        return not kid.startswith(current_kid)
    return kid != current_kid


# -- the local keyring: decrypt + re-encrypt with the owner's lock context ----------------------
def rekey_local(
    client: Encryption,
    payloads: Sequence[Payload | str | bytes | None],
    lock_context: LockContext | None,
    *,
    records: Sequence[object] = (),
) -> list[Payload | str | None]:
    """Re-encrypt ``payloads`` (dicts, or JSON text: given back as text) under the key the
    client's key service encrypts with now (the keyring's primary). Locked payloads need the
    owner's ``lock_context`` (the claims they are locked to); payloads without ``lc`` are
    re-encrypted without one, as they were. One bulk decrypt and one bulk encrypt per table
    (locked and unlocked values separately); typed values, ``i``, ``ks``, ``lc`` and ``hm`` are
    preserved exactly, and ``bf`` is written by the current tokenizer. ``None`` stays None.
    Key releases are audited with ``records`` and ``actor="rekey"``.

    All or nothing: any payload that does not open, or would come out different in anything
    but its ciphertext, key id and match filter, fails the whole batch.

    :raises DecryptionError | LockContextError | EncryptionError: a payload did not open (the
        message says why), the lock context is missing or expired, or encryption failed.
    :raises RekeyError: a search term would change (a bug or a mismatched keyring).
    """
    items, texts = _as_dicts(payloads)
    live = [i for i, p in enumerate(items) if p is not None]
    out: list[Payload | None] = [None] * len(items)
    if not live:
        return _as_given(out, texts)
    decrypt = client.bulk_decrypt([items[i] for i in live]).audit(records=records, actor=AUDIT_ACTOR)
    if lock_context is not None:
        decrypt = decrypt.with_lock_context(lock_context)
    values = decrypt.unwrap()
    # (table, locked) -> [(index into items, field, value)]
    groups: dict[tuple[str, bool], list[tuple[int, str, Any]]] = {}
    for i, res in zip(live, values):
        old = items[i]
        assert old is not None
        if res.failure is not None:
            err = res.failure.to_error()
            raise type(err)(f"rekey: a payload of {_where(old)} did not open: {err.message}", retryable=err.retryable)
        table = client.table(old["i"]["t"])
        field = _field_of(table, old["i"]["c"])
        groups.setdefault((table.table_name, "lc" in old), []).append((i, field, res.data))
    for (table_name, locked), members in groups.items():
        if locked and lock_context is None:
            raise LockContextError("rekey: these payloads are locked to an identity: pass the owner's lock context")
        enc = client.bulk_encrypt_models([{field: value} for _, field, value in members], table_name)
        enc = enc.audit(records=records, actor=AUDIT_ACTOR)
        if locked:
            assert lock_context is not None
            enc = enc.with_lock_context(lock_context)
        models = enc.unwrap()
        for (i, field, _), model in zip(members, models):
            old, new = items[i], model[field]
            assert old is not None
            _check_same_header(old, new)
            out[i] = new
    return _as_given(out, texts)


def _field_of(table: Any, column: str) -> str:
    for field, col in table.columns.items():
        if col.name == column:
            return str(field)
    raise DecryptionError(f"column {column!r} is not in the schema of table {table.table_name!r}")


def _where(p: Mapping[str, Any]) -> str:
    ident = p.get("i")
    return f"{ident.get('t')}.{ident.get('c')}" if isinstance(ident, Mapping) else "a column"


def _check_same_header(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """A rekeyed payload differs only in ``kid`` and ``c`` (and ``bf``): lock claims, table,
    column, keyset and the equality term are what queries and access rely on. The match filter
    is recomputed by the current tokenizer (a lockkit that splits words better writes a better
    filter); it comes from the same index key, which the equality term and decryption prove."""
    for field in ("v", "k", "i", "ks", "lc", "hm"):
        if old.get(field) != new.get(field):
            raise RekeyError(
                f"rekey: {_where(old)} would change its {field!r} field (search terms must not depend on "
                "the root key version; is the client on another keyset or keyring?)"
            )


# -- OpenBao: rewrap the data keys with the app's token ---------------------------------------
def rekey_openbao(
    http: OpenBaoHTTP,
    app_token: str,
    config: OpenBaoConfig,
    payloads: Sequence[Payload | str | bytes | None],
    *,
    key: str,
    records: Sequence[object] = (),
) -> list[Payload | str | None]:
    """Re-wrap each distinct data key (``kid``) of ``payloads`` (dicts, or JSON text: given back
    as text) under the newest version of the
    owner's transit key ``key`` (the payload does not name it: the caller knows the owner,
    ``key_name(config, sub)``), with ``transit/rewrap/<key>`` ``batch_input`` calls of at most
    ``config.max_batch`` items. Only ``kid`` changes. Never sees a data key or plaintext.
    ``records`` is accepted for symmetry with :func:`rekey_local` (OpenBao audits the calls).

    All or nothing: if any data key does not re-wrap (another owner's payload, a trimmed key
    version), nothing is returned.

    :raises DecryptionError: a payload was not sealed by the OpenBao key service.
    :raises LockContextError: the token may not rewrap under ``key`` (403).
    :raises RekeyError: OpenBao refused or failed (the message says how many and why).
    """
    from .keys.openbao import BaoError, BaoUnavailable

    del records
    items, texts = _as_dicts(payloads)
    kids: list[str] = []
    seen: set[str] = set()
    for p in items:
        if p is None:
            continue
        kid = payload_kid(p)
        if not _BAO_KID.match(kid):
            raise DecryptionError(f"rekey: a payload of {_where(p)} was not sealed by the OpenBao key service")
        if kid not in seen:
            seen.add(kid)
            kids.append(kid)
    rewrapped: dict[str, str] = {}
    path = f"{config.transit_mount}/rewrap/{key}"
    for start in range(0, len(kids), config.max_batch):
        chunk = kids[start : start + config.max_batch]
        try:
            doc = http.call("POST", path, token=app_token, body={"batch_input": [{"ciphertext": k} for k in chunk]})
        except BaoUnavailable as err:
            raise RekeyError(f"OpenBao is unreachable: {err}", retryable=True) from err
        except BaoError as err:
            if err.status == 403:
                raise LockContextError(f"the app token may not rewrap under transit key {key} (policy lockkit-app?)") from err
            raise RekeyError(
                f"OpenBao could not rewrap {len(chunk)} data key(s) under {key} ({err.status}): are they this "
                f"owner's? ({'; '.join(err.errors)[:200]})"
            ) from err
        results = (doc.get("data") or {}).get("batch_results")
        if not isinstance(results, list) or len(results) != len(chunk):
            raise RekeyError("OpenBao returned a malformed rewrap response")
        for old, r in zip(chunk, results):
            new = r.get("ciphertext") if isinstance(r, dict) else None
            if not isinstance(new, str) or not _BAO_KID.match(new) or (isinstance(r, dict) and r.get("error")):
                raise RekeyError(f"OpenBao could not rewrap a data key under {key}")
            rewrapped[old] = new
    return _as_given([None if p is None else {**p, "kid": rewrapped[p["kid"]]} for p in items], texts)


# -- a resumable job over any storage -------------------------------------------------------
class RekeyStorage(Protocol):
    """Where the payloads live. Row ids are opaque (hashable) to the job.

    ``pending(batch_size)``: up to ``batch_size`` rows with at least one payload not on the
    current key, as ``(row_id, {field: payload})`` (every encrypted field of the row, so a row
    is moved whole). Return ``[]`` when there are none left. An adapter may page with a cursor
    (each row once per run) or re-query by key id; either way a row already moved must not
    come back.

    ``write(rows)``: store a batch of rekeyed rows (same ids and fields) in ONE transaction,
    so a crash leaves the batch all old or all new. Compare-and-swap against the payloads
    ``pending`` returned and skip a row that changed meanwhile (the app rewrote it); return how
    many rows were written.
    """

    def pending(self, batch_size: int) -> list[Row]: ...

    def write(self, rows: list[Row]) -> int: ...


class Rekey(Protocol):
    """Rekeys a batch of payloads (see :func:`rekey_local`, :func:`rekey_openbao`)."""

    def __call__(self, payloads: list[Payload], *, records: Sequence[object]) -> list[Payload]: ...


@dataclass
class RekeyReport:
    """What a run did: rows written, payloads moved, rows skipped because they changed."""

    rows: int = 0
    payloads: int = 0
    batches: int = 0
    changed_meanwhile: int = 0


class RekeyJob:
    """Move every pending row of ``storage`` to ``current_kid`` in batches.

    :param rekey: rekeys a list of payloads (``records=`` names the batch's rows for audit).
    :param current_kid: see :func:`needs_rekey`.
    :param progress: called after each batch with ``(rows done, total)``; ``total`` is the
        caller's estimate (``None`` if unknown).
    """

    def __init__(
        self,
        storage: RekeyStorage,
        rekey: Rekey,
        current_kid: str,
        *,
        batch_size: int = 100,
        progress: Callable[[int, int | None], None] | None = None,
        total: int | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be a positive integer")
        self.storage = storage
        self.rekey = rekey
        self.current_kid = current_kid
        self.batch_size = batch_size
        self.progress = progress
        self.total = total

    def run(self) -> RekeyReport:
        """Run until no row is pending. Idempotent: a second run finds nothing to do.

        :raises LockkitError: a batch failed (nothing of it was written; rows of earlier
            batches stay moved; run again after fixing the cause).
        """
        report = RekeyReport()
        done_ids: set[RowId] = set()
        while True:
            rows = self.storage.pending(self.batch_size)
            if not rows:
                return report
            slots: list[tuple[int, str]] = []
            old: list[Payload] = []
            for n, (row_id, fields) in enumerate(rows):
                if row_id in done_ids:
                    raise RekeyError(f"storage returned row {row_id!r} again after it was rekeyed in this run")
                for field, payload in fields.items():
                    if needs_rekey(payload, self.current_kid):
                        slots.append((n, field))
                        old.append(payload)
            new = self.rekey(old, records=[str(r[0]) for r in rows]) if old else []
            if len(new) != len(old):
                raise RekeyError("rekey returned a different number of payloads")
            out: list[Row] = [(row_id, dict(fields)) for row_id, fields in rows]
            for (n, field), payload in zip(slots, new):
                if needs_rekey(payload, self.current_kid):
                    raise RekeyError(
                        f"the key service encrypts under key {kid_label(payload_kid(payload))}, not the current key "
                        f"{kid_label(self.current_kid)} (restart the app after rotating, then run again)"
                    )
                out[n][1][field] = payload
            written = self.storage.write(out)
            done_ids.update(r[0] for r in rows)
            report.batches += 1
            report.rows += written
            report.payloads += len(old)
            report.changed_meanwhile += len(rows) - written
            if self.progress is not None:
                self.progress(len(done_ids), self.total)


__all__ = [
    "AUDIT_ACTOR",
    "RekeyError",
    "RekeyJob",
    "RekeyReport",
    "RekeyStorage",
    "kid_label",
    "kid_version",
    "local_current_kid",
    "needs_rekey",
    "openbao_current_kid",
    "openbao_latest_version",
    "payload_kid",
    "rekey_local",
    "rekey_openbao",
]
