"""The plugin system: a third-party provider installed as a distribution (an entry point in
the ``lockkit`` group) is found and used exactly like the built-ins; a misspelt hook fails at
start-up; every hook is documented and tested."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockkit import ClientInitError, hookimpl
from lockkit import hookspecs
from lockkit.plugins import identity_provider_classes, make_plugin_manager
from lockkit.testing import LocalIssuer

PLUGIN = '''
from lockkit import hookimpl
from lockkit.oidc import IssuerConfig, OIDCVerifier
from lockkit.provider import IdentityProvider


class AcmeProvider(IdentityProvider):
    """A third party's provider: tokens from Acme's IdP, verified by the core."""

    name = "acme"

    @classmethod
    def from_config(cls, config):
        issuer = cls.require(config, "LOCKKIT_ACME_ISSUER")
        return cls(OIDCVerifier(IssuerConfig(
            issuer=issuer, audiences=(cls.require(config, "LOCKKIT_ACME_AUDIENCE"),),
            jwks_uri=cls.require(config, "LOCKKIT_ACME_JWKS_URI"))))


@hookimpl
def register_identity_providers(register):
    register(AcmeProvider)
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``lockkit-acme`` as pip would leave it in site-packages: the module plus a dist-info
    whose entry_points.txt declares ``[lockkit] acme = lockkit_acme``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "lockkit_acme.py").write_text(PLUGIN)
    dist = site / "lockkit_acme-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lockkit-acme\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[lockkit]\nacme = lockkit_acme\n")
    (dist / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("lockkit_acme", None)


def test_builtin_providers_arrive_through_entry_points() -> None:
    names = set(identity_provider_classes(make_plugin_manager()))
    assert {"dev", "clerk", "oidc", "auth0"} <= names
    assert identity_provider_classes(make_plugin_manager(load_entrypoints=False)) == {}


def test_an_installed_third_party_provider_is_found_and_used(installed_plugin: Path, idp: LocalIssuer) -> None:
    classes = identity_provider_classes(make_plugin_manager())
    assert "acme" in classes and classes["acme"].__module__ == "lockkit_acme"

    from flask import Flask, jsonify

    from lockkit import encrypted_column, encrypted_table
    from lockkit.flask import LockKit, current_lock_context, get_state, lock_context_required
    from lockkit.keys.keyring import Keyring

    crn = "crn:local:ws-acme"
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="k" * 32, LOCKKIT_PROVIDERS=["acme"], LOCKKIT_WORKSPACE_CRN=crn,
                      LOCKKIT_KEYRING_JSON=Keyring.generate(crn).to_json(), LOCKKIT_KEY_BACKEND="local",
                      LOCKKIT_ACME_ISSUER=idp.issuer, LOCKKIT_ACME_AUDIENCE=idp.audience, LOCKKIT_ACME_JWKS_URI=idp.jwks_uri)
    LockKit(app)
    notes = encrypted_table("notes", body=encrypted_column("body"))

    @app.get("/api/roundtrip")
    @lock_context_required
    def roundtrip() -> object:
        client = get_state().encryption([notes])
        enc = client.encrypt("via acme", column="body", table=notes).with_lock_context(current_lock_context).unwrap()
        return jsonify(body=client.decrypt(enc).with_lock_context(current_lock_context).unwrap())

    c = app.test_client()
    ok = c.get("/api/roundtrip", headers={"Authorization": f"Bearer {idp.mint('alice')}"})
    assert ok.status_code == 200 and ok.json == {"body": "via acme"}
    assert c.get("/api/roundtrip").status_code == 401


def test_missing_provider_config_names_the_key(installed_plugin: Path) -> None:
    from flask import Flask

    from lockkit.flask import LockKit
    from lockkit.keys.keyring import Keyring

    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="k" * 32, LOCKKIT_PROVIDERS=["acme"], LOCKKIT_WORKSPACE_CRN="crn:local:ws-a",
                      LOCKKIT_KEYRING_JSON=Keyring.generate("crn:local:ws-a").to_json(), LOCKKIT_KEY_BACKEND="local")
    with pytest.raises(ClientInitError, match="LOCKKIT_ACME_ISSUER"):
        LockKit(app)


def test_unknown_provider_name_lists_the_installed_ones() -> None:
    from flask import Flask

    from lockkit.flask import LockKit
    from lockkit.keys.keyring import Keyring

    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="k" * 32, LOCKKIT_PROVIDERS=["nope"], LOCKKIT_WORKSPACE_CRN="crn:local:ws-a",
                      LOCKKIT_KEYRING_JSON=Keyring.generate("crn:local:ws-a").to_json(), LOCKKIT_KEY_BACKEND="local")
    with pytest.raises(ClientInitError, match=r"unknown identity provider 'nope'.*dev"):
        LockKit(app)


def test_a_misspelt_hook_fails_at_start_up() -> None:
    class Typo:
        @hookimpl
        def register_identity_provider(self, register: object) -> None:  # missing "s"
            raise AssertionError("never called")

    with pytest.raises(ClientInitError, match="unknown hook"):
        make_plugin_manager(load_entrypoints=False, plugins=[Typo()])


def test_two_providers_with_one_name_are_refused() -> None:
    class A:
        name = "same"

    class B:
        name = "same"

    class Plugin:
        @hookimpl
        def register_identity_providers(self, register: object) -> None:
            register(A)  # type: ignore[operator]
            register(B)  # type: ignore[operator]

    with pytest.raises(ClientInitError, match="two identity providers are named 'same'"):
        identity_provider_classes(make_plugin_manager(load_entrypoints=False, plugins=[Plugin()]))


def test_a_broken_plugin_fails_loudly(installed_plugin: Path) -> None:
    (installed_plugin / "lockkit_acme.py").write_text("raise RuntimeError('broken plugin')\n")
    sys.modules.pop("lockkit_acme", None)
    with pytest.raises(ClientInitError, match="failed to load"):
        make_plugin_manager()


@pytest.mark.parametrize("hook", ["register_identity_providers", "register_audit_sinks"])
def test_a_plugin_failing_in_a_hook_is_a_start_up_error(hook: str) -> None:
    from lockkit.plugins import audit_sinks

    class Broken:
        pass

    def fail(self: object, register: object) -> None:
        raise KeyError("oops")

    setattr(Broken, hook, hookimpl(fail))
    pm = make_plugin_manager(load_entrypoints=False, plugins=[Broken()])
    run = identity_provider_classes if hook == "register_identity_providers" else audit_sinks
    with pytest.raises(ClientInitError, match=f"a plugin failed in {hook} \\(KeyError"):
        run(pm)


HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "lockkit_spec")]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert ":param" in doc and "Return" in doc, f"{hook} must say what its arguments mean and what to return"
    tests = Path(__file__).read_text() + "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    assert f"def test_hook_{hook}" in tests, f"add a test named test_hook_{hook}"


def test_hook_register_identity_providers() -> None:
    seen: list[type] = []

    class Plugin:
        @hookimpl
        def register_identity_providers(self, register: object) -> None:
            class P:
                name = "p"

            seen.append(P)
            register(P)  # type: ignore[operator]

    classes = identity_provider_classes(make_plugin_manager(load_entrypoints=False, plugins=[Plugin()]))
    assert classes == {"p": seen[0]}


def test_tracing_logs_hook_calls(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.DEBUG, logger="lockkit.plugins"):
        identity_provider_classes(make_plugin_manager(trace=True))
    assert "register_identity_providers" in caplog.text



def test_hook_register_audit_sinks(idp: LocalIssuer) -> None:
    from flask import Flask, jsonify

    from lockkit import encrypted_column, encrypted_table
    from lockkit.audit import AuditEvent
    from lockkit.flask import LockKit, current_lock_context, get_state, lock_context_required
    from lockkit.keys.keyring import Keyring

    received: list[AuditEvent] = []

    class ListSink:
        def write(self, events: list[AuditEvent]) -> None:
            received.extend(events)

    class Plugin:
        @hookimpl
        def register_audit_sinks(self, register: object) -> None:
            register(ListSink())  # type: ignore[operator]

    crn = "crn:local:ws-sink"
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="k" * 32, LOCKKIT_PROVIDERS=["dev"], LOCKKIT_WORKSPACE_CRN=crn,
                      LOCKKIT_KEYRING_JSON=Keyring.generate(crn).to_json(), LOCKKIT_KEY_BACKEND="local")
    LockKit(app, plugin_manager=make_plugin_manager(plugins=[Plugin()]))
    notes = encrypted_table("notes", body=encrypted_column("body"))

    @app.get("/api/write")
    @lock_context_required
    def write() -> object:
        client = get_state().encryption([notes])
        client.encrypt("x", column="body", table=notes).audit(records=["n1"]).with_lock_context(current_lock_context).unwrap()
        return jsonify(ok=True)

    token = app.extensions["lockkit_dev"].mint("alice")
    assert app.test_client().get("/api/write", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert [(e.subject, e.operation, e.table, e.column, e.records, e.outcome) for e in received] == [
        ("alice", "encrypt", "notes", "body", ("n1",), "granted")]

    class Broken:
        @hookimpl
        def register_audit_sinks(self, register: object) -> None:
            register(object())  # type: ignore[operator]

    other = Flask(__name__)
    other.config.update(app.config)
    with pytest.raises(ClientInitError, match="no write"):
        LockKit(other, plugin_manager=make_plugin_manager(plugins=[Broken()]))
