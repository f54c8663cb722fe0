"""OIDC verification core: JWKS fetch and cache, strict JWT verification.

This is the advanced layer under the identity-provider plugins. A provider builds an
:class:`OIDCVerifier` from an :class:`IssuerConfig` and calls :meth:`OIDCVerifier.verify`;
several trusted issuers are combined with :class:`IssuerRouter`.

Security defaults, on purpose (each one is where misuse would happen):

* Algorithms are pinned per issuer and must be asymmetric. ``none`` and every ``HS*``
  algorithm are refused at configuration time, so an attacker cannot pick the algorithm.
* Headers that ask the verifier to trust key material or extensions named by the token
  itself (``jku``, ``x5u``, ``jwk``, ``x5c``, ``crit``, ``b64``) are refused.
* ``exp`` is required; ``iss`` is compared exactly; ``aud`` / ``azp`` are checked;
  ``sub`` must be a non-empty string. The leeway is small and bounded.
* Keys come only from the configured JWKS URI (cached, refetched at most once per
  ``jwks_min_refetch_interval`` for an unknown ``kid``) or from static keys in the
  configuration. RSA keys under 2048 bits are never used.

Every foreign exception (PyJWT, cryptography, requests, JSON) is translated here into a
:class:`~lockkit.errors.IdentityError` subclass; messages never contain the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import urlsplit

import jwt
import requests
import requests.adapters
import urllib3
from urllib3 import connection as urllib3_connection
from urllib3 import exceptions as urllib3_errors
from urllib3.util import parse_url
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from lockkit.errors import (
    ConfigurationError,
    ExpiredCredentialError,
    InvalidCredentialError,
    ProviderUnavailableError,
)

_log = logging.getLogger(__name__)

#: a JWKS fetch failing again for the same cause is logged at most once per this many seconds
FETCH_WARNING_INTERVAL: Final = 60.0

__all__ = [
    "ALLOWED_ALGORITHMS",
    "Claims",
    "IssuerConfig",
    "IssuerRouter",
    "JWKSCache",
    "OIDCVerifier",
    "PublicKey",
    "TokenVerifier",
]

Claims: TypeAlias = dict[str, Any]
"""Verified claims of an identity token (a JSON object)."""

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
"""A public key object that can check an identity token's signature."""

ALLOWED_ALGORITHMS: Final[frozenset[str]] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)
"""Asymmetric JWS algorithms an issuer may be pinned to. Never ``none``, never ``HS*``."""

MIN_RSA_KEY_BITS: Final = 2048
MAX_LEEWAY: Final = 300.0
MAX_SUB_LENGTH: Final = 255
MAX_JWKS_BYTES: Final = 1 << 20

# Headers that make the token name its own key or extensions: never honoured.
_FORBIDDEN_HEADERS: Final = ("crit", "jku", "x5u", "jwk", "x5c", "b64")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
#: hosts plain http is allowed to (nothing else is; see http_client for proxies)
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_EC_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
}
# PyJWT does the signature check only; claims are checked below with the caller's `now`.
_PYJWT = jwt.PyJWT(
    options={
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
        "require": [],
        "enforce_minimum_key_length": True,
    }
)
_SIGNATURE_ERRORS: Final = (jwt.PyJWTError, ValueError, TypeError, UnsupportedAlgorithm)


