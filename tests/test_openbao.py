"""The OpenBao key service against a real OpenBao (dev node, and a file-storage node that is
restarted mid-run). The server, not lockkit, enforces the lock: these tests talk to OpenBao
directly with each user's token to prove it."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from lockkit import Encryption, LockContext, LockContextError, encrypted_column, encrypted_table
from lockkit.config import OpenBaoConfig
from lockkit.keys.openbao import (
    OpenBaoHTTP,
    OpenBaoKeyService,
    OpenBaoTokenService,
    decode_token,
    encode_token,
    key_name,
)
from lockkit.keys.openbao_setup import APP_POLICY, setup
from lockkit.oidc import OIDCVerifier
from lockkit.testing import LocalIssuer

from .bao_support import BaoFileServer
from .conftest import WORKSPACE

pytestmark = pytest.mark.backends("openbao")

notes = encrypted_table("notes", body=encrypted_column("body").equality().free_text_search())


@pytest.fixture
def client(users: Any, key_service: Any, token_service: Any) -> Encryption:
    """The suite's client, with this module's ``notes`` table declared too."""
    return Encryption([users, notes], key_service=key_service, token_service=token_service)


def bao_call(addr: str, token: str, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{addr}/v1/{path}", json=body, headers={"X-Vault-Token": token}, timeout=10)


def login(client: Encryption, idp: LocalIssuer, sub: str) -> LockContext:
    return client.lock_context().identify(idp.mint(sub)).unwrap()


def parts(lc: LockContext) -> tuple[str, str, str]:
    assert lc.cts_token is not None
    return decode_token(lc.cts_token.access_token)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_server_refuses_bob_on_every_transit_path_of_alices_key(
    backend: str, bao: Any, bao_config: OpenBaoConfig, client: Encryption, idp: LocalIssuer
) -> None:
    alice, bob = login(client, idp, "alice"), login(client, idp, "bob")
    a_tok, a_key, _ = parts(alice)
    b_tok, b_key, _ = parts(bob)
    assert a_key == "lkx-" + b"alice".hex() and b_key != a_key
    enc = client.encrypt("secret", column="body", table=notes).with_lock_context(alice).unwrap()
    wrapped = enc["kid"]
    # alice's own token works on her key
    assert bao_call(bao.addr, a_tok, "POST", f"transit/decrypt/{a_key}", {"ciphertext": wrapped}).status_code == 200
    paths = {
        "encrypt": {"plaintext": b64(b"x")},
        "decrypt": {"ciphertext": wrapped},
        "datakey/plaintext": {"bits": 256},
        "datakey/wrapped": {"bits": 256},
        "rewrap": {"ciphertext": wrapped},
        "hmac": {"input": b64(b"x")},
    }
    for op, body in paths.items():
        r = bao_call(bao.addr, b_tok, "POST", f"transit/{op}/{a_key}", body)
        assert r.status_code == 403, (op, r.status_code, r.text)
    batch = bao_call(bao.addr, b_tok, "POST", f"transit/decrypt/{a_key}", {"batch_input": [{"ciphertext": wrapped}] * 3})
    assert batch.status_code == 403
    # bob may not read key metadata, export, or change config either
    for method, path, body in [("GET", f"transit/keys/{a_key}", None), ("POST", f"transit/keys/{a_key}/config", {"exportable": True}),
                               ("GET", f"transit/export/encryption-key/{a_key}", None)]:
        assert bao_call(bao.addr, b_tok, method, path, body).status_code == 403, path
    # alice's wrapped DEK under bob's own key does not open (different key)
    r = bao_call(bao.addr, b_tok, "POST", f"transit/decrypt/{b_key}", {"ciphertext": wrapped})
    assert r.status_code == 400
    # and through lockkit: a tampered session token naming alice's key gets a LockContextError
    forged = LockContext(cts_token={"accessToken": __import__("lockkit.keys.openbao", fromlist=["x"]).encode_token(b_tok, a_key, "alice"),
                                    "expiry": bob.cts_token.expiry if bob.cts_token else 0})
    res = client.decrypt(enc).with_lock_context(forged)
    assert res.failure is not None and res.failure.type == "LockContextError"


def test_a_cached_data_key_never_serves_a_token_naming_another_users_key(
    backend: str, client: Encryption, idp: LocalIssuer
) -> None:
    """Data keys are cached per (OpenBao token, key name) that OpenBao accepted: bob's token
    with alice's key name (and subject) written into the CTS token misses the cache and goes to
    OpenBao, which refuses it, even for bob's own values and with his data key cached. (Served
    from the cache, the audit would name alice as the reader of bob's note.)"""
    bob = login(client, idp, "bob")
    b_tok, _, _ = parts(bob)
    ks = client.key_service
    assert isinstance(ks, OpenBaoKeyService)
    mine = client.encrypt("bob's note", column="body", table=notes).with_lock_context(bob).unwrap()
    assert client.decrypt(mine).with_lock_context(bob).unwrap() == "bob's note"
    calls = ks.transit_calls
    assert client.decrypt(mine).with_lock_context(bob).unwrap() == "bob's note"
    assert ks.transit_calls == calls  # bob's data key is cached
    alice_key = key_name(ks.config, "alice")
    forged = LockContext(cts_token={"accessToken": encode_token(b_tok, alice_key, "alice"),
                                    "expiry": bob.cts_token.expiry if bob.cts_token else 0})
    res = client.decrypt(mine).with_lock_context(forged).result()
    assert res.failure is not None and res.data is None, res
    assert ks.transit_calls == calls + 1  # asked OpenBao, which refused
    # bob's own token still reads from the cache
    assert client.decrypt(mine).with_lock_context(bob).unwrap() == "bob's note"
    assert ks.transit_calls == calls + 1


