"""Support for the cross-provider attack suite (``test_attacks.py``).

* :class:`Target`: one provider as an app builds it (through the entry point, in a LockKit
  app), plus the signing key it trusts (made by the test), so an attack can forge tokens with a
  *valid* signature and change one thing at a time.
* :class:`Spec`: what a provider is, known before any fixture runs (key source, which claims it
  requires, how requests carry tokens) so the attack list can be filtered at collection time.
* :data:`ATTACKS`: the attack list. Each builds a token for a target and a transport and says
  how it must be refused: the ``reason`` (``None``: another issuer's token, ``verify`` returns
  ``None`` by contract) and, where the provider's own message tells the refusal apart from a
  merely broken signature, a regular expression for the error message.
* :class:`JWKSServer`: a JWKS document on 127.0.0.1 whose keys a test changes (rotation), with
  an optional ``Authorization: Bearer`` the server demands (Clerk's Backend API does).

Tokens are built by hand (header, payload, PyJWT's algorithm objects for the signature) so a
test controls every byte. Nothing here logs or prints a token or a key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from lockkit.provider import IdentityProvider

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
#: ``verify``: the provider's public ``verify(token, now=)``; ``bearer``: a Flask request with
#: ``Authorization: Bearer``; ``cookie``: a Flask request with the IdP's session cookie
Path: TypeAlias = Literal["verify", "bearer", "cookie"]

EVIL = "https://evil.example"


# --------------------------------------------------------------------------- encoding, signing


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def signature(alg: str, signing_input: bytes, key: Any) -> bytes:
    """A JWS signature over ``signing_input`` (PyJWT's algorithm objects; ``HS*`` take raw
    bytes as the secret, which is how key-confusion attacks are forged)."""
    if alg == "HS256":
        return HMACAlgorithm(HMACAlgorithm.SHA256).sign(signing_input, key)
    if alg == "RS256":
        return RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input, key)
    if alg == "ES256":
        return ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, key)
    if alg == "EdDSA":
        return OKPAlgorithm().sign(signing_input, key)
    raise ValueError(f"no signer for {alg!r}")


def jws(header: Mapping[str, Any], payload: bytes, key: Any, alg: str) -> str:
    """A compact JWS of exactly ``header`` and ``payload`` (raw bytes), signed with ``alg``."""
    signing_input = f"{b64json(dict(header))}.{b64(payload)}"
    return f"{signing_input}.{b64(signature(alg, signing_input.encode(), key))}"


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: PrivateKey, **extra: Any) -> dict[str, Any]:
    pub = key.public_key()
    jwk: dict[str, Any]
    if isinstance(pub, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
    jwk.pop("key_ops", None)
    jwk.update(extra)
    return jwk


def private_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    """A private JWK (for the OpenID provider's own key set)."""
    jwk: dict[str, Any] = (
        RSAAlgorithm.to_jwk(key, as_dict=True) if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm.to_jwk(key, as_dict=True)
    )
    jwk.pop("key_ops", None)  # oidc-provider selects keys "for verify"
    jwk.update(extra)
    return jwk


def self_signed_x5c(key: PrivateKey) -> list[str]:
    """An ``x5c`` chain: one self-signed certificate for ``key`` (the attacker's)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365 * 30))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


def new_key(like: PrivateKey) -> PrivateKey:
    """A fresh (untrusted) key of the same type as ``like``."""
    if isinstance(like, ed25519.Ed25519PrivateKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(like, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(like.curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Spec:
    """What a provider is, for filtering attacks at collection time."""

    jwks: bool  # keys from a JWKS over HTTP (else static keys in the configuration)
    multi_key: bool  # its key set has several usable keys
    aud_required: bool  # `aud` must name this app (False: Clerk, which refuses any `aud`)
    azp_checked: tuple[Path, ...]  # paths on which `azp` is checked when present
    azp_required: bool  # `azp` must be present (Clerk)
    transports: tuple[Path, ...]  # how a Flask request carries its token
    session_categories: bool = False  # reads Clerk's token-category header (`cat`)
    machine_tokens_refused: bool = False  # refuses access tokens of the client-credentials grant (`gty`)


SPECS: dict[str, Spec] = {
    "dev": Spec(jwks=False, multi_key=False, aud_required=True, azp_checked=(), azp_required=False,
                transports=("bearer",)),
    "clerk-pem": Spec(jwks=False, multi_key=False, aud_required=False, azp_checked=("verify", "bearer", "cookie"),
                      azp_required=True, transports=("bearer", "cookie"), session_categories=True),
    "clerk-jwks": Spec(jwks=True, multi_key=True, aud_required=False, azp_checked=("verify", "bearer", "cookie"),
                       azp_required=True, transports=("bearer", "cookie"), session_categories=True),
    # ID tokens (verify) carry azp = the client; API access tokens (bearer) may come from any
    # client allowed to call the API, so azp is not pinned there
    "oidc": Spec(jwks=True, multi_key=True, aud_required=True, azp_checked=("verify",), azp_required=False,
                 transports=("bearer",)),
    "auth0": Spec(jwks=True, multi_key=True, aud_required=True, azp_checked=("verify",), azp_required=False,
                  transports=("bearer",), machine_tokens_refused=True),
}


@dataclass
class Target:
    """One provider under attack and the keys a test controls for it."""

    name: str
    app: Flask
    provider: IdentityProvider
    issuer: str
    alg: str  # the algorithm the provider is pinned to
    key: PrivateKey = field(repr=False)  # a key the provider trusts
    kid: str
    #: claims of a valid token at ``now`` for a path (what the IdP would issue for it)
    claims_for: Callable[[Path, int], dict[str, Any]] = field(repr=False)
    #: header fields a valid token has besides alg/kid (e.g. Clerk's typ and cat)
    header_extra: dict[str, Any] = field(default_factory=lambda: {"typ": "JWT"})
    published_jwk: dict[str, Any] | None = None  # the public JWK as the provider publishes it
    weak_kid: str | None = None  # a 1024-bit RSA key published in its JWKS
    weak_key: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    jwks_uri: str | None = None
    leeway: float = 5.0
    #: the session cookie a browser sends (name, extra cookies), for the ``cookie`` transport
    cookie: Callable[[str, int], str] | None = field(default=None, repr=False)

    @property
    def spec(self) -> Spec:
        return SPECS[self.name]

    @cached_property
    def attacker_key(self) -> PrivateKey:
        return new_key(self.key)

    @cached_property
    def attacker_x5c(self) -> list[str]:
        return self_signed_x5c(self.attacker_key)

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.key)

    @property
    def public_jwk(self) -> dict[str, Any]:
        return self.published_jwk if self.published_jwk is not None else public_jwk(self.key, kid=self.kid)

    def header(self, alg: str | None = None, **fields: Any) -> dict[str, Any]:
        """A valid header, with ``fields`` overriding (``None`` removes a field)."""
        header = {"alg": alg or self.alg, "kid": self.kid, **self.header_extra, **fields}
        return {k: v for k, v in header.items() if v is not None}

    def claims(self, path: Path, now: int, *, omit: tuple[str, ...] = (), **claims: Any) -> dict[str, Any]:
        payload = self.claims_for(path, now)
        payload.update(claims)
        for name in omit:
            payload.pop(name, None)
        return payload

    def token(
        self,
        path: Path,
        now: int,
        *,
        header: Mapping[str, Any] | None = None,
        key: Any = None,
        alg: str | None = None,
        payload: bytes | None = None,
        omit: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        """A token signed with the trusted key (or ``key``), one thing changed at a time."""
        body = payload if payload is not None else json.dumps(self.claims(path, now, omit=omit, **claims)).encode()
        hdr = {k: v for k, v in {**self.header(alg), **dict(header or {})}.items() if v is not None}
        return jws(hdr, body, self.key if key is None else key, alg or self.alg)


# --------------------------------------------------------------------------- the attacks


Build: TypeAlias = Callable[[Target, Path, int], Any]  # a token (a str, except for misuse cases)
Message: TypeAlias = str | Callable[[Spec], str | None] | None


@dataclass(frozen=True)
class Attack:
    """One attack. ``expect``: the refusal's ``reason`` (``None``: another issuer's token, which
    ``verify`` returns ``None`` for and a request answers 401 ``invalid``). ``message``: a
    regular expression the error message matches (per provider spec when it differs)."""

    id: str
    build: Build
    expect: str | None = "invalid"
    message: Message = None
    applies: Callable[[Spec, Path], bool] = lambda spec, path: True

    def message_for(self, spec: Spec) -> str | None:
        return self.message(spec) if callable(self.message) else self.message


MALFORMED = "token is malformed"
ALG = "token algorithm is not allowed"
BAD_SIG = "token signature is invalid"
HEADER = "token header is not accepted"
UNKNOWN_KEY = "token signing key is not known"
NO_KID = "token has no key id"
SUB = "token subject is missing or invalid"


def _by_key_source(static: str, jwks: str) -> Callable[[Spec], str]:
    return lambda spec: jwks if spec.jwks else static


def _split(token: str) -> list[str]:
    return token.split(".")


def _alg_none(spelling: str) -> Build:
    def build(t: Target, path: Path, now: int) -> str:
        return f"{b64json(t.header(spelling))}.{b64json(t.claims(path, now))}."

    return build


def _alg_none_signed(t: Target, path: Path, now: int) -> str:
    return f"{b64json(t.header('none'))}.{b64json(t.claims(path, now))}.{b64(bytes(range(32)))}"


def _hs256(secret: Callable[[Target], bytes]) -> Build:
    def build(t: Target, path: Path, now: int) -> str:
        return t.token(path, now, alg="HS256", key=secret(t))

    return build


def _tamper_header(t: Target, path: Path, now: int) -> str:
    header, payload, sig = _split(t.token(path, now))
    forged = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    forged["tampered"] = True
    return f"{b64json(forged)}.{payload}.{sig}"


def _tamper_payload(**changes: Any) -> Build:
    def build(t: Target, path: Path, now: int) -> str:
        header, _, sig = _split(t.token(path, now))
        claims = t.claims(path, now)
        claims.update({k: (v(t, now) if callable(v) else v) for k, v in changes.items()})
        return f"{header}.{b64json(claims)}.{sig}"

    return build


def _other_subject(t: Target, now: int) -> str:
    return "user_2lockkitMALLORY" if t.name.startswith("clerk") else "admin"


def _strip_signature(keep_dot: bool) -> Build:
    def build(t: Target, path: Path, now: int) -> str:
        header, payload, _ = _split(t.token(path, now))
        return f"{header}.{payload}." if keep_dot else f"{header}.{payload}"

    return build


def _truncate_signature(t: Target, path: Path, now: int) -> str:
    header, payload, sig = _split(t.token(path, now))
    return f"{header}.{payload}.{sig[: len(sig) // 2]}"


def _flip_signature(t: Target, path: Path, now: int) -> str:
    header, payload, sig = _split(t.token(path, now))
    i = len(sig) // 2
    return f"{header}.{payload}.{sig[:i]}{'A' if sig[i] != 'A' else 'B'}{sig[i + 1:]}"


def _es256_zero(t: Target, path: Path, now: int) -> str:
    return f"{b64json(t.header('ES256'))}.{b64json(t.claims(path, now))}.{b64(bytes(64))}"


def _weak_rsa(t: Target, path: Path, now: int) -> str:
    assert t.weak_key is not None and t.weak_kid is not None
    return t.token(path, now, key=t.weak_key, header={"kid": t.weak_kid}, alg="RS256")


def _raw_payload(text: Callable[[Target, Path, int], str]) -> Build:
    def build(t: Target, path: Path, now: int) -> str:
        return t.token(path, now, payload=text(t, path, now).encode())

    return build


def _duplicate_sub(t: Target, path: Path, now: int) -> str:
    body = json.dumps(t.claims(path, now))
    return body[:-1] + ', "sub": "admin"}'


def _exp_infinite(t: Target, path: Path, now: int) -> str:
    return json.dumps(t.claims(path, now, exp="@EXP@")).replace('"@EXP@"', "1e999")


def _oversized(size: int) -> Build:
    def build(t: Target, path: Path, now: int) -> str:
        return t.token(path, now, pad="x" * size)

    return build


def _with(**kwargs: Any) -> Build:
    """A validly signed token with changed claims/header; callables get ``(target, now)``."""

    def build(t: Target, path: Path, now: int) -> str:
        resolved = {k: (v(t, now) if callable(v) else v) for k, v in kwargs.items()}
        return t.token(path, now, **resolved)

    return build


def _deeply_nested(t: Target, path: Path, now: int) -> str:
    body = json.dumps(t.claims(path, now, x="@X@"))
    return body.replace('"@X@"', "[" * 5000 + "]" * 5000)


def _verify_only(spec: Spec, path: Path) -> bool:
    return path == "verify"


def _session_categories(spec: Spec, path: Path) -> bool:
    return spec.session_categories


def _jwks_only(spec: Spec, path: Path) -> bool:
    return spec.jwks


def _multi_key(spec: Spec, path: Path) -> bool:
    return spec.multi_key


def _aud_required(spec: Spec, path: Path) -> bool:
    return spec.aud_required


def _azp_checked(spec: Spec, path: Path) -> bool:
    return path in spec.azp_checked


def _azp_required(spec: Spec, path: Path) -> bool:
    return spec.azp_required


def _aud_message(spec: Spec) -> str:
    return "audience is missing or invalid|not meant for this application" if spec.aud_required else "has an audience"


ATTACKS: tuple[Attack, ...] = (
    # -- the algorithm is pinned, never read from the token
    *(Attack(f"alg-{s}-empty-signature", _alg_none(s), message=MALFORMED) for s in ("none", "None", "NONE", "nOnE")),
    Attack("alg-none-with-signature", _alg_none_signed, message=ALG),
    Attack("hs256-keyed-with-public-pem", _hs256(lambda t: t.public_pem), message=ALG),
    Attack("hs256-keyed-with-public-jwk", _hs256(lambda t: json.dumps(t.public_jwk).encode()), message=ALG),
    Attack("hs256-keyed-with-empty-secret", _hs256(lambda t: b""), message=ALG),
    Attack("es256-zero-r-s", _es256_zero, message=ALG),
    Attack("alg-not-a-string", _with(header={"alg": ["RS256", "EdDSA"]}), message=ALG),
    # -- keys come only from the configuration or the issuer's JWKS
    Attack("unknown-kid-attacker-key", _with(key=lambda t, n: t.attacker_key, header={"kid": "attacker-1"}),
           message=_by_key_source(BAD_SIG, UNKNOWN_KEY)),
    Attack("unknown-kid-trusted-key", _with(header={"kid": "attacker-1"}), message=UNKNOWN_KEY, applies=_jwks_only),
    Attack("missing-kid-attacker-key", _with(key=lambda t, n: t.attacker_key, header={"kid": None}),
           message=_by_key_source(BAD_SIG, NO_KID)),
    Attack("missing-kid-several-keys", _with(header={"kid": None}), message=NO_KID, applies=_multi_key),
    Attack("kid-not-a-string", _with(header={"kid": 42}), message=MALFORMED),
    Attack("rsa-1024-key-in-jwks", _weak_rsa, message=UNKNOWN_KEY, applies=_jwks_only),
    # -- headers that name their own key or extensions
    Attack("jku-header", _with(key=lambda t, n: t.attacker_key, header={"jku": EVIL + "/jwks.json"}), message=HEADER),
    Attack("x5u-header", _with(key=lambda t, n: t.attacker_key, header={"x5u": EVIL + "/cert.pem"}), message=HEADER),
    Attack("embedded-jwk-header", _with(key=lambda t, n: t.attacker_key,
                                        header=lambda t, n: {"jwk": public_jwk(t.attacker_key)}), message=HEADER),
    Attack("x5c-header", _with(key=lambda t, n: t.attacker_key, header=lambda t, n: {"x5c": t.attacker_x5c}),
           message=HEADER),
    Attack("crit-header", _with(header={"crit": ["urn:evil"], "urn:evil": True}), message=HEADER),
    Attack("b64-false-header", _with(header={"b64": False}), message=HEADER),
    # Clerk's token category (`cat`), validly signed but of the wrong JSON type
    Attack("cat-header-list", _with(header={"cat": ["cl_B7d4PD111AAA"]}), message="not a Clerk session token",
           applies=_session_categories),
    Attack("cat-header-object", _with(header={"cat": {}}), message="not a Clerk session token",
           applies=_session_categories),
    # -- time
    Attack("expired", _with(iat=lambda t, n: n - 360, nbf=lambda t, n: n - 360, exp=lambda t, n: n - 60),
           expect="expired", message="expired"),
    Attack("expired-long-ago", _with(iat=0, nbf=0, exp=60), expect="expired", message="expired"),
    Attack("nbf-in-the-future", _with(nbf=lambda t, n: n + 600, exp=lambda t, n: n + 900), message="not valid yet"),
    Attack("iat-far-in-the-future", _with(iat=lambda t, n: n + 3600, exp=lambda t, n: n + 7200),
           message="issued in the future"),
    Attack("exp-string", _with(exp=lambda t, n: str(n + 60)), message="exp claim is not a number"),
    Attack("exp-bool", _with(exp=True), message="exp claim is not a number"),
    Attack("exp-null", _with(exp=None), message="exp claim is not a number"),
    Attack("exp-infinite", _raw_payload(_exp_infinite), message="exp claim is out of range"),
    Attack("exp-huge-integer", _with(exp=10**400), message="exp claim is out of range"),
    Attack("exp-missing", _with(omit=("exp",)), message="no exp claim"),
    Attack("nbf-string", _with(nbf=lambda t, n: str(n - 10)), message="nbf claim is not a number"),
    # -- issuer: exact match; another issuer's token is left to other providers (None)
    Attack("iss-other", _with(iss=EVIL), expect=None),
    Attack("iss-trailing-slash", _with(iss=lambda t, n: t.issuer + "/"), expect=None),
    Attack("iss-upper-case", _with(iss=lambda t, n: t.issuer.upper()), expect=None),
    Attack("iss-missing", _with(omit=("iss",)), message="no issuer|malformed"),
    Attack("iss-not-a-string", _with(iss=["x"]), message="no issuer|malformed"),
    # -- audience and authorized party, as each IdP defines them
    Attack("aud-other", _with(aud=EVIL), message=_aud_message),
    Attack("aud-list-without-this-app", _with(aud=[EVIL, "https://other.example"]), message=_aud_message),
    Attack("aud-not-a-string", _with(aud=42), message=_aud_message),
    Attack("aud-missing", _with(omit=("aud",)), message="audience is missing", applies=_aud_required),
    Attack("azp-other", _with(azp=EVIL), message="authorized party is not allowed", applies=_azp_checked),
    Attack("azp-missing", _with(omit=("azp",)), message="no authorized party", applies=_azp_required),
    # -- integrity
    Attack("header-tampered", _tamper_header, message=BAD_SIG),
    Attack("payload-tampered-sub", _tamper_payload(sub=_other_subject), message=BAD_SIG),
    Attack("payload-tampered-exp", _tamper_payload(exp=lambda t, n: n + 10 * 365 * 86400), message=BAD_SIG),
    Attack("signature-stripped", _strip_signature(keep_dot=True), message=MALFORMED),
    Attack("signature-and-dot-stripped", _strip_signature(keep_dot=False), message=MALFORMED),
    Attack("signature-truncated", _truncate_signature, message=f"{BAD_SIG}|{MALFORMED}"),
    Attack("signature-bit-flipped", _flip_signature, message=BAD_SIG),
    # -- shape
    Attack("payload-json-list", _raw_payload(lambda t, p, n: json.dumps([t.claims(p, n)])), message=MALFORMED),
    Attack("payload-json-string", _raw_payload(lambda t, p, n: json.dumps("admin")), message=MALFORMED),
    Attack("payload-json-null", _raw_payload(lambda t, p, n: "null"), message=MALFORMED),
    Attack("payload-duplicate-member", _raw_payload(_duplicate_sub), message=MALFORMED),
    Attack("header-json-list", lambda t, p, n: f"{b64json([t.header()])}.{b64json(t.claims(p, n))}.{b64(bytes(64))}",
           message=MALFORMED),
    Attack("five-segments", lambda t, p, n: ".".join([t.token(p, n)] + ["AAAA", "AAAA"]), message=MALFORMED),
    Attack("not-a-jwt", lambda t, p, n: "not.a.token", message=MALFORMED),
    Attack("payload-deeply-nested", _raw_payload(_deeply_nested), message=MALFORMED),
    # programmatic misuse of verify() (a request's token is always a str)
    Attack("token-bytes", lambda t, p, n: t.token(p, n).encode(), message=MALFORMED, applies=_verify_only),
    Attack("token-none", lambda t, p, n: None, message=MALFORMED, applies=_verify_only),
    Attack("token-int", lambda t, p, n: 42, message=MALFORMED, applies=_verify_only),
    Attack("oversized-17-kib", _oversized(17 * 1024), message="too large"),
    Attack("oversized-100-kib", _oversized(100 * 1024), message="too large|malformed"),
    # -- subject
    Attack("sub-empty", _with(sub=""), message=SUB),
    Attack("sub-number", _with(sub=42), message=SUB),
    Attack("sub-null", _with(sub=None), message=SUB),
    Attack("sub-list", _with(sub=["admin"]), message=SUB),
    Attack("sub-missing", _with(omit=("sub",)), message=SUB),
    Attack("machine-token", _with(gty="client-credentials", sub=lambda t, n: "svc-client@clients"),
           message="machine-to-machine tokens do not sign in users",
           applies=lambda spec, path: spec.machine_tokens_refused and path == "bearer"),
    Attack("sub-too-long", _with(sub=lambda t, n: ("user_" if t.name.startswith("clerk") else "") + "a" * 300),
           message=SUB),
)

ATTACKS_BY_ID: dict[str, Attack] = {a.id: a for a in ATTACKS}
assert len(ATTACKS_BY_ID) == len(ATTACKS), "attack ids must be unique"

#: (provider, attack id) -> (reason, the exception raised instead of an IdentityError).
#: Each is a strict xfail: the test starts failing (XPASS) once the provider is fixed. (The
#: suite's first run found two, in lockkit-clerk and lockkit-oidc; both are fixed.)
KNOWN_BUGS: dict[tuple[str, str], tuple[str, tuple[type[BaseException], ...]]] = {}


# --------------------------------------------------------------------------- a JWKS server


class JWKSServer:
    """A JWKS on 127.0.0.1 at ``path``; ``keys`` may be replaced at any time (rotation). With
    ``bearer`` set, only a request whose ``Authorization`` is ``Bearer <bearer>`` (compared in
    constant time) gets the keys; others get 401."""

    def __init__(self, keys: list[dict[str, Any]], *, path: str = "/v1/jwks", bearer: str | None = None) -> None:
        self.path = path
        self._keys = list(keys)
        self._expected = f"Bearer {bearer}".encode() if bearer is not None else None
        self._lock = threading.Lock()
        self.requests = 0
        self.refused = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def set_keys(self, keys: list[dict[str, Any]]) -> None:
        with self._lock:
            self._keys = list(keys)

    def kids(self) -> list[str]:
        with self._lock:
            return [str(k.get("kid")) for k in self._keys]

    def __enter__(self) -> JWKSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _answer(self, path: str, auth: str | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            if path != self.path:
                return 404, {"error": "not_found"}
            if self._expected is not None and (auth is None or not hmac.compare_digest(auth.encode(), self._expected)):
                self.refused += 1
                return 401, {"error": "unauthorized"}
            return 200, {"keys": [dict(k) for k in self._keys]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                status, doc = server._answer(self.path.split("?", 1)[0], self.headers.get("Authorization"))
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                """Quiet."""

        return Handler


def iter_cases(paths: tuple[Path, ...]) -> Iterator[tuple[str, Path, Attack]]:
    """Every (provider, path, attack) that applies, in a stable order."""
    for name, spec in SPECS.items():
        for path in paths:
            if path != "verify" and path not in spec.transports:
                continue
            for attack in ATTACKS:
                if attack.applies(spec, path):
                    yield name, path, attack
