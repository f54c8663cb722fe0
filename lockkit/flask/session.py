"""Sealing secrets (the CTS token, a provider's ID/refresh tokens) before they enter the
session. Flask's default session is signed, not encrypted: anything put in it is readable by
the browser. :func:`seal` encrypts with AES-256-GCM under a key derived (HKDF) from the app's
``SECRET_KEY``, with the purpose as associated data."""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import ClientInitError


class Sealer:
    """Encrypts small JSON objects for the session. ``repr`` hides the key."""

    __slots__ = ("_aead",)

    def __init__(self, secret_key: str | bytes | None) -> None:
        if not secret_key:
            raise ClientInitError("set SECRET_KEY: lockkit encrypts the session's tokens with it")
        raw = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
        key = HKDF(hashes.SHA256(), 32, b"lockkit/flask/session", b"seal v1").derive(raw)
        self._aead = AESGCM(key)

    def seal(self, purpose: str, obj: Any) -> str:
        nonce = os.urandom(12)
        data = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, data, purpose.encode())).decode()

    def unseal(self, purpose: str, sealed: Any) -> Any | None:
        """The object, or ``None`` if ``sealed`` is missing, tampered or from another key."""
        if not isinstance(sealed, str) or len(sealed) > 16384:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            return json.loads(self._aead.decrypt(raw[:12], raw[12:], purpose.encode()))
        except (binascii.Error, ValueError, InvalidTag):
            return None

    def __repr__(self) -> str:
        return "<Sealer>"
