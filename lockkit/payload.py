"""The stored payload format (version 1) and typed plaintext encoding.

A payload is a JSON-serialisable dict::

    {"v": 1, "k": "ct", "i": {"t": table, "c": column},
     "ks": keyset, "kid": key id, "c": base64(nonce(12) | key check(4) | ciphertext+tag),
     "lc": ["sub", ...],          # only when locked to an identity
     "hm": "hex...",              # equality term, when the column has an equality index
     "bf": [int, ...]}            # match term (bloom filter bits), when it has a match index

The AEAD is AES-256-GCM-SIV (RFC 8452) under the column key with a random 96-bit nonce; per
RFC 8452 each nonce derives a fresh record-encryption key, so every value has its own key. The
header (version, workspace, keyset, table, column, key id, lock claim names) is associated data,
as a 16-byte SHA-256 digest
(for OpenBao payloads the key-id slot holds the constant ``"openbao"``: the wrapped data key in
``kid`` changes when OpenBao re-wraps it, and the data key is bound by derivation anyway):
a payload moved to another column, table, keyset, workspace or identity does not open. The
key check is the first 4 bytes of AES-256 (under a separate check key) of ``nonce | 0^32``; it
tells "wrong key" (another identity) from "tampered" without linking values to each other.

This format is frozen: ``tests/vectors/payload_v1.json`` holds golden vectors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import datetime as dt
import json
import math
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._text import stream_safe
from .errors import DecryptionError, EncryptionError
from .keys.keyring import canonical

VERSION = 1
NONCE_BYTES = 12
CHECK_BYTES = 4
MIN_RAW = NONCE_BYTES + CHECK_BYTES + 16

PAYLOAD_KEYS = frozenset({"v", "k", "i", "ks", "kid", "c", "lc", "hm", "bf"})


def encode_value(kind: str, value: Any, where: str) -> bytes:
    """Typed plaintext bytes (a one-byte type tag, then the value).

    :raises EncryptionError: the value does not fit the column's declared type.
    """
    try:
        if kind == "text":
            if isinstance(value, str):
                return b"s" + value.encode("utf-8")
        elif kind == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return b"i" + str(value).encode()
        elif kind == "float":
            if isinstance(value, float | int) and not isinstance(value, bool):
                return b"f" + struct.pack(">d", float(value))
        elif kind == "bool":
            if isinstance(value, bool):
                return b"b\x01" if value else b"b\x00"
        elif kind == "date":
            if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
                return b"d" + value.isoformat().encode()
        elif kind == "datetime":
            if isinstance(value, dt.datetime):
                return b"t" + value.isoformat().encode()
        elif kind == "json":
            _check_json(value, where)
            return b"j" + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, OverflowError, RecursionError) as err:
        raise EncryptionError(f"{where}: value cannot be encoded as {kind} ({type(err).__name__})") from err
    raise EncryptionError(f"{where} expects {kind}, got {type(value).__name__}")


#: how deep JSON values may nest: far below Python's recursion limit, so a value that
#: encrypts always decrypts, however deep the caller's own stack is
MAX_JSON_DEPTH = 64


def _check_json(value: Any, where: str) -> None:
    """Refuse what JSON would silently change or could not read back: object keys that are
    not strings (``{1: "a"}`` would come back as ``{"1": "a"}``, and ``{1: "a", "1": "b"}``
    would lose a member) and nesting deeper than :data:`MAX_JSON_DEPTH`."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise EncryptionError(f"{where}: JSON nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        raise EncryptionError(
                            f"{where}: JSON object keys must be strings (got {type(k).__name__}; it would come back as a string)"
                        )
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)


def decode_value(raw: bytes) -> Any:
    """Inverse of :func:`encode_value`.

    :raises DecryptionError: unknown tag or malformed body (only after authentication, so
        this means a bug or a newer format, not tampering).
    """
    tag, body = raw[:1], raw[1:]
    try:
        if tag == b"s":
            return body.decode("utf-8")
        if tag == b"i":
            return int(body)
        if tag == b"f":
            return struct.unpack(">d", body)[0]
        if tag == b"b":
            return body == b"\x01"
        if tag == b"d":
            return dt.date.fromisoformat(body.decode())
        if tag == b"t":
            return dt.datetime.fromisoformat(body.decode())
        if tag == b"j":
            return json.loads(body.decode("utf-8"))
    except (ValueError, struct.error, UnicodeDecodeError, RecursionError) as err:
        raise DecryptionError("decrypted value is malformed") from err
    raise DecryptionError("decrypted value has an unknown type tag (newer lockkit?)")


