"""The generic OpenID Connect provider when the IdP misbehaves: hangs, trickles, fails
transiently, answers with malformed JSON, advertises plain-http endpoints on another host or
issues oversized tokens; and ID tokens presented as bearer tokens when the API audience is the
client id. Against :class:`~tests.providers.scripted_op.ScriptedOP` (a real HTTP server on
loopback whose answers each test sets)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cachelib import FileSystemCache
from flask import Flask
from flask.testing import FlaskClient
from flask_session import Session  # type: ignore[import-untyped]

import lockkit_oidc
from lockkit import ExpiredCredentialError
from lockkit_oidc import OIDCProvider

from .op_fixture import provider_of as _provider_of
from .op_fixture import unsealed_entry
from .scripted_op import (
    CLIENT_ID,
    Scripted,
    ScriptedOP,
    run_concurrently,
    scripted,
    scripted_app,
    sign_in,
    start_sign_in,
)

__all__ = ["scripted"]  # fixture used by name

LOGGER = "lockkit.oidc.provider"
#: one HTTP timeout (LOCKKIT_OIDC_HTTP_TIMEOUT=1 in these tests) plus scheduling slack
ONE_TIMEOUT = 1.8


def provider_of(app: Flask) -> OIDCProvider:
    provider: OIDCProvider = _provider_of(app, OIDCProvider)
    return provider


def stored_tokens(app: Flask, client: FlaskClient) -> dict[str, Any] | None:
    return unsealed_entry(app, client, "_lockkit_oidc", "lockkit-oidc-tokens")


def session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def client_with(app: Flask, cookie: str) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("session", cookie)
    return client


# -- discovery: one fetch at a time, outside the lock, with a deadline ------------------------
def test_concurrent_requests_share_one_discovery_attempt_while_the_idp_hangs(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IdP accepts connections and never answers. Four sign-ins at once: one discovery
    attempt, and each request is answered 503 after about one timeout, not one after another
    (the fail-fast window is shorter than the timeout here, as it is with a 5 s timeout)."""
    monkeypatch.setattr(lockkit_oidc, "DISCOVERY_RETRY_INTERVAL", 0.5)
    idp = scripted.hanging()
    app = scripted_app(idp.issuer)
    results = run_concurrently([lambda: app.test_client().get("/lockkit/oidc/login")] * 4)
    assert [resp.status_code for resp, _ in results] == [503] * 4
    assert max(took for _, took in results) < ONE_TIMEOUT, [took for _, took in results]
    assert provider_of(app).discovery.fetch_count == 1


