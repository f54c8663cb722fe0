"""The token service over HTTP: the WSGI server, the client, and the remote verifier a key
service in another process uses. Real servers on 127.0.0.1; no sleeps in the test thread."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
import requests
from click.testing import CliRunner
from werkzeug.serving import make_server
from werkzeug.test import Client

from lockkit import (
    ConfigurationError,
    CtsToken,
    CtsTokenError,
    DecryptionError,
    EncryptedTable,
    Encryption,
    LockContext,
    LockContextError,
    Settings,
)
from lockkit.cts import CtsUnavailableError
from lockkit.cts.cli import cts, serve
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.cts.remote import RemoteCtsVerifier, RemoteTokenService
from lockkit.cts.server import MAX_REQUEST_BYTES, CtsApp, create_app
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.oidc import OIDCVerifier
from lockkit.testing import LocalIssuer

from .conftest import WORKSPACE

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

WORKSPACE_ID = WORKSPACE.split(":")[2]
Served = Callable[["WSGIApplication"], str]


class Recorder:
    """An injectable ``sleep`` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@contextmanager
def _serving(app: WSGIApplication) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def served() -> Iterator[Served]:
    """serve(app) -> base URL of a real HTTP server on 127.0.0.1 running ``app``."""
    with_stack: list[Any] = []

    def serve_app(app: WSGIApplication) -> str:
        cm = _serving(app)
        with_stack.append(cm)
        return cm.__enter__()

    yield serve_app
    for cm in reversed(with_stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def cts_url(served: Served, token_service: EmbeddedTokenService) -> str:
    """The embedded token service (trusting the loopback IdP) served over HTTP."""
    return served(CtsApp(token_service))


def _scripted(answers: Callable[[int], tuple[int, Any]]) -> tuple[WSGIApplication, list[bytes]]:
    """A WSGI app answering the n-th request (0-based) with ``answers(n)``; records bodies."""
    seen: list[bytes] = []
    lock = threading.Lock()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        with lock:
            seen.append(environ["wsgi.input"].read(length))
            n = len(seen) - 1
        status, body = answers(n)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        start_response(f"{status} X", [("Content-Type", "application/json"), ("Content-Length", str(len(raw)))])
        return [raw]

    return app, seen


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + "/api/authorize", data=data, headers={"Content-Type": "application/json"},
                         timeout=5, **kwargs)


# --------------------------------------------------------------------------- end to end


def test_remote_exchange_and_remote_verification_round_trip(
    cts_url: str, idp: LocalIssuer, keyring: Keyring, users: EncryptedTable
) -> None:
    service = RemoteTokenService(cts_url, WORKSPACE)
    now = time.time()
    token = service.authorize(idp.mint("alice", scope="notes:read"), now=now)
    assert isinstance(token, CtsToken) and int(now) + 899 <= token.expiry <= int(now) + 901
    assert service.attempts == 1

    # the key service in "another process": its own copy of the keyring, the CTS's JWKS over HTTP
    verifier = RemoteCtsVerifier(service.jwks_url, WORKSPACE)
    key_service = LocalKeyService(Keyring.from_json(keyring.to_json()), verifier)
    claims = verifier.verify(token.access_token)
    assert claims["sub"] == "alice" and claims["scopes"] == ["notes:read"] and claims["aud"] == WORKSPACE

    client = Encryption([users], key_service=key_service, token_service=service)
    alice = LockContext(cts_token=token)
    payload = client.encrypt("alice@example.com", column="email", table="users").with_lock_context(alice).unwrap()
    assert client.decrypt(payload).with_lock_context(alice).unwrap() == "alice@example.com"
    assert key_service.last_subject == "alice"

    bob = client.lock_context().identify(idp.mint("bob")).unwrap()
    assert bob.cts_token is not None and bob.cts_token != token
    res = client.decrypt(payload).with_lock_context(bob)
    assert res.failure is not None and res.failure.type == "DecryptionError"
    with pytest.raises(DecryptionError):
        res.unwrap()
    assert verifier.fetch_count == 1  # the JWKS is fetched once and cached


