"""lockkit-oidc: any OpenID Connect provider, with redirect sign-in through Authlib's Flask client.

The provider is a thin layer on lockkit's core verifier (:class:`lockkit.oidc.OIDCVerifier`):

* **Discovery.** ``{issuer}/.well-known/openid-configuration`` is fetched lazily (with a
  timeout) the first time it is needed, so an app starts even while its IdP is down. The
  document's ``issuer`` must equal the configured issuer exactly; its ``jwks_uri`` feeds the
  verifiers and its endpoints feed Authlib.
* **Two verifiers.** ID tokens (``aud`` = the client id) and API access tokens (``aud`` =
  ``LOCKKIT_OIDC_AUDIENCE``) are different credentials. A token presented in an
  ``Authorization: Bearer`` header is verified as an access token only; the session's token is
  verified as an ID token only. Tokens of other issuers are left to other providers (``None``).
* **Sign-in.** ``/lockkit/oidc/login`` -> the IdP (authorization code flow with PKCE ``S256``,
  ``state`` and ``nonce``) -> ``/lockkit/oidc/callback``, where Authlib checks ``state``,
  exchanges the code with the PKCE verifier and checks the ID token's ``nonce``; the raw ID
  token is then verified again by the strict core verifier. The ID token and refresh token are
  **sealed** (AES-GCM, :class:`lockkit.flask.Sealer`) before they enter the session.
* **Refresh.** When the session's ID token expires within the kit's refresh window and a
  refresh token exists, it is refreshed once at the token endpoint (with a timeout). A failed
  refresh signs the user out locally, so the next protected page sends them to sign in: never
  a loop.
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
from flask import Blueprint, Flask, Response, abort, current_app, has_request_context, redirect, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from lockkit import ConfigurationError, hookimpl
from lockkit.errors import IdentityError, InvalidCredentialError, ProviderUnavailableError
from lockkit.oidc import Claims, IssuerConfig, OIDCVerifier, http_client
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
DISCOVERY_RETRY_INTERVAL: Final = 5.0
MAX_DISCOVERY_BYTES: Final = 1 << 20
#: sign-ins started but not finished that one session keeps (several tabs); older ones lapse
MAX_PENDING_LOGINS: Final = 3
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
#: what a token exchange or refresh can raise (translated at this boundary)
_OAUTH_ERRORS: Final = (AuthlibBaseError, JoseError, requests.RequestException, ValueError, KeyError, TypeError)


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
    if parts.scheme != "https" and not (parts.scheme == "http" and host in _LOOPBACK):
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
    Implements the core's ``TokenVerifier`` protocol (verifying ID tokens)."""

    def __init__(self, settings: OIDCSettings, http: requests.Session | None) -> None:
        self.settings = settings
        self._http = http
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._failed_at: float | None = None
        self._error: ProviderUnavailableError | ConfigurationError | None = None
        self.id_verifier: OIDCVerifier | None = None
        self.access_verifier: OIDCVerifier | None = None
        self.fetch_count = 0

    @property
    def namespace(self) -> str:
        return self.settings.namespace or self.settings.issuer

    def verify(self, token: str, now: float | None = None) -> Claims | None:
        return self.id_tokens().verify(token, now=now)

    def metadata(self) -> dict[str, Any]:
        """The validated discovery document.

        :raises ProviderUnavailableError: it cannot be fetched (or failed to, moments ago).
        :raises ConfigurationError: it does not match the configuration (wrong issuer, no
            ``jwks_uri`` ...).
        """
        with self._lock:
            if self._metadata is not None:
                return self._metadata
            now = time.monotonic()
            err = self._error
            if err is not None and self._failed_at is not None and now - self._failed_at < DISCOVERY_RETRY_INTERVAL:
                if isinstance(err, ProviderUnavailableError):
                    raise ProviderUnavailableError(err.message, detail=err.detail)
                raise ConfigurationError(err.message)
            try:
                doc = self._fetch()
                self._configure(doc)
            except (ProviderUnavailableError, ConfigurationError) as failed:
                self._failed_at, self._error = now, failed
                raise
            self._metadata = doc
            self._error = None
            return doc

    def _fetch(self) -> dict[str, Any]:
        url = self.settings.discovery_url
        self.fetch_count += 1
        try:
            with http_client(url, self._http) as http, http.get(  # loopback http: never via a proxy
                url, timeout=self.settings.http_timeout, allow_redirects=False,
                headers={"Accept": "application/json"}, stream=True,
            ) as resp:
                if resp.status_code != 200:
                    raise ProviderUnavailableError(
                        "identity provider discovery failed", detail=f"GET {url} answered HTTP {resp.status_code}"
                    )
                body = bytearray()
                for chunk in resp.iter_content(chunk_size=65536):
                    body += chunk
                    if len(body) > MAX_DISCOVERY_BYTES:
                        raise ProviderUnavailableError(
                            "identity provider discovery failed", detail=f"{url} is over {MAX_DISCOVERY_BYTES} bytes"
                        )
            doc = json.loads(body)
        except requests.RequestException as err:
            raise ProviderUnavailableError(
                "identity provider is unreachable", detail=f"GET {url}: {type(err).__name__}: {err}"
            ) from err
        except ValueError as err:
            raise ProviderUnavailableError(
                "identity provider discovery failed", detail=f"{url} is not JSON: {err}"
            ) from err
        if not isinstance(doc, dict):
            raise ProviderUnavailableError("identity provider discovery failed", detail=f"{url} is not a JSON object")
        return doc

    def _configure(self, doc: dict[str, Any]) -> None:
        s, p = self.settings, self.settings.prefix
        if doc.get("issuer") != s.issuer:
            raise ConfigurationError(
                f"the discovery document at {s.discovery_url} names issuer {doc.get('issuer')!r}, not "
                f"{s.issuer!r}: set {p}ISSUER to the exact issuer (mind the trailing slash)"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(key)
            if not isinstance(value, str):
                raise ConfigurationError(f"the discovery document at {s.discovery_url} has no {key}")
            _check_url(f"{key} (from {s.discovery_url})", value)
        pkce = doc.get("code_challenge_methods_supported")
        if isinstance(pkce, list) and "S256" not in pkce:
            raise ConfigurationError(f"the identity provider at {s.issuer!r} does not support PKCE with S256")
        algs = doc.get("id_token_signing_alg_values_supported")
        if isinstance(algs, list) and not set(algs) & set(s.algorithms):
            raise ConfigurationError(
                f"the identity provider signs ID tokens with {algs!r}: set {p}ALGORITHMS to the one it uses"
            )
        end = doc.get("end_session_endpoint")
        if end is not None and not isinstance(end, str):
            raise ConfigurationError(f"the discovery document at {s.discovery_url} has an invalid end_session_endpoint")
        self.id_verifier = OIDCVerifier(
            s.issuer_config(audience=s.client_id, azp=s.client_id, jwks_uri=doc["jwks_uri"]), session=self._http
        )
        if s.audience:
            self.access_verifier = OIDCVerifier(
                s.issuer_config(audience=s.audience, jwks_uri=doc["jwks_uri"]), session=self._http
            )

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
            return verifier.verify(token, now=now)
        if self.discovery.id_tokens().verify(token, now=now) is None:
            return None
        raise InvalidCredentialError(
            "bearer tokens are not accepted",
            detail=f"set {self.settings.prefix}AUDIENCE to accept API access tokens",
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
        try:
            client = self.oauth_client()
            token = client.fetch_access_token(grant_type="refresh_token", refresh_token=stored["rt"], scope=None)
        except ProviderUnavailableError as err:
            log.warning("%s: cannot refresh the ID token now: %s", self.name, err.detail)
            return str(stored["id"])  # still usable until it expires; verification decides
        except requests.RequestException as err:  # timeout, 5xx page: transient, try next time
            log.warning("%s: cannot refresh the ID token now: %s", self.name, type(err).__name__)
            return str(stored["id"])
        except _OAUTH_ERRORS as err:
            log.info("%s: ID token refresh failed (%s %s); signing the user out", self.name,
                     type(err).__name__, getattr(err, "error", ""))
            session.pop(self.session_key, None)
            return None
        id_token = token.get("id_token") if isinstance(token, dict) else None
        if not isinstance(id_token, str):
            log.info("%s: the refresh response has no ID token; signing the user out", self.name)
            session.pop(self.session_key, None)
            return None
        try:
            claims = self.verify_id_token(id_token, now=now)
        except IdentityError as err:
            log.info("%s: refreshed ID token refused: %s", self.name, err.detail)
            session.pop(self.session_key, None)
            return None
        if claims is None or claims.get("sub") != stored["sub"]:
            log.warning("%s: refreshed ID token is for another issuer or subject; signing the user out", self.name)
            session.pop(self.session_key, None)
            return None
        rotated = token.get("refresh_token")
        self._store(id_token, claims, rotated if isinstance(rotated, str) else stored["rt"])
        return id_token

    # -- Authlib -------------------------------------------------------------------------
    def oauth_client(self) -> FlaskOAuth2App:
        """Authlib's Flask client for this issuer (built after discovery).

        :raises ProviderUnavailableError: discovery failed.
        """
        with self._client_lock:
            if self._client is None:
                self.discovery.id_tokens()  # discovery, with a clear error
                metadata = self.discovery.metadata()
                s = self.settings
                self._client = FlaskOAuth2App(
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
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
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
        regenerate = getattr(current_app.session_interface, "regenerate", None)
        if callable(regenerate):  # server-side sessions (Flask-Session): a new id at sign-in
            regenerate(session)
        return redirect(target)


def _page(status: int, message: str, *, retry: str | None = None) -> Response:
    link = f'<p><a href="{html.escape(retry)}">Sign in again</a></p>' if retry else ""
    body = f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{html.escape(message)}</p>{link}"
    return Response(body, status=status, mimetype="text/html")


def _current(name: str) -> OIDCProvider:
    provider = current_app.extensions[f"lockkit_{name}"]
    assert isinstance(provider, OIDCProvider)
    return provider


def _drop_stale_logins(client_name: str) -> None:
    """Keep only the newest few pending sign-ins: Authlib stores one ``state`` entry per
    visit to the login route, and a cookie session must not grow without bound."""
    prefix = f"_state_{client_name}_"

    def expiry(key: str) -> float:
        entry = session.get(key)
        exp = entry.get("exp") if isinstance(entry, dict) else None
        return float(exp) if isinstance(exp, (int, float)) else 0.0

    pending = sorted((k for k in session if k.startswith(prefix)), key=expiry)
    for key in pending[: max(0, len(pending) - (MAX_PENDING_LOGINS - 1))]:
        session.pop(key, None)


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
        return client.authorize_redirect(provider.redirect_uri())

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
