"""The OpenBao key service: the *server* enforces the lock.

In this mode the "CTS token" is the OpenBao token obtained by logging in with the user's
verified identity JWT (JWT auth, a CEL role). An ACL policy templated on the identity lets that
token use only the user's own transit key, ``lkx-<hex(sub)>`` (injective and case-safe for any
``sub``). The app never holds a token that can use another user's key.

Envelope encryption, bulk-first (see ``../shared/reference/openbao.md`` §6, §9):

* encrypt: one ``transit/datakey/plaintext`` call per batch gives a fresh 256-bit data key (DEK)
  and its wrapped form; column keys are derived locally with HKDF(DEK, workspace, keyset,
  table, column, key name); the wrapped DEK is the payload's key id.
* decrypt: the distinct wrapped DEKs of a batch are unwrapped with ``transit/decrypt``
  ``batch_input`` calls of at most ``max_batch`` items. Unwrapped DEKs are cached briefly, per
  token (so a cache hit still requires that subject's live token).
* search terms: ``transit/hmac`` (key version 1, so terms survive rotation) of a per-column
  label gives deterministic, per-user index keys; one call per batch.

OpenBao only ever sees 32-byte keys, never values. Every call has a timeout; only connection
errors and 5xx are retried; a 403 is a ``LockContextError`` and is never retried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..audit import AuditError, Auditor, record_release
from ..config import OpenBaoConfig
from ..cts.embedded import CtsUnavailableError, verify_identity_jwt
from ..errors import (
    CtsTokenError,
    DecryptionError,
    EncryptionError,
    LockContextError,
    LockkitError,
)
from ..identity import EXPIRED_MESSAGE, CtsToken
from ..oidc import IssuerRouter, TokenVerifier, deadline_session
from . import ColumnKey, KeyRequest, Lock, screen_all
from .keyring import canonical

TOKEN_PREFIX = "lkbao1."
MIN_TOKEN_SECONDS = 5


def key_name(config: OpenBaoConfig, sub: str) -> str:
    """The user's transit key: ``lkx-<hex(utf-8 sub)>`` (CEL role), or ``lk-<sub>`` (plain
    role, only for subjects that fit OpenBao's key-name rules and never differ only in case).

    :raises LockContextError: a subject the plain role cannot name safely; under either role,
        one that is not UTF-8 text (a lone surrogate, which OpenBao reads as U+FFFD) or holds
        U+FFFD (so ``"\\ud800x"`` and ``"\\ufffdx"`` never share a key).
    """
    if "\ufffd" in sub:
        raise LockContextError("this subject holds U+FFFD: it cannot name an OpenBao key")
    try:
        utf8 = sub.encode()
    except UnicodeEncodeError:
        raise LockContextError("this subject is not valid Unicode (a lone surrogate): it cannot name a key") from None
    if config.login == "cel":
        return config.key_prefix + utf8.hex()
    ok = sub and all(c.isascii() and (c.isalnum() or c in "_.-") for c in sub) and sub[0] not in ".-" and sub[-1] not in ".-"
    if not ok or ".." in sub:
        raise LockContextError(
            "this subject cannot name an OpenBao key under the plain JWT role; use the CEL role (login='cel')"
        )
    return config.key_prefix + sub


def subject_of(config: OpenBaoConfig, key: str) -> str | None:
    """The subject a key name belongs to (inverse of :func:`key_name`), or ``None``."""
    if not key.startswith(config.key_prefix):
        return None
    rest = key[len(config.key_prefix):]
    if config.login != "cel":
        return rest or None
    try:
        sub = bytes.fromhex(rest).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return sub if sub and "\ufffd" not in sub else None


class BaoError(Exception):
    def __init__(self, status: int, errors: list[str], doc: dict[str, Any] | None = None) -> None:
        super().__init__(f"OpenBao {status}: {'; '.join(errors)[:300]}")
        self.status = status
        self.errors = errors
        #: the response's JSON body (a batch call answers 400 with per-item results in it)
        self.doc = doc


class BaoUnavailable(Exception):
    pass


class OpenBaoHTTP:
    """Minimal OpenBao HTTP client: timeouts, retries only on connection errors and 5xx."""

    def __init__(self, config: OpenBaoConfig, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        if session is None:
            # OpenBao is addressed explicitly (LOCKKIT_OPENBAO_ADDR, LOCKKIT_OPENBAO_CA_CERT): do
            # not consult proxy or CA-bundle variables on every call (it also costs ~1 ms); an
            # answer's status line and headers arrive within twice the timeout
            session = deadline_session(trust_env=False)
        self._session = session
        if config.ca_cert:
            self._session.verify = config.ca_cert
        self._sleep = sleep
        self.requests = 0

    def call(self, method: str, path: str, *, token: str | None = None, body: Any = None,
             idempotent: bool = True) -> dict[str, Any]:
        """One API call. Retried (with backoff, honouring ``Retry-After``) on connection errors,
        5xx, 429 and 307; a call that is not ``idempotent`` (a login: each one creates a token)
        only when the connection was never made."""
        url = f"{self.config.addr.rstrip('/')}/v1/{path}"
        headers = {"X-Vault-Token": token} if token else {}
        delay = self.config.backoff
        last: Exception | None = None
        for attempt in range(1 + self.config.retries):
            if attempt:
                self._sleep(delay)
                delay = min(delay * 2, 2.0)
            try:
                self.requests += 1
                resp = self._session.request(method, url, json=body, headers=headers,
                                             timeout=self.config.timeout, allow_redirects=False)
            except requests.RequestException as err:
                if not idempotent and not _never_sent(err):
                    raise BaoUnavailable(f"OpenBao at {self.config.addr} did not answer ({type(err).__name__})") from err
                last = err
                continue
            if resp.status_code >= 500 or resp.status_code in (307, 429):
                last = BaoError(resp.status_code, _errors(resp))
                if not idempotent:
                    raise BaoUnavailable(f"OpenBao at {self.config.addr} answered {resp.status_code}") from last
                delay = max(delay, _retry_after(resp))
                continue
            if resp.status_code >= 400:
                raise BaoError(resp.status_code, _errors(resp), _json_body(resp))
            if resp.status_code == 204 or not resp.content:
                return {}
            try:
                doc = resp.json()
            except ValueError as err:
                raise BaoError(resp.status_code, ["response is not JSON"]) from err
            return doc if isinstance(doc, dict) else {}
        raise BaoUnavailable(f"OpenBao at {self.config.addr} is unreachable ({type(last).__name__}: {str(last)[:200]})")


def _never_sent(err: requests.RequestException) -> bool:
    """True when the request surely never reached the server (refused, or no connection in
    time): safe to send again even if it is not idempotent."""
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return True
    return isinstance(err, requests.exceptions.ConnectionError) and "NewConnectionError" in repr(err)


def _retry_after(resp: requests.Response) -> float:
    """``Retry-After`` in seconds (capped at 5), or 0."""
    try:
        return min(max(float(resp.headers.get("Retry-After", "0")), 0.0), 5.0)
    except ValueError:
        return 0.0


def _json_body(resp: requests.Response) -> dict[str, Any] | None:
    try:
        doc = resp.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _errors(resp: requests.Response) -> list[str]:
    try:
        errs = resp.json().get("errors", [])
        return [str(e) for e in errs] if isinstance(errs, list) else [str(errs)]
    except (ValueError, AttributeError):
        return [resp.text[:200]]


def _data(doc: dict[str, Any] | None) -> dict[str, Any]:
    """A response's ``data`` object (``{}`` when absent).

    :raises BaoError: 502, it is not an object (a proxy or another service answered).
    """
    data = (doc or {}).get("data")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BaoError(502, ["malformed response: data is not an object"])
    return data


def _batch_results(doc: dict[str, Any] | None, count: int) -> list[dict[str, Any]]:
    """A batch response's ``batch_results``: one object per item sent.

    :raises BaoError: 502, anything else.
    """
    results = _data(doc).get("batch_results")
    if not isinstance(results, list) or len(results) != count or not all(isinstance(r, dict) for r in results):
        raise BaoError(502, ["malformed batch response"])
    return results


def encode_token(bao_token: str, key: str, sub: str) -> str:
    """The CTS token's access token in OpenBao mode: the OpenBao client token plus the key it
    may use (the server enforces that pairing; a tampered key name just gets a 403)."""
    doc = json.dumps({"t": bao_token, "k": key, "s": sub}, separators=(",", ":")).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(doc).decode().rstrip("=")


def _token_id(bao: str, key: str) -> bytes:
    """What the data-key caches are keyed by: the OpenBao token and the key it was used with."""
    return hashlib.sha256(f"{bao}\x00{key}".encode()).digest()


def decode_token(access_token: str) -> tuple[str, str, str]:
    """``(openbao token, key name, subject)`` from an OpenBao-mode CTS token.

    :raises LockContextError: not such a token.
    """
    if not isinstance(access_token, str) or not access_token.startswith(TOKEN_PREFIX):
        raise LockContextError("this CTS token was not issued for the OpenBao key service")
    body = access_token[len(TOKEN_PREFIX):]
    try:
        doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        t, k, s = doc["t"], doc["k"], doc["s"]
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise LockContextError("CTS token rejected: malformed") from err
    if not all(isinstance(x, str) and x for x in (t, k, s)):
        raise LockContextError("CTS token rejected: malformed")
    return t, k, s


class OpenBaoTokenService:
    """Exchanges a verified identity JWT for an OpenBao token (the CTS token in this mode).

    lockkit verifies the JWT itself first (pinned algorithms, issuer, audience...) so that a
    bad token is refused before any network call and the session knows the subject; OpenBao
    verifies it again at login with its own JWKS.
    """

    def __init__(self, config: OpenBaoConfig, verifiers: Sequence[TokenVerifier], *,
                 http: OpenBaoHTTP | None = None) -> None:
        self.config = config
        self._router = IssuerRouter(list(verifiers)) if verifiers else None
        self.http = http or OpenBaoHTTP(config)
        self.calls = 0

    def authorize(self, idp_jwt: str, now: float | None = None) -> CtsToken:
        """:raises CtsTokenError: the JWT was rejected (by lockkit or OpenBao);
        :class:`CtsUnavailableError` when OpenBao or the IdP's keys are unreachable."""
        self.calls += 1
        now = time.time() if now is None else now
        _, claims = verify_identity_jwt(self._router, idp_jwt, now)
        sub = claims["sub"]
        try:
            key = key_name(self.config, sub)
        except LockContextError as err:
            raise CtsTokenError(f"The JWT was rejected: {err.message}") from err
        path = f"auth/{self.config.auth_mount}/{'cel/login' if self.config.login == 'cel' else 'login'}"
        try:
            doc = self.http.call("POST", path, body={"role": self.config.role, "jwt": idp_jwt}, idempotent=False)
        except BaoUnavailable as err:
            raise CtsUnavailableError(f"CTS unavailable: {err}") from err
        except BaoError as err:
            raise CtsTokenError(f"The JWT was rejected by OpenBao ({err.status})") from err
        auth = doc.get("auth")
        if not isinstance(auth, dict):
            raise CtsTokenError("OpenBao returned no usable token (no auth object in its answer)")
        token, ttl = auth.get("client_token"), auth.get("lease_duration")
        if not isinstance(token, str) or not token or not isinstance(ttl, int) or ttl < MIN_TOKEN_SECONDS:
            raise CtsTokenError("OpenBao returned no usable token (check the role's TTL settings)")
        # never trust a lifetime beyond the identity token's own expiry
        expiry = min(int(now) + ttl, int(claims["exp"]) if isinstance(claims.get("exp"), int | float) else int(now) + ttl)
        return CtsToken(encode_token(token, key, sub), expiry)

    def revoke(self, cts_token: CtsToken) -> None:
        """Revoke a service token on sign-out (batch tokens cannot be revoked; ignored)."""
        bao, _, _ = decode_token(cts_token.access_token)
        try:
            self.http.call("POST", "auth/token/revoke-self", token=bao)
        except (BaoError, BaoUnavailable):
            pass


