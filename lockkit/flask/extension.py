"""The ``LockKit`` Flask extension and its per-request middleware."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pluggy
from flask import Flask, current_app, g, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.wrappers import Response

from ..audit import AuditLog
from ..client import Encryption
from ..config import Settings, flag, load_settings
from ..cts import CtsUnavailableError
from ..cts.embedded import normalise_scopes
from ..errors import ClientInitError, CtsTokenError, IdentityError, LockContextError, ProviderUnavailableError
from ..identity import CtsToken, LockContext, TokenService
from ..keys import KeyService
from ..oidc import Claims
from ..plugins import audit_sinks, identity_provider_classes, make_plugin_manager
from ..provider import IdentityProvider, safe_next
from ..schema import EncryptedTable
from ..services import build_services
from . import signals
from .cookie_session import RememberingCookieSessionInterface
from .session import Sealer

log = logging.getLogger("lockkit.flask")

#: every LOCKKIT_* key the extension reads, with its default (documented in the README)
DEFAULTS: dict[str, Any] = {
    "LOCKKIT_PROVIDERS": [],  # names of provider plugins, e.g. ["clerk"] or ["dev"]
    "LOCKKIT_REFRESH_WINDOW": 60,  # exchange again when the CTS token expires within this (s)
    "LOCKKIT_SESSION_KEY": "_lockkit_cts",
    "LOCKKIT_LOGIN_VIEW": None,  # endpoint for HTML sign-in when no provider serves one
    "LOCKKIT_API_PREFIXES": ["/api/"],  # paths answered with JSON 401/403/503, not redirects
    "LOCKKIT_IDENTITY_CLAIM": ["sub"],  # claims current_lock_context locks to
    "LOCKKIT_TRACE_PLUGINS": False,
    "LOCKKIT_LOAD_ENTRYPOINTS": True,
    # verify each distinct signed session cookie once (Flask's default cookie session only)
    "LOCKKIT_REMEMBER_COOKIE_SESSIONS": True,
}

SESSION_PURPOSE = "cts"


@dataclass
class LockKitState:
    """What ``app.extensions["lockkit"]`` holds for one app."""

    settings: Settings
    providers: list[IdentityProvider]
    token_service: TokenService
    key_service: KeyService
    sealer: Sealer
    plugin_manager: pluggy.PluginManager
    refresh_window: float
    session_key: str
    api_prefixes: tuple[str, ...]
    #: the lock context requests get (current_lock_context): these claims, this token service
    lock_template: LockContext
    login_view: str | None
    unauthorized: Callable[[str, int], Any] | None = None
    #: the extension bound here (its unauthorized handler may be set after init_app)
    extension: LockKit | None = None
    #: the clock the middleware reads; tests inject one instead of patching time
    clock: Callable[[], float] = time.time
    clients: dict[tuple[str, ...], Encryption] = field(default_factory=dict, repr=False)
    #: steady-state requests: (sealed session value, identity token, provider namespace) ->
    #: the CTS token it holds, once it was found to match that verified identity. A pure
    #: function's memo (unseal + claims binding); the identity token is still verified and the
    #: expiry still checked on every request. Bounded. Its keys are credentials: not in repr.
    session_memo: dict[tuple[str, str, str], CtsToken] = field(default_factory=dict, repr=False)

    @property
    def identity_claim(self) -> tuple[str, ...]:
        """The claims ``current_lock_context`` locks to (``LOCKKIT_IDENTITY_CLAIM``)."""
        return self.lock_template.identity_claim

    @property
    def audit_log(self) -> AuditLog | None:
        """The built-in audit log, if one is configured (``[audit] log``)."""
        auditor = getattr(self.key_service, "auditor", None)
        for sink in getattr(auditor, "sinks", ()):
            if isinstance(sink, AuditLog):
                return sink
        return None

    def encryption(self, schemas: Sequence[EncryptedTable], keyset: str | None = None) -> Encryption:
        """An encryption client on this app's services (cached per schema set; a table declared
        anew with other columns under the same name gets a new client, not a ClientInitError)."""
        key = tuple(t.table_name for t in schemas) + (keyset or "",)
        client = self.clients.get(key)
        if client is None or any(
            (declared := client._tables.get(t.table_name)) is not t and declared != t for t in schemas
        ):
            client = self.clients[key] = Encryption(
                schemas, key_service=self.key_service, token_service=self.token_service,
                keyset=keyset or self.settings.keyset,
            )
        return client


class LockKit:
    """Flask extension: ``LockKit(app)`` or ``lockkit = LockKit(); lockkit.init_app(app)``.

    :param plugin_manager: a manager from :func:`lockkit.plugins.make_plugin_manager`
        (default: a new one per app, loading entry points).
    """

    def __init__(self, app: Flask | None = None, *, plugin_manager: pluggy.PluginManager | None = None) -> None:
        self._pm = plugin_manager
        self._unauthorized: Callable[[str, int], Any] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Bind to ``app``: read config, build providers and services, install middleware.

        :raises ClientInitError: bad or missing configuration (the message names the key).
        """
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        _harden_session_cookie(app)
        settings = load_settings(overrides=app.config)
        pm = self._pm or make_plugin_manager(
            load_entrypoints=flag(app.config, "LOCKKIT_LOAD_ENTRYPOINTS", True),
            trace=flag(app.config, "LOCKKIT_TRACE_PLUGINS"),
        )
        providers = _build_providers(app, pm)
        token_service, key_service = build_services(settings, providers, audit_sinks(pm))
        try:
            template = LockContext(identity_claim=app.config["LOCKKIT_IDENTITY_CLAIM"], token_service=token_service)
        except LockContextError as err:
            raise ClientInitError(f"LOCKKIT_IDENTITY_CLAIM: {err.message}") from err
        state = LockKitState(
            settings=settings,
            providers=providers,
            token_service=token_service,
            key_service=key_service,
            sealer=Sealer(app.config.get("SECRET_KEY")),
            plugin_manager=pm,
            refresh_window=float(app.config["LOCKKIT_REFRESH_WINDOW"]),
            session_key=str(app.config["LOCKKIT_SESSION_KEY"]),
            api_prefixes=tuple(app.config["LOCKKIT_API_PREFIXES"]),
            lock_template=template,
            login_view=app.config["LOCKKIT_LOGIN_VIEW"],
            unauthorized=self._unauthorized,
            extension=self,
        )
        app.extensions["lockkit"] = state
        app.before_request(_authenticate)
        for p in providers:
            p.init_app(app)
        from ..cli import cli

        app.cli.add_command(cli, "lockkit")

    def unauthorized_handler(self, fn: Callable[[str, int], Any]) -> Callable[[str, int], Any]:
        """Replace the response for refused requests: ``fn(reason, status)`` returns a
        response. ``reason`` is ``missing``, ``expired``, ``invalid``, ``unavailable`` or
        ``insufficient_scope``; ``status`` the suggested HTTP status."""
        self._unauthorized = fn
        try:
            state = current_app.extensions["lockkit"]
            state.unauthorized = fn
        except (RuntimeError, KeyError):
            pass
        return fn


