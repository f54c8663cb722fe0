"""pluggy hook specifications for lockkit plugins (project and entry-point group ``lockkit``).

A plugin is a module with ``@hookimpl`` functions, published through the entry point group
``lockkit`` in its ``pyproject.toml``::

    [project.entry-points.lockkit]
    myidp = "lockkit_myidp"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("lockkit")
hookimpl = pluggy.HookimplMarker("lockkit")


@hookspec
def register_identity_providers(register: Callable[[type[Any]], None]) -> None:
    """Offer identity-provider classes.

    :param register: call ``register(cls)`` once per provider class. ``cls.name`` is the name
        apps select it by (``LOCKKIT_PROVIDERS = ["clerk"]``); lockkit builds one instance per
        app with ``cls.from_config(config)``.
    Return nothing.
    """


@hookspec
def register_audit_sinks(register: Callable[[Any], None]) -> None:
    """Offer audit sinks: objects with ``write(events)`` that receive every key-release and
    denial event (:class:`lockkit.audit.AuditEvent`, never plaintext, tokens or keys).

    :param register: call ``register(sink)`` once per sink. ``write`` must raise if it could
        not record the events: with fail-closed auditing (the default) no key is released then.
    Return nothing.
    """