def test_public_pages_of_signed_in_users_wait_one_timeout_at_most(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart (a new app, same secret key) while the IdP hangs, every request that
    carries a session ID token needs discovery: public pages still answer after one timeout."""
    monkeypatch.setattr(lockkit_oidc, "DISCOVERY_RETRY_INTERVAL", 0.5)
    op = scripted.op()
    before = scripted_app(op.issuer)
    signed_in = before.test_client()
    assert sign_in(signed_in).status_code == 302
    cookie = session_cookie(signed_in)
    op.close()
    scripted.hanging(port=op.port)  # the IdP is back on its port, but stuck
    app = scripted_app(op.issuer, SECRET_KEY=before.config["SECRET_KEY"],
                       LOCKKIT_KEYRING_JSON=before.config["LOCKKIT_KEYRING_JSON"])
    results = run_concurrently([lambda: client_with(app, cookie).get("/")] * 4)
    assert [(resp.status_code, resp.get_data(as_text=True)) for resp, _ in results] == [(200, "public page")] * 4
    assert max(took for _, took in results) < ONE_TIMEOUT, [took for _, took in results]
    assert provider_of(app).discovery.fetch_count == 1


def test_a_trickling_discovery_document_is_cut_off_at_twice_the_timeout(scripted: Scripted) -> None:
    """One byte every 0.25 s arrives well within the 1 s read timeout: the whole document must
    still arrive within 2 s, and a request arriving meanwhile shares that attempt."""
    idp = scripted.trickling(interval=0.25, duration=6.0)
    app = scripted_app(idp.issuer)

    def later() -> Any:
        time.sleep(0.5)
        return app.test_client().get("/lockkit/oidc/login")

    began = time.monotonic()
    results = run_concurrently([lambda: app.test_client().get("/lockkit/oidc/login"), later])
    assert [resp.status_code for resp, _ in results] == [503, 503]
    assert time.monotonic() - began < 3.5
    assert provider_of(app).discovery.fetch_count == 1 and idp.accepted == 1


def test_the_fail_fast_window_starts_when_the_attempt_failed(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lockkit_oidc, "DISCOVERY_RETRY_INTERVAL", 0.8)  # shorter than the 1 s timeout
    idp = scripted.hanging()
    app = scripted_app(idp.issuer)
    client = app.test_client()
    assert client.get("/lockkit/oidc/login").status_code == 503  # fails after ~1 s
    began = time.monotonic()
    assert client.get("/lockkit/oidc/login").status_code == 503
    assert time.monotonic() - began < 0.5  # failed fast: no second attempt right after the first
    assert provider_of(app).discovery.fetch_count == 1
    time.sleep(0.9)
    assert client.get("/lockkit/oidc/login").status_code == 503
    assert provider_of(app).discovery.fetch_count == 2  # tried again once the window passed


# -- sign-out endpoints: never in clear to another host -----------------------------------
def test_plain_http_sign_out_endpoints_on_another_host_are_ignored(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    """127.0.0.2 stands in for any non-loopback host: the client secret and refresh token must
    not be POSTed there in clear, nor the browser sent there with the ID token."""
    sink = scripted.op(host="127.0.0.2")
    op = scripted.op(revocation_endpoint=sink.issuer + "/revoke", end_session_endpoint=sink.issuer + "/logout")
    app = scripted_app(op.issuer)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert sign_in(client).status_code == 302
    assert "ignoring the discovery document's revocation_endpoint" in caplog.text
    assert "ignoring the discovery document's end_session_endpoint" in caplog.text
    metadata = provider_of(app).discovery.metadata()
    assert "revocation_endpoint" not in metadata and "end_session_endpoint" not in metadata

    csrf = client.get("/logout-form").get_data(as_text=True)
    out = client.post("/lockkit/oidc/logout", data={"csrf": csrf, "next": "/"})
    assert out.status_code == 302 and out.headers["Location"] == "/"  # local sign-out only
    assert sink.requests == [] and op.count("POST", "/revoke") == 0
    assert stored_tokens(app, client) is None


def test_sign_out_checks_the_endpoints_it_sends_tokens_to(scripted: Scripted) -> None:
    """Even when the metadata changes after discovery, revocation and end-session URLs are
    checked where they are used."""
    sink = scripted.op(host="127.0.0.2")
    op = scripted.op()
    app = scripted_app(op.issuer)
    provider = provider_of(app)
    metadata = provider.discovery.metadata()
    metadata["revocation_endpoint"] = sink.issuer + "/revoke"
    metadata["end_session_endpoint"] = sink.issuer + "/logout"
    with app.test_request_context():
        assert provider.revoke_refresh_token("RT-secret") is False
        assert provider.end_session_url("id.token.hint", "http://localhost/") is None
    assert sink.requests == []
    metadata["revocation_endpoint"], metadata["end_session_endpoint"] = op.issuer + "/revoke", op.issuer + "/logout"
    with app.test_request_context():
        assert provider.revoke_refresh_token("RT-secret") is True  # loopback http is fine
        assert (provider.end_session_url("id.token.hint", "http://localhost/") or "").startswith(op.issuer + "/logout?")


# -- refresh: backoff after a transient failure, one in flight per session -----------------
def test_a_hanging_token_endpoint_is_not_retried_on_every_request(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = scripted.op()
    op.id_ttl = 30  # inside the kit's 60 s refresh window: every request wants a refresh
    app = scripted_app(op.issuer)
    client = app.test_client()
    assert sign_in(client).status_code == 302
    stored = stored_tokens(app, client)
    assert stored is not None
    op.refresh_mode = "hang"
    took = []
    for _ in range(4):
        began = time.monotonic()
        resp = client.get("/")
        took.append(time.monotonic() - began)
        assert resp.status_code == 200
    assert op.refreshes() == 1, took
    assert max(took[1:]) < 0.5, took  # only the first request waited for the token endpoint
    assert stored_tokens(app, client) == stored  # kept: a transient failure signs nobody out

    # fail-closed: no refresh in the backoff window, and an expired ID token is still refused
    provider = provider_of(app)
    with client:
        client.get("/")
        token = provider.session_token(now=stored["exp"] + 100)
        assert token is not None and token == stored["id"]
        with pytest.raises(ExpiredCredentialError):
            provider.verify(token, now=stored["exp"] + 100)
    assert op.refreshes() == 1

    monkeypatch.setattr(lockkit_oidc, "REFRESH_RETRY_INTERVAL", 0.0)  # the window has passed
    op.refresh_mode = "ok"
    assert client.get("/").status_code == 200
    assert op.refreshes() == 2
    refreshed = stored_tokens(app, client)
    assert refreshed is not None and refreshed["id"] != stored["id"]


#: the whole token endpoint answer is cut off at twice the timeout (LOCKKIT_OIDC_HTTP_TIMEOUT=1),
#: plus one read and scheduling slack; the trickling answers below take 6 s
TWO_TIMEOUTS = 3.5


def test_a_trickling_token_endpoint_is_cut_off_and_the_refresh_backoff_starts(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh answer trickling a byte every 0.25 s (each read well within the 1 s timeout)
    holds the refreshing request at most about twice the timeout, counts as a transient
    failure (the tokens are kept), and no refresh is tried right after it."""
    op = scripted.op()
    op.id_ttl = 30  # inside the kit's 60 s refresh window: every request wants a refresh
    app = scripted_app(op.issuer)
    client, other = app.test_client(), app.test_client()
    assert sign_in(client).status_code == 302 and sign_in(other).status_code == 302
    stored = stored_tokens(app, client)
    assert stored is not None
    op.refresh_mode, op.id_ttl = "trickle", 3600  # a good answer (long-lived tokens), only slow
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        began = time.monotonic()
        assert client.get("/").status_code == 200
        took = time.monotonic() - began
    assert took < TWO_TIMEOUTS, took  # ~6 s (the whole trickle) before
    assert op.refreshes() == 1
    assert "cannot refresh the ID token now: BodyTooSlow" in caplog.text
    assert stored_tokens(app, client) == stored  # a transient failure: kept, not refreshed
    for c in (client, other):  # the backoff: the next requests do not wait for the token endpoint
        began = time.monotonic()
        assert c.get("/").status_code == 200
        assert time.monotonic() - began < 0.5
    assert op.refreshes() == 1


def test_a_trickling_code_exchange_is_503_within_twice_the_timeout(scripted: Scripted) -> None:
    op = scripted.op()
    op.code_mode = "trickle"
    app = scripted_app(op.issuer)
    client = app.test_client()
    back = start_sign_in(client)
    began = time.monotonic()
    page = client.get(back)
    assert time.monotonic() - began < TWO_TIMEOUTS
    assert page.status_code == 503 and b"temporarily unavailable" in page.data  # signed in after ~6 s before
    assert stored_tokens(app, client) is None


def test_one_refresh_in_flight_per_session(scripted: Scripted) -> None:
    op = scripted.op()
    op.id_ttl = 30
    app = scripted_app(op.issuer, LOCKKIT_OIDC_HTTP_TIMEOUT=5)
    signed_in = app.test_client()
    assert sign_in(signed_in).status_code == 302
    cookie = session_cookie(signed_in)
    op.refresh_mode, op.slow_seconds = "slow", 1.0
    results = run_concurrently([lambda: client_with(app, cookie).get("/")] * 3)
    assert [resp.status_code for resp, _ in results] == [200] * 3
    assert op.refreshes() == 1
    assert sorted(took for _, took in results)[1] < 0.5  # the others went on with the valid token


def test_a_request_with_an_expired_token_shares_the_refresh_in_flight(scripted: Scripted) -> None:
    op = scripted.op()
    op.id_ttl = 30
    app = scripted_app(op.issuer, LOCKKIT_OIDC_HTTP_TIMEOUT=5)
    signed_in = app.test_client()
    assert sign_in(signed_in).status_code == 302
    stored = stored_tokens(app, signed_in)
    assert stored is not None
    cookie = session_cookie(signed_in)
    op.refresh_mode, op.slow_seconds, op.id_ttl = "slow", 1.0, 3600
    provider = provider_of(app)

    def refresh_expired() -> str | None:
        with app.test_request_context("/", headers={"Cookie": f"session={cookie}"}):
            return provider.session_token(now=stored["exp"] + 10)

    results = run_concurrently([refresh_expired] * 3)
    tokens = {token for token, _ in results}
    assert op.refreshes() == 1
    assert len(tokens) == 1 and None not in tokens and stored["id"] not in tokens  # all got the new token


# -- malformed answers: typed refusals or 503, never an uncaught exception ----------------
def _token_with_huge_expiry(op: ScriptedOP) -> bytes:
    body = json.dumps(op.token_response())
    return body.replace('"expires_in": 3600', '"expires_in": 1e400').encode()


@pytest.mark.parametrize("answer", ["expires_in 1e400", "nested"])
def test_a_malformed_refresh_answer_signs_the_user_out(scripted: Scripted, answer: str) -> None:
    op = scripted.op()
    op.id_ttl = 30
    app = scripted_app(op.issuer)
    client = app.test_client()
    assert sign_in(client).status_code == 302
    op.refresh_mode = "raw"
    op.raw_token = _token_with_huge_expiry(op) if answer != "nested" else b"[" * 100000 + b"]" * 100000
    page = client.get("/")  # raised OverflowError / RecursionError (a bare 500) before
    assert page.status_code == 200 and page.get_data(as_text=True) == "public page"
    assert stored_tokens(app, client) is None
    protected = client.get("/notes")
    assert protected.status_code == 302 and protected.headers["Location"].startswith("/lockkit/oidc/login")


def test_a_malformed_code_exchange_answer_is_a_refused_sign_in(scripted: Scripted) -> None:
    op = scripted.op()
    op.code_mode, op.raw_token = "raw", _token_with_huge_expiry(op)
    app = scripted_app(op.issuer)
    client = app.test_client()
    done = sign_in(client)
    assert done.status_code == 400 and b"Sign-in failed" in done.data
    assert stored_tokens(app, client) is None


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("algorithms not strings", "id_token_signing_alg_values_supported"),
        ("pkce methods not a list", "code_challenge_methods_supported"),
        ("nested", "nested too deeply"),
        ("duplicate member", "duplicate"),
    ],
)
def test_a_malformed_discovery_document_is_unavailable(
    scripted: Scripted, caplog: pytest.LogCaptureFixture, case: str, reason: str
) -> None:
    op = scripted.op()
    if case == "algorithms not strings":
        op.doc_overrides["id_token_signing_alg_values_supported"] = [["RS256"]]
    elif case == "pkce methods not a list":
        op.doc_overrides["code_challenge_methods_supported"] = "S256"
    elif case == "nested":
        op.raw_discovery = b"[" * 100000 + b"]" * 100000
    else:
        op.raw_discovery = json.dumps(op.discovery()).replace("{", '{"issuer": "https://evil.example", ', 1).encode()
    app = scripted_app(op.issuer)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert client.get("/lockkit/oidc/login").status_code == 503
        assert client.get("/lockkit/oidc/login").status_code == 503  # inside the fail-fast window
    assert reason in caplog.text
    assert provider_of(app).discovery.fetch_count == 1


