"""The token service over HTTP: a plain WSGI app around :class:`EmbeddedTokenService`.

Routes (the wire contract of :mod:`lockkit.cts.remote`, and the reference product's
``POST /api/authorize``)::

    POST /api/authorize           {"workspaceId": "<id or CRN>", "oidcToken": "<IdP JWT>"}
        200 {"accessToken": "...", "expiry": <unix seconds>}
        400 {"error": "invalid_request", "message": ...}   bad JSON, missing or mistyped field
        400 {"error": "invalid_workspace", "message": ...} this service serves another workspace
        401 {"error": "invalid_token", "message": ...}     the identity token was rejected
        413 {"error": "request_too_large", ...}            body over 64 KiB
        503 {"error": "unavailable", "message": ...}       the IdP's keys could not be fetched
    GET  /.well-known/jwks.json   the public keys that verify CTS tokens (max-age=300)
    GET  /healthz                 200 {"status": "ok"}

Any other method on these paths answers 405 (with ``Allow``); any other path 404. Every body is
JSON. Tokens are never logged: rejections are logged with the verifier's ``detail``, which never
contains the token.

Run it with ``lockkit cts serve`` for development; in production use a real WSGI server, e.g.
``gunicorn 'lockkit.cts.server:create_app()'`` behind TLS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from ..config import Settings, load_settings, parse_crn
from ..errors import CtsTokenError, IdentityError
from ..oidc import strict_json_loads
from .embedded import CtsUnavailableError, EmbeddedTokenService

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "AUTHORIZE_PATH",
    "CtsApp",
    "HEALTH_PATH",
    "JWKS_PATH",
    "MAX_REQUEST_BYTES",
    "create_app",
]

AUTHORIZE_PATH: Final = "/api/authorize"
JWKS_PATH: Final = "/.well-known/jwks.json"
HEALTH_PATH: Final = "/healthz"
MAX_REQUEST_BYTES: Final = 64 * 1024
JWKS_MAX_AGE: Final = 300

log = logging.getLogger("lockkit.cts.server")

# Coarse, client-safe wording per IdentityError.reason: enough for a frontend to fetch a fresh
# identity token, no more. The verifier's detail goes to the log only.
_REASON_MESSAGES: Final = {
    "missing": "The JWT was rejected by CTS: no identity token was given",
    "expired": "The JWT was rejected by CTS: the identity token has expired",
    "invalid": "The JWT was rejected by CTS: the identity token is invalid",
}


class _Request(Request):
    # one byte over the limit, so that reading MAX + 1 bytes tells "too large" apart from
    # "exactly at the limit" for bodies without Content-Length (chunked)
    max_content_length = MAX_REQUEST_BYTES + 1


def _read_body(request: Request) -> bytes | None:
    """The request body, or ``None`` when it is over :data:`MAX_REQUEST_BYTES`."""
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        return None
    stream = request.stream
    body = bytearray()
    while len(body) <= MAX_REQUEST_BYTES:
        chunk = stream.read(MAX_REQUEST_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return None if len(body) > MAX_REQUEST_BYTES else bytes(body)


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _json(status: int, body: dict[str, Any], *, cache: str = "no-store") -> Response:
    response = Response(
        json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json"
    )
    response.headers["Cache-Control"] = cache
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _parse_authorize_body(raw: bytes) -> tuple[str, str]:
    """``(workspaceId, oidcToken)`` from a request body.

    :raises _BadRequest: not a JSON object with two non-empty string fields.
    """
    try:
        data = strict_json_loads(raw)
    except ValueError as err:
        raise _BadRequest("the request body must be a JSON object") from err
    if not isinstance(data, dict):
        raise _BadRequest("the request body must be a JSON object")
    fields = []
    for name in ("workspaceId", "oidcToken"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise _BadRequest(f"{name} is required and must be a non-empty string")
        fields.append(value)
    return fields[0], fields[1]


class CtsApp:
    """The WSGI application. Thread-safe (the token service is).

    :param service: the embedded token service that verifies identity tokens and mints CTS
        tokens; its workspace is the only one this app serves.
    """

    def __init__(self, service: EmbeddedTokenService) -> None:
        self.service = service
        self.workspace_crn = service.workspace_crn
        self._workspace_id = parse_crn(service.workspace_crn)[1]
        self._routes: dict[str, tuple[tuple[str, ...], Callable[[_Request], Response]]] = {
            AUTHORIZE_PATH: (("POST",), self._authorize),
            JWKS_PATH: (("GET", "HEAD"), self._jwks),
            HEALTH_PATH: (("GET", "HEAD"), self._health),
        }

    def __repr__(self) -> str:
        return f"CtsApp(workspace_crn={self.workspace_crn!r})"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = _Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        """The response for one request (never raises)."""
        req = request if isinstance(request, _Request) else _Request(request.environ)  # our limit
        route = self._routes.get(req.path)
        if route is None:
            return _json(404, {"error": "not_found", "message": "no such endpoint"})
        methods, handler = route
        if req.method not in methods:
            response = _json(
                405,
                {"error": "method_not_allowed", "message": f"use {' or '.join(methods)}"},
            )
            response.headers["Allow"] = ", ".join(methods)
            return response
        try:
            return handler(req)
        except Exception:  # a bug must not leak a traceback (or anything else) to the client
            log.exception("CTS server error on %s %s", req.method, req.path)
            return _json(500, {"error": "server_error", "message": "internal error"})

    # -- handlers ------------------------------------------------------------------------
    def _authorize(self, request: _Request) -> Response:
        if request.mimetype != "application/json":
            # JSON only: a browser cannot send it cross-site without a CORS preflight (which
            # this server never grants), unlike text/plain or a form
            return _json(415, {"error": "invalid_request", "message": "send the body as application/json"})
        try:
            raw = _read_body(request)
        except RequestEntityTooLarge:
            raw = None
        except ClientDisconnected:
            return _json(400, {"error": "invalid_request", "message": "the request body was cut short"})
        if raw is None:
            return self._too_large()
        try:
            workspace, oidc_token = _parse_authorize_body(raw)
        except _BadRequest as err:
            return _json(400, {"error": "invalid_request", "message": err.message})
        if workspace not in (self._workspace_id, self.workspace_crn):
            return _json(
                400,
                {
                    "error": "invalid_workspace",
                    "message": "this token service does not serve that workspace",
                },
            )
        try:
            token = self.service.authorize(oidc_token)
        except CtsUnavailableError as err:
            log.warning("CTS authorize: identity provider unavailable: %s", _detail(err))
            return _json(
                503,
                {
                    "error": "unavailable",
                    "message": "CTS could not verify the JWT: the identity provider's keys are "
                    "unavailable; try again later",
                },
            )
        except CtsTokenError as err:
            cause = err.__cause__
            reason = cause.reason if isinstance(cause, IdentityError) else "invalid"
            log.info("CTS authorize: identity token rejected (%s): %s", reason, _detail(err))
            message = _REASON_MESSAGES.get(reason, _REASON_MESSAGES["invalid"])
            if cause is None:  # not the token's fault (e.g. no trusted issuer): say so
                message = err.message
            return _json(401, {"error": "invalid_token", "message": message})
        return _json(200, token.to_dict())

    def _jwks(self, request: _Request) -> Response:
        return _json(200, self.service.jwks(), cache=f"max-age={JWKS_MAX_AGE}")

    def _health(self, request: _Request) -> Response:
        return _json(200, {"status": "ok"})

    @staticmethod
    def _too_large() -> Response:
        response = _json(
            413,
            {"error": "request_too_large", "message": f"the request body is over {MAX_REQUEST_BYTES} bytes"},
        )
        response.headers["Connection"] = "close"  # the unread body is not drained
        return response


def _detail(err: CtsTokenError) -> str:
    """A log line for a rejection: the verifier's detail (never the token)."""
    cause = err.__cause__
    return cause.detail if isinstance(cause, IdentityError) else err.message


def create_app(settings: Settings | None = None) -> CtsApp:
    """The CTS WSGI app for ``settings`` (default: :func:`~lockkit.config.load_settings`).

    Production: ``gunicorn 'lockkit.cts.server:create_app()'`` (behind TLS).

    :raises ConfigurationError: no workspace configured, or a bad keyring or issuer.
    """
    from . import build_token_service

    return CtsApp(build_token_service(settings or load_settings()))