class OpenBaoKeyService:
    """Releases keys through OpenBao transit with the user's own token (see module doc)."""

    def __init__(self, config: OpenBaoConfig, workspace_crn: str, *, http: OpenBaoHTTP | None = None,
                 auditor: Auditor | None = None) -> None:
        self.config = config
        self.auditor = auditor
        self.workspace_crn = workspace_crn
        self.http = http or OpenBaoHTTP(config)
        self._lock = threading.Lock()
        self._deks: OrderedDict[tuple[bytes, str], tuple[bytes, float]] = OrderedDict()
        self._column_keys: OrderedDict[tuple[bytes, str, str, str, str], tuple[ColumnKey, float]] = OrderedDict()
        self._dek_cache_size = 10000
        self.release_calls = 0
        self.transit_calls = 0
        #: column keys handed out (observability, tests)
        self.derivations = 0
        self.last_subject: str | None = None

    def release(self, *, keyset: str, lock: Lock | None, requests: Sequence[KeyRequest],
                now: float | None = None) -> list[ColumnKey | LockkitError]:
        decrypting = any(r.purpose == "decrypt" for r in requests)
        err_cls: type[LockkitError] = DecryptionError if decrypting else EncryptionError
        unlocked_msg = "the OpenBao key service encrypts under each user's own key: use a lock context"
        if lock is None:
            raise err_cls(unlocked_msg)
        if lock.claim_names != ("sub",):
            raise LockContextError("the OpenBao key service locks to ('sub',) only; enforce scopes with OpenBao roles")
        now = time.time() if now is None else now
        try:
            if lock.token.is_expired(now):
                raise LockContextError(EXPIRED_MESSAGE)
            bao, key, claimed = decode_token(lock.token.access_token)
            # the subject is the one OpenBao binds the token to: the key name's identity (the
            # "s" field is only a convenience and must agree)
            sub = subject_of(self.config, key)
            if sub is None or not hmac.compare_digest(sub.encode(), claimed.encode()):
                raise LockContextError("CTS token rejected: its subject does not match its key")
        except LockContextError as err:
            self._audit_denial(keyset, requests, None, err.message, now)
            raise
        with self._lock:
            self.release_calls += 1
            self.last_subject = sub
        # cached data keys belong to (OpenBao token, key name): only OpenBao checks that a token
        # may use a key, so a hit must be for the pair OpenBao accepted, not for the token with
        # another key name (or subject) written into the CTS token
        token_id = _token_id(bao, key)
        out: list[ColumnKey | LockkitError | None] = [
            None if r.locked else err_cls(unlocked_msg) for r in requests  # per item: one bad item never sinks a batch
        ]
        live = [r.locked for r in requests]
        try:
            enc = [i for i, r in enumerate(requests) if r.purpose == "encrypt" and live[i]]
            if enc:
                dek, wrapped = self._datakey(bao, key)
                for i in enc:
                    out[i] = self._column_key(wrapped, dek, keyset, requests[i], key)
            dec = [i for i, r in enumerate(requests) if r.purpose == "decrypt" and live[i]]
            if dec:
                deks = self._unwrap(bao, key, token_id, {requests[i].key_id or "" for i in dec}, lock.token.expiry, now)
                for i in dec:
                    wrapped = requests[i].key_id or ""
                    got = deks.get(wrapped)
                    if got is None:
                        out[i] = DecryptionError("the payload's data key could not be unwrapped")
                    elif isinstance(got, LockkitError):
                        out[i] = got
                    else:
                        out[i] = self._cached_column_key(token_id, wrapped, got, keyset, requests[i], key,
                                                         min(now + self.config.dek_cache_ttl, lock.token.expiry), now)
            idx = [i for i, r in enumerate(requests) if r.purpose == "index" and live[i]]
            if idx:
                materials = self._index_keys(bao, key, keyset, [requests[i] for i in idx])
                for i, m in zip(idx, materials):
                    out[i] = ColumnKey("index", m)
        except BaoUnavailable as err:
            self._audit_denial(keyset, requests, None, "key service unavailable", now)
            raise err_cls(f"the key service is unavailable: {err}", retryable=True) from err
        except BaoError as err:
            if err.status == 403:
                self._audit_denial(keyset, requests, None, "OpenBao refused the token (403)", now)
                raise LockContextError(
                    "OpenBao refused this identity's token for the key (expired, revoked, or another "
                    "user's key): call identify again"
                ) from err
            self._audit_denial(keyset, requests, None, f"OpenBao refused the request ({err.status})", now)
            raise err_cls(f"OpenBao refused the request ({err.status}: {'; '.join(err.errors)[:200]})") from err
        results, grants, denials = screen_all(  # release only keys that open something
            requests, [o if o is not None else err_cls("no key released") for o in out])
        if self.auditor is not None:
            record_release(self.auditor, workspace=self.workspace_crn, keyset=keyset, backend="openbao",
                           grants=grants, denials=denials, subject=sub, namespace=None, now=now)
        return results

    def report_denial(self, *, keyset: str, lock: Lock | None, requests: Sequence[KeyRequest], reason: str,
                      now: float | None = None) -> None:
        """Record that released keys did not open values (e.g. locked to another identity)."""
        sub = None
        if lock is not None:  # a token OpenBao accepted in this batch: its key names the subject
            try:
                sub = subject_of(self.config, decode_token(lock.token.access_token)[1])
            except LockContextError:
                pass
        self._audit_denial(keyset, requests, sub, reason, now)

    def _audit_denial(self, keyset: str, requests: Sequence[KeyRequest], sub: str | None, reason: str,
                      now: float | None) -> None:
        if self.auditor is None:
            return
        try:
            self.auditor.record(self.auditor.events(
                workspace=self.workspace_crn, keyset=keyset, backend="openbao", requests=requests,
                outcome="denied", subject=sub, reason=reason, now=now))
        except AuditError:
            pass

    # -- transit calls ---------------------------------------------------------------------
    def _transit(self, op: str, key: str) -> str:
        return f"{self.config.transit_mount}/{op}/{key}"

    def _upserting(self, bao: str, key: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """A transit call on the user's key; on a user's first use (``datakey`` and ``hmac``
        do not create keys: 400 "not found") the user's own token upserts the key with one
        1-byte encrypt (the policy grants ``create`` on encrypt) and the call is retried."""
        self.transit_calls += 1
        try:
            return self.http.call("POST", self._transit(op, key), token=bao, body=body)
        except BaoError as err:
            if err.status != 400 or not any("not found" in e for e in err.errors):
                raise
        self.transit_calls += 2
        self.http.call("POST", self._transit("encrypt", key), token=bao,
                       body={"plaintext": base64.b64encode(b"\0").decode()})
        return self.http.call("POST", self._transit(op, key), token=bao, body=body)

    def _datakey(self, bao: str, key: str) -> tuple[bytes, str]:
        doc = self._upserting(bao, key, "datakey/plaintext", {"bits": 256})
        data = _data(doc)
        try:
            dek = base64.b64decode(data["plaintext"], validate=True)
            wrapped = data["ciphertext"]
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise BaoError(502, ["malformed datakey response"]) from err
        if len(dek) != 32 or not isinstance(wrapped, str):
            raise BaoError(502, ["malformed datakey response"])
        return dek, wrapped

    def _unwrap(self, bao: str, key: str, token_id: bytes, wrapped: set[str], token_expiry: int,
                now: float) -> dict[str, bytes | LockkitError]:
        out: dict[str, bytes | LockkitError] = {}
        todo: list[str] = []
        with self._lock:
            for w in wrapped:
                hit = self._deks.get((token_id, w))
                if hit is not None and hit[1] > now:
                    out[w] = hit[0]
                else:
                    todo.append(w)
        for w in list(todo):
            if not w.startswith("vault:v"):
                out[w] = DecryptionError("this payload was not encrypted by the OpenBao key service")
                todo.remove(w)
        size = self.config.max_batch
        expires = min(now + self.config.dek_cache_ttl, token_expiry)
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            self.transit_calls += 1
            try:
                doc = self.http.call("POST", self._transit("decrypt", key), token=bao,
                                     body={"batch_input": [{"ciphertext": w} for w in chunk]})
            except BaoError as err:
                try:  # a bad item: OpenBao answers 400, but still with every item's result (read below)
                    per_item = _batch_results(err.doc, len(chunk)) if err.status == 400 else None
                except BaoError:
                    per_item = None
                if per_item is not None:
                    doc = err.doc or {}
                elif err.status == 400 and len(chunk) == 1:
                    out[chunk[0]] = DecryptionError("this value is locked to another identity (its data key does not open with this identity's OpenBao key)")
                    continue
                elif err.status == 400:  # no per-item answer: one by one
                    for w in chunk:
                        out.update(self._unwrap(bao, key, token_id, {w}, token_expiry, now))
                    continue
                else:
                    raise
            results = _batch_results(doc, len(chunk))
            for w, r in zip(chunk, results):
                try:
                    if r.get("error"):
                        raise ValueError(r["error"])
                    dek = base64.b64decode(r["plaintext"], validate=True)
                    if len(dek) != 32:
                        raise ValueError("bad length")
                except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
                    out[w] = DecryptionError("this value is locked to another identity (its data key does not open with this identity's OpenBao key)")
                    continue
                out[w] = dek
                with self._lock:
                    self._deks[(token_id, w)] = (dek, expires)
                    while len(self._deks) > self._dek_cache_size:
                        self._deks.popitem(last=False)
        return out

    def _index_keys(self, bao: str, key: str, keyset: str, reqs: list[KeyRequest]) -> list[bytes]:
        labels = [canonical(["index", self.workspace_crn, keyset, r.table, r.column]) for r in reqs]
        doc = self._upserting(bao, key, "hmac", {
            "key_version": 1,
            "batch_input": [{"input": base64.b64encode(label).decode()} for label in labels],
        })
        out = []
        for label, r in zip(labels, _batch_results(doc, len(labels))):
            mac = r.get("hmac")
            try:
                if not isinstance(mac, str) or not mac.startswith("vault:v1:"):
                    raise ValueError("not a version 1 hmac")
                secret = base64.b64decode(mac.split(":", 2)[2], validate=True)
            except (ValueError, binascii.Error) as err:
                raise BaoError(502, ["malformed hmac response"]) from err
            if not secret:
                raise BaoError(502, ["malformed hmac response"])
            out.append(HKDF(hashes.SHA256(), 64, b"lockkit/openbao/index", label).derive(secret))
        return out

    def _cached_column_key(self, token_id: bytes, wrapped: str, dek: bytes, keyset: str, req: KeyRequest, key: str,
                           expires: float, now: float) -> ColumnKey:
        """Column keys of unwrapped data keys, cached like the data keys: per token (a hit
        still needs that subject's live token) and never past the data key's cache expiry."""
        ck = (token_id, wrapped, keyset, req.table, req.column)
        with self._lock:
            hit = self._column_keys.get(ck)
            if hit is not None and hit[1] > now:
                self.derivations += 1
                return hit[0]
        made = self._column_key(wrapped, dek, keyset, req, key)
        with self._lock:
            self._column_keys[ck] = (made, expires)
            while len(self._column_keys) > self._dek_cache_size:
                self._column_keys.popitem(last=False)
        return made

    def _column_key(self, wrapped: str, dek: bytes, keyset: str, req: KeyRequest, key: str) -> ColumnKey:
        self.derivations += 1
        label = canonical(["data", self.workspace_crn, keyset, req.table, req.column, key])
        return ColumnKey(wrapped, HKDF(hashes.SHA256(), 64, b"lockkit/openbao/data", label).derive(dek), aad_id="openbao")

    def forget(self, cts_token: CtsToken) -> None:
        """Drop cached data keys of a token (sign-out, identity switch)."""
        bao, key, _ = decode_token(cts_token.access_token)
        tid = _token_id(bao, key)
        with self._lock:
            for k in [k for k in self._deks if k[0] == tid]:
                del self._deks[k]
            for ck in [ck for ck in self._column_keys if ck[0] == tid]:
                del self._column_keys[ck]

    def __repr__(self) -> str:
        return f"OpenBaoKeyService(addr={self.config.addr!r})"
