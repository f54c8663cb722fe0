"""A scriptable OpenID provider on loopback for the outage and malformed-answer tests: what the
real OP (``op_fixture.py``) cannot be made to do - hang, trickle, answer with malformed JSON,
advertise plain-http endpoints on another host, issue oversized tokens.

* :class:`ScriptedOP`: discovery, JWKS, ``/authorize`` (redirects straight back with a code),
  ``/token`` (authorization code with PKCE, refresh; either may hang, trickle or answer raw
  bytes), ``/revoke``; every request is counted.
* :class:`HangingServer`: accepts connections and never answers.
* :class:`TricklingServer`: answers 200 and then sends the body one byte at a time.
* ``scripted`` (fixture): a factory whose servers are closed after the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm
from werkzeug.test import TestResponse

from .op_fixture import lockkit_app

CLIENT_ID = "scripted-web"
CLIENT_SECRET = "scripted-client-secret"
HANG_LIMIT = 30.0  # a hanging handler gives up after this long (the server closes before)


class ScriptedOP:
    """An OpenID provider whose answers a test sets.

    :param host: the loopback address to listen on (``127.0.0.2`` stands in for a
        non-loopback host: lockkit treats only 127.0.0.1, ::1 and localhost as loopback).
    :param doc: discovery members to add or replace.
    """

    def __init__(self, host: str = "127.0.0.1", **doc: Any) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "scripted-1"
        self.doc_overrides = doc
        self.raw_discovery: bytes | None = None
        self.id_ttl = 3600
        self.id_claims: dict[str, Any] = {}
        self.refresh_token_size = 32
        #: ``ok``, ``hang`` (until the test ends), ``slow`` (``slow_seconds``, then ok), ``raw``
        #: or ``trickle`` (a good answer, its body one byte per ``trickle_interval`` seconds for
        #: ``trickle_seconds``, then the rest)
        self.refresh_mode = "ok"
        #: ``ok``, ``raw``, ``error500`` or ``trickle``
        self.code_mode = "ok"
        self.slow_seconds = 1.0
        self.trickle_interval, self.trickle_seconds = 0.25, 6.0
        #: the body of ``raw`` token answers
        self.raw_token: bytes = b"{}"
        self.hits: Counter[tuple[str, str]] = Counter()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._codes: dict[str, dict[str, str]] = {}
        self._released = threading.Event()
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        self.host = host
        self.port = int(self.server.server_address[1])
        # a short poll interval: shutdown() at teardown waits for it
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def issuer(self) -> str:
        return f"http://{self.host}:{self.port}"

    def discovery(self) -> dict[str, Any]:
        i = self.issuer
        doc: dict[str, Any] = {
            "issuer": i,
            "authorization_endpoint": i + "/authorize",
            "token_endpoint": i + "/token",
            "jwks_uri": i + "/jwks",
            "revocation_endpoint": i + "/revoke",
            "end_session_endpoint": i + "/logout",
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        doc.update(self.doc_overrides)
        return doc

    def mint(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        """A token with ``claims`` (``iss``, ``iat`` and ``exp`` added), signed with the OP's key."""
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "exp": now + self.id_ttl, **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid, "typ": typ})

    def id_token(self, nonce: str | None = None, sub: str = "alice") -> str:
        claims: dict[str, Any] = {"sub": sub, "aud": CLIENT_ID, "azp": CLIENT_ID, **self.id_claims}
        if nonce:
            claims["nonce"] = nonce
        return self.mint(claims)

    def token_response(self, nonce: str | None = None) -> dict[str, Any]:
        return {
            "access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 3600,
            "id_token": self.id_token(nonce), "refresh_token": "RT" + "x" * max(0, self.refresh_token_size - 2),
        }

    def count(self, method: str, path: str) -> int:
        return self.hits[(method, path)]

    def refreshes(self) -> int:
        return sum(1 for m, p, _, body in self.requests if p == "/token" and b"grant_type=refresh_token" in body)

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        op = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                pass

            def _send(self, code: int, body: bytes | dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _trickle(self, body: dict[str, Any]) -> None:
                """Status and headers at once, then the body a byte at a time (each byte well
                within any read timeout), the rest after ``trickle_seconds``; stops when the
                OP is closed or the client has gone."""
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                end, sent = time.monotonic() + op.trickle_seconds, 0
                try:
                    self.wfile.flush()
                    while time.monotonic() < end and sent < len(data) - 1:
                        if op._released.wait(op.trickle_interval):
                            return
                        self.wfile.write(data[sent:sent + 1])
                        self.wfile.flush()
                        sent += 1
                    self.wfile.write(data[sent:])
                except OSError:  # the client gave up
                    self.close_connection = True

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                op.hits[("GET", url.path)] += 1
                op.requests.append(("GET", url.path, dict(self.headers), b""))
                if url.path == "/.well-known/openid-configuration":
                    self._send(200, op.raw_discovery if op.raw_discovery is not None else op.discovery())
                elif url.path == "/jwks":
                    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(op.key.public_key(), as_dict=True)
                    jwk.update(kid=op.kid, alg="RS256", use="sig")
                    self._send(200, {"keys": [jwk]})
                elif url.path == "/authorize":
                    code = secrets.token_urlsafe(16)
                    op._codes[code] = query
                    back = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
                    self._send(302, b"", headers=(("Location", back),))
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                op.hits[("POST", url.path)] += 1
                op.requests.append(("POST", url.path, dict(self.headers), body))
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if url.path == "/revoke":
                    self._send(200, b"")
                elif url.path != "/token":
                    self._send(404, {"error": "not_found"})
                elif form.get("grant_type") == "authorization_code":
                    self._code(form)
                elif form.get("grant_type") == "refresh_token":
                    self._refresh()
                else:
                    self._send(400, {"error": "unsupported_grant_type"})

            def _code(self, form: dict[str, str]) -> None:
                asked = op._codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "").encode()
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
                if asked is None or challenge != asked.get("code_challenge"):
                    self._send(400, {"error": "invalid_grant"})
                elif op.code_mode == "error500":
                    self._send(500, b"<h1>internal error</h1>")
                elif op.code_mode == "raw":
                    self._send(200, op.raw_token)
                elif op.code_mode == "trickle":
                    self._trickle(op.token_response(nonce=asked.get("nonce")))
                else:
                    self._send(200, op.token_response(nonce=asked.get("nonce")))

            def _refresh(self) -> None:
                if op.refresh_mode == "hang":
                    op._released.wait(HANG_LIMIT)
                    self._send(503, b"busy")
                    return
                if op.refresh_mode == "slow":
                    time.sleep(op.slow_seconds)
                if op.refresh_mode == "raw":
                    self._send(200, op.raw_token)
                elif op.refresh_mode == "trickle":
                    self._trickle(op.token_response())
                else:
                    self._send(200, op.token_response())

        return Handler


