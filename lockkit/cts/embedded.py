"""The embedded token service (CTS) and the verifier key services use for its tokens.

``authorize(idp_jwt)`` verifies the identity JWT with the trusted issuers (or provider plugins)
and mints a short-lived CTS token: an EdDSA (Ed25519) JWT signed with a key derived from the
keyring, carrying the workspace, ``sub``, the identity namespace (issuer), scopes and the
configured extra claims. Key services verify it with :class:`CtsVerifier` (algorithm pinned).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import (
    CtsTokenError,
    IdentityError,
    LockContextError,
    ProviderUnavailableError,
)
from ..identity import EXPIRED_MESSAGE, CtsToken
from ..keys.keyring import Keyring
from ..oidc import Claims, IssuerRouter, TokenVerifier

CTS_ALGORITHM = "EdDSA"
CTS_ISSUER = "lockkit-cts"
MAX_CTS_TOKEN_BYTES = 8192


class CtsUnavailableError(CtsTokenError):
    """The token service, or the identity provider's keys it needs, could not be reached.
    Its failure type is still ``CtsTokenError``; web apps answer 503 for it."""

    retryable = True


def verify_identity_jwt(
    router: IssuerRouter | None, idp_jwt: str, now: float, *, untrusted: str = ""
) -> tuple[TokenVerifier, Claims]:
    """The verifier that accepted ``idp_jwt`` and its verified claims, with a token service's
    errors: the first step of every ``authorize``.

    :raises CtsTokenError: no issuer is trusted (``untrusted`` says how to fix it), or the JWT
        was rejected; :class:`CtsUnavailableError` when the issuer's keys could not be fetched.
    """
    if router is None:
        raise CtsTokenError(f"The JWT was rejected by CTS: no identity provider is trusted {untrusted}".rstrip())
    try:
        return router.verify(idp_jwt, now=now)
    except ProviderUnavailableError as err:
        raise CtsUnavailableError(f"CTS could not verify the JWT: {err.message}") from err
    except IdentityError as err:
        raise CtsTokenError(f"The JWT was rejected by CTS: {err.message}") from err


def normalise_scopes(claims: Mapping[str, Any]) -> list[str]:
    """Scopes from ``scope`` (space-separated), ``scp`` or ``scopes`` (string or list), sorted."""
    found: set[str] = set()
    for key in ("scope", "scp", "scopes"):
        value = claims.get(key)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return sorted(found)


def _json_value(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


class EmbeddedTokenService:
    """Mints CTS tokens in process. Thread-safe; ``calls`` counts exchanges (for tests)."""

    def __init__(
        self,
        *,
        workspace_crn: str,
        keyring: Keyring,
        verifiers: Sequence[TokenVerifier],
        lifetime: int = 900,
        claims: Sequence[str] = (),
    ) -> None:
        self.workspace_crn = workspace_crn
        self._keyring = keyring
        self._router = IssuerRouter(list(verifiers)) if verifiers else None
        self.lifetime = lifetime
        self.claims = tuple(claims)
        self.calls = 0
        self._lock = threading.Lock()

    def authorize(self, idp_jwt: str, now: float | None = None) -> CtsToken:
        """Verify ``idp_jwt`` and mint a CTS token.

        :raises CtsTokenError: the JWT was rejected (the message says why, coarsely);
            :class:`CtsUnavailableError` when the issuer's keys could not be fetched.
        """
        with self._lock:
            self.calls += 1
        now = time.time() if now is None else now
        verifier, idp_claims = verify_identity_jwt(
            self._router, idp_jwt, now,
            untrusted="(add an [[issuers]] table to lockkit.toml or set LOCKKIT_TRUSTED_ISSUER)",
        )
        return self.mint(idp_claims, namespace=verifier.namespace, now=now)

    def mint(self, idp_claims: Claims, *, namespace: str, now: float | None = None) -> CtsToken:
        """Sign a CTS token for already-verified identity claims. Prefer :meth:`authorize`."""
        now = time.time() if now is None else now
        iat = int(now)
        exp = iat + self.lifetime
        ctx = {
            name: idp_claims[name]
            for name in self.claims
            if name in idp_claims and _json_value(idp_claims[name])
        }
        payload = {
            "iss": CTS_ISSUER,
            "aud": self.workspace_crn,
            "sub": idp_claims["sub"],
            "idp": namespace,
            "scopes": normalise_scopes(idp_claims),
            "ctx": ctx,
            "iat": iat,
            "exp": exp,
            "jti": os.urandom(12).hex(),
        }
        version = self._keyring.primary
        token = jwt.encode(
            payload,
            self._keyring.cts_signing_key(version),
            algorithm=CTS_ALGORITHM,
            headers={"kid": f"cts-v{version}", "typ": "JWT"},
        )
        if len(token) > MAX_CTS_TOKEN_BYTES:  # verifiers refuse it: say why here, not "malformed" there
            big = max(ctx, key=lambda n: len(json.dumps(ctx[n])), default=None)
            raise CtsTokenError(
                f"the CTS token would be {len(token)} bytes, over the {MAX_CTS_TOKEN_BYTES}-byte limit"
                + (f": the claim {big!r} is too large to carry (drop it from [cts] claims)" if big else "")
            )
        return CtsToken(token, exp)

    def jwks(self) -> dict[str, Any]:
        """The public keys that verify this service's tokens, as a JWKS document."""
        return jwks_document(self._keyring.cts_public_keys())

    def verifier(self) -> CtsVerifier:
        """A verifier for this service's tokens (what the local key service uses)."""
        return CtsVerifier(self.workspace_crn, self._keyring.cts_public_keys)


