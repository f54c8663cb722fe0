"""lockkit-oidc: any OpenID Connect provider, with redirect sign-in through Authlib's Flask client.

The provider is a thin layer on lockkit's core verifier (:class:`lockkit.oidc.OIDCVerifier`):

* **Discovery.** ``{issuer}/.well-known/openid-configuration`` is fetched lazily the first
  time it is needed, so an app starts even while its IdP is down: one fetch at a time, outside
  any lock (concurrent requests share its outcome), the whole document within twice the
  timeout, parsed as strict JSON. After a failure, requests fail fast for
  :data:`DISCOVERY_RETRY_INTERVAL` seconds from the failure. The document's ``issuer`` must
  equal the configured issuer exactly; its ``jwks_uri`` feeds the verifiers and its endpoints
  feed Authlib. A ``revocation_endpoint`` or ``end_session_endpoint`` that is not https (plain
  http only on loopback) is ignored, with a warning: sign-out then neither revokes nor
  redirects there.
* **Two verifiers.** ID tokens (``aud`` = the client id) and API access tokens (``aud`` =
  ``LOCKKIT_OIDC_AUDIENCE``) are different credentials. A token presented in an
  ``Authorization: Bearer`` header is verified as an access token only; the session's token is
  verified as an ID token only. Tokens of other issuers are left to other providers (``None``).
  When the audience *is* the client id (Entra ID v2), a bearer token must also show that it
  is an access token (``typ: at+jwt`` or a ``scp``/``scope`` claim, and no ``nonce``,
  ``at_hash``, ``c_hash`` or ``s_hash``).
* **Sign-in.** ``/lockkit/oidc/login`` -> the IdP (authorization code flow with PKCE ``S256``,
  ``state`` and ``nonce``) -> ``/lockkit/oidc/callback``, where Authlib checks ``state``,
  exchanges the code with the PKCE verifier and checks the ID token's ``nonce``; the raw ID
  token is then verified again by the strict core verifier. The ID token and refresh token are
  **sealed** (AES-GCM, :class:`lockkit.flask.Sealer`) before they enter the session.
* **Refresh.** When the session's ID token expires within the kit's refresh window and a
  refresh token exists, it is refreshed once at the token endpoint (with a timeout; the whole
  answer within twice the timeout, as the callback's code exchange). A refused
  refresh signs the user out locally, so the next protected page sends them to sign in: never
  a loop. A transient failure (no answer, 5xx) keeps the current ID token until it expires,
  and no refresh is tried for :data:`REFRESH_RETRY_INTERVAL` seconds; one refresh at a time
  per session (its other requests share it).
* **Cookie sessions.** With Flask's default (cookie) session, a sign-in whose tokens would
  push the cookie over what browsers keep (4 KB) is refused with a page and an error log
  recommending server-side sessions (Flask-Session); pending sign-ins are trimmed to fit.
* **Sign-out.** ``POST /lockkit/oidc/logout`` (with the form token from
  ``lockkit_oidc_csrf()``) clears the session and sends the browser to the discovery
  document's ``end_session_endpoint`` (RP-Initiated Logout: ``id_token_hint``,
  ``post_logout_redirect_uri``, ``client_id``).

Configuration (Flask ``app.config``): ``LOCKKIT_OIDC_ISSUER``, ``LOCKKIT_OIDC_CLIENT_ID``,
``LOCKKIT_OIDC_CLIENT_SECRET`` (omit for a public client: PKCE is always on),
``LOCKKIT_OIDC_SCOPES`` (default ``openid profile email offline_access``),
``LOCKKIT_OIDC_AUDIENCE`` (API audience of bearer access tokens; bearer tokens are refused
without it), ``LOCKKIT_OIDC_ALGORITHMS`` (default ``RS256``), and optionally
``LOCKKIT_OIDC_REDIRECT_URI``, ``LOCKKIT_OIDC_POST_LOGOUT_REDIRECT_URI``,
``LOCKKIT_OIDC_AUTHORIZE_PARAMS`` (extra authorization request parameters, e.g.
``{"prompt": "consent"}``), ``LOCKKIT_OIDC_NAMESPACE``, ``LOCKKIT_OIDC_LEEWAY``,
``LOCKKIT_OIDC_HTTP_TIMEOUT``, ``LOCKKIT_OIDC_JWKS_TTL``,
``LOCKKIT_OIDC_JWKS_MIN_REFETCH_INTERVAL``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import requests
from authlib.common.errors import AuthlibBaseError  # type: ignore[import-untyped]
from authlib.integrations.flask_client import FlaskIntegration, FlaskOAuth2App  # type: ignore[import-untyped]
from authlib.integrations.requests_client import OAuth2Session  # type: ignore[import-untyped]
from flask import Blueprint, Flask, Response, abort, current_app, has_request_context, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from werkzeug.http import dump_cookie
from werkzeug.wrappers import Response as BaseResponse

from lockkit import ConfigurationError, hookimpl
from lockkit.errors import IdentityError, InvalidCredentialError, ProviderUnavailableError
from lockkit.oidc import (
    BodyTooSlow,
    Claims,
    IssuerConfig,
    OIDCVerifier,
    http_client,
    mount_deadlines,
    protected_url,
    read_body,
    strict_json_loads,
)
from lockkit.provider import IdentityProvider, RequestLike, bearer_token, safe_next

try:  # Authlib >= 1.6 verifies ID tokens with joserfc
    from joserfc.errors import JoseError
except ImportError:  # pragma: no cover - older Authlib raises its own (AuthlibBaseError) errors
    JoseError = AuthlibBaseError  # type: ignore[misc]

__all__ = ["OIDCProvider", "OIDCSettings", "csrf_token", "register_identity_providers"]

log = logging.getLogger("lockkit.oidc.provider")

DEFAULT_SCOPES: Final = ("openid", "profile", "email", "offline_access")
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
#: after a failed discovery fetch, requests fail fast for this long instead of each waiting
#: (counted from when the attempt failed)
DISCOVERY_RETRY_INTERVAL: Final = 5.0
#: after a refresh failed for a transient reason (timeout, 5xx), no refresh is attempted for
#: this long: each request would otherwise wait for the token endpoint again
REFRESH_RETRY_INTERVAL: Final = 5.0
MAX_DISCOVERY_BYTES: Final = 1 << 20
#: the largest answer read from the token endpoint (and Authlib's JWKS fetch at sign-in): a
#: token response is a few kilobytes
MAX_TOKEN_RESPONSE_BYTES: Final = 1 << 20
#: sign-ins started but not finished that one session keeps (several tabs); older ones lapse
MAX_PENDING_LOGINS: Final = 3
#: the longest ``Set-Cookie`` header (name, value, attributes) this provider lets Flask's cookie
#: session send: werkzeug's limit (it warns above it); browsers drop cookies over 4096 bytes
MAX_COOKIE_BYTES: Final = 4093
#: room a sign-in leaves in a cookie session for what the session gains afterwards: lockkit's
#: sealed token-service token (about 800 bytes with the embedded token service) and the
#: sign-out form token
COOKIE_SESSION_RESERVE: Final = 900
#: claims only ID tokens carry (OpenID Connect Core 3.1.3.6, 3.3.2.11): never in an access token
_ID_TOKEN_CLAIMS: Final = ("nonce", "at_hash", "c_hash", "s_hash")
#: optional discovery endpoints that receive tokens or secrets: ignored unless protected
_OPTIONAL_ENDPOINTS: Final = {
    "revocation_endpoint": "refresh tokens are not revoked at sign-out",
    "end_session_endpoint": "sign-out ends the local session only",
}
_RESERVED_PARAMS: Final = frozenset(
    {"client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge", "code_challenge_method"}
)
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
# Authlib constructor arguments that a discovery document must not override
_AUTHLIB_ARGS: Final = frozenset(
    {
        "framework", "name", "fetch_token", "update_token", "client_id", "client_secret", "access_token_url",
        "access_token_params", "authorize_url", "authorize_params", "api_base_url", "client_kwargs",
        "server_metadata_url", "compliance_fix", "client_auth_methods", "user_agent",
    }
)
#: what a token exchange or refresh can raise (translated at this boundary): a malformed answer
#: (``"expires_in": 1e400`` is an OverflowError in Authlib, JSON nested too deep a
#: RecursionError) is a refusal, never an uncaught exception
_OAUTH_ERRORS: Final = (
    AuthlibBaseError, JoseError, requests.RequestException, ValueError, KeyError, TypeError, OverflowError,
    RecursionError,
)


def _transient(err: BaseException) -> bool:
    """Whether a token endpoint failure is the IdP's outage (no answer, a timeout, 5xx or 429)
    rather than a refusal: the user did nothing wrong and should try again later."""
    if isinstance(err, requests.HTTPError):
        status = err.response.status_code if err.response is not None else None
        return status is None or status >= 500 or status == 429
    return isinstance(err, (requests.RequestException, BodyTooSlow))


def _check_url(name: str, url: str, *, allow_path: bool = True) -> str:
    """``https://`` (plain ``http://`` only on loopback), no query or fragment.

    :raises ConfigurationError: otherwise; the message names ``name``.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as err:
        raise ConfigurationError(f"{name} is not a valid URL") from err
    if not host or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"set {name} to an absolute URL without query, fragment or credentials")
    if not protected_url(url) or (parts.scheme != "https" and not (parts.scheme == "http" and host in _LOOPBACK)):
        raise ConfigurationError(f"set {name} to an https:// URL (plain http only on loopback)")
    if not allow_path and parts.path not in ("", "/"):
        raise ConfigurationError(f"{name} must not have a path")
    return url


