"""Flask's signed cookie session, with each distinct cookie verified once.

A signed-in user sends the same session cookie (about 900 bytes with lockkit's sealed CTS
token) on every request, and Flask verifies it again each time: base64, an HMAC key derivation
and an HMAC, zlib and JSON, ~24 us per request, a fifth of what lockkit adds to a request
(``bench/bench_requests.py``). :class:`RememberingCookieSessionInterface` is Flask's
``SecureCookieSessionInterface`` that remembers, for a cookie it has fully verified, the
cookie's timestamp and its JSON payload, keyed by the SHA-256 of the cookie (never by the
cookie itself, so no secret is compared but in constant-time HMAC checks). A later request
with exactly that cookie gets the payload parsed afresh (a new session object: nothing one
request mutates reaches another) after the same age checks as Flask's (``max_age`` from
``PERMANENT_SESSION_LIFETIME``, no timestamp in the future). Entries belong to the secret keys
they were verified with: a new ``SECRET_KEY`` or ``SECRET_KEY_FALLBACKS`` verifies from
scratch. A cookie that fails verification is never remembered. Memory is bounded.

``LockKit`` installs it when the app uses Flask's default cookie session (and
``LOCKKIT_REMEMBER_COOKIE_SESSIONS`` is not false); an app with its own session interface
(Flask-Session, ...) keeps it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature

if TYPE_CHECKING:
    from flask import Flask, Request


class RememberingCookieSessionInterface(SecureCookieSessionInterface):
    """``SecureCookieSessionInterface`` verifying each distinct cookie once (see module doc)."""

    #: distinct cookies remembered (about 1 KB each)
    memo_size = 4096

    def __init__(self) -> None:
        self._memo: OrderedDict[bytes, tuple[tuple[Any, ...], int, str]] = OrderedDict()
        self._lock = threading.Lock()
        #: full verifications made (observability, tests)
        self.verifications = 0

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not app.secret_key:
            return None  # as Flask: no secret key, no session
        val = request.cookies.get(self.get_cookie_name(app))
        if not val:
            return self.session_class()
        max_age = int(app.permanent_session_lifetime.total_seconds())
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))  # the key is Flask >= 3.1
        digest = hashlib.sha256(val.encode("utf-8", "surrogatepass")).digest()
        hit = self._memo.get(digest)
        if hit is not None and hit[0] == keys:
            age = int(time.time()) - hit[1]  # itsdangerous's own rule: whole seconds
            if 0 <= age <= max_age:
                return self.session_class(self.serializer.loads(hit[2]))
        return self._verify(app, val, max_age, keys, digest)

    def _verify(self, app: Flask, val: str, max_age: int, keys: tuple[Any, ...], digest: bytes) -> SecureCookieSession:
        signer = self.get_signing_serializer(app)
        assert signer is not None  # a secret key is set
        self.verifications += 1
        try:
            data, signed_at = signer.loads(val, max_age=max_age, return_timestamp=True)
        except BadSignature:  # forged, tampered, expired, or of another key: a new session
            return self.session_class()
        entry = (keys, int(signed_at.timestamp()), self.serializer.dumps(data))
        with self._lock:
            self._memo[digest] = entry
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return self.session_class(data)


__all__ = ["RememberingCookieSessionInterface"]
