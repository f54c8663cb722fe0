"""The Flask kit end to end through Flask's test client: the session lifecycle (exchange,
steady state, user switch, sign-out, refresh window), the dev provider's browser flow,
``get_cts_token`` / ``current_lock_context`` / ``@lock_context_required``, outages, tampered
and replayed cookies, concurrency, two apps in one process, cookie attributes and the CLI."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient

from lockkit import ConfigurationError, CtsToken, LockContext, LockContextError
from lockkit.cli import main
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.flask import (
    LockKit,
    current_lock_context,
    get_cts_token,
    get_state,
    identity_unavailable,
    lock_context_required,
)
from lockkit.flask import signals
from lockkit.flask.extension import SESSION_PURPOSE
from lockkit.keys.keyring import Keyring
from lockkit.oidc import Claims, IssuerConfig, OIDCVerifier
from lockkit.testing import LocalIssuer

from .flask_support import (
    NOTES,
    WORKSPACE,
    base_config,
    bearer,
    cookie_value,
    dev_provider,
    dev_sign_in,
    exchanges,
    form_field,
    json_of,
    loopback_config,
    make_app,
    open_session,
    plugin_manager,
    set_cookie_headers,
    stored_cts,
)


@pytest.fixture
def app() -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _mint(app: Flask, sub: str, **claims: Any) -> str:
    return dev_provider(app).mint(sub, **claims)


def _write(client: FlaskClient, token: str, body: str) -> dict[str, Any]:
    resp = client.post("/api/notes", json={"body": body}, headers=bearer(token))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    payload = json_of(resp)["payload"]
    assert isinstance(payload, dict)
    return payload


def _read(client: FlaskClient, token: str | None, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = client.post("/api/notes/read", json={"payload": payload}, headers=bearer(token) if token else {})
    return resp.status_code, json_of(resp)


@pytest.fixture
def removed(app: Flask) -> Iterator[list[dict[str, Any]]]:
    """Every ``cts_token_removed`` signal the app sends."""
    got: list[dict[str, Any]] = []

    def receiver(sender: Flask, **kwargs: Any) -> None:
        got.append(kwargs)

    with signals.cts_token_removed.connected_to(receiver, app):
        yield got


@pytest.fixture
def exchanged(app: Flask) -> Iterator[list[dict[str, Any]]]:
    """Every ``cts_token_exchanged`` signal the app sends."""
    got: list[dict[str, Any]] = []

    def receiver(sender: Flask, **kwargs: Any) -> None:
        got.append(kwargs)

    with signals.cts_token_exchanged.connected_to(receiver, app):
        yield got


class _BackdatedTokenService(EmbeddedTokenService):
    """A real embedded CTS whose tokens are minted as if ``age`` seconds ago (its expiry is
    that much nearer). Identity verification still uses the real time; nothing is patched."""

    def __init__(self, *, age: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.age = age

    def mint(self, idp_claims: Claims, *, namespace: str, now: float | None = None) -> CtsToken:
        now = time.time() if now is None else now
        return super().mint(idp_claims, namespace=namespace, now=now - self.age)


def _replace_token_service(app: Flask, *, age: float = 0.0, verifiers: list[Any] | None = None) -> EmbeddedTokenService:
    """Swap the app's token service for a new real one on the same keyring."""
    state = get_state(app)
    service = _BackdatedTokenService(
        age=age,
        workspace_crn=state.settings.workspace_crn,
        keyring=Keyring.from_json(app.config["LOCKKIT_KEYRING_JSON"]),
        verifiers=list(state.providers) if verifiers is None else verifiers,
        lifetime=state.settings.cts_lifetime,
    )
    state.token_service = service
    return service


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# == 1. lifecycle with a Bearer identity token ==============================================
def test_first_request_exchanges_and_seals_the_cts_token(
    app: Flask, client: FlaskClient, exchanged: list[dict[str, Any]]
) -> None:
    assert exchanges(app) == 0
    resp = client.get("/api/me", headers=bearer(_mint(app, "alice")))
    assert resp.status_code == 200 and json_of(resp) == {"sub": "alice"}
    assert exchanges(app) == 1
    assert exchanged == [{"subject": "alice", "provider": "dev"}]

    cookie = cookie_value(client)
    assert cookie is not None
    stored = stored_cts(app, cookie)
    assert stored is not None and stored["sub"] == "alice" and stored["ns"] == dev_provider(app).namespace
    token = stored["tok"]
    assert isinstance(token, str) and token.count(".") == 2
    # the CTS token is nowhere in clear: not in the cookie, not in the (signed, readable) session
    sealed = open_session(app, cookie)[get_state(app).session_key]
    assert isinstance(sealed, str)
    for secret_part in token.split(".")[1:]:  # payload and signature; the header is generic
        assert secret_part not in cookie
        assert secret_part not in sealed
    assert token not in repr(open_session(app, cookie))
    # and only this app's sealer opens it
    assert get_state(make_app()).sealer.unseal(SESSION_PURPOSE, sealed) is None


def test_steady_state_makes_no_exchanges(app: Flask, client: FlaskClient, exchanged: list[dict[str, Any]]) -> None:
    token = _mint(app, "alice")
    payload = _write(client, token, "first")
    assert exchanges(app) == 1
    sealed_before = open_session(app, cookie_value(client))[get_state(app).session_key]
    for i in range(5):
        assert _read(client, token, payload) == (200, {"body": "first"})
        assert client.get("/api/me", headers=bearer(token)).status_code == 200
        assert exchanges(app) == 1, f"request {i} exchanged again"
    assert len(exchanged) == 1
    assert open_session(app, cookie_value(client))[get_state(app).session_key] == sealed_before


def _set_session(app: Flask, client: FlaskClient, data: dict[str, Any]) -> None:
    """Put a session holding ``data`` in the client's jar (signed with the app's key)."""
    interface = app.session_interface
    assert isinstance(interface, SecureCookieSessionInterface)
    serializer = interface.get_signing_serializer(app)
    assert serializer is not None
    client.set_cookie("session", serializer.dumps(data))