def _words(value: Any, name: str) -> tuple[str, ...]:
    """A list of strings from a list/tuple or a comma/space separated string."""
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value if v.strip()]
    else:
        raise ConfigurationError(f"{name} must be a list of strings or a space separated string")
    return tuple(dict.fromkeys(items))


def _number(config: Mapping[str, Any], name: str, default: float) -> float:
    value = config.get(name)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigurationError(f"set {name} to a number of seconds") from err
    if number != number or number < 0:  # NaN or negative
        raise ConfigurationError(f"set {name} to a number of seconds, zero or more")
    return number


def _unverified_issuer(token: str) -> str | None:
    """The ``iss`` of a compact JWT, unverified: used only to leave other issuers' tokens to
    other providers (never to accept anything). ``None`` when it cannot be read."""
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 65536:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    return iss if isinstance(iss, str) else None


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWT (of a token already verified), ``{}`` if unreadable."""
    try:
        segment = token.split(".", 1)[0]
        header = strict_json_loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return header if isinstance(header, dict) else {}


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut short: for log and error messages about what an IdP sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _string_list(doc: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    """``doc[key]`` when it is a list of strings, ``None`` when absent.

    :raises ConfigurationError: present but not a list of strings.
    """
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigurationError(f"the discovery document at {where} has an invalid {key}: not a list of strings")
    return value


def _usable_endpoint(url: Any) -> bool:
    """An endpoint that may receive tokens or secrets: https (plain http only on loopback), read
    alike by every parser (:func:`lockkit.oidc.protected_url`), no fragment."""
    return isinstance(url, str) and protected_url(url) and "#" not in url


@dataclass(frozen=True)
class OIDCSettings:
    """Everything an :class:`OIDCProvider` is configured with. ``repr`` hides the secret.

    :raises ConfigurationError: a value is missing or invalid; the message names the key.
    """

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    redirect_uri: str | None = None
    post_logout_redirect_uri: str | None = None
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    namespace: str | None = None
    leeway: float = 5.0
    http_timeout: float = 5.0
    jwks_ttl: float = 300.0
    jwks_min_refetch_interval: float = 30.0
    prefix: str = "LOCKKIT_OIDC_"

    def __post_init__(self) -> None:
        p = self.prefix
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ConfigurationError(f"set {p}ISSUER to the identity provider's issuer URL")
        _check_url(f"{p}ISSUER", self.issuer)
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ConfigurationError(f"set {p}CLIENT_ID")
        if self.client_secret is not None and (not isinstance(self.client_secret, str) or not self.client_secret):
            raise ConfigurationError(f"{p}CLIENT_SECRET must be a non-empty string (or unset for a public client)")
        if "openid" not in self.scopes:
            raise ConfigurationError(f"{p}SCOPES must include 'openid'")
        if self.audience is not None and (not isinstance(self.audience, str) or not self.audience):
            raise ConfigurationError(f"{p}AUDIENCE must be a non-empty string")
        for name in ("redirect_uri", "post_logout_redirect_uri"):
            value = getattr(self, name)
            if value is not None:
                _check_url(p + name.upper(), value)
        bad = sorted(set(self.authorize_params) & _RESERVED_PARAMS)
        if bad:
            raise ConfigurationError(f"{p}AUTHORIZE_PARAMS must not set {bad}: lockkit sets them")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.authorize_params.items()):
            raise ConfigurationError(f"{p}AUTHORIZE_PARAMS must map strings to strings")
        if self.http_timeout <= 0:
            raise ConfigurationError(f"set {p}HTTP_TIMEOUT to a number of seconds greater than zero")
        # the core checks algorithms, leeway and JWKS knobs; fail at start-up, not per request
        self.issuer_config(audience=self.client_id, jwks_uri=self.issuer.rstrip("/") + "/jwks")

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH

    def issuer_config(self, *, audience: str, jwks_uri: str, azp: str | None = None) -> IssuerConfig:
        """The core verifier's configuration for tokens meant for ``audience``.

        :raises ConfigurationError: a value is invalid.
        """
        return IssuerConfig(
            issuer=self.issuer,
            audiences=(audience,),
            authorized_parties=(azp,) if azp else (),
            jwks_uri=jwks_uri,
            algorithms=self.algorithms,
            leeway=self.leeway,
            namespace=self.namespace,
            jwks_ttl=self.jwks_ttl,
            jwks_min_refetch_interval=self.jwks_min_refetch_interval,
            http_timeout=self.http_timeout,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], prefix: str = "LOCKKIT_OIDC_") -> OIDCSettings:
        """Read ``{prefix}*`` keys.

        :raises ConfigurationError: a required key is missing or a value is invalid.
        """

        def get(name: str) -> Any:
            value = config.get(prefix + name)
            return None if value in (None, "") else value

        params = get("AUTHORIZE_PARAMS") or {}
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError as err:
                raise ConfigurationError(f"{prefix}AUTHORIZE_PARAMS must be a JSON object") from err
        if not isinstance(params, Mapping):
            raise ConfigurationError(f"{prefix}AUTHORIZE_PARAMS must be a mapping")
        scopes = get("SCOPES")
        algorithms = get("ALGORITHMS")
        return cls(
            issuer=get("ISSUER") or "",
            client_id=get("CLIENT_ID") or "",
            client_secret=get("CLIENT_SECRET"),
            scopes=DEFAULT_SCOPES if scopes is None else _words(scopes, prefix + "SCOPES"),
            audience=get("AUDIENCE"),
            algorithms=("RS256",) if algorithms is None else _words(algorithms, prefix + "ALGORITHMS"),
            redirect_uri=get("REDIRECT_URI"),
            post_logout_redirect_uri=get("POST_LOGOUT_REDIRECT_URI"),
            authorize_params=dict(params),
            namespace=get("NAMESPACE"),
            leeway=_number(config, prefix + "LEEWAY", 5.0),
            http_timeout=_number(config, prefix + "HTTP_TIMEOUT", 5.0),
            jwks_ttl=_number(config, prefix + "JWKS_TTL", 300.0),
            jwks_min_refetch_interval=_number(config, prefix + "JWKS_MIN_REFETCH_INTERVAL", 30.0),
            prefix=prefix,
        )


class _Discovery:
    """The issuer's discovery document and the verifiers built from it, fetched once, lazily.
    Implements the core's ``TokenVerifier`` protocol (verifying ID tokens).

    One fetch at a time, outside the lock: requests that need the document while it is being
    fetched wait for that fetch's outcome (at most as long as the fetch may take) instead of
    each fetching in turn. After a failure, requests fail fast for
    :data:`DISCOVERY_RETRY_INTERVAL` seconds from when the attempt failed."""

    def __init__(self, settings: OIDCSettings, http: requests.Session | None) -> None:
        self.settings = settings
        self._http = http
        self._cond = threading.Condition(threading.Lock())
        self._metadata: dict[str, Any] | None = None
        self._failed_at: float | None = None  # time.monotonic() when the last attempt failed
        self._error: ProviderUnavailableError | ConfigurationError | None = None
        self._fetching_since: float | None = None  # time.monotonic() when the fetch in flight started
        self.id_verifier: OIDCVerifier | None = None
        self.access_verifier: OIDCVerifier | None = None
        self.fetch_count = 0

    @property
    def namespace(self) -> str:
        return self.settings.namespace or self.settings.issuer

    @property
    def fetch_budget(self) -> float:
        """How long one discovery fetch may take: the connection and the response headers are
        bounded by the timeout, the whole document by twice the timeout."""
        return 2 * self.settings.http_timeout + 1.0

    def verify(self, token: str, now: float | None = None) -> Claims | None:
        return self.id_tokens().verify(token, now=now)

    def metadata(self) -> dict[str, Any]:
        """The validated discovery document.

        :raises ProviderUnavailableError: it cannot be fetched (or failed to, moments ago, or
            another request's fetch of it is taking too long).
        :raises ConfigurationError: it does not match the configuration (wrong issuer, no
            ``jwks_uri`` ...).
        """
        with self._cond:
            while True:
                if self._metadata is not None:
                    return self._metadata
                now = time.monotonic()
                self._raise_recent_failure(now)
                if self._fetching_since is None:
                    self._fetching_since = now  # this caller fetches
                    break
                remaining = self._fetching_since + self.fetch_budget - now
                if remaining <= 0:
                    raise ProviderUnavailableError(
                        "identity provider is not answering",
                        detail=f"discovery from {self.settings.discovery_url} still in flight after "
                               f"{self.fetch_budget:g}s",
                    )
                self._cond.wait(remaining)  # share the outcome of the fetch in flight
        doc: dict[str, Any] | None = None
        error: ProviderUnavailableError | ConfigurationError | None = None
        try:
            try:
                doc = self._configure(self._fetch())
            except (ProviderUnavailableError, ConfigurationError) as failed:
                error = failed
        finally:
            with self._cond:
                self._fetching_since = None
                if doc is not None:
                    self._metadata, self._error, self._failed_at = doc, None, None
                else:
                    self._error = error or ProviderUnavailableError(
                        "identity provider discovery failed", detail="unexpected error while configuring"
                    )
                    self._failed_at = time.monotonic()  # the fail-fast window starts now, not at the start
                self._cond.notify_all()
        if error is not None:
            raise error
        assert doc is not None
        return doc

    def _raise_recent_failure(self, now: float) -> None:
        err = self._error
        if err is None or self._failed_at is None or now - self._failed_at >= DISCOVERY_RETRY_INTERVAL:
            return
        if isinstance(err, ProviderUnavailableError):
            raise ProviderUnavailableError(err.message, detail=err.detail)
        raise ConfigurationError(err.message)

    def _fetch(self) -> dict[str, Any]:
        url = self.settings.discovery_url
        timeout = self.settings.http_timeout
        self.fetch_count += 1
        deadline = time.monotonic() + 2 * timeout  # a trickling server is cut off here
        try:
            with http_client(url, self._http) as http, http.get(  # loopback http: never via a proxy
                url, timeout=timeout, allow_redirects=False, headers={"Accept": "application/json"}, stream=True,
            ) as resp:
                if resp.status_code != 200:
                    raise ProviderUnavailableError(
                        "identity provider discovery failed", detail=f"GET {url} answered HTTP {resp.status_code}"
                    )
                body = read_body(resp, MAX_DISCOVERY_BYTES, deadline, "discovery document")
            doc = strict_json_loads(body)  # no duplicate keys, no runaway nesting
        except requests.RequestException as err:
            raise ProviderUnavailableError(
                "identity provider is unreachable", detail=f"GET {url}: {type(err).__name__}: {err}"
            ) from err
        except ValueError as err:  # too large, too slow, not strict JSON
            raise ProviderUnavailableError(
                "identity provider discovery failed", detail=f"{url}: {err}"
            ) from err
        if not isinstance(doc, dict):
            raise ProviderUnavailableError("identity provider discovery failed", detail=f"{url} is not a JSON object")
        return doc

    def _configure(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Check ``doc`` and build the verifiers; returns the document to use (optional
        endpoints that could not be used safely removed, with a warning).

        :raises ConfigurationError: the document does not fit the configuration, or is malformed.
        """
        s, p = self.settings, self.settings.prefix
        where = s.discovery_url
        if doc.get("issuer") != s.issuer:
            raise ConfigurationError(
                f"the discovery document at {where} names issuer {_show(doc.get('issuer'))}, not "
                f"{s.issuer!r}: set {p}ISSUER to the exact issuer (mind the trailing slash)"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(key)
            if not isinstance(value, str):
                raise ConfigurationError(f"the discovery document at {where} has no {key}")
            _check_url(f"{key} (from {where})", value)
        pkce = _string_list(doc, "code_challenge_methods_supported", where)
        if pkce is not None and "S256" not in pkce:
            raise ConfigurationError(f"the identity provider at {s.issuer!r} does not support PKCE with S256")
        algs = _string_list(doc, "id_token_signing_alg_values_supported", where)
        if algs is not None and not set(algs) & set(s.algorithms):
            raise ConfigurationError(
                f"the identity provider signs ID tokens with {algs!r}: set {p}ALGORITHMS to the one it uses"
            )
        doc = dict(doc)
        for key, consequence in _OPTIONAL_ENDPOINTS.items():
            value = doc.get(key)
            if value is not None and not _usable_endpoint(value):
                # the client secret, a refresh token or an ID token would travel in clear (or
                # to a URL that parsers read differently): treated as absent
                log.warning(
                    "%s: ignoring the discovery document's %s %s: not an https:// URL (plain http only on "
                    "loopback); %s", s.issuer, key, _show(value), consequence,
                )
                del doc[key]
        self.id_verifier = OIDCVerifier(
            s.issuer_config(audience=s.client_id, azp=s.client_id, jwks_uri=doc["jwks_uri"]), session=self._http
        )
        if s.audience:
            self.access_verifier = OIDCVerifier(
                s.issuer_config(audience=s.audience, jwks_uri=doc["jwks_uri"]), session=self._http
            )
        return doc

    def id_tokens(self) -> OIDCVerifier:
        """:raises ProviderUnavailableError: discovery failed (a bad document is logged)."""
        self._ready()
        assert self.id_verifier is not None
        return self.id_verifier

    def access_tokens(self) -> OIDCVerifier | None:
        """:raises ProviderUnavailableError: discovery failed (a bad document is logged)."""
        self._ready()
        return self.access_verifier

    def _ready(self) -> None:
        try:
            self.metadata()
        except ConfigurationError as err:  # per request: an outage of ours, not the user's fault
            log.error("%s", err.message)
            raise ProviderUnavailableError("identity provider is misconfigured", detail=err.message) from err


@dataclass(frozen=True)
class _Refreshed:
    """A successful refresh: the new ID token, its claims and the refresh token to keep."""

    id_token: str = field(repr=False)
    claims: Claims = field(repr=False)
    refresh_token: str | None = field(repr=False)


#: what a refresh came to: new tokens, "transient" (keep the current ID token until it expires)
#: or "refused" (sign the user out)
_Outcome = _Refreshed | str


class _TokenEndpointSession(OAuth2Session):  # type: ignore[misc]
    """Authlib's requests session for the token endpoint (the code exchange, refreshes) and
    Authlib's JWKS fetch at sign-in: every answer is read whole within twice the timeout and
    at most :data:`MAX_TOKEN_RESPONSE_BYTES`, and no redirect is followed (as for discovery
    and JWKS documents). The timeout bounds the connection and each read only: a token
    endpoint trickling its answer would otherwise hold each refreshing request for as long as
    it trickles, and never count as a transient failure. Cut off, it raises
    :class:`~lockkit.oidc.BodyTooSlow` (transient: the refresh backoff starts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mount_deadlines(self)  # the answer's status line and headers within twice the timeout too

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + 2 * float(self.default_timeout)  # the provider's http_timeout (> 0)
        kwargs["stream"], kwargs["allow_redirects"] = True, False
        resp: requests.Response = super().send(request, **kwargs)
        try:
            resp._content = read_body(resp, MAX_TOKEN_RESPONSE_BYTES, deadline, "token endpoint answer")
        finally:
            resp.close()
        return resp


class _OAuth2App(FlaskOAuth2App):  # type: ignore[misc]
    """Authlib's Flask client, its requests sent through :class:`_TokenEndpointSession`."""

    client_cls = _TokenEndpointSession


class _RefreshFlight:
    """One refresh in flight for one refresh token; requests of the same session share it."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: _Outcome = "transient"


class OIDCProvider(IdentityProvider):
    """A generic OpenID Connect identity provider (redirect sign-in, bearer access tokens).

    :param settings: see :class:`OIDCSettings` (apps use ``LOCKKIT_OIDC_*`` config keys).
    :param http: optional ``requests.Session`` for discovery and JWKS fetches.
    """

    name = "oidc"
    redirect_login = True

    def __init__(self, settings: OIDCSettings, *, http: requests.Session | None = None) -> None:
        self.settings = settings
        self.discovery = _Discovery(settings, http)
        super().__init__(self.discovery)
        self._client: FlaskOAuth2App | None = None
        self._client_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refreshing: dict[str, _RefreshFlight] = {}  # by SHA-256 of the refresh token
        self._refresh_failed_at: float | None = None  # time.monotonic() of the last transient failure

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OIDCProvider:
        """Build from ``LOCKKIT_OIDC_*`` keys.

        :raises ConfigurationError: a required key is missing or a value is invalid.
        """
        return cls(OIDCSettings.from_config(config))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} issuer={self.settings.issuer!r}>"

    # -- names ---------------------------------------------------------------------------
    @property
    def blueprint_name(self) -> str:
        return f"lockkit_{self.name}"

    @property
    def session_key(self) -> str:
        return f"_lockkit_{self.name}"

    @property
    def seal_purpose(self) -> str:
        return f"lockkit-{self.name}-tokens"

    @property
    def namespace(self) -> str:
        return self.discovery.namespace

    # -- verification --------------------------------------------------------------------
    def verify(self, token: str, now: float | None = None) -> Claims | None:
        """Verified claims, or ``None`` for another issuer's token.

        A token that this request presents as ``Authorization: Bearer`` is verified as an API
        access token (``aud`` = the configured audience); any other token (the session's) as
        an ID token (``aud`` = the client id).

        :raises IdentityError: the token is this issuer's but invalid, expired, of the wrong
            kind, or the issuer is unavailable (``ProviderUnavailableError``).
        """
        if self._presented_as_bearer(token):
            return self.verify_access_token(token, now=now)
        return self.verify_id_token(token, now=now)

    def verify_id_token(self, token: str, now: float | None = None) -> Claims | None:
        """Verify an ID token issued to this client.

        :raises IdentityError: this issuer's token, but unusable.
        """
        if not self._owns(token):
            return None
        return self.discovery.id_tokens().verify(token, now=now)

    def verify_access_token(self, token: str, now: float | None = None) -> Claims | None:
        """Verify a JWT access token for the configured API audience.

        :raises IdentityError: this issuer's token, but unusable, or no audience is configured.
        """
        if not self._owns(token):
            return None
        verifier = self.discovery.access_tokens()
        if verifier is not None:
            claims = verifier.verify(token, now=now)
            if claims is not None and self.settings.audience == self.settings.client_id:
                self._refuse_id_token(token, claims)
            return claims
        if self.discovery.id_tokens().verify(token, now=now) is None:
            return None
        raise InvalidCredentialError(
            "bearer tokens are not accepted",
            detail=f"set {self.settings.prefix}AUDIENCE to accept API access tokens",
        )

    def _refuse_id_token(self, token: str, claims: Claims) -> None:
        """With ``AUDIENCE`` equal to the client id (Entra ID v2 apps that expose their own
        API), ``aud`` cannot tell an access token from an ID token: a bearer token must then
        show that it is an access token (``typ`` ``at+jwt`` (RFC 9068), or a ``scp``/``scope``
        claim) and carry none of the ID-token-only claims (``nonce``, ``at_hash``, ``c_hash``,
        ``s_hash``).

        :raises InvalidCredentialError: it may be an ID token.
        """
        typ = _unverified_header(token).get("typ")
        is_at_jwt = isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt")
        scoped = isinstance(claims.get("scp"), (str, list)) or isinstance(claims.get("scope"), str)
        id_claims = [name for name in _ID_TOKEN_CLAIMS if name in claims]
        if id_claims or not (is_at_jwt or scoped):
            raise InvalidCredentialError(
                "ID tokens are not accepted as bearer tokens",
                detail=f"{self.settings.prefix}AUDIENCE equals the client id, and the token "
                       + (f"carries {id_claims}" if id_claims else "has neither typ at+jwt nor a scp/scope claim"),
            )

    def _owns(self, token: str) -> bool:
        """Whether ``token`` names this issuer (routing only, before any network call).

        :raises InvalidCredentialError: the token is not a readable JWT with an issuer.
        """
        iss = _unverified_issuer(token)
        if iss is None:
            raise InvalidCredentialError("token is malformed", detail="not a compact JWT with a string iss")
        return iss == self.settings.issuer

    @staticmethod
    def _presented_as_bearer(token: str) -> bool:
        if not has_request_context():
            return False
        got = bearer_token(request)
        return got is not None and isinstance(token, str) and secrets.compare_digest(got.encode(), token.encode())

    # -- the request's token -------------------------------------------------------------
    def token_from_request(self, request: RequestLike) -> str | None:
        """A bearer access token (only when an audience is configured), else the session's ID
        token, refreshed first when it is near expiry."""
        if self.settings.audience:
            got = bearer_token(request)
            if got:
                return got
        return self.session_token()

    def session_token(self, now: float | None = None) -> str | None:
        """The session's ID token, refreshed when it expires within the kit's refresh window
        and a refresh token exists. ``None`` when signed out (or when a refresh failed: the
        tokens are dropped, so the user signs in again).
        """
        stored = self._load()
        if stored is None:
            return None
        now = time.time() if now is None else now
        from lockkit.flask import get_state

        window = get_state().refresh_window
        if stored["exp"] - window > now or not stored.get("rt"):
            return str(stored["id"])
        return self._refresh(stored, now)

    def _load(self) -> dict[str, Any] | None:
        raw = session.get(self.session_key)
        if raw is None:
            return None
        from lockkit.flask import get_state

        stored = get_state().sealer.unseal(self.seal_purpose, raw)
        if (
            not isinstance(stored, dict)
            or not isinstance(stored.get("id"), str)
            or not isinstance(stored.get("exp"), (int, float))
            or not isinstance(stored.get("sub"), str)
        ):
            session.pop(self.session_key, None)  # tampered, or sealed under another SECRET_KEY
            return None
        return stored

    def _store(self, id_token: str, claims: Claims, refresh_token: str | None) -> None:
        from lockkit.flask import get_state

        blob = {"id": id_token, "rt": refresh_token, "exp": int(claims["exp"]), "sub": claims["sub"]}
        session[self.session_key] = get_state().sealer.seal(self.seal_purpose, blob)

    def _refresh(self, stored: dict[str, Any], now: float) -> str | None:
        """Refresh the session's ID token at the token endpoint: at most one refresh in flight
        per refresh token (the session's other requests share it), and none for
        :data:`REFRESH_RETRY_INTERVAL` seconds after a transient failure (the current ID token
        is then returned as it is: an expired one is still refused by verification)."""
        key = hashlib.sha256(str(stored["rt"]).encode()).hexdigest()
        with self._refresh_lock:
            failed_at = self._refresh_failed_at
            if failed_at is not None and time.monotonic() - failed_at < REFRESH_RETRY_INTERVAL:
                return str(stored["id"])  # the token endpoint failed moments ago: no new attempt now
            flight = self._refreshing.get(key)
            leader = flight is None
            if flight is None:
                flight = self._refreshing[key] = _RefreshFlight()
        if not leader:
            if stored["exp"] > now:
                return str(stored["id"])  # still valid: go on with it while the other request refreshes
            flight.done.wait(self.discovery.fetch_budget + self.settings.http_timeout)
            return self._apply_refresh(stored, flight.outcome if flight.done.is_set() else "transient")
        try:
            flight.outcome = self._refresh_at_idp(stored, now)
        finally:
            with self._refresh_lock:
                self._refreshing.pop(key, None)
            flight.done.set()
        return self._apply_refresh(stored, flight.outcome)

    def _refresh_at_idp(self, stored: dict[str, Any], now: float) -> _Outcome:
        """One refresh grant, its answer checked; never raises for what the IdP answers."""
        try:
            client = self.oauth_client()
            token = client.fetch_access_token(grant_type="refresh_token", refresh_token=stored["rt"], scope=None)
        except ProviderUnavailableError as err:
            log.warning("%s: cannot refresh the ID token now: %s", self.name, err.detail)
            return self._refresh_failed()
        except _OAUTH_ERRORS as err:
            if _transient(err):  # timeout, 5xx page: try again after a while
                log.warning("%s: cannot refresh the ID token now: %s", self.name, type(err).__name__)
                return self._refresh_failed()
            log.info("%s: ID token refresh failed (%s %s); signing the user out", self.name,
                     type(err).__name__, getattr(err, "error", ""))
            return "refused"
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            log.info("%s: the refresh response has no ID token; signing the user out", self.name)
            return "refused"
        try:
            claims = self.verify_id_token(id_token, now=now)
        except ProviderUnavailableError as err:  # the IdP's keys cannot be fetched: an outage
            log.warning("%s: cannot verify the refreshed ID token now: %s", self.name, err.detail)
            return self._refresh_failed()
        except IdentityError as err:
            log.info("%s: refreshed ID token refused: %s", self.name, err.detail)
            return "refused"
        if claims is None or claims.get("sub") != stored["sub"]:
            log.warning("%s: refreshed ID token is for another issuer or subject; signing the user out", self.name)
            return "refused"
        rotated = token.get("refresh_token")
        return _Refreshed(id_token, claims, rotated if isinstance(rotated, str) else stored["rt"])

    def _refresh_failed(self) -> str:
        with self._refresh_lock:
            self._refresh_failed_at = time.monotonic()  # from when it failed
        return "transient"

    def _apply_refresh(self, stored: dict[str, Any], outcome: _Outcome) -> str | None:
        """Put a refresh's outcome into this request's session."""
        if isinstance(outcome, _Refreshed) and outcome.claims.get("sub") == stored["sub"]:
            self._store(outcome.id_token, outcome.claims, outcome.refresh_token)
            return outcome.id_token
        if outcome == "refused":
            session.pop(self.session_key, None)
            return None
        return str(stored["id"])  # transient: still usable until it expires; verification decides

    # -- Authlib -------------------------------------------------------------------------
    def oauth_client(self) -> FlaskOAuth2App:
        """Authlib's Flask client for this issuer (built after discovery).

        :raises ProviderUnavailableError: discovery failed.
        """
        client = self._client
        if client is not None:
            return client
        self.discovery.id_tokens()  # discovery (outside the lock), with a clear error
        metadata = self.discovery.metadata()
        with self._client_lock:
            if self._client is None:
                s = self.settings
                self._client = _OAuth2App(
                    FlaskIntegration(self.blueprint_name),
                    name=self.blueprint_name,
                    client_id=s.client_id,
                    client_secret=s.client_secret,
                    authorize_params=dict(s.authorize_params) or None,
                    client_kwargs={
                        "scope": " ".join(s.scopes),
                        "code_challenge_method": "S256",
                        "default_timeout": s.http_timeout,
                        "token_endpoint_auth_method": "client_secret_basic" if s.client_secret else "none",
                    },
                    **{k: v for k, v in metadata.items() if k not in _AUTHLIB_ARGS},
                )
            return self._client

    # -- web integration -----------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        """Register ``/lockkit/<name>/login``, ``/callback`` and ``/logout`` and the template
        global ``lockkit_<name>_csrf()``."""
        if self.blueprint_name not in app.blueprints:
            app.register_blueprint(_blueprint(self.name))
        app.extensions[self.blueprint_name] = self
        app.add_template_global(self.csrf_token, name=f"lockkit_{self.name}_csrf")

    def login_url(self, next_url: str) -> str | None:
        return url_for(f"{self.blueprint_name}.login", next=safe_next(next_url))

    def redirect_uri(self) -> str:
        return self.settings.redirect_uri or url_for(f"{self.blueprint_name}.callback", _external=True)

    def csrf_token(self) -> str:
        """The token the sign-out form must carry."""
        key = f"{self.session_key}_csrf"
        token = session.get(key)
        if not isinstance(token, str) or not token:
            token = session[key] = secrets.token_urlsafe(24)
        return token

    def post_logout_redirect_uri(self, next_url: str) -> str:
        return self.settings.post_logout_redirect_uri or request.host_url.rstrip("/") + safe_next(next_url)

    def end_session_url(self, id_token_hint: str | None, post_logout_redirect_uri: str) -> str | None:
        """Where the browser ends its IdP session (RP-Initiated Logout), or ``None`` when the
        IdP has no end-session endpoint (or cannot be reached: local sign-out only)."""
        try:
            endpoint = self.discovery.metadata().get("end_session_endpoint")
        except (ProviderUnavailableError, ConfigurationError) as err:
            log.warning("%s: signing out locally only: %s", self.name, getattr(err, "detail", err.message))
            return None
        if not endpoint:
            return None
        if not _usable_endpoint(endpoint):  # never the ID token to a plain-http URL
            log.warning("%s: signing out locally only: end_session_endpoint %s is not https",
                        self.name, _show(endpoint))
            return None
        params = {"client_id": self.settings.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token_hint:
            params = {"id_token_hint": id_token_hint, **params}
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"

    def logout_response(self, next_url: str) -> BaseResponse | None:
        """Revoke the refresh token (RFC 7009, when the IdP has a revocation endpoint), clear
        the session, and send the browser to the IdP to end its session there too."""
        from lockkit.flask import end_session

        stored = self._load()
        if stored and isinstance(stored.get("rt"), str):
            self.revoke_refresh_token(stored["rt"])
        end_session()  # the CTS token too; a new server-side session id
        session.clear()
        target = self.end_session_url(stored["id"] if stored else None, self.post_logout_redirect_uri(next_url))
        return redirect(target or safe_next(next_url))

    def revoke_refresh_token(self, refresh_token: str) -> bool:
        """Revoke ``refresh_token`` at the IdP's ``revocation_endpoint`` (RFC 7009), so that a
        copy of the session cookie cannot keep refreshing after sign-out. Best effort: without
        an endpoint, or when the IdP cannot be reached, it is logged and sign-out goes on.
        Returns True when the IdP accepted the revocation."""
        try:
            endpoint = self.discovery.metadata().get("revocation_endpoint")
        except (ProviderUnavailableError, ConfigurationError) as err:
            log.warning("%s: refresh token not revoked at sign-out: %s", self.name, getattr(err, "detail", err.message))
            return False
        if endpoint is None:
            return False
        if not isinstance(endpoint, str) or not _usable_endpoint(endpoint):  # never the secret in clear
            log.warning("%s: refresh token not revoked at sign-out: revocation_endpoint %s is not https",
                        self.name, _show(endpoint))
            return False
        s = self.settings
        data = {"token": refresh_token, "token_type_hint": "refresh_token"}
        auth = None
        if s.client_secret:  # client_secret_basic, form-encoded first (RFC 6749 2.3.1), as for the token endpoint
            auth = (quote(s.client_id, safe=""), quote(s.client_secret, safe=""))
        else:
            data["client_id"] = s.client_id
        try:
            with http_client(endpoint, self.discovery._http) as http:  # loopback http: never via a proxy
                resp = http.post(endpoint, data=data, auth=auth, timeout=s.http_timeout, allow_redirects=False)
                resp.close()
        except requests.RequestException as err:
            log.warning("%s: refresh token not revoked at sign-out: %s", self.name, type(err).__name__)
            return False
        if resp.status_code != 200:
            log.warning("%s: refresh token not revoked at sign-out: HTTP %s", self.name, resp.status_code)
            return False
        return True

    # -- callback ------------------------------------------------------------------------
    def complete_login(self) -> BaseResponse:
        """Handle the IdP's redirect back: check ``state``, exchange the code (PKCE), check
        ``nonce``, verify the ID token strictly, seal the tokens into the session."""
        try:
            token = self.oauth_client().authorize_access_token()
        except ProviderUnavailableError as err:
            log.warning("%s: sign-in unavailable: %s", self.name, err.detail)
            return _page(503, "Sign-in is temporarily unavailable. Please try again shortly.")
        except _OAUTH_ERRORS as err:
            if _transient(err):  # the IdP is down or overloaded: not the user's doing
                log.warning("%s: sign-in unavailable: the token endpoint failed (%s)", self.name, type(err).__name__)
                return _page(503, "Sign-in is temporarily unavailable. Please try again shortly.",
                             retry=url_for(f"{self.blueprint_name}.login"))
            log.info("%s: sign-in callback refused (%s %s)", self.name, type(err).__name__, getattr(err, "error", ""))
            return _page(400, "Sign-in failed or was cancelled.", retry=url_for(f"{self.blueprint_name}.login"))
        id_token = token.get("id_token") if isinstance(token, dict) else None
        try:
            if not isinstance(id_token, str):
                raise InvalidCredentialError("the token response has no ID token")
            claims = self.verify_id_token(id_token)
            if claims is None:
                raise InvalidCredentialError("the ID token is from another issuer")
        except ProviderUnavailableError as err:
            log.warning("%s: sign-in unavailable: %s", self.name, err.detail)
            return _page(503, "Sign-in is temporarily unavailable. Please try again shortly.")
        except IdentityError as err:
            log.warning("%s: ID token refused at sign-in: %s", self.name, err.detail)
            return _page(400, "Sign-in failed.", retry=url_for(f"{self.blueprint_name}.login"))
        refresh = token.get("refresh_token")
        self._store(id_token, claims, refresh if isinstance(refresh, str) else None)
        target = safe_next(session.pop(f"{self.session_key}_next", None))
        _drop_stale_logins(self.blueprint_name, keep=0)  # signed in: the other tabs' sign-ins are moot
        if not self._identity_fits_cookie():
            session.pop(self.session_key, None)
            return _page(500, "Sign-in cannot be completed: this site cannot store your sign-in. "
                              "Please contact the site's administrator.")
        regenerate = getattr(current_app.session_interface, "regenerate", None)
        if callable(regenerate):  # server-side sessions (Flask-Session): a new id at sign-in
            regenerate(session)
        return redirect(target)

    # -- cookie sessions -----------------------------------------------------------------
    def _identity_fits_cookie(self) -> bool:
        """With Flask's cookie session: whether the session, now holding this sign-in's sealed
        tokens, leaves room for what it gains afterwards (lockkit's token-service token, the
        sign-out form token) under :data:`MAX_COOKIE_BYTES`. Browsers drop a larger
        cookie, and the user would be signed out with no explanation. Logged as an error."""
        from lockkit.flask import get_state

        size = _cookie_session_bytes(exclude=(get_state().session_key,))
        if size is None or size + COOKIE_SESSION_RESERVE <= MAX_COOKIE_BYTES:
            return True
        log.error(
            "%s: sign-in refused: the ID and refresh tokens make Flask's cookie session %d bytes, and with "
            "lockkit's own token (about %d more) it would be over the %d bytes browsers keep in a cookie. "
            "Keep sessions server-side (Flask-Session), or have the identity provider put fewer claims "
            "in ID tokens", self.name, size, COOKIE_SESSION_RESERVE, MAX_COOKIE_BYTES,
        )
        return False

    def _fit_cookie_session(self) -> None:
        """With Flask's cookie session, after a sign-in started: keep the cookie under
        :data:`MAX_COOKIE_BYTES` by dropping the older pending sign-ins of this provider
        and, if that is not enough, the previous sign-in's tokens (the one starting now replaces
        them): a cookie over the limit would be dropped whole by the browser, this sign-in too."""
        size = _cookie_session_bytes()
        if size is None or size <= MAX_COOKIE_BYTES:
            return
        for key in _pending_logins(self.blueprint_name)[:-1]:  # oldest first; the newest is this one
            session.pop(key, None)
            size = _cookie_session_bytes() or 0
            if size <= MAX_COOKIE_BYTES:
                return
        if self.session_key in session:
            session.pop(self.session_key, None)
            log.warning("%s: the cookie session is full: the previous sign-in's tokens were dropped for the "
                        "sign-in starting now (keep sessions server-side with Flask-Session)", self.name)


def _cookie_session_bytes(exclude: tuple[str, ...] = ()) -> int | None:
    """The length of the ``Set-Cookie`` header Flask's cookie session would send now (without
    the session keys in ``exclude``), or ``None`` when sessions are kept elsewhere (Flask-Session
    and other server-side interfaces: only an id travels)."""
    interface = current_app.session_interface
    if not isinstance(interface, SecureCookieSessionInterface):
        return None
    app = current_app
    serializer = interface.get_signing_serializer(app)
    if serializer is None:
        return None
    value = serializer.dumps({k: v for k, v in session.items() if k not in exclude})
    partitioned = getattr(interface, "get_cookie_partitioned", None)  # Flask >= 3.1
    header = dump_cookie(
        interface.get_cookie_name(app), value, expires=interface.get_expiration_time(app, session),
        path=interface.get_cookie_path(app), domain=interface.get_cookie_domain(app),
        secure=interface.get_cookie_secure(app), httponly=interface.get_cookie_httponly(app),
        samesite=interface.get_cookie_samesite(app),
        partitioned=bool(partitioned(app)) if callable(partitioned) else False, max_size=0,
    )
    return len(header.encode("latin-1"))


def _page(status: int, message: str, *, retry: str | None = None) -> Response:
    link = f'<p><a href="{html.escape(retry)}">Sign in again</a></p>' if retry else ""
    body = f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{html.escape(message)}</p>{link}"
    return Response(body, status=status, mimetype="text/html")


def _current(name: str) -> OIDCProvider:
    provider = current_app.extensions[f"lockkit_{name}"]
    assert isinstance(provider, OIDCProvider)
    return provider


def _pending_logins(client_name: str) -> list[str]:
    """The session keys of Authlib's pending sign-ins (one ``state`` entry per visit to the
    login route) of this provider, oldest first."""
    prefix = f"_state_{client_name}_"

    def expiry(key: str) -> float:
        entry = session.get(key)
        exp = entry.get("exp") if isinstance(entry, dict) else None
        return float(exp) if isinstance(exp, (int, float)) else 0.0

    return sorted((k for k in session if k.startswith(prefix)), key=expiry)


def _drop_stale_logins(client_name: str, keep: int = MAX_PENDING_LOGINS - 1) -> None:
    """Keep only the newest ``keep`` pending sign-ins: a cookie session must not grow without
    bound."""
    pending = _pending_logins(client_name)
    for key in pending[: max(0, len(pending) - keep)]:
        session.pop(key, None)


def _slim_pending_logins(client_name: str) -> None:
    """Drop the authorization URL Authlib keeps in each pending sign-in: the callback needs only
    the redirect URI, the PKCE verifier and the nonce, and the URL (all the authorization
    parameters again) is most of the entry's size in a cookie session."""
    for key in _pending_logins(client_name):
        entry = session.get(key)
        data = entry.get("data") if isinstance(entry, dict) else None
        if isinstance(entry, dict) and isinstance(data, dict) and "url" in data:
            session[key] = {**entry, "data": {k: v for k, v in data.items() if k != "url"}}


def _blueprint(name: str) -> Blueprint:
    bp = Blueprint(f"lockkit_{name}", __name__, url_prefix=f"/lockkit/{name}")

    @bp.get("/login")
    def login() -> Any:
        provider = _current(name)
        session[f"{provider.session_key}_next"] = safe_next(request.args.get("next"))
        _drop_stale_logins(provider.blueprint_name)
        try:
            client = provider.oauth_client()
        except ProviderUnavailableError as err:
            log.warning("%s: sign-in unavailable: %s", name, err.detail)
            return _page(503, "Sign-in is temporarily unavailable. Please try again shortly.")
        response = client.authorize_redirect(provider.redirect_uri())
        _slim_pending_logins(provider.blueprint_name)
        provider._fit_cookie_session()
        return response

    @bp.get("/callback")
    def callback() -> Any:
        return _current(name).complete_login()

    @bp.post("/logout")
    def logout() -> Any:
        provider = _current(name)
        expected = session.get(f"{provider.session_key}_csrf")
        given = request.form.get("csrf", "")
        if not isinstance(expected, str) or not expected or not secrets.compare_digest(expected.encode(), given.encode()):
            abort(400, "sign-out form expired; reload the page")
        return provider.logout_response(request.form.get("next", "/"))

    return bp


def csrf_token() -> str:
    """The token the OIDC sign-out form must carry (templates: ``lockkit_oidc_csrf()``)."""
    return _current("oidc").csrf_token()


@hookimpl
def register_identity_providers(register: Any) -> None:
    register(OIDCProvider)
