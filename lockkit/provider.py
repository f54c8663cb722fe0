"""The identity-provider base class that provider plugins subclass.

A provider verifies its IdP's tokens with the core verifier (:mod:`lockkit.oidc`), finds the
user's token in a request, and, for redirect-based IdPs, serves sign-in, callback and sign-out
routes. Providers reach lockkit through the ``register_identity_providers`` hook::

    from lockkit import hookimpl
    from lockkit.provider import IdentityProvider

    class MyProvider(IdentityProvider):
        name = "myidp"

        @classmethod
        def from_config(cls, config):
            return cls(OIDCVerifier(IssuerConfig(issuer=..., audiences=(...,), jwks_uri=...)))

    @hookimpl
    def register_identity_providers(register):
        register(MyProvider)

Contract: :meth:`verify` returns ``None`` for a token that is not this provider's (another
issuer), so the next provider can try it, and raises an :class:`~lockkit.errors.IdentityError`
subclass for a token that is this provider's but bad.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .oidc import Claims, TokenVerifier

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask
    from werkzeug.wrappers import Response


class RequestLike(Protocol):
    """What providers read from a request (a Flask/Werkzeug request satisfies it)."""

    @property
    def headers(self) -> Any: ...
    @property
    def cookies(self) -> Any: ...
    @property
    def method(self) -> str: ...


class IdentityProvider:
    """Base class for identity providers. Subclasses set :attr:`name` and implement
    :meth:`from_config`; the rest has sensible defaults."""

    #: the name apps select the provider by, in ``LOCKKIT_PROVIDERS``
    name: ClassVar[str] = ""
    #: True when the provider serves its own sign-in/callback/sign-out routes
    redirect_login: ClassVar[bool] = False

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> IdentityProvider:
        """Build the provider from app config (``LOCKKIT_<NAME>_*`` keys, plus the IdP's own
        conventional names where it has them, e.g. ``CLERK_SECRET_KEY``).

        :raises ConfigurationError: a required key is missing; the message names it.
        """
        raise NotImplementedError(f"{cls.__name__} must implement from_config()")

    @classmethod
    def require(cls, config: Mapping[str, Any], *keys: str) -> Any:
        """The first of ``keys`` set in ``config``.

        :raises ConfigurationError: none is set; the message names them.
        """
        for k in keys:
            v = config.get(k)
            if v not in (None, "", [], ()):
                return v
        raise ConfigurationError(f"the {cls.name} provider needs {' or '.join(keys)}")

    @property
    def namespace(self) -> str:
        """The identity namespace keys are bound to (the issuer, unless configured)."""
        return self.verifier.namespace

    def verify(self, token: str, now: float | None = None) -> Claims | None:
        """Verified claims, or ``None`` when the token is another issuer's.

        :raises IdentityError: the token is this provider's but invalid or expired.
        """
        return self.verifier.verify(token, now=now)

    def token_from_request(self, request: RequestLike) -> str | None:
        """The user's identity token in ``request``, or ``None`` when there is none.
        Default: an ``Authorization: Bearer`` header."""
        return bearer_token(request)

    def cts_jwt(self, token: str, claims: Claims) -> str:
        """The identity JWT to exchange with the token service (default: the same token)."""
        return token

    # -- web integration (redirect-based providers override) ---------------------------
    def init_app(self, app: Flask) -> None:
        """Register routes the provider serves (sign-in, callback, sign-out, JWKS)."""

    def login_url(self, next_url: str) -> str | None:
        """Where to send a browser that must sign in (``None``: the app's own login view)."""
        return None

    def logout_response(self, next_url: str) -> Response | None:
        """A response that ends the IdP session too (``None``: nothing to do at the IdP)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} namespace={self.namespace!r}>"


def safe_next(url: str | None) -> str:
    """``url`` if it is a same-site relative path, else ``"/"``: never an open redirect
    (rejects ``//host``, backslashes, schemes, hosts and control characters)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return "/"
    parts = urlsplit(url)
    return url if not parts.scheme and not parts.netloc else "/"


def bearer_token(request: RequestLike) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    auth = request.headers.get("Authorization", "")
    if not isinstance(auth, str):
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
