"""The Flask kit on a server-side session store: Flask-Session on a real Redis
(127.0.0.1:6379). The CTS token lives in Redis, sealed; the cookie holds only a session id;
two app instances ("app servers") sharing Redis share sign-ins without extra exchanges."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask_session import Session  # type: ignore[import-untyped]

from lockkit.flask import get_state

from .flask_support import (
    bearer,
    cookie_value,
    dev_provider,
    dev_sign_in,
    exchanges,
    form_field,
    json_of,
    make_app,
    new_keyring_json,
    open_session,
    stored_cts,
)

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    """A client for the Redis on loopback; skips when no server answers."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
        client.close()
        pytest.skip(reason=f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT} ({err})")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"lockkit-test:{secrets.token_hex(6)}:"
    yield value
    keys = list(redis_client.scan_iter(match=f"{value}*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def shared_config(redis_client: redis.Redis, prefix: str) -> dict[str, Any]:
    """What every app server of one deployment shares: secret, keyring and session store."""
    return {
        "SECRET_KEY": secrets.token_urlsafe(32),
        "LOCKKIT_KEYRING_JSON": new_keyring_json(),
        "SESSION_TYPE": "redis",
        "SESSION_REDIS": redis_client,
        "SESSION_KEY_PREFIX": prefix,
    }


def _server(config: dict[str, Any]) -> Flask:
    app = make_app(**config)
    Session(app)
    return app


def test_cts_token_is_stored_sealed_in_redis_and_the_cookie_holds_only_an_id(
    redis_client: redis.Redis, prefix: str, shared_config: dict[str, Any]
) -> None:
    app = _server(shared_config)
    client = app.test_client()
    resp = client.get("/api/me", headers=bearer(dev_provider(app).mint("alice")))
    assert resp.status_code == 200 and exchanges(app) == 1

    sid = cookie_value(client)
    assert sid is not None and len(sid) < 100
    stored = stored_cts(app, sid)
    assert stored is not None and stored["sub"] == "alice"
    sealed = open_session(app, sid)[get_state(app).session_key]
    assert sealed not in sid and stored["tok"] not in sid

    raw = redis_client.get(prefix + sid)
    assert isinstance(raw, bytes)
    assert sealed.encode() in raw  # the session data is in Redis ...
    for part in stored["tok"].split(".")[1:]:
        assert part.encode() not in raw  # ... with the CTS token only in sealed form
    assert 0 < int(redis_client.ttl(prefix + sid))  # and it expires


def test_two_app_servers_share_a_sign_in_through_redis(shared_config: dict[str, Any]) -> None:
    server1, server2 = _server(shared_config), _server(shared_config)
    browser1 = server1.test_client()
    assert dev_sign_in(browser1, "alice", "/notes").status_code == 302
    assert browser1.get("/notes").status_code == 200
    assert exchanges(server1) == 1
    payload = json_of(browser1.post("/api/notes", json={"body": "written on server 1"}))["payload"]
    sid = cookie_value(browser1)
    assert sid is not None

    # the same browser's next request lands on server 2
    browser2 = server2.test_client()
    browser2.set_cookie("session", sid)
    resp = browser2.post("/api/notes/read", json={"payload": payload})
    assert resp.status_code == 200 and json_of(resp) == {"body": "written on server 1"}
    assert exchanges(server2) == 0
    assert browser2.get("/notes").status_code == 200
    assert exchanges(server2) == 0 and exchanges(server1) == 1


def test_sign_out_on_one_server_signs_out_everywhere(shared_config: dict[str, Any]) -> None:
    server1, server2 = _server(shared_config), _server(shared_config)
    browser1 = server1.test_client()
    dev_sign_in(browser1, "alice", "/notes")
    assert browser1.get("/notes").status_code == 200
    sid = cookie_value(browser1)
    assert sid is not None

    browser2 = server2.test_client()
    browser2.set_cookie("session", sid)
    csrf = form_field(browser2.get("/lockkit/dev/login").get_data(as_text=True), "csrf")
    assert browser2.post("/lockkit/dev/logout", data={"csrf": csrf}).status_code == 302

    replay = server1.test_client()
    replay.set_cookie("session", sid)  # the old session id, replayed on server 1
    assert replay.get("/api/me").status_code == 401
    assert stored_cts(server1, sid) is None


def test_servers_with_another_secret_key_cannot_use_the_stored_token(shared_config: dict[str, Any]) -> None:
    server1 = _server(shared_config)
    stranger = _server({**shared_config, "SECRET_KEY": secrets.token_urlsafe(32)})
    browser = server1.test_client()
    token = dev_provider(server1).mint("alice")
    assert browser.get("/api/me", headers=bearer(token)).status_code == 200
    sid = cookie_value(browser)
    assert sid is not None and stored_cts(server1, sid) is not None

    # same Redis, same session id, but a different SECRET_KEY: the sealed token is opaque
    assert stored_cts(stranger, sid) is None
    other = stranger.test_client()
    other.set_cookie("session", sid)
    assert other.get("/api/me").status_code == 401
    assert other.get("/api/me", headers=bearer(dev_provider(stranger).mint("alice"))).status_code == 200
    assert exchanges(stranger) == 1


def test_dev_sign_in_issues_a_new_session_id(shared_config: dict[str, Any]) -> None:
    app = _server(shared_config)
    browser = app.test_client()
    browser.get("/lockkit/dev/login")  # the sign-in form stores its CSRF token: a session exists
    before = cookie_value(browser)
    assert before is not None
    assert dev_sign_in(browser, "alice").status_code == 302
    after = cookie_value(browser)
    assert after is not None and after != before
    planted = app.test_client()  # whoever planted the pre-login id holds no identity
    planted.set_cookie("session", before)
    assert planted.get("/api/me").status_code == 401
    assert browser.get("/api/me").status_code == 200


def test_a_first_sign_in_by_bearer_gets_a_new_session_id(redis_client: redis.Redis, prefix: str,
                                                          shared_config: dict[str, Any]) -> None:
    """With a provider that has no sign-in route of its own (Clerk: the identity arrives on
    each request), the exchange that first stores a CTS token gives the session a new id: one
    planted in the browser beforehand is not the one it is signed in with."""
    app = _server(shared_config)
    attacker = app.test_client()
    attacker.get("/lockkit/dev/login")  # any page that stores something: a session id exists
    planted = cookie_value(attacker)
    assert planted is not None and redis_client.exists(prefix + planted)
    victim = app.test_client()
    victim.set_cookie("session", planted)
    token = dev_provider(app).mint("alice")
    assert victim.get("/api/me", headers=bearer(token)).status_code == 200
    now = cookie_value(victim)
    assert now is not None and now != planted
    assert not redis_client.exists(prefix + planted)  # the planted id is gone from the store
    assert stored_cts(app, now)["sub"] == "alice"  # type: ignore[index]
    # steady state: the same identity keeps its id
    assert victim.get("/api/me", headers=bearer(token)).status_code == 200 and cookie_value(victim) == now
    # another identity in the same browser: a new id again
    assert victim.get("/api/me", headers=bearer(dev_provider(app).mint("bob"))).status_code == 200
    assert cookie_value(victim) not in (now, planted)


def test_sign_out_gives_the_session_a_new_id(redis_client: redis.Redis, prefix: str, shared_config: dict[str, Any]) -> None:
    """A request still in flight when the user signs out cannot write the signed-in session
    back under the id the browser keeps using."""
    app = _server(shared_config)
    browser = app.test_client()
    dev_sign_in(browser, "alice", "/notes")
    assert browser.get("/notes").status_code == 200
    before = cookie_value(browser)
    assert before is not None
    csrf = form_field(browser.get("/lockkit/dev/login").get_data(as_text=True), "csrf")
    assert browser.post("/lockkit/dev/logout", data={"csrf": csrf}).status_code == 302
    assert not redis_client.exists(prefix + before)
    after = cookie_value(browser)
    assert after != before and (after is None or stored_cts(app, after) is None)
    assert browser.get("/api/me").status_code == 401
