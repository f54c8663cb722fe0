"""lockkit-clerk: Clerk session tokens as lockkit identities.

A thin layer on lockkit's core verifier (:class:`lockkit.oidc.OIDCVerifier`): it configures the
issuer (the instance's Frontend API URL, derived from ``CLERK_PUBLISHABLE_KEY``), the key source
(``CLERK_JWT_KEY`` networkless, or the Backend API JWKS fetched with ``CLERK_SECRET_KEY``), the
authorized parties (``azp``), RS256 and a 5 s clock skew, and then applies Clerk's own
session-token rules on top. It is never laxer than Clerk's ``verifyToken`` /
``authenticateRequest`` and stricter where that protects users; every difference, with its
reason and the Clerk source it comes from, is listed in this distribution's README.

Tokens come from ``Authorization: Bearer`` (wins) or from the ``__session`` cookie. **The
cookie is never accepted on a state-changing request (anything but GET/HEAD/OPTIONS/TRACE)
unless its ``Origin`` is one of the authorized parties and ``Sec-Fetch-Site`` does not say
cross-site** — such a request counts as carrying no credential at all (CSRF).

Page loads whose cookie token has expired (Clerk session tokens live 60 s) are sent to a small
refresh page served by this provider (``/lockkit/clerk/refresh?next=…``) that loads Clerk's
browser SDK, lets it refresh the ``__session`` cookie and reloads ``next``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import logging
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
import requests
from requests.auth import AuthBase
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Blueprint, Flask, Response, abort, current_app, g, has_request_context, request, url_for

from lockkit import (
    ConfigurationError,
    ExpiredCredentialError,
    InvalidCredentialError,
    MissingCredentialError,
    hookimpl,
)
from lockkit.config import flag
from lockkit.oidc import Claims, IssuerConfig, OIDCVerifier, deadline_session, protected_url
from lockkit.provider import IdentityProvider, RequestLike, bearer_token, safe_next

__all__ = [
    "ClerkProvider",
    "cookie_suffix",
    "frontend_api_from_publishable_key",
    "register_identity_providers",
]

log = logging.getLogger("lockkit.clerk")

DEFAULT_API_URL: Final = "https://api.clerk.com"
DEFAULT_CLOCK_SKEW_MS: Final = 5000  # Clerk's DEFAULT_CLOCK_SKEW_IN_MS (jwt/verifyJwt.ts)
DEFAULT_CLERK_JS_VERSION: Final = "6"
SESSION_COOKIE: Final = "__session"
CLIENT_UAT_COOKIE: Final = "__client_uat"

# Token-category tags Clerk puts in the protected JOSE header (tokens/jwtCategories.ts).
CAT_SESSION_TOKEN: Final = "cl_B7d4PD111AAA"
CAT_JWT_TEMPLATE: Final = "cl_B7d4PD222AAA"
CAT_M2M_TOKEN: Final = "cl_B7d4PD333AAA"
CAT_IGNORE: Final = "cl_I7d4PD111III"  # instances with use_ignore_jwt_cat: carries no class info
_SESSION_CATEGORIES: Final = frozenset({CAT_SESSION_TOKEN, CAT_IGNORE})

#: methods that must not change state; the session cookie is accepted on these from anywhere
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FAPI_HOST: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})+(?::[0-9]{{1,5}})?")
_SESSION_ID: Final = re.compile(r"sess_[A-Za-z0-9]{1,128}")
_UAT: Final = re.compile(r"[0-9]{1,12}")
_JS_VERSION: Final = re.compile(r"latest|[0-9]{1,3}(?:\.[0-9]{1,4}){0,2}(?:-[0-9A-Za-z.]{1,32})?")


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- configuration


def frontend_api_from_publishable_key(publishable_key: str) -> tuple[str, str]:
    """``(instance_type, frontend_api_host)`` from a publishable key.

    A key is ``pk_test_`` or ``pk_live_`` followed by base64 of ``"<frontend-api-host>$"``
    (Clerk: ``packages/shared/src/keys.ts`` ``parsePublishableKey``).

    :raises ConfigurationError: the key is not a valid Clerk publishable key.
    """
    bad = "CLERK_PUBLISHABLE_KEY is not a valid Clerk publishable key (pk_test_… or pk_live_…)"
    if not isinstance(publishable_key, str):
        raise ConfigurationError(bad)
    key = publishable_key.strip()
    if key.startswith("pk_live_"):
        instance_type = "production"
    elif key.startswith("pk_test_"):
        instance_type = "development"
    else:
        raise ConfigurationError(bad)
    parts = key.split("_")
    if len(parts) != 3 or not parts[2]:
        raise ConfigurationError(bad)
    encoded = parts[2]
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode("ascii")
    except (binascii.Error, ValueError) as err:
        raise ConfigurationError(f"{bad}: it does not decode") from err
    if not decoded.endswith("$") or "$" in decoded[:-1]:
        raise ConfigurationError(f"{bad}: the decoded key must be '<frontend-api-host>$'")
    host = decoded[:-1]
    if not _FAPI_HOST.fullmatch(host):
        raise ConfigurationError(f"{bad}: {host!r} is not a host name")
    return instance_type, host


def cookie_suffix(publishable_key: str) -> str:
    """The suffix Clerk appends to its cookie names for this instance (``__session_<suffix>``):
    the first 8 characters of URL-safe base64 of SHA-1 of the publishable key (Clerk:
    ``packages/shared/src/keys.ts`` ``getCookieSuffix``). Not a secret."""
    digest = hashlib.sha1(publishable_key.encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode().replace("+", "-").replace("/", "_")[:8]


def _authorized_parties(value: object) -> tuple[str, ...]:
    if value is None:
        items: list[object] = []
    elif isinstance(value, str):
        items = list(value.split(","))
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigurationError(
            "CLERK_AUTHORIZED_PARTIES must be a list of origins or a comma-separated string"
        )
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError("CLERK_AUTHORIZED_PARTIES must contain strings")
        origin = item.strip()
        if not origin:
            continue
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as err:
            raise ConfigurationError(f"CLERK_AUTHORIZED_PARTIES entry {origin!r} is not a URL") from err
        if (
            parts.scheme not in ("https", "http")
            or not parts.hostname
            or parts.username is not None
            or origin != f"{parts.scheme}://{parts.netloc}"
        ):
            raise ConfigurationError(
                f"CLERK_AUTHORIZED_PARTIES entry {origin!r} is not an origin: use "
                "scheme://host[:port] with no path or trailing slash (azp is compared exactly)"
            )
        out.append(origin)
    if not out:
        raise ConfigurationError(
            "set CLERK_AUTHORIZED_PARTIES to the origins of your frontend (e.g. "
            "https://app.example.com): lockkit requires them, since without them a session "
            "token minted for any other site on your Clerk instance would be accepted"
        )
    return tuple(dict.fromkeys(out))


def _pem(value: str) -> str:
    """``CLERK_JWT_KEY`` as PEM: accepts escaped newlines and a bare base64 body, like Clerk."""
    text = value.strip().replace("\\n", "\n")
    if "-----BEGIN" not in text:
        body = "".join(text.split())
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        text = f"-----BEGIN PUBLIC KEY-----\n{lines}\n-----END PUBLIC KEY-----\n"
    try:
        key = load_pem_public_key(text.encode())
    except (ValueError, TypeError) as err:
        raise ConfigurationError(
            "CLERK_JWT_KEY is not a PEM public key (copy the PEM Public Key from the Clerk "
            "Dashboard, API keys; never configure a private key)"
        ) from err
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigurationError("CLERK_JWT_KEY must be an RSA public key (Clerk signs with RS256)")
    return text


def _opt_str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{key} must be a string, not {type(value).__name__}")
    return value.strip() or None


class _BearerAuth(AuthBase):
    """Puts the secret key in the ``Authorization`` header of Backend API requests. Explicit
    auth also keeps a ``.netrc`` entry from replacing it. ``repr`` never shows the key."""

    __slots__ = ("_header",)

    def __init__(self, secret_key: str) -> None:
        self._header = f"Bearer {secret_key}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._header
        return r

    def __repr__(self) -> str:
        return "<ClerkSecretKeyAuth>"

    def __reduce__(self) -> Any:
        raise TypeError("the Clerk secret key is not picklable")


def _backend_api_session(secret_key: str, base_url: str) -> requests.Session:
    session = deadline_session()  # an answer's head cut off like its body: within twice the timeout
    if base_url.startswith("http://"):
        # plain http (allowed on loopback only) never goes through a proxy from the environment:
        # it would see the secret key and could answer with its own signing keys
        session.trust_env = False
    session.auth = _BearerAuth(secret_key)
    session.headers["User-Agent"] = "lockkit-clerk/0.1"
    return session


# --------------------------------------------------------------------------- the provider


class ClerkProvider(IdentityProvider):
    """Verifies Clerk session tokens (v1 and v2 claims) with lockkit's core verifier.

    :param issuer: the instance's Frontend API URL (``iss`` of its tokens).
    :param authorized_parties: origins allowed in ``azp``; required.
    :param jwt_key: the instance's PEM public key: verification without network (preferred,
        as in Clerk's SDK, when both keys are given).
    :param secret_key: the instance's secret key: the JWKS is fetched from the Backend API
        (``GET {api_url}/v1/jwks`` with ``Authorization: Bearer <secret key>``).
    :param api_url: the Backend API (tests point it at loopback).
    :param publishable_key: enables the cookie-suffix lookup and the refresh page.
    :param clock_skew_ms: Clerk's ``clockSkewInMs`` (default 5000).
    :param allow_actor: accept impersonation tokens (an ``act`` claim).
    :param clerk_js_version: the ``@clerk/clerk-js`` major (or exact) version the refresh page
        loads from the Frontend API.
    :param sign_in_url: where the refresh page sends a browser with no active session (a path
        on this site or an https URL; default: the instance's sign-in page, e.g. the Account
        Portal).
    :raises ConfigurationError: a key is missing or invalid; the message names it.
    """

    name = "clerk"
    redirect_login = True

    def __init__(
        self,
        *,
        issuer: str,
        authorized_parties: Iterable[str] | str,
        jwt_key: str | None = None,
        secret_key: str | None = None,
        api_url: str = DEFAULT_API_URL,
        publishable_key: str | None = None,
        clock_skew_ms: float = DEFAULT_CLOCK_SKEW_MS,
        allow_actor: bool = False,
        clerk_js_version: str = DEFAULT_CLERK_JS_VERSION,
        sign_in_url: str | None = None,
    ) -> None:
        if not jwt_key and not secret_key:
            raise ConfigurationError(
                "the clerk provider needs CLERK_SECRET_KEY (keys fetched from Clerk's Backend "
                "API) or CLERK_JWT_KEY (the instance's PEM public key, no network)"
            )
        if secret_key is not None and not secret_key.startswith(("sk_test_", "sk_live_")):
            raise ConfigurationError("CLERK_SECRET_KEY must start with sk_test_ or sk_live_")
        self.publishable_key: str | None = None
        self.frontend_api: str | None = None
        self._cookie_suffix: str | None = None
        if publishable_key:
            kind, self.frontend_api = frontend_api_from_publishable_key(publishable_key)
            self.publishable_key = publishable_key.strip()
            self._cookie_suffix = cookie_suffix(self.publishable_key)
            if secret_key is not None and secret_key.startswith("sk_live_") != (kind == "production"):
                raise ConfigurationError(
                    "CLERK_SECRET_KEY and CLERK_PUBLISHABLE_KEY belong to different instances "
                    "(one is a development key, the other a production key)"
                )
        if not isinstance(clock_skew_ms, (int, float)) or isinstance(clock_skew_ms, bool) or not (
            math.isfinite(clock_skew_ms) and 0 <= clock_skew_ms <= 60_000
        ):
            raise ConfigurationError("LOCKKIT_CLERK_CLOCK_SKEW_MS must be a number of milliseconds (0-60000)")
        if not isinstance(clerk_js_version, str) or not _JS_VERSION.fullmatch(clerk_js_version):
            raise ConfigurationError("LOCKKIT_CLERK_JS_VERSION must look like 6, 6.1 or 6.1.2")
        if sign_in_url is not None and not (
            (sign_in_url.startswith("/") and safe_next(sign_in_url) == sign_in_url)
            or (sign_in_url.startswith("https://") and urlsplit(sign_in_url).hostname)
        ):
            raise ConfigurationError("CLERK_SIGN_IN_URL must be a path on this site or an https:// URL")
        self.sign_in_url = sign_in_url
        self.authorized_parties = _authorized_parties(authorized_parties)
        self.leeway = clock_skew_ms / 1000.0
        self.allow_actor = bool(allow_actor)
        self.clerk_js_url: str | None = (
            f"https://{self.frontend_api}/npm/@clerk/clerk-js@{clerk_js_version}/dist/clerk.browser.js"
            if self.frontend_api
            else None
        )
        self.networkless = bool(jwt_key)
        http: requests.Session | None = None
        if jwt_key:
            key_source: dict[str, Any] = {"static_keys": (_pem(jwt_key),)}
        else:
            assert secret_key is not None
            base = api_url.strip().rstrip("/") if isinstance(api_url, str) else ""
            if not protected_url(base):  # the secret key goes there with every JWKS fetch
                raise ConfigurationError(
                    "CLERK_API_URL must be the Backend API URL over https (plain http only on loopback), "
                    "e.g. https://api.clerk.com"
                )
            key_source = {"jwks_uri": f"{base}/v1/jwks"}
            http = _backend_api_session(secret_key, base)
        config = IssuerConfig(
            issuer=issuer,
            authorized_parties=self.authorized_parties,
            algorithms=("RS256",),
            leeway=self.leeway,
            jwks_ttl=300.0,  # Clerk caches its JWKS for 5 minutes (tokens/keys.ts)
            **key_source,
        )
        self.issuer = config.issuer
        super().__init__(OIDCVerifier(config, session=http))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClerkProvider:
        """Build from app config, using Clerk's own variable names.

        ``CLERK_SECRET_KEY`` and/or ``CLERK_JWT_KEY``; ``CLERK_PUBLISHABLE_KEY`` (the expected
        ``iss`` is derived from it) or ``LOCKKIT_CLERK_ISSUER``; ``CLERK_AUTHORIZED_PARTIES``
        (list, or comma-separated string); optional ``CLERK_API_URL``, ``CLERK_SIGN_IN_URL``,
        ``LOCKKIT_CLERK_CLOCK_SKEW_MS``, ``LOCKKIT_CLERK_ALLOW_ACTOR``, ``LOCKKIT_CLERK_JS_VERSION``.

        :raises ConfigurationError: a required key is missing or invalid; the message names it.
        """
        secret_key = _opt_str(config, "CLERK_SECRET_KEY")
        jwt_key = _opt_str(config, "CLERK_JWT_KEY")
        if not secret_key and not jwt_key:
            raise ConfigurationError(
                "the clerk provider needs CLERK_SECRET_KEY or CLERK_JWT_KEY (the PEM public key "
                "from the Clerk Dashboard, API keys, for verification without network)"
            )
        publishable_key = _opt_str(config, "CLERK_PUBLISHABLE_KEY")
        issuer = _opt_str(config, "LOCKKIT_CLERK_ISSUER")
        if issuer is None:
            if publishable_key is None:
                raise ConfigurationError(
                    "the clerk provider needs CLERK_PUBLISHABLE_KEY (or LOCKKIT_CLERK_ISSUER, the "
                    "Frontend API URL): the issuer of session tokens is checked"
                )
            issuer = "https://" + frontend_api_from_publishable_key(publishable_key)[1]
        parties = _authorized_parties(config.get("CLERK_AUTHORIZED_PARTIES", ()))
        return cls(
            issuer=issuer,
            authorized_parties=parties,
            jwt_key=jwt_key,
            secret_key=secret_key,
            api_url=_opt_str(config, "CLERK_API_URL") or DEFAULT_API_URL,
            publishable_key=publishable_key,
            clock_skew_ms=config.get("LOCKKIT_CLERK_CLOCK_SKEW_MS", DEFAULT_CLOCK_SKEW_MS),
            allow_actor=flag(config, "LOCKKIT_CLERK_ALLOW_ACTOR"),
            clerk_js_version=str(config.get("LOCKKIT_CLERK_JS_VERSION") or DEFAULT_CLERK_JS_VERSION),
            sign_in_url=_opt_str(config, "CLERK_SIGN_IN_URL"),
        )

    def __repr__(self) -> str:
        mode = "jwt-key" if self.networkless else "backend-api-jwks"
        return f"<ClerkProvider issuer={self.issuer!r} keys={mode}>"

    # -- verification --------------------------------------------------------------------
    def verify(self, token: str, now: float | None = None) -> Claims | None:
        """Verified session-token claims, or ``None`` for another issuer's token.

        The core verifier checks signature (RS256, the instance's key), ``iss``, ``azp``
        (required, one of the authorized parties), ``sub``, ``exp``/``nbf``/``iat`` with the
        clock skew; then Clerk's session-token rules apply (see the README).

        :raises InvalidCredentialError: a bad token, or a Clerk token that is not a user's
            session token (machine, JWT template, OAuth, impersonation …).
        :raises ExpiredCredentialError: expired, or older than the client's last sign-in/out.
        :raises MissingCredentialError: the session is ``pending`` (signed out until the user
            finishes the session tasks).
        :raises ProviderUnavailableError: the Backend API JWKS cannot be fetched.
        """
        now = time.time() if now is None else now
        claims = self.verifier.verify(token, now=now)
        if claims is None:
            return None
        try:  # the signature covers the header: after verify() it is authentic
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:  # pragma: no cover - verify() parsed it already
            raise InvalidCredentialError("token is malformed") from err
        self._check_header(header)
        self._check_claims(claims, now)
        self._check_client_uat(token, claims)
        return claims

    def _check_header(self, header: Mapping[str, Any]) -> None:
        if "typ" in header and header["typ"] != "JWT":
            # Clerk's assertHeaderType; OAuth access tokens are typ at+jwt
            raise InvalidCredentialError(
                "token is not a Clerk session token", detail=f"typ {_show(header['typ'])}"
            )
        if "cat" in header:
            cat = header["cat"]
            if cat == CAT_M2M_TOKEN:
                raise InvalidCredentialError("machine tokens are not accepted", detail="cat is the M2M category")
            if cat == CAT_JWT_TEMPLATE:
                raise InvalidCredentialError(
                    "JWT template tokens are not accepted: send the session token",
                    detail="cat is the JWT-template category",
                )
            if not isinstance(cat, str) or cat not in _SESSION_CATEGORIES:
                raise InvalidCredentialError(
                    "token is not a Clerk session token", detail=f"unknown cat {_show(cat)}"
                )

    def _check_claims(self, claims: Claims, now: float) -> None:
        sub = claims["sub"]  # the core verifier guarantees a non-empty str
        if sub.startswith("mch_"):
            raise InvalidCredentialError("machine tokens are not accepted", detail="sub is a machine id (mch_)")
        if not sub.startswith("user_"):
            raise InvalidCredentialError("token subject is not a Clerk user", detail=f"sub {_show(sub)}")
        if "aud" in claims:
            raise InvalidCredentialError(
                "token has an audience: it is a JWT template or another service's token, "
                "not a session token"
            )
        sid = claims.get("sid")
        if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
            raise InvalidCredentialError("token has no session id (sid)", detail=f"sid {_show(sid)}")
        if "iat" not in claims:
            raise InvalidCredentialError("token has no iat claim")
        sts = claims.get("sts")
        if sts == "pending":
            raise MissingCredentialError(
                "the session is pending: the user must finish the session tasks first",
                detail="sts is pending (treated as signed out, as Clerk's SDKs do by default)",
            )
        if sts is not None and sts != "active":
            raise InvalidCredentialError("the session is not active", detail=f"sts {_show(sts)}")
        if "act" in claims and not self.allow_actor:
            raise InvalidCredentialError(
                "impersonation tokens are not accepted (set LOCKKIT_CLERK_ALLOW_ACTOR to allow them)",
                detail="token has an act claim",
            )
        exp = float(claims["exp"])  # numeric: checked by the core verifier
        if exp <= now - self.leeway:
            # Clerk's assertExpirationClaim: expired when exp <= now - skew (the core
            # verifier's boundary is exp < now - leeway, one instant laxer)
            raise ExpiredCredentialError("token has expired", detail=f"exp {exp} <= now {now} - skew")

    def _check_client_uat(self, token: str, claims: Claims) -> None:
        """A cookie token issued before the client last changed (sign-in, sign-out, session
        switch, recorded by Clerk in ``__client_uat``) is stale, as in Clerk's
        ``authenticateRequest`` (SessionTokenIATBeforeClientUAT)."""
        if not has_request_context():
            return
        seen = g.get("_lockkit_clerk_cookie")
        if not seen:
            return
        cookie_token, client_uat = seen
        if not secrets.compare_digest(cookie_token.encode(), token.encode()):
            return  # not the cookie token of this request
        if float(claims["iat"]) < client_uat:
            raise ExpiredCredentialError(
                "the session changed since this token was issued",
                detail=f"iat {claims['iat']} < __client_uat {client_uat}",
            )

    # -- finding the token ----------------------------------------------------------------
    def token_from_request(self, request: RequestLike) -> str | None:
        """``Authorization: Bearer`` (wins), else the ``__session`` cookie.

        The cookie counts only while ``__client_uat`` says the client is signed in, and never
        on a state-changing request whose ``Origin`` is missing or not an authorized party,
        or whose ``Sec-Fetch-Site`` is neither ``same-origin`` nor ``same-site`` (CSRF): such a
        request has no credential.
        """
        got = bearer_token(request)
        if got:
            return got
        token, client_uat = self._session_cookies(request.cookies)
        if not token:
            return None
        if client_uat <= 0:
            return None  # signed out (or no active client): Clerk ignores the token too
        if not self._cookie_allowed(request):
            log.info("ignored the Clerk session cookie on a cross-site %s request", request.method)
            return None
        if has_request_context():
            g._lockkit_clerk_cookie = (token, client_uat)
        return token

    def _session_cookies(self, cookies: Any) -> tuple[str | None, int]:
        names = [(SESSION_COOKIE, CLIENT_UAT_COOKIE)]
        if self._cookie_suffix:
            sfx = self._cookie_suffix
            names.insert(0, (f"{SESSION_COOKIE}_{sfx}", f"{CLIENT_UAT_COOKIE}_{sfx}"))
        for session_name, uat_name in names:
            uat = cookies.get(uat_name)
            if uat is None and session_name != SESSION_COOKIE:
                continue  # no suffixed cookies: use the un-suffixed pair
            token = cookies.get(session_name)
            value = int(uat) if isinstance(uat, str) and _UAT.fullmatch(uat) else 0
            return (token if isinstance(token, str) and token else None), value
        return None, 0  # pragma: no cover - the un-suffixed pair always answers

    def _cookie_allowed(self, request: RequestLike) -> bool:
        if str(request.method).upper() in SAFE_METHODS:
            return True
        headers = request.headers
        site = headers.get("Sec-Fetch-Site")
        if site is not None and str(site).strip().lower() not in ("same-origin", "same-site"):
            return False
        origin = headers.get("Origin")
        return isinstance(origin, str) and origin in self.authorized_parties

    # -- web integration -----------------------------------------------------------------
    def login_url(self, next_url: str) -> str | None:
        """The refresh page, which refreshes an expired cookie token or starts Clerk's
        sign-in (``None`` without ``CLERK_PUBLISHABLE_KEY``: the app's own login view)."""
        if self.publishable_key is None:
            return None
        return url_for("lockkit_clerk.refresh", next=next_url)

    def init_app(self, app: Flask) -> None:
        if "lockkit_clerk" not in app.blueprints:
            app.register_blueprint(_blueprint())
        app.extensions["lockkit_clerk"] = self


# --------------------------------------------------------------------------- refresh page




_REFRESH_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Refreshing your session</title>
<style>body{font-family:system-ui,sans-serif;max-width:30rem;margin:4rem auto;padding:0 1rem}</style>
</head><body>
<p id="lockkit-clerk-status" role="status">Refreshing your session&hellip;</p>
<noscript><p>Your browser must run JavaScript to refresh your session.
<a href="@NEXT@">Continue</a></p></noscript>
<script id="lockkit-clerk-refresh" data-next="@NEXT@" data-publishable-key="@PK@" data-clerk-js="@SRC@" data-sign-in-url="@SIGNIN@">
(function () {
  "use strict";
  var cfg = document.getElementById("lockkit-clerk-refresh").dataset;
  var status = document.getElementById("lockkit-clerk-status");
  var target = new URL(cfg.next, window.location.href);
  if (target.origin !== window.location.origin) { target = new URL("/", window.location.href); }
  function fail(message) { status.textContent = message; }
  // Loop guard: the server sends a browser here again when the refreshed token is still
  // refused (e.g. a misconfigured authorized party); stop after three tries in two minutes.
  var key = "lockkit-clerk-refresh:" + target.pathname + target.search;
  var now = Date.now();
  var tries = [];
  try { tries = JSON.parse(window.sessionStorage.getItem(key) || "[]"); } catch (e) { tries = []; }
  if (!Array.isArray(tries)) { tries = []; }
  tries = tries.filter(function (t) { return typeof t === "number" && now - t < 120000; });
  if (tries.length >= 3) {
    fail("Your session could not be refreshed. Please sign out and sign in again.");
    return;
  }
  tries.push(now);
  try { window.sessionStorage.setItem(key, JSON.stringify(tries)); } catch (e) { /* private mode */ }
  var script = document.createElement("script");
  script.async = true;
  script.crossOrigin = "anonymous";
  script.setAttribute("data-clerk-publishable-key", cfg.publishableKey);
  script.src = cfg.clerkJs;
  script.onerror = function () { fail("The sign-in service could not be reached. Please try again shortly."); };
  script.onload = function () {
    var clerk = window.Clerk;
    clerk.load(cfg.signInUrl ? { signInUrl: cfg.signInUrl } : {}).then(function () {
      if (clerk.session && clerk.session.status === "active") {
        // a fresh token; Clerk's SDK writes it to the __session cookie (with azp set)
        return clerk.session.getToken({ skipCache: true }).then(function () {
          window.location.replace(target.href);
        });
      }
      return clerk.redirectToSignIn({
        signInForceRedirectUrl: target.href,
        signUpForceRedirectUrl: target.href
      });
    }).catch(function () { fail("Your session could not be refreshed. Please sign in again."); });
  };
  document.body.appendChild(script);
})();
</script>
</body></html>
"""


#: the refresh page's one inline script, allowed by its hash (its data is in data- attributes)
_REFRESH_SCRIPT_HASH: Final = base64.b64encode(hashlib.sha256(
    re.search(r"<script[^>]*>(.*?)</script>", _REFRESH_PAGE, re.S).group(1).encode()  # type: ignore[union-attr]
).digest()).decode()


def refresh_page_policy(clerk_js_url: str) -> str:
    """The refresh page's Content-Security-Policy: its own inline script (by hash) and Clerk's
    bundle from the instance's Frontend API; what Clerk documents it needs once loaded
    (Cloudflare's bot-protection challenge, Clerk's fraud-protection and image hosts, blob:
    workers, inline styles); nothing else, and no framing."""
    parts = urlsplit(clerk_js_url)
    fapi = f"{parts.scheme}://{parts.netloc}"
    return "; ".join([
        "default-src 'self'",
        f"script-src 'sha256-{_REFRESH_SCRIPT_HASH}' {fapi} https://challenges.cloudflare.com https://*.protect.clerk.com",
        f"connect-src 'self' {fapi} https://*.protect.clerk.com:*",
        "img-src 'self' data: https://img.clerk.com",
        "style-src 'self' 'unsafe-inline'",
        "worker-src 'self' blob:",
        "frame-src https://challenges.cloudflare.com https://*.protect.clerk.com",
        "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'", "form-action 'self'",
    ])


def _refresh_page(provider: ClerkProvider, next_url: str) -> str:
    assert provider.publishable_key is not None and provider.clerk_js_url is not None
    return (
        _REFRESH_PAGE.replace("@NEXT@", html.escape(next_url, quote=True))
        .replace("@PK@", html.escape(provider.publishable_key, quote=True))
        .replace("@SRC@", html.escape(provider.clerk_js_url, quote=True))
        .replace("@SIGNIN@", html.escape(provider.sign_in_url or "", quote=True))
    )


def _blueprint() -> Blueprint:
    bp = Blueprint("lockkit_clerk", __name__, url_prefix="/lockkit/clerk")

    @bp.get("/refresh")
    def refresh() -> Response:
        provider: ClerkProvider = current_app.extensions["lockkit_clerk"]
        if provider.publishable_key is None:
            abort(404)
        body = _refresh_page(provider, safe_next(request.args.get("next")))
        resp = Response(body, mimetype="text/html")
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        assert provider.clerk_js_url is not None
        resp.headers["Content-Security-Policy"] = refresh_page_policy(provider.clerk_js_url)
        return resp

    return bp


@hookimpl
def register_identity_providers(register: Any) -> None:
    register(ClerkProvider)