def test_a_replaced_session_value_is_never_served_from_the_steady_state_memo(app: Flask, client: FlaskClient) -> None:
    """Steady-state requests remember what a sealed session value held for a verified identity
    token; a different sealed value (garbage, or another user's) is unsealed and checked anew."""
    alice, bob = _mint(app, "alice"), _mint(app, "bob")
    payload = _write(client, alice, "alice's")
    assert _read(client, alice, payload) == (200, {"body": "alice's"})
    assert exchanges(app) == 1
    alice_sealed = open_session(app, cookie_value(client))[get_state(app).session_key]
    bob_client = app.test_client()
    assert bob_client.get("/api/me", headers=bearer(bob)).status_code == 200
    bob_sealed = open_session(app, cookie_value(bob_client))[get_state(app).session_key]
    assert exchanges(app) == 2

    key = get_state(app).session_key
    for replacement in (alice_sealed[:-4] + "AAAA", bob_sealed, "not sealed"):
        _set_session(app, client, {key: replacement})
        before = exchanges(app)
        assert _read(client, alice, payload) == (200, {"body": "alice's"})  # exchanged again, still alice
        assert exchanges(app) == before + 1
        assert stored_cts(app, cookie_value(client))["sub"] == "alice"  # type: ignore[index]
    # bob's sealed value never serves alice's token, and alice's never serves bob's
    _set_session(app, client, {key: alice_sealed})
    before = exchanges(app)
    assert json_of(client.get("/api/me", headers=bearer(bob))) == {"sub": "bob"}
    assert exchanges(app) == before + 1


def test_a_session_token_signed_by_a_retired_key_is_exchanged_again() -> None:
    """After a key version is retired (and the app restarted), a session still holds a CTS token
    signed with that version's key, which the key service refuses. The middleware finds out on
    the session's first request and exchanges again, instead of every operation failing."""
    import secrets as _secrets

    ring = Keyring.generate(WORKSPACE)
    secret = _secrets.token_urlsafe(32)
    before = make_app(SECRET_KEY=secret, LOCKKIT_KEYRING_JSON=ring.to_json())
    client = before.test_client()
    token = _mint(before, "alice")
    _write(client, token, "written before the rotation")
    assert exchanges(before) == 1
    ring.rotate()
    ring.retire(1)
    after = make_app(SECRET_KEY=secret, LOCKKIT_KEYRING_JSON=ring.to_json())  # restarted with the new keyring
    again = after.test_client()
    cookie = cookie_value(client)
    assert cookie is not None
    again.set_cookie("session", cookie)
    payload = _write(again, token, "written after")  # would be a LockContextError without the check
    assert exchanges(after) == 1
    assert _read(again, token, payload) == (200, {"body": "written after"})
    assert exchanges(after) == 1  # the new token is remembered: the steady state again


def test_the_steady_state_memo_is_bounded(app: Flask, client: FlaskClient) -> None:
    from lockkit.flask import extension

    memo = get_state(app).session_memo
    for i in range(extension._SESSION_MEMO_SIZE + 50):
        extension._remember(memo, (f"sealed{i}", "token", "ns"), CtsToken("t", time.time() + 60))
    assert len(memo) == extension._SESSION_MEMO_SIZE
    assert ("sealed0", "token", "ns") not in memo and (f"sealed{extension._SESSION_MEMO_SIZE + 49}", "token", "ns") in memo


def test_the_app_state_repr_shows_no_credentials(app: Flask, client: FlaskClient) -> None:
    """The memo is keyed by identity tokens and sealed session values: a debugger, a log line
    or an error reporter printing the app state shows neither."""
    token = _mint(app, "alice")
    payload = _write(client, token, "alice's secret")
    assert _read(client, token, payload) == (200, {"body": "alice's secret"})  # the steady state
    state = get_state(app)
    assert state.session_memo, "the steady-state memo holds the signed-in user"
    shown = repr(state)
    assert token not in shown and token.split(".")[1] not in shown
    for sealed, _, _ in state.session_memo:
        assert sealed not in shown and sealed[:24] not in shown
    assert "session_memo" not in shown


def test_an_operation_chained_with_current_lock_context_can_run_after_the_request(app: Flask) -> None:
    """``.with_lock_context(current_lock_context)`` binds the request's lock context, not the
    proxy: the operation still runs once the request has ended."""
    from .flask_support import NOTES

    kept: dict[str, Any] = {}

    @app.post("/api/notes/later")
    @lock_context_required
    def later() -> dict[str, Any]:
        client = get_state().encryption([NOTES])
        kept["op"] = client.encrypt("for later", column=NOTES.body, table=NOTES).with_lock_context(current_lock_context)
        return {}

    client = app.test_client()
    token = _mint(app, "alice")
    assert client.post("/api/notes/later", headers=bearer(token)).status_code == 200
    payload = kept["op"].unwrap()  # outside any request context
    assert _read(client, token, payload) == (200, {"body": "for later"})


def test_user_switch_re_exchanges_and_locks_to_the_new_user(app: Flask, client: FlaskClient) -> None:
    alice, bob = _mint(app, "alice"), _mint(app, "bob")
    alice_payload = _write(client, alice, "alice's secret")
    assert exchanges(app) == 1

    # bob's token with alice's cookie jar: a new exchange, bob's lock context
    status, body = _read(client, bob, alice_payload)
    assert exchanges(app) == 2
    assert (status, body) == (403, {"error": "DecryptionError"})
    assert json_of(client.get("/api/me", headers=bearer(bob))) == {"sub": "bob"}
    stored = stored_cts(app, cookie_value(client))
    assert stored is not None and stored["sub"] == "bob"
    bob_payload = _write(client, bob, "bob's secret")
    assert _read(client, bob, bob_payload) == (200, {"body": "bob's secret"})
    assert exchanges(app) == 2

    # back to alice: exchange again; her value opens, bob's does not
    assert _read(client, alice, alice_payload) == (200, {"body": "alice's secret"})
    assert _read(client, alice, bob_payload) == (403, {"error": "DecryptionError"})
    assert exchanges(app) == 3


