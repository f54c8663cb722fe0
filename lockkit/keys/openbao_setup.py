"""``lockkit openbao setup``: configure an OpenBao server for lockkit with an operator token.

It enables the transit engine and a JWT auth mount, points the mount at the identity
provider's keys, writes the templated user policy, the CEL login role (alias = hex of ``sub``,
token lifetime bound to the JWT's ``exp``, capped), and the app's service policy. Idempotent.
The operator token is used only here; the running app never holds it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..config import OpenBaoConfig
from ..oidc import protected_url
from .openbao import MIN_TOKEN_SECONDS, BaoError, OpenBaoHTTP

USER_POLICY = "lockkit-user-cel"  # for the default mount, jwt-cel
APP_POLICY = "lockkit-app"


def user_policy_name(auth_mount: str) -> str:
    """One user policy per auth mount: it is templated on that mount's accessor."""
    return USER_POLICY if auth_mount == "jwt-cel" else f"lockkit-user-{auth_mount}"


def user_policy(transit: str, accessor: str, prefix: str) -> str:
    """A JWT-authenticated user may use ONLY transit key <prefix><own alias name>."""
    name = f"{prefix}{{{{identity.entity.aliases.{accessor}.name}}}}"
    rules = [
        (f"{transit}/encrypt/{name}", '["create", "update"]'),  # create: first use upserts the key
        (f"{transit}/decrypt/{name}", '["update"]'),
        (f"{transit}/datakey/plaintext/{name}", '["update"]'),
        (f"{transit}/datakey/wrapped/{name}", '["update"]'),
        (f"{transit}/rewrap/{name}", '["update"]'),
        (f"{transit}/hmac/{name}", '["update"]'),
        ("auth/token/revoke-self", '["update"]'),
    ]
    return "# lockkit: a user's token may use only that user's own transit key.\n" + "".join(
        f'path "{p}" {{\n  capabilities = {caps}\n}}\n' for p, caps in rules
    )


#: key settings the app's token may never set when it creates a key
_DENIED_KEY_PARAMETERS = ("exportable", "allow_plaintext_backup", "derived", "convergent_encryption", "type",
                          "key_size", "managed_key_name", "managed_key_id")


def app_policy(transit: str, prefix: str) -> str:
    """The app's service identity: create keys, read metadata, rewrap, rotate. Never plaintext,
    data keys, exports, or key config changes. ("+" is one path segment, so keys/+ does not
    cover keys/<name>/config; the denies make that explicit.)"""
    return (
        "# lockkit-app: the web app's own identity. It can never obtain plaintext or data keys.\n"
        f'path "{transit}/keys/+" {{\n  capabilities = ["create", "update", "read"]\n'
        # creating a key (a user's, before first use) never makes it exportable or backup-able,
        # nor of another type: those settings cannot be undone once a key exists
        '  denied_parameters = {\n'
        + "".join(f'    "{p}" = []\n' for p in _DENIED_KEY_PARAMETERS)
        + "  }\n}\n"
        f'path "{transit}/keys/+/config" {{\n  capabilities = ["deny"]\n}}\n'
        f'path "{transit}/keys/+/trim" {{\n  capabilities = ["deny"]\n}}\n'
        f'path "{transit}/keys/+/rotate" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{transit}/rewrap/{prefix}*" {{\n  capabilities = ["update"]\n}}\n'
    )


def cel_role(audiences: Sequence[str], bound_claims: Mapping[str, Any] | None, max_ttl: int, clock_skew: int,
             policy: str = USER_POLICY) -> dict[str, Any]:
    """The CEL role: alias name = lowercase hex of the UTF-8 ``sub`` (injective, case-safe,
    any characters), token TTL = time left on the JWT, capped at ``max_ttl`` seconds; a JWT
    with under 5 s left is refused (a TTL <= 0 would silently become the mount default)."""
    role: dict[str, Any] = {
        "clock_skew_leeway": clock_skew,
        "cel_program": {
            "variables": [
                {"name": "ok_sub", "expression": "type(claims.sub) == string && size(claims.sub) > 0 && size(claims.sub) <= 255"},
                {"name": "uid", "expression": "ok_sub ? '%x'.format([claims.sub]) : ''"},
                {"name": "left_s", "expression": "(timestamp(int(claims.exp)) - now).getSeconds()"},
                {"name": "ttl_ns", "expression": f"(left_s < {max_ttl} ? left_s : {max_ttl}) * 1000000000"},
            ],
            "expression": (
                "!ok_sub ? 'sub must be a non-empty string of at most 255 characters' : "
                "left_s < 5 ? 'identity token expires in less than 5 s' : "
                "pb.Auth{display_name: 'lk-' + uid, policies: ['" + policy + "'], no_default_policy: true, "
                "lease_options: pb.LeaseOptions{issue_time: now, TTL: ttl_ns, MaxTTL: ttl_ns, renewable: false}, "
                "alias: logical.Alias{name: uid}}"
            ),
        },
    }
    if audiences:
        role["bound_audiences"] = list(audiences)
    if bound_claims:
        role["bound_claims"] = dict(bound_claims)
        role["bound_claims_type"] = "glob"
    return role


