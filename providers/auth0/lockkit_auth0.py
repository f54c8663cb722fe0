"""lockkit-auth0: Auth0 as an identity provider, a thin layer on :mod:`lockkit_oidc`.

Auth0 is an OpenID Connect provider, so everything (discovery, sign-in with PKCE, ``state`` and
``nonce``, sealed tokens, refresh, bearer access tokens) comes from :class:`OIDCProvider`. What
is Auth0-specific:

* configuration by Auth0's conventional names: ``AUTH0_DOMAIN`` (issuer
  ``https://{domain}/`` - Auth0's issuer ends with a slash), ``AUTH0_CLIENT_ID``,
  ``AUTH0_CLIENT_SECRET``, ``AUTH0_AUDIENCE`` (each also as ``LOCKKIT_AUTH0_*``);
* the API audience is requested with Auth0's ``audience`` authorization parameter, so the
  access token Auth0 issues is a JWT for your API;
* sign-out: ``LOCKKIT_AUTH0_LOGOUT`` = ``auto`` (default), ``oidc`` or ``v2``.
  Auth0 implements OpenID Connect RP-Initiated Logout at ``https://{domain}/oidc/logout`` and
  advertises it as ``end_session_endpoint`` when the tenant setting "RP-Initiated Logout End
  Session Endpoint Discovery" is on (the default for tenants created since November 2023).
  ``auto`` uses it when discovery advertises it (``id_token_hint``,
  ``post_logout_redirect_uri``, ``client_id``), and otherwise Auth0's own
  ``https://{domain}/v2/logout?client_id=...&returnTo=...``, which every tenant has. Either
  way the return URL must be in the application's "Allowed Logout URLs".

``LOCKKIT_AUTH0_ISSUER`` overrides the issuer (tests run an OpenID provider on loopback, and a
custom domain is also configured this way).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import requests

from lockkit import ConfigurationError, InvalidCredentialError, hookimpl
from lockkit.oidc import Claims
from lockkit_oidc import OIDCProvider, OIDCSettings

__all__ = ["Auth0Provider", "LOGOUT_MODES", "csrf_token", "register_identity_providers"]

LOGOUT_MODES: Final = ("auto", "oidc", "v2")
_PREFIX: Final = "LOCKKIT_AUTH0_"


def _domain(value: str) -> str:
    """``tenant.eu.auth0.com`` from a domain or ``https://`` URL; nothing else.

    :raises ConfigurationError: a path, port-only, credentials or another scheme.
    """
    text = value.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError as err:
        raise ConfigurationError("AUTH0_DOMAIN is not a valid domain") from err
    if (
        parts.scheme != "https"
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise ConfigurationError("set AUTH0_DOMAIN to your tenant's domain, e.g. 'example.eu.auth0.com'")
    return parts.netloc


class Auth0Provider(OIDCProvider):
    """Auth0 (OpenID Connect) with Auth0's configuration names and logout endpoint.

    :param logout: ``auto``, ``oidc`` or ``v2`` (see the module docstring).
    """

    name = "auth0"

    def __init__(self, settings: OIDCSettings, *, logout: str = "auto", http: requests.Session | None = None) -> None:
        if logout not in LOGOUT_MODES:
            raise ConfigurationError(f"set {_PREFIX}LOGOUT to one of {list(LOGOUT_MODES)}")
        super().__init__(settings, http=http)
        self.logout_mode = logout

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Auth0Provider:
        """Build from ``AUTH0_*`` (or ``LOCKKIT_AUTH0_*``) keys.

        :raises ConfigurationError: a required key is missing or a value is invalid.
        """

        def get(name: str) -> Any:
            for key in (_PREFIX + name, "AUTH0_" + name):
                value = config.get(key)
                if value not in (None, ""):
                    return value
            return None

        issuer = get("ISSUER")
        if issuer is None:
            domain = get("DOMAIN")
            if domain is None:
                raise ConfigurationError("the auth0 provider needs AUTH0_DOMAIN (or LOCKKIT_AUTH0_ISSUER)")
            issuer = f"https://{_domain(str(domain))}/"
        client_id = get("CLIENT_ID")
        if client_id is None:
            raise ConfigurationError("the auth0 provider needs AUTH0_CLIENT_ID")
        audience = get("AUDIENCE")
        raw = config.get(_PREFIX + "AUTHORIZE_PARAMS") or {}
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError as err:
                raise ConfigurationError(f"{_PREFIX}AUTHORIZE_PARAMS must be a JSON object") from err
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{_PREFIX}AUTHORIZE_PARAMS must be a mapping")
        params = dict(raw)
        if audience is not None:
            params.setdefault("audience", audience)
        merged = {
            **{k: v for k, v in config.items() if isinstance(k, str) and k.startswith(_PREFIX)},
            _PREFIX + "ISSUER": issuer,
            _PREFIX + "CLIENT_ID": client_id,
            _PREFIX + "CLIENT_SECRET": get("CLIENT_SECRET"),
            _PREFIX + "AUDIENCE": audience,
            _PREFIX + "AUTHORIZE_PARAMS": params,
        }
        settings = OIDCSettings.from_config(merged, prefix=_PREFIX)
        return cls(settings, logout=str(get("LOGOUT") or "auto"))

    def verify_access_token(self, token: str, now: float | None = None) -> Claims | None:
        """An API access token of a *user*. Auth0 also issues access tokens to machines
        (client-credentials grant, ``gty: client-credentials``, ``sub`` ``<client>@clients``):
        those sign in no user and are refused.

        :raises IdentityError: see :meth:`OIDCProvider.verify_access_token`.
        """
        claims = super().verify_access_token(token, now=now)
        if claims is not None and claims.get("gty") == "client-credentials":
            raise InvalidCredentialError(
                "machine-to-machine tokens do not sign in users",
                detail="the access token was issued by the client-credentials grant (gty)",
            )
        return claims

    def end_session_url(self, id_token_hint: str | None, post_logout_redirect_uri: str) -> str | None:
        """RP-Initiated Logout when discovery advertises it (``auto``) or always (``oidc``);
        Auth0's ``/v2/logout`` otherwise (``v2``, or no ``end_session_endpoint``)."""
        if self.logout_mode != "v2":
            url = super().end_session_url(id_token_hint, post_logout_redirect_uri)
            if url is not None or self.logout_mode == "oidc":
                return url
        return self.v2_logout_url(post_logout_redirect_uri)

    def v2_logout_url(self, return_to: str) -> str:
        """``https://{domain}/v2/logout?client_id=...&returnTo=...``."""
        base = self.settings.issuer.rstrip("/")
        return f"{base}/v2/logout?{urlencode({'client_id': self.settings.client_id, 'returnTo': return_to})}"


def csrf_token() -> str:
    """The token the Auth0 sign-out form must carry (templates: ``lockkit_auth0_csrf()``)."""
    from flask import current_app

    provider = current_app.extensions["lockkit_auth0"]
    assert isinstance(provider, Auth0Provider)
    return provider.csrf_token()


@hookimpl
def register_identity_providers(register: Any) -> None:
    register(Auth0Provider)
