"""``lockkit`` command line (also mounted as ``flask lockkit``)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import sys
from pathlib import Path

import click

from .config import DEFAULT_CONFIG_FILE, DEFAULT_KEYRING_PATH, Settings, load_settings, parse_crn, render_config
from .audit import AuditLog
from .errors import ConfigurationError, LockkitError
from .keys.keyring import Keyring


def _fail(err: LockkitError) -> None:
    raise click.ClickException(err.message)


@click.group(help="lockkit: identity-bound encryption. Run `lockkit init` first.")
def cli() -> None:
    pass


@cli.command(help="Create lockkit.toml and a keyring (mode 0600). Never overwrites a keyring.")
@click.option("--workspace-crn", help="crn:<region>:<workspace-id> (default: a new local workspace)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help=f"config file to write (default ./{DEFAULT_CONFIG_FILE})")
@click.option("--if-missing", is_flag=True, help="succeed quietly if already initialised")
def init(workspace_crn: str | None, config_path: Path | None, if_missing: bool) -> None:
    try:
        cfg = config_path or Path(os.environ.get("LOCKKIT_CONFIG") or DEFAULT_CONFIG_FILE)
        if not cfg.exists():
            crn = workspace_crn or os.environ.get("LOCKKIT_WORKSPACE_CRN") or os.environ.get("CS_WORKSPACE_CRN")
            crn = crn or f"crn:local:ws-{secrets.token_hex(6)}"
            parse_crn(crn)
            _write_new(cfg, render_config(crn, DEFAULT_KEYRING_PATH))
            click.echo(f"wrote {cfg} (workspace {crn})")
        elif workspace_crn:
            existing = load_settings(cfg).workspace_crn
            if existing != workspace_crn:
                raise ConfigurationError(f"{cfg} already configures workspace {existing}")
        settings = load_settings(cfg)
        written = load_settings(cfg, env={}).workspace_crn
        if settings.workspace_crn != written:  # the keyring must belong to the workspace apps will use
            raise ConfigurationError(
                f"{cfg} configures workspace {written}, but LOCKKIT_WORKSPACE_CRN (or CS_WORKSPACE_CRN) "
                f"overrides it with {settings.workspace_crn}: unset it, or initialise that workspace"
            )
        if settings.keyring_json:
            raise ConfigurationError("LOCKKIT_KEYRING_JSON is set: the keyring comes from the environment")
        assert settings.keyring_path is not None
        if settings.keyring_path.exists():
            if if_missing:
                click.echo(f"keyring {settings.keyring_path} exists; nothing to do")
                return
            raise ConfigurationError(
                f"keyring {settings.keyring_path} already exists; refusing to overwrite it "
                "(rotate with `lockkit keys rotate`)"
            )
        Keyring.generate(settings.workspace_crn).save(settings.keyring_path)
        click.echo(f"wrote keyring {settings.keyring_path} (mode 0600; never commit it)")
    except LockkitError as err:
        _fail(err)


def _settings() -> Settings:
    """The settings the command works on: under ``flask lockkit ...``, the app's own (its
    ``app.config`` first, as the running app reads them); otherwise lockkit.toml and the
    environment."""
    try:
        from flask import current_app, has_app_context
        from flask.cli import ScriptInfo
    except ImportError:  # Flask is optional for the plain CLI
        return load_settings()
    if has_app_context():
        return load_settings(overrides=current_app.config)
    ctx = click.get_current_context(silent=True)
    info = ctx.find_object(ScriptInfo) if ctx is not None else None
    if info is not None:  # under the flask command (or its test runner) without an app context yet
        return load_settings(overrides=info.load_app().config)
    return load_settings()


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` with ``text``, durably and whole (a temporary file, fsynced, linked into
    place, then the directory fsynced): never through a symlink, never over an existing file,
    and a failure (a full disk) leaves no half-written file behind."""
    import tempfile

    from .keys.keyring import _fsync_dir

    if path.is_symlink() or path.exists():
        raise ConfigurationError(f"{path} already exists (a dangling symlink?): not writing through it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    except OSError as err:
        raise ConfigurationError(f"cannot create {path}: {err.strerror}") from err
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails on anything at path, a dangling symlink included
        _fsync_dir(path.parent)
    except FileExistsError as err:
        raise ConfigurationError(f"{path} already exists (a dangling symlink?): not writing through it") from err
    except OSError as err:
        raise ConfigurationError(f"cannot write {path} (nothing was written): {err.strerror}") from err
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@cli.group(help="Inspect and rotate root keys.")
def keys() -> None:
    pass


def _keyring_file() -> Path:
    settings = _settings()
    if settings.keyring_json or settings.keyring_path is None:
        raise ConfigurationError(
            "the keyring comes from LOCKKIT_KEYRING_JSON: rotate a file keyring, then update the variable"
        )
    return settings.keyring_path


@keys.command("list", help="Show key versions (never key material).")
def keys_list() -> None:
    try:
        settings = _settings()
        from .keys.keyring import load_keyring

        ring = load_keyring(settings.keyring_path, settings.keyring_json)
    except LockkitError as err:
        _fail(err)
    click.echo(f"workspace {ring.workspace_crn}  keyring {ring.source}")
    click.echo(f"{'version':>7}  {'created (UTC)':<20}  primary")
    for v in ring.versions():
        created = dt.datetime.fromtimestamp(v.created, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{v.version:>7}  {created:<20}  {'*' if v.primary else ''}")


@keys.command("rotate", help="Add a new primary root key; old versions keep decrypting.")
def keys_rotate() -> None:
    try:
        with Keyring.editing(_keyring_file()) as ring:
            v = ring.rotate()
    except LockkitError as err:
        _fail(err)
    click.echo(f"rotated: version {v} is now primary; restart running apps to pick it up")


@cli.group(help="Inspect and verify the audit log.")
def audit() -> None:
    pass


def _audit_log() -> AuditLog:
    from .services import build_auditor

    settings = _settings()
    if settings.audit_log is None:
        raise ConfigurationError("no audit log is configured: set [audit] log in lockkit.toml or LOCKKIT_AUDIT_LOG")
    from .keys.keyring import load_keyring

    ring = None
    if settings.keyring_json or (settings.keyring_path is not None and settings.keyring_path.exists()):
        ring = load_keyring(settings.keyring_path, settings.keyring_json)
    auditor = build_auditor(settings, ring)
    assert auditor is not None and isinstance(auditor.sinks[0], AuditLog)
    return auditor.sinks[0]


def _when(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as err:
        raise click.BadParameter(f"{value!r}: give unix seconds or an ISO date/time") from err
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


@audit.command("verify", help="Check the hash chain, every MAC and the head; name the first bad entry.")
def audit_verify() -> None:
    try:
        log = _audit_log()
        result = log.verify()
    except LockkitError as err:
        _fail(err)
    if result.ok:
        click.echo(f"ok: {result.entries} entries, chain and MACs intact ({log.path})")
        return
    raise click.ClickException(f"audit log {log.path} is NOT intact: {result.problem} "
                               f"({result.entries} entries before it verified)")


@audit.command("show", help="List events: who accessed what, when, and the outcome.")
@click.option("--subject", help="only this subject")
@click.option("--table", help="only this table")
@click.option("--column", help="only this column")
@click.option("--record", help="only events naming this record id")
@click.option("--operation", type=click.Choice(["encrypt", "decrypt", "query"]))
@click.option("--outcome", type=click.Choice(["granted", "denied"]))
@click.option("--since", help="unix seconds or ISO date/time")
@click.option("--until", help="unix seconds or ISO date/time")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def audit_show(subject: str | None, table: str | None, column: str | None, record: str | None,
               operation: str | None, outcome: str | None, since: str | None, until: str | None, as_json: bool) -> None:
    import json as _json

    try:
        log = _audit_log()
        check = log.verify()
        events = log.query(subject=subject, table=table, column=column, record=record, operation=operation,
                           outcome=outcome, since=_when(since), until=_when(until))
    except LockkitError as err:
        _fail(err)
    if not check.ok:
        click.echo(f"WARNING: the audit log does not verify ({check.problem}); events below may be forged",
                   err=True)
    if as_json:
        for ev in events:
            click.echo(_json.dumps(ev.to_dict(), sort_keys=True))
        return
    click.echo(f"{'time (UTC)':<19}  {'subject':<24}  {'operation':<9}  {'table.column':<24}  {'n':>5}  {'outcome':<7}  records / reason")
    for ev in events:
        when = dt.datetime.fromtimestamp(ev.time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        extra = ",".join(ev.records) + (f" ({ev.reason})" if ev.reason else "")
        click.echo(f"{when:<19}  {(ev.subject or '-')[:24]:<24}  {ev.operation:<9}  {(ev.table + '.' + ev.column)[:24]:<24}  "
                   f"{ev.count:>5}  {ev.outcome:<7}  {extra}")


from .rekey_cli import add_key_lifecycle_commands  # noqa: E402  (`lockkit keys usage|retire`)

add_key_lifecycle_commands(keys)

from .cts.cli import cts as _cts_commands  # noqa: E402  (`lockkit cts serve`)

cli.add_command(_cts_commands)


@cli.group(help="OpenBao as the key service.")
def openbao() -> None:
    pass


@openbao.command("setup", help="Configure an OpenBao server for lockkit (mounts, policies, CEL role). "
                 "Needs an operator token in BAO_TOKEN; the app never holds it.")
@click.option("--addr", envvar="BAO_ADDR", required=True, help="server URL (or BAO_ADDR)")
@click.option("--issuer", required=True, help="the identity provider's issuer (bound_issuer)")
@click.option("--jwks-url", required=True, help="the identity provider's JWKS URL")
@click.option("--audience", "audiences", multiple=True, help="accepted aud value (repeat)")
@click.option("--bound-claim", "bound_claims", multiple=True, metavar="NAME=GLOB",
              help="string claim the token must carry (repeat; * is a wildcard), e.g. azp=https://app.example "
                   "(Clerk); checked by the CEL role")
@click.option("--max-ttl", default=900, show_default=True, type=click.IntRange(5, 86400),
              help="cap on a user token's lifetime (s)")
@click.option("--insecure-http", is_flag=True,
              help="allow plain http to a non-loopback server or JWKS URL (a network you trust only)")
@click.option("--auth-mount", default="jwt-cel", show_default=True)
@click.option("--transit-mount", default="transit", show_default=True)
@click.option("--key-prefix", default="lkx-", show_default=True,
              help="user key names: <prefix><hex(sub)>; one per auth mount on a transit mount")
@click.option("--role", default="lockkit", show_default=True)
def openbao_setup(addr: str, issuer: str, jwks_url: str, audiences: tuple[str, ...], bound_claims: tuple[str, ...],
                  max_ttl: int, insecure_http: bool, auth_mount: str, transit_mount: str, key_prefix: str,
                  role: str) -> None:
    from .config import OpenBaoConfig
    from .keys.openbao import BaoError, BaoUnavailable
    from .keys.openbao_setup import setup

    token = os.environ.get("BAO_TOKEN") or os.environ.get("VAULT_TOKEN")
    if not token:
        raise click.ClickException("set BAO_TOKEN to an operator token (used for this command only)")
    claims: dict[str, list[str]] = {}
    for item in bound_claims:
        name, sep, glob = item.partition("=")
        if not sep or not name:
            raise click.ClickException(f"--bound-claim {item!r}: expected NAME=GLOB")
        claims.setdefault(name, []).append(glob)
    try:
        config = OpenBaoConfig(addr=addr, auth_mount=auth_mount, transit_mount=transit_mount, role=role,
                               key_prefix=key_prefix, insecure_http=insecure_http)
        steps = setup(config, token, issuer=issuer, jwks_url=jwks_url, audiences=audiences,
                      bound_claims=claims or None, max_ttl=max_ttl)
    except (ValueError, BaoError, BaoUnavailable) as err:
        raise click.ClickException(str(err)) from err
    except LockkitError as err:
        raise click.ClickException(err.message) from err
    for line in steps:
        click.echo(f"- {line}")
    extra = "".join(f", LOCKKIT_OPENBAO_{name.upper()}={value}" for name, value, default in (
        ("auth_mount", auth_mount, "jwt-cel"), ("transit_mount", transit_mount, "transit"),
        ("key_prefix", key_prefix, "lkx-"), ("role", role, "lockkit")) if value != default)
    click.echo(f"done. Configure the app with LOCKKIT_KEY_BACKEND=openbao and LOCKKIT_OPENBAO_ADDR{extra}.")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="lockkit", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