def setup(
    config: OpenBaoConfig,
    operator_token: str,
    *,
    issuer: str,
    jwks_url: str,
    audiences: Sequence[str] = (),
    bound_claims: Mapping[str, Any] | None = None,
    max_ttl: int = 900,
    clock_skew: int = 5,
    http: OpenBaoHTTP | None = None,
) -> list[str]:
    """Configure the server; returns what was done, one line per step.

    :raises BaoError: the server refused a step (the message says which).
    """
    if not audiences and not bound_claims:
        raise ValueError("bind the role: give audiences, or bound_claims (e.g. azp for Clerk tokens)")
    if isinstance(max_ttl, bool) or not isinstance(max_ttl, int) or not MIN_TOKEN_SECONDS <= max_ttl <= 86400:
        # 0 or less would not cap anything: OpenBao reads 0 as "the system default" (32 days)
        raise ValueError(f"max_ttl must be from {MIN_TOKEN_SECONDS} to 86400 seconds")
    jwks = urlsplit(jwks_url)
    # OpenBao would trust identity keys fetched in the clear: anyone on the path could sign in as anyone
    if not protected_url(jwks_url) and not (jwks.scheme == "http" and jwks.hostname and config.insecure_http):
        raise ValueError(f"the JWKS URL {jwks_url!r} must be https (plain http only on loopback)")
    http = http or OpenBaoHTTP(config)
    done: list[str] = []

    def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
        return http.call(method, path, token=operator_token, body=body)

    mounts = call("GET", "sys/mounts").get("data") or {}
    transit = config.transit_mount
    if f"{transit}/" not in mounts:
        call("POST", f"sys/mounts/{transit}", {"type": "transit"})
        done.append(f"enabled the transit engine at {transit}/")
    auths = call("GET", "sys/auth").get("data") or {}
    mount = config.auth_mount
    if f"{mount}/" not in auths:
        call("POST", f"sys/auth/{mount}", {"type": "jwt"})
        done.append(f"enabled JWT auth at auth/{mount}/")
        auths = call("GET", "sys/auth").get("data") or {}
    call("POST", f"sys/auth/{mount}/tune", {"default_lease_ttl": f"{max_ttl}s", "max_lease_ttl": f"{max_ttl}s"})
    done.append(f"capped token lifetimes on auth/{mount}/ at {max_ttl}s")
    call("POST", f"auth/{mount}/config", {"jwks_url": jwks_url, "bound_issuer": issuer})
    done.append(f"auth/{mount}/ trusts {issuer} (keys from {jwks_url})")
    accessor = auths[f"{mount}/"]["accessor"]
    policy = user_policy_name(mount)
    call("PUT", f"sys/policies/acl/{policy}", {"policy": user_policy(transit, accessor, config.key_prefix)})
    done.append(f"wrote policy {policy} (each user: only {config.key_prefix}<hex(sub)>)")
    call("PUT", f"sys/policies/acl/{APP_POLICY}", {"policy": app_policy(transit, config.key_prefix)})
    done.append(f"wrote policy {APP_POLICY} (the app: create keys, metadata, rewrap; no plaintext)")
    if config.login != "cel":
        raise ValueError("setup configures the CEL role; the plain role is for Vault compatibility, configure it by hand")
    call("POST", f"auth/{mount}/cel/role/{config.role}", cel_role(audiences, bound_claims, max_ttl, clock_skew, policy))
    done.append(f"wrote CEL role {config.role} (alias = hex(sub), TTL <= JWT exp, <= {max_ttl}s)")
    return done


def describe(config: OpenBaoConfig) -> str:
    """The policies setup writes, for operators who review before applying."""
    return json.dumps({"user_policy": user_policy(config.transit_mount, "<JWT_ACCESSOR>", config.key_prefix),
                       "app_policy": app_policy(config.transit_mount, config.key_prefix)}, indent=2)


__all__ = ["APP_POLICY", "USER_POLICY", "user_policy_name", "BaoError", "app_policy", "cel_role", "describe", "setup", "user_policy"]