def _show(value: object, limit: int = 60) -> str:
    """A short ``repr`` of an untrusted value, for ``detail`` strings."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- configuration


def _str_tuple(name: str, value: object, issuer: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ConfigurationError(
            f"{name} for issuer {issuer!r} must be a tuple of strings, not {type(value).__name__}"
        )
    if not all(isinstance(item, str) and item for item in value):
        raise ConfigurationError(f"{name} for issuer {issuer!r} must contain non-empty strings")
    return tuple(value)


def _positive(name: str, value: object, issuer: str, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = "zero or more" if allow_zero else "greater than zero"
        raise ConfigurationError(f"set {name} for issuer {issuer!r} to a number {bound}")


@dataclass(frozen=True)
class IssuerConfig:
    """How to verify identity tokens from one issuer.

    :param issuer: the exact ``iss`` value (no normalisation: ``https://x/`` is not
        ``https://x``).
    :param audiences: accepted ``aud`` values; when set, ``aud`` is required.
    :param authorized_parties: accepted ``azp`` values; when set, a present ``azp`` must be
        one of them, and with no ``audiences`` configured ``azp`` is required and a token
        carrying ``aud`` is refused (it was meant for some audience; OpenBao's role refuses it
        too).
    :param jwks_uri: where the issuer publishes its public keys (https, or http on loopback).
    :param static_keys: PEM public keys (or certificates), JWK or JWKS JSON strings; use
        instead of ``jwks_uri``, never both.
    :param algorithms: the pinned algorithms. **Security:** only asymmetric algorithms are
        allowed; pin exactly what the issuer uses.
    :param leeway: clock skew allowance in seconds for ``exp``/``nbf``/``iat`` (0-300).
    :param namespace: identity namespace that keys are bound to; defaults to ``issuer``.
    :raises ConfigurationError: when a field is missing or invalid; the message names it.
    """

    issuer: str
    audiences: tuple[str, ...] = ()
    authorized_parties: tuple[str, ...] = ()
    jwks_uri: str | None = None
    static_keys: tuple[str, ...] = field(default=(), repr=False)
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: float = 5.0
    namespace: str | None = None
    max_token_bytes: int = 16384
    jwks_ttl: float = 300.0
    jwks_min_refetch_interval: float = 30.0
    http_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer.strip():
            raise ConfigurationError("set issuer: it must be a non-empty string")
        issuer = self.issuer
        for name in ("audiences", "authorized_parties", "static_keys", "algorithms"):
            object.__setattr__(self, name, _str_tuple(name, getattr(self, name), issuer))
        if not self.audiences and not self.authorized_parties:
            raise ConfigurationError(
                f"set audience (or authorized_parties) for issuer {issuer!r}: "
                "tokens meant for other applications would be accepted otherwise"
            )
        if (self.jwks_uri is None) == (not self.static_keys):
            raise ConfigurationError(
                f"set exactly one key source for issuer {issuer!r}: jwks_uri or static keys"
            )
        if self.jwks_uri is not None:
            _check_jwks_uri(self.jwks_uri, issuer)
        if not self.algorithms:
            raise ConfigurationError(f"set algorithms for issuer {issuer!r}, e.g. ('RS256',)")
        bad = [alg for alg in self.algorithms if alg not in ALLOWED_ALGORITHMS]
        if bad:
            raise ConfigurationError(
                f"algorithms {bad!r} are not allowed for issuer {issuer!r}; "
                f"use asymmetric algorithms from {sorted(ALLOWED_ALGORITHMS)}"
            )
        leeway = self.leeway
        if (
            not isinstance(leeway, (int, float))
            or isinstance(leeway, bool)
            or not 0 <= leeway <= MAX_LEEWAY  # also false for NaN
        ):
            raise ConfigurationError(
                f"set leeway for issuer {issuer!r} to a number of seconds between 0 and 300"
            )
        if self.namespace is not None and (
            not isinstance(self.namespace, str) or not self.namespace
        ):
            raise ConfigurationError(f"namespace for issuer {issuer!r} must be a non-empty string")
        if isinstance(self.max_token_bytes, bool) or not isinstance(self.max_token_bytes, int):
            raise ConfigurationError(f"set max_token_bytes for issuer {issuer!r} to an integer")
        _positive("max_token_bytes", self.max_token_bytes, issuer)
        _positive("jwks_ttl", self.jwks_ttl, issuer)
        _positive("jwks_min_refetch_interval", self.jwks_min_refetch_interval, issuer, allow_zero=True)
        _positive("http_timeout", self.http_timeout, issuer)
        if self.static_keys:
            _parse_static_keys(self.static_keys, issuer)  # fail at start-up, not per request

    @property
    def identity_namespace(self) -> str:
        """The namespace identities from this issuer live in: ``namespace`` or ``issuer``."""
        return self.namespace or self.issuer

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> IssuerConfig:
        """Build a config from the TOML/dict shape.

        Keys: ``issuer``, ``audience`` (str or list), ``authorized_parties``, ``jwks_uri``,
        ``keys`` (list of PEM/JWK strings), ``algorithms``, ``leeway``, ``namespace``, and the
        tuning knobs ``max_token_bytes``, ``jwks_ttl``, ``jwks_min_refetch_interval``,
        ``http_timeout``.

        :raises ConfigurationError: for unknown keys, wrong types or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError("issuer configuration must be a table (mapping)")
        unknown = sorted(set(data) - _MAPPING_KEYS)
        if unknown:
            raise ConfigurationError(
                f"unknown issuer configuration key(s) {unknown}; known keys: {sorted(_MAPPING_KEYS)}"
            )
        issuer = data.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ConfigurationError("set issuer: it must be a non-empty string")

        def str_list(key: str) -> tuple[str, ...]:
            value = data.get(key, [])
            if isinstance(value, str) and key == "audience":
                value = [value]
            if not isinstance(value, list):
                raise ConfigurationError(f"{key} for issuer {issuer!r} must be a list of strings")
            return _str_tuple(key, value, issuer)

        kwargs: dict[str, Any] = {
            "issuer": issuer,
            "audiences": str_list("audience"),
            "authorized_parties": str_list("authorized_parties"),
            "static_keys": str_list("keys"),
        }
        if "algorithms" in data:
            kwargs["algorithms"] = str_list("algorithms")
        for key in ("jwks_uri", "namespace"):
            if key in data:
                if not isinstance(data[key], str):
                    raise ConfigurationError(f"{key} for issuer {issuer!r} must be a string")
                kwargs[key] = data[key]
        for key, attr in _NUMERIC_KEYS.items():
            if key in data:
                kwargs[attr] = data[key]
        return cls(**kwargs)


_NUMERIC_KEYS: Final = {
    "leeway": "leeway",
    "max_token_bytes": "max_token_bytes",
    "jwks_ttl": "jwks_ttl",
    "jwks_min_refetch_interval": "jwks_min_refetch_interval",
    "http_timeout": "http_timeout",
}
_MAPPING_KEYS: Final = frozenset(
    {"issuer", "audience", "authorized_parties", "jwks_uri", "keys", "algorithms", "namespace"}
    | set(_NUMERIC_KEYS)
)


def protected_url(url: object) -> bool:
    """Whether ``url`` may carry tokens, keys or secrets: https to a host, or plain http to
    loopback only (lockkit's rule for every URL it sends such things to).

    Only URLs every parser reads alike pass: printable ASCII without spaces or backslashes,
    the scheme written in lower case, no user info, and the host urllib3 (what ``requests``
    connects to) finds equal to the one checked here (``http://evil\\@127.0.0.1/`` or
    ``HTTP://127.0.0.1`` would otherwise be judged one way and sent another)."""
    if not isinstance(url, str) or not url.isascii() or any(c <= " " or c in "\\\x7f" for c in url):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
        seen = parse_url(url).host
    except ValueError:  # urllib3's LocationParseError is a ValueError
        return False
    if not host or parts.username is not None or parts.password is not None:
        return False
    if not url.startswith(f"{parts.scheme}://") or seen is None or seen.strip("[]").lower() != host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in _LOOPBACK_HOSTS)


