"""The generic OpenID Connect provider (``lockkit-oidc``) against a real OpenID provider
(panva's oidc-provider on 127.0.0.1, see ``op_fixture.py``): sign-in end to end with PKCE,
``state`` and ``nonce``, sealed session tokens, bearer access tokens, refresh, sign-out at the
OP, signing-key rotation, and configuration/outage errors."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jwt
import pytest
import requests
from cachelib import FileSystemCache
from flask import Flask
from flask_session import Session  # type: ignore[import-untyped]
from flask.testing import FlaskClient

from lockkit import ConfigurationError, InvalidCredentialError, ProviderUnavailableError
from lockkit.flask import get_state
from lockkit.plugins import identity_provider_classes, make_plugin_manager
from lockkit.testing import LocalIssuer
from lockkit.provider import safe_next as _safe_next
from lockkit_oidc import OIDCProvider, OIDCSettings

from .op_fixture import provider_of as _provider_of
from .op_fixture import unsealed_entry
from .op_fixture import (
    API_AUDIENCE,
    APP_ORIGIN,
    OTHER_AUDIENCE,
    SHORT_CLIENT,
    WEB_CLIENT,
    OPServer,
    bearer,
    drive_to_app,
    lockkit_app,
    make_op,
    new_signing_key,
    op,
    sign_in,
    spa_access_token,
)

__all__ = ["make_op", "op"]  # fixtures used by name


def oidc_config(server: OPServer, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "LOCKKIT_OIDC_ISSUER": server.issuer,
        "LOCKKIT_OIDC_CLIENT_ID": WEB_CLIENT,
        "LOCKKIT_OIDC_CLIENT_SECRET": server.web_secret,
        "LOCKKIT_OIDC_AUDIENCE": API_AUDIENCE,
        # a spec-strict OP (this one) grants offline_access only with prompt=consent
        "LOCKKIT_OIDC_AUTHORIZE_PARAMS": {"prompt": "consent"},
    }
    config.update(extra)
    return config


@pytest.fixture
def app(op: OPServer) -> Flask:
    return lockkit_app("oidc", **oidc_config(op))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def provider_of(app: Flask) -> OIDCProvider:
    provider: OIDCProvider = _provider_of(app, OIDCProvider)
    return provider


def stored_tokens(app: Flask, client: FlaskClient, key: str = "_lockkit_oidc") -> dict[str, Any] | None:
    """The provider's sealed session entry, unsealed (``None`` when absent)."""
    return unsealed_entry(app, client, key, "lockkit-oidc-tokens")


def session_dump(client: FlaskClient) -> str:
    with client.session_transaction() as sess:
        return json.dumps(dict(sess))


# -- plugin and configuration ---------------------------------------------------------------
def test_entry_point_registers_the_provider() -> None:
    assert identity_provider_classes(make_plugin_manager())["oidc"] is OIDCProvider


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "LOCKKIT_OIDC_ISSUER"),
        ({"LOCKKIT_OIDC_ISSUER": "https://idp.example"}, "LOCKKIT_OIDC_CLIENT_ID"),
        ({"LOCKKIT_OIDC_ISSUER": "http://idp.example", "LOCKKIT_OIDC_CLIENT_ID": "c"}, "https://"),
        ({"LOCKKIT_OIDC_ISSUER": "https://idp.example", "LOCKKIT_OIDC_CLIENT_ID": "c", "LOCKKIT_OIDC_SCOPES": "profile"}, "openid"),
        ({"LOCKKIT_OIDC_ISSUER": "https://idp.example", "LOCKKIT_OIDC_CLIENT_ID": "c", "LOCKKIT_OIDC_ALGORITHMS": "HS256"}, "HS256"),
        ({"LOCKKIT_OIDC_ISSUER": "https://idp.example", "LOCKKIT_OIDC_CLIENT_ID": "c",
          "LOCKKIT_OIDC_AUTHORIZE_PARAMS": {"state": "fixed"}}, "AUTHORIZE_PARAMS"),
        ({"LOCKKIT_OIDC_ISSUER": "https://idp.example", "LOCKKIT_OIDC_CLIENT_ID": "c", "LOCKKIT_OIDC_LEEWAY": "soon"}, "LEEWAY"),
    ],
)
def test_configuration_errors_name_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        OIDCProvider.from_config(config)


