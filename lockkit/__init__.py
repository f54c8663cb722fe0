"""lockkit: identity-bound field encryption for Python web apps.

Public names only; see the README for the tour.
"""

from .client import Encryption, Operation
from .config import Settings, load_settings
from .errors import (
    ClientInitError,
    ConfigurationError,
    CtsTokenError,
    DecryptionError,
    EncryptionError,
    ExpiredCredentialError,
    Failure,
    IdentityError,
    InvalidCredentialError,
    LockContextError,
    LockkitError,
    MissingCredentialError,
    ProviderUnavailableError,
    Result,
)
from .hookspecs import hookimpl
from .identity import CtsToken, LockContext
from .schema import EncryptedColumn, EncryptedTable, encrypted_column, encrypted_table
from .search import matches

__all__ = [
    "ClientInitError",
    "ConfigurationError",
    "CtsToken",
    "CtsTokenError",
    "DecryptionError",
    "EncryptedColumn",
    "EncryptedTable",
    "Encryption",
    "EncryptionError",
    "ExpiredCredentialError",
    "Failure",
    "IdentityError",
    "InvalidCredentialError",
    "LockContext",
    "LockContextError",
    "LockkitError",
    "MissingCredentialError",
    "Operation",
    "ProviderUnavailableError",
    "Result",
    "Settings",
    "encrypted_column",
    "encrypted_table",
    "hookimpl",
    "load_settings",
    "matches",
]