def test_loopback_http_never_goes_through_an_environment_proxy(
    cts_url: str, served: Served, idp: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain HTTP is allowed only on loopback, and must stay there: with HTTP_PROXY set (common
    in containers), a proxy would otherwise read identity tokens and could serve its own JWKS."""
    proxy_app, proxied = _scripted(lambda n: (200, {"accessToken": "forged", "expiry": time.time() + 600, "keys": []}))
    proxy = served(proxy_app)
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    service = RemoteTokenService(cts_url, WORKSPACE, retries=0)
    token = service.authorize(idp.mint("alice"))
    verifier = RemoteCtsVerifier(service.jwks_url, WORKSPACE)
    assert verifier.verify(token.access_token)["sub"] == "alice"
    # the identity provider's JWKS (also plain HTTP on loopback) is fetched directly too
    assert OIDCVerifier(idp.issuer_config()).verify(idp.mint("bob"))["sub"] == "bob"
    assert proxied == []


def test_a_slow_cts_jwks_refresh_does_not_hold_up_other_verifications(
    served: Served, token_service: EmbeddedTokenService, idp: LocalIssuer
) -> None:
    """The key service's verifier refreshes the CTS's JWKS when stale; while that fetch hangs,
    other verifications go on with the cached keys."""
    gate, held, hits = threading.Event(), threading.Event(), [0]
    inner = CtsApp(token_service)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if environ["PATH_INFO"].endswith("jwks.json"):
            hits[0] += 1
            if hits[0] >= 2:
                held.set()
                gate.wait(30)
        return inner(environ, start_response)

    url = served(app)
    try:
        verifier = RemoteCtsVerifier.for_endpoint(url, WORKSPACE, ttl=60, timeout=20)
        now = time.time()
        a, b = (token_service.authorize(idp.mint(s), now=now) for s in ("alice", "bob"))
        assert verifier.verify(a.access_token, now=now)["sub"] == "alice"
        later = now + 61  # stale
        refreshing = threading.Thread(target=verifier.verify, args=(a.access_token,), kwargs={"now": later})
        refreshing.start()
        assert held.wait(10)
        got: list[Any] = []
        other = threading.Thread(target=lambda: got.append(verifier.verify(b.access_token, now=later)))
        other.start()
        other.join(10)
        assert not other.is_alive() and got[0]["sub"] == "bob"
        assert refreshing.is_alive() and hits[0] == 2
    finally:
        gate.set()
    refreshing.join(10)
    assert not refreshing.is_alive() and verifier.fetch_count == 2


def test_identify_through_remote_service_reports_cts_token_error(cts_url: str, idp: LocalIssuer) -> None:
    lc = LockContext(token_service=RemoteTokenService(cts_url, WORKSPACE))
    res = lc.identify(idp.mint("alice", aud="another-app"))
    assert res.failure is not None and res.failure.type == "CtsTokenError"
    assert "rejected by CTS" in res.failure.message


def test_client_sends_the_reference_wire_shape(served: Served, idp: LocalIssuer) -> None:
    exp = int(time.time()) + 600
    app, seen = _scripted(lambda n: (200, {"accessToken": "a.b.c", "expiry": exp}))
    url = served(app)
    jwt_ = idp.mint("alice")
    token = RemoteTokenService(url + "/", WORKSPACE).authorize(jwt_)
    assert token == CtsToken("a.b.c", exp)
    assert json.loads(seen[0]) == {"workspaceId": WORKSPACE_ID, "oidcToken": jwt_}


# --------------------------------------------------------------------------- server contract


@pytest.mark.parametrize("workspace", [WORKSPACE_ID, WORKSPACE])
def test_authorize_accepts_workspace_id_or_crn(cts_url: str, idp: LocalIssuer, workspace: str) -> None:
    r = _post(cts_url, {"workspaceId": workspace, "oidcToken": idp.mint("alice")})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert set(body) == {"accessToken", "expiry"} and isinstance(body["expiry"], int)
    assert jwt.get_unverified_header(body["accessToken"])["alg"] == "EdDSA"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"workspaceId": "ws-test"}',
        b'{"oidcToken": "a.b.c"}',
        b'{"workspaceId": 7, "oidcToken": "a.b.c"}',
        b'{"workspaceId": "ws-test", "oidcToken": ""}',
        b'{"workspaceId": "ws-test", "oidcToken": null}',
        b'{"workspaceId": "ws-test", "oidcToken": "a", "oidcToken": "b"}',
        b'{"workspaceId": "ws-test", "oidcToken": NaN}',
    ],
)
def test_malformed_requests_are_400_invalid_request(cts_url: str, body: bytes) -> None:
    r = _post(cts_url, body)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request" and r.json()["message"]
    assert r.headers["Cache-Control"] == "no-store"


def test_other_workspace_is_400_invalid_workspace(cts_url: str, idp: LocalIssuer) -> None:
    for other in ("ws-other", "crn:local:ws-other", "crn:other-region:ws-test"):
        r = _post(cts_url, {"workspaceId": other, "oidcToken": idp.mint("alice")})
        assert r.status_code == 400 and r.json()["error"] == "invalid_workspace"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda idp: idp.mint("alice", aud="another-app"), "invalid"),
        (lambda idp: idp.mint("alice", now=time.time() - 3600), "expired"),
        (lambda idp: "not-a-jwt", "invalid"),
    ],
)
def test_rejected_identity_token_is_401_with_coarse_message(
    cts_url: str, idp: LocalIssuer, token_service: EmbeddedTokenService,
    make: Callable[[LocalIssuer], str], fragment: str,
) -> None:
    bad = make(idp)
    r = _post(cts_url, {"workspaceId": WORKSPACE_ID, "oidcToken": bad})
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "invalid_token" and fragment in body["message"]
    assert "audience" not in body["message"] and bad not in r.text  # coarse; never echoes it
    assert token_service.calls == 1


def test_idp_keys_unreachable_is_503(served: Served, keyring: Keyring) -> None:
    with LocalIssuer() as down:
        svc = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=keyring,
                                   verifiers=[OIDCVerifier(down.issuer_config())])
        url = served(CtsApp(svc))
        token = down.mint("alice")
        down.set_available(False)
        r = _post(url, {"workspaceId": WORKSPACE_ID, "oidcToken": token})
        assert r.status_code == 503 and r.json()["error"] == "unavailable"

        recorder = Recorder()
        with pytest.raises(CtsUnavailableError, match="HTTP 503 after 3 attempts") as info:
            RemoteTokenService(url, WORKSPACE, sleep=recorder).authorize(token)
        assert info.value.failure_type == "CtsTokenError"
        assert svc.calls == 1 + 3 and recorder.delays == [0.2, 0.4]


def test_no_trusted_issuer_is_401_saying_what_to_configure(served: Served, keyring: Keyring) -> None:
    url = served(CtsApp(EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=keyring, verifiers=[])))
    r = _post(url, {"workspaceId": WORKSPACE_ID, "oidcToken": "a.b.c"})
    assert r.status_code == 401 and "LOCKKIT_TRUSTED_ISSUER" in r.json()["message"]


def test_body_over_64_kib_is_413(cts_url: str, token_service: EmbeddedTokenService) -> None:
    body = {"workspaceId": WORKSPACE_ID, "oidcToken": "x" * (MAX_REQUEST_BYTES + 10)}
    r = _post(cts_url, body)
    assert r.status_code == 413 and r.json()["error"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds while reading
        yield b'{"workspaceId": "ws-test", "oidcToken": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}'

    r = requests.post(cts_url + "/api/authorize", data=chunks(), timeout=5, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert token_service.calls == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_only_json_bodies_are_read(cts_url: str, idp: LocalIssuer, token_service: EmbeddedTokenService,
                                   content_type: str | None) -> None:
    """A browser can POST text/plain or a form cross-site without a preflight; JSON it cannot."""
    body = json.dumps({"workspaceId": WORKSPACE_ID, "oidcToken": idp.mint("alice")}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = requests.post(cts_url + "/api/authorize", data=body, headers=headers, timeout=5)
    assert r.status_code == 415 and r.json()["error"] == "invalid_request"
    assert token_service.calls == 0
    ok = requests.post(cts_url + "/api/authorize", data=body, timeout=5,
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200 and token_service.calls == 1


def test_just_under_the_limit_is_parsed(cts_url: str) -> None:
    prefix = json.dumps({"workspaceId": WORKSPACE_ID, "oidcToken": ""})
    body = {"workspaceId": WORKSPACE_ID, "oidcToken": "x" * (MAX_REQUEST_BYTES - len(prefix))}
    raw = json.dumps(body).encode()
    assert len(raw) == MAX_REQUEST_BYTES
    assert _post(cts_url, raw).status_code == 401  # parsed and rejected as a token, not 413


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/api/authorize", "POST"), ("PUT", "/api/authorize", "POST"),
     ("POST", "/.well-known/jwks.json", "GET, HEAD"), ("DELETE", "/healthz", "GET, HEAD")],
)
def test_wrong_method_is_405(cts_url: str, method: str, path: str, allow: str) -> None:
    r = requests.request(method, cts_url + path, timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == allow
    assert r.json()["error"] == "method_not_allowed"


def test_unknown_path_is_404(cts_url: str) -> None:
    r = requests.get(cts_url + "/api/other", timeout=5)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_jwks_and_healthz(cts_url: str, token_service: EmbeddedTokenService, keyring: Keyring) -> None:
    r = requests.get(cts_url + "/.well-known/jwks.json", timeout=5)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "max-age=300"
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == token_service.jwks()
    (key,) = r.json()["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["kid"] == "cts-v1" and "d" not in key
    assert requests.head(cts_url + "/.well-known/jwks.json", timeout=5).status_code == 200
    h = requests.get(cts_url + "/healthz", timeout=5)
    assert h.status_code == 200 and h.json() == {"status": "ok"}


def test_server_never_logs_tokens(
    cts_url: str, idp: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good, bad = idp.mint("alice"), idp.mint("alice", aud="another-app")
    ok = _post(cts_url, {"workspaceId": WORKSPACE_ID, "oidcToken": good})
    assert ok.status_code == 200
    assert _post(cts_url, {"workspaceId": WORKSPACE_ID, "oidcToken": bad}).status_code == 401
    assert "rejected" in caplog.text  # the rejection is logged, with the verifier's detail
    for secret in (good, bad, ok.json()["accessToken"]):
        assert secret not in caplog.text
        for part in secret.split("."):
            assert part not in caplog.text


def test_server_answers_500_on_a_bug_without_details(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(EmbeddedTokenService):
        def authorize(self, idp_jwt: str, now: float | None = None) -> CtsToken:
            raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="lockkit.cts.server")
    url = served(CtsApp(Broken(workspace_crn=WORKSPACE, keyring=Keyring.generate(WORKSPACE), verifiers=[])))
    r = _post(url, {"workspaceId": WORKSPACE_ID, "oidcToken": "a.b.c"})
    assert r.status_code == 500 and r.json() == {"error": "server_error", "message": "internal error"}
    assert "boom" in caplog.text
    with pytest.raises(CtsUnavailableError):  # a 5xx is retried, then reported unavailable
        RemoteTokenService(url, WORKSPACE, retries=0).authorize("a.b.c")


def test_create_app_from_settings(idp: LocalIssuer, keyring: Keyring) -> None:
    settings = Settings(workspace_crn=WORKSPACE, keyring_json=keyring.to_json(), issuers=(idp.issuer_config(),))
    app = create_app(settings)
    assert isinstance(app, CtsApp) and app.workspace_crn == WORKSPACE
    client = Client(app)
    r = client.post("/api/authorize", json={"workspaceId": WORKSPACE, "oidcToken": idp.mint("carol")})
    assert r.status_code == 200
    assert r.json is not None
    claims = app.service.verifier().verify(r.json["accessToken"])
    assert claims["sub"] == "carol"


# --------------------------------------------------------------------------- client behaviour


def test_503_twice_then_200_succeeds_after_three_attempts(served: Served) -> None:
    exp = int(time.time()) + 900
    app, seen = _scripted(lambda n: (503, {"error": "unavailable"}) if n < 2 else (200, {"accessToken": "t.o.k", "expiry": exp}))
    recorder = Recorder()
    service = RemoteTokenService(served(app), WORKSPACE, sleep=recorder)
    assert service.authorize("id.jw.t") == CtsToken("t.o.k", exp)
    assert len(seen) == 3 and service.attempts == 3
    assert recorder.delays == [0.2, 0.4]


def test_backoff_is_capped(served: Served) -> None:
    app, seen = _scripted(lambda n: (502, b"bad gateway"))
    recorder = Recorder()
    service = RemoteTokenService(served(app), WORKSPACE, retries=5, backoff=0.5, max_backoff=1.5, sleep=recorder)
    with pytest.raises(CtsUnavailableError, match="HTTP 502 after 6 attempts"):
        service.authorize("id.jw.t")
    assert len(seen) == 6 and recorder.delays == [0.5, 1.0, 1.5, 1.5, 1.5]


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 429])
def test_4xx_is_never_retried(served: Served, status: int) -> None:
    app, seen = _scripted(lambda n: (status, {"error": "invalid_token", "message": "The JWT was rejected by CTS: the identity token is invalid"}))
    recorder = Recorder()
    with pytest.raises(CtsTokenError) as info:
        RemoteTokenService(served(app), WORKSPACE, sleep=recorder).authorize("id.jw.t")
    assert not isinstance(info.value, CtsUnavailableError)
    assert info.value.message == f"The JWT was rejected by CTS: the identity token is invalid (HTTP {status})"
    assert len(seen) == 1 and recorder.delays == []


def test_rejection_from_real_server_is_cts_token_error(cts_url: str, token_service: EmbeddedTokenService) -> None:
    service = RemoteTokenService(cts_url, WORKSPACE)
    with pytest.raises(CtsTokenError, match="identity token is invalid") as info:
        service.authorize("not-a-jwt")
    assert not isinstance(info.value, CtsUnavailableError)
    assert service.attempts == 1 and token_service.calls == 1


def test_workspace_mismatch_from_real_server(cts_url: str, idp: LocalIssuer) -> None:
    with pytest.raises(CtsTokenError, match="does not serve that workspace"):
        RemoteTokenService(cts_url, "crn:local:ws-other").authorize(idp.mint("alice"))


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # the reference CTS: plain text for most refusals, JSON with error_description for 402
        (401, b"Authorization failed: InvalidToken", "(HTTP 401): Authorization failed: InvalidToken"),
        (402, {"error": "usage_limit_exceeded", "error_description": "Workspace has exceeded its usage limit",
               "cs_code": "USAGE_LIMIT_EXCEEDED"}, "(HTTP 402): Workspace has exceeded its usage limit"),
        (400, {"error": "invalid_workspace"}, "(HTTP 400): invalid_workspace"),
        (403, b"", "The JWT was rejected by CTS (HTTP 403)"),
        (400, b"bad \x1b[31m\n" + b"x" * 1000, "(HTTP 400): bad "),
    ],
)
def test_refusal_bodies_are_read_defensively(served: Served, status: int, body: Any, expected: str) -> None:
    app, _ = _scripted(lambda n: (status, body))
    with pytest.raises(CtsTokenError) as info:
        RemoteTokenService(served(app), WORKSPACE).authorize("id.jw.t")
    assert expected in info.value.message
    assert len(info.value.message) < 400 and "\x1b" not in info.value.message


def test_an_echoed_identity_token_is_redacted(served: Served, idp: LocalIssuer) -> None:
    token = idp.mint("alice")
    app, _ = _scripted(lambda n: (400, {"message": f"bad token {token}"}))
    with pytest.raises(CtsTokenError) as info:
        RemoteTokenService(served(app), WORKSPACE).authorize(token)
    assert token not in info.value.message and "<redacted>" in info.value.message


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        {"expiry": 2_000_000_000},
        {"accessToken": "", "expiry": 2_000_000_000},
        {"accessToken": 12, "expiry": 2_000_000_000},
        {"accessToken": "a" * 9000, "expiry": 2_000_000_000},
        {"accessToken": "a.b.c"},
        {"accessToken": "a.b.c", "expiry": "2000000000"},
        {"accessToken": "a.b.c", "expiry": True},
        {"accessToken": "a.b.c", "expiry": 1_000},  # expired already
        b'{"accessToken": "a.b.c", "expiry": Infinity}',
        b'{"accessToken": "a.b.c", "accessToken": "d.e.f", "expiry": 2000000000}',
        b"{" + b'"x": "' + b"y" * 70_000 + b'"}',  # over the response size limit
    ],
)
def test_malformed_200_is_cts_token_error(served: Served, body: Any) -> None:
    app, seen = _scripted(lambda n: (200, body))
    with pytest.raises(CtsTokenError) as info:
        RemoteTokenService(served(app), WORKSPACE).authorize("id.jw.t")
    assert not isinstance(info.value, CtsUnavailableError)
    assert len(seen) == 1


def test_expiry_is_checked_against_now(served: Served) -> None:
    app, _ = _scripted(lambda n: (200, {"accessToken": "a.b.c", "expiry": 5_000}))
    service = RemoteTokenService(served(app), WORKSPACE)
    assert service.authorize("id.jw.t", now=4_000).expiry == 5_000
    with pytest.raises(CtsTokenError, match="already expired"):
        service.authorize("id.jw.t", now=5_000)


def test_closed_port_is_unavailable_after_all_attempts() -> None:
    recorder = Recorder()
    service = RemoteTokenService(f"http://127.0.0.1:{_closed_port()}", WORKSPACE, retries=2, sleep=recorder)
    with pytest.raises(CtsUnavailableError, match="ConnectionError after 3 attempts") as info:
        service.authorize("id.jw.t")
    assert info.value.failure_type == "CtsTokenError"
    assert service.attempts == 3 and recorder.delays == [0.2, 0.4]
    res = LockContext(token_service=service).identify("id.jw.t")
    assert res.failure is not None and res.failure.type == "CtsTokenError"


@pytest.fixture
def slow_url(served: Served) -> Iterator[tuple[str, list[int]]]:
    """A server that holds each request for up to 5 s (its thread waits; the test does not)."""
    release = threading.Event()
    hits: list[int] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        hits.append(1)
        release.wait(5)
        start_response("503 X", [("Content-Type", "application/json")])
        return [b"{}"]

    yield served(app), hits
    release.set()


def test_timeout_is_unavailable(slow_url: tuple[str, list[int]]) -> None:
    url, hits = slow_url
    recorder = Recorder()
    service = RemoteTokenService(url, WORKSPACE, timeout=0.2, retries=1, sleep=recorder)
    started = time.monotonic()
    with pytest.raises(CtsUnavailableError, match="ReadTimeout after 2 attempts"):
        service.authorize("id.jw.t")
    assert time.monotonic() - started < 3  # two 0.2 s timeouts, not the server's 5 s
    assert service.attempts == 2 and len(hits) == 2 and recorder.delays == [0.2]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"endpoint": "http://cts.example.com"}, "https"),
        ({"endpoint": "ftp://127.0.0.1"}, "https"),
        ({"endpoint": "https://user:pw@cts.example.com"}, "credentials"),
        ({"workspace_crn": "ws-test"}, "malformed"),
        ({"timeout": 0}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"backoff": float("nan")}, "backoff"),
    ],
)
def test_remote_service_configuration_is_checked(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"endpoint": "https://cts.example.com", "workspace_crn": WORKSPACE, **kwargs}
    with pytest.raises(ConfigurationError, match=fragment):
        RemoteTokenService(**args)


def test_reprs_show_no_secrets(cts_url: str) -> None:
    service = RemoteTokenService(cts_url, WORKSPACE)
    assert repr(service) == f"RemoteTokenService(endpoint={cts_url!r}, workspace_crn={WORKSPACE!r})"
    assert service.url == cts_url + "/api/authorize"
    verifier = RemoteCtsVerifier.for_endpoint(cts_url + "/", WORKSPACE)
    assert verifier.jwks_url == service.jwks_url
    assert "RemoteCtsVerifier(" in repr(verifier)


def test_empty_identity_token_is_rejected_without_a_request() -> None:
    service = RemoteTokenService(f"http://127.0.0.1:{_closed_port()}", WORKSPACE)
    with pytest.raises(CtsTokenError, match="no identity token"):
        service.authorize("")
    assert service.attempts == 0


def test_shared_session_is_used(cts_url: str, idp: LocalIssuer) -> None:
    with requests.Session() as session:
        service = RemoteTokenService(cts_url, WORKSPACE, session=session)
        verifier = RemoteCtsVerifier(service.jwks_url, WORKSPACE, session=session)
        for sub in ("alice", "bob"):
            assert verifier.verify(service.authorize(idp.mint(sub)).access_token)["sub"] == sub


# --------------------------------------------------------------------------- remote verifier


def test_verifier_rejects_forged_and_foreign_tokens(cts_url: str, idp: LocalIssuer) -> None:
    token = RemoteTokenService(cts_url, WORKSPACE).authorize(idp.mint("alice"))
    with pytest.raises(LockContextError, match="another workspace"):
        RemoteCtsVerifier(cts_url + "/.well-known/jwks.json", "crn:local:ws-other").verify(token.access_token)

    verifier = RemoteCtsVerifier(cts_url + "/.well-known/jwks.json", WORKSPACE)
    forger = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=Keyring.generate(WORKSPACE),
                                  verifiers=[OIDCVerifier(idp.issuer_config())])
    forged = forger.authorize(idp.mint("alice"))  # same kid "cts-v1", another keyring's key
    with pytest.raises(LockContextError, match="invalid signature"):
        verifier.verify(forged.access_token)
    with pytest.raises(LockContextError, match="Call identify again"):
        verifier.verify(token.access_token, now=token.expiry + 1)


def test_rotation_verifies_new_kid_after_one_rate_limited_refetch(
    cts_url: str, idp: LocalIssuer, keyring: Keyring, token_service: EmbeddedTokenService
) -> None:
    service = RemoteTokenService(cts_url, WORKSPACE)
    verifier = RemoteCtsVerifier(service.jwks_url, WORKSPACE, min_refetch_interval=30)
    t = time.time()
    old = service.authorize(idp.mint("alice"), now=t)
    assert verifier.verify(old.access_token, now=t)["sub"] == "alice"
    assert verifier.fetch_count == 1

    keyring.rotate()  # the CTS now signs with cts-v2 and publishes it
    new = service.authorize(idp.mint("alice"), now=t)
    assert jwt.get_unverified_header(new.access_token)["kid"] == "cts-v2"
    with pytest.raises(LockContextError, match="unknown key"):  # refetch is rate-limited
        verifier.verify(new.access_token, now=t + 1)
    assert verifier.fetch_count == 1
    assert verifier.verify(new.access_token, now=t + 31)["sub"] == "alice"
    assert verifier.fetch_count == 2  # exactly one refetch
    assert verifier.verify(old.access_token, now=t + 32)["sub"] == "alice"  # old key still trusted
    assert verifier.verify(new.access_token, now=t + 33)["sub"] == "alice"
    assert verifier.fetch_count == 2

    # junk kids that claim a newer version cannot hammer the CTS
    junk = jwt.encode({"sub": "x"}, keyring.cts_signing_key(1), algorithm="EdDSA", headers={"kid": "cts-v99"})
    for i in range(5):
        with pytest.raises(LockContextError):
            verifier.verify(junk, now=t + 61 + i)
    assert verifier.fetch_count == 3


def test_verifier_refetches_after_ttl(cts_url: str, idp: LocalIssuer) -> None:
    service = RemoteTokenService(cts_url, WORKSPACE)
    verifier = RemoteCtsVerifier(service.jwks_url, WORKSPACE, ttl=60)
    t = time.time()
    token = service.authorize(idp.mint("alice"), now=t)
    verifier.verify(token.access_token, now=t)
    verifier.verify(token.access_token, now=t + 59)
    assert verifier.fetch_count == 1
    verifier.verify(token.access_token, now=t + 61)
    assert verifier.fetch_count == 2


def test_jwks_down_with_nothing_cached_fails_closed(keyring: Keyring, token_service: EmbeddedTokenService,
                                                    idp: LocalIssuer, users: EncryptedTable) -> None:
    token = token_service.authorize(idp.mint("alice"))
    verifier = RemoteCtsVerifier(f"http://127.0.0.1:{_closed_port()}/.well-known/jwks.json", WORKSPACE)
    with pytest.raises(LockContextError, match="key service cannot verify CTS tokens: token service unreachable"):
        verifier.verify(token.access_token)

    client = Encryption([users], key_service=LocalKeyService(keyring, verifier), token_service=token_service)
    res = client.encrypt("a@example.com", column="email", table="users").with_lock_context(LockContext(cts_token=token))
    assert res.failure is not None and res.failure.type == "LockContextError"
    assert "unreachable" in res.failure.message and res.failure.retryable  # an outage: 503, not "sign in again"


def test_jwks_errors_keep_cached_keys(served: Served, token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    state = {"up": True}
    app, seen = _scripted(lambda n: (200, token_service.jwks()) if state["up"] else (503, {"error": "down"}))
    verifier = RemoteCtsVerifier(served(app), WORKSPACE, ttl=10, min_refetch_interval=0)
    t = time.time()
    verifier.verify(token_service.authorize(idp.mint("alice"), now=t).access_token, now=t)
    state["up"] = False
    fresh = token_service.authorize(idp.mint("bob"), now=t + 20)
    assert verifier.verify(fresh.access_token, now=t + 20)["sub"] == "bob"  # stale keys still serve
    assert len(seen) == 2


def test_jwks_503_with_nothing_cached_is_rate_limited(served: Served) -> None:
    app, seen = _scripted(lambda n: (503, {"error": "down"}))
    verifier = RemoteCtsVerifier(served(app), WORKSPACE, min_refetch_interval=30)
    for i in range(3):
        with pytest.raises(LockContextError, match="token service unreachable"):
            verifier.verify("a.b.c", now=1000 + i)
    assert len(seen) == 1


def test_only_ed25519_keys_are_used(served: Served, token_service: EmbeddedTokenService, idp: LocalIssuer) -> None:
    good = token_service.jwks()["keys"][0]
    junk = [
        idp.public_jwk(),  # RSA
        {**good, "kid": "cts-v7", "alg": "RS256"},
        {**good, "kid": "cts-v8", "use": "enc"},
        {**good, "kid": "cts-v9", "d": good["x"]},
        {"kty": "OKP", "crv": "Ed448", "kid": "cts-v10", "x": "AAAA"},
        {"kty": "oct", "kid": "cts-v11", "k": "c2VjcmV0"},
        "not a jwk",
    ]
    app, _ = _scripted(lambda n: (200, {"keys": junk + [good]}))
    verifier = RemoteCtsVerifier(served(app), WORKSPACE)
    token = token_service.authorize(idp.mint("alice"))
    assert verifier.verify(token.access_token)["sub"] == "alice"
    assert "keys=['cts-v1']" in repr(verifier)

    empty_app, _ = _scripted(lambda n: (200, {"keys": junk}))
    with pytest.raises(LockContextError, match="unreachable"):
        RemoteCtsVerifier(served(empty_app), WORKSPACE).verify(token.access_token)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"jwks_url": "http://cts.example.com/jwks"}, "https"), ({"workspace_crn": "nope"}, "malformed"),
     ({"ttl": 0}, "ttl"), ({"min_refetch_interval": -1}, "min_refetch_interval")],
)
def test_remote_verifier_configuration_is_checked(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"jwks_url": "https://cts.example.com/jwks", "workspace_crn": WORKSPACE, **kwargs}
    with pytest.raises(ConfigurationError, match=fragment):
        RemoteCtsVerifier(**args)


# --------------------------------------------------------------------------- command line


def _clean_env() -> dict[str, str | None]:
    return {k: None for k in os.environ if k.startswith("LOCKKIT_") or k == "CS_WORKSPACE_CRN"}


def test_serve_help() -> None:
    result = CliRunner().invoke(serve, ["--help"])
    assert result.exit_code == 0, result.output
    for text in ("--host", "127.0.0.1", "--port", "8787", "gunicorn", "lockkit.cts.server:create_app()"):
        assert text in result.output
    group = CliRunner().invoke(cts, ["--help"])
    assert group.exit_code == 0 and "serve" in group.output


def test_serve_without_workspace_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(serve, [], env=_clean_env())
    assert result.exit_code == 1 and "no workspace is configured" in result.output


def test_serve_runs_the_app_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyring: Keyring, idp: LocalIssuer
) -> None:
    calls: list[tuple[str, int, Any, dict[str, Any]]] = []
    monkeypatch.setattr("werkzeug.serving.run_simple",
                        lambda host, port, app, **kw: calls.append((host, port, app, kw)))
    env = {**_clean_env(), "LOCKKIT_WORKSPACE_CRN": WORKSPACE, "LOCKKIT_KEYRING_JSON": keyring.to_json(),
           "LOCKKIT_TRUSTED_ISSUER": idp.issuer, "LOCKKIT_TRUSTED_AUDIENCE": idp.audience}
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(serve, ["--port", "9999"], env=env)
    wide = CliRunner().invoke(serve, ["--host", "0.0.0.0"], env=env)
    assert result.exit_code == 0, result.output
    assert "on http://127.0.0.1:9999" in result.output and keyring.to_json() not in result.output
    host, port, app, kw = calls[0]
    assert (host, port) == ("127.0.0.1", 9999) and isinstance(app, CtsApp) and kw["threaded"] is True
    assert kw["use_debugger"] is False and kw["use_reloader"] is False
    assert Client(app).post("/api/authorize", json={"workspaceId": WORKSPACE_ID,
                                                     "oidcToken": idp.mint("dan")}).status_code == 200
    assert wide.exit_code == 0 and "TLS" in wide.output and calls[1][:2] == ("0.0.0.0", 8787)


def test_a_trickling_cts_answer_is_cut_off_and_counts_as_unreachable(served: Served) -> None:
    """The timeout bounds each read; a CTS sending its answer a byte every 0.05 s (400 bytes:
    20 s) is cut off at 2 x timeout per attempt, like a timeout, instead of holding the request."""
    body = json.dumps({"accessToken": "x" * 300, "expiry": time.time() + 600}).encode()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        for i in range(len(body)):
            time.sleep(0.05)
            yield body[i : i + 1]

    service = RemoteTokenService(served(app), WORKSPACE, timeout=0.5, retries=1, backoff=0)
    started = time.monotonic()
    with pytest.raises(CtsUnavailableError, match="ReadTimeout after 2 attempts"):
        service.authorize("a.b.c")
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("odd", ["\ud800", "\u00e9"])
def test_tokens_that_are_not_ascii_are_refused_with_typed_errors(
    cts_url: str, idp: LocalIssuer, token_service: EmbeddedTokenService, odd: str
) -> None:
    """Never a UnicodeEncodeError: the server answers 401 (was a 500), the verifiers and the
    remote client refuse without sending anything."""
    token = idp.mint("alice")
    r = requests.post(cts_url + "/api/authorize", headers={"Content-Type": "application/json"}, timeout=5,
                      data=json.dumps({"workspaceId": WORKSPACE_ID, "oidcToken": token + odd}))
    assert r.status_code == 401
    with pytest.raises(CtsTokenError, match="malformed"):
        RemoteTokenService(cts_url, WORKSPACE, retries=0).authorize(token + odd)
    cts_token = token_service.authorize(token)
    for verifier in (token_service.verifier(), RemoteCtsVerifier.for_endpoint(cts_url, WORKSPACE)):
        with pytest.raises(LockContextError, match="malformed"):
            verifier.verify(cts_token.access_token + odd)


@contextmanager
def _raw_http(answer: bytes, *, then_stall: float = 0.0) -> Iterator[str]:
    """A loopback server that answers every connection with ``answer`` (raw bytes: a status
    line, headers and a body that may be cut short), then keeps the connection open for
    ``then_stall`` seconds before closing it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(answer)
                    stop.wait(then_stall)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        srv.close()


@pytest.mark.parametrize(("answer", "stall"), [
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"acc", 3.0),  # stalls
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"acc", 0.0),  # cut short
])
def test_a_cts_answer_that_stalls_or_is_cut_short_is_unavailable_not_a_crash(answer: bytes, stall: float) -> None:
    """The body is read as it arrives (for the deadline): urllib3's own errors are translated as
    requests does, so the caller gets CtsUnavailableError and identify() a Result, never a raw
    urllib3 exception."""
    with _raw_http(answer, then_stall=stall) as url:
        service = RemoteTokenService(url, WORKSPACE, timeout=0.5, retries=0)
        with pytest.raises(CtsUnavailableError):
            service.authorize("a.b.c")
        res = LockContext(token_service=service).identify("a.b.c")
        assert res.failure is not None and res.failure.type == "CtsTokenError" and res.failure.retryable
