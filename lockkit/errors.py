"""Errors and results.

Every encryption-client operation and :meth:`LockContext.identify` return a :class:`Result`;
everything else raises a :class:`LockkitError` subclass. ``Failure.type`` is one of the
reference product's error names, and :meth:`Result.unwrap` raises the matching class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import repeat
from typing import Any, Generic, Literal, NoReturn, TypeVar, get_args

T = TypeVar("T")

FailureType = Literal[
    "ClientInitError",
    "CtsTokenError",
    "LockContextError",
    "EncryptionError",
    "DecryptionError",
    "IdentityError",
]


class LockkitError(Exception):
    """Base of every lockkit error.

    ``message`` is safe to show (it never contains tokens, keys or plaintext); the original
    foreign error, if any, is chained as ``__cause__``.
    """

    failure_type: FailureType = "ClientInitError"
    #: True for a passing outage (the key service, token service, identity provider or audit
    #: log unreachable, sealed or full): the same call may succeed later, and a web app answers
    #: 503. False for anything about the input itself (tampered, foreign, expired, malformed):
    #: only then is a value truly unreadable.
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def to_failure(self) -> Failure:
        return Failure(self.failure_type, self.message, retryable=self.retryable)


class ClientInitError(LockkitError):
    """Bad or missing configuration, or an unknown provider, found at start-up."""

    failure_type: FailureType = "ClientInitError"


class ConfigurationError(ClientInitError):
    """Configuration is missing or invalid; the message names what to set or run."""


class IdentityError(LockkitError):
    """An incoming identity JWT is unusable.

    ``reason`` is one coarse, machine-readable word (``missing``, ``expired``, ``invalid``)
    that may be shown to a client; ``detail`` is for logs only.
    """

    failure_type: FailureType = "IdentityError"
    reason = "invalid"

    def __init__(self, message: str, *, detail: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.detail = detail or message


class MissingCredentialError(IdentityError):
    reason = "missing"


class InvalidCredentialError(IdentityError):
    reason = "invalid"


class ExpiredCredentialError(IdentityError):
    reason = "expired"


class ProviderUnavailableError(IdentityError):
    """The identity provider's keys could not be fetched (JWKS down, timeout). Not the
    user's fault: a web app answers 503, never 401."""

    reason = "unavailable"
    retryable = True


class CtsTokenError(LockkitError):
    """The CTS exchange failed: the identity JWT was rejected, or the CTS is unreachable."""

    failure_type: FailureType = "CtsTokenError"


class LockContextError(LockkitError):
    """No usable lock context: the CTS token expired or was rejected, a locked value was read
    without a lock context, or a claim the lock context names is absent from the token."""

    failure_type: FailureType = "LockContextError"


class EncryptionError(LockkitError):
    failure_type: FailureType = "EncryptionError"


class DecryptionError(LockkitError):
    """A payload could not be opened. Never carries plaintext or keys; says, where the
    payload lets it tell, whether it is locked to another identity or was tampered with."""

    failure_type: FailureType = "DecryptionError"


ERROR_CLASSES: dict[str, type[LockkitError]] = {
    "ClientInitError": ClientInitError,
    "CtsTokenError": CtsTokenError,
    "LockContextError": LockContextError,
    "EncryptionError": EncryptionError,
    "DecryptionError": DecryptionError,
    "IdentityError": IdentityError,
}
assert set(ERROR_CLASSES) == set(get_args(FailureType))


class Failure:
    """What went wrong: ``type`` (an error class name) and a ``message`` safe to show;
    ``retryable`` when it was a passing outage (see :attr:`LockkitError.retryable`)."""

    __slots__ = ("type", "message", "retryable")

    type: FailureType
    message: str
    retryable: bool

    def __init__(self, type: FailureType, message: str, *, retryable: bool = False) -> None:  # noqa: A002 - reference name
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "retryable", bool(retryable))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Failure is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Failure) and (self.type, self.message, self.retryable) == (
            other.type, other.message, other.retryable)

    def __hash__(self) -> int:
        return hash((self.type, self.message, self.retryable))

    def __repr__(self) -> str:
        extra = ", retryable=True" if self.retryable else ""
        return f"Failure(type={self.type!r}, message={self.message!r}{extra})"

    def to_error(self) -> LockkitError:
        return ERROR_CLASSES[self.type](self.message, retryable=self.retryable)

    def raise_(self) -> NoReturn:
        raise self.to_error()


class Result(Generic[T]):
    """The outcome of an operation: ``data`` on success, ``failure`` otherwise.

    ``data`` may legitimately be ``None`` (encrypting ``None`` gives ``None``), so test
    ``result.failure``, not ``result.data``.
    """

    __slots__ = ("data", "failure")

    data: T | None
    failure: Failure | None

    def __init__(self, data: T | None = None, failure: Failure | None = None) -> None:
        # Set through the slot descriptors (bound below), bypassing the __setattr__ that
        # keeps instances immutable; a Result is created per value in bulk operations.
        _set_data(self, data)
        _set_failure(self, failure)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Result is immutable")

    @property
    def ok(self) -> bool:
        return self.failure is None

    def unwrap(self) -> T:
        """Return ``data``, or raise the error named by ``failure.type``.

        :raises LockkitError: the subclass named by ``failure.type``.
        """
        if self.failure is not None:
            self.failure.raise_()
        return self.data  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and (self.data, self.failure) == (other.data, other.failure)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.failure is not None:
            return f"Result(failure={self.failure!r})"
        # data may be plaintext: never show it
        return f"Result(data=<{type(self.data).__name__}>)"

    @classmethod
    def from_error(cls, err: LockkitError) -> Result[T]:
        return cls(failure=err.to_failure())


_set_data: Any = Result.__dict__["data"].__set__
_set_failure: Any = Result.__dict__["failure"].__set__
_new = object.__new__
_consume: Any = deque(maxlen=0).extend  # run an iterator to its end, in C


def ok_results(values: Sequence[Any]) -> list[Result[Any]]:
    """Per-item results of a bulk operation: ``Result(v)`` for each value, and
    ``Result.from_error(v)`` for a :class:`LockkitError` among them. A Result is made for
    every value of a bulk operation, so this runs no Python code per value (``map`` over C
    functions: make the objects, fill their slots) except for the errors."""
    n = len(values)
    out: list[Result[Any]] = list(map(_new, repeat(Result, n)))
    _consume(map(_set_data, out, values))
    _consume(map(_set_failure, out, repeat(None, n)))
    if any(map(isinstance, values, repeat(LockkitError, n))):
        for j, v in enumerate(values):
            if isinstance(v, LockkitError):
                out[j] = Result.from_error(v)
    return out