# -- the callback while the IdP is down ----------------------------------------------------
def test_an_outage_during_the_code_exchange_is_503_not_a_refusal(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    op = scripted.op()
    app = scripted_app(op.issuer)
    client = app.test_client()
    back = start_sign_in(client)
    op.close()  # the IdP goes down between the redirect and the callback
    with caplog.at_level(logging.INFO, logger=LOGGER):
        page = client.get(back)
    assert page.status_code == 503 and b"temporarily unavailable" in page.data
    assert [r.levelno for r in caplog.records if "sign-in unavailable" in r.getMessage()] == [logging.WARNING]
    assert "refused" not in caplog.text
    assert stored_tokens(app, client) is None


def test_a_5xx_from_the_token_endpoint_at_sign_in_is_503(scripted: Scripted) -> None:
    op = scripted.op()
    op.code_mode = "error500"
    app = scripted_app(op.issuer)
    client = app.test_client()
    page = sign_in(client)
    assert page.status_code == 503 and b"temporarily unavailable" in page.data


# -- the session cookie stays under what browsers keep --------------------------------------
def _set_cookie_sizes(*responses: Any) -> list[int]:
    return [len(header) for resp in responses for header in resp.headers.getlist("Set-Cookie")]


def test_a_successful_callback_drops_the_other_pending_sign_ins(scripted: Scripted) -> None:
    op = scripted.op()
    app = scripted_app(op.issuer)
    client = app.test_client()
    backs = [start_sign_in(client) for _ in range(3)]  # three tabs start a sign-in
    assert client.get(backs[-1]).status_code == 302
    with client.session_transaction() as sess:
        assert [k for k in sess if k.startswith("_state_")] == []
    assert client.get("/notes").status_code == 200


def test_realistic_tokens_keep_the_cookie_under_4_kb(scripted: Scripted) -> None:
    """A Keycloak-like ID token (groups, profile: ~1 KB) and a JWT-sized refresh token (800
    bytes): signed in, a protected page, then two more tabs start a sign-in."""
    op = scripted.op()
    op.id_claims = {"groups": [f"g{i:03d}" for i in range(60)], "name": "Alice Example", "email": "alice@example.com"}
    op.refresh_token_size = 800
    app = scripted_app(op.issuer)
    client = app.test_client()
    responses = [sign_in(client), client.get("/notes")]
    assert responses[-1].status_code == 200
    responses += [client.get("/lockkit/oidc/login") for _ in range(2)]
    assert max(_set_cookie_sizes(*responses)) <= 4093
    assert client.get("/notes").status_code == 200  # still signed in


def test_an_identity_too_large_for_a_cookie_session_is_refused_clearly(
    scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    op = scripted.op()
    op.id_claims = {"groups": [f"group-{i:04d}" for i in range(200)]}
    op.refresh_token_size = 800
    app = scripted_app(op.issuer)
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        done = sign_in(client)
    assert done.status_code == 500 and b"Sign-in cannot be completed" in done.data
    assert "Flask-Session" in caplog.text and "cookie" in caplog.text
    assert max(_set_cookie_sizes(done)) <= 4093
    assert stored_tokens(app, client) is None


def test_a_large_identity_is_fine_with_server_side_sessions(scripted: Scripted, tmp_path: Path) -> None:
    op = scripted.op()
    op.id_claims = {"groups": [f"group-{i:04d}" for i in range(200)]}
    op.refresh_token_size = 800
    app = scripted_app(op.issuer, SESSION_TYPE="cachelib",
                       SESSION_CACHELIB=FileSystemCache(str(tmp_path), threshold=100))
    Session(app)
    client = app.test_client()
    assert sign_in(client).status_code == 302
    assert client.get("/notes").get_json()["sub"] == "alice"


# -- ID tokens as bearer tokens when the API audience is the client id ---------------------
def test_id_tokens_are_not_bearer_tokens_when_the_audience_is_the_client_id(scripted: Scripted) -> None:
    """Entra ID v2 apps that expose their own API get access tokens with ``aud`` = the client
    id, as ID tokens have: those access tokens still work, ID tokens do not."""
    op = scripted.op()
    app = scripted_app(op.issuer, LOCKKIT_OIDC_AUDIENCE=CLIENT_ID)
    api = app.test_client()

    def me(token: str) -> tuple[int, Any]:
        resp = api.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        return resp.status_code, resp.get_json()

    refused = (401, {"error": "invalid"})
    assert me(op.id_token(nonce="n-123")) == refused  # an ID token from a sign-in
    assert me(op.mint({"sub": "alice", "aud": CLIENT_ID, "azp": CLIENT_ID})) == refused  # a refreshed one: no nonce
    assert me(op.mint({"sub": "alice", "aud": CLIENT_ID, "at_hash": "x", "scp": "notes.read"})) == refused
    assert me(op.mint({"sub": "alice", "aud": CLIENT_ID, "scope": "notes:read", "nonce": "n"}, typ="at+jwt")) == refused
    # access tokens: Entra ID v2 (scp, typ JWT) and RFC 9068 (typ at+jwt)
    assert me(op.mint({"sub": "alice", "aud": CLIENT_ID, "azp": "spa", "scp": "notes.read", "ver": "2.0"})) == (
        200, {"sub": "alice"})
    assert me(op.mint({"sub": "bob", "aud": CLIENT_ID, "client_id": "spa", "scope": "notes:read"}, typ="at+jwt")) == (
        200, {"sub": "bob"})


def test_other_audiences_keep_accepting_access_tokens_without_scope(scripted: Scripted) -> None:
    op = scripted.op()
    app = scripted_app(op.issuer, LOCKKIT_OIDC_AUDIENCE="https://api.example")
    token = op.mint({"sub": "alice", "aud": "https://api.example"})
    resp = app.test_client().get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.get_json() == {"sub": "alice"}
