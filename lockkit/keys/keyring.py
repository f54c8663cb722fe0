"""The local keyring: versioned root keys in a 0600 JSON file (or inline JSON from the env).

Root keys never leave this module except through :meth:`Keyring.derive`, which runs HKDF
(from ``cryptography``) with a purpose label, so every key used elsewhere is bound to what it
is for. The newest version is the *primary*: new values use it; older versions stay to decrypt
old values until a rekey moves them (rotation never deletes a version).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: no lock between concurrent edits
    fcntl = None  # type: ignore[assignment]

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import ConfigurationError

FORMAT = "lockkit-keyring"
FORMAT_VERSION = 1
KEY_BYTES = 32
_SALT = b"lockkit/v1/keyring"
#: the largest key version: payload key ids are canonical decimals of at most 9 digits, and a
#: version beyond them would encrypt values that no decrypt accepts
MAX_VERSION = 999_999_999
#: ``created`` timestamps from 1970 to the end of year 9999 (what ``keys list`` can show)
_MAX_CREATED = 253_402_300_799
_FIELDS = {"format", "version", "workspace_crn", "primary", "keys", "index_key"}
_ENTRY_FIELDS = {"version", "created", "material"}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook: a member given twice would silently hide the first one's
    key material (and the next save would drop it for good)."""
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            raise ValueError(f"duplicate member {name!r}")
        doc[name] = value
    return doc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fsync_dir(path: Path) -> None:
    """Make a rename or link inside ``path`` durable (without it a power cut can undo a
    rotation whose new key already encrypted stored values)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes, used for every derivation label and associated data."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class KeyVersion:
    """A root key version's public facts (no key material)."""

    version: int
    created: int
    primary: bool

    @property
    def kid(self) -> str:
        return str(self.version)


