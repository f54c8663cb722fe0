"""Signals (blinker), named for past-tense events. Receivers get the app as sender."""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: a CTS token was obtained and stored; kwargs: ``subject``, ``provider``
cts_token_exchanged = _signals.signal("lockkit.cts-token-exchanged")
#: a stored CTS token was removed (sign-out, or no identity any more); kwargs: ``reason``
cts_token_removed = _signals.signal("lockkit.cts-token-removed")
#: an identity token was refused; kwargs: ``provider``, ``reason`` (never the token)
identity_rejected = _signals.signal("lockkit.identity-rejected")