@pytest.mark.parametrize("pair", [("ALICE", "alice"), ("auth0|6543", "AUTH0|6543"), ("alice@example.com", "Alice@Example.com"),
                                  ("ünï", "ÜNÏ"), ("al*", "al+"), ("CS|user_2abcXYZ", "cs|user_2ABCxyz")])
def test_odd_and_case_variant_subjects_get_distinct_isolated_keys(
    backend: str, client: Encryption, idp: LocalIssuer, pair: tuple[str, str]
) -> None:
    one, two = (login(client, idp, s) for s in pair)
    assert parts(one)[1] != parts(two)[1]
    enc = client.encrypt("mine", column="body", table=notes).with_lock_context(one).unwrap()
    assert client.decrypt(enc).with_lock_context(one).unwrap() == "mine"
    res = client.decrypt(enc).with_lock_context(two)
    assert res.failure is not None and res.failure.type == "DecryptionError"
    t1 = client.encrypt_query("mine", column="body", table=notes, query_type="equality").with_lock_context(one).unwrap()
    t2 = client.encrypt_query("mine", column="body", table=notes, query_type="equality").with_lock_context(two).unwrap()
    assert t1 != t2 and t1["hm"] == enc["hm"]


def test_expired_or_nearly_expired_identity_token_cannot_log_in(backend: str, token_service: OpenBaoTokenService, idp: LocalIssuer) -> None:
    from lockkit import CtsTokenError

    with pytest.raises(CtsTokenError):  # lockkit refuses it before any network call
        token_service.authorize(idp.mint("alice", ttl=-30))
    calls = token_service.http.requests
    # past lockkit's leeway check: OpenBao's CEL role refuses a JWT with under 5 s left
    with pytest.raises(CtsTokenError, match="OpenBao"):
        token_service.authorize(idp.mint("alice", ttl=3))
    assert token_service.http.requests == calls + 1  # a 400 is never retried


def test_token_lifetime_is_bound_to_the_identity_token(backend: str, token_service: OpenBaoTokenService, idp: LocalIssuer) -> None:
    now = time.time()
    short = token_service.authorize(idp.mint("alice", ttl=60), now=now)
    assert short.expiry <= now + 61
    long = token_service.authorize(idp.mint("alice", ttl=7200), now=now)
    assert long.expiry <= now + 901  # capped by the role and the mount (900 s)


