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

from lockkit import DecryptionError, Encryption, LockContext, LockContextError, encrypted_column, encrypted_table
from lockkit.config import OpenBaoConfig
from lockkit.keys.openbao import (
    OpenBaoHTTP,
    OpenBaoKeyService,
    OpenBaoTokenService,
    decode_token,
    encode_token,
    key_name,
)
from lockkit.keys.openbao_setup import APP_POLICY
from lockkit.keys.openbao_setup import setup as openbao_setup  # not `setup`: pytest 8.0 would run it as a nose-style module setup
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
    steps = openbao_setup(bao_config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
    assert any("policy lockkit-user-cel" in s for s in steps) and any("CEL role" in s for s in steps)
    assert not any("enabled" in s for s in steps)  # mounts already exist
    with pytest.raises(ValueError):
        openbao_setup(bao_config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri)


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
        openbao_setup(bao_config, bao.root_token, **args)


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
        openbao_setup(config, server.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
        ts = OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config())])
        client = Encryption([notes], key_service=OpenBaoKeyService(config, WORKSPACE), token_service=ts)
        alice = login(client, idp, "alice")
        stored: dict[int, dict[str, Any]] = {}

        def write(i: int) -> bool:
            res = client.encrypt(f"note {i}", column="body", table=notes).with_lock_context(alice)
            if res.failure is not None:
                assert res.failure.type == "EncryptionError" and "unavailable" in res.failure.message
                assert res.failure.retryable  # an outage, not a fault of the value: a web app answers 503
                return False
            stored[i] = res.unwrap()  # the "row" is written only after encryption succeeded
            return True

        assert all(write(i) for i in range(10))
        server.stop()
        assert not any(write(i) for i in range(10, 15))  # outage: clear errors, nothing stored
        cold = Encryption([notes], key_service=OpenBaoKeyService(config, WORKSPACE), token_service=ts)
        read = cold.decrypt(stored[0]).with_lock_context(alice).result()
        assert read.failure is not None and read.failure.type == "DecryptionError" and read.failure.retryable
        with pytest.raises(DecryptionError) as info:
            read.unwrap()
        assert info.value.retryable  # never "this value is damaged": it opens once OpenBao is back
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


# -- setup binds what it says, on every mount; odd subjects and odd answers ------------------
def cel_login(addr: str, mount: str, jwt: str) -> requests.Response:
    return requests.post(f"{addr}/v1/auth/{mount}/cel/login", json={"role": "lockkit", "jwt": jwt}, timeout=10)


def test_bound_claims_are_enforced_by_the_cel_role(backend: str, bao: Any, idp: LocalIssuer) -> None:
    """OpenBao's CEL role drops ``bound_claims``: setup compiles them into the program. A Clerk
    deployment bound to its azp refuses a token of another azp, one without azp, and one
    issued for some audience (the role binds none)."""
    app = "https://app.example.com"
    config = OpenBaoConfig(addr=bao.addr, auth_mount="jwt-azp", key_prefix="lka-")
    steps = openbao_setup(config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, bound_claims={"azp": [app]})
    assert any("azp in ['https://app.example.com']" in s and "no aud" in s for s in steps)

    def mint(**claims: Any) -> str:
        return idp.mint("user_2victim", omit=("aud",), **claims)

    assert cel_login(bao.addr, "jwt-azp", mint(azp=app)).status_code == 200
    for jwt in (mint(azp="https://other-app.example.net"), mint(), mint(azp=app + "/"), mint(azp=[app]),
                idp.mint("user_2victim", azp=app, aud=["some-third-party"]), idp.mint("user_2victim", azp=app)):
        r = cel_login(bao.addr, "jwt-azp", jwt)
        assert r.status_code == 400 and "blocked authorization" in r.text, r.text
    # lockkit end to end, with the matching verifier
    ts = OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config(audiences=(), authorized_parties=(app,)))])
    assert decode_token(ts.authorize(mint(azp=app)).access_token)[1] == "lka-" + b"user_2victim".hex()