def index_bytes(kind: str, value: Any, where: str) -> bytes:
    """What an equality term is computed over: the typed encoding, text NFC-normalised (in the
    Stream-Safe Text Format first: a run of combining marks costs quadratic time to normalise)."""
    if kind == "text" and isinstance(value, str):
        value = unicodedata.normalize("NFC", stream_safe(value))
    if kind == "float" and isinstance(value, float) and math.isnan(value):
        raise EncryptionError(f"{where}: NaN cannot be searched for equality")
    return encode_value(kind, value, where)


def associated_data(
    workspace_crn: str, keyset: str, table: str, column: str, kid: str, lc: list[str] | None
) -> bytes:
    """The authenticated header of a payload: the first 16 bytes of SHA-256 over the canonical
    header. (AES-GCM-SIV's cost grows with the associated data's length; a digest keeps it
    short and still binds every header field.)"""
    header = b"lockkit/payload/v1\x00" + canonical([workspace_crn, keyset, table, column, kid, lc])
    return hashlib.sha256(header).digest()[:16]


def is_payload(obj: Any) -> bool:
    """True for something shaped like a lockkit payload (not a validation)."""
    return isinstance(obj, Mapping) and obj.get("k") == "ct" and "c" in obj and "v" in obj


@dataclass(frozen=True, slots=True)
class Parsed:
    table: str
    column: str
    keyset: str
    kid: str
    lc: tuple[str, ...] | None
    nonce: bytes
    check: bytes
    ciphertext: bytes


def parse(obj: Any) -> Parsed:
    """Validate a payload's shape and split its ciphertext.

    :raises DecryptionError: not a (supported) lockkit payload.
    """
    if isinstance(obj, str | bytes):
        try:
            obj = json.loads(obj)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise DecryptionError("not a lockkit payload: invalid JSON") from err
    if not isinstance(obj, Mapping):
        raise DecryptionError(f"not a lockkit payload: got {type(obj).__name__}")
    if obj.get("k") != "ct" or "v" not in obj:
        raise DecryptionError("not a lockkit payload: missing 'v' or 'k'")
    v = obj["v"]
    if v != VERSION or isinstance(v, bool):
        raise DecryptionError(f"payload version {v!r} is not supported by this lockkit (v{VERSION})")
    extra = set(obj) - PAYLOAD_KEYS
    if extra:
        raise DecryptionError(f"payload has unexpected fields {sorted(extra)}")
    ident, ks, kid, c = obj.get("i"), obj.get("ks"), obj.get("kid"), obj.get("c")
    if not (
        isinstance(ident, Mapping) and len(ident) == 2
        and isinstance(ident.get("t"), str) and isinstance(ident.get("c"), str)
    ):
        raise DecryptionError("payload 'i' must be {'t': table, 'c': column}")
    if not isinstance(ks, str) or not isinstance(kid, str) or not isinstance(c, str):
        raise DecryptionError("payload is missing 'ks', 'kid' or 'c'")
    lc_raw = obj.get("lc")
    lc: tuple[str, ...] | None = None
    if lc_raw is not None:
        if not isinstance(lc_raw, list) or not lc_raw or not all(isinstance(n, str) for n in lc_raw):
            raise DecryptionError("payload 'lc' must be a list of claim names")
        lc = tuple(lc_raw)
    try:
        raw = base64.b64decode(c, validate=True)
    except (binascii.Error, ValueError) as err:
        raise DecryptionError("payload ciphertext is not valid base64 (corrupted?)") from err
    if len(raw) < MIN_RAW:
        raise DecryptionError("payload ciphertext is truncated")
    return Parsed(
        ident["t"], ident["c"], ks, kid, lc,
        raw[:NONCE_BYTES], raw[NONCE_BYTES:NONCE_BYTES + CHECK_BYTES], raw[NONCE_BYTES + CHECK_BYTES:],
    )
