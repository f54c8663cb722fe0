"""Build the token service and key service that settings describe (the one place that
chooses backends)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import Settings
from .identity import TokenService
from .keys import KeyService
from .oidc import OIDCVerifier, TokenVerifier


def build_services(
    settings: Settings, extra_verifiers: Sequence[TokenVerifier] = ()
) -> tuple[TokenService, KeyService]:
    """``(token service, key service)`` for ``settings``. ``extra_verifiers`` (e.g. identity
    provider plugins) are tried before the issuers configured in settings.

    :raises ConfigurationError: missing or bad keyring, issuer or backend configuration.
    """
    verifiers: list[Any] = list(extra_verifiers) + [OIDCVerifier(i) for i in settings.issuers]
    if settings.key_backend == "openbao":
        from .keys.openbao import OpenBaoKeyService, OpenBaoTokenService

        assert settings.openbao is not None
        return (
            OpenBaoTokenService(settings.openbao, verifiers),
            OpenBaoKeyService(settings.openbao, settings.workspace_crn),
        )
    from .cts.embedded import EmbeddedTokenService
    from .keys.keyring import load_keyring
    from .keys.local import LocalKeyService

    keyring = load_keyring(settings.keyring_path, settings.keyring_json)
    if settings.cts_endpoint:
        # a token service elsewhere: it verifies identity JWTs itself; this process's key
        # service trusts its tokens through its published JWKS
        from .cts.remote import RemoteCtsVerifier, RemoteTokenService

        return (
            RemoteTokenService(settings.cts_endpoint, settings.workspace_crn),
            LocalKeyService(keyring, RemoteCtsVerifier.for_endpoint(settings.cts_endpoint, settings.workspace_crn)),
        )
    token_service = EmbeddedTokenService(
        workspace_crn=settings.workspace_crn,
        keyring=keyring,
        verifiers=verifiers,
        lifetime=settings.cts_lifetime,
        claims=settings.cts_claims,
    )
    return token_service, LocalKeyService(keyring, token_service.verifier())