def _check_jwks_uri(uri: object, issuer: str) -> None:
    if not isinstance(uri, str):
        raise ConfigurationError(f"jwks_uri for issuer {issuer!r} must be a string")
    if protected_url(uri):
        return
    raise ConfigurationError(
        f"set jwks_uri for issuer {issuer!r} to an https:// URL (plain http only on loopback)"
    )


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str | None
    key: PublicKey = field(repr=False)


def _usable_public_key(key: object) -> PublicKey | None:
    if isinstance(key, rsa.RSAPublicKey):
        return key if key.key_size >= MIN_RSA_KEY_BITS else None
    if isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key
    return None


def _key_fits(key: PublicKey, alg: str) -> bool:
    """Whether ``key`` is the right type for ``alg`` (so ``alg`` cannot be switched)."""
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def _parse_jwk(jwk: object) -> _Key | None:
    """Parse one published JWK; ``None`` when it must not be used for verification."""
    if not isinstance(jwk, dict):
        return None
    use, alg, kid, ops = jwk.get("use"), jwk.get("alg"), jwk.get("kid"), jwk.get("key_ops")
    if use is not None and use != "sig":
        return None
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    # one malformed entry (a list or an object where a string belongs) is skipped, never a
    # TypeError that would throw away the good keys of the same document
    if alg is not None and (not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS):
        return None
    if not isinstance(jwk.get("kty"), str):
        return None
    if kid is not None and not isinstance(kid, str):
        return None
    if "d" in jwk:  # private key material published: refuse rather than guess
        return None
    kty = jwk.get("kty")
    parsed: object
    try:
        if kty == "RSA":
            parsed = RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC":
            parsed = ECAlgorithm.from_jwk(jwk)
        elif kty == "OKP":
            parsed = OKPAlgorithm.from_jwk(jwk)
        else:  # "oct" (symmetric) and anything unknown
            return None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        return None
    key = _usable_public_key(parsed)
    if key is None or (alg is not None and not _key_fits(key, alg)):
        return None
    return _Key(kid, alg, key)