def test_app_service_token_cannot_get_plaintext_or_change_config(
    backend: str, bao: Any, bao_config: OpenBaoConfig, client: Encryption, idp: LocalIssuer
) -> None:
    alice = login(client, idp, "alice")
    _, a_key, _ = parts(alice)
    enc = client.encrypt("secret", column="body", table=notes).with_lock_context(alice).unwrap()
    r = bao_call(bao.addr, bao.root_token, "POST", "auth/token/create", {"policies": [APP_POLICY], "no_default_policy": True, "ttl": "5m"})
    app_token = r.json()["auth"]["client_token"]
    allowed = [("POST", "transit/keys/lkx-6e6577", {}), ("GET", f"transit/keys/{a_key}", None),
               ("POST", f"transit/rewrap/{a_key}", {"ciphertext": enc["kid"]})]
    for method, path, body in allowed:
        assert bao_call(bao.addr, app_token, method, path, body).status_code in (200, 204), path
    denied = [("POST", f"transit/decrypt/{a_key}", {"ciphertext": enc["kid"]}), ("POST", f"transit/datakey/plaintext/{a_key}", {}),
              ("POST", f"transit/keys/{a_key}/config", {"exportable": True}), ("GET", f"transit/export/encryption-key/{a_key}", None),
              ("POST", f"transit/keys/{a_key}/config", {"deletion_allowed": True}), ("POST", f"transit/hmac/{a_key}", {"input": b64(b"x")}),
              ("PUT", "sys/policies/acl/evil", {"policy": "path \"*\" { capabilities = [\"sudo\"] }"})]
    for method, path, body in denied:
        assert bao_call(bao.addr, app_token, method, path, body).status_code == 403, path
    meta = bao_call(bao.addr, bao.root_token, "GET", f"transit/keys/{a_key}").json()["data"]
    assert meta["exportable"] is False and meta["deletion_allowed"] is False
    # pre-creating a user's key: never exportable, backup-able, derived or of another type
    # (those settings cannot be undone once the key exists)
    bob_key = key_name(bao_config, "bob-not-yet-signed-in")
    for body in ({"exportable": True}, {"allow_plaintext_backup": True}, {"derived": True}, {"type": "chacha20-poly1305"},
                 {"exportable": False, "allow_plaintext_backup": True}):
        assert bao_call(bao.addr, app_token, "POST", f"transit/keys/{bob_key}", body).status_code == 403, body
    assert bao_call(bao.addr, bao.root_token, "GET", f"transit/keys/{bob_key}").status_code == 404


def test_one_foreign_value_in_a_batch_costs_no_extra_calls(backend: str, client: Encryption, idp: LocalIssuer) -> None:
    """OpenBao answers a batch holding one value it cannot open with 400, but with a result per
    item: those are used, not one call per item (anyone who can store one bad value would
    otherwise multiply the load by the batch size)."""
    alice, bob = login(client, idp, "alice"), login(client, idp, "bob")
    mine = client.bulk_encrypt([f"note {i}" for i in range(120)], column="body", table=notes).with_lock_context(alice).unwrap()
    foreign = client.encrypt("bob's", column="body", table=notes).with_lock_context(bob).unwrap()
    payloads = [r.unwrap() for r in mine]
    payloads.insert(60, foreign)
    ks = client.key_service
    assert isinstance(ks, OpenBaoKeyService)
    ks.forget(alice.cts_token)  # type: ignore[arg-type]  # nothing cached: every data key is unwrapped
    calls = ks.transit_calls
    got = client.bulk_decrypt(payloads).with_lock_context(alice).unwrap()
    assert ks.transit_calls - calls <= 2  # the batch (and nothing per item)
    assert [r.failure is not None for r in got].count(True) == 1 and got[60].failure is not None
    assert [r.unwrap() for i, r in enumerate(got) if i != 60] == [f"note {i}" for i in range(120)]