def test_settings_defaults_and_secret_hidden() -> None:
    settings = OIDCSettings.from_config(
        {"LOCKKIT_OIDC_ISSUER": "https://idp.example", "LOCKKIT_OIDC_CLIENT_ID": "c", "LOCKKIT_OIDC_CLIENT_SECRET": "s3cr3t",
         "LOCKKIT_OIDC_ALGORITHMS": "RS256, ES256"}
    )
    assert settings.scopes == ("openid", "profile", "email", "offline_access")
    assert settings.algorithms == ("RS256", "ES256")
    assert settings.discovery_url == "https://idp.example/.well-known/openid-configuration"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in repr(OIDCProvider(settings))


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("/notes?x=1", "/notes?x=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_next_is_relative_only(given: str | None, safe: str) -> None:
    assert _safe_next(given) == safe


# -- sign-in end to end ---------------------------------------------------------------------
def test_sign_in_end_to_end(op: OPServer, app: Flask, client: FlaskClient) -> None:
    assert client.get("/notes").status_code == 302  # signed out: sent to sign in
    start = client.get("/lockkit/oidc/login", query_string={"next": "/notes"})
    assert start.status_code == 302
    auth = urlsplit(start.headers["Location"])
    params = {k: v[0] for k, v in parse_qs(auth.query).items()}
    assert f"{auth.scheme}://{auth.netloc}{auth.path}" == op.discovery()["authorization_endpoint"]
    assert params["response_type"] == "code" and params["client_id"] == WEB_CLIENT
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) >= 43
    assert params["state"] and params["nonce"] and params["prompt"] == "consent"
    assert set(params["scope"].split()) == {"openid", "profile", "email", "offline_access"}
    assert params["redirect_uri"] == f"{APP_ORIGIN}/lockkit/oidc/callback"

    back = drive_to_app(start.headers["Location"], "alice")
    done = client.get(back[len(APP_ORIGIN):])
    assert done.status_code == 302 and done.headers["Location"] == "/notes"

    stored = stored_tokens(app, client)
    assert stored is not None and stored["sub"] == "alice" and stored["rt"]
    claims = jwt.decode(stored["id"], options={"verify_signature": False})
    assert claims["aud"] == WEB_CLIENT and claims["iss"] == op.issuer and claims["nonce"] == params["nonce"]
    dump = session_dump(client)  # the session holds the tokens only sealed
    assert stored["id"] not in dump and stored["rt"] not in dump
    assert not any(key.startswith("_state_") for key in json.loads(dump))  # Authlib's state is spent

    page = client.get("/notes")
    assert page.status_code == 200
    assert page.get_json() == {"sub": "alice", "plain": "note of alice", "locked": True}
    assert provider_of(app).verify(stored["id"]) is not None


def test_state_is_checked_and_single_use(op: OPServer, app: Flask, client: FlaskClient) -> None:
    start = client.get("/lockkit/oidc/login")
    back = urlsplit(drive_to_app(start.headers["Location"], "alice"))
    query = parse_qs(back.query)
    tampered = {**{k: v[0] for k, v in query.items()}, "state": query["state"][0] + "x"}
    refused = client.get(f"{back.path}?{urlencode(tampered)}")
    assert refused.status_code == 400 and b"Sign-in failed" in refused.data
    assert stored_tokens(app, client) is None

    missing = {k: v[0] for k, v in query.items() if k != "state"}
    assert client.get(f"{back.path}?{urlencode(missing)}").status_code == 400
    assert stored_tokens(app, client) is None
    assert client.get("/notes").status_code == 302


