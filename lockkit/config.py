"""Configuration: the one place that reads ``lockkit.toml`` and the environment.

Precedence, lowest first: built-in defaults, ``lockkit.toml`` (``LOCKKIT_CONFIG`` names another
file), then ``LOCKKIT_*`` environment variables. The reference product's ``CS_WORKSPACE_CRN``
is honoured when ``LOCKKIT_WORKSPACE_CRN`` is not set.

Example ``lockkit.toml``::

    workspace_crn = "crn:local:ws-2f9c1d"
    keyring = ".lockkit/keyring.json"      # relative to this file

    [cts]
    lifetime = 900                         # seconds; capped at 3600
    claims = ["org_id"]                    # extra IdP claims lock contexts may name

    [[issuers]]
    issuer = "https://idp.example.com"
    audience = ["my-app"]
    jwks_uri = "https://idp.example.com/.well-known/jwks.json"
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .oidc import IssuerConfig, protected_url

DEFAULT_CONFIG_FILE = "lockkit.toml"
DEFAULT_KEYRING_PATH = ".lockkit/keyring.json"
DEFAULT_KEYSET = "default"
DEFAULT_CTS_LIFETIME = 900
MAX_CTS_LIFETIME = 3600
MIN_CTS_LIFETIME = 30

_CRN_RE = re.compile(r"^crn:([a-z0-9][a-z0-9-]{0,62}):([A-Za-z0-9][A-Za-z0-9_-]{0,127})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

HOW_TO_CONFIGURE = (
    "run `lockkit init` in the app's directory, or set LOCKKIT_WORKSPACE_CRN "
    "(or CS_WORKSPACE_CRN) to a CRN of the form crn:<region>:<workspace-id>"
)


def parse_crn(crn: str) -> tuple[str, str]:
    """Split a workspace CRN ``crn:<region>:<workspace-id>`` into ``(region, workspace_id)``.

    :raises ConfigurationError: if the CRN is malformed.
    """
    m = _CRN_RE.match(crn.strip()) if isinstance(crn, str) else None
    if not m:
        raise ConfigurationError(
            f"workspace CRN {crn!r} is malformed: expected crn:<region>:<workspace-id>, "
            "e.g. crn:local:ws-1a2b3c"
        )
    return m.group(1), m.group(2)


def check_name(kind: str, name: str) -> str:
    """Validate a keyset, table or column name (letters, digits, ``_.-``).

    :raises ConfigurationError: if it is not a valid name.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigurationError(
            f"{kind} name {name!r} is invalid: use 1-128 letters, digits, '_', '.' or '-'"
        )
    return name


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :func:`load_settings`."""

    workspace_crn: str
    keyring_path: Path | None = None
    #: keyring JSON given inline (``LOCKKIT_KEYRING_JSON``, for containers); secret
    keyring_json: str | None = field(default=None, repr=False)
    keyset: str = DEFAULT_KEYSET
    cts_lifetime: int = DEFAULT_CTS_LIFETIME
    cts_claims: tuple[str, ...] = ()
    issuers: tuple[IssuerConfig, ...] = ()
    config_path: Path | None = None
    #: a remote token service (``POST {endpoint}/api/authorize``); None = embedded
    cts_endpoint: str | None = None
    #: "local" (the keyring) or "openbao"
    key_backend: str = "local"
    openbao: OpenBaoConfig | None = None
    #: the built-in audit log (None: no built-in log; plugins may still add sinks)
    audit_log: Path | None = None
    #: audit failures refuse key releases (False: log and continue)
    audit_fail_closed: bool = True
    audit_fsync: bool = False
    #: base64 audit MAC key when there is no keyring (OpenBao mode); secret
    audit_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parse_crn(self.workspace_crn)
        if self.key_backend not in ("local", "openbao"):
            raise ConfigurationError(f"unknown key backend {self.key_backend!r}: set LOCKKIT_KEY_BACKEND to local or openbao")
        if self.key_backend == "openbao" and self.cts_endpoint:
            raise ConfigurationError(
                "LOCKKIT_CTS_ENDPOINT and the openbao key backend exclude each other: with OpenBao, "
                "OpenBao's JWT login is the token service"
            )
        if self.key_backend == "openbao" and self.openbao is None:
            raise ConfigurationError("the openbao key backend needs LOCKKIT_OPENBAO_ADDR (or [openbao] addr)")
        check_name("keyset", self.keyset)
        if not MIN_CTS_LIFETIME <= self.cts_lifetime <= MAX_CTS_LIFETIME:
            raise ConfigurationError(
                f"CTS token lifetime {self.cts_lifetime}s is out of range: set [cts] lifetime "
                f"(or LOCKKIT_CTS_LIFETIME) between {MIN_CTS_LIFETIME} and {MAX_CTS_LIFETIME}"
            )
        for claim in self.cts_claims:
            if claim in _RESERVED_CLAIMS:
                raise ConfigurationError(
                    f"[cts] claims may not list {claim!r}: it is always carried or reserved"
                )

    @property
    def region(self) -> str:
        return parse_crn(self.workspace_crn)[0]

    @property
    def workspace_id(self) -> str:
        return parse_crn(self.workspace_crn)[1]


@dataclass(frozen=True)
class OpenBaoConfig:
    """Where OpenBao is and how lockkit uses it (``[openbao]`` in lockkit.toml or
    ``LOCKKIT_OPENBAO_*``; operators: see ``docs/deploy.md``)."""

    addr: str
    auth_mount: str = "jwt-cel"
    role: str = "lockkit"
    #: "cel" logs in at ``auth/<mount>/cel/login`` (recommended), "plain" at ``auth/<mount>/login``
    login: str = "cel"
    transit_mount: str = "transit"
    key_prefix: str = "lkx-"
    max_batch: int = 450
    timeout: float = 5.0
    retries: int = 2
    backoff: float = 0.1
    ca_cert: str | None = None
    #: how long an unwrapped DEK may be reused (never past the token's expiry)
    dek_cache_ttl: float = 60.0
    #: allow plain http to a host other than loopback (identity tokens and data keys then
    #: cross the network unencrypted: only inside a network you trust)
    insecure_http: bool = False

    def __post_init__(self) -> None:
        for name in ("addr", "auth_mount", "role", "login", "transit_mount", "key_prefix"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigurationError(f"[openbao] {name} (LOCKKIT_OPENBAO_{name.upper()}) must be a non-empty string")
        if self.ca_cert is not None and not isinstance(self.ca_cert, str):
            raise ConfigurationError("[openbao] ca_cert (LOCKKIT_OPENBAO_CA_CERT) must be a file path")
        if not isinstance(self.insecure_http, bool):
            raise ConfigurationError("[openbao] insecure_http (LOCKKIT_OPENBAO_INSECURE_HTTP) must be true or false")
        for name, low, high in (("timeout", 0.1, 300.0), ("backoff", 0.0, 60.0), ("dek_cache_ttl", 0.0, 3600.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ConfigurationError(
                    f"[openbao] {name} (LOCKKIT_OPENBAO_{name.upper()}) must be a number of seconds from {low:g} to {high:g}"
                )
        for name, low, high in (("max_batch", 1, 10000), ("retries", 0, 10)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigurationError(f"[openbao] {name} (LOCKKIT_OPENBAO_{name.upper()}) must be a whole number from {low} to {high}")
        try:
            parts = urlsplit(self.addr)
            host = parts.hostname
        except ValueError as err:
            raise ConfigurationError("LOCKKIT_OPENBAO_ADDR is not a valid URL") from err
        if parts.scheme not in ("http", "https") or not host:
            raise ConfigurationError("set LOCKKIT_OPENBAO_ADDR to the server's URL, e.g. https://bao.example:8200")
        if not protected_url(self.addr) and not self.insecure_http:  # plain http to another host
            raise ConfigurationError(
                f"LOCKKIT_OPENBAO_ADDR {self.addr!r} is plain http to another host: identity tokens and data "
                "keys would cross the network unencrypted. Use https (ca_cert for a private CA), or set "
                "LOCKKIT_OPENBAO_INSECURE_HTTP=true inside a network you trust"
            )
        if self.login not in ("cel", "plain"):
            raise ConfigurationError("LOCKKIT_OPENBAO_LOGIN must be 'cel' or 'plain'")
        if self.login == "plain" and self.key_prefix == "lkx-":
            raise ConfigurationError("the plain JWT role names keys lk-<sub>: set key_prefix 'lk-' (never share a prefix)")


_OPENBAO_FIELDS = {
    "addr": str, "auth_mount": str, "role": str, "login": str, "transit_mount": str, "key_prefix": str,
    "max_batch": int, "timeout": float, "retries": int, "backoff": float, "ca_cert": str, "dek_cache_ttl": float,
    "insecure_http": bool,
}


def _openbao(table: Any, env: Mapping[str, str]) -> OpenBaoConfig:
    if not isinstance(table, dict) or set(table) - set(_OPENBAO_FIELDS):
        raise ConfigurationError(f"[openbao] accepts only {sorted(_OPENBAO_FIELDS)}")
    values: dict[str, Any] = dict(table)
    for name, kind in _OPENBAO_FIELDS.items():
        raw = _env_get(env, f"LOCKKIT_OPENBAO_{name.upper()}")
        if raw is not None:
            try:
                values[name] = _bool(raw, f"LOCKKIT_OPENBAO_{name.upper()}") if kind is bool else kind(raw)
            except ValueError as err:
                raise ConfigurationError(f"LOCKKIT_OPENBAO_{name.upper()} must be a {kind.__name__}") from err
    if "addr" not in values:
        raise ConfigurationError("the openbao key backend needs LOCKKIT_OPENBAO_ADDR (or [openbao] addr)")
    return OpenBaoConfig(**values)


_RESERVED_CLAIMS = frozenset({"sub", "scopes", "iss", "aud", "exp", "iat", "nbf", "jti", "idp"})


def _env_get(env: Mapping[str, str], key: str) -> str | None:
    v = env.get(key)
    return v if v not in (None, "") else None


def _as_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigurationError(f"{what} must be a string or a list of strings")


def find_config_file(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """The config file to read: ``LOCKKIT_CONFIG`` if set, else ``./lockkit.toml`` if present.

    :raises ConfigurationError: if ``LOCKKIT_CONFIG`` names a file that does not exist.
    """
    env = os.environ if env is None else env
    named = _env_get(env, "LOCKKIT_CONFIG")
    if named:
        p = Path(named)
        if not p.is_file():
            raise ConfigurationError(f"LOCKKIT_CONFIG names {named}, which does not exist")
        return p
    p = (cwd or Path.cwd()) / DEFAULT_CONFIG_FILE
    return p if p.is_file() else None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a ``lockkit.toml``.

    :raises ConfigurationError: if it cannot be read or is not valid TOML.
    """
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise ConfigurationError(f"cannot read {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigurationError(f"{path} is not valid TOML: {err}") from err


_TOP_KEYS = {"workspace_crn", "keyring", "keyset", "cts", "issuers", "key_backend", "openbao", "audit"}
_AUDIT_KEYS = {"log", "fail_closed", "fsync"}


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ConfigurationError(f"{what} must be true or false")


def flag(config: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A true/false setting (``True``/``False``, ``1``/``0``, or the strings ``"true"``,
    ``"false"``, ``"yes"``, ``"no"``, ``"on"``, ``"off"``): a string read from the
    environment such as ``"false"`` is false, never truthy.

    :raises ConfigurationError: any other value (the message names ``key``).
    """
    value = config.get(key)
    return default if value is None else _bool(value, key)
_CTS_KEYS = {"lifetime", "claims", "endpoint"}


def _overrides(values: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in values.items():
        if not (k.startswith("LOCKKIT_") or k == "CS_WORKSPACE_CRN") or v is None:
            continue
        if isinstance(v, list | tuple):
            v = ",".join(str(x) for x in v)
        out[k] = str(v)
    return out


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve settings from ``lockkit.toml`` and ``LOCKKIT_*`` variables.

    :param path: a config file to read instead of looking for one.
    :param env: the environment to read (default ``os.environ``); tests pass a dict.
    :param overrides: ``LOCKKIT_*`` values that win over the environment (a Flask app's
        config); other keys are ignored.
    :raises ConfigurationError: no workspace is configured, or a value is invalid; the
        message says what to set or run.
    """
    env = os.environ if env is None else env
    if overrides:
        env = {**env, **_overrides(overrides)}
        if path is None and env.get("LOCKKIT_CONFIG"):
            path = env["LOCKKIT_CONFIG"]
    cfg_path = Path(path) if path is not None else find_config_file(env, cwd)
    data: dict[str, Any] = read_config_file(cfg_path) if cfg_path else {}
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigurationError(f"{cfg_path}: unknown key(s) {sorted(unknown)}")
    cts = data.get("cts", {})
    if not isinstance(cts, dict) or set(cts) - _CTS_KEYS:
        raise ConfigurationError(f"{cfg_path}: [cts] accepts only {sorted(_CTS_KEYS)}")
    base = cfg_path.parent if cfg_path else (cwd or Path.cwd())

    crn = (
        _env_get(env, "LOCKKIT_WORKSPACE_CRN")
        or _env_get(env, "CS_WORKSPACE_CRN")
        or data.get("workspace_crn")
    )
    if not crn:
        raise ConfigurationError(f"no workspace is configured: {HOW_TO_CONFIGURE}")
    if not isinstance(crn, str):
        raise ConfigurationError("workspace_crn must be a string")

    keyring_json = _env_get(env, "LOCKKIT_KEYRING_JSON")
    keyring_raw = _env_get(env, "LOCKKIT_KEYRING") or data.get("keyring") or DEFAULT_KEYRING_PATH
    if not isinstance(keyring_raw, str):
        raise ConfigurationError("keyring must be a path string")
    keyring_path = Path(keyring_raw)
    if not keyring_path.is_absolute():
        env_given = _env_get(env, "LOCKKIT_KEYRING") is not None
        keyring_path = ((cwd or Path.cwd()) if env_given else base) / keyring_path

    lifetime_raw: Any = _env_get(env, "LOCKKIT_CTS_LIFETIME") or cts.get("lifetime", DEFAULT_CTS_LIFETIME)
    try:
        if isinstance(lifetime_raw, bool) or not isinstance(lifetime_raw, int | str):
            raise TypeError(lifetime_raw)
        lifetime = int(lifetime_raw)  # a whole number: never 900.9 (or "900.9") rounded down
    except (TypeError, ValueError) as err:
        raise ConfigurationError(f"CTS lifetime {lifetime_raw!r} is not a whole number of seconds") from err
    claims_raw: Any = _env_get(env, "LOCKKIT_CTS_CLAIMS") or cts.get("claims", [])
    claims = tuple(_as_list(claims_raw, "[cts] claims"))

    issuers = [IssuerConfig.from_mapping(i) for i in _issuer_tables(data.get("issuers", []))]
    env_issuer = _env_get(env, "LOCKKIT_TRUSTED_ISSUER")
    if env_issuer:
        spec: dict[str, Any] = {"issuer": env_issuer}
        for key, var in (
            ("audience", "LOCKKIT_TRUSTED_AUDIENCE"),
            ("jwks_uri", "LOCKKIT_TRUSTED_JWKS_URI"),
            ("algorithms", "LOCKKIT_TRUSTED_ALGORITHMS"),
            ("authorized_parties", "LOCKKIT_TRUSTED_AUTHORIZED_PARTIES"),
        ):
            val = _env_get(env, var)
            if val:
                spec[key] = _as_list(val, var) if key != "jwks_uri" else val
        if "jwks_uri" not in spec:
            spec["jwks_uri"] = env_issuer.rstrip("/") + "/.well-known/jwks.json"
        issuers = [i for i in issuers if i.issuer != env_issuer] + [IssuerConfig.from_mapping(spec)]

    keyset = _env_get(env, "LOCKKIT_KEYSET") or data.get("keyset") or DEFAULT_KEYSET
    backend = _env_get(env, "LOCKKIT_KEY_BACKEND") or data.get("key_backend") or "local"
    endpoint = _env_get(env, "LOCKKIT_CTS_ENDPOINT") or cts.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise ConfigurationError("[cts] endpoint must be a URL string")
    openbao = _openbao(data.get("openbao", {}), env) if backend == "openbao" else None
    audit = data.get("audit", {})
    if not isinstance(audit, dict) or set(audit) - _AUDIT_KEYS:
        raise ConfigurationError(f"{cfg_path}: [audit] accepts only {sorted(_AUDIT_KEYS)}")
    audit_raw: Any = _env_get(env, "LOCKKIT_AUDIT_LOG") or audit.get("log")
    audit_log: Path | None = None
    if audit_raw:
        if not isinstance(audit_raw, str):
            raise ConfigurationError("[audit] log must be a path")
        audit_log = Path(audit_raw)
        if not audit_log.is_absolute():
            audit_log = ((cwd or Path.cwd()) if _env_get(env, "LOCKKIT_AUDIT_LOG") else base) / audit_log
    fail_closed = _bool(_env_get(env, "LOCKKIT_AUDIT_FAIL_CLOSED") or audit.get("fail_closed", True), "[audit] fail_closed")
    fsync = _bool(_env_get(env, "LOCKKIT_AUDIT_FSYNC") or audit.get("fsync", False), "[audit] fsync")
    return Settings(
        workspace_crn=crn.strip(),
        keyring_path=None if keyring_json else keyring_path,
        keyring_json=keyring_json,
        keyset=keyset,
        cts_lifetime=lifetime,
        cts_claims=claims,
        issuers=tuple(issuers),
        config_path=cfg_path,
        cts_endpoint=endpoint,
        key_backend=backend,
        openbao=openbao,
        audit_log=audit_log,
        audit_fail_closed=fail_closed,
        audit_fsync=fsync,
        audit_key=_env_get(env, "LOCKKIT_AUDIT_KEY"),
    )


def _issuer_tables(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigurationError("[[issuers]] must be a list of tables")
    return value


def render_config(
    workspace_crn: str, keyring: str = DEFAULT_KEYRING_PATH, issuers: list[dict[str, Any]] | None = None
) -> str:
    """The text of a new ``lockkit.toml``."""
    lines = [
        "# lockkit configuration (created by `lockkit init`). Environment variables",
        "# LOCKKIT_* override these values; see the README.",
        f"workspace_crn = {json.dumps(workspace_crn)}",
        f"keyring = {json.dumps(keyring)}   # mode 0600; never commit it",
        "",
        "[cts]",
        f"lifetime = {DEFAULT_CTS_LIFETIME}            # seconds a CTS token lives (max {MAX_CTS_LIFETIME})",
        "claims = []                # extra identity-token claims lock contexts may name",
        "",
        "[audit]",
        'log = ".lockkit/audit.log"  # hash-chained, MACed; check with `lockkit audit verify`',
        "fail_closed = true         # no key is released if the event cannot be recorded",
        "",
        "# Trusted identity providers. One table per issuer, e.g.:",
        "# [[issuers]]",
        '# issuer = "https://idp.example.com"',
        '# audience = ["my-app"]',
        '# jwks_uri = "https://idp.example.com/.well-known/jwks.json"',
    ]
    for iss in issuers or []:
        lines += ["", "[[issuers]]"] + [f"{k} = {json.dumps(v)}" for k, v in iss.items()]
    return "\n".join(lines) + "\n"