@pytest.mark.parametrize("status", [502, 503])
def test_a_login_is_never_sent_twice(backend: str, bao: Any, bao_config: OpenBaoConfig, idp: LocalIssuer,
                                     status: int) -> None:
    """A login creates a token each time: after a 5xx (which may come after OpenBao issued one)
    it is not retried, and the answer is 'unavailable', never a second live token."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Flaky(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from dataclasses import replace

        from lockkit.cts import CtsUnavailableError

        config = replace(bao_config, addr=f"http://127.0.0.1:{server.server_port}", retries=3, backoff=0.0)
        ts = OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config())])
        with pytest.raises(CtsUnavailableError):
            ts.authorize(idp.mint("carol"))
        assert len(seen) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_batches_are_chunked_to_the_server_limit(backend: str, bao_config: OpenBaoConfig, idp: LocalIssuer) -> None:
    config = OpenBaoConfig(addr=bao_config.addr, max_batch=7)
    ks = OpenBaoKeyService(config, WORKSPACE)
    client = Encryption([notes], key_service=ks, token_service=OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config())]))
    alice = login(client, idp, "alice")
    payloads = [client.encrypt(f"v{i}", column="body", table=notes).with_lock_context(alice).unwrap() for i in range(20)]
    assert len({p["kid"] for p in payloads}) == 20  # a fresh data key per operation
    fresh = OpenBaoKeyService(config, WORKSPACE)
    c2 = Encryption([notes], key_service=fresh, token_service=client.token_service)
    before = fresh.http.requests
    out = c2.bulk_decrypt(payloads).with_lock_context(alice).unwrap()
    assert [r.unwrap() for r in out] == [f"v{i}" for i in range(20)]
    assert fresh.http.requests - before == 3  # ceil(20 / 7) unwrap calls, one release
    again = c2.bulk_decrypt(payloads).with_lock_context(alice).unwrap()  # cached data keys
    assert fresh.http.requests - before == 3 and all(r.ok for r in again)


def test_bulk_is_one_transit_call_per_batch(backend: str, client: Encryption, key_service: OpenBaoKeyService, idp: LocalIssuer) -> None:
    alice = login(client, idp, "alice")
    before = key_service.http.requests
    encs = client.bulk_encrypt([f"n{i}" for i in range(1000)], column="body", table=notes).with_lock_context(alice).unwrap()
    assert key_service.http.requests - before == 2  # one datakey + one hmac (index keys)
    payloads = [r.unwrap() for r in encs]
    fresh = OpenBaoKeyService(key_service.config, WORKSPACE)
    c2 = Encryption([notes], key_service=fresh, token_service=client.token_service)
    out = c2.bulk_decrypt(payloads).with_lock_context(alice).unwrap()
    assert fresh.http.requests == 1 and [r.unwrap() for r in out] == [f"n{i}" for i in range(1000)]


def test_cached_data_keys_still_need_the_subjects_live_token(
    backend: str, client: Encryption, key_service: OpenBaoKeyService, idp: LocalIssuer
) -> None:
    alice = login(client, idp, "alice")
    enc = client.encrypt("x", column="body", table=notes).with_lock_context(alice).unwrap()
    assert client.decrypt(enc).with_lock_context(alice).unwrap() == "x"  # now cached
    assert alice.cts_token is not None
    expired = LockContext(cts_token={"accessToken": alice.cts_token.access_token, "expiry": int(time.time()) - 1})
    res = client.decrypt(enc).with_lock_context(expired)
    assert res.failure is not None and res.failure.type == "LockContextError"
    bob = login(client, idp, "bob")  # bob's token never hits alice's cache entry
    res = client.decrypt(enc).with_lock_context(bob)
    assert res.failure is not None and res.failure.type == "DecryptionError"


def test_forbidden_is_never_retried(backend: str, bao: Any, bao_config: OpenBaoConfig) -> None:
    sleeps: list[float] = []
    http = OpenBaoHTTP(bao_config, sleep=sleeps.append)
    with pytest.raises(Exception) as info:
        http.call("POST", "transit/decrypt/lkx-00", token="s.not-a-token", body={"ciphertext": "vault:v1:x"})
    assert getattr(info.value, "status", None) == 403 and http.requests == 1 and sleeps == []


def test_unreachable_server_is_retried_then_a_clear_error(backend: str, token_service: OpenBaoTokenService, idp: LocalIssuer) -> None:
    from lockkit import EncryptionError
    from lockkit.cts import CtsUnavailableError

    from .bao_support import free_port

    dead = OpenBaoConfig(addr=f"http://127.0.0.1:{free_port()}", timeout=0.5, retries=2)
    sleeps: list[float] = []
    http = OpenBaoHTTP(dead, sleep=sleeps.append)
    ts = OpenBaoTokenService(dead, [OIDCVerifier(idp.issuer_config())], http=http)
    with pytest.raises(CtsUnavailableError):
        ts.authorize(idp.mint("alice"))
    assert http.requests == 3 and len(sleeps) == 2
    lc = LockContext(cts_token=token_service.authorize(idp.mint("alice")))
    client = Encryption([notes], key_service=OpenBaoKeyService(dead, WORKSPACE, http=OpenBaoHTTP(dead, sleep=lambda s: None)),
                        token_service=ts)
    res = client.encrypt("x", column="body", table=notes).with_lock_context(lc)
    assert res.failure is not None and res.failure.type == "EncryptionError" and "unavailable" in res.failure.message
    with pytest.raises(EncryptionError):
        res.unwrap()


def test_plain_role_refuses_subjects_it_cannot_name_safely() -> None:
    cfg = OpenBaoConfig(addr="http://127.0.0.1:1", login="plain", key_prefix="lk-")
    assert key_name(cfg, "user_2abcXYZ") == "lk-user_2abcXYZ"
    for bad in ("auth0|1", "a@b.c", "ünï", "x..y", "-x", ""):
        with pytest.raises(LockContextError):
            key_name(cfg, bad)


def test_setup_is_idempotent_and_says_what_it_did(backend: str, bao: Any, bao_config: OpenBaoConfig, idp: LocalIssuer) -> None:
    steps = setup(bao_config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
    assert any("policy lockkit-user-cel" in s for s in steps) and any("CEL role" in s for s in steps)
    assert not any("enabled" in s for s in steps)  # mounts already exist
    with pytest.raises(ValueError):
        setup(bao_config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_ttl": 0}, "max_ttl"), ({"max_ttl": -60}, "max_ttl"), ({"max_ttl": 4}, "max_ttl"),
    ({"jwks_url": "http://idp.example.com/jwks"}, "must be https"), ({"jwks_url": "ftp://x/jwks"}, "must be https"),
])
def test_setup_refuses_an_uncapped_ttl_or_a_cleartext_jwks(
    backend: str, bao: Any, bao_config: OpenBaoConfig, idp: LocalIssuer, kwargs: dict[str, Any], message: str
) -> None:
    """A TTL of 0 or less caps nothing (OpenBao reads 0 as its system default); a JWKS over plain
    http to another host would let anyone on the path sign in as anyone. Refused before any call."""
    args: dict[str, Any] = {"issuer": idp.issuer, "jwks_url": idp.jwks_uri, "audiences": [idp.audience], **kwargs}
    with pytest.raises(ValueError, match=message):
        setup(bao_config, bao.root_token, **args)


def test_cli_setup_refuses_a_zero_ttl(backend: str, bao: Any, idp: LocalIssuer, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from lockkit.cli import main

    monkeypatch.setenv("BAO_TOKEN", bao.root_token)
    code = main(["openbao", "setup", "--addr", bao.addr, "--issuer", idp.issuer, "--jwks-url", idp.jwks_uri,
                 "--audience", idp.audience, "--max-ttl", "0"])
    assert code == 2 and "--max-ttl" in capsys.readouterr().err


def test_cli_setup(backend: str, bao: Any, idp: LocalIssuer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from lockkit.cli import main

    monkeypatch.setenv("BAO_TOKEN", bao.root_token)
    code = main(["openbao", "setup", "--addr", bao.addr, "--issuer", idp.issuer, "--jwks-url", idp.jwks_uri,
                 "--audience", idp.audience])
    out = capsys.readouterr().out
    assert code == 0 and "wrote CEL role lockkit" in out and bao.root_token not in out
    monkeypatch.delenv("BAO_TOKEN")
    assert main(["openbao", "setup", "--addr", bao.addr, "--issuer", idp.issuer, "--jwks-url", idp.jwks_uri, "--audience", "x"]) == 1


def test_durability_across_a_restart_mid_run(backend: str, tmp_path: Path, idp: LocalIssuer) -> None:
    """OpenBao on file storage is stopped and restarted in the middle of a run of writes:
    everything written before and after decrypts; writes during the outage fail clearly and
    store nothing."""
    server = BaoFileServer(tmp_path)
    server.start()
    try:
        assert server.root_token is not None
        config = OpenBaoConfig(addr=server.addr, timeout=1.0, retries=1, backoff=0.01)
        setup(config, server.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
        ts = OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config())])
        client = Encryption([notes], key_service=OpenBaoKeyService(config, WORKSPACE), token_service=ts)
        alice = login(client, idp, "alice")
        stored: dict[int, dict[str, Any]] = {}

        def write(i: int) -> bool:
            res = client.encrypt(f"note {i}", column="body", table=notes).with_lock_context(alice)
            if res.failure is not None:
                assert res.failure.type == "EncryptionError" and "unavailable" in res.failure.message
                return False
            stored[i] = res.unwrap()  # the "row" is written only after encryption succeeded
            return True

        assert all(write(i) for i in range(10))
        server.stop()
        assert not any(write(i) for i in range(10, 15))  # outage: clear errors, nothing stored
        server.start()
        assert all(write(i) for i in range(15, 25))
        assert sorted(stored) == list(range(10)) + list(range(15, 25))
        fresh = Encryption([notes], key_service=OpenBaoKeyService(config, WORKSPACE), token_service=ts)
        alice2 = login(fresh, idp, "alice")  # a new login after the restart
        out = fresh.bulk_decrypt(list(stored.values())).with_lock_context(alice2).unwrap()
        assert [r.unwrap() for r in out] == [f"note {i}" for i in sorted(stored)]
    finally:
        server.stop()


def test_rotation_and_rewrap_by_the_app_keep_payloads_readable(
    backend: str, bao: Any, client: Encryption, idp: LocalIssuer
) -> None:
    """Key lifecycle in OpenBao mode: the app's service identity rotates a user's transit key
    and re-wraps stored data keys to the newest version without ever seeing plaintext."""
    alice = login(client, idp, "alice-rotates")
    _, a_key, _ = parts(alice)
    old = client.encrypt("before rotation", column="body", table=notes).with_lock_context(alice).unwrap()
    app_token = bao_call(bao.addr, bao.root_token, "POST", "auth/token/create",
                         {"policies": [APP_POLICY], "no_default_policy": True, "ttl": "5m"}).json()["auth"]["client_token"]
    assert bao_call(bao.addr, app_token, "POST", f"transit/keys/{a_key}/rotate", {}).status_code in (200, 204)
    new = client.encrypt("after rotation", column="body", table=notes).with_lock_context(alice).unwrap()
    assert old["kid"].startswith("vault:v1:") and new["kid"].startswith("vault:v2:")
    r = bao_call(bao.addr, app_token, "POST", f"transit/rewrap/{a_key}", {"ciphertext": old["kid"]})
    assert r.status_code == 200
    moved = dict(old, kid=r.json()["data"]["ciphertext"])
    assert moved["kid"].startswith("vault:v2:")
    fresh = Encryption([notes], key_service=OpenBaoKeyService(client.key_service.config, WORKSPACE),
                       token_service=client.token_service)
    got = fresh.bulk_decrypt([old, moved, new]).with_lock_context(alice).unwrap()
    assert [g.unwrap() for g in got] == ["before rotation", "before rotation", "after rotation"]