def get_state(app: Flask | None = None) -> LockKitState:
    """``app.extensions["lockkit"]`` (default: the current app).

    :raises RuntimeError: LockKit is not initialised on the app.
    """
    app = app or current_app
    try:
        return app.extensions["lockkit"]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError("LockKit is not initialised on this app: call LockKit(app)") from None


def _harden_session_cookie(app: Flask) -> None:
    current = app.session_interface
    if type(current) is SecureCookieSessionInterface and flag(app.config, "LOCKKIT_REMEMBER_COOKIE_SESSIONS", True):
        remembering = RememberingCookieSessionInterface()
        remembering.__dict__.update(vars(current))  # what the app set on it: salt, digest, serializer...
        app.session_interface = remembering
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if not (app.debug or app.testing) and not flag(app.config, "LOCKKIT_INSECURE_COOKIES"):
        app.config["SESSION_COOKIE_SECURE"] = True


def _build_providers(app: Flask, pm: pluggy.PluginManager) -> list[IdentityProvider]:
    names = app.config["LOCKKIT_PROVIDERS"]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ClientInitError('set LOCKKIT_PROVIDERS to the identity providers to use, e.g. ["clerk"] or ["dev"]')
    classes = identity_provider_classes(pm)
    out = []
    for name in names:
        cls = classes.get(name)
        if cls is None:
            raise ClientInitError(
                f"unknown identity provider {name!r} in LOCKKIT_PROVIDERS "
                f"(installed: {', '.join(sorted(classes)) or 'none'}; install lockkit-{name}?)"
            )
        out.append(cls.from_config(app.config))
    return out


# -- middleware ---------------------------------------------------------------------------
def _request_state() -> SimpleNamespace:
    ns: SimpleNamespace | None = g.get("_lockkit")
    if ns is None:
        ns = g._lockkit = SimpleNamespace(
            provider=None, claims=None, cts=None, reason="missing", unavailable=False, lock_context=None
        )
    return ns


