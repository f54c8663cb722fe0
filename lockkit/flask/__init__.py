"""The Flask kit: ``LockKit(app)``, ``get_cts_token()``, ``current_lock_context``,
``@lock_context_required``."""

from .extension import DEFAULTS, LockKit, LockKitState, end_session, get_state
from .helpers import (
    CtsTokenResult,
    current_claims,
    current_lock_context,
    get_cts_token,
    identity_unavailable,
    lock_context_required,
)
from .session import Sealer

__all__ = [
    "DEFAULTS",
    "CtsTokenResult",
    "LockKit",
    "LockKitState",
    "Sealer",
    "current_claims",
    "current_lock_context",
    "end_session",
    "get_cts_token",
    "get_state",
    "identity_unavailable",
    "lock_context_required",
]
