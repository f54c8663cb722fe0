"""Flask's cookie session with each distinct cookie verified once
(``lockkit.flask.cookie_session``): the same answers as Flask's own interface, one full
verification per cookie."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from flask import Flask, session
from flask.sessions import SecureCookieSessionInterface

from lockkit.flask import cookie_session
from lockkit.flask.cookie_session import RememberingCookieSessionInterface

from .flask_support import bearer, cookie_value, dev_provider, make_app


def _app(**config: Any) -> Flask:
    app = make_app(**config)

    @app.get("/s/set/<key>/<value>")
    def set_value(key: str, value: str) -> str:
        session[key] = value
        session.setdefault("items", []).append(value)
        session.modified = True
        return "ok"

    @app.get("/s/get")
    def get_values() -> dict[str, Any]:
        return dict(session)

    @app.get("/s/mutate")
    def mutate_in_place() -> str:  # a nested value changed in place, the session not marked modified
        session.get("items", []).append("leaked")
        return "ok"

    return app


def _interface(app: Flask) -> RememberingCookieSessionInterface:
    interface = app.session_interface
    assert isinstance(interface, RememberingCookieSessionInterface)
    return interface


def test_installed_for_flasks_cookie_session_only() -> None:
    assert type(_app().session_interface) is RememberingCookieSessionInterface
    assert type(_app(LOCKKIT_REMEMBER_COOKIE_SESSIONS=False).session_interface) is SecureCookieSessionInterface


def test_each_cookie_is_verified_once_and_gives_the_same_session() -> None:
    app = _app()
    client = app.test_client()
    client.get("/s/set/a/1")
    interface = _interface(app)
    before = interface.verifications
    answers = [client.get("/s/get").get_json() for _ in range(5)]
    assert answers == [{"a": "1", "items": ["1"]}] * 5
    assert interface.verifications == before + 1  # the first request verified; the others remembered
    # a signed-in user's steady state: the lockkit middleware reads the same cookie each time
    token = dev_provider(app).mint("alice")
    assert client.get("/api/me", headers=bearer(token)).get_json() == {"sub": "alice"}
    n = interface.verifications
    for _ in range(3):
        assert client.get("/api/me", headers=bearer(token)).get_json() == {"sub": "alice"}
    assert interface.verifications == n + 1


def test_a_view_changing_a_nested_value_in_place_changes_nothing_for_the_next_request() -> None:
    app = _app()
    client = app.test_client()
    client.get("/s/set/a/1")
    assert client.get("/s/get").get_json()["items"] == ["1"]
    client.get("/s/mutate")  # not saved: Flask would not send a new cookie either
    assert client.get("/s/get").get_json()["items"] == ["1"]


def test_tampered_forged_and_foreign_cookies_give_a_new_session_and_are_never_remembered() -> None:
    app = _app()
    client = app.test_client()
    client.get("/s/set/a/1")
    good = cookie_value(client)
    assert good is not None
    other = _app()  # another secret key
    other_client = other.test_client()
    other_client.get("/s/set/a/evil")
    foreign = cookie_value(other_client)
    assert foreign is not None
    interface = _interface(app)
    assert client.get("/s/get").get_json() == {"a": "1", "items": ["1"]}
    for bad in (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), foreign, "junk", "." + good):
        client.set_cookie("session", bad)
        assert client.get("/s/get").get_json() == {}
    assert len(interface._memo) == 1  # the good cookie only


def test_an_expired_cookie_is_refused_even_when_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(PERMANENT_SESSION_LIFETIME=dt.timedelta(seconds=60))
    client = app.test_client()
    client.get("/s/set/a/1")
    assert client.get("/s/get").get_json() == {"a": "1", "items": ["1"]}  # remembered now
    real = cookie_session.time.time
    monkeypatch.setattr(cookie_session.time, "time", lambda: real() + 61)
    import itsdangerous.timed

    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() + 61)
    assert client.get("/s/get").get_json() == {}
    monkeypatch.setattr(cookie_session.time, "time", lambda: real() - 3600)  # a clock set back
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() - 3600)
    assert client.get("/s/get").get_json() == {}


def test_a_new_secret_key_verifies_from_scratch() -> None:
    app = _app()
    client = app.test_client()
    client.get("/s/set/a/1")
    assert client.get("/s/get").get_json() == {"a": "1", "items": ["1"]}
    old = app.secret_key
    app.secret_key = "a-new-secret-key-of-enough-length"
    assert client.get("/s/get").get_json() == {}  # signed with the old key: refused
    app.config["SECRET_KEY_FALLBACKS"] = [old]
    assert client.get("/s/get").get_json() == {"a": "1", "items": ["1"]}  # the fallback still verifies


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app()
    interface = _interface(app)
    monkeypatch.setattr(interface, "memo_size", 3)
    client = app.test_client()
    for i in range(6):
        client.get(f"/s/set/k{i}/v{i}")
        client.get("/s/get")
    assert len(interface._memo) == 3


def test_what_the_app_set_on_its_session_interface_is_kept() -> None:
    """An app that set a salt (to keep its cookies apart from another app's with the same
    SECRET_KEY) or a digest on Flask's interface keeps them: a cookie of the other app is
    still refused."""
    import hashlib

    from lockkit.flask import LockKit

    from .flask_support import base_config, plugin_manager

    def build(salt: str | None) -> Flask:
        app = Flask(__name__)
        app.config.update(base_config(SECRET_KEY="one-secret-shared-by-two-apps-0123456789"))
        if salt is not None:
            app.session_interface.salt = salt  # type: ignore[attr-defined]
            app.session_interface.digest_method = hashlib.sha256  # type: ignore[attr-defined]

        @app.get("/login")
        def login() -> str:
            session["user"] = "admin"
            return "ok"

        @app.get("/who")
        def who() -> dict[str, Any]:
            return {"user": session.get("user")}

        LockKit(app, plugin_manager=plugin_manager())
        return app

    app_a, app_b = build(None), build("app-b-session")
    interface = _interface(app_b)
    assert interface.salt == "app-b-session" and interface.digest_method is hashlib.sha256
    a = app_a.test_client()
    a.get("/login")
    b = app_b.test_client()
    b.set_cookie("session", cookie_value(a) or "")
    assert b.get("/who").get_json() == {"user": None}


def test_works_without_the_fallbacks_setting_of_older_flask() -> None:
    """Flask 3.0 has no SECRET_KEY_FALLBACKS in its config (pyproject allows flask>=3.0): a
    session cookie must still open (it raised KeyError: every signed-in request a 500)."""
    app = _app()
    client = app.test_client()
    client.get("/s/set/a/1")
    assert client.get("/s/get").get_json() == {"a": "1", "items": ["1"]}  # verified, remembered
    del app.config["SECRET_KEY_FALLBACKS"]  # as on Flask 3.0 (whose own signer never reads it)
    assert client.get("/s/get").get_json() == {"a": "1", "items": ["1"]}
