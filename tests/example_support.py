"""Fixtures and helpers for the example app's tests (``test_example_app.py`` and
``test_example_browser.py``): a hermetic ``create_app`` on a temp SQLite file or a throwaway
PostgreSQL database, a user driving the real forms through Flask's test client (dev sign-in,
CSRF tokens read from the HTML), a real server on loopback, and raw-database plaintext checks."""

from __future__ import annotations

import base64
import html
import os
import re
import secrets
import socket
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from lockkit.keys.keyring import Keyring

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `examples` is a top-level package of the repository
    sys.path.insert(0, str(ROOT))

from examples.flask_clerk import create_app  # noqa: E402

WORKSPACE = "crn:local:ws-example"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BASE_URL = "postgresql://postgres@127.0.0.1:5432/"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHORT_QUERY_MESSAGE = "Search for a word of three or more letters."


# -- the app ------------------------------------------------------------------------------
def app_config(database_url: str, secret_key: str, **extra: Any) -> dict[str, Any]:
    crn = WORKSPACE
    return {
        "TESTING": True,
        "SECRET_KEY": secret_key,
        "DATABASE_URL": database_url,
        "LOCKKIT_PROVIDERS": ["dev"],
        "LOCKKIT_WORKSPACE_CRN": crn,
        "LOCKKIT_KEYRING_JSON": Keyring.generate(crn).to_json(),
        **extra,
    }


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A hermetic environment for ``create_app``: no Clerk keys, database/Redis URL or ``LOCKKIT_*``
    from the outer shell, no ``lockkit.toml`` in the working directory, and ``SECRET_KEY`` in
    the environment so create_app does not write one into the repository's instance folder.
    Returns the secret key."""
    for key in list(os.environ):
        if key.startswith(("LOCKKIT_", "CLERK_")) or key in ("DATABASE_URL", "REDIS_URL", "CS_WORKSPACE_CRN"):
            monkeypatch.delenv(key)
    secret = secrets.token_urlsafe(32)
    monkeypatch.setenv("SECRET_KEY", secret)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return secret


@contextmanager
def example_app(database_url: str, secret_key: str, **extra: Any) -> Iterator[Flask]:
    app = create_app(app_config(database_url, secret_key, **extra))
    try:
        yield app
    finally:
        app.extensions["notes_db"].close()  # this thread's connection (the test client's)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "notes.db"


@pytest.fixture
def notes_app(example_env: str, sqlite_path: Path) -> Iterator[Flask]:
    """The example app on a temp SQLite file, dev sign-in, CSRF enabled."""
    with example_app(f"sqlite:///{sqlite_path}", example_env) as app:
        assert app.config.get("WTF_CSRF_ENABLED", True), "CSRF must stay enabled in these tests"
        yield app


# -- PostgreSQL -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh database ``lockkit_test_<pid>_<random>`` for this test session, dropped at the end.
    Skips when PostgreSQL on 127.0.0.1:5432 is unreachable."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        pytest.skip(reason=f"PostgreSQL is not reachable at 127.0.0.1:5432 ({type(err).__name__})")
    name = f"lockkit_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        _drop_stale_databases(admin)
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield PG_BASE_URL + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _drop_stale_databases(admin: Any) -> None:
    """Drop databases this fixture made in earlier runs that were killed before their
    teardown: only ``lockkit_test_<pid>_<hex>`` whose process no longer exists."""
    for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lockkit_test_%'").fetchall():
        m = re.fullmatch(r"lockkit_test_(\d+)_[0-9a-f]{8}", name)
        if m and not _pid_alive(int(m.group(1))):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def pg_app(example_env: str, pg_database_url: str) -> Iterator[Flask]:
    with example_app(pg_database_url, example_env) as app:
        yield app


# -- HTML forms -----------------------------------------------------------------------------
@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif self.forms and tag == "input" and a.get("name"):
            self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif self.forms and tag == "textarea" and a.get("name"):
            self._textarea = a["name"]
            self.forms[-1].fields[a["name"]] = ""

    def handle_data(self, data: str) -> None:
        if self._textarea and self.forms:
            self.forms[-1].fields[self._textarea] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None


def forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def form_posting_to(html: str, action: str) -> Form:
    found = [f for f in forms(html) if f.method == "post" and f.action == action]
    assert len(found) == 1, f"expected one form posting to {action}, found {[f.action for f in forms(html)]}"
    return found[0]


def text(resp: TestResponse) -> str:
    return resp.get_data(as_text=True)


def location(resp: TestResponse) -> str:
    """The redirect target as a path (with query)."""
    assert resp.status_code in (301, 302, 303), (resp.status_code, text(resp)[:300])
    parts = urlsplit(resp.headers["Location"])
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- a user driving the real forms ------------------------------------------------------
class User:
    """One browser session (a Flask test client) that signs in through the dev provider's
    form and uses the app's forms with their CSRF tokens."""

    def __init__(self, app: Flask, name: str) -> None:
        self.app, self.name = app, name
        self.client: FlaskClient = app.test_client()

    def sign_in(self, start: str = "/notes/new") -> TestResponse:
        """GET a protected page -> redirected to the dev form -> POST name + csrf -> back."""
        resp = self.client.get(start)
        login = location(resp)
        assert login.startswith("/lockkit/dev/login"), login
        page = self.client.get(login)
        assert page.status_code == 200
        form = form_posting_to(text(page), "/lockkit/dev/login")
        assert form.fields.get("csrf"), "the dev sign-in form carries a CSRF token"
        assert form.fields.get("next") == start
        back = self.client.post(form.action, data={**form.fields, "name": self.name})
        assert location(back) == start
        landed = self.client.get(start)
        assert landed.status_code == 200, text(landed)[:300]
        assert f'id="whoami">{self.name}<' in text(landed)
        return landed

    def csrf(self, page: str = "/notes/new") -> str:
        page_html = text(self.client.get(page))
        tokens: set[str] = set(re.findall(r'name="csrf_token" value="([^"]+)"', page_html))
        assert len(tokens) == 1, f"expected one CSRF token on {page}"
        return tokens.pop()

    def create(self, title: str, body: str, tags: str) -> int:
        page = self.client.get("/notes/new")
        form = form_posting_to(text(page), "/notes")
        resp = self.client.post("/notes", data={**form.fields, "title": title, "body": body, "tags": tags})
        target = location(resp)
        m = re.fullmatch(r"/notes/(\d+)", target)
        assert m, target
        return int(m.group(1))

    def edit(self, note_id: int, **changes: str) -> TestResponse:
        page = self.client.get(f"/notes/{note_id}/edit")
        assert page.status_code == 200
        form = form_posting_to(text(page), f"/notes/{note_id}")
        return self.client.post(form.action, data={**form.fields, **changes})

    def delete(self, note_id: int) -> TestResponse:
        page = self.client.get(f"/notes/{note_id}")
        assert page.status_code == 200
        form = form_posting_to(text(page), f"/notes/{note_id}/delete")
        return self.client.post(form.action, data=form.fields)

    def sign_out(self) -> TestResponse:
        form = form_posting_to(text(self.client.get("/")), "/signout")
        return self.client.post(form.action, data=form.fields)

    def api_notes(self) -> list[dict[str, Any]]:
        resp = self.client.get("/api/notes")
        assert resp.status_code == 200, text(resp)[:300]
        data = resp.get_json()
        assert isinstance(data, dict) and isinstance(data["notes"], list)
        return data["notes"]

    def titles(self, path: str) -> list[str]:
        """The note titles a list page (index or search results) shows."""
        resp = self.client.get(path)
        assert resp.status_code == 200, (path, resp.status_code)
        return [html.unescape(t) for t in re.findall(r'<h2><a href="/notes/\d+">([^<]*)</a></h2>', text(resp))]


