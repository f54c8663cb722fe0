"""Several app servers: two processes of the example app on different ports share OpenBao
(keys), Redis (sessions) and PostgreSQL (data). A user signs in on one and reads their notes
on the other; the second server makes no exchange of its own."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from lockkit.config import OpenBaoConfig
from lockkit.keys.openbao_setup import setup as openbao_setup  # not `setup`: pytest 8.0 would run it as a nose-style module setup

from .bao_support import free_port, iter_dev
from .process_support import dies_with_us

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def bao_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from iter_dev(tmp_path_factory.mktemp("bao-scaleout"))


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"lockkit_scale_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        pytest.skip(reason=f"PostgreSQL on 127.0.0.1:5432 unreachable: {err}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.skip(reason=f"Redis on 127.0.0.1:6379 unreachable: {err}")
    yield "redis://127.0.0.1:6379/0"
    for key in client.scan_iter("notes:*"):
        client.delete(key)


def _serve(port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    log = open(cwd / f"app-{port}.log", "wb")
    with log:
        proc = subprocess.Popen(dies_with_us([sys.executable, "-m", "examples.flask_clerk"]), cwd=ROOT, env={**env, "PORT": str(port)},
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app on {port} exited: {(cwd / f'app-{port}.log').read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"app on {port} did not start")


def test_sign_in_on_one_server_read_on_another(
    bao_node: Any, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    from lockkit_dev import AUDIENCE, DevProvider

    secret = secrets.token_urlsafe(32)
    dev = DevProvider(secret)  # both servers derive the same dev issuer from SECRET_KEY
    p1, p2 = free_port(), free_port()
    config = OpenBaoConfig(addr=bao_node.addr, auth_mount="jwt-dev", key_prefix="lkd-")
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
        "SECRET_KEY": secret, "DATABASE_URL": pg_url, "REDIS_URL": redis_url,
        "LOCKKIT_WORKSPACE_CRN": "crn:local:ws-scale", "LOCKKIT_KEY_BACKEND": "openbao",
        "LOCKKIT_OPENBAO_ADDR": bao_node.addr, "LOCKKIT_OPENBAO_AUTH_MOUNT": "jwt-dev",
        "LOCKKIT_OPENBAO_KEY_PREFIX": "lkd-",
    }
    servers = [_serve(p1, env, tmp_path), _serve(p2, env, tmp_path)]
    try:
        # OpenBao checks the JWKS URL when configured: the dev issuer's keys are served by the app
        openbao_setup(config, bao_node.root_token, issuer=dev.issuer, jwks_url=f"http://127.0.0.1:{p1}/lockkit/dev/jwks.json",
              audiences=[AUDIENCE])
        s = requests.Session()
        one, two = f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"
        form = s.get(f"{one}/notes/new", timeout=10)  # redirected to the dev sign-in
        assert "/lockkit/dev/login" in form.url
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        page = s.post(f"{one}/lockkit/dev/login", data={"csrf": csrf, "name": "alice", "next": "/notes/new"}, timeout=10)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        made = s.post(f"{one}/notes", data={"csrf_token": token, "title": "Across servers",
                                              "body": "written on one, read on two", "tags": "scale"}, timeout=10)
        assert made.status_code == 200 and "Across servers" in made.text, made.text[:500]
        note_url = made.url.replace(one, two)
        # the same session cookie (a session id; the session lives in Redis) on the other server
        read = s.get(note_url, timeout=10)
        assert read.status_code == 200 and "written on one, read on two" in read.text
        assert "Across servers" in s.get(f"{two}/search?tag=scale", timeout=10).text
        # bob, signed in on server two, sees nothing of alice's and gets 404 for her note
        b = requests.Session()
        form = b.get(f"{two}/notes/new", timeout=10)
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        b.post(f"{two}/lockkit/dev/login", data={"csrf": csrf, "name": "bob", "next": "/"}, timeout=10)
        assert "Across servers" not in b.get(f"{one}/", timeout=10).text
        assert b.get(note_url, timeout=10).status_code == 404
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=15)
    import psycopg

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT title, body FROM notes").fetchall()
        tags = conn.execute("SELECT tag FROM note_tags").fetchall()
    raw = repr(rows) + repr(tags)
    assert rows and "Across servers" not in raw and "written on one" not in raw and '"scale"' not in raw
    assert "vault:v1:" in raw  # data keys wrapped by OpenBao
