"""Operator commands of the example app (the ``notes`` blueprint's CLI group)::

    flask --app examples.flask_clerk notes key-usage          # payloads per key, per column
    flask --app examples.flask_clerk notes rekey [--batch-size N]
    flask --app examples.flask_clerk notes retire-key VERSION

After ``lockkit keys rotate`` (and restarting the app servers, so new values use the new key):
``notes rekey`` moves every stored payload onto the newest key, one database transaction per
batch, and can be killed and run again at any time; ``notes retire-key 1`` then removes the old
root key from the keyring, refusing while any payload still uses it.

Embedded mode (local keyring): each payload is locked to its owner, so the command mints a CTS
token for each owner with the app's own token service — which this process can do anyway, as
it holds the keyring (see the threat model) — and re-encrypts that owner's titles, bodies and
tags. Each key release is audited like any other: subject = the owner, ``actor=rekey``.

OpenBao mode: no user token and no plaintext: the app's service token
(``LOCKKIT_OPENBAO_APP_TOKEN``, policy ``lockkit-app``) re-wraps each payload's data key under
the newest version of its owner's transit key. Rotate user keys with that token
(``transit/keys/<key>/rotate``) first; retiring old versions is an operator's job in OpenBao
(``min_decryption_version``), not this app's.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import click
from flask import current_app

from lockkit import LockContext
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.errors import LockkitError
from lockkit.flask import get_state
from lockkit.identity import CtsToken
from lockkit.keys.keyring import Keyring, load_keyring
from lockkit.rekey import (
    Payload,
    RekeyJob,
    Row,
    kid_label,
    local_current_kid,
    needs_rekey,
    openbao_current_kid,
    payload_kid,
    rekey_local,
    rekey_openbao,
)

from .db import Database, dumps, loads
from .notes import notes_table
from .views import bp

#: where the app stores payloads: (database table.column, SQL that reads every one)
LOCATIONS = ("notes.title", "notes.body", "note_tags.tag")
TOKEN_MARGIN = 60  # mint a fresh CTS token when the current one expires within this (s)


# -- storage ----------------------------------------------------------------------------------
def owners(db: Database) -> list[str]:
    with db.transaction() as cur:
        rows = cur.execute("SELECT owner FROM notes UNION SELECT owner FROM note_tags ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def key_usage(db: Database) -> dict[str, Counter[str]]:
    """``{"notes.title": Counter({"1": 3, "2": 5}), ...}``: payloads per key id (OpenBao:
    ``vault:v<n>``, the version of each owner's own key) per database column."""
    usage: dict[str, Counter[str]] = {loc: Counter() for loc in LOCATIONS}
    with db.transaction() as cur:
        for title, body in cur.execute("SELECT title, body FROM notes").fetchall():
            usage["notes.title"][kid_label(payload_kid(title))] += 1
            usage["notes.body"][kid_label(payload_kid(body))] += 1
        for (tag,) in cur.execute("SELECT tag FROM note_tags").fetchall():
            usage["note_tags.tag"][kid_label(payload_kid(tag))] += 1
    return usage


class NotesRekeyStorage:
    """One owner's rows as a :class:`lockkit.rekey.RekeyStorage`: each note row (title and
    body together) followed by its tag rows, paged by note id (each row once per run). Writes
    compare-and-swap on the stored JSON, so a note the user edited meanwhile is left alone (it
    was re-encrypted under the current key by that edit)."""

    PAGE = 200

    def __init__(self, db: Database, owner: str, current_kid: str) -> None:
        self.db, self.owner, self.current_kid = db, owner, current_kid
        self._cursor = 0  # last note id read
        self._exhausted = False
        self._buffer: deque[Row] = deque()
        self._old: dict[Any, tuple[str, ...]] = {}  # row id -> the JSON texts read

    def _stale(self, payloads: Sequence[Payload]) -> bool:
        return any(needs_rekey(p, self.current_kid) for p in payloads)

    def _fill(self) -> None:
        with self.db.transaction() as cur:
            notes = cur.execute("SELECT id, title, body FROM notes WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
                                (self.owner, self._cursor, self.PAGE)).fetchall()
            if not notes:
                self._exhausted = True
                return
            ids = [n[0] for n in notes]
            marks = ",".join("?" * len(ids))
            tags = cur.execute(f"SELECT note_id, tag FROM note_tags WHERE owner = ? AND note_id IN ({marks}) "
                               "ORDER BY note_id, tag", (self.owner, *ids)).fetchall()
        self._cursor = ids[-1]
        by_note: dict[int, list[str]] = {}
        for note_id, tag in tags:
            by_note.setdefault(note_id, []).append(tag)
        for note_id, title, body in notes:
            fields = {"title": loads(title), "body": loads(body)}
            if self._stale(list(fields.values())):
                row_id = f"notes:{note_id}"
                self._old[row_id] = (title, body)
                self._buffer.append((row_id, fields))
            for tag in by_note.get(note_id, []):
                payload = loads(tag)
                if self._stale([payload]):
                    row_id = f"note_tags:{note_id}:{hashlib.sha256(tag.encode()).hexdigest()[:16]}"
                    self._old[row_id] = (tag,)
                    self._buffer.append((row_id, {"tag": payload}))

    def pending(self, batch_size: int) -> list[Row]:
        while len(self._buffer) < batch_size and not self._exhausted:
            self._fill()
        return [self._buffer.popleft() for _ in range(min(batch_size, len(self._buffer)))]

    def write(self, rows: list[Row]) -> int:
        written = 0
        with self.db.transaction() as cur:  # the whole batch or nothing
            # the notes' rows first, in id order, as every writer does: never a lock cycle with
            # a user editing or deleting one of them meanwhile
            cur.lock_notes(self.owner, [int(str(row_id).split(":")[1]) for row_id, _ in rows])
            for row_id, fields in rows:
                old = self._old.pop(row_id)
                kind, note_id = str(row_id).split(":")[:2]
                if kind == "notes":
                    cur.execute("UPDATE notes SET title = ?, body = ? WHERE id = ? AND owner = ? AND title = ? AND body = ?",
                                (dumps(fields["title"]), dumps(fields["body"]), int(note_id), self.owner, *old))
                else:
                    cur.execute("UPDATE note_tags SET tag = ? WHERE note_id = ? AND owner = ? AND tag = ?",
                                (dumps(fields["tag"]), int(note_id), self.owner, old[0]))
                written += int(cur._cur.rowcount == 1)
        return written

    def count(self) -> int:
        """Rows of this owner still on an old key (for the progress bar)."""
        n = 0
        with self.db.transaction() as cur:
            for title, body in cur.execute("SELECT title, body FROM notes WHERE owner = ?", (self.owner,)).fetchall():
                n += self._stale([loads(title), loads(body)])
            for (tag,) in cur.execute("SELECT tag FROM note_tags WHERE owner = ?", (self.owner,)).fetchall():
                n += self._stale([loads(tag)])
        return n


# -- the owner's lock context (embedded mode) ----------------------------------------------------
class OwnerLockContext:
    """A lock context for ``owner``, minted by the app's embedded token service for the
    provider's identity namespace; minted again shortly before it expires."""

    def __init__(self, service: EmbeddedTokenService, owner: str, namespace: str, claims: tuple[str, ...]) -> None:
        self.service, self.owner, self.namespace, self.claims = service, owner, namespace, claims
        self._token: CtsToken | None = None

    def get(self) -> LockContext:
        if self._token is None or self._token.is_expired(margin=TOKEN_MARGIN):
            self._token = self.service.mint({"sub": self.owner}, namespace=self.namespace)
        return LockContext(identity_claim=self.claims, cts_token=self._token)


def _namespace(provider_name: str | None) -> str:
    providers = get_state().providers
    if provider_name:
        found = [p for p in providers if p.name == provider_name]
        if not found:
            raise click.ClickException(f"no identity provider {provider_name!r} is configured "
                                       f"({', '.join(p.name for p in providers)})")
        return found[0].namespace
    if len(providers) != 1:
        raise click.ClickException("several identity providers are configured: name the owners' one with --provider")
    return providers[0].namespace


# -- commands ---------------------------------------------------------------------------------
@bp.cli.command("key-usage", help="How many payloads use each key, per table and column.")
def key_usage_command() -> None:
    db: Database = current_app.extensions["notes_db"]
    try:
        usage = key_usage(db)
    except LockkitError as err:
        raise click.ClickException(err.message) from err
    except db.errors as err:  # the database down: a clean error, not a traceback
        raise click.ClickException(f"database error ({type(err).__name__})") from err
    click.echo(f"{'table.column':<16}  {'key':<10}  {'payloads':>8}")
    for loc in LOCATIONS:
        for kid, n in sorted(usage[loc].items()):
            click.echo(f"{loc:<16}  {kid:<10}  {n:>8}")
    settings = get_state().settings
    if settings.key_backend == "local" and not settings.cts_endpoint:
        ring = load_keyring(settings.keyring_path, settings.keyring_json)
        used = {kid for counts in usage.values() for kid in counts}
        versions = [v.version for v in ring.versions()]
        idle = [str(v) for v in versions if str(v) not in used and v != ring.primary]
        click.echo(f"keyring versions: {', '.join(map(str, versions))} (primary {ring.primary})"
                   + (f"; unused, may be retired: {', '.join(idle)}" if idle else ""))


@bp.cli.command("rekey", help="Move every stored payload onto the newest key (resumable; one transaction per batch).")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="rows per batch (one database transaction each)")
@click.option("--provider", "provider_name", help="the identity provider the owners signed in with "
              "(default: the only one configured)")
