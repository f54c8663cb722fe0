"""Lock contexts and CTS tokens.

A :class:`LockContext` names the identity claims a value is locked to (``("sub",)`` by default)
and carries the user's :class:`CtsToken`. The claim *values* are never taken from the caller:
the key service reads them from the CTS token it has verified.
"""

from __future__ import annotations

import hmac
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .errors import CtsTokenError, LockContextError, LockkitError, Result

if TYPE_CHECKING:
    pass

DEFAULT_IDENTITY_CLAIM: tuple[str, ...] = ("sub",)
_CLAIM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
EXPIRED_MESSAGE = "The CTS token has expired. Call identify again"


class CtsToken:
    """A short-lived token from the token service: ``{accessToken, expiry}`` on the wire.

    ``expiry`` is in unix seconds. ``repr`` redacts the token; pickling is refused (store it
    with ``to_dict()`` in an encrypted or server-side session only).
    """

    __slots__ = ("_access_token", "_expiry")

    def __init__(self, access_token: str, expiry: float) -> None:
        if not isinstance(access_token, str) or not access_token:
            raise CtsTokenError("CTS token has no access token")
        if (
            isinstance(expiry, bool) or not isinstance(expiry, int | float)
            or (isinstance(expiry, float) and not math.isfinite(expiry))
            or not -(2**62) < expiry < 2**62  # an int too large for a float, or for any clock
        ):
            raise CtsTokenError("CTS token expiry must be a number of unix seconds")
        self._access_token = access_token
        self._expiry = int(expiry)

    @property
    def access_token(self) -> str:
        return self._access_token

    @property
    def expiry(self) -> int:
        return self._expiry

    def is_expired(self, now: float | None = None, *, margin: float = 0.0) -> bool:
        """True when the token is expired, or will be within ``margin`` seconds."""
        return (time.time() if now is None else now) + margin >= self._expiry

    def to_dict(self) -> dict[str, Any]:
        """The wire shape, ``{"accessToken": ..., "expiry": ...}``."""
        return {"accessToken": self._access_token, "expiry": self._expiry}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CtsToken:
        """Parse the wire shape.

        :raises CtsTokenError: if it is not ``{accessToken: str, expiry: number}``.
        """
        if not isinstance(data, Mapping) or "accessToken" not in data or "expiry" not in data:
            raise CtsTokenError("CTS token must be an object with accessToken and expiry")
        return cls(data["accessToken"], data["expiry"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CtsToken):
            return NotImplemented
        return self._expiry == other._expiry and hmac.compare_digest(
            self._access_token.encode(), other._access_token.encode()
        )

    def __hash__(self) -> int:
        return hash(self._expiry)

    def __repr__(self) -> str:
        return f"CtsToken(access_token=<redacted>, expiry={self._expiry})"

    def __reduce__(self) -> Any:
        raise TypeError("CtsToken refuses pickling: store to_dict() in an encrypted session")


class TokenService(Protocol):
    """Exchanges a verified identity JWT for a CTS token."""

    def authorize(self, idp_jwt: str, now: float | None = None) -> CtsToken:
        """:raises CtsTokenError: the JWT was rejected, or the service is unreachable."""
        ...


def _normalise_claims(identity_claim: Sequence[str] | str) -> tuple[str, ...]:
    if not isinstance(identity_claim, str | Sequence):
        raise LockContextError(f"identity_claim must be a claim name or a list of them, not {type(identity_claim).__name__}")
    names = (identity_claim,) if isinstance(identity_claim, str) else tuple(identity_claim)
    if not names:
        raise LockContextError("a lock context must name at least one identity claim")
    for n in names:
        if not isinstance(n, str) or not _CLAIM_RE.match(n):
            raise LockContextError(f"identity claim name {n!r} is invalid")
    if len(set(names)) != len(names):
        raise LockContextError("identity claim names must be distinct")
    return names


class LockContext:
    """Which identity a value is locked to, and the CTS token that proves it.

    ``LockContext()`` locks to ``("sub",)``; ``LockContext(identity_claim=("sub", "scopes"))``
    or the reference's ``LockContext(context={"identityClaim": ["sub", "scopes"]})`` lock to
    several claims. ``LockContext(cts_token=...)`` uses a token you already have (no exchange).
    """

    __slots__ = ("_claims", "_token", "_service")

    def __init__(
        self,
        *,
        identity_claim: Sequence[str] | str | None = None,
        context: Mapping[str, Any] | None = None,
        cts_token: CtsToken | Mapping[str, Any] | None = None,
        token_service: TokenService | None = None,
    ) -> None:
        if context is not None:
            if identity_claim is not None:
                raise LockContextError("pass identity_claim or context, not both")
            if not isinstance(context, Mapping) or set(context) - {"identityClaim"}:
                raise LockContextError('context must be {"identityClaim": [...]}')
            identity_claim = context.get("identityClaim", DEFAULT_IDENTITY_CLAIM)
        self._claims = _normalise_claims(DEFAULT_IDENTITY_CLAIM if identity_claim is None else identity_claim)
        if cts_token is not None and not isinstance(cts_token, CtsToken):
            cts_token = CtsToken.from_dict(cts_token)
        self._token: CtsToken | None = cts_token
        self._service = token_service

    @property
    def identity_claim(self) -> tuple[str, ...]:
        return self._claims

    @property
    def cts_token(self) -> CtsToken | None:
        return self._token

    def identify(self, jwt: str, now: float | None = None) -> Result[LockContext]:
        """Exchange the user's identity JWT for a CTS token; returns a bound lock context.

        The failure type is ``CtsTokenError`` when the JWT is rejected or the token service is
        unreachable; a missing workspace configuration raises ``ConfigurationError``.
        """
        service = self._service
        if service is None:
            from .cts import default_token_service

            service = default_token_service()  # raises ConfigurationError: a runtime error
        try:
            token = service.authorize(jwt, now=now)
        except CtsTokenError as err:
            return Result.from_error(err)
        except LockkitError as err:
            return Result.from_error(CtsTokenError(f"The JWT was rejected by CTS: {err.message}"))
        bound = LockContext(identity_claim=self._claims, cts_token=token, token_service=service)
        return Result(bound)

    def with_token(self, token: CtsToken) -> LockContext:
        """This lock context (same claims and token service) holding ``token``; no exchange."""
        if not isinstance(token, CtsToken):
            raise TypeError("with_token() takes a CtsToken")
        bound: LockContext = object.__new__(LockContext)  # the claims are already validated
        bound._claims, bound._token, bound._service = self._claims, token, self._service
        return bound

    def require_token(self, now: float | None = None) -> CtsToken:
        """The CTS token, checked for expiry.

        :raises LockContextError: no token yet, or it has expired.
        """
        if self._token is None:
            raise LockContextError("The lock context has no CTS token. Call identify first")
        if self._token.is_expired(now):
            raise LockContextError(EXPIRED_MESSAGE)
        return self._token

    def __repr__(self) -> str:
        state = "identified" if self._token is not None else "unidentified"
        return f"LockContext(identity_claim={self._claims!r}, {state})"

    def __reduce__(self) -> Any:
        raise TypeError("LockContext holds a CTS token and refuses pickling")
