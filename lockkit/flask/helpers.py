"""``get_cts_token``, ``current_lock_context`` and ``@lock_context_required``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from flask import current_app, request
from werkzeug.local import LocalProxy

from ..cts.embedded import normalise_scopes
from ..errors import LockContextError
from ..identity import CtsToken, LockContext
from .extension import _request_state, get_state, refused_response

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CtsTokenResult:
    """The reference's shape: ``success`` with ``cts_token``, or ``error``."""

    success: bool
    cts_token: CtsToken | None = None
    error: str | None = None

    def __repr__(self) -> str:
        return f"CtsTokenResult(success={self.success}, error={self.error!r})"


def get_cts_token() -> CtsTokenResult:
    """The current user's CTS token (from the session, verified against this request's
    identity token), or why there is none. An expired token is a failure."""
    ns = _request_state()
    token: CtsToken | None = ns.cts
    if token is None:
        if ns.unavailable:
            return CtsTokenResult(False, error="the token service or identity provider is unavailable")
        return CtsTokenResult(False, error=f"no verified identity for this request ({ns.reason})")
    if token.is_expired(get_state().clock()):
        return CtsTokenResult(False, error="the CTS token has expired")
    return CtsTokenResult(True, cts_token=token)


def identity_unavailable() -> bool:
    """Whether this request carried an identity that could not be checked or exchanged because
    a service it needs (the identity provider's keys, the token service, the OpenBao login) did
    not answer: what ``@lock_context_required`` answers 503 for. Signing in again would not
    help; answer "temporarily unavailable"."""
    return bool(_request_state().unavailable)


def _lock_context() -> LockContext:
    ns = _request_state()
    if ns.lock_context is None:
        state = get_state()
        token: CtsToken | None = ns.cts
        if token is None or token.is_expired(state.clock()):
            # retryable when a service was down: the user need not sign in again
            raise LockContextError(f"no lock context: {get_cts_token().error}", retryable=bool(ns.unavailable))
        ns.lock_context = state.lock_template.with_token(token)
    return cast(LockContext, ns.lock_context)


#: the current user's lock context, built once per request. Accessing it without a verified
#: identity raises LockContextError (protect the view with @lock_context_required).
current_lock_context: LockContext = cast(
    LockContext, LocalProxy(_lock_context, unbound_message="current_lock_context needs a request context")
)


def current_claims() -> dict[str, Any] | None:
    """The verified identity claims of this request, or ``None``."""
    return cast("dict[str, Any] | None", _request_state().claims)


@overload
def lock_context_required(fn: F) -> F: ...
@overload
def lock_context_required(*, scopes: Iterable[str] = ()) -> Callable[[F], F]: ...


def lock_context_required(fn: F | None = None, *, scopes: Iterable[str] = ()) -> F | Callable[[F], F]:
    """Protect a view: it runs only with a verified identity and a CTS token.

    HTML pages without one are redirected to sign-in (and back); API paths get 401 JSON with a
    coarse reason (``missing``, ``expired``, ``invalid``). An outage answers 503
    (``unavailable``); missing ``scopes`` answer 403 (``insufficient_scope``). ``OPTIONS`` (a
    CORS preflight, sent without credentials) gets Flask's default answer; the view does not run.
    """
    required = frozenset(scopes)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.method == "OPTIONS":
                # a CORS preflight carries no credentials: answer it as Flask does (Allow
                # header; CORS extensions add theirs after the request) without running the
                # view, which would otherwise run unauthenticated
                return current_app.make_default_options_response()
            ns = _request_state()
            if ns.cts is None:
                return refused_response(ns.reason, 503 if ns.unavailable else 401)
            if required and not required <= set(normalise_scopes(ns.claims or {})):
                return refused_response("insufficient_scope", 403)
            return current_app.ensure_sync(view)(*args, **kwargs)

        return cast(F, wrapper)

    return decorate(fn) if fn is not None else decorate