class Keyring:
    """Versioned root keys for one workspace. ``repr`` shows versions only; refuses pickling."""

    __slots__ = ("workspace_crn", "_roots", "_created", "_primary", "_index", "source")

    def __init__(
        self,
        workspace_crn: str,
        roots: dict[int, bytes],
        created: dict[int, int],
        primary: int,
        index_key: bytes,
        source: str = "<memory>",
    ) -> None:
        if not _is_int(primary) or not roots or primary not in roots:
            raise ConfigurationError(f"keyring {source} has no primary key")
        if any(not _is_int(v) or not 1 <= v <= MAX_VERSION for v in roots):
            raise ConfigurationError(f"keyring {source}: key versions must be from 1 to {MAX_VERSION}")
        for v, k in list(roots.items()) + [(0, index_key)]:
            if len(k) != KEY_BYTES:
                raise ConfigurationError(f"keyring {source}: key version {v} is not {KEY_BYTES} bytes")
        self.workspace_crn = workspace_crn
        self._roots = dict(roots)
        self._created = dict(created)
        self._primary = primary
        self._index = index_key
        self.source = source

    # -- construction -------------------------------------------------------------------
    @classmethod
    def generate(cls, workspace_crn: str, *, now: float | None = None) -> Keyring:
        """A new keyring with one random root key and a random search-index key."""
        ts = int(time.time() if now is None else now)
        return cls(workspace_crn, {1: os.urandom(KEY_BYTES)}, {1: ts}, 1, os.urandom(KEY_BYTES))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<inline>") -> Keyring:
        """Parse keyring JSON.

        :raises ConfigurationError: if it is malformed (the message never shows key material).
        """
        try:
            doc = json.loads(text, object_pairs_hook=_no_duplicates)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:  # JSONDecodeError is a ValueError
            why = "has a duplicate member" if "duplicate member" in str(err) else "is not valid JSON"
            raise ConfigurationError(f"keyring {source} {why}") from err
        try:
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or not (
                _is_int(doc.get("version")) and doc["version"] == FORMAT_VERSION
            ):
                raise ConfigurationError(
                    f"keyring {source} is not a lockkit keyring (format {FORMAT} v{FORMAT_VERSION})"
                )
            if set(doc) != _FIELDS:  # an unknown field would be dropped by the next save
                raise ConfigurationError(f"keyring {source} has missing or unknown fields ({', '.join(sorted(set(doc) ^ _FIELDS))})")
            crn = doc["workspace_crn"]
            roots: dict[int, bytes] = {}
            created: dict[int, int] = {}
            for entry in doc["keys"]:
                if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
                    raise ConfigurationError(f"keyring {source} has a key entry with missing or unknown fields")
                v, ts = entry["version"], entry["created"]
                if not _is_int(v) or not 1 <= v <= MAX_VERSION or v in roots:
                    raise ConfigurationError(f"keyring {source} has a bad or duplicate key version")
                if not _is_int(ts) or not 0 <= ts <= _MAX_CREATED:
                    raise ConfigurationError(f"keyring {source}: key version {v} has a bad created time")
                roots[v] = base64.b64decode(entry["material"], validate=True)
                created[v] = ts
            index_key = base64.b64decode(doc["index_key"], validate=True)
            primary = doc["primary"]
            if not isinstance(crn, str) or not _is_int(primary):
                raise ConfigurationError(f"keyring {source} is malformed")
        except ConfigurationError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as err:
            raise ConfigurationError(f"keyring {source} is malformed ({type(err).__name__})") from err
        return cls(crn, roots, created, primary, index_key, source)

    @classmethod
    def load(cls, path: str | Path) -> Keyring:
        """Read a keyring file, refusing one that others can read or that is malformed.

        :raises ConfigurationError: missing, unreadable, loose permissions, or malformed.
        """
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as err:
            raise ConfigurationError(
                f"keyring {p} does not exist: run `lockkit init` (or set LOCKKIT_KEYRING)"
            ) from err
        except OSError as err:
            raise ConfigurationError(f"cannot read keyring {p}: {err.strerror}") from err
        info = os.fstat(fd)
        mode = info.st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise ConfigurationError(f"keyring {p} is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            # another user's file (planted where ours should be?): like ssh, refuse it
            os.close(fd)
            raise ConfigurationError(
                f"keyring {p} belongs to another user (uid {info.st_uid}, not {os.geteuid()}): run lockkit "
                "as the keyring's owner, or `chown` it"
            )
        with os.fdopen(fd, "rb") as fh:
            if mode & 0o077:
                raise ConfigurationError(
                    f"keyring {p} is accessible to other users (mode {stat.S_IMODE(mode):04o}): "
                    f"run `chmod 600 {p}`"
                )
            try:
                text = fh.read().decode()
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigurationError(f"cannot read keyring {p}") from err
        return cls.from_json(text, source=str(p))

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "workspace_crn": self.workspace_crn,
            "primary": self._primary,
            "keys": [
                {"version": v, "created": self._created[v], "material": base64.b64encode(k).decode()}
                for v, k in sorted(self._roots.items())
            ],
            "index_key": base64.b64encode(self._index).decode(),
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    @contextmanager
    def editing(cls, path: str | Path) -> Iterator[Keyring]:
        """Load the keyring file at ``path`` for a change (rotate, retire) and save it when the
        block ends without an error, holding an exclusive lock (``<path>.lock``) throughout: two
        concurrent edits (two ``lockkit keys rotate``) would otherwise each write their own
        version 2, and values encrypted under the one that lost could never be decrypted.

        :raises ConfigurationError: as :meth:`load` and :meth:`save`.
        """
        p = Path(path)
        lock_path = p.with_name(p.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileNotFoundError as err:
            raise ConfigurationError(f"keyring {p} does not exist: run `lockkit init` (or set LOCKKIT_KEYRING)") from err
        except OSError as err:
            raise ConfigurationError(f"cannot lock keyring {p} ({lock_path}: {err.strerror})") from err
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            ring = cls.load(p)
            yield ring
            ring.save(p, overwrite=True)
        finally:
            os.close(fd)  # releases the lock

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the keyring atomically with mode 0600 (its directory 0700 if created).

        :raises ConfigurationError: the file exists and ``overwrite`` is False.
        """
        p = Path(path)
        if p.exists() and not overwrite:
            raise ConfigurationError(f"keyring {p} already exists; refusing to overwrite it")
        try:
            if not p.parent.exists():
                p.parent.mkdir(parents=True, mode=0o700)
                _fsync_dir(p.parent.parent)
            fd, tmp = tempfile.mkstemp(prefix=".keyring-", dir=p.parent)
        except OSError as err:
            raise ConfigurationError(f"cannot write keyring {p}: {err.strerror}") from err
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, p)
            else:
                os.link(tmp, p)  # fails if p appeared meanwhile: never clobber a keyring
                os.unlink(tmp)
            _fsync_dir(p.parent)  # the new name survives a power cut
        except FileExistsError as err:
            os.unlink(tmp)
            raise ConfigurationError(f"keyring {p} already exists; refusing to overwrite it") from err
        except BaseException as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(err, OSError):  # a full disk, a read-only file system: the old file is intact
                raise ConfigurationError(f"cannot write keyring {p} (it is unchanged): {err.strerror}") from err
            raise
        self.source = str(p)

    # -- lifecycle -----------------------------------------------------------------------
    def rotate(self, *, now: float | None = None) -> int:
        """Add a new root key version and make it primary; returns its number.

        :raises ConfigurationError: the keyring already holds version ``MAX_VERSION``.
        """
        v = max(self._roots) + 1
        if v > MAX_VERSION:
            raise ConfigurationError(f"keyring {self.source} cannot take a key version beyond {MAX_VERSION}")
        self._roots[v] = os.urandom(KEY_BYTES)
        self._created[v] = int(time.time() if now is None else now)
        self._primary = v
        return v

    def retire(self, version: int) -> None:
        """Remove root key ``version`` for good (save the keyring afterwards).

        Only after a rekey moved every payload off it: a payload still under it can never be
        decrypted again, and CTS tokens it signed stop verifying. This method cannot see the
        payloads; callers (``flask notes retire-key``, ``lockkit keys retire``) must prove no
        payload uses the version first.

        :raises ConfigurationError: not a version of this keyring, the primary, or the newest
            version (kept so that version numbers are never reused by a later rotation).
        """
        if isinstance(version, bool) or not isinstance(version, int) or version not in self._roots:
            raise ConfigurationError(f"key version {version!r} is not in keyring {self.source}")
        if version == self._primary:
            raise ConfigurationError(
                f"key version {version} is the primary (new values use it): rotate first, rekey, then retire it"
            )
        if version == max(self._roots):
            raise ConfigurationError(f"key version {version} is the newest version: it is kept so numbers are never reused")
        del self._roots[version]
        del self._created[version]

    @property
    def primary(self) -> int:
        return self._primary

    def versions(self) -> list[KeyVersion]:
        return [KeyVersion(v, self._created[v], v == self._primary) for v in sorted(self._roots)]

    def has_version(self, version: int) -> bool:
        return version in self._roots

    # -- derivation ----------------------------------------------------------------------
    def derive(self, version: int | None, label: Any, length: int = KEY_BYTES) -> bytes:
        """HKDF-SHA256 from root ``version`` (``None``: the search-index key) with ``label``
        (canonical JSON) as info.

        :raises KeyError: unknown version.
        """
        root = self._index if version is None else self._roots[version]
        return HKDF(hashes.SHA256(), length, _SALT, canonical(label)).derive(root)

    def cts_signing_key(self, version: int) -> Ed25519PrivateKey:
        """The Ed25519 key the embedded token service signs with under root ``version``."""
        seed = self.derive(version, ["cts-signing", self.workspace_crn])
        return Ed25519PrivateKey.from_private_bytes(seed)

    def cts_public_keys(self) -> dict[str, Ed25519PublicKey]:
        """``kid -> public key`` for every version (what a CTS verifier trusts)."""
        return {f"cts-v{v}": self.cts_signing_key(v).public_key() for v in sorted(self._roots)}

    def __repr__(self) -> str:
        return (
            f"Keyring(workspace_crn={self.workspace_crn!r}, versions={sorted(self._roots)}, "
            f"primary={self._primary})"
        )

    def __reduce__(self) -> Any:
        raise TypeError("Keyring holds key material and cannot be pickled")


def load_keyring(path: Path | None, inline_json: str | None, workspace_crn: str | None = None) -> Keyring:
    """The keyring named by settings: inline JSON wins over a path. With ``workspace_crn``, the
    keyring must belong to that workspace (keys and payload headers name the keyring's).

    :raises ConfigurationError: missing or bad keyring, or another workspace's.
    """
    if inline_json:
        keyring = Keyring.from_json(inline_json, source="LOCKKIT_KEYRING_JSON")
    elif path is None:
        raise ConfigurationError("no keyring configured: run `lockkit init` or set LOCKKIT_KEYRING")
    else:
        keyring = Keyring.load(path)
    if workspace_crn is not None and keyring.workspace_crn != workspace_crn:
        where = "LOCKKIT_KEYRING_JSON" if inline_json else str(path)
        raise ConfigurationError(
            f"the keyring ({where}) belongs to workspace {keyring.workspace_crn!r}, but the configuration "
            f"names {workspace_crn!r}: point LOCKKIT_KEYRING at that workspace's keyring, or fix workspace_crn"
        )
    return keyring