def test_callback_replay_is_refused(op: OPServer, app: Flask, client: FlaskClient) -> None:
    start = client.get("/lockkit/oidc/login")
    back = drive_to_app(start.headers["Location"], "alice")
    assert client.get(back[len(APP_ORIGIN):]).status_code == 302
    other = app.test_client()  # another browser presenting the same code and state
    assert other.get(back[len(APP_ORIGIN):]).status_code == 400
    assert stored_tokens(app, other) is None


def test_op_refuses_authorization_without_pkce(op: OPServer, app: Flask, client: FlaskClient) -> None:
    start = urlsplit(client.get("/lockkit/oidc/login").headers["Location"])
    params = {k: v[0] for k, v in parse_qs(start.query).items() if not k.startswith("code_challenge")}
    back = urlsplit(drive_to_app(urlunsplit(start._replace(query=urlencode(params))), "alice"))
    assert parse_qs(back.query)["error"] == ["invalid_request"]  # the OP sends an error back
    assert client.get(f"{back.path}?{back.query}").status_code == 400
    assert stored_tokens(app, client) is None


def _tamper_state_data(client: FlaskClient, field: str, value: str) -> None:
    with client.session_transaction() as sess:
        keys = [k for k in sess if k.startswith("_state_lockkit_oidc_")]
        assert len(keys) == 1
        entry = dict(sess[keys[0]])
        entry["data"] = {**entry["data"], field: value}
        sess[keys[0]] = entry


def test_wrong_code_verifier_is_refused_by_the_op(op: OPServer, app: Flask, client: FlaskClient) -> None:
    start = client.get("/lockkit/oidc/login")
    back = drive_to_app(start.headers["Location"], "alice")
    _tamper_state_data(client, "code_verifier", "A" * 64)
    before = op.events()["grants"].get("authorization_code", 0)
    assert client.get(back[len(APP_ORIGIN):]).status_code == 400
    assert op.events()["grants"].get("authorization_code", 0) == before
    assert stored_tokens(app, client) is None


def test_wrong_nonce_is_refused(op: OPServer, app: Flask, client: FlaskClient) -> None:
    start = client.get("/lockkit/oidc/login")
    back = drive_to_app(start.headers["Location"], "alice")
    _tamper_state_data(client, "nonce", "not-the-nonce")
    assert client.get(back[len(APP_ORIGIN):]).status_code == 400  # code was exchanged, ID token refused
    assert stored_tokens(app, client) is None


def test_denied_sign_in_shows_an_error(op: OPServer, app: Flask, client: FlaskClient) -> None:
    start = client.get("/lockkit/oidc/login")
    back = urlsplit(drive_to_app(start.headers["Location"], deny=True))
    assert parse_qs(back.query)["error"] == ["access_denied"]
    page = client.get(f"{back.path}?{back.query}")
    assert page.status_code == 400 and b"/lockkit/oidc/login" in page.data
    assert stored_tokens(app, client) is None


def test_pending_sign_ins_are_capped(op: OPServer, app: Flask, client: FlaskClient) -> None:
    starts = [client.get("/lockkit/oidc/login").headers["Location"] for _ in range(6)]
    with client.session_transaction() as sess:
        assert len([k for k in sess if k.startswith("_state_lockkit_oidc_")]) == 3
    oldest = drive_to_app(starts[0], "alice")
    assert client.get(oldest[len(APP_ORIGIN):]).status_code == 400  # lapsed
    newest = drive_to_app(starts[-1], "alice")
    assert client.get(newest[len(APP_ORIGIN):]).status_code == 302
    assert stored_tokens(app, client) is not None


def test_next_after_sign_in_is_never_off_site(op: OPServer, client: FlaskClient) -> None:
    done = sign_in(client, "alice", next_url="https://evil.example/phish")
    assert done.status_code == 302 and done.headers["Location"] == "/"
    with client.application.test_request_context():
        url = provider_of(client.application).login_url("//evil.example")
    assert url == "/lockkit/oidc/login?next=/"