def _authenticate() -> None:
    """Before each request: find and verify the identity token; keep the session's CTS
    token in step with it. Decisions come only from verified tokens."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # the proxies resolved once
    endpoint = req.endpoint or ""
    if endpoint == "static" or endpoint.endswith(".static"):
        return  # static files never need an identity
    state: LockKitState = current_app._get_current_object().extensions["lockkit"]  # type: ignore[attr-defined]
    ns = _request_state()
    now = state.clock()
    claims: Claims | None = None
    provider: IdentityProvider | None = None
    token: str | None = None
    found_credential = False
    for p in state.providers:
        candidate = p.token_from_request(req)
        if not candidate:
            continue
        found_credential = True
        try:
            claims = p.verify(candidate, now=now)
        except ProviderUnavailableError as err:
            ns.unavailable, ns.reason = True, "unavailable"
            log.warning("identity provider %s unavailable: %s", p.name, err.detail)
            return
        except IdentityError as err:
            ns.reason = err.reason
            log.info("identity token refused by %s: %s", p.name, err.detail)
            signals.identity_rejected.send(current_app._get_current_object(), provider=p.name, reason=err.reason)  # type: ignore[attr-defined]
            return
        if claims is not None:
            provider, token = p, candidate
            break
    if claims is None or provider is None or token is None:
        if found_credential:
            ns.reason = "invalid"  # a token no configured provider owns
            return
        if state.session_key in session:
            _retire(state, session.pop(state.session_key, None))
            signals.cts_token_removed.send(current_app._get_current_object(), reason="signed-out")  # type: ignore[attr-defined]
        return
    ns.provider, ns.claims = provider, claims
    sealed = session.get(state.session_key)
    memo_key = (sealed, token, provider.namespace) if isinstance(sealed, str) else None
    known = state.session_memo.get(memo_key) if memo_key is not None else None
    binding: str | None = None
    stored: Any = None  # the session's sealed value, once unsealed
    if known is not None:
        if known.expiry - state.refresh_window > now:
            ns.cts = known
            return
    else:
        stored = state.sealer.unseal(SESSION_PURPOSE, sealed)
        binding = _claims_binding(claims, state.settings.cts_claims)
        if (
            isinstance(stored, dict)
            and stored.get("sub") == claims["sub"]
            and stored.get("ns") == provider.namespace
            and isinstance(stored.get("exp"), int)
            and isinstance(stored.get("tok"), str) and stored["tok"] != ""
            and isinstance(stored.get("b"), str)
            and hmac.compare_digest(stored["b"], binding)
        ):
            known = CtsToken(stored["tok"], stored["exp"])
            if known.expiry - state.refresh_window > now and _still_accepted(state, known, now):
                if memo_key is not None:
                    _remember(state.session_memo, memo_key, known)
                ns.cts = known
                return
    if binding is None:
        binding = _claims_binding(claims, state.settings.cts_claims)
    try:
        cts = state.token_service.authorize(provider.cts_jwt(token, claims), now=now)
    except CtsUnavailableError as err:
        ns.unavailable, ns.reason = True, "unavailable"
        log.warning("token service unavailable: %s", err.message)
        return
    except CtsTokenError as err:
        ns.unavailable, ns.reason = True, "unavailable"
        log.error("token service refused a verified identity (configuration?): %s", err.message)
        return
    previous = stored if stored is not None or not isinstance(sealed, str) else state.sealer.unseal(SESSION_PURPOSE, sealed)
    if not (isinstance(previous, dict) and previous.get("sub") == claims["sub"] and previous.get("ns") == provider.namespace):
        # another identity (or the first one) in this session: a server-side session gets a new
        # id, so one planted in this browser beforehand is not the one it is signed in with
        if sealed is not None:
            _retire(state, sealed)
        regenerate_session_id()
    session[state.session_key] = state.sealer.seal(
        SESSION_PURPOSE, {"tok": cts.access_token, "exp": cts.expiry, "sub": claims["sub"], "ns": provider.namespace, "b": binding}
    )
    ns.cts = cts
    signals.cts_token_exchanged.send(current_app._get_current_object(), subject=claims["sub"], provider=provider.name)  # type: ignore[attr-defined]


_SESSION_MEMO_SIZE = 1024


def regenerate_session_id() -> None:
    """Give a server-side session (Flask-Session) a new id, keeping its contents; a cookie
    session has no id to fix."""
    regenerate = getattr(current_app.session_interface, "regenerate", None)
    if callable(regenerate):
        regenerate(session)


def end_session() -> None:
    """Sign-out, for the CTS token: revoke it where the token service can (OpenBao), drop the
    data keys the key service cached for it, remove it from the session, and give a server-side
    session a new id. Call it in a sign-out view before clearing the session; the providers'
    sign-out routes do. A no-op outside a request or without LockKit."""
    if not has_request_context():
        return
    state = current_app.extensions.get("lockkit")
    if state is None:
        return
    sealed = session.pop(state.session_key, None)
    if sealed is not None:
        _retire(state, sealed)
        signals.cts_token_removed.send(current_app._get_current_object(), reason="signed-out")  # type: ignore[attr-defined]
    regenerate_session_id()


def _retire(state: LockKitState, sealed: Any) -> None:
    """A CTS token leaving the session: the key service forgets what it cached for it, and the
    token service revokes it where it can (OpenBao tokens). Best effort: sign-out goes on."""
    stored = state.sealer.unseal(SESSION_PURPOSE, sealed) if isinstance(sealed, str) else None
    if not isinstance(stored, dict) or not isinstance(stored.get("tok"), str) or not isinstance(stored.get("exp"), int):
        return
    try:
        cts = CtsToken(stored["tok"], stored["exp"])
    except CtsTokenError:
        return
    for service, method in ((state.key_service, "forget"), (state.token_service, "revoke")):
        fn = getattr(service, method, None)
        if callable(fn):
            try:
                fn(cts)
            except Exception as err:  # noqa: BLE001 - never let clean-up break a sign-out
                log.warning("could not %s the session's CTS token: %s", method, type(err).__name__)


def _still_accepted(state: LockKitState, cts: CtsToken, now: float) -> bool:
    """Whether the key service still accepts a CTS token found in the session (asked once per
    session value and process: the memo remembers the answer). A token signed by a key that
    was retired meanwhile is exchanged again rather than failing every operation. Key services
    without a local check (OpenBao: its server decides) are trusted to answer at use."""
    check = getattr(state.key_service, "check_token", None)
    if check is None:
        return True
    try:
        check(cts.access_token, now=now)
    except LockContextError as err:
        log.info("the session's CTS token is no longer accepted (%s): exchanging again", err.message)
        return False
    return True


def _remember(memo: dict[tuple[str, str, str], CtsToken], key: tuple[str, str, str], token: CtsToken) -> None:
    while len(memo) >= _SESSION_MEMO_SIZE:  # drop the oldest (dicts keep insertion order)
        try:
            memo.pop(next(iter(memo)))
        except (StopIteration, KeyError, RuntimeError):  # another thread got there first
            break
    memo[key] = token


def _claims_binding(claims: Claims, extra: Sequence[str]) -> str:
    """A digest of the claim values a CTS token carries besides ``sub``: its scopes and the
    ``[cts] claims``. A stored token whose digest differs was minted for other claims."""
    bound = {"scopes": normalise_scopes(claims), "ctx": {name: claims.get(name) for name in extra}}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, default=str).encode()).hexdigest()


def refused_response(reason: str, status: int) -> Any:
    """The default answer to a refused request: JSON for API paths, a redirect to sign-in for
    HTML pages (401/403 pages when there is nowhere to send the browser)."""
    from flask import jsonify, redirect, url_for

    state = get_state()
    handler = state.unauthorized or (state.extension._unauthorized if state.extension else None)
    if handler is not None:
        return handler(reason, status)
    wants_json = request.path.startswith(state.api_prefixes) or (
        request.accept_mimetypes.best == "application/json"
    ) or "Authorization" in request.headers
    if wants_json or status in (403, 503):
        if wants_json:
            resp = jsonify(error=reason)
            resp.status_code = status
            if status == 401:
                resp.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if reason != "missing" else "Bearer"
            if status == 503:
                resp.headers["Retry-After"] = "30"
            return resp
        page = Response(_html_page(reason, status), status=status, mimetype="text/html")
        if status == 503:
            page.headers["Retry-After"] = "30"
        return page
    nxt = _return_path()
    for p in state.providers:
        url = p.login_url(nxt)
        if url:
            return redirect(url)
    if state.login_view:
        return redirect(url_for(state.login_view, next=nxt))
    return Response(_html_page(reason, status), status=status, mimetype="text/html")


def _return_path() -> str:
    """Where sign-in (or a provider's token refresh) sends the browser back to: this page for a
    GET; for a form post, the same-origin page that sent it (its ``Referer``), else ``/``. Never
    the post's own path: the browser would come back to it with a GET (405, and the form lost
    for nothing)."""
    if request.method in ("GET", "HEAD"):
        return request.full_path if request.query_string else request.path
    referer = urlsplit(request.referrer or "")
    here = urlsplit(request.host_url)
    if (referer.scheme, referer.netloc) != (here.scheme, here.netloc):
        return "/"
    return safe_next(referer.path + (f"?{referer.query}" if referer.query else ""))


_MESSAGES = {
    "missing": "Please sign in.",
    "expired": "Your session expired. Please sign in again.",
    "invalid": "Your sign-in could not be verified. Please sign in again.",
    "unavailable": "Sign-in is temporarily unavailable. Please try again shortly.",
    "insufficient_scope": "You do not have permission to see this page.",
}


def _html_page(reason: str, status: int) -> str:
    return (
        f"<!doctype html><title>{status}</title><h1>{status}</h1>"
        f"<p>{_MESSAGES.get(reason, 'Access refused.')}</p>"
    )
