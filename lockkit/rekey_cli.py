"""``lockkit keys usage`` and ``lockkit keys retire``: the end of a root key's life, for any storage.

lockkit cannot see an app's database, so it cannot know on its own whether a root key version
still protects a payload. The lifecycle is:

1. ``lockkit keys rotate`` — a new primary; restart the app servers so new values use it.
2. Rekey every stored payload with the app's own tooling (:mod:`lockkit.rekey`; the example
   app has ``flask notes rekey``).
3. Prove no payload uses the old version: your app's own count (the example:
   ``flask notes key-usage``), or pipe every encrypted column into ``lockkit keys usage``, e.g.
   ``psql -At -c 'SELECT title FROM notes' | lockkit keys usage`` (payloads one per line, or
   any JSON holding them, such as ``sqlite3 -json`` output).
4. ``lockkit keys retire VERSION --confirm-unused`` — refused without the flag (the flag is the
   operator's statement that step 3 found none), refused for the primary or newest version, and
   for a keyring given inline (``LOCKKIT_KEYRING_JSON``). A payload still under a retired
   version can never be decrypted again.

Mounted on the ``keys`` group of :mod:`lockkit.cli` by :func:`add_key_lifecycle_commands`.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any, TextIO

import click

from .errors import ConfigurationError, LockkitError
from .keys.keyring import Keyring
from .rekey import kid_label


def add_key_lifecycle_commands(group: click.Group) -> None:
    """Add ``usage`` and ``retire`` to a ``keys`` command group."""
    group.add_command(keys_usage)
    group.add_command(keys_retire)


def _payloads(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every lockkit payload in a JSON value (payloads stored as JSON text included)."""
    if depth > 32:
        return
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and '"ct"' in text:
            try:
                value = json.loads(text)
            except ValueError:
                return
        else:
            return
    if isinstance(value, dict):
        if value.get("k") == "ct" and isinstance(value.get("kid"), str) and "c" in value:
            yield value
            return
        for v in value.values():
            yield from _payloads(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _payloads(v, depth + 1)


#: a payload's ``"k": "ct"`` in any quoting a dump may use: JSON, JSON text inside JSON
#: (``\\"``), CSV (``""``), a Python repr (``'``)
_MARKER = re.compile(r'(?:\\?["\']){1,2}k(?:\\?["\']){1,2}\s*:\s*(?:\\?["\']){1,2}ct(?:\\?["\']){1,2}')


def _objects(line: str) -> Iterator[Any]:
    """The JSON objects inside a line of other text (``psql -At`` with several columns gives
    ``{...}|{...}``)."""
    decoder = json.JSONDecoder()
    at = line.find("{")
    while at != -1:
        try:
            obj, end = decoder.raw_decode(line, at)
        except ValueError:
            at = line.find("{", at + 1)
            continue
        yield obj
        at = line.find("{", end)


def count_key_usage(stream: TextIO) -> Counter[str]:
    """Payloads per key id (``vault:v<n>`` for OpenBao data keys) in ``stream``: one JSON
    document, or lines each holding JSON values (one per line, or several among other text).

    :raises click.ClickException: the input holds payload text that could not be read (CSV
        quoting, a cut line...): a partial count could call a key version unused when it is
        not, and retiring it would lose those values.
    """
    text = stream.read()
    counts: Counter[str] = Counter()
    try:
        docs: list[Any] = [json.loads(text)]
    except ValueError:
        docs = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except ValueError:
                docs.extend(_objects(line))
    for doc in docs:
        for p in _payloads(doc):
            counts[kid_label(p["kid"])] += 1
    seen = len(_MARKER.findall(text))
    if seen > sum(counts.values()):
        raise click.ClickException(
            f"{seen - sum(counts.values())} of {seen} payloads in the input could not be read, so "
            "nothing is counted: give one payload per line (e.g. `psql -At -c 'SELECT col FROM tbl'`) "
            "or JSON (e.g. `sqlite3 -json`), not CSV"
        )
    return counts


@click.command("usage", help="Count payloads per key id in JSON read from FILES (default: standard input): "
               "one payload per line (e.g. `psql -At -c 'SELECT col FROM tbl'`), or any JSON holding payloads.")
@click.argument("files", nargs=-1, type=click.File("r"))
def keys_usage(files: tuple[TextIO, ...]) -> None:
    streams: list[TextIO] = list(files) if files else [sys.stdin]
    counts: Counter[str] = Counter()
    for fh in streams:
        counts.update(count_key_usage(fh))
    click.echo(f"{'key':<12}  {'payloads':>8}")
    for kid, n in sorted(counts.items()):
        click.echo(f"{kid:<12}  {n:>8}")
    if not counts:
        click.echo("no payloads found")


@click.command("retire", help="Remove an old root key version from the keyring. lockkit cannot see your "
               "database: first prove no payload uses VERSION (your app's count, or `lockkit keys usage`), "
               "then pass --confirm-unused. A payload still under a retired version never decrypts again.")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--confirm-unused", is_flag=True,
              help="state that no stored payload uses VERSION (checked with your app's tooling)")
def keys_retire(version: int, confirm_unused: bool) -> None:
    from .cli import _settings  # here: cli imports this module

    try:
        settings = _settings()
        if settings.keyring_json or settings.keyring_path is None:
            raise ConfigurationError(
                "the keyring comes from LOCKKIT_KEYRING_JSON: retire the version in a keyring file, then update the variable"
            )
        path = settings.keyring_path
        with Keyring.editing(path) as ring:
            if not ring.has_version(version):
                raise click.ClickException(f"key version {version} is not in keyring {path}")
            if not confirm_unused:
                raise click.ClickException(
                    f"refusing to retire key version {version}: lockkit cannot see your database. Prove that no "
                    f"payload uses it (rekey first; count with your app's tooling or `lockkit keys usage`), then "
                    f"run `lockkit keys retire {version} --confirm-unused`"
                )
            ring.retire(version)
    except LockkitError as err:
        raise click.ClickException(err.message) from err
    click.echo(f"retired key version {version} from {path}; restart running apps")


__all__ = ["add_key_lifecycle_commands", "count_key_usage", "keys_retire", "keys_usage"]
