"""``lockkit openbao setup``: configure an OpenBao server for lockkit with an operator token.

It enables the transit engine and a JWT auth mount, points the mount at the identity
provider's keys (the mount's other settings are kept), writes the templated user policy, the
CEL login role (alias = hex of ``sub``, token lifetime bound to the JWT's ``exp``, capped; bound
claims checked by the CEL program itself), and the app's service policy. Idempotent. It refuses
a second auth mount whose users would get the same transit keys as another mount's. The
operator token is used only here; the running app never holds it.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..config import OpenBaoConfig
from ..oidc import protected_url
from .openbao import MIN_TOKEN_SECONDS, BaoError, OpenBaoHTTP

USER_POLICY = "lockkit-user-cel"  # for the default mount, jwt-cel
APP_POLICY = "lockkit-app"  # for the default transit mount and key prefix (transit, lkx-)

_Call = Callable[..., dict[str, Any]]


def user_policy_name(auth_mount: str) -> str:
    """One user policy per auth mount: it is templated on that mount's accessor."""
    return USER_POLICY if auth_mount == "jwt-cel" else f"lockkit-user-{auth_mount}"


def app_policy_name(config: OpenBaoConfig) -> str:
    """One app policy per deployment (transit mount, key prefix), so that setting up a second
    one never rewrites the first one's; the defaults keep the name ``lockkit-app``."""
    if config.transit_mount == "transit" and config.key_prefix == "lkx-":
        return APP_POLICY
    raw = f"{config.transit_mount}-{config.key_prefix.rstrip('-')}"
    name = re.sub(r"[^a-z0-9_.-]", "_", raw.lower())  # OpenBao lowercases policy names
    if name != raw:  # two raw names may not share one sanitised name
        name += "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"lockkit-app-{name}"


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


#: the key paths a user policy templates: <transit>/encrypt/<prefix>{{identity...name}}
#: the accessors a user policy templates: identity.entity.aliases.<accessor>.name
_ALIAS_ACCESSOR = re.compile(r"identity\.entity\.aliases\.([^.}\s]+)\.name")
_TEMPLATED_KEY = re.compile(r'path "(?P<transit>[^"]+?)/encrypt/(?P<prefix>[^"{]*)\{\{identity\.entity\.aliases\.')

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


# -- the CEL role ---------------------------------------------------------------------------
_CLAIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CEL_RESERVED = frozenset({"as", "break", "const", "continue", "else", "false", "for", "function", "if", "import", "in",
                           "let", "loop", "namespace", "null", "package", "return", "true", "var", "void", "while"})


def cel_string(value: str) -> str:
    """``value`` as a CEL string literal (a JSON string is one: double quotes, the same
    escapes). :raises ValueError: not encodable as UTF-8 (a lone surrogate)."""
    try:
        value.encode()
    except UnicodeEncodeError as err:
        raise ValueError(f"{value!r} is not valid Unicode text") from err
    return json.dumps(value, ensure_ascii=False)


def _re2_literal(text: str) -> str:
    """``text`` for RE2 to match literally: ASCII punctuation backslash-escaped, other ASCII
    that is not a letter or digit (spaces, controls) as ``\\x{..}``."""
    out = []
    for c in text:
        if not c.isascii() or c.isalnum() or c == "_":
            out.append(c)
        elif c in string.punctuation:
            out.append("\\" + c)
        else:
            out.append(f"\\x{{{ord(c):x}}}")
    return "".join(out)


def glob_regex(glob: str) -> str:
    """An RE2 pattern matching the whole of a string against ``glob``, whose only wildcard is
    ``*`` (any characters, newlines too); everything else is literal."""
    return "(?s)^" + ".*".join(_re2_literal(part) for part in glob.split("*")) + "$"