def _parse_static_keys(sources: Sequence[str], issuer: str) -> tuple[_Key, ...]:
    keys: list[_Key] = []
    for index, source in enumerate(sources, start=1):
        where = f"static key #{index} for issuer {issuer!r}"
        text = source.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except ValueError as err:
                raise ConfigurationError(f"{where} is not valid JWK/JWKS JSON") from err
            jwks = data.get("keys") if isinstance(data, dict) and "keys" in data else [data]
            if not isinstance(jwks, list) or not jwks:
                raise ConfigurationError(f"{where}: a JWKS needs a non-empty 'keys' list")
            for jwk in jwks:
                parsed = _parse_jwk(jwk)
                if parsed is None:
                    raise ConfigurationError(
                        f"{where} is not a usable public signing key "
                        "(asymmetric, use 'sig', RSA at least 2048 bits, no private part)"
                    )
                keys.append(parsed)
            continue
        try:
            if "-----BEGIN CERTIFICATE-----" in text:
                loaded: object = x509.load_pem_x509_certificate(text.encode()).public_key()
            else:
                loaded = load_pem_public_key(text.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise ConfigurationError(
                f"{where} is not a PEM public key or certificate (never configure a private key)"
            ) from err
        key = _usable_public_key(loaded)
        if key is None:
            raise ConfigurationError(
                f"{where} is not a usable public key (RSA at least 2048 bits, EC or Ed25519/Ed448)"
            )
        keys.append(_Key(None, None, key))
    return tuple(keys)


def _select(keys: Sequence[_Key], kid: str | None, alg: str, issuer: str) -> _Key | None:
    """Pick the key for a token header; ``None`` means the ``kid`` is unknown.

    :raises InvalidCredentialError: no ``kid`` while several keys exist, or the ``kid``'s key
        does not fit ``alg``.
    """
    if kid is None:
        if len(keys) != 1:
            raise InvalidCredentialError(
                "token has no key id",
                detail=f"token without kid; issuer {issuer!r} has {len(keys)} keys",
            )
        matches = list(keys)
    else:
        matches = [k for k in keys if k.kid == kid]
        if not matches and len(keys) == 1 and keys[0].kid is None:
            matches = list(keys)  # a single static PEM key has no kid of its own
        if not matches:
            return None
    for candidate in matches:
        if (candidate.alg is None or candidate.alg == alg) and _key_fits(candidate.key, alg):
            return candidate
    raise InvalidCredentialError(
        "token algorithm does not match its signing key",
        detail=f"alg {alg!r} does not fit key {_show(kid)} of issuer {issuer!r}",
    )


class _KeySource(Protocol):
    def get_signing_key(self, kid: str | None, alg: str, now: float | None = None) -> PublicKey: ...


class _StaticKeys:
    """Keys from the configuration; never fetched."""

    def __init__(self, keys: tuple[_Key, ...], issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer

    def get_signing_key(self, kid: str | None, alg: str, now: float | None = None) -> PublicKey:
        key = _select(self._keys, kid, alg, self._issuer)
        if key is None:
            raise InvalidCredentialError(
                "token signing key is not known",
                detail=f"kid {_show(kid)} not among static keys of issuer {self._issuer!r}",
            )
        return key.key


class RefreshSchedule:
    """When a cached key set may be fetched again: it is stale after ``ttl`` seconds, and at
    most one fetch is attempted per ``min_refetch_interval`` (so junk tokens cannot hammer the
    key server). Shared by the JWKS caches of identity providers and of a remote CTS.

    :meth:`refresh` runs one fetch at a time, *outside* the cache's lock: while one caller
    fetches, the others go on with the keys already cached instead of queueing behind the
    network call (they wait only when there is nothing cached yet, or when asked to because
    a token names a key the cache does not have)."""

    __slots__ = ("ttl", "min_refetch_interval", "fetched_at", "attempted_at", "fetching", "_cond")

    def __init__(self, ttl: float, min_refetch_interval: float) -> None:
        self.ttl = ttl
        self.min_refetch_interval = min_refetch_interval
        self.fetched_at: float | None = None  # last successful fetch
        self.attempted_at: float | None = None  # last fetch attempt
        self.fetching = False  # a fetch is in flight
        self._cond = threading.Condition(threading.Lock())

    def refresh(self, now: float, fetch: Callable[[], Any], install: Callable[[Any, Exception | None], None], *,
                force: bool = False, wait: float = 10.0) -> bool:
        """Fetch if due (stale, or ``force``; at most once per ``min_refetch_interval``; one
        caller at a time) and hand the result to ``install(result, None)`` or the failure to
        ``install(None, error)``. A caller that finds a fetch in flight waits for it (at most
        ``wait`` seconds) only when nothing is cached yet or with ``force``. Returns whether
        this call fetched. ``fetch`` may raise ``requests.RequestException`` or ``ValueError``
        (a failed fetch); anything else propagates."""
        with self._cond:
            if self.fetching:
                if force or self.fetched_at is None:
                    self._cond.wait_for(lambda: not self.fetching, timeout=wait)
                return False
            if not ((force or self.is_stale(now)) and self.may_fetch(now)):
                return False
            self.fetching = True
            self.attempted_at = now
        result: Any = None
        error: Exception | None = None
        done = False
        try:
            try:
                result = fetch()
            except Exception as err:  # noqa: BLE001 - any failure is a failed fetch: recorded, verification fails closed
                error = err
            done = True
        finally:
            with self._cond:
                try:
                    if done:
                        install(result, error)
                finally:
                    self.fetching = False
                    self._cond.notify_all()
        return True

    def is_stale(self, now: float) -> bool:
        return self.fetched_at is None or abs(now - self.fetched_at) >= self.ttl

    def may_fetch(self, now: float) -> bool:
        # abs(): a clock that jumped backwards counts as time passed, not as "never again"
        return self.attempted_at is None or abs(now - self.attempted_at) >= self.min_refetch_interval


# --------------------------------------------------------------------------- answer deadlines
#
# A timeout bounds the connection and each read only. A server that sends its status line and
# headers a byte at a time, each byte within the read timeout, would hold the request (and a
# JWKS refresh, which every later refresh waits behind) for as long as it liked: 100 header
# lines of 64 KiB at a byte every few seconds is years. Bodies are read against a deadline by
# read_body; the head of the answer is cut off here: a session with DeadlineAdapter mounted
# shuts the connection's socket down when the head has not arrived within twice the request's
# timeout (connect timeout plus twice the read timeout for a pair).

_HEAD_BY: ContextVar[float | None] = ContextVar("lockkit_answer_head_by", default=None)
#: the head deadlines' clock: CLOCK_MONOTONIC, bound once (a test's stand-in for
#: ``time.monotonic`` must not move the watchdog's deadlines)
_clock: Final = time.monotonic


class _Watch:
    """One answer's head being waited for: its socket until the head arrives (None after)."""

    __slots__ = ("sock", "fired")

    def __init__(self, sock: Any) -> None:
        self.sock: Any = sock
        self.fired = False


class _Watchdog:
    """One daemon thread for the whole process that shuts down the sockets of answers whose
    head is overdue (a Timer thread per request cost ~0.4 ms each). Requests arm it with a
    deadline and disarm it when the head has arrived; after :meth:`disarm` returns, the
    socket is never touched again (arming, disarming and cutting all hold one lock)."""

    #: disarmed entries wait in the heap until their deadline; past this many, and when they
    #: are most of it, the heap is rebuilt without them
    COMPACT_AT = 1024

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._disarmed = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, sock: Any) -> _Watch:
        if not math.isfinite(deadline):
            raise ValueError("a head deadline must be a finite time")
        watch = _Watch(sock)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lockkit-head-deadline", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:  # a new earliest deadline: wake the thread
                self._cond.notify()
        return watch

    def disarm(self, watch: _Watch) -> bool:
        """Stop watching; True if the socket was cut off (the head was overdue)."""
        with self._cond:
            if watch.sock is not None:
                watch.sock = None
                self._disarmed += 1
                if self._disarmed > self.COMPACT_AT and 2 * self._disarmed > len(self._heap):
                    self._heap = [entry for entry in self._heap if entry[2].sock is not None]
                    heapq.heapify(self._heap)
                    self._disarmed = 0
            return watch.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                now = _clock()
                while self._heap and self._heap[0][0] <= now:
                    watch = heapq.heappop(self._heap)[2]
                    if watch.sock is None:
                        self._disarmed = max(0, self._disarmed - 1)
                        continue
                    watch.fired = True
                    _shut(watch.sock)
                    watch.sock = None
                # at least once a second while anything is armed: a deadline is never missed
                # by more than that, whatever happened to the clock since the last wait
                self._cond.wait(min(self._heap[0][0] - now, 1.0) if self._heap else None)


def _shut(sock: Any) -> None:
    """Shut a connection's socket down, so that the read blocked on it returns at once: the
    plain socket's shutdown (an SSLSocket's would drop its TLS state), under any TLS-in-TLS
    wrapper (urllib3's ``SSLTransport``, for HTTPS through an HTTPS proxy). Never raises: the
    watchdog thread serves every request in the process."""
    for _ in range(4):  # a wrapper holds the socket it wraps as ``.socket``
        if isinstance(sock, socket.socket):
            break
        sock = getattr(sock, "socket", None)
    if not isinstance(sock, socket.socket):
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass  # already closed


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # a forked worker starts with no watchdog thread (and a free lock)
    os.register_at_fork(after_in_child=_WATCHDOG._reset)


class _HeadDeadline:
    """``getresponse`` (the status line and headers) cut off at the deadline its adapter set:
    then it raises :class:`HeadTooSlow` (``requests.exceptions.ReadTimeout``)."""

    sock: Any

    def getresponse(self) -> Any:
        deadline = _HEAD_BY.get()
        if deadline is None or self.sock is None:
            return super().getresponse()  # type: ignore[misc]
        watch = _WATCHDOG.arm(deadline, self.sock)
        try:
            try:
                response = super().getresponse()  # type: ignore[misc]
            finally:  # whatever ends the wait (an interrupt too), the socket is not watched after it
                cut = _WATCHDOG.disarm(watch)
        except Exception:
            if not cut:
                raise
            response = None  # the read failed because the watchdog cut it
        if cut:  # whatever was read before the cut is not an answer
            if response is not None:
                response.close()
            raise HeadTooSlow()
        return response


class HeadTooSlow(urllib3_errors.ReadTimeoutError):
    """An answer's status line and headers did not arrive by their deadline (``requests``
    raises it as ``requests.exceptions.ReadTimeout``)."""

    def __init__(self) -> None:
        super().__init__(None, "", "the answer's status line and headers took too long")  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "the answer's status line and headers took too long to arrive"


class _HTTPConnection(_HeadDeadline, urllib3_connection.HTTPConnection):
    pass


class _HTTPSConnection(_HeadDeadline, urllib3_connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS: Final = {"http": _HTTPPool, "https": _HTTPSPool}


def _head_budget(timeout: Any) -> float | None:
    """Seconds the head of an answer may take: twice the timeout; for ``(connect, read)``
    the connect timeout plus twice the read timeout; None for no timeout."""
    budget: float | None = None
    if isinstance(timeout, tuple) and len(timeout) == 2 and all(isinstance(t, int | float) for t in timeout):
        budget = float(timeout[0]) + 2 * float(timeout[1])
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        budget = 2 * float(timeout)
    # NaN or infinity: no deadline (a NaN one would sit at the head of the watchdog's heap,
    # never due, and hold back every deadline behind it)
    return budget if budget is not None and math.isfinite(budget) else None


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """A transport adapter whose answers' status line and headers arrive within twice the
    request's timeout (see above), or the request fails with ``requests.ConnectionError``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        budget = _head_budget(timeout)
        token = _HEAD_BY.set(_clock() + budget) if budget is not None else None
        try:
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        finally:
            if token is not None:
                _HEAD_BY.reset(token)


def deadline_session(*, trust_env: bool = True) -> requests.Session:
    """A ``requests.Session`` with :class:`DeadlineAdapter` mounted for http and https."""
    session = requests.Session()
    session.trust_env = trust_env
    mount_deadlines(session)
    return session


def mount_deadlines(session: requests.Session) -> requests.Session:
    """Mount :class:`DeadlineAdapter` on ``session`` for http and https (replacing the
    default adapters; a session built by a library, e.g. Authlib's, keeps its own settings)."""
    session.mount("https://", DeadlineAdapter())
    session.mount("http://", DeadlineAdapter())
    return session


def direct_session() -> requests.Session:
    """A session that ignores proxy settings in the environment, for plain-HTTP URLs (which
    lockkit allows only on loopback): an ``HTTP_PROXY`` would otherwise see identity tokens
    and could answer with its own keys. HTTPS keeps the environment's proxies (TLS protects
    that traffic). Answers' heads are cut off at a deadline (:class:`DeadlineAdapter`). The
    caller closes it."""
    return deadline_session(trust_env=False)


@contextmanager
def http_client(url: str, session: requests.Session | None) -> Iterator[Any]:
    """What to send a request for ``url`` with: the caller's ``session`` if any, else for a
    plain-HTTP URL a :func:`direct_session`, else a :func:`deadline_session` that keeps the
    environment's proxy settings (either closed afterwards)."""
    if session is not None:
        yield session
    else:
        with (direct_session() if urlsplit(url).scheme == "http" else deadline_session()) as fresh:
            yield fresh


def fetch_jwks_document(
    uri: str, *, session: requests.Session | None, timeout: float, limit: int = MAX_JWKS_BYTES
) -> bytes:
    """GET a JWKS document: a timeout, no redirects, at most ``limit`` bytes, and all of it
    within ``2 * timeout`` seconds (``timeout`` bounds each read only: a server trickling one
    byte per read would otherwise hold the fetch, and every refresh behind it, for weeks).

    :raises requests.RequestException: the request failed.
    :raises ValueError: not HTTP 200, too large, or too slow.
    """
    deadline = time.monotonic() + 2 * timeout
    with http_client(uri, session) as http, http.get(
        uri, timeout=timeout, headers={"Accept": "application/json"}, allow_redirects=False, stream=True
    ) as response:
        if response.status_code != 200:
            raise ValueError(f"JWKS answered HTTP {response.status_code}")
        return read_body(response, limit, deadline, "JWKS document")


class BodyTooLarge(ValueError):
    """A response body over its size limit."""


class BodyTooSlow(ValueError):
    """A response body still arriving at its deadline."""


def read_body(response: requests.Response, limit: int, deadline: float, what: str = "response body") -> bytes:
    """A streamed response's body: at most ``limit`` bytes, all of it by ``deadline``
    (``time.monotonic()``). Read as it arrives (urllib3's ``read1``), so that a server
    trickling a byte at a time is cut off at the deadline: a read timeout bounds each read
    only, and one read of a large chunk waits for the whole chunk.

    :raises BodyTooLarge: over ``limit`` bytes.
    :raises BodyTooSlow: not complete by ``deadline``.
    :raises requests.RequestException: the connection failed meanwhile (urllib3's errors
        translated as ``requests`` itself does when it reads a body).
    """
    read1 = getattr(response.raw, "read1", None)  # urllib3 >= 2.3
    chunks: Iterator[bytes] = (
        iter(lambda: read1(65536, decode_content=True), b"") if read1 is not None
        else response.iter_content(chunk_size=65536)
    )
    body = bytearray()
    try:
        for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(f"{what} is over {limit} bytes")
            if time.monotonic() > deadline:
                raise BodyTooSlow(f"{what} took too long to arrive")
    except urllib3_errors.ReadTimeoutError as err:  # the raw stream is urllib3's: translate as requests does
        raise requests.exceptions.ConnectionError(err) from err
    except urllib3_errors.SSLError as err:
        raise requests.exceptions.SSLError(err) from err
    except urllib3_errors.DecodeError as err:
        raise requests.exceptions.ContentDecodingError(err) from err
    except (urllib3_errors.ProtocolError, urllib3_errors.HTTPError) as err:
        raise requests.exceptions.ChunkedEncodingError(err) from err
    return bytes(body)


class JWKSCache:
    """Fetches and caches an issuer's JWKS.

    Keys are cached for ``ttl`` seconds. A token with an unknown ``kid`` causes at most one
    refetch per ``min_refetch_interval`` (so junk tokens cannot hammer the IdP). A failed
    refresh keeps serving the previous keys. Thread-safe: one fetch at a time, and while it is
    in flight other callers verify with the cached keys (see :meth:`RefreshSchedule.refresh`).

    ``fetch_count`` counts fetch attempts (for tests and metrics).
    """

    def __init__(
        self,
        uri: str,
        *,
        ttl: float = 300.0,
        min_refetch_interval: float = 30.0,
        timeout: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self.uri = uri
        self.ttl = ttl
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self.fetch_count = 0
        self._session = session
        self._keys: tuple[_Key, ...] = ()
        self._schedule = RefreshSchedule(ttl, min_refetch_interval)
        self._last_error: Exception | None = None
        self._warned: tuple[str, float] = ("", -math.inf)  # the last cause logged, and when

    def __repr__(self) -> str:
        return f"JWKSCache(uri={self.uri!r}, keys={len(self._keys)}, fetch_count={self.fetch_count})"

    def get_signing_key(self, kid: str | None, alg: str, now: float | None = None) -> PublicKey:
        """Return the public key for a token's ``kid`` and ``alg``.

        :param kid: the token header's ``kid`` (``None`` is accepted only when the issuer
            publishes exactly one usable key).
        :param alg: the token's (already pinned) algorithm; the key must fit it.
        :param now: unix time; defaults to ``time.time()``.
        :raises ProviderUnavailableError: the JWKS could not be fetched and nothing is cached.
        :raises InvalidCredentialError: unknown ``kid`` (after one rate-limited refetch),
            missing ``kid`` with several keys, or a key that does not fit ``alg``.
        """
        now = time.time() if now is None else now
        self._refresh(now)  # when stale; meanwhile other callers use the cached keys
        if self._schedule.fetched_at is None:
            raise ProviderUnavailableError(
                "identity provider keys are unavailable",
                detail=f"could not fetch JWKS from {self.uri}: {self._last_error}",
            ) from self._last_error
        key = _select(self._keys, kid, alg, self.uri)
        if key is None:
            self._refresh(now, force=True)  # a new key? (rate-limited; waits for a fetch in flight)
            key = _select(self._keys, kid, alg, self.uri)
        if key is None:
            raise InvalidCredentialError(
                "token signing key is not known",
                detail=f"kid {_show(kid)} not in JWKS {self.uri}",
            )
        return key.key

    def _refresh(self, now: float, *, force: bool = False) -> None:
        failed: list[Exception | None] = []

        def install(keys: tuple[_Key, ...] | None, error: Exception | None) -> None:
            if error is not None or keys is None:
                self._last_error = error  # keep serving the stale keys, if any
                failed.append(error)
                return
            self._keys = keys  # one assignment: readers see the old tuple or the new one
            self._schedule.fetched_at = now
            self._last_error = None
            self._warned = ("", -math.inf)  # a later outage is news

        def fetch() -> tuple[_Key, ...]:
            self.fetch_count += 1
            return self._fetch()

        self._schedule.refresh(now, fetch, install, force=force, wait=self.timeout * 2 + 1)
        if failed:  # logged here, outside the schedule's lock: a slow log handler holds up no verification
            self._warn(failed[0])

    def _warn(self, error: Exception | None) -> None:
        """Log a failed fetch: the URL and the cause (never a token); the same cause at most
        once per :data:`FETCH_WARNING_INTERVAL` until a fetch succeeds (refetches may be
        allowed on every request)."""
        what = f"{type(error).__name__}: {error}"
        at = time.monotonic()
        if what == self._warned[0] and at - self._warned[1] < FETCH_WARNING_INTERVAL:
            return
        self._warned = (what, at)
        _log.warning("could not fetch the JWKS at %s (%s); %s", self.uri, what,
                     "still verifying with the keys fetched before" if self._keys else "no keys to verify with")

    def _fetch(self) -> tuple[_Key, ...]:
        data = strict_json_loads(fetch_jwks_document(self.uri, session=self._session, timeout=self.timeout))
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        return tuple(key for key in map(_parse_jwk, data["keys"]) if key is not None)


# --------------------------------------------------------------------------- tokens


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json_loads(raw: bytes) -> Any:
    """Strict JSON from UTF-8 bytes: no duplicate member names, no NaN/Infinity, no runaway
    nesting. Used for everything lockkit parses from the wire (tokens, JWKS, CTS requests and
    answers).

    :raises ValueError: not such JSON.
    """
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except RecursionError as err:
        raise ValueError("JSON nested too deeply") from err


def _decode_segment(segment: str, what: str) -> dict[str, Any]:
    """Decode one base64url JSON-object segment of a compact JWS."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
            raise ValueError("non-canonical base64url")
        data = strict_json_loads(raw)
    except (ValueError, binascii.Error) as err:
        raise InvalidCredentialError(
            "token is malformed", detail=f"token {what} is not base64url JSON: {err}"
        ) from err
    if not isinstance(data, dict):
        raise InvalidCredentialError(
            "token is malformed", detail=f"token {what} is a JSON {type(data).__name__}, not an object"
        )
    return data


def _split_token(token: object, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the compact shape and return the *unverified* header and payload."""
    if not isinstance(token, str):
        raise InvalidCredentialError(
            "token is malformed", detail=f"token is a {type(token).__name__}, not a str"
        )
    if len(token) > max_bytes:  # non-ASCII is refused below, so characters == bytes
        raise InvalidCredentialError(
            "token is too large", detail=f"token is over {max_bytes} bytes"
        )
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(part) for part in parts):
        raise InvalidCredentialError(
            "token is malformed", detail="token is not three non-empty base64url segments"
        )
    return _decode_segment(parts[0], "header"), _decode_segment(parts[1], "payload")


def _numeric_date(claims: Claims, name: str, *, required: bool) -> float | None:
    if name not in claims:
        if required:
            raise InvalidCredentialError(f"token has no {name} claim")
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidCredentialError(
            f"token {name} claim is not a number", detail=f"{name} is a {type(value).__name__}"
        )
    try:
        number = float(value)
    except OverflowError as err:
        raise InvalidCredentialError(f"token {name} claim is out of range") from err
    if not math.isfinite(number):
        raise InvalidCredentialError(f"token {name} claim is out of range")
    return number


class OIDCVerifier:
    """Strict verifier for one issuer's identity tokens.

    :param config: what to trust; see :class:`IssuerConfig`.
    :param session: optional ``requests.Session`` for the JWKS fetches.
    """

    def __init__(
        self, config: IssuerConfig, *, session: requests.Session | None = None, verified_cache_ttl: float = 30.0
    ) -> None:
        self.config = config
        self.issuer = config.issuer
        self.namespace = config.identity_namespace
        # Verified claims are remembered briefly (by the token's SHA-256) so a web app does not
        # re-check the same token's signature on every request; time claims are re-checked on
        # every hit. Trade-off: a signing key the issuer withdraws stays trusted for tokens seen
        # in the last ``verified_cache_ttl`` seconds (the JWKS cache already keeps keys longer).
        #: digest -> (verified claims, cached until, their (exp, nbf, iat))
        self._verified: OrderedDict[bytes, tuple[Claims, float, tuple[float, float | None, float | None]]] = OrderedDict()
        self._verified_ttl = verified_cache_ttl
        self._verified_lock = threading.Lock()
        self.jwks: JWKSCache | None = None
        self._keys: _KeySource
        if config.jwks_uri is not None:
            self.jwks = JWKSCache(
                config.jwks_uri,
                ttl=config.jwks_ttl,
                min_refetch_interval=config.jwks_min_refetch_interval,
                timeout=config.http_timeout,
                session=session,
            )
            self._keys = self.jwks
        else:
            self._keys = _StaticKeys(_parse_static_keys(config.static_keys, config.issuer), config.issuer)

    def __repr__(self) -> str:
        return f"OIDCVerifier(issuer={self.issuer!r}, namespace={self.namespace!r})"

    def verify(self, token: str, now: float | None = None) -> Claims | None:
        """Verify ``token`` and return its claims, or ``None`` if another issuer made it.

        The unverified ``iss`` is read only to route the token; everything returned has been
        checked: signature (pinned algorithm, issuer's key), ``iss``, ``aud``/``azp``, ``sub``,
        ``exp`` (required), ``nbf``, ``iat``.

        :param token: a compact JWT.
        :param now: unix time; defaults to ``time.time()``.
        :returns: the verified claims, or ``None`` when the token's ``iss`` is another issuer.
        :raises InvalidCredentialError: the token is this issuer's (or unroutable) but bad.
        :raises ExpiredCredentialError: ``exp`` (plus leeway) has passed.
        :raises ProviderUnavailableError: the issuer's keys cannot be fetched and none are cached.
        """
        now = time.time() if now is None else now
        config = self.config
        if not isinstance(token, str) or not token.isascii():  # a compact JWS is ASCII (a lone surrogate cannot even be hashed)
            raise InvalidCredentialError("token is malformed", detail="the token is not an ASCII string")
        if len(token) > config.max_token_bytes:  # before hashing it
            raise InvalidCredentialError("token is too large", detail=f"token is over {config.max_token_bytes} bytes")
        digest = hashlib.sha256(token.encode()).digest() if self._verified_ttl > 0 else None
        if digest is not None:
            with self._verified_lock:
                hit = self._verified.get(digest)
            if hit is not None and now < hit[1]:
                # the claims passed every check when cached; only the time claims can go stale
                self._check_times(*hit[2], now)
                return dict(hit[0])
        header, unverified = _split_token(token, config.max_token_bytes)
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise InvalidCredentialError(
                "token has no issuer", detail=f"iss is {type(iss).__name__}, not a string"
            )
        if iss != self.issuer:
            return None  # routing only: another verifier may own this issuer

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in config.algorithms:
            raise InvalidCredentialError(
                "token algorithm is not allowed",
                detail=f"alg {_show(alg)} not in {list(config.algorithms)} for {self.issuer!r}",
            )
        for name in _FORBIDDEN_HEADERS:
            if name in header:
                raise InvalidCredentialError(
                    "token header is not accepted", detail=f"token header has {name!r}"
                )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidCredentialError("token is malformed", detail="kid header is not a string")

        key = self._keys.get_signing_key(kid, alg, now)
        try:
            decoded = _PYJWT.decode_complete(token, key=key, algorithms=[alg])
        except _SIGNATURE_ERRORS as err:
            raise InvalidCredentialError(
                "token signature is invalid",
                detail=f"{type(err).__name__}: {err} (issuer {self.issuer!r}, kid {_show(kid)})",
            ) from err
        claims: Claims = decoded["payload"]
        times = self._check_claims(claims, now)
        if digest is not None:
            with self._verified_lock:
                self._verified[digest] = (dict(claims), now + self._verified_ttl, times)
                while len(self._verified) > 4096:
                    self._verified.popitem(last=False)
        return claims

    def _check_claims(self, claims: Claims, now: float) -> tuple[float, float | None, float | None]:
        """Check every claim; returns the time claims ``(exp, nbf, iat)`` as numbers."""
        config = self.config
        if claims.get("iss") != self.issuer:  # same bytes as routed on; kept as a guard
            raise InvalidCredentialError("token issuer is wrong")
        exp = _numeric_date(claims, "exp", required=True)
        nbf = _numeric_date(claims, "nbf", required=False)
        iat = _numeric_date(claims, "iat", required=False)

        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
            raise InvalidCredentialError(
                "token subject is missing or invalid",
                detail=f"sub must be a non-empty string of at most {MAX_SUB_LENGTH} characters",
            )

        if config.audiences:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud
            if (
                not isinstance(audiences, list)
                or not audiences
                or not all(isinstance(item, str) for item in audiences)
            ):
                raise InvalidCredentialError(
                    "token audience is missing or invalid",
                    detail=f"aud is {type(aud).__name__}; expected one of {list(config.audiences)}",
                )
            if not set(audiences) & set(config.audiences):
                raise InvalidCredentialError(
                    "token is not meant for this application",
                    detail=f"aud does not include any of {list(config.audiences)}",
                )
        elif "aud" in claims:  # as OpenBao's role refuses it: the same token works on both backends
            raise InvalidCredentialError(
                "token has an audience, but none is configured for its issuer",
                detail="configure the issuer's audience to accept tokens that carry aud",
            )
        if config.authorized_parties:
            azp = claims.get("azp")
            if azp is None:
                if not config.audiences:
                    raise InvalidCredentialError("token has no authorized party (azp)")
            elif not isinstance(azp, str) or azp not in config.authorized_parties:
                raise InvalidCredentialError(
                    "token authorized party is not allowed",
                    detail=f"azp is not one of {list(config.authorized_parties)}",
                )

        assert exp is not None  # required=True
        self._check_times(exp, nbf, iat, now)
        return exp, nbf, iat

    def _check_times(self, exp: float, nbf: float | None, iat: float | None, now: float) -> None:
        leeway = self.config.leeway
        if now > exp + leeway:
            raise ExpiredCredentialError("token has expired", detail=f"exp {exp} < now {now}")
        if nbf is not None and nbf > now + leeway:
            raise InvalidCredentialError("token is not valid yet", detail=f"nbf {nbf} > now {now}")
        if iat is not None and iat > now + leeway:
            raise InvalidCredentialError(
                "token was issued in the future", detail=f"iat {iat} > now {now}"
            )


# --------------------------------------------------------------------------- several issuers


class TokenVerifier(Protocol):
    """Anything that verifies identity tokens for one issuer (OIDC, or a provider plugin).

    ``verify`` returns ``None`` for a token that is not this verifier's, so the next one may
    try it, and raises an :class:`~lockkit.errors.IdentityError` for one that is but is bad.
    """

    @property
    def namespace(self) -> str:
        """The identity namespace that keys for this verifier's users are bound to."""
        ...

    def verify(self, token: str, now: float | None = None) -> Claims | None:
        """Verified claims, ``None`` for another issuer's token.

        :raises IdentityError: the token is this verifier's but unusable.
        """
        ...


class IssuerRouter:
    """Tries several trusted verifiers in order; the first that claims the token decides.

    :raises ConfigurationError: when constructed with no verifiers.
    """

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        if not verifiers:
            raise ConfigurationError("configure at least one trusted issuer")
        self.verifiers: tuple[TokenVerifier, ...] = tuple(verifiers)

    def __repr__(self) -> str:
        return f"IssuerRouter({list(self.verifiers)!r})"

    def verify(self, token: str, now: float | None = None) -> tuple[TokenVerifier, Claims]:
        """Return the verifier that owns ``token`` and the verified claims.

        :raises InvalidCredentialError: no verifier trusts the token's issuer, or the owning
            verifier rejected it.
        :raises ExpiredCredentialError: the owning verifier found it expired.
        :raises ProviderUnavailableError: the owning issuer's keys cannot be fetched.
        """
        for verifier in self.verifiers:
            claims = verifier.verify(token, now=now)
            if claims is not None:
                return verifier, claims
        raise InvalidCredentialError("token issuer is not trusted")