def test_bound_claim_globs_and_odd_values_are_literal_except_the_star(backend: str, bao: Any, idp: LocalIssuer) -> None:
    org = 'q"u\\o\'te*'  # quotes and a backslash must reach CEL as data, never as syntax
    config = OpenBaoConfig(addr=bao.addr, auth_mount="jwt-glob", key_prefix="lkg-")
    openbao_setup(config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience],
          bound_claims={"azp": ["https://*.example.com"], "org": [org, "a.b", "ünï\n(x)"]})

    def status(azp: Any, org: Any) -> int:
        return cel_login(bao.addr, "jwt-glob", idp.mint("alice", azp=azp, org=org)).status_code

    ok = "https://tenant.example.com"
    for good in ('q"u\\o\'te', 'q"u\\o\'te-and\nmore', "a.b", "ünï\n(x)"):
        assert status(ok, good) == 200, good
    for bad in ('Q"u\\o\'te', "q\"u\\\\o'te", "axb", "a.b ", "ünï\n(x)x", 'xq"u\\o\'te', None, 7):
        assert status(ok, bad) == 400, bad
    for azp in ("https://tenant.example.com.evil.net", "https://tenantXexample.com", "http://tenant.example.com"):
        assert status(azp, "a.b") == 400, azp
    assert status("https://a.b.example.com", "a.b") == 200
    assert cel_login(bao.addr, "jwt-glob", idp.mint("alice", azp=ok, org="a.b", aud="other")).status_code == 400  # audience


@pytest.mark.parametrize("claims", [{"a-b": "x"}, {"in": "x"}, {"aud": "x"}, {"": "x"}, {"azp": []}, {"azp": [""]},
                                    {"azp": [7]}, {"azp": "\ud800"}])
def test_setup_refuses_bound_claims_it_cannot_compile(claims: dict[str, Any]) -> None:
    from lockkit.keys.openbao_setup import cel_role

    with pytest.raises(ValueError):
        cel_role([], claims, 900, 5)


def test_setup_reads_the_role_back_and_never_leaves_it_unbound(backend: str, bao: Any, idp: LocalIssuer) -> None:
    """A field the server silently drops (as the CEL role did with bound_claims) is caught by
    reading the role back; the role is then deleted, never left accepting any token."""
    from lockkit.keys.openbao import BaoError

    class Dropping(OpenBaoHTTP):
        def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
            body = kw.get("body")
            if method == "POST" and "/cel/role/" in path and isinstance(body, dict):
                program = dict(body["cel_program"], expression=body["cel_program"]["expression"].split(" : ")[-1])
                kw["body"] = {k: v for k, v in dict(body, cel_program=program).items() if k != "bound_audiences"}
            return super().call(method, path, **kw)

    config = OpenBaoConfig(addr=bao.addr, auth_mount="jwt-drop", key_prefix="lkr-")
    with pytest.raises(BaoError, match="bound_audiences.*deleted|expression.*deleted"):
        openbao_setup(config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience],
              bound_claims={"azp": ["x"]}, http=Dropping(config))
    assert bao_call(bao.addr, bao.root_token, "GET", "auth/jwt-drop/cel/role/lockkit").status_code == 404
    assert cel_login(bao.addr, "jwt-drop", idp.mint("alice", azp="other")).status_code == 400