def rekey_command(batch_size: int, provider_name: str | None) -> None:
    state = get_state()
    db: Database = current_app.extensions["notes_db"]
    settings = state.settings
    try:
        jobs: list[tuple[str, Callable[..., list[Payload]], NotesRekeyStorage]] = []
        if settings.key_backend == "openbao":
            jobs = _openbao_jobs(db)
        elif isinstance(state.token_service, EmbeddedTokenService):
            jobs = _embedded_jobs(db, provider_name)
        else:
            raise click.ClickException(
                "this app uses a remote token service: it cannot mint tokens for other users, so it cannot "
                "rekey their values (run the rekey where the keyring and the token service are)")
        totals = [storage.count() for _, _, storage in jobs]
        total = sum(totals)
        moved = rows_changed = 0
        with click.progressbar(length=total, label="Rekeying rows", show_pos=True) as bar:
            for (current, rekey, storage), count in zip(jobs, totals):
                if not count:
                    continue
                seen = [0]

                def step(done: int, _total: int | None, seen: list[int] = seen) -> None:
                    bar.update(done - seen[0])
                    seen[0] = done

                report = RekeyJob(storage, rekey, current, batch_size=batch_size, progress=step, total=count).run()
                moved += report.rows
                rows_changed += report.changed_meanwhile
    except LockkitError as err:
        raise click.ClickException(f"{err.message} (rows already moved stay moved; run `notes rekey` again)") from err
    except db.errors as err:  # a lost connection, a lock timeout: the failed batch was rolled back
        raise click.ClickException(
            f"database error ({type(err).__name__}); the batch in progress was rolled back, rows already moved "
            "stay moved: run `notes rekey` again"
        ) from err
    click.echo(f"rekeyed {moved} rows of {len(jobs)} owners")
    if rows_changed:
        click.echo(f"{rows_changed} rows changed meanwhile (rewritten by the app); run `notes rekey` again to check them")