def _bound_claims(bound_claims: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """``{name: [value or glob, ...]}``, checked. :raises ValueError: a name CEL cannot
    select, ``aud`` (use audiences), or a value that is not a non-empty string."""
    out: dict[str, list[str]] = {}
    for name, values in (bound_claims or {}).items():
        if not isinstance(name, str) or not _CLAIM_NAME.fullmatch(name) or name in _CEL_RESERVED:
            raise ValueError(f"bound claim name {name!r}: expected letters, digits and _ (not a CEL keyword)")
        if name == "aud":
            raise ValueError("bind aud with audiences (--audience), not as a bound claim")
        listed = [values] if isinstance(values, str) else values
        if not isinstance(listed, Sequence) or not listed or not all(isinstance(v, str) and v for v in listed):
            raise ValueError(f"bound claim {name}: give one or more non-empty strings (globs with *)")
        out[name] = list(listed)
    return out


def claim_test(name: str, values: Sequence[str]) -> str:
    """CEL that is true when string claim ``name`` equals one of ``values`` (or matches one
    with ``*`` as a glob)."""
    ref = f"claims.{name}"
    tests = [f"{ref}.matches({cel_string(glob_regex(v))})" if "*" in v else f"{ref} == {cel_string(v)}"
             for v in values]
    return f"has({ref}) && type({ref}) == string && ({' || '.join(tests)})"


def cel_role(audiences: Sequence[str], bound_claims: Mapping[str, Any] | None, max_ttl: int, clock_skew: int,
             policy: str = USER_POLICY) -> dict[str, Any]:
    """The CEL role: alias name = lowercase hex of the UTF-8 ``sub`` (injective, case-safe,
    any characters; a ``sub`` holding U+FFFD is refused: OpenBao decodes a lone surrogate to it,
    so two subjects would share one key), token TTL = time left on the JWT, capped at
    ``max_ttl`` seconds; a JWT with under 5 s left is refused (a TTL <= 0 would silently become
    the mount default).

    Bound claims are checked by the program itself (OpenBao's CEL role ignores the plain
    role's ``bound_claims``): each must be a string equal to one of its values, or matching one
    with ``*`` as a glob. With no audiences, a JWT that carries ``aud`` is refused (it was
    issued for some other application). Audiences are OpenBao's ``bound_audiences``.

    :raises ValueError: bad bound claims (see :func:`_bound_claims`).
    """
    guards: list[tuple[str, str]] = []
    if not audiences:
        guards.append(("has(claims.aud)", "the token has an aud claim, and the role binds no audience"))
    for name, values in _bound_claims(bound_claims).items():
        guards.append((f"!({claim_test(name, values)})", f"the token's {name} is not bound to this role"))
    role: dict[str, Any] = {
        "clock_skew_leeway": clock_skew,
        "cel_program": {
            "variables": [
                {"name": "ok_sub", "expression": "type(claims.sub) == string && size(claims.sub) > 0 && "
                                                 "size(claims.sub) <= 255 && !claims.sub.contains('\\ufffd')"},
                {"name": "uid", "expression": "ok_sub ? '%x'.format([claims.sub]) : ''"},
                {"name": "left_s", "expression": "(timestamp(int(claims.exp)) - now).getSeconds()"},
                {"name": "ttl_ns", "expression": f"(left_s < {max_ttl} ? left_s : {max_ttl}) * 1000000000"},
            ],
            "expression": (
                "".join(f"{test} ? {cel_string(message)} : " for test, message in guards)
                + "!ok_sub ? 'sub must be a non-empty string of at most 255 characters, without U+FFFD' : "
                "left_s < 5 ? 'identity token expires in less than 5 s' : "
                f"pb.Auth{{display_name: 'lk-' + uid, policies: [{cel_string(policy)}], no_default_policy: true, "
                "lease_options: pb.LeaseOptions{issue_time: now, TTL: ttl_ns, MaxTTL: ttl_ns, renewable: false}, "
                "alias: logical.Alias{name: uid}}"
            ),
        },
    }
    if audiences:
        role["bound_audiences"] = list(audiences)
    return role


def _role_differences(sent: Mapping[str, Any], stored: Any) -> list[str]:
    """The fields of the role OpenBao stored that are not what was written."""
    if not isinstance(stored, dict):
        return ["the whole role"]

    def variables(program: Any) -> Any:
        found = program.get("variables") if isinstance(program, dict) else None
        if not isinstance(found, list):
            return found
        return [(v.get("name"), v.get("expression")) if isinstance(v, dict) else v for v in found]

    program, wrote = stored.get("cel_program"), sent["cel_program"]
    differ = []
    if not isinstance(program, dict) or program.get("expression") != wrote["expression"]:
        differ.append("cel_program.expression")
    if variables(program) != variables(wrote):
        differ.append("cel_program.variables")
    if sorted(stored.get("bound_audiences") or []) != sorted(sent.get("bound_audiences", [])):
        differ.append("bound_audiences")
    if stored.get("clock_skew_leeway") != sent["clock_skew_leeway"]:
        differ.append("clock_skew_leeway")
    return differ


# -- checks against what the server already holds ------------------------------------------
def _refuse_shared_keys(call: _Call, config: OpenBaoConfig) -> None:
    """Refuse when another auth mount's lockkit user policy templates key names that ours
    could also produce (same transit mount, a prefix that is a prefix of the other): the same
    subject at two identity providers would then use one key. A policy is this mount's when it
    templates this mount's accessor (names can clash: ``jwt-cel`` and ``cel`` both map to
    ``lockkit-user-cel``); another mount's policy under our policy name is refused too, since
    writing ours would replace it.

    :raises ValueError: with what to change.
    """
    own = user_policy_name(config.auth_mount)
    mount = (call("GET", "sys/auth").get("data") or {}).get(f"{config.auth_mount}/")
    mine = mount.get("accessor") if isinstance(mount, dict) else None  # None: the mount is new
    names = (call("LIST", "sys/policies/acl").get("data") or {}).get("keys") or []
    for name in names:
        if not isinstance(name, str) or not name.startswith("lockkit-user-"):
            continue
        text = (call("GET", f"sys/policies/acl/{name}").get("data") or {}).get("policy")
        text = text if isinstance(text, str) else ""
        accessors = set(_ALIAS_ACCESSOR.findall(text))
        if mine is not None and accessors == {mine}:
            continue  # this mount's own policy (a re-run)
        if name == own:
            raise ValueError(
                f"policy {name} belongs to another auth mount (it names accessor(s) {sorted(accessors)}): writing "
                f"this mount's policy would replace it. Choose another --auth-mount name, or delete {name} if "
                "its mount is gone"
            )
        for m in _TEMPLATED_KEY.finditer(text):
            theirs = m["prefix"]
            if m["transit"] == config.transit_mount and (theirs.startswith(config.key_prefix)
                                                         or config.key_prefix.startswith(theirs)):
                raise ValueError(
                    f"policy {name} already gives the users of another auth mount the transit keys "
                    f"{config.transit_mount}/…/{theirs}<hex(sub)>: a subject at this mount's identity provider "
                    f"would use the key of the same subject there. Give each auth mount its own key prefix "
                    f"(--key-prefix, LOCKKIT_OPENBAO_KEY_PREFIX; not one prefixing the other) or transit mount "
                    f"(--transit-mount), or delete {name} if its mount is gone"
                )


def _refuse_foreign_app_policy(call: _Call, config: OpenBaoConfig, name: str) -> None:
    """A policy of that name that exists must be this deployment's (its rewrap path names
    this transit mount and prefix): two deployments never share one app policy."""
    try:
        text = (call("GET", f"sys/policies/acl/{name}").get("data") or {}).get("policy")
    except BaoError as err:
        if err.status == 404:
            return
        raise
    if isinstance(text, str) and f'path "{config.transit_mount}/rewrap/{config.key_prefix}*"' not in text:
        raise ValueError(
            f"policy {name} was written for another transit mount or key prefix. If an earlier lockkit set up "
            f"that deployment, re-run its setup (it now writes an app policy of its own) and give its app that "
            f"policy; then delete {name} and run this again"
        )


#: auth config fields never written back: read-only, or other key sources and OIDC client
#: settings (setup sets jwks_url; OpenBao takes one key source, and never returns the secret)
_CONFIG_REPLACED = ("status", "oidc_discovery_url", "oidc_discovery_ca_pem", "jwt_validation_pubkeys",
                    "oidc_client_id", "oidc_client_secret")


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _auth_config(call: _Call, mount: str, jwks_url: str, issuer: str) -> tuple[dict[str, Any], list[str]]:
    """The mount's JWT config with only ``jwks_url`` and ``bound_issuer`` changed (an
    operator's ``jwks_ca_pem``, ``jwt_supported_algs``, ``default_role``... are kept: OpenBao
    replaces the whole config on a write), and the other key-source fields it drops."""
    try:
        current = call("GET", f"auth/{mount}/config").get("data")
    except BaoError as err:
        if err.status != 404:  # a new mount has no config yet
            raise
        current = None
    current = current if isinstance(current, dict) else {}
    kept = {k: v for k, v in current.items() if k not in _CONFIG_REPLACED and not _empty(v)}
    dropped = [k for k in _CONFIG_REPLACED if k != "status" and not _empty(current.get(k))]
    return {**kept, "jwks_url": jwks_url, "bound_issuer": issuer}, dropped


_SAFE_PATH = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


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

    :raises ValueError: bad arguments, or another auth mount already uses these keys;
    :raises BaoError: the server refused a step (the message says which), or stored the CEL
        role otherwise than written (the role is then deleted).
    """
    if not audiences and not bound_claims:
        raise ValueError("bind the role: give audiences, or bound_claims (e.g. azp for Clerk tokens)")
    if isinstance(max_ttl, bool) or not isinstance(max_ttl, int) or not MIN_TOKEN_SECONDS <= max_ttl <= 86400:
        # 0 or less would not cap anything: OpenBao reads 0 as "the system default" (32 days)
        raise ValueError(f"max_ttl must be from {MIN_TOKEN_SECONDS} to 86400 seconds")
    if config.login != "cel":
        raise ValueError("setup configures the CEL role; the plain role is for Vault compatibility, configure it by hand")
    for what, value in (("auth mount", config.auth_mount), ("transit mount", config.transit_mount),
                        ("role", config.role), ("key prefix", config.key_prefix)):
        if not _SAFE_PATH.fullmatch(value) or (what in ("role", "key prefix") and "/" in value):
            raise ValueError(f"the {what} {value!r} may hold only letters, digits, '_', '.', '-' (and '/' in mounts)")
    jwks = urlsplit(jwks_url)
    # OpenBao would trust identity keys fetched in the clear: anyone on the path could sign in as anyone
    if not protected_url(jwks_url) and not (jwks.scheme == "http" and jwks.hostname and config.insecure_http):
        raise ValueError(f"the JWKS URL {jwks_url!r} must be https (plain http only on loopback)")
    mount, transit, prefix = config.auth_mount, config.transit_mount, config.key_prefix
    policy, app = user_policy_name(mount), app_policy_name(config)
    role = cel_role(audiences, bound_claims, max_ttl, clock_skew, policy)
    role_path = f"auth/{mount}/cel/role/{config.role}"
    http = http or OpenBaoHTTP(config)
    done: list[str] = []

    def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
        return http.call(method, path, token=operator_token, body=body)

    _refuse_shared_keys(call, config)
    _refuse_foreign_app_policy(call, config, app)
    mounts = call("GET", "sys/mounts").get("data") or {}
    if f"{transit}/" not in mounts:
        call("POST", f"sys/mounts/{transit}", {"type": "transit"})
        done.append(f"enabled the transit engine at {transit}/")
    auths = call("GET", "sys/auth").get("data") or {}
    if f"{mount}/" not in auths:
        call("POST", f"sys/auth/{mount}", {"type": "jwt"})
        done.append(f"enabled JWT auth at auth/{mount}/")
        auths = call("GET", "sys/auth").get("data") or {}
    call("POST", f"sys/auth/{mount}/tune", {"default_lease_ttl": f"{max_ttl}s", "max_lease_ttl": f"{max_ttl}s"})
    done.append(f"capped token lifetimes on auth/{mount}/ at {max_ttl}s")
    auth_config, dropped = _auth_config(call, mount, jwks_url, issuer)
    call("POST", f"auth/{mount}/config", auth_config)
    done.append(f"auth/{mount}/ trusts {issuer} (keys from {jwks_url}; its other settings kept"
                + (f"; replaced {', '.join(dropped)})" if dropped else ")"))
    accessor = auths[f"{mount}/"]["accessor"]
    call("PUT", f"sys/policies/acl/{policy}", {"policy": user_policy(transit, accessor, prefix)})
    done.append(f"wrote policy {policy} (each user: only {prefix}<hex(sub)>)")
    call("PUT", f"sys/policies/acl/{app}", {"policy": app_policy(transit, prefix)})
    done.append(f"wrote policy {app} (the app: create keys, metadata, rewrap; no plaintext)")
    call("POST", role_path, role)
    differ = _role_differences(role, call("GET", role_path).get("data"))
    if differ:  # never leave a role that is not bound as written (it could accept any token)
        call("DELETE", role_path)
        raise BaoError(502, [f"OpenBao stored the CEL role {config.role} without what setup wrote "
                             f"({', '.join(differ)}); the role was deleted. Is this OpenBao version supported?"])
    bound = [f"aud in {list(audiences)}"] if audiences else ["no aud"]
    bound += [f"{name} in {values}" for name, values in _bound_claims(bound_claims).items()]
    done.append(f"wrote CEL role {config.role} (alias = hex(sub), TTL <= JWT exp, <= {max_ttl}s; "
                f"{', '.join(bound)}; checked by reading it back)")
    return done


def describe(config: OpenBaoConfig) -> str:
    """The policies setup writes, for operators who review before applying."""
    return json.dumps({"user_policy": user_policy(config.transit_mount, "<JWT_ACCESSOR>", config.key_prefix),
                       "app_policy_name": app_policy_name(config),
                       "app_policy": app_policy(config.transit_mount, config.key_prefix)}, indent=2)


__all__ = ["APP_POLICY", "USER_POLICY", "user_policy_name", "app_policy_name", "BaoError", "app_policy", "cel_role",
           "cel_string", "claim_test", "describe", "glob_regex", "setup", "user_policy"]