def test_sign_out_removes_the_cts_token(
    app: Flask, client: FlaskClient, removed: list[dict[str, Any]]
) -> None:
    token = _mint(app, "alice")
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert stored_cts(app, cookie_value(client)) is not None

    # a request with no credential: the stored CTS token goes, even on a public page
    assert client.get("/").status_code == 200
    assert removed == [{"reason": "signed-out"}]
    assert get_state(app).session_key not in open_session(app, cookie_value(client))
    resp = client.get("/api/me")
    assert resp.status_code == 401 and json_of(resp) == {"error": "missing"}
    assert len(removed) == 1  # nothing left to remove


def test_refresh_window_re_exchanges_only_when_expiry_minus_window_has_passed() -> None:
    """Lifetime 120 s, window 100 s. A CTS token minted now is kept for 20 s; one minted 40 s
    ago (a back-dated but real token service) is past ``exp - window`` and is replaced on
    every request. No clock is patched: see the clock-driven test below."""
    app = make_app(LOCKKIT_CTS_LIFETIME=120, LOCKKIT_REFRESH_WINDOW=100)
    client = app.test_client()
    token = _mint(app, "alice")

    fresh = _replace_token_service(app, age=0)
    for _ in range(3):
        assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert fresh.calls == 1
    first = stored_cts(app, cookie_value(client))
    assert first is not None and first["exp"] - time.time() > 100

    aged = _replace_token_service(app, age=40)
    client = app.test_client()
    payload = _write(client, token, "kept across refreshes")
    assert aged.calls == 1
    for n in range(2, 5):
        assert _read(client, token, payload) == (200, {"body": "kept across refreshes"})
        assert aged.calls == n  # exp - window already passed: exchange on every request
    stored = stored_cts(app, cookie_value(client))
    assert stored is not None and 0 < stored["exp"] - time.time() < 100


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_refresh_window_follows_the_injected_clock() -> None:
    app = make_app(LOCKKIT_CTS_LIFETIME=120, LOCKKIT_REFRESH_WINDOW=100)
    client = app.test_client()
    token = _mint(app, "alice")
    clock = _Clock(time.time())
    get_state(app).clock = clock

    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert exchanges(app) == 1
    clock.now += 19  # exp - window is 20 s ahead: keep the token
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert exchanges(app) == 1
    clock.now += 2  # now past exp - window: exchange again
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    assert exchanges(app) == 2


def test_the_same_sub_from_another_provider_is_another_identity(idp: LocalIssuer) -> None:
    app = make_app(**{**loopback_config(idp), "LOCKKIT_PROVIDERS": ["dev", "loopback"]})
    client = app.test_client()
    via_dev, via_loopback = _mint(app, "alice"), idp.mint("alice", ttl=600)
    payload = _write(client, via_dev, "dev alice's")
    assert exchanges(app) == 1

    # same cookie jar, same sub, another issuer: a new exchange and another lock
    assert _read(client, via_loopback, payload) == (403, {"error": "DecryptionError"})
    assert exchanges(app) == 2
    stored = stored_cts(app, cookie_value(client))
    assert stored is not None and stored["ns"] == idp.issuer
    assert _read(client, via_dev, payload) == (200, {"body": "dev alice's"})
    assert exchanges(app) == 3


def test_lock_claims_of_the_first_exchange_bind_the_lock_context() -> None:
    """Baseline for the tests below: with a lock on ``org_id``, members of one org
    share values and other orgs' members cannot open them."""
    app = make_app(LOCKKIT_CTS_CLAIMS=["org_id"], LOCKKIT_IDENTITY_CLAIM=["org_id"])
    payload = _write(app.test_client(), _mint(app, "alice", org_id="org_a"), "org A's plan")
    assert _read(app.test_client(), _mint(app, "carol", org_id="org_a"), payload) == (200, {"body": "org A's plan"})
    assert _read(app.test_client(), _mint(app, "bob", org_id="org_b"), payload) == (403, {"error": "DecryptionError"})


def test_switching_org_re_exchanges_so_values_lock_to_the_new_org() -> None:
    app = make_app(LOCKKIT_CTS_CLAIMS=["org_id"], LOCKKIT_IDENTITY_CLAIM=["org_id"])
    client = app.test_client()
    assert client.get("/api/me", headers=bearer(_mint(app, "alice", org_id="org_a"))).status_code == 200
    # alice switches her active org (same sub, new verified org_id) and writes org B's data
    payload = _write(client, _mint(app, "alice", org_id="org_b"), "org B's plan")
    switched = exchanges(app)
    assert _read(app.test_client(), _mint(app, "carol", org_id="org_a"), payload) == (403, {"error": "DecryptionError"})
    assert switched == 2
    assert _read(app.test_client(), _mint(app, "bob", org_id="org_b"), payload) == (200, {"body": "org B's plan"})


def test_changed_scopes_re_exchange_for_a_scopes_lock() -> None:
    app = make_app(LOCKKIT_IDENTITY_CLAIM=["sub", "scopes"])
    client = app.test_client()
    admin = _mint(app, "alice", scope="notes:read notes:admin")
    payload = _write(client, admin, "admin-only")
    # the IdP revoked notes:admin: her new token must not open what the admin scope locked
    demoted = _mint(app, "alice", scope="notes:read")
    assert _read(client, demoted, payload) == (403, {"error": "DecryptionError"})


def test_the_loopback_issuer_works_as_a_third_party_plugin(idp: LocalIssuer) -> None:
    app = make_app(**loopback_config(idp))
    assert [p.name for p in get_state(app).providers] == ["loopback"]
    client = app.test_client()
    token = idp.mint("carol", ttl=600)
    payload = _write(client, token, "via a plugin")
    assert _read(client, token, payload) == (200, {"body": "via a plugin"})
    assert exchanges(app) == 1


