"""A remote token service (CTS) over HTTP, and the verifier key services use for its tokens.

:class:`RemoteTokenService` is the HTTP client of a CTS: ``lockkit cts serve``
(:mod:`lockkit.cts.server`) or any service speaking the reference product's contract.
:class:`RemoteCtsVerifier` lets a key service on another machine verify the CTS tokens, with the
CTS's public keys fetched from its JWKS.

Wire contract, as the reference product's clients speak it (CipherStash protectjs,
``packages/protect/src/identify/index.ts`` ``LockContext.identify`` and
``packages/nextjs/src/cts/index.ts`` ``fetchCtsToken``; workspace from
``packages/utils/config/index.ts`` ``loadWorkSpaceId``)::

    POST {endpoint}/api/authorize
    Content-Type: application/json
    {"workspaceId": "<workspace id>", "oidcToken": "<the user's IdP JWT>"}
    -> 200 {"accessToken": "<token>", "expiry": <unix seconds>}

* ``workspaceId`` is the bare workspace id: the reference takes it from ``CS_WORKSPACE_ID``, or
  (newer releases) extracts it from ``CS_WORKSPACE_CRN`` with ``crn:[^:]+:([^:]+)$``. This
  client sends the bare id too; lockkit's server accepts the id or the full CRN.
* ``expiry`` is in unix seconds (the reference sets the session cookie to ``expiry * 1000`` ms).
* Refusals: lockkit's server answers JSON ``{"error", "message"}``. The reference CTS answers a
  plain-text body for most refusals (a 401 reads ``Authorization failed: InvalidToken``) and
  JSON ``{"error", "error_description", "cs_code"}`` for a 402 usage refusal, so error bodies
  are read as text once and parsed defensively: ``message``, else ``error_description``, else
  the text itself (trimmed, truncated).

Behaviour: a timeout on every call; only connection errors, timeouts and 5xx are retried
(exponential backoff, capped); a 4xx, a rejected token, is never retried and raises
:class:`~lockkit.errors.CtsTokenError`; the CTS unreachable after every attempt raises
:class:`~lockkit.cts.CtsUnavailableError`. Tokens are never logged or put in messages.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import OKPAlgorithm

from ..config import parse_crn
from ..errors import ConfigurationError, CtsTokenError, LockContextError
from ..identity import CtsToken
from ..oidc import (
    BodyTooLarge,
    BodyTooSlow,
    Claims,
    RefreshSchedule,
    fetch_jwks_document,
    http_client,
    protected_url,
    read_body,
    strict_json_loads,
)
from .embedded import CTS_ALGORITHM, MAX_CTS_TOKEN_BYTES, CtsUnavailableError, CtsVerifier

__all__ = [
    "AUTHORIZE_PATH",
    "JWKS_PATH",
    "RemoteCtsVerifier",
    "RemoteTokenService",
]

AUTHORIZE_PATH: Final = "/api/authorize"
JWKS_PATH: Final = "/.well-known/jwks.json"
MAX_RESPONSE_BYTES: Final = 64 * 1024
MAX_REASON_CHARS: Final = 300
UNREACHABLE_MESSAGE: Final = "The key service cannot verify CTS tokens: token service unreachable"

# Transport failures that are safe to retry: the request may not have been processed, and
# an exchange has no side effect beyond minting a token nobody received.
_RETRYABLE: Final = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def _check_url(url: object, what: str) -> str:
    """``url`` without a trailing slash, if it is https (or http on loopback).

    :raises ConfigurationError: anything else.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"{what} must be a string")
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise ConfigurationError(f"{what} {url!r} is not a valid URL") from err
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"{what} must not carry credentials, a query or a fragment")
    if protected_url(url):
        return url.rstrip("/")
    raise ConfigurationError(f"set {what} to an https:// URL (plain http only on loopback)")


def _positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        raise ConfigurationError(f"{name} must be a number {'>= 0' if allow_zero else '> 0'}")


_TooLarge = BodyTooLarge  # a response body over its limit


