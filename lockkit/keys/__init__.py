"""Key services: they verify the CTS token and release column keys, one call per batch.

The contract (what the encryption client relies on, whatever the backend):

* ``release(keyset=..., lock=..., requests=[...])`` takes a whole batch of
  :class:`KeyRequest` and returns one entry per request, in order: a :class:`ColumnKey`, or a
  :class:`~lockkit.errors.LockkitError` for a request that cannot be served (e.g. an unknown
  key version) so one bad item does not sink the batch.
* With a :class:`Lock`, the service verifies the CTS token once per batch, reads the values of
  ``lock.claim_names`` *from the verified token*, and binds every released key to them. A
  problem with the lock itself (expired, forged, claim absent) raises ``LockContextError``
  before any key is released.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from ..errors import LockkitError
from ..identity import CtsToken

Purpose = Literal["encrypt", "decrypt", "index"]
_ZERO4 = b"\x00" * 4
#: C's unsigned int is 4 bytes on every platform CPython supports; checked, with a fallback
_GATHER4 = memoryview(_ZERO4).cast("I").itemsize == 4


@dataclass(frozen=True, slots=True)
class Lock:
    """A CTS token and the claim names whose values (from the token) lock the keys."""

    token: CtsToken
    claim_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyRequest:
    table: str
    column: str
    purpose: Purpose
    #: for ``decrypt``: the key id recorded in the payloads
    key_id: str | None = None
    #: how many values the key will serve (for audit)
    count: int = 1
    #: bind the key to the lock's identity (False: a value encrypted without a lock context)
    locked: bool = True
    #: the audit label when it differs from the purpose's (index keys used while encrypting)
    operation: str = ""
    #: for ``decrypt``: the payloads' nonces (12 bytes each) and their key checks
    #: (concatenated, 4 bytes each). The key service releases the key only if it opens at
    #: least one of them, and audits how many it opens.
    probe: tuple[Sequence[bytes], bytes] | None = None


class ColumnKey:
    """Key material for one (table, column, identity) and key version. Never shown in repr.

    For ``encrypt``/``decrypt``: 32 bytes of AEAD key then 32 bytes of key-check key.
    For ``index``: 32 bytes of equality-term key then 32 bytes of match-term key.
    The cipher objects are built once per key and reused (key services cache keys).
    """

    __slots__ = ("key_id", "material", "aad_id", "opened", "_aead", "_check", "_mutex")

    def __init__(self, key_id: str, material: bytes, aad_id: str | None = None) -> None:
        self.key_id = key_id
        self.material = material
        #: what the payload header's associated data names the key by (default: the key id).
        #: OpenBao keys use a constant, so that re-wrapping a data key (a rekey that never sees
        #: plaintext) leaves payloads decryptable; the data key is bound by derivation anyway.
        self.aad_id = key_id if aad_id is None else aad_id
        #: for a key released against a probe: one byte per probed payload, 1 if its key check
        #: matched (the client then need not recompute them)
        self.opened: bytes | None = None
        self._aead: AESGCMSIV | None = None
        self._check: Any = None  # one ECB encryptor, reused (ECB keeps no state between blocks)
        self._mutex = threading.Lock()

    def with_opened(self, opened: bytes) -> ColumnKey:
        """This key (sharing its cipher objects) carrying a probe's result."""
        view: ColumnKey = object.__new__(ColumnKey)  # no __init__: share the cipher objects and mutex
        view.key_id, view.material, view.aad_id, view.opened = self.key_id, self.material, self.aad_id, opened
        view._aead, view._check, view._mutex = self.aead(), self._check, self._mutex
        return view

    def aead(self) -> AESGCMSIV:
        """AES-256-GCM-SIV under the data key."""
        if self._aead is None:
            self._aead = AESGCMSIV(self.material[:32])
        return self._aead

    def key_checks(self, nonces: Sequence[bytes]) -> bytes:
        """The key checks of values with these 12-byte nonces, concatenated (4 bytes each): the
        first 4 bytes of AES-256(``nonce | 0^32``) under the check key, in one call."""
        if not nonces:
            return b""
        blocks = _ZERO4.join(nonces) + _ZERO4
        if len(blocks) != 16 * len(nonces):
            raise ValueError("key checks need 12-byte nonces")
        with self._mutex:
            if self._check is None:
                self._check = Cipher(algorithms.AES(self.material[32:64]), modes.ECB()).encryptor()
            out: bytes = self._check.update(blocks)
        # the first 4 bytes of every 16-byte block, gathered in C (a 4-byte view, every 4th item)
        if len(out) == 16:
            return out[:4]
        if _GATHER4:
            return memoryview(out).cast("I")[::4].tobytes()
        return b"".join([out[k : k + 4] for k in range(0, len(out), 16)])

    def __repr__(self) -> str:
        return f"ColumnKey(key_id={self.key_id!r}, material=<redacted>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("ColumnKey holds key material and cannot be pickled")