# == 2. the dev provider's browser flow =====================================================
def test_dev_browser_flow(app: Flask, client: FlaskClient) -> None:
    resp = client.get("/notes?tab=2")
    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/lockkit/dev/login"
    assert parse_qs(location.query) == {"next": ["/notes?tab=2"]}

    form = client.get(resp.headers["Location"])
    assert form.status_code == 200
    page = form.get_data(as_text=True)
    assert "Development sign-in" in page
    assert form_field(page, "next") == "/notes?tab=2"
    csrf = form_field(page, "csrf")

    resp = client.post("/lockkit/dev/login", data={"name": "alice", "csrf": csrf, "next": "/notes?tab=2"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/notes?tab=2"
    assert exchanges(app) == 0  # the exchange happens on the next request that carries the identity

    page_resp = client.get("/notes?tab=2")
    assert page_resp.status_code == 200 and "notes of alice" in page_resp.get_data(as_text=True)
    assert exchanges(app) == 1
    payload = json_of(client.post("/api/notes", json={"body": "from the browser"}))["payload"]
    assert json_of(client.post("/api/notes/read", json={"payload": payload})) == {"body": "from the browser"}
    assert exchanges(app) == 1


@pytest.mark.parametrize("csrf", [None, "", "wrong-token"], ids=["absent", "empty", "wrong"])
def test_dev_sign_in_needs_the_form_csrf_token(client: FlaskClient, csrf: str | None) -> None:
    client.get("/lockkit/dev/login")  # a CSRF token now exists in the session
    data = {"name": "mallory", "next": "/"} if csrf is None else {"name": "mallory", "csrf": csrf, "next": "/"}
    assert client.post("/lockkit/dev/login", data=data).status_code == 400
    assert client.get("/api/me").status_code == 401


def test_dev_sign_in_without_a_form_session_is_refused(app: Flask) -> None:
    client = app.test_client()
    resp = client.post("/lockkit/dev/login", data={"name": "mallory", "csrf": "guess", "next": "/"})
    assert resp.status_code == 400


@pytest.mark.parametrize("name", ["", "a b", "<script>", "x" * 65])
def test_dev_sign_in_refuses_bad_names(client: FlaskClient, name: str) -> None:
    form = client.get("/lockkit/dev/login").get_data(as_text=True)
    resp = client.post("/lockkit/dev/login", data={"name": name, "csrf": form_field(form, "csrf")})
    assert resp.status_code == 400


@pytest.mark.parametrize(
    "target", ["//evil.com", "https://evil.com", "/\\evil", "/\\/evil.com", "/\t/evil.com", "evil.com", "javascript:alert(1)"]
)
def test_dev_sign_in_never_redirects_off_site(client: FlaskClient, target: str) -> None:
    form = client.get("/lockkit/dev/login", query_string={"next": target})
    page = form.get_data(as_text=True)
    assert form_field(page, "next") == "/"
    assert "evil" not in page
    resp = client.post("/lockkit/dev/login", data={"name": "alice", "csrf": form_field(page, "csrf"), "next": target})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"


def test_dev_sign_out_clears_the_session(app: Flask, client: FlaskClient) -> None:
    assert dev_sign_in(client, "alice", "/notes").status_code == 302
    assert client.get("/notes").status_code == 200
    assert stored_cts(app, cookie_value(client)) is not None

    csrf = form_field(client.get("/lockkit/dev/login").get_data(as_text=True), "csrf")
    assert client.post("/lockkit/dev/logout", data={"csrf": "wrong"}).status_code == 400
    assert client.get("/notes").status_code == 200  # a forged sign-out does nothing
    resp = client.post("/lockkit/dev/logout", data={"csrf": csrf, "next": "//evil.com"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    assert open_session(app, cookie_value(client)) == {}
    resp = client.get("/notes")
    assert resp.status_code == 302 and urlsplit(resp.headers["Location"]).path == "/lockkit/dev/login"
    assert client.get("/api/me").status_code == 401


@pytest.mark.parametrize("allow", [None, False, "false", "False", "0", "no", "off", ""])
def test_dev_provider_refuses_to_load_in_production(allow: Any) -> None:
    """Also when the override is set to a false string, as read from an environment variable."""
    app = Flask(__name__)
    app.config.update(base_config(TESTING=False, DEBUG=False))
    if allow is not None:
        app.config["LOCKKIT_DEV_ALLOW_IN_PRODUCTION"] = allow
    with pytest.raises(ConfigurationError, match="LOCKKIT_DEV_ALLOW_IN_PRODUCTION"):
        LockKit(app, plugin_manager=plugin_manager())
    assert "lockkit" not in app.extensions


@pytest.mark.parametrize("key", ["LOCKKIT_DEV_ALLOW_IN_PRODUCTION", "LOCKKIT_INSECURE_COOKIES"])
def test_a_flag_that_is_neither_true_nor_false_is_refused(key: str) -> None:
    app = Flask(__name__)
    app.config.update(base_config(TESTING=False, DEBUG=False, **{key: "maybe"}))
    with pytest.raises(ConfigurationError, match=key):
        LockKit(app, plugin_manager=plugin_manager())


@pytest.mark.parametrize(("value", "secure"), [("false", True), ("0", True), (False, True), ("true", False), (True, False)])
def test_insecure_cookies_reads_strings_as_flags(idp: LocalIssuer, value: Any, secure: bool) -> None:
    app = make_app(TESTING=False, DEBUG=False, LOCKKIT_INSECURE_COOKIES=value, **loopback_config(idp))
    assert bool(app.config.get("SESSION_COOKIE_SECURE")) is secure


@pytest.mark.parametrize(
    "config",
    [{"TESTING": True}, {"TESTING": False, "DEBUG": True}, {"TESTING": False, "DEBUG": False, "LOCKKIT_DEV_ALLOW_IN_PRODUCTION": True}],
    ids=["testing", "debug", "allowed-in-production"],
)
def test_dev_provider_warns_loudly_when_enabled(caplog: pytest.LogCaptureFixture, config: dict[str, Any]) -> None:
    with caplog.at_level(logging.WARNING, logger="lockkit.dev"):
        app = make_app(**config)
    assert [p.name for p in get_state(app).providers] == ["dev"]
    warnings = [r for r in caplog.records if r.name == "lockkit.dev" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "anyone can sign in as anyone" in warnings[0].getMessage()
    assert app.config["SECRET_KEY"] not in caplog.text


# == 3. get_cts_token, current_lock_context, @lock_context_required ========================
def test_get_cts_token_success_shape(app: Flask) -> None:
    with app.test_request_context("/", headers=bearer(_mint(app, "alice"))):
        app.preprocess_request()
        res = get_cts_token()
        assert res.success is True and res.error is None
        assert isinstance(res.cts_token, CtsToken) and not res.cts_token.is_expired()
        secret = res.cts_token.access_token
        assert secret not in repr(res) and secret not in repr(res.cts_token)
        assert get_cts_token() == res


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing"), (bearer("not-a-jwt"), "invalid")],
    ids=["no-credential", "garbage"],
)
def test_get_cts_token_failure_shape(app: Flask, headers: dict[str, str], reason: str) -> None:
    with app.test_request_context("/", headers=headers):
        app.preprocess_request()
        res = get_cts_token()
        assert res.success is False and res.cts_token is None
        assert isinstance(res.error, str) and reason in res.error
        assert "not-a-jwt" not in repr(res) and "not-a-jwt" not in res.error


def test_current_lock_context_is_built_once_per_request(app: Flask) -> None:
    token = _mint(app, "alice")
    seen: list[LockContext] = []
    for _ in range(2):
        with app.test_request_context("/", headers=bearer(token)):
            app.preprocess_request()
            first = cast(Any, current_lock_context)._get_current_object()
            second = cast(Any, current_lock_context)._get_current_object()
            assert isinstance(first, LockContext) and first is second
            assert first.identity_claim == ("sub",)
            assert first.cts_token is not None and first.cts_token == get_cts_token().cts_token
            seen.append(first)
    assert seen[0] is not seen[1]


def test_current_lock_context_without_identity_raises(app: Flask) -> None:
    with app.test_request_context("/"):
        app.preprocess_request()
        with pytest.raises(LockContextError, match="missing"):
            _ = current_lock_context.identity_claim


@pytest.mark.parametrize("claim", [[], ["sub", "sub"], ["not a claim!"], "x" * 200])
def test_a_bad_identity_claim_setting_fails_at_init(claim: Any) -> None:
    from lockkit import ClientInitError

    with pytest.raises(ClientInitError, match="LOCKKIT_IDENTITY_CLAIM"):
        make_app(LOCKKIT_IDENTITY_CLAIM=claim)


def test_current_lock_context_follows_the_configured_identity_claim() -> None:
    app = make_app(LOCKKIT_IDENTITY_CLAIM=["sub", "scopes"])
    with app.test_request_context("/", headers=bearer(_mint(app, "alice", scope="notes:read"))):
        app.preprocess_request()
        assert current_lock_context.identity_claim == ("sub", "scopes")


def _expired(app: Flask) -> str:
    return dev_provider(app).mint("alice", now=time.time() - 2 * dev_provider(app).ttl)


@pytest.mark.parametrize(
    ("credential", "reason"),
    [("none", "missing"), ("expired", "expired"), ("garbage", "invalid"), ("foreign", "invalid")],
)
def test_api_refusals_are_401_json_with_a_coarse_reason(
    app: Flask, client: FlaskClient, idp: LocalIssuer, credential: str, reason: str
) -> None:
    token = {"none": None, "expired": _expired(app), "garbage": "x.y.z", "foreign": idp.mint("alice")}[credential]
    resp = client.get("/api/me", headers=bearer(token) if token else {})
    assert resp.status_code == 401
    assert json_of(resp) == {"error": reason}
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer")
    if credential != "none":
        assert 'error="invalid_token"' in challenge
    assert exchanges(app) == 0
    assert cookie_value(client) is None  # nothing stored for a refused identity


def test_missing_credential_challenge_has_no_error_code(client: FlaskClient) -> None:
    resp = client.get("/api/me")
    assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_refused_identity_sends_the_identity_rejected_signal(app: Flask, client: FlaskClient) -> None:
    got: list[dict[str, Any]] = []

    def receiver(sender: Flask, **kwargs: Any) -> None:
        got.append(kwargs)

    token = _expired(app)
    with signals.identity_rejected.connected_to(receiver, app):
        client.get("/api/me", headers=bearer(token))
    assert got == [{"provider": "dev", "reason": "expired"}]


def test_html_refusal_redirects_to_sign_in(client: FlaskClient) -> None:
    resp = client.get("/notes")
    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/lockkit/dev/login" and parse_qs(location.query) == {"next": ["/notes"]}


def test_html_refusal_uses_the_login_view_when_the_provider_has_no_sign_in(idp: LocalIssuer) -> None:
    app = make_app(LOCKKIT_LOGIN_VIEW="login", **loopback_config(idp))

    @app.get("/login")
    def login() -> str:
        return "app's own sign-in"

    resp = app.test_client().get("/notes")
    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == "/login"
    assert parse_qs(urlsplit(resp.headers["Location"]).query) == {"next": ["/notes"]}
    # without a login view there is nowhere to go: a 401 page, not a redirect
    bare = make_app(**loopback_config(idp)).test_client().get("/notes")
    assert bare.status_code == 401 and "Please sign in" in bare.get_data(as_text=True)


def _scoped_app() -> Flask:
    app = make_app()

    @app.get("/api/write")
    @lock_context_required(scopes=["notes:write"])  # type: ignore[untyped-decorator]  # returns Any
    def write() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.mark.parametrize(
    ("scope", "status"),
    [(None, 403), ("notes:read", 403), ("notes:write", 200), ("notes:read notes:write", 200)],
)
def test_required_scopes(scope: str | None, status: int) -> None:
    app = _scoped_app()
    claims = {} if scope is None else {"scope": scope}
    resp = app.test_client().get("/api/write", headers=bearer(_mint(app, "alice", **claims)))
    assert resp.status_code == status
    assert json_of(resp) == ({"ok": True} if status == 200 else {"error": "insufficient_scope"})


def test_required_scopes_still_need_an_identity() -> None:
    resp = _scoped_app().test_client().get("/api/write")
    assert resp.status_code == 401 and json_of(resp) == {"error": "missing"}


@pytest.mark.parametrize("scopes", [(), ("admin",)])
def test_options_is_answered_without_running_the_view(app: Flask, client: FlaskClient, scopes: tuple[str, ...]) -> None:
    """A CORS preflight (no credentials) gets Flask's default OPTIONS answer; the protected view
    never runs for it, with or without an identity or the required scopes."""
    ran: list[str] = []

    @app.route("/api/purge", methods=["POST", "OPTIONS"])
    @lock_context_required(scopes=scopes)
    def purge() -> dict[str, str]:
        ran.append(request.method)
        return {"purged": "yes"}

    for headers in ({}, bearer(_mint(app, "mallory"))):
        resp = client.options("/api/purge", headers=headers)
        assert resp.status_code == 200 and b"purged" not in resp.data
        assert set(resp.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert ran == []
    assert client.post("/api/purge").status_code == 401
    resp = client.post("/api/purge", headers=bearer(_mint(app, "mallory")))
    assert resp.status_code == (403 if scopes else 200)
    assert ran == ([] if scopes else ["POST"])


def _handler(reason: str, status: int) -> Response:
    return Response(f"custom {reason}", status=418 if status == 401 else status, mimetype="text/plain")


def test_unauthorized_handler_registered_before_init_app_replaces_the_response() -> None:
    ext = LockKit(plugin_manager=plugin_manager())
    ext.unauthorized_handler(_handler)
    app = make_app(extension=ext)
    client = app.test_client()
    resp = client.get("/api/me")
    assert (resp.status_code, resp.get_data(as_text=True)) == (418, "custom missing")
    resp = client.get("/notes")  # HTML too: no redirect
    assert (resp.status_code, resp.get_data(as_text=True)) == (418, "custom missing")
    resp = client.get("/api/me", headers=bearer(_expired(app)))
    assert (resp.status_code, resp.get_data(as_text=True)) == (418, "custom expired")


def test_unauthorized_handler_registered_in_an_app_context() -> None:
    ext = LockKit(plugin_manager=plugin_manager())
    app = make_app(extension=ext)
    with app.app_context():
        ext.unauthorized_handler(_handler)
    resp = app.test_client().get("/api/me")
    assert (resp.status_code, resp.get_data(as_text=True)) == (418, "custom missing")


def test_unauthorized_handler_registered_after_init_app() -> None:
    """The Flask-Login idiom: ``lockkit = LockKit(app)`` then ``@lockkit.unauthorized_handler``
    at module level (no app context)."""
    ext = LockKit(plugin_manager=plugin_manager())
    app = make_app(extension=ext)
    ext.unauthorized_handler(_handler)
    resp = app.test_client().get("/api/me")
    assert (resp.status_code, resp.get_data(as_text=True)) == (418, "custom missing")


# == 4. outages =============================================================================
def test_identity_provider_outage_answers_503_and_stores_nothing() -> None:
    with LocalIssuer(algorithm="ES256") as down:
        down.set_available(False)  # before any key was fetched
        app = make_app(**loopback_config(down))
        client = app.test_client()
        token = down.mint("alice")
        resp = client.get("/api/me", headers=bearer(token))
        assert resp.status_code == 503 and json_of(resp) == {"error": "unavailable"}
        assert resp.headers["Retry-After"] == "30"
        assert client.post("/api/notes", json={"body": "x"}, headers=bearer(token)).status_code == 503
        page = client.get("/notes", headers=bearer(token))
        assert page.status_code == 503 and page.headers["Retry-After"] == "30"  # no sign-in loop
        public = client.get("/", headers=bearer(token))
        assert public.status_code == 200 and public.get_data(as_text=True) == "public page"
        assert down.jwks_requests >= 1
        assert exchanges(app) == 0
        assert cookie_value(client) is None
        with app.test_request_context("/", headers=bearer(token)):
            app.preprocess_request()
            res = get_cts_token()
            assert not res.success and res.error is not None and "unavailable" in res.error
            assert identity_unavailable()  # a page that reads the lock context itself answers 503 too
            with pytest.raises(LockContextError) as info:
                current_lock_context.cts_token  # noqa: B018
            assert info.value.retryable
        with app.test_request_context("/"):  # no identity at all: not an outage
            app.preprocess_request()
            assert not identity_unavailable()
            with pytest.raises(LockContextError) as info:
                current_lock_context.cts_token  # noqa: B018
            assert not info.value.retryable


def _cts_outage(app: Flask) -> EmbeddedTokenService:
    """A real embedded CTS that trusts the dev issuer but fetches its keys from a closed
    loopback port, so it cannot verify anything."""
    dev = dev_provider(app)
    verifier = OIDCVerifier(
        IssuerConfig(
            issuer=dev.issuer,
            audiences=("lockkit-dev",),
            jwks_uri=f"http://127.0.0.1:{_closed_port()}/jwks.json",
            algorithms=("EdDSA",),
            http_timeout=2.0,
        )
    )
    return _replace_token_service(app, verifiers=[verifier])


def test_token_service_outage_answers_503_and_stores_nothing(app: Flask, client: FlaskClient) -> None:
    service = _cts_outage(app)
    token = _mint(app, "alice")
    resp = client.post("/api/notes", json={"body": "x"}, headers=bearer(token))
    assert resp.status_code == 503 and json_of(resp) == {"error": "unavailable"}
    assert client.get("/", headers=bearer(token)).status_code == 200
    assert service.calls == 2  # each request tried, none stored a token
    assert cookie_value(client) is None


def test_token_service_outage_leaves_an_existing_session_unchanged(app: Flask, client: FlaskClient) -> None:
    alice, bob = _mint(app, "alice"), _mint(app, "bob")
    payload = _write(client, alice, "before the outage")
    before = cookie_value(client)
    sealed_before = open_session(app, before)[get_state(app).session_key]
    healthy = get_state(app).token_service

    service = _cts_outage(app)
    resp = client.get("/api/me", headers=bearer(bob))  # needs an exchange the CTS cannot do
    assert resp.status_code == 503 and json_of(resp) == {"error": "unavailable"}
    assert service.calls == 1
    assert client.get("/", headers=bearer(bob)).status_code == 200
    assert open_session(app, cookie_value(client))[get_state(app).session_key] == sealed_before
    # alice's stored token needs no exchange: she keeps working during the outage
    assert _read(client, alice, payload) == (200, {"body": "before the outage"})
    assert service.calls == 2  # only bob's two requests tried

    get_state(app).token_service = healthy
    assert _read(client, bob, payload) == (403, {"error": "DecryptionError"})


# == 5. tampered and replayed cookies ========================================================
def _flip(value: str, index: int) -> str:
    return value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]


def _resign(app: Flask, data: dict[str, Any]) -> str:
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    return str(serializer.dumps(data))


def test_tampered_session_cookie_gives_no_lock_context(app: Flask, client: FlaskClient) -> None:
    token = _mint(app, "alice")
    payload = _write(client, token, "tamper-proof")
    cookie = cookie_value(client)
    assert cookie is not None
    bad = _flip(cookie, len(cookie) // 3)

    replay = app.test_client()
    replay.set_cookie("session", bad)
    resp = replay.post("/api/notes/read", json={"payload": payload})
    assert resp.status_code == 401 and json_of(resp) == {"error": "missing"}

    replay = app.test_client()
    replay.set_cookie("session", bad)
    assert _read(replay, token, payload) == (200, {"body": "tamper-proof"})
    assert exchanges(app) == 2  # the tampered cookie was ignored: a fresh exchange


def test_tampered_sealed_value_in_a_validly_signed_cookie_is_ignored(app: Flask, client: FlaskClient) -> None:
    token = _mint(app, "alice")
    client.get("/api/me", headers=bearer(token))
    key = get_state(app).session_key
    session = open_session(app, cookie_value(client))
    session[key] = _flip(session[key], 20)

    forged = app.test_client()
    forged.set_cookie("session", _resign(app, session))
    assert stored_cts(app, cookie_value(forged)) is None
    assert forged.get("/api/me").status_code == 401
    assert forged.get("/api/me", headers=bearer(token)).status_code == 200
    assert exchanges(app) == 2


def test_replayed_cookie_after_sign_out_gives_no_lock_context(app: Flask, client: FlaskClient) -> None:
    token = _mint(app, "alice")
    payload = _write(client, token, "signed out")
    captured = cookie_value(client)
    assert captured is not None and stored_cts(app, captured) is not None
    assert client.get("/").status_code == 200  # sign-out: no credential
    assert stored_cts(app, cookie_value(client)) is None

    for credential in (None, _expired(app), "x.y.z"):
        replay = app.test_client()
        replay.set_cookie("session", captured)
        status, body = _read(replay, credential, payload)
        assert status == 401 and body["error"] in ("missing", "expired", "invalid")
    assert exchanges(app) == 1


def test_a_sealed_value_from_another_secret_key_does_not_unseal(app: Flask) -> None:
    other = make_app(LOCKKIT_KEYRING_JSON=app.config["LOCKKIT_KEYRING_JSON"])
    sealed = get_state(app).sealer.seal(SESSION_PURPOSE, {"tok": "x", "exp": 1, "sub": "alice", "ns": "n"})
    assert get_state(app).sealer.unseal(SESSION_PURPOSE, sealed) is not None
    assert get_state(other).sealer.unseal(SESSION_PURPOSE, sealed) is None
    assert get_state(app).sealer.unseal("dev-id-token", sealed) is None  # purpose is bound too

    # end to end: A's session re-signed with B's key still gives B nothing to use
    client = app.test_client()
    client.get("/api/me", headers=bearer(_mint(app, "alice")))
    moved = other.test_client()
    moved.set_cookie("session", _resign(other, open_session(app, cookie_value(client))))
    assert stored_cts(other, cookie_value(moved)) is None
    assert moved.get("/api/me").status_code == 401
    assert moved.get("/api/me", headers=bearer(dev_provider(other).mint("alice"))).status_code == 200
    assert exchanges(other) == 1


# == 6. concurrent first requests ============================================================
def test_concurrent_first_requests_for_one_user(app: Flask) -> None:
    token = _mint(app, "alice")
    payload = _write(app.test_client(), token, "shared by 8 sessions")
    start = threading.Barrier(8)

    def first_request(_: int) -> tuple[int, dict[str, Any], int, int]:
        client = app.test_client()
        start.wait(timeout=10)
        status, body = _read(client, token, payload)
        again = _read(client, token, payload)[0]
        stored = stored_cts(app, cookie_value(client))
        return status, body, again, 1 if stored and stored["sub"] == "alice" else 0

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(first_request, range(8)))
    assert results == [(200, {"body": "shared by 8 sessions"}, 200, 1)] * 8
    assert exchanges(app) == 1 + 8  # one per new session, none for the second requests


# == 7. two apps in one process ==============================================================
def test_two_apps_with_different_keyrings_and_providers(idp: LocalIssuer) -> None:
    ext = LockKit(plugin_manager=plugin_manager())  # one extension object, two apps
    app_a = make_app(extension=ext)
    app_b = make_app(extension=ext, **loopback_config(idp))
    assert get_state(app_a) is not get_state(app_b)
    a, b = app_a.test_client(), app_b.test_client()
    token_a, token_b = _mint(app_a, "alice"), idp.mint("alice", ttl=600)

    pa, pb = _write(a, token_a, "in A"), _write(b, token_b, "in B")
    assert _read(a, token_a, pa) == (200, {"body": "in A"})
    assert _read(b, token_b, pb) == (200, {"body": "in B"})
    assert (exchanges(app_a), exchanges(app_b)) == (1, 1)
    # each app only trusts its own provider, and cannot open the other's payloads
    assert b.get("/api/me", headers=bearer(token_a)).status_code == 401
    assert _read(a, token_a, pb) == (403, {"error": "DecryptionError"})

    # A's CTS token: its session cookie is refused by B, and the raw token is useless there
    stored = stored_cts(app_a, cookie_value(a))
    assert stored is not None
    moved = app_b.test_client()
    moved.set_cookie("session", cast(str, cookie_value(a)))
    assert moved.get("/api/me", headers=bearer(token_b)).status_code == 200
    assert exchanges(app_b) == 2
    foreign = LockContext(cts_token=CtsToken(stored["tok"], stored["exp"]))
    with app_b.app_context():
        client_b = get_state(app_b).encryption([NOTES])
        op = client_b.encrypt("smuggled", column=NOTES.body, table=NOTES).with_lock_context(foreign)
        assert op.failure is not None and op.failure.type == "LockContextError"
        assert client_b.decrypt(pb).with_lock_context(foreign).failure is not None


def test_a_cts_token_from_another_workspace_is_refused(app: Flask) -> None:
    other = make_app(LOCKKIT_WORKSPACE_CRN="crn:local:ws-other")
    client = app.test_client()
    client.get("/api/me", headers=bearer(_mint(app, "alice")))
    stored = stored_cts(app, cookie_value(client))
    assert stored is not None
    foreign = LockContext(cts_token=CtsToken(stored["tok"], stored["exp"]))
    op = get_state(other).encryption([NOTES]).encrypt("x", column=NOTES.body, table=NOTES).with_lock_context(foreign)
    assert op.failure is not None and op.failure.type == "LockContextError"
    assert get_state(other).settings.workspace_crn != WORKSPACE


# == 8. cookie attributes ====================================================================
def _session_set_cookie(resp: Any) -> str:
    headers = set_cookie_headers(resp)
    assert len(headers) == 1, resp.headers.getlist("Set-Cookie")
    return headers[0]


def test_production_cookie_is_secure_httponly_lax(idp: LocalIssuer) -> None:
    app = make_app(TESTING=False, DEBUG=False, **loopback_config(idp))
    assert not app.debug and not app.testing
    resp = app.test_client().get("/api/me", headers=bearer(idp.mint("alice")))
    assert resp.status_code == 200
    header = _session_set_cookie(resp)
    attributes = {part.strip().split("=")[0].lower(): part for part in header.split(";")[1:]}
    assert "secure" in attributes and "httponly" in attributes
    assert attributes["samesite"].strip() == "SameSite=Lax"
    assert len(header) < 4096


def test_testing_cookie_is_httponly_lax_but_not_secure(app: Flask) -> None:
    resp = app.test_client().get("/api/me", headers=bearer(_mint(app, "alice")))
    header = _session_set_cookie(resp)
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header


def test_insecure_cookies_must_be_asked_for(idp: LocalIssuer) -> None:
    app = make_app(TESTING=False, DEBUG=False, LOCKKIT_INSECURE_COOKIES=True, **loopback_config(idp))
    assert not app.config.get("SESSION_COOKIE_SECURE")


def test_session_cookie_stays_small_after_an_exchange(app: Flask) -> None:
    client = app.test_client()
    assert dev_sign_in(client, "a" * 64, "/notes").status_code == 302  # the largest dev identity
    resp = client.get("/notes")
    assert resp.status_code == 200 and exchanges(app) == 1
    header = _session_set_cookie(resp)
    assert len(header) < 4096
    session = open_session(app, cookie_value(client))
    assert get_state(app).session_key in session and "_lockkit_dev" in session


# == 9. CLI ==================================================================================
def test_flask_lockkit_works_on_the_apps_own_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flask lockkit keys ...`` reads the app's config (as the running app does), not a
    lockkit.toml that happens to be in the working directory."""
    mine, other = tmp_path / "app-keyring.json", tmp_path / "cwd" / ".lockkit" / "keyring.json"
    Keyring.generate(WORKSPACE).save(mine)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for var in [v for v in os.environ if v.startswith("LOCKKIT_") or v == "CS_WORKSPACE_CRN"]:
        monkeypatch.delenv(var)
    assert main(["init", "--workspace-crn", "crn:local:ws-somebody-else"]) == 0  # a decoy in the cwd
    app = make_app(LOCKKIT_KEYRING_JSON=None, LOCKKIT_KEYRING=str(mine))
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["lockkit", "keys", "list"])
    assert listed.exit_code == 0 and f"workspace {WORKSPACE}" in listed.output, listed.output
    assert runner.invoke(args=["lockkit", "keys", "rotate"]).exit_code == 0
    assert [v.version for v in Keyring.load(mine).versions()] == [1, 2]
    assert [v.version for v in Keyring.load(other).versions()] == [1]


def test_flask_lockkit_help(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["lockkit", "--help"])
    assert result.exit_code == 0, result.output
    assert "identity-bound encryption" in result.output
    for command in ("init", "keys"):
        assert command in result.output


@pytest.mark.parametrize(("referer", "back_to"), [
    ("http://localhost/notes/new?draft=1", "/notes/new?draft=1"),
    ("https://evil.example/notes/new", "/"),
    (None, "/"),
])
def test_a_refused_form_post_returns_to_the_page_that_sent_it(referer: str | None, back_to: str) -> None:
    """Sign-in (or a token refresh) sends the browser back with a GET: for a refused POST that
    is the same-origin page that sent it, else "/", never the post's own path (a 405)."""
    from urllib.parse import parse_qs, urlsplit

    app = make_app()

    @app.post("/notes/save")
    @lock_context_required
    def save() -> str:
        return "saved"

    headers = {"Referer": referer} if referer else {}
    resp = app.test_client().post("/notes/save", headers=headers)
    assert resp.status_code == 302
    assert parse_qs(urlsplit(resp.headers["Location"]).query)["next"] == [back_to]
    page = app.test_client().get("/notes?x=1")
    assert parse_qs(urlsplit(page.headers["Location"]).query)["next"] == ["/notes?x=1"]


def test_a_table_declared_anew_with_other_columns_gets_its_own_client() -> None:
    """``get_state().encryption([...])`` caches clients by table names: a table redefined under
    the same name (an app that builds its schema per request, a reload) gets a client for the
    new definition instead of "not the one declared"."""
    from lockkit import encrypted_column, encrypted_table

    app = make_app()
    with app.app_context():
        state = get_state(app)
        first = encrypted_table("things", a=encrypted_column("a"))
        same = encrypted_table("things", a=encrypted_column("a"))
        other = encrypted_table("things", a=encrypted_column("a"), b=encrypted_column("b").data_type("int"))
        client = state.encryption([first])
        assert state.encryption([first]) is client and state.encryption([same]) is client
        fresh = state.encryption([other])
        assert fresh is not client and fresh.table("things") is other