def jwks_document(keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    out = []
    for kid, key in keys.items():
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key))
        jwk.update({"kid": kid, "alg": CTS_ALGORITHM, "use": "sig"})
        out.append(jwk)
    return {"keys": out}


class CtsVerifier:
    """Verifies CTS tokens (EdDSA pinned, issuer, workspace audience, expiry).

    Verified claims are cached by token until the token expires, so a batch (or a request)
    pays for one signature check. Thread-safe.
    """

    def __init__(
        self,
        workspace_crn: str,
        public_keys: Mapping[str, Ed25519PublicKey] | Callable[[], Mapping[str, Ed25519PublicKey]],
        *,
        cache_size: int = 4096,
    ) -> None:
        self.workspace_crn = workspace_crn
        # a callable source is asked again when a token names an unknown kid (after a rotation)
        self._source: Callable[[], Mapping[str, Ed25519PublicKey]] = (
            public_keys if callable(public_keys) else (lambda: public_keys)
        )
        self._keys = dict(self._source())
        self._cache: OrderedDict[str, Claims] = OrderedDict()  # token -> its verified claims
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.verifications = 0

    def verify(self, access_token: str, now: float | None = None) -> Claims:
        """The verified claims of a CTS token.

        :raises LockContextError: expired (``Call identify again``), forged, or malformed.
        """
        now = time.time() if now is None else now
        if not isinstance(access_token, str) or len(access_token) > MAX_CTS_TOKEN_BYTES or not access_token.isascii():
            raise LockContextError("CTS token rejected: malformed")
        with self._lock:
            cached = self._cache.get(access_token)  # a str: its hash is computed once per object
        if cached is not None:
            if now >= cached["exp"]:
                raise LockContextError(EXPIRED_MESSAGE)
            return cached
        claims = self._verify_uncached(access_token, now)
        with self._lock:
            self._cache[access_token] = claims
            self._cache.move_to_end(access_token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    def _newer_kid(self, kid: object) -> bool:
        """Only a kid of a newer key version than any known (a rotation) triggers a reload."""
        m = re.fullmatch(r"cts-v([1-9][0-9]{0,5})", kid) if isinstance(kid, str) else None
        known = [int(k[5:]) for k in self._keys if k.startswith("cts-v") and k[5:].isdigit()]
        return m is not None and int(m.group(1)) > max(known, default=0)

    def _verify_uncached(self, access_token: str, now: float) -> Claims:
        try:
            header = jwt.get_unverified_header(access_token)
        except jwt.PyJWTError as err:
            raise LockContextError("CTS token rejected: malformed") from err
        if header.get("alg") != CTS_ALGORITHM or set(header) - {"alg", "kid", "typ"}:
            raise LockContextError("CTS token rejected: unexpected header")
        kid = header.get("kid", "")
        key = self._keys.get(kid)
        if key is None and self._newer_kid(kid):
            with self._lock:
                self._keys = dict(self._source())
            key = self._keys.get(kid)
        if key is None:
            raise LockContextError("CTS token rejected: signed by an unknown key")
        try:
            claims: Claims = jwt.decode(
                access_token,
                key,
                algorithms=[CTS_ALGORITHM],
                audience=self.workspace_crn,
                issuer=CTS_ISSUER,
                options={
                    "require": ["exp", "iat", "sub", "iss", "aud"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError as err:
            raise LockContextError("CTS token rejected: issued for another workspace") from err
        except jwt.PyJWTError as err:
            raise LockContextError("CTS token rejected: invalid signature or claims") from err
        self.verifications += 1
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
            raise LockContextError("CTS token rejected: bad expiry")
        if now >= exp:
            raise LockContextError(EXPIRED_MESSAGE)
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise LockContextError("CTS token rejected: no subject")
        if not isinstance(claims.get("idp"), str) or not isinstance(claims.get("ctx", {}), dict):
            raise LockContextError("CTS token rejected: malformed claims")
        return claims