def _embedded_jobs(db: Database, provider_name: str | None) -> list[tuple[str, Callable[..., list[Payload]], NotesRekeyStorage]]:
    state = get_state()
    if state.identity_claim != ("sub",):
        raise click.ClickException(f"values are locked to {list(state.identity_claim)}: rekey can rebuild only "
                                   "the owner's sub, which is all this app stores")
    assert isinstance(state.token_service, EmbeddedTokenService)
    ring = load_keyring(state.settings.keyring_path, state.settings.keyring_json)
    current = local_current_kid(ring)
    namespace = _namespace(provider_name)
    client = state.encryption([notes_table])
    jobs = []
    for owner in owners(db):
        holder = OwnerLockContext(state.token_service, owner, namespace, state.identity_claim)

        def rekey(payloads: list[Payload], *, records: Sequence[object], holder: OwnerLockContext = holder) -> list[Payload]:
            return [p for p in rekey_local(client, payloads, holder.get(), records=records) if p is not None]

        jobs.append((current, rekey, NotesRekeyStorage(db, owner, current)))
    return jobs


def _openbao_jobs(db: Database) -> list[tuple[str, Callable[..., list[Payload]], NotesRekeyStorage]]:
    from lockkit.keys.openbao import OpenBaoHTTP, key_name

    config = get_state().settings.openbao
    assert config is not None
    token = current_app.config.get("LOCKKIT_OPENBAO_APP_TOKEN") or os.environ.get("LOCKKIT_OPENBAO_APP_TOKEN")
    if not token:
        raise click.ClickException("set LOCKKIT_OPENBAO_APP_TOKEN to the app's OpenBao token (policy lockkit-app)")
    http = OpenBaoHTTP(config)
    jobs = []
    for owner in owners(db):
        key = key_name(config, owner)
        current = openbao_current_kid(http, token, config, key)

        def rekey(payloads: list[Payload], *, records: Sequence[object], key: str = key) -> list[Payload]:
            return [p for p in rekey_openbao(http, token, config, payloads, key=key, records=records) if p is not None]

        jobs.append((current, rekey, NotesRekeyStorage(db, owner, current)))
    return jobs


@bp.cli.command("retire-key", help="Remove an old root key version from the keyring, once no payload uses it.")
@click.argument("version", type=click.IntRange(min=1))
def retire_key_command(version: int) -> None:
    settings = get_state().settings
    if settings.key_backend != "local" or settings.cts_endpoint:
        raise click.ClickException("retire-key retires a version of the local keyring (embedded mode); in OpenBao mode "
                                   "an operator sets min_decryption_version on the user keys")
    if settings.keyring_json or settings.keyring_path is None:
        raise click.ClickException("the keyring comes from LOCKKIT_KEYRING_JSON: retire the version in a keyring file, "
                                   "then update the variable")
    db: Database = current_app.extensions["notes_db"]
    try:
        usage = key_usage(db)
        in_use = [(loc, usage[loc][str(version)]) for loc in LOCATIONS if usage[loc][str(version)]]
        if in_use:
            total = sum(n for _, n in in_use)
            where = ", ".join(f"{loc} ({n})" for loc, n in in_use)
            raise click.ClickException(f"{total} payloads in {where} still use key version {version}; "
                                       "run `notes rekey` first")
        with Keyring.editing(settings.keyring_path) as ring:
            ring.retire(version)
    except LockkitError as err:
        raise click.ClickException(err.message) from err
    except db.errors as err:  # the database down: nothing retired
        raise click.ClickException(f"database error ({type(err).__name__}); nothing was retired") from err
    click.echo(f"retired key version {version} from {settings.keyring_path}; restart running apps "
               "(CTS tokens it signed stop verifying: users may have to sign in again)")