class _Listener:
    """A TCP listener on 127.0.0.1 handing each accepted connection to :meth:`_take`.

    :meth:`close` stops the accepting thread before it returns. Closing the socket alone does
    not wake a thread blocked in ``accept()`` on Linux: the thread outlived the test, and when
    a signal (a subprocess's SIGCHLD) restarted its ``accept()``, it ran on whatever socket had
    since been given the same file descriptor, and took connections meant for another server
    (the shared LocalIssuer's JWKS: "identity provider keys are unavailable")."""

    def __init__(self, port: int = 0, backlog: int = 16) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(backlog)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"test-listener-{self.port}", daemon=True)
        self._thread.start()

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._closing.is_set():  # accepted while closing: not ours to serve
                conn.close()
                return
            self.accepted += 1
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closing.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        assert not self._thread.is_alive(), "the test listener's accept thread did not stop"


class HangingServer(_Listener):
    """Accepts TCP connections on 127.0.0.1 and never answers (an overloaded IdP, a stuck load
    balancer). ``port`` may name a port to take over (a restarted IdP)."""

    def __init__(self, port: int = 0) -> None:
        self._held: list[socket.socket] = []
        super().__init__(port, backlog=64)

    def _take(self, conn: socket.socket) -> None:
        self._held.append(conn)

    def close(self) -> None:
        super().close()
        for conn in self._held:
            conn.close()


class TricklingServer(_Listener):
    """Answers every request with 200, a large ``Content-Length`` and then one byte every
    ``interval`` seconds for ``duration`` seconds: each read arrives well within any timeout."""

    def __init__(self, interval: float = 0.25, duration: float = 6.0) -> None:
        self.interval, self.duration = interval, duration
        self._closed = threading.Event()
        super().__init__()

    def _take(self, conn: socket.socket) -> None:
        threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                end = time.monotonic() + self.duration
                while time.monotonic() < end and not self._closed.wait(self.interval):
                    conn.sendall(b" ")
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        super().close()


class Scripted:
    """What the ``scripted`` fixture yields: factories for the servers above, closed at teardown."""

    def __init__(self) -> None:
        self._open: list[ScriptedOP | HangingServer | TricklingServer] = []

    def op(self, host: str = "127.0.0.1", **doc: Any) -> ScriptedOP:
        server = ScriptedOP(host, **doc)
        self._open.append(server)
        return server

    def hanging(self, port: int = 0) -> HangingServer:
        server = HangingServer(port)
        self._open.append(server)
        return server

    def trickling(self, interval: float = 0.25, duration: float = 6.0) -> TricklingServer:
        server = TricklingServer(interval, duration)
        self._open.append(server)
        return server

    def close(self) -> None:
        for server in reversed(self._open):
            try:
                server.close()
            except OSError:
                pass


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    """Scriptable OPs and misbehaving servers, closed after the test."""
    made = Scripted()
    try:
        yield made
    finally:
        made.close()


def scripted_app(issuer: str, **config: Any) -> Flask:
    """The test notes app with the ``oidc`` provider for ``issuer`` (a short HTTP timeout)."""
    settings: dict[str, Any] = {
        "LOCKKIT_OIDC_ISSUER": issuer,
        "LOCKKIT_OIDC_CLIENT_ID": CLIENT_ID,
        "LOCKKIT_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "LOCKKIT_OIDC_HTTP_TIMEOUT": 1,
    }
    settings.update(config)
    return lockkit_app("oidc", **settings)


def start_sign_in(client: FlaskClient, next_url: str = "/notes") -> str:
    """Start a sign-in; the callback URL (path and query) the OP sends the browser back to."""
    start = client.get("/lockkit/oidc/login", query_string={"next": next_url})
    assert start.status_code == 302, start.get_data(as_text=True)
    back = requests.get(start.headers["Location"], allow_redirects=False, timeout=5).headers["Location"]
    assert back.startswith("http://localhost/"), back
    return str(back[len("http://localhost"):])


def sign_in(client: FlaskClient, next_url: str = "/notes") -> TestResponse:
    """The whole round trip through a :class:`ScriptedOP`; the callback's response."""
    return client.get(start_sign_in(client, next_url))


def run_concurrently(calls: list[Callable[[], Any]]) -> list[tuple[Any, float]]:
    """Run ``calls`` in threads at once; each one's result and how long it took (seconds)."""
    results: list[tuple[Any, float]] = [(None, 0.0)] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        began = time.monotonic()
        try:
            results[i] = (calls[i](), time.monotonic() - began)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results