def test_tampered_sealed_tokens_sign_the_user_out(op: OPServer, app: Flask, client: FlaskClient) -> None:
    sign_in(client, "alice")
    with client.session_transaction() as sess:
        raw = sess["_lockkit_oidc"]
        sess["_lockkit_oidc"] = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    assert client.get("/notes").status_code == 302
    assert stored_tokens(app, client) is None


def test_server_side_session_gets_a_new_id_at_sign_in(op: OPServer, tmp_path: Path) -> None:
    app = lockkit_app("oidc", **oidc_config(op, SESSION_TYPE="cachelib",
                                             SESSION_CACHELIB=FileSystemCache(str(tmp_path), threshold=100)))
    Session(app)
    client = app.test_client()
    start = client.get("/lockkit/oidc/login", query_string={"next": "/notes"})
    before = client.get_cookie("session")
    assert before is not None
    back = drive_to_app(start.headers["Location"], "alice")
    assert client.get(back[len(APP_ORIGIN):]).status_code == 302
    after = client.get_cookie("session")
    assert after is not None and after.value != before.value
    assert len(after.value) < 100  # only the session id travels; the sealed tokens stay server-side
    assert client.get("/notes").get_json()["sub"] == "alice"
    stale = app.test_client()  # a browser still holding the pre-login id is not signed in
    stale.set_cookie("session", before.value)
    assert stale.get("/notes").status_code == 302


# -- bearer access tokens -------------------------------------------------------------------
def test_bearer_access_token_for_the_api(op: OPServer, app: Flask, client: FlaskClient) -> None:
    alice = spa_access_token(op, "alice")
    header = jwt.get_unverified_header(alice["access_token"])
    assert header["typ"] == "at+jwt"
    assert jwt.decode(alice["access_token"], options={"verify_signature": False})["aud"] == API_AUDIENCE

    api = app.test_client()
    me = api.get("/api/me", headers=bearer(alice["access_token"]))
    assert me.status_code == 200 and me.get_json() == {"sub": "alice"}

    # a note written in alice's browser session opens with alice's API token, not bob's
    sign_in(client, "alice")
    payload = client.post("/api/notes", json={"body": "alice's secret"}).get_json()["payload"]
    read = api.post("/api/notes/read", json={"payload": payload}, headers=bearer(alice["access_token"]))
    assert read.status_code == 200 and read.get_json() == {"body": "alice's secret"}
    bob = spa_access_token(op, "bob")
    denied = app.test_client().post("/api/notes/read", json={"payload": payload}, headers=bearer(bob["access_token"]))
    assert denied.status_code == 403 and denied.get_json() == {"error": "DecryptionError"}


def test_bearer_tokens_of_the_wrong_kind_are_refused(op: OPServer, app: Flask) -> None:
    tokens = spa_access_token(op, "alice")
    other = spa_access_token(op, "alice", resource=OTHER_AUDIENCE)
    for token in (tokens["id_token"], other["access_token"], "not.a.token"):
        resp = app.test_client().get("/api/me", headers=bearer(token))
        assert resp.status_code == 401 and resp.get_json() == {"error": "invalid"}
    assert app.test_client().get("/api/me").get_json() == {"error": "missing"}
    with pytest.raises(InvalidCredentialError, match="not meant for this application"):
        provider_of(app).verify_access_token(tokens["id_token"])


def test_bearer_tokens_need_an_audience(op: OPServer) -> None:
    config = oidc_config(op)
    del config["LOCKKIT_OIDC_AUDIENCE"]
    app = lockkit_app("oidc", **config)
    token = spa_access_token(op, "alice")["access_token"]
    assert app.test_client().get("/api/me", headers=bearer(token)).get_json() == {"error": "missing"}
    with app.test_request_context(headers=bearer(token)), pytest.raises(InvalidCredentialError, match="not meant"):
        provider_of(app).verify(token)