# -- raw database checks ---------------------------------------------------------------------
def sqlite_dump(path: Path) -> str:
    """Every value of every table, read with the sqlite3 module (WAL included)."""
    conn = sqlite3.connect(path)
    try:
        out = []
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "notes" in tables and "note_tags" in tables
        for t in tables:
            for row in conn.execute(f'SELECT * FROM "{t}"'):
                out.append(" ".join(str(v) for v in row))
        return "\n".join(out)
    finally:
        conn.close()


def sqlite_file_bytes(path: Path) -> bytes:
    """The database file and its WAL/SHM companions, byte for byte."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def assert_no_plaintext(haystack: str | bytes, plaintexts: Iterable[str], where: str) -> None:
    """None of ``plaintexts`` occurs in ``haystack`` (case-insensitive)."""
    hay = (haystack if isinstance(haystack, bytes) else haystack.encode()).lower()
    for p in plaintexts:
        assert p.lower().encode() not in hay, f"plaintext {p!r} found in {where}"


# -- a real server on loopback -------------------------------------------------------------
@contextmanager
def serve(app: Flask, port: int = 0) -> Iterator[str]:
    """Serve ``app`` with werkzeug's threaded server on 127.0.0.1 (``port``, else an ephemeral one)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="example-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLERK_HOST = "fancy-fox-12.clerk.accounts.dev"


def clerk_example(example_env: str, sqlite_path: Path, party: str = "http://localhost") -> Any:
    """The example in Clerk mode (offline: CLERK_JWT_KEY) and a minter of Clerk-shaped session
    tokens for it: ``(app context manager, mint(sub, issued=...))``; ``party``: the authorized
    party (the browser's origin)."""
    import secrets
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    host = CLERK_HOST
    publishable = "pk_test_" + base64.b64encode(f"{host}$".encode()).decode().rstrip("=")

    def mint(sub: str, issued: float | None = None) -> str:
        iat = int(time.time() - 1 if issued is None else issued)
        payload = {"azp": party, "exp": iat + 60, "iat": iat, "nbf": iat - 10, "iss": f"https://{host}",
                   "jti": secrets.token_hex(10), "sid": "sess_2example", "sts": "active", "sub": sub, "v": 2}
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "ins_x", "typ": "JWT"})

    app = example_app(f"sqlite:///{sqlite_path}", example_env, LOCKKIT_PROVIDERS=["clerk"],
                      CLERK_PUBLISHABLE_KEY=publishable, CLERK_JWT_KEY=pem, CLERK_AUTHORIZED_PARTIES=party)
    return app, mint


def route_offline(context: Any, base: str, fakes: dict[str, str], outside: list[str]) -> None:
    """Route a Playwright browser context so that nothing leaves loopback: requests under
    ``base`` go through, each URL in ``fakes`` is answered with its JavaScript, anything else
    is aborted and recorded in ``outside``."""

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(base + "/"):
            r.continue_()
        elif url in fakes:
            r.fulfill(status=200, content_type="text/javascript", body=fakes[url])
        else:
            outside.append(url)
            r.abort()

    context.route("**/*", route)
