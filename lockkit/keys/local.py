"""The local key service: keys derived from the keyring, bound to the verified identity."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..audit import AuditError, Auditor, record_release
from ..errors import DecryptionError, LockContextError, LockkitError
from ..oidc import Claims
from . import ColumnKey, KeyRequest, Lock, screen_all
from .keyring import Keyring, canonical


def claim_value(claims: Claims, name: str) -> Any:
    """The value of lock claim ``name`` in verified CTS claims.

    :raises LockContextError: the token does not carry the claim.
    """
    if name == "sub":
        return claims["sub"]
    if name == "scopes":
        return sorted(set(claims.get("scopes", [])))
    ctx = claims.get("ctx", {})
    if name not in ctx:
        raise LockContextError(
            f"The lock context names the claim {name!r}, which the CTS token does not carry "
            "(the identity token lacks it, or it is not listed in [cts] claims)"
        )
    value = ctx[name]
    if _is_empty(value):
        # null or empty is no identity: every user without the claim would share the lock
        raise LockContextError(
            f"The CTS token's claim {name!r} is null or empty, so it cannot lock a value to an "
            "identity (lock to another claim, or give the user a value for it)"
        )
    return value


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def identity_binding(claims: Claims, claim_names: Sequence[str]) -> list[Any]:
    """What keys are bound to: the identity namespace, then each claim's name and value.

    :raises LockContextError: a claim is absent, null or empty, or the lock names only
        ``scopes`` and the token has none (no identity left to lock to)."""
    pairs = [[n, claim_value(claims, n)] for n in claim_names]
    if all(_is_empty(v) for _, v in pairs):
        raise LockContextError(
            f"The lock context's claims {list(claim_names)} are all empty in the CTS token: no "
            "identity to lock to (lock to sub, or to a claim the user has a value for)"
        )
    return [claims["idp"], pairs]


def _kid_version(kid: str) -> int:
    """The key version a local payload's key id names, or 0: canonical decimal only (no "01",
    " 1", "+1"). Valid ones are remembered (a store holds few distinct versions)."""
    version = int(kid) if kid.isascii() and kid.isdigit() and len(kid) <= 9 else 0
    if str(version) != kid or version < 1:
        return 0
    if len(_KIDS) < 256:
        _KIDS[kid] = version
    return version


_KIDS: dict[str, int] = {}


class LocalKeyService:
    """Derives keys from a :class:`Keyring` with HKDF; verifies CTS tokens with ``verifier``.

    ``verifier`` is anything with ``verify(access_token, now=None) -> claims`` that raises
    ``LockContextError`` (the embedded CTS's :class:`~lockkit.cts.CtsVerifier`, or one that
    trusts a remote CTS's JWKS).
    """

    def __init__(self, keyring: Keyring, verifier: Any, *, cache_size: int = 4096, auditor: Auditor | None = None) -> None:
        self.workspace_crn = keyring.workspace_crn
        self.auditor = auditor
        self._cache: OrderedDict[tuple[int | None, tuple[str, str, str, bytes]], ColumnKey] = OrderedDict()
        self._cache_size = cache_size
        self._keyring = keyring
        self._verifier = verifier
        #: (CTS token, claim names) -> (its verified claims, identity binding, canonical form):
        #: reused while the verifier returns the same verified claims for the token
        self._bindings: dict[tuple[str, tuple[str, ...]], tuple[Claims, list[Any], bytes]] = {}
        self._lock = threading.Lock()
        #: number of release() calls and keys derived (observability, tests)
        self.release_calls = 0
        self.derivations = 0
        self.last_subject: str | None = None

    def release(
        self,
        *,
        keyset: str,
        lock: Lock | None,
        requests: Sequence[KeyRequest],
        now: float | None = None,
    ) -> list[ColumnKey | LockkitError]:
        binding: list[Any] | None = None
        subject: str | None = None
        namespace: str | None = None
        bound = b"null"
        if lock is not None:
            token = lock.token.access_token
            try:
                claims = self._verifier.verify(token, now=now)  # every call: signature (cached), expiry
                known = self._bindings.get((token, lock.claim_names))
                if known is None or known[0] is not claims:
                    found_binding = identity_binding(claims, lock.claim_names)
                    known = (claims, found_binding, canonical(found_binding))
                    if len(self._bindings) >= self._cache_size:
                        self._bindings.clear()
                    self._bindings[(token, lock.claim_names)] = known
                _, binding, bound = known
            except LockContextError as err:
                self._audit_denial(keyset, requests, None, None, err.message, now)
                raise
            subject, namespace = claims["sub"], claims["idp"]
        with self._lock:
            self.release_calls += 1
            self.last_subject = subject
        found: list[ColumnKey | LockkitError] = []
        memo: dict[tuple[str, str, str, str | None, bool], ColumnKey | LockkitError] = {}
        for req in requests:
            if req.locked and binding is None:
                raise LockContextError("a locked key was requested without a lock context")
            memo_key = (req.purpose, req.table, req.column, req.key_id, req.locked)
            got = memo.get(memo_key)
            if got is None:
                got = memo[memo_key] = self._derive(keyset, binding if req.locked else None, req,
                                                    bound if req.locked else b"null")
            found.append(got)
        out, grants, denials = screen_all(requests, found)  # release only keys that open something
        if self.auditor is not None:
            record_release(self.auditor, workspace=self.workspace_crn, keyset=keyset, backend="local",
                           grants=grants, denials=denials, subject=subject, namespace=namespace, now=now)
        return out

    def check_token(self, access_token: str, now: float | None = None) -> None:
        """Would this service accept the CTS token (signature by a key it trusts, workspace,
        expiry)? The Flask kit asks once per stored token and process, so that a token signed by
        a retired key is exchanged again instead of failing every operation.

        :raises LockContextError: it would not (the message says why).
        """
        self._verifier.verify(access_token, now=now)

    def report_denial(self, *, keyset: str, lock: Lock | None, requests: Sequence[KeyRequest], reason: str,
                      now: float | None = None) -> None:
        """Record that released keys did not open values (e.g. locked to another identity).
        The subject comes from the verified token."""
        subject = namespace = None
        if lock is not None:
            try:
                claims = self._verifier.verify(lock.token.access_token, now=now)
                subject, namespace = claims["sub"], claims["idp"]
            except LockContextError:
                pass
        self._audit_denial(keyset, requests, subject, namespace, reason, now)

    def _audit_denial(self, keyset: str, requests: Sequence[KeyRequest], subject: str | None,
                      namespace: str | None, reason: str, now: float | None) -> None:
        if self.auditor is None:
            return
        try:
            self.auditor.record(self.auditor.events(
                workspace=self.workspace_crn, keyset=keyset, backend="local", requests=requests,
                outcome="denied", subject=subject, namespace=namespace, reason=reason, now=now))
        except AuditError:
            pass  # the operation is refused anyway; the sink's failure is logged by the auditor

    def _derive(self, keyset: str, binding: list[Any] | None, req: KeyRequest, bound: bytes) -> ColumnKey | LockkitError:
        if req.purpose == "index":
            return self._cached(None, "index", "index", keyset, req, binding, bound)
        if req.purpose == "encrypt":
            version = self._keyring.primary
        else:
            kid = req.key_id or ""
            version = _KIDS.get(kid) or _kid_version(kid)
            if not version:
                return DecryptionError(f"payload key id {kid[:40]!r} is not a local key version")
            if not self._keyring.has_version(version):
                return DecryptionError(
                    f"key version {version} is not in this keyring (was it removed, or is this "
                    "another workspace's payload?)"
                )
        return self._cached(version, "data", str(version), keyset, req, binding, bound)

    def _cached(
        self, version: int | None, kind: str, key_id: str, keyset: str, req: KeyRequest,
        binding: list[Any] | None, bound: bytes,
    ) -> ColumnKey:
        """Derived keys are cached (bounded, oldest first out) by version and scope (keyset,
        table, column, canonical identity binding). The binding holds the identity's claim
        values, which only ever come from a verified CTS token, so a cache hit never skips the
        token check."""
        cache_key = (version, (keyset, req.table, req.column, bound))
        got = self._cache.get(cache_key)  # one dict read: atomic, no lock needed
        if got is not None:
            return got
        label = [kind, self.workspace_crn, keyset, req.table, req.column, binding]
        key = ColumnKey(key_id, self._keyring.derive(version, label, 64))
        with self._lock:
            self.derivations += 1
            self._cache[cache_key] = key
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return key

    def __repr__(self) -> str:
        return f"LocalKeyService(workspace_crn={json.dumps(self.workspace_crn)})"