def screen(key: ColumnKey, req: KeyRequest) -> tuple[ColumnKey | LockkitError, int, int]:
    """``(what to release, values it opens, values it does not)``. For a request with a
    probe, the key is released only if it opens at least one payload (by key check), and the
    released key says which (``opened``)."""
    if req.probe is None:
        return key, req.count, 0
    nonces, checks = req.probe
    n = len(nonces)
    mine = key.key_checks(nonces)
    if hmac.compare_digest(mine, checks):  # the usual case: the key opens every value
        return key.with_opened(b"\x01" * n), n, 0
    compare = hmac.compare_digest
    opened = bytes([compare(mine[4 * j : 4 * j + 4], checks[4 * j : 4 * j + 4]) for j in range(n)])
    count = sum(opened)
    if count == 0:
        from ..errors import DecryptionError

        why = "this value is locked to another identity" if req.locked else (
            "this value was encrypted under other keys (another workspace or keyring?)")
        return DecryptionError(why), 0, n
    return key.with_opened(opened), count, n - count


def screen_all(
    requests: Sequence[KeyRequest], found: Sequence[ColumnKey | LockkitError]
) -> tuple[list[ColumnKey | LockkitError], list[KeyRequest], list[tuple[KeyRequest, str]]]:
    """Screen a batch's keys (see :func:`screen`): ``(what to release, the requests granted,
    the requests denied with a reason)``, counts adjusted to the values each key opens. Both
    backends run their keys through this before auditing and releasing them."""
    out: list[ColumnKey | LockkitError] = []
    grants: list[KeyRequest] = []
    denials: list[tuple[KeyRequest, str]] = []
    compare = hmac.compare_digest
    for req, got in zip(requests, found):
        if isinstance(got, LockkitError):
            out.append(got)
            denials.append((req, got.message))
            continue
        probe = req.probe
        if probe is not None and compare(got.key_checks(probe[0]), probe[1]):  # the key opens every value
            out.append(got.with_opened(b"\x01" * len(probe[0])))
            grants.append(req if req.count == len(probe[0]) else replace(req, count=len(probe[0])))
            continue
        released, opened, refused = screen(got, req)
        out.append(released)
        if opened:
            grants.append(req if opened == req.count else replace(req, count=opened))
        if refused:
            denials.append((replace(req, count=refused), "locked to another identity"))
    return out, grants, denials


class KeyService(Protocol):
    """A key service backend (local keyring, OpenBao, ...)."""

    workspace_crn: str

    def release(
        self,
        *,
        keyset: str,
        lock: Lock | None,
        requests: Sequence[KeyRequest],
        now: float | None = None,
    ) -> list[ColumnKey | LockkitError]:
        """Release keys for a batch (see the module docstring).

        :raises LockContextError: the lock's CTS token is expired, forged or lacks a claim.
        """
        ...


__all__ = ["ColumnKey", "KeyRequest", "KeyService", "Lock", "Purpose"]
