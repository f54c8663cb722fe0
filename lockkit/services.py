"""Build the token service and key service that settings describe (the one place that
chooses backends)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import base64
import binascii

from .audit import AuditLog, AuditSink, Auditor, audit_key
from .config import Settings
from .errors import ConfigurationError
from .identity import TokenService
from .keys import KeyService
from .oidc import OIDCVerifier, TokenVerifier


def build_auditor(settings: Settings, keyring: Any | None, sinks: Sequence[AuditSink] = ()) -> Auditor | None:
    """The auditor settings describe: the built-in hash-chained log (``[audit] log``) plus
    plugin sinks; ``None`` when there is neither.

    :raises ConfigurationError: a log is configured but there is no audit key.
    """
    all_sinks: list[AuditSink] = list(sinks)
    if settings.audit_log is not None:
        if keyring is not None:
            key = audit_key(keyring)
        elif settings.audit_key:
            try:
                key = base64.b64decode(settings.audit_key, validate=True)
            except (ValueError, binascii.Error) as err:
                raise ConfigurationError("LOCKKIT_AUDIT_KEY must be base64 (32 random bytes)") from err
            if len(key) < 32:
                raise ConfigurationError("LOCKKIT_AUDIT_KEY must hold at least 32 bytes")
        else:
            raise ConfigurationError("the audit log needs a key: a keyring, or LOCKKIT_AUDIT_KEY (OpenBao mode)")
        all_sinks.insert(0, AuditLog(settings.audit_log, key, fsync=settings.audit_fsync))
    return Auditor(all_sinks, fail_closed=settings.audit_fail_closed) if all_sinks else None


def build_services(
    settings: Settings, extra_verifiers: Sequence[TokenVerifier] = (), audit_sinks: Sequence[AuditSink] = ()
) -> tuple[TokenService, KeyService]:
    """``(token service, key service)`` for ``settings``. ``extra_verifiers`` (e.g. identity
    provider plugins) are tried before the issuers configured in settings; ``audit_sinks``
    (from plugins) receive every key-release event beside the built-in log.

    :raises ConfigurationError: missing or bad keyring, issuer, audit or backend configuration.
    """
    verifiers: list[Any] = list(extra_verifiers) + [OIDCVerifier(i) for i in settings.issuers]
    if settings.key_backend == "openbao":
        from .keys.keyring import load_keyring
        from .keys.openbao import OpenBaoKeyService, OpenBaoTokenService

        assert settings.openbao is not None
        ring = None
        if settings.audit_log is not None and not settings.audit_key and (
            settings.keyring_json or (settings.keyring_path is not None and settings.keyring_path.exists())
        ):
            ring = load_keyring(settings.keyring_path, settings.keyring_json)  # only for the audit key
        return (
            OpenBaoTokenService(settings.openbao, verifiers),
            OpenBaoKeyService(settings.openbao, settings.workspace_crn, auditor=build_auditor(settings, ring, audit_sinks)),
        )
    from .cts.embedded import EmbeddedTokenService
    from .keys.keyring import load_keyring
    from .keys.local import LocalKeyService

    keyring = load_keyring(settings.keyring_path, settings.keyring_json, settings.workspace_crn)
    auditor = build_auditor(settings, keyring, audit_sinks)
    if settings.cts_endpoint:
        # a token service elsewhere: it verifies identity JWTs itself; this process's key
        # service trusts its tokens through its published JWKS
        from .cts.remote import RemoteCtsVerifier, RemoteTokenService

        return (
            RemoteTokenService(settings.cts_endpoint, settings.workspace_crn),
            LocalKeyService(keyring, RemoteCtsVerifier.for_endpoint(settings.cts_endpoint, settings.workspace_crn),
                            auditor=auditor),
        )
    token_service = EmbeddedTokenService(
        workspace_crn=settings.workspace_crn,
        keyring=keyring,
        verifiers=verifiers,
        lifetime=settings.cts_lifetime,
        claims=settings.cts_claims,
    )
    return token_service, LocalKeyService(keyring, token_service.verifier(), auditor=auditor)
