"""Token service (CTS): embedded by default; see :mod:`lockkit.cts.embedded`."""

from __future__ import annotations

import threading
from typing import Any

from ..config import Settings, load_settings
from ..errors import ConfigurationError
from ..identity import TokenService
from ..keys.keyring import load_keyring
from ..oidc import OIDCVerifier
from .embedded import CtsUnavailableError, CtsVerifier, EmbeddedTokenService

__all__ = [
    "CtsUnavailableError",
    "CtsVerifier",
    "EmbeddedTokenService",
    "build_token_service",
    "default_services",
    "default_token_service",
]

_defaults: dict[Settings, tuple[TokenService, Any]] = {}
_defaults_lock = threading.Lock()


def build_token_service(settings: Settings) -> EmbeddedTokenService:
    """The embedded token service described by ``settings`` (what ``lockkit cts serve``
    runs).

    :raises ConfigurationError: missing or bad keyring or issuer configuration, or settings
        that do not describe an embedded token service (OpenBao mode, a remote CTS).
    """
    if settings.key_backend == "openbao":
        raise ConfigurationError("in OpenBao mode OpenBao's JWT login is the token service; there is no CTS to serve")
    if settings.cts_endpoint:
        raise ConfigurationError("LOCKKIT_CTS_ENDPOINT points at a remote token service; unset it to serve one here")
    keyring = load_keyring(settings.keyring_path, settings.keyring_json, settings.workspace_crn)
    return EmbeddedTokenService(
        workspace_crn=settings.workspace_crn,
        keyring=keyring,
        verifiers=[OIDCVerifier(i) for i in settings.issuers],
        lifetime=settings.cts_lifetime,
        claims=settings.cts_claims,
    )


def default_services(settings: Settings | None = None) -> tuple[TokenService, Any]:
    """The process-wide ``(token service, key service)`` for ``settings`` (default:
    :func:`load_settings`), built once.

    :raises ConfigurationError: no workspace configured, or a bad keyring or backend.
    """
    from ..services import build_services

    settings = settings or load_settings()
    with _defaults_lock:
        pair = _defaults.get(settings)
        if pair is None:
            pair = _defaults[settings] = build_services(settings)
        return pair


def default_token_service(settings: Settings | None = None) -> TokenService:
    """The process-wide token service (see :func:`default_services`)."""
    return default_services(settings)[0]