def test_other_issuers_tokens_are_left_to_other_providers(op: OPServer, app: Flask, idp: LocalIssuer) -> None:
    foreign = idp.mint("alice")
    provider = provider_of(app)
    assert provider.verify_id_token(foreign) is None
    assert provider.verify_access_token(foreign) is None
    with app.test_request_context(headers=bearer(foreign)):
        assert provider.verify(foreign) is None


# -- refresh --------------------------------------------------------------------------------
def test_expiring_id_token_is_refreshed(op: OPServer) -> None:
    app = lockkit_app("oidc", **oidc_config(op, LOCKKIT_OIDC_CLIENT_ID=SHORT_CLIENT))
    client = app.test_client()
    assert sign_in(client, "carol").status_code == 302
    first = stored_tokens(app, client)
    assert first is not None
    claims = jwt.decode(first["id"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 30  # shorter than the kit's 60 s refresh window

    refreshes = op.events()["grants"].get("refresh_token", 0)
    page = client.get("/notes")
    assert page.status_code == 200 and page.get_json()["sub"] == "carol"
    assert op.events()["grants"].get("refresh_token", 0) == refreshes + 1
    second = stored_tokens(app, client)
    assert second is not None and second["id"] != first["id"] and second["sub"] == "carol"
    assert second["rt"]


def test_refresh_happens_only_inside_the_window(op: OPServer, app: Flask, client: FlaskClient) -> None:
    sign_in(client, "dave")
    stored = stored_tokens(app, client)
    assert stored is not None
    provider = provider_of(app)
    before = op.events()["grants"].get("refresh_token", 0)
    with client:
        client.get("/")
        assert provider.session_token(now=stored["exp"] - 3000) == stored["id"]
        assert op.events()["grants"].get("refresh_token", 0) == before
        fresh = provider.session_token(now=stored["exp"] - 30)
    assert fresh is not None and fresh != stored["id"]
    assert op.events()["grants"].get("refresh_token", 0) == before + 1
    assert provider.verify_id_token(fresh)["sub"] == "dave"  # type: ignore[index]


def test_failed_refresh_signs_out_without_a_loop(op: OPServer) -> None:
    app = lockkit_app("oidc", **oidc_config(op, LOCKKIT_OIDC_CLIENT_ID=SHORT_CLIENT))
    client = app.test_client()
    sign_in(client, "erin")
    stored = stored_tokens(app, client)
    assert stored is not None
    with client.session_transaction() as sess:
        sess["_lockkit_oidc"] = get_state(app).sealer.seal("lockkit-oidc-tokens", {**stored, "rt": "revoked-or-bogus"})
    first = client.get("/notes")
    assert first.status_code == 302 and first.headers["Location"].startswith("/lockkit/oidc/login?next=")
    assert stored_tokens(app, client) is None
    calls = op.events()["grants"].get("refresh_token", 0)
    assert client.get("/notes").status_code == 302  # no second refresh attempt, no loop
    assert op.events()["grants"].get("refresh_token", 0) == calls


# -- sign-out -------------------------------------------------------------------------------
def test_sign_out_ends_the_op_session(op: OPServer, app: Flask, client: FlaskClient) -> None:
    browser = requests.Session()
    sign_in(client, "frank", browser=browser)
    stored = stored_tokens(app, client)
    assert stored is not None
    csrf = client.get("/logout-form").get_data(as_text=True)
    assert client.post("/lockkit/oidc/logout", data={"csrf": "wrong", "next": "/bye"}).status_code == 400
    out = client.post("/lockkit/oidc/logout", data={"csrf": csrf, "next": "/bye"})
    assert out.status_code == 302
    target = urlsplit(out.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == op.discovery()["end_session_endpoint"]
    assert parse_qs(target.query) == {
        "id_token_hint": [stored["id"]],
        "client_id": [WEB_CLIENT],
        "post_logout_redirect_uri": [f"{APP_ORIGIN}/bye"],
    }
    assert stored_tokens(app, client) is None and session_dump(client) == "{}"
    assert client.get("/notes").status_code == 302

    # the browser follows to the OP and confirms; the OP ends its session and comes back
    ends = op.events()["endSessions"]
    page = browser.get(out.headers["Location"], timeout=10)
    assert page.status_code == 200
    form = re.search(r'<form[^>]*action="([^"]+)"', page.text)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
    assert form and xsrf
    confirm = browser.post(
        requests.compat.urljoin(op.issuer, form.group(1)), data={"xsrf": xsrf.group(1), "logout": "yes"},
        allow_redirects=False, timeout=10,
    )
    assert confirm.status_code in (302, 303) and confirm.headers["Location"] == f"{APP_ORIGIN}/bye"
    assert op.events()["endSessions"] == ends + 1

    # signing in again with the same browser: the OP asks for a login (its session is gone)
    start = client.get("/lockkit/oidc/login")
    resp = browser.get(start.headers["Location"], allow_redirects=True, timeout=10)
    assert "prompt: login" in resp.text


def _refresh_grant(op: OPServer, refresh_token: str) -> requests.Response:
    """Use a refresh token at the OP's token endpoint as the web client."""
    return requests.post(op.discovery()["token_endpoint"], timeout=10,
                         data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                         auth=(WEB_CLIENT, op.web_secret))


def test_sign_out_revokes_the_refresh_token(op: OPServer, app: Flask, client: FlaskClient) -> None:
    """A copy of the session cookie taken before sign-out holds the sealed refresh token:
    sign-out revokes it at the OP (RFC 7009), so that copy cannot keep refreshing."""
    assert op.discovery().get("revocation_endpoint")
    sign_in(client, "grace")
    stored = stored_tokens(app, client)
    assert stored is not None and stored["rt"]
    kept = client.get_cookie("session")
    assert kept is not None
    # control: another user, still signed in, can refresh with hers
    other = app.test_client()
    sign_in(other, "heidi")
    theirs = stored_tokens(app, other)
    assert theirs is not None and _refresh_grant(op, theirs["rt"]).status_code == 200

    before = op.events()["revocations"]
    csrf = client.get("/logout-form").get_data(as_text=True)
    assert client.post("/lockkit/oidc/logout", data={"csrf": csrf, "next": "/"}).status_code == 302
    assert op.events()["revocations"] == before + 1
    refused = _refresh_grant(op, stored["rt"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # the copied cookie: its ID token still verifies until it expires, but it can no longer refresh
    thief = app.test_client()
    thief.set_cookie("session", kept.value)
    provider = provider_of(app)
    with thief:
        thief.get("/")
        assert provider.session_token(now=stored["exp"] - 30) is None  # the refresh fails: signed out


def test_sign_out_still_works_when_the_revocation_endpoint_is_down(op: OPServer, app: Flask, client: FlaskClient,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    sign_in(client, "ivan")
    stored = stored_tokens(app, client)
    assert stored is not None
    provider = provider_of(app)
    provider.discovery.metadata()["revocation_endpoint"] = "http://127.0.0.1:9/revoke"  # nothing listens
    try:
        csrf = client.get("/logout-form").get_data(as_text=True)
        with caplog.at_level(logging.WARNING):
            assert client.post("/lockkit/oidc/logout", data={"csrf": csrf, "next": "/"}).status_code == 302
        assert stored_tokens(app, client) is None and session_dump(client) == "{}"
        assert "refresh token not revoked" in caplog.text and stored["rt"] not in caplog.text
    finally:
        provider.discovery.metadata()["revocation_endpoint"] = op.discovery()["revocation_endpoint"]


# -- signing-key rotation -------------------------------------------------------------------
def test_signing_key_rotation_between_logins(make_op: Callable[..., OPServer]) -> None:
    old_key, new_key = new_signing_key(), new_signing_key()
    server = make_op(keys=[old_key])
    app = lockkit_app("oidc", **oidc_config(server, LOCKKIT_OIDC_JWKS_MIN_REFETCH_INTERVAL=0))
    provider = provider_of(app)
    alice = app.test_client()
    sign_in(alice, "alice")
    assert alice.get("/notes").status_code == 200
    old_token = stored_tokens(app, alice)
    assert old_token is not None and jwt.get_unverified_header(old_token["id"])["kid"] == old_key["kid"]

    # rotation: the new key signs, the old one stays published for tokens already issued
    server.restart(keys=[new_key, old_key])
    bob = app.test_client()
    sign_in(bob, "bob")
    new_token = stored_tokens(app, bob)
    assert new_token is not None and jwt.get_unverified_header(new_token["id"])["kid"] == new_key["kid"]
    assert bob.get("/notes").get_json()["sub"] == "bob"  # our JWKS cache refetched on the new kid
    assert alice.get("/notes").get_json()["sub"] == "alice"

    # the old key is retired: new sign-ins still work; a token the old key signed is refused
    # once the JWKS cache turns over (jwks_ttl, 300 s by default), and at once by a fresh cache
    server.restart(keys=[new_key])
    carol = app.test_client()
    sign_in(carol, "carol")
    assert carol.get("/notes").get_json()["sub"] == "carol"
    assert provider.verify_id_token(old_token["id"]) is not None  # still cached: inside the TTL
    with pytest.raises(InvalidCredentialError, match="signing key is not known"):
        provider.verify_id_token(old_token["id"], now=time.time() + 301)
    fresh = provider_of(lockkit_app("oidc", **oidc_config(server)))
    with pytest.raises(InvalidCredentialError, match="signing key is not known"):
        fresh.verify_id_token(old_token["id"])
    assert fresh.verify_id_token(new_token["id"]) is not None
    verifier = provider.discovery.id_verifier
    assert verifier is not None and verifier.jwks is not None and verifier.jwks.fetch_count >= 3


# -- discovery problems ---------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_issuer_is_unavailable_not_a_crash(op: OPServer) -> None:
    issuer = f"http://127.0.0.1:{_closed_port()}"
    app = lockkit_app("oidc", **oidc_config(op, LOCKKIT_OIDC_ISSUER=issuer, LOCKKIT_OIDC_HTTP_TIMEOUT=2))
    client = app.test_client()
    assert client.get("/").status_code == 200  # the app starts and public pages work
    assert client.get("/lockkit/oidc/login").status_code == 503
    forged = jwt.encode({"iss": issuer, "sub": "x", "aud": WEB_CLIENT, "exp": 2**40}, "k" * 32, algorithm="HS256")
    with pytest.raises(ProviderUnavailableError):
        provider_of(app).verify_id_token(forged)
    resp = client.get("/api/me", headers=bearer(forged))
    assert resp.status_code == 503 and resp.get_json() == {"error": "unavailable"}


def test_discovery_issuer_must_match_exactly(op: OPServer) -> None:
    app = lockkit_app("oidc", **oidc_config(op, LOCKKIT_OIDC_ISSUER=op.issuer + "/"))
    with pytest.raises(ConfigurationError, match="trailing slash"):
        provider_of(app).discovery.metadata()
    assert app.test_client().get("/lockkit/oidc/login").status_code == 503


def test_pinned_algorithms_must_be_ones_the_op_uses(op: OPServer) -> None:
    app = lockkit_app("oidc", **oidc_config(op, LOCKKIT_OIDC_ALGORITHMS=["ES256"]))
    with pytest.raises(ConfigurationError, match="LOCKKIT_OIDC_ALGORITHMS"):
        provider_of(app).discovery.metadata()
    token = spa_access_token(op, "alice")["access_token"]
    resp = app.test_client().get("/api/me", headers=bearer(token))
    assert resp.status_code == 503 and resp.get_json() == {"error": "unavailable"}
