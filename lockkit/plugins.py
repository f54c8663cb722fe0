"""The plugin manager: built-in plugins, entry points, and the registries hooks fill."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .errors import ClientInitError

log = logging.getLogger("lockkit.plugins")

#: modules registered on every manager (the built-in providers are separate distributions
#: that arrive through the entry point, exactly as third-party plugins do)
DEFAULT_PLUGINS: tuple[str, ...] = ()


def make_plugin_manager(
    *, load_entrypoints: bool = True, plugins: Iterable[object] = (), trace: bool = False
) -> pluggy.PluginManager:
    """A new plugin manager with lockkit's hookspecs, default plugins, entry points and
    ``plugins`` registered; then ``check_pending()``, so a misspelt hook fails at start-up.

    :param trace: log every hook call (``LOCKKIT_TRACE_PLUGINS``).
    :raises ClientInitError: a plugin implements a hook that does not exist, or fails to load.
    """
    pm = pluggy.PluginManager("lockkit")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints("lockkit")
        except Exception as err:  # a broken third-party plugin must not pass silently
            raise ClientInitError(f"a lockkit plugin failed to load: {err}") from err
    for plugin in plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise ClientInitError(f"plugin {err.plugin!r} implements an unknown hook: {err}") from err
    if trace:
        pm.trace.root.setwriter(lambda msg: log.debug("%s", msg.rstrip()))
        pm.enable_tracing()
    return pm


def identity_provider_classes(pm: pluggy.PluginManager) -> dict[str, type[Any]]:
    """``name -> class`` for every provider the plugins register.

    :raises ClientInitError: two providers share a name, or a class has no ``name``.
    """
    found: dict[str, type[Any]] = {}

    def register(cls: type[Any]) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ClientInitError(f"identity provider {cls!r} has no name")
        if name in found and found[name] is not cls:
            raise ClientInitError(f"two identity providers are named {name!r}: {found[name]!r} and {cls!r}")
        found[name] = cls

    _call(pm.hook.register_identity_providers, register, "register_identity_providers")
    return found


def audit_sinks(pm: pluggy.PluginManager) -> list[Any]:
    """Every audit sink the plugins register.

    :raises ClientInitError: a sink has no ``write`` method.
    """
    found: list[Any] = []

    def register(sink: Any) -> None:
        if not callable(getattr(sink, "write", None)):
            raise ClientInitError(f"audit sink {sink!r} has no write(events) method")
        found.append(sink)

    _call(pm.hook.register_audit_sinks, register, "register_audit_sinks")
    return found


def _call(hook: Any, register: Any, name: str) -> None:
    """Run a registration hook; a plugin that fails makes a start-up error naming the hook."""
    try:
        hook(register=register)
    except ClientInitError:
        raise
    except Exception as err:  # a broken plugin: refuse to start, clearly
        raise ClientInitError(f"a plugin failed in {name} ({type(err).__name__}: {str(err)[:200]})") from err