def _read_limited(response: requests.Response, limit: int, deadline: float) -> bytes:
    """The body, refusing more than ``limit`` bytes or a body still arriving at ``deadline``
    (``time.monotonic()``; a read timeout bounds each read only, and a server trickling a
    byte per read would otherwise hold the caller for as long as it likes).

    :raises BodyTooLarge: the body is too large.
    :raises requests.exceptions.ReadTimeout: the body took too long (retried like a timeout).
    """
    try:
        return read_body(response, limit, deadline)
    except BodyTooSlow as err:
        raise requests.exceptions.ReadTimeout(str(err)) from err


def _refusal_reason(raw: bytes, secret: str) -> str:
    """A short, printable reason from a refusal body (lockkit's JSON, the reference's JSON or
    plain text), with ``secret`` (the identity token) redacted should the server echo it."""
    text = raw.decode("utf-8", errors="replace").strip()
    reason = text
    try:
        data = strict_json_loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error_description", "error"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                reason = value.strip()
                break
    if secret:
        reason = reason.replace(secret, "<redacted>")
    reason = "".join(ch if ch.isprintable() else " " for ch in reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


class RemoteTokenService:
    """Exchanges identity JWTs for CTS tokens at a remote CTS (implements ``TokenService``).

    :param endpoint: the CTS base URL (``https://``; ``http://`` only on loopback), e.g.
        ``https://cts.internal.example.com``; the reference's ``CS_CTS_ENDPOINT``.
    :param workspace_crn: this app's workspace, ``crn:<region>:<workspace-id>``; the bare id is
        sent as ``workspaceId``.
    :param timeout: seconds allowed to connect, and for each read, in every attempt.
    :param retries: extra attempts after a connection error, timeout or 5xx (never after a 4xx).
    :param backoff: seconds before the first retry; doubles each retry, capped at ``max_backoff``.
    :param session: a ``requests.Session`` to reuse connections (the caller closes it).
    :param sleep: how to wait between attempts (tests pass a recorder).
    :raises ConfigurationError: a bad endpoint, CRN or tuning value.
    """

    def __init__(
        self,
        endpoint: str,
        workspace_crn: str,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = _check_url(endpoint, "the CTS endpoint")
        self.workspace_crn = workspace_crn
        self.workspace_id = parse_crn(workspace_crn)[1]
        _positive("timeout", timeout)
        _positive("backoff", backoff, allow_zero=True)
        _positive("max_backoff", max_backoff, allow_zero=True)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ConfigurationError("retries must be a whole number from 0 to 10")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._session = session
        self._sleep = sleep
        self._lock = threading.Lock()
        #: HTTP attempts made (observability, tests)
        self.attempts = 0

    @property
    def url(self) -> str:
        """The authorize URL, ``{endpoint}/api/authorize``."""
        return self.endpoint + AUTHORIZE_PATH

    @property
    def jwks_url(self) -> str:
        """Where this CTS publishes its public keys (for :class:`RemoteCtsVerifier`)."""
        return self.endpoint + JWKS_PATH

    def __repr__(self) -> str:
        return f"RemoteTokenService(endpoint={self.endpoint!r}, workspace_crn={self.workspace_crn!r})"

    def authorize(self, idp_jwt: str, now: float | None = None) -> CtsToken:
        """Exchange ``idp_jwt`` for a CTS token.

        :raises CtsTokenError: the CTS rejected the JWT (any 4xx; the message carries its coarse
            reason), or answered 200 with something that is not a usable token;
            :class:`CtsUnavailableError` when it could not be reached (connection error,
            timeout or 5xx on every attempt).
        """
        if not isinstance(idp_jwt, str) or not idp_jwt:
            raise CtsTokenError("The JWT was rejected by CTS: no identity token was given")
        if not idp_jwt.isascii():  # a compact JWS is ASCII; never sent
            raise CtsTokenError("The JWT was rejected by CTS: token is malformed")
        body = {"workspaceId": self.workspace_id, "oidcToken": idp_jwt}
        last_problem, last_error = "no attempt was made", None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(min(self.backoff * (2 ** (attempt - 1)), self.max_backoff))
            with self._lock:
                self.attempts += 1
            try:
                status, raw = self._post(body)
            except _RETRYABLE as err:
                last_problem, last_error = type(err).__name__, err
                continue
            except _TooLarge as err:
                raise CtsTokenError(f"The CTS answered with an unusable response: {err}") from err
            except requests.RequestException as err:
                raise CtsUnavailableError(
                    f"Could not reach the CTS endpoint {self.endpoint}: {type(err).__name__}"
                ) from err
            if status >= 500:
                last_problem, last_error = f"HTTP {status}", None
                continue
            if status == 200:
                return self._token(raw, now)
            if 400 <= status < 500:
                reason = _refusal_reason(raw, idp_jwt)
                if reason.startswith("The JWT was rejected by CTS"):  # lockkit's own wording
                    raise CtsTokenError(f"{reason} (HTTP {status})")
                raise CtsTokenError(
                    f"The JWT was rejected by CTS (HTTP {status})" + (f": {reason}" if reason else "")
                )
            raise CtsTokenError(f"The CTS answered with an unexpected HTTP {status}")
        attempts = self.retries + 1
        raise CtsUnavailableError(
            f"Could not reach the CTS endpoint {self.endpoint} "
            f"({last_problem} after {attempts} attempt{'s' if attempts != 1 else ''})"
        ) from last_error

    def _post(self, body: dict[str, str]) -> tuple[int, bytes]:
        deadline = time.monotonic() + 2 * self.timeout
        with http_client(self.url, self._session) as http, http.post(  # loopback http: never via a proxy
            self.url, json=body, timeout=self.timeout, headers={"Accept": "application/json"},
            allow_redirects=False, stream=True,
        ) as response:
            return response.status_code, _read_limited(response, MAX_RESPONSE_BYTES, deadline)

    @staticmethod
    def _token(raw: bytes, now: float | None) -> CtsToken:
        try:
            data = strict_json_loads(raw)
        except ValueError as err:
            raise CtsTokenError("The CTS answered 200 with a body that is not JSON") from err
        if not isinstance(data, dict):
            raise CtsTokenError("The CTS answered 200 with a body that is not a JSON object")
        access, expiry = data.get("accessToken"), data.get("expiry")
        if not isinstance(access, str) or not access or len(access) > MAX_CTS_TOKEN_BYTES:
            raise CtsTokenError("The response from the CTS did not contain a usable access token")
        if isinstance(expiry, bool) or not isinstance(expiry, int | float) or not math.isfinite(expiry):
            raise CtsTokenError("The response from the CTS did not contain a numeric expiry")
        token = CtsToken(access, expiry)
        if token.is_expired(now):
            raise CtsTokenError(
                "The CTS returned a token that has already expired (are the clocks in sync?)"
            )
        return token


def _parse_okp_jwk(jwk: object) -> tuple[str, Ed25519PublicKey] | None:
    """``(kid, key)`` for a published Ed25519 verification key; ``None`` for anything else."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        return None
    kid, use, alg, ops = jwk.get("kid"), jwk.get("use"), jwk.get("alg"), jwk.get("key_ops")
    if not isinstance(kid, str) or not kid or "d" in jwk:
        return None
    if use not in (None, "sig") or alg not in (None, CTS_ALGORITHM):
        return None
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    try:
        key = OKPAlgorithm.from_jwk(jwk)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        return None
    return (kid, key) if isinstance(key, Ed25519PublicKey) else None


class RemoteCtsVerifier:
    """Verifies CTS tokens with the public keys a remote CTS publishes (a key service's
    ``verifier``: ``LocalKeyService(keyring, RemoteCtsVerifier(url, crn))``).

    The JWKS is fetched on first use and cached for ``ttl`` seconds; a token naming a newer key
    version than any known (after a rotation) causes a refetch, at most one per
    ``min_refetch_interval`` seconds. A failed refresh keeps the cached keys. With nothing
    cached and the JWKS unreachable, verification fails closed. Thread-safe.

    :param jwks_url: the CTS's JWKS (``https://``; ``http://`` only on loopback).
    :param workspace_crn: the workspace tokens must be issued for (their audience).
    :raises ConfigurationError: a bad URL, CRN or tuning value.
    """

    def __init__(
        self,
        jwks_url: str,
        workspace_crn: str,
        *,
        ttl: float = 300,
        min_refetch_interval: float = 30,
        timeout: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self.jwks_url = _check_url(jwks_url, "the CTS JWKS URL")
        parse_crn(workspace_crn)
        _positive("ttl", ttl)
        _positive("min_refetch_interval", min_refetch_interval, allow_zero=True)
        _positive("timeout", timeout)
        self.workspace_crn = workspace_crn
        self.ttl = float(ttl)
        self.min_refetch_interval = float(min_refetch_interval)
        self.timeout = float(timeout)
        self._session = session
        self._lock = threading.RLock()
        self._local = threading.local()  # the caller's `now`, for refetches the verifier asks for
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._generation = 0  # bumped whenever the fetched key set changes
        self._schedule = RefreshSchedule(self.ttl, self.min_refetch_interval)
        self._last_error: Exception | None = None
        self._verifier: CtsVerifier | None = None
        self._verifier_generation = -1
        self._building = False
        #: JWKS fetch attempts (observability, tests)
        self.fetch_count = 0

    @classmethod
    def for_endpoint(cls, endpoint: str, workspace_crn: str, **kwargs: Any) -> RemoteCtsVerifier:
        """A verifier for the CTS at ``endpoint`` (its JWKS is ``{endpoint}/.well-known/jwks.json``).

        :raises ConfigurationError: a bad URL, CRN or tuning value.
        """
        return cls(_check_url(endpoint, "the CTS endpoint") + JWKS_PATH, workspace_crn, **kwargs)

    def __repr__(self) -> str:
        return f"RemoteCtsVerifier(jwks_url={self.jwks_url!r}, keys={sorted(self._keys)})"

    def verify(self, access_token: str, now: float | None = None) -> Claims:
        """The verified claims of a CTS token.

        :raises LockContextError: expired (``Call identify again``), forged, malformed, issued
            for another workspace, or the CTS's keys could not be fetched (fail closed).
        """
        if not isinstance(access_token, str) or not access_token.isascii():
            raise LockContextError("CTS token rejected: malformed")
        now = time.time() if now is None else now
        self._local.now = now
        self._refresh(now)  # when stale; meanwhile other callers verify with the cached keys
        with self._lock:
            if self._schedule.fetched_at is None:
                raise LockContextError(UNREACHABLE_MESSAGE, retryable=True) from self._last_error
            if self._verifier is None or self._verifier_generation != self._generation:
                self._building = True
                try:
                    self._verifier = CtsVerifier(self.workspace_crn, self._source)
                finally:
                    self._building = False
                self._verifier_generation = self._generation
            verifier = self._verifier
        return verifier.verify(access_token, now=now)

    def _source(self) -> Mapping[str, Ed25519PublicKey]:
        """The keys, for :class:`CtsVerifier`; asked again when a token names a newer key."""
        with self._lock:
            building = self._building
        if not building:
            now = getattr(self._local, "now", None)
            self._refresh(time.time() if now is None else now, force=True)
        with self._lock:
            return dict(self._keys)

    def _refresh(self, now: float, *, force: bool = False) -> None:
        """Fetch the JWKS when stale (or ``force``: a token names a key not cached), one fetch
        at a time and outside ``self._lock`` (see :meth:`RefreshSchedule.refresh`)."""
        def install(keys: dict[str, Ed25519PublicKey] | None, error: Exception | None) -> None:
            with self._lock:
                if error is not None or keys is None:
                    self._last_error = error  # keep serving the cached keys, if any
                    return
                if not keys:  # nothing usable published: keep what is cached (if anything)
                    self._last_error = ValueError("the JWKS has no Ed25519 keys")
                    return
                if _raw(keys) != _raw(self._keys):
                    self._generation += 1
                self._keys = keys
                self._schedule.fetched_at = now
                self._last_error = None

        def fetch() -> dict[str, Ed25519PublicKey]:
            self.fetch_count += 1
            return self._fetch()

        self._schedule.refresh(now, fetch, install, force=force, wait=self.timeout * 2 + 1)

    def _fetch(self) -> dict[str, Ed25519PublicKey]:
        data = strict_json_loads(fetch_jwks_document(self.jwks_url, session=self._session, timeout=self.timeout))
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        keys: dict[str, Ed25519PublicKey] = {}
        for jwk in data["keys"]:
            parsed = _parse_okp_jwk(jwk)
            if parsed is not None and parsed[0] not in keys:
                keys[parsed[0]] = parsed[1]
        return keys


def _raw(keys: Mapping[str, Ed25519PublicKey]) -> dict[str, bytes]:
    return {kid: key.public_bytes(Encoding.Raw, PublicFormat.Raw) for kid, key in keys.items()}