def test_a_second_auth_mount_never_shares_user_keys(
    backend: str, bao: Any, bao_config: OpenBaoConfig, idp: LocalIssuer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Two identity providers on one server: the second mount must not template the first
    one's key names (its "alice" would open the first one's alice's data), nor rewrite the
    first deployment's app policy."""
    from lockkit.cli import main
    from lockkit.keys.openbao_setup import app_policy_name

    def app_policy_text(name: str) -> str:
        return str(bao_call(bao.addr, bao.root_token, "GET", f"sys/policies/acl/{name}").json()["data"]["policy"])

    before = app_policy_text(APP_POLICY)
    with LocalIssuer(audience="app-b") as idp_b:
        args = ["openbao", "setup", "--addr", bao.addr, "--issuer", idp_b.issuer, "--jwks-url", idp_b.jwks_uri,
                "--audience", "app-b", "--auth-mount", "jwt-b"]
        monkeypatch.setenv("BAO_TOKEN", bao.root_token)
        assert main(args) == 1 and "--key-prefix" in capsys.readouterr().err
        for prefix in ("lkx-", "lkx-6", "lk"):  # the same key names, or names one prefix can reach
            with pytest.raises(ValueError, match="own key prefix"):
                openbao_setup(OpenBaoConfig(addr=bao.addr, auth_mount="jwt-b", key_prefix=prefix), bao.root_token,
                      issuer=idp_b.issuer, jwks_url=idp_b.jwks_uri, audiences=["app-b"])
        assert "jwt-b/" not in bao_call(bao.addr, bao.root_token, "GET", "sys/auth").json()["data"]  # refused first
        assert main([*args, "--key-prefix", "lkb-"]) == 0
        cfg_b = OpenBaoConfig(addr=bao.addr, auth_mount="jwt-b", key_prefix="lkb-")
        name_b = app_policy_name(cfg_b)
        out = capsys.readouterr().out
        assert name_b != APP_POLICY and f"wrote policy {name_b}" in out and "LOCKKIT_OPENBAO_KEY_PREFIX=lkb-" in out
        assert app_policy_text(APP_POLICY) == before  # the first deployment's app policy is untouched
        assert 'path "transit/rewrap/lkb-*"' in app_policy_text(name_b)
        ts_a = OpenBaoTokenService(bao_config, [OIDCVerifier(idp.issuer_config())])
        ts_b = OpenBaoTokenService(cfg_b, [OIDCVerifier(idp_b.issuer_config())])
        app_a = Encryption([notes], key_service=OpenBaoKeyService(bao_config, WORKSPACE), token_service=ts_a)
        app_b = Encryption([notes], key_service=OpenBaoKeyService(cfg_b, WORKSPACE), token_service=ts_b)
        alice_a, alice_b = login(app_a, idp, "alice"), login(app_b, idp_b, "alice")  # two people
        secret = app_a.encrypt("A's alice's diary", column="body", table=notes).with_lock_context(alice_a).unwrap()
        assert parts(alice_a)[1] == "lkx-616c696365" and parts(alice_b)[1] == "lkb-616c696365"
        res = app_b.decrypt(secret).with_lock_context(alice_b)
        assert res.failure is not None and res.failure.type == "DecryptionError"
        r = bao_call(bao.addr, parts(alice_b)[0], "POST", f"transit/decrypt/{parts(alice_a)[1]}", {"ciphertext": secret["kid"]})
        assert r.status_code == 403
        mine = app_b.encrypt("B's alice's", column="body", table=notes).with_lock_context(alice_b).unwrap()
        assert app_b.decrypt(mine).with_lock_context(alice_b).unwrap() == "B's alice's"
        assert app_a.decrypt(secret).with_lock_context(alice_a).unwrap() == "A's alice's diary"
        assert main([*args, "--key-prefix", "lkb-"]) == 0  # re-running it is fine
        # a mount whose user policy name clashes with the default mount's ("cel" and "jwt-cel" both
        # map to lockkit-user-cel) is refused, whatever its prefix: it would replace that policy
        user_a = bao_call(bao.addr, bao.root_token, "GET", "sys/policies/acl/lockkit-user-cel").json()["data"]["policy"]
        for prefix in ("lkx-", "lkc-"):
            with pytest.raises(ValueError, match="belongs to another auth mount|own key prefix"):
                openbao_setup(OpenBaoConfig(addr=bao.addr, auth_mount="cel", key_prefix=prefix), bao.root_token,
                      issuer=idp_b.issuer, jwks_url=idp_b.jwks_uri, audiences=["app-b"])
        assert bao_call(bao.addr, bao.root_token, "GET", "sys/policies/acl/lockkit-user-cel").json()["data"]["policy"] == user_a
        assert app_a.decrypt(secret).with_lock_context(login(app_a, idp, "alice")).unwrap() == "A's alice's diary"


@pytest.mark.parametrize("sub", ["\ufffdvictim", "\ud800victim", "\udfffvictim"])
def test_subjects_openbao_would_read_as_u_fffd_are_refused(
    backend: str, bao: Any, bao_config: OpenBaoConfig, idp: LocalIssuer, token_service: OpenBaoTokenService,
    client: Encryption, sub: str
) -> None:
    """OpenBao (Go) decodes a JSON lone surrogate to U+FFFD: "\\ud800victim" and
    "\\ufffdvictim" would be one alias and one key. The role refuses both; so does lockkit,
    with a typed error."""
    from lockkit import CtsTokenError
    from lockkit.keys.openbao import subject_of

    r = cel_login(bao.addr, bao_config.auth_mount, idp.mint(sub))
    assert r.status_code == 400 and "U+FFFD" in r.text, r.text
    with pytest.raises(LockContextError):
        key_name(bao_config, sub)
    with pytest.raises(CtsTokenError):
        token_service.authorize(idp.mint(sub))
    res = client.lock_context().identify(idp.mint(sub))
    assert res.failure is not None and res.failure.type == "CtsTokenError"
    assert subject_of(bao_config, "lkx-" + "\ufffdvictim".encode().hex()) is None
    assert cel_login(bao.addr, bao_config.auth_mount, idp.mint("ünï victim")).status_code == 200


def test_a_malformed_answer_is_a_typed_error(backend: str, idp: LocalIssuer) -> None:
    """Something else answering at the OpenBao address (a proxy, another service) with 200 and
    JSON of the wrong shape: lockkit errors, never a bare Python exception."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from lockkit import CtsTokenError
    from lockkit.identity import CtsToken

    answers: dict[str, Callable[[dict[str, Any]], Any]] = {}

    class Fake(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            parts = self.path.split("/")
            body = json.dumps(answers[parts[3] if parts[2] == "transit" else parts[2]](request)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    def hmacs(mac: Any) -> Callable[[dict[str, Any]], Any]:
        return lambda req: {"data": {"batch_results": [{"hmac": mac}] * len(req["batch_input"])}}

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = OpenBaoConfig(addr=f"http://127.0.0.1:{server.server_port}", retries=0)
        ts = OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config())])
        for auth in ("unexpected", ["x"], 7, {"client_token": 7, "lease_duration": "x"}):
            answers["auth"] = lambda req, auth=auth: {"auth": auth}
            with pytest.raises(CtsTokenError):
                ts.authorize(idp.mint("alice"))
        lc = LockContext(cts_token=CtsToken(encode_token("s.fake", key_name(config, "alice"), "alice"), int(time.time()) + 300))
        client = Encryption([notes], key_service=OpenBaoKeyService(config, WORKSPACE), token_service=ts)
        answers["datakey"] = lambda req: {"data": {"plaintext": b64(bytes(32)), "ciphertext": "vault:v1:abc"}}
        answers["hmac"] = hmacs("vault:v1:" + b64(bytes(32)))
        payload = client.encrypt("x", column="body", table=notes).with_lock_context(lc).unwrap()  # well-formed: works
        for datakey in ("unexpected", {"plaintext": "not base64!", "ciphertext": "vault:v1:abc"}):
            answers["datakey"] = lambda req, d=datakey: {"data": d}
            res = client.encrypt("x", column="body", table=notes).with_lock_context(lc).result()
            assert res.failure is not None and res.failure.type == "EncryptionError", res
        for data in ("unexpected", {"batch_results": 5}, {"batch_results": ["x"]}, {"batch_results": []}):
            answers["decrypt"] = lambda req, d=data: {"data": d}
            res = client.decrypt(payload).with_lock_context(lc).result()
            assert res.failure is not None and res.failure.type == "DecryptionError", (data, res)
        for answer in (lambda req: {"data": "unexpected"}, lambda req: {"data": {"batch_results": 5}},
                       lambda req: {"data": {"batch_results": ["x"]}}, hmacs("vault:v1:abc"), hmacs("vault:v1:!!!!"),
                       hmacs(7), hmacs("vault:v1:")):
            answers["hmac"] = answer
            res = client.encrypt_query("x", column="body", table=notes, query_type="equality").with_lock_context(lc).result()
            assert res.failure is not None and res.failure.type == "EncryptionError", res
    finally:
        server.shutdown()
        server.server_close()


def test_setup_keeps_the_operators_auth_settings(backend: str, bao: Any, bao_config: OpenBaoConfig, idp: LocalIssuer) -> None:
    """Re-running setup changes jwks_url and bound_issuer only: an operator's jwks_ca_pem (a
    private IdP CA), supported algorithms and default role stay (OpenBao replaces the whole
    config on a write)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Private IdP CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
          .not_valid_before(datetime.datetime(2024, 1, 1)).not_valid_after(datetime.datetime(2034, 1, 1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    path = f"auth/{bao_config.auth_mount}/config"
    original = bao_call(bao.addr, bao.root_token, "GET", path).json()["data"]
    mine = {"jwks_url": original["jwks_url"], "bound_issuer": original["bound_issuer"], "jwks_ca_pem": pem,
            "jwt_supported_algs": ["RS256", "ES256"], "default_role": "lockkit"}
    assert bao_call(bao.addr, bao.root_token, "POST", path, mine).status_code == 204
    try:
        openbao_setup(bao_config, bao.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
        now = bao_call(bao.addr, bao.root_token, "GET", path).json()["data"]
        assert now["jwks_ca_pem"].strip() == pem.strip()
        assert now["jwt_supported_algs"] == ["RS256", "ES256"] and now["default_role"] == "lockkit"
        assert now["jwks_url"] == idp.jwks_uri and now["bound_issuer"] == idp.issuer
        assert login(Encryption([notes], key_service=OpenBaoKeyService(bao_config, WORKSPACE),
                                token_service=OpenBaoTokenService(bao_config, [OIDCVerifier(idp.issuer_config())])),
                     idp, "alice").cts_token is not None
    finally:
        bao_call(bao.addr, bao.root_token, "POST", path, {"jwks_url": original["jwks_url"], "bound_issuer": original["bound_issuer"]})
