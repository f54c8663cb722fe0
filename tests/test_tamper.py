"""Tampered payloads, moved payloads, forged CTS tokens and rejected identity JWTs: each is a
typed failure (never a wrong plaintext, never another exception type), and a forged lock is
refused before any key is released."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from lockkit import (
    CtsToken,
    CtsTokenError,
    EncryptedTable,
    Encryption,
    LockContext,
    Operation,
    encrypted_column,
    encrypted_table,
)
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.oidc import OIDCVerifier
from lockkit.payload import CHECK_BYTES, NONCE_BYTES
from lockkit.testing import LocalIssuer

Identify = Callable[..., LockContext]
TYPED_FAILURES = ("DecryptionError", "LockContextError")


def _sealed(op: Operation[dict[str, Any] | None]) -> dict[str, Any]:
    """The payload of an encrypt operation that must produce one."""
    payload = op.unwrap()
    assert payload is not None
    return payload


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(obj: Any) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _unb64url(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def _assert_typed_failure(res: Any, types: tuple[str, ...] = TYPED_FAILURES, fragment: str | None = None) -> None:
    assert res.data is None
    assert res.failure is not None, "a tampered payload decrypted"
    assert res.failure.type in types, res.failure
    if fragment is not None:
        assert fragment in res.failure.message, res.failure.message


@pytest.fixture
def samples(client: Encryption, users: EncryptedTable, alice: LockContext, backend: str) -> dict[str, dict[str, Any]]:
    """Two short payloads: one locked to alice, one not (OpenBao mode has only locked values)."""
    out = {"locked": _sealed(client.encrypt("hi", column=users.email, table=users).with_lock_context(alice))}
    if backend == "local":
        out["unlocked"] = _sealed(client.encrypt("yo", column=users.email, table=users))
    return out


def _lc_for(kind: str, alice: LockContext) -> LockContext | None:
    return alice if kind == "locked" else None


def _decrypt(client: Encryption, payload: Any, lc: LockContext | None) -> Any:
    op = client.decrypt(payload)
    return (op.with_lock_context(lc) if lc is not None else op).result()


# -- bit flips -------------------------------------------------------------------------------


def test_every_single_bit_flip_is_a_decryption_error(
    client: Encryption, alice: LockContext, samples: dict[str, dict[str, Any]]
) -> None:
    for kind in samples:
        _test_every_single_bit_flip_is_a_decryption_error_one(client, alice, samples, kind)


def _test_every_single_bit_flip_is_a_decryption_error_one(
    client: Encryption, alice: LockContext, samples: dict[str, dict[str, Any]], kind: str
) -> None:
    payload = samples[kind]
    lc = _lc_for(kind, alice)
    plaintext = "hi" if kind == "locked" else "yo"
    assert _decrypt(client, payload, lc).data == plaintext  # control
    raw = base64.b64decode(payload["c"])
    flipped: list[dict[str, Any]] = []
    for byte in range(len(raw)):
        for bit in range(8):
            mutated = bytearray(raw)
            mutated[byte] ^= 1 << bit
            flipped.append(dict(payload, c=base64.b64encode(bytes(mutated)).decode()))
    assert len(flipped) == 8 * len(raw) >= 8 * (NONCE_BYTES + CHECK_BYTES + 16)
    body_start = NONCE_BYTES + CHECK_BYTES
    for n, p in enumerate(flipped):
        res = _decrypt(client, p, lc)
        assert res.data is None and res.failure is not None and res.failure.type == "DecryptionError", (n, res)
        if n // 8 >= body_start:  # ciphertext or tag: the key check still passes, the AEAD does not
            assert "tampered" in res.failure.message
    # the same through the bulk path: every item fails on its own
    op = client.bulk_decrypt(flipped)
    out = (op.with_lock_context(lc) if lc is not None else op).unwrap()
    assert len(out) == len(flipped)
    assert all(r.data is None and r.failure is not None and r.failure.type == "DecryptionError" for r in out)

# -- header and shape edits ------------------------------------------------------------------


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


def _edits(p: dict[str, Any]) -> dict[str, Any]:
    raw = base64.b64decode(p["c"])
    return {
        "i.t other table": dict(p, i={"t": "accounts", "c": "email"}),
        "i.t empty": dict(p, i={"t": "", "c": "email"}),
        "i.t int": dict(p, i={"t": 5, "c": "email"}),
        "i.c other column": dict(p, i={"t": "users", "c": "name"}),
        "i.c unknown column": dict(p, i={"t": "users", "c": "nope"}),
        "i.c list": dict(p, i={"t": "users", "c": ["email"]}),
        "i string": dict(p, i="users.email"),
        "i missing c": dict(p, i={"t": "users"}),
        "kid other version": dict(p, kid="2"),
        "kid zero": dict(p, kid="0"),
        "kid non numeric": dict(p, kid="abc"),
        "kid leading zero": dict(p, kid="01"),
        "kid empty": dict(p, kid=""),
        "kid int": dict(p, kid=1),
        "lc sub+scopes": dict(p, lc=["sub", "scopes"]),
        "lc org_id": dict(p, lc=["org_id"]),
        "lc empty": dict(p, lc=[]),
        "lc string": dict(p, lc="sub"),
        "lc non-string member": dict(p, lc=[1]),
        **({"lc null": dict(p, lc=None)} if "lc" in p else {}),  # null is "absent": a no-op when unlocked
        "ks other": dict(p, ks="tenant-a"),
        "ks empty": dict(p, ks=""),
        "ks int": dict(p, ks=0),
        "v 2": dict(p, v=2),
        "v 0": dict(p, v=0),
        "v string": dict(p, v="1"),
        "v true": dict(p, v=True),
        "k pt": dict(p, k="pt"),
        "extra field": dict(p, x=1),
        "extra field meta": dict(p, meta={"note": "hello"}),
        "c not base64": dict(p, c="!!not base64!!"),
        "c urlsafe alphabet": dict(p, c=base64.urlsafe_b64encode(raw).decode().replace("=", "")),
        "c with newline": dict(p, c=p["c"][:8] + "\n" + p["c"][8:]),
        "c truncated by one byte": dict(p, c=base64.b64encode(raw[:-1]).decode()),
        "c truncated to nonce": dict(p, c=base64.b64encode(raw[:NONCE_BYTES]).decode()),
        "c empty": dict(p, c=""),
        "c extended": dict(p, c=base64.b64encode(raw + b"\x00").decode()),
        "c int": dict(p, c=12345),
        "c null": dict(p, c=None),
        "c of another value": dict(p, c=base64.b64encode(raw[:NONCE_BYTES] + bytes(len(raw) - NONCE_BYTES)).decode()),
        **{f"without {k}": _without(p, k) for k in ("v", "k", "i", "ks", "kid", "c", "lc") if k in p},
        "JSON list": [p],
        "JSON list of pairs": list(p.items()),
        "list string": json.dumps([p]),
        "number": 42,
        "true": True,
        "empty dict": {},
        "empty string": "",
        "bytes not utf-8": b"\xff\xfe\x00",
        "JSON of a number": "1",
        "JSON NaN": '{"v": NaN, "k": "ct", "c": ""}',
        "non-string keys": {1: 2, "k": "ct", "v": 1, "c": ""},
    }


def test_header_and_shape_edits_are_typed_failures(
    client: Encryption, alice: LockContext, samples: dict[str, dict[str, Any]]
) -> None:
    for kind in samples:
        _test_header_and_shape_edits_are_typed_failures_one(client, alice, samples, kind)


def _test_header_and_shape_edits_are_typed_failures_one(
    client: Encryption, alice: LockContext, samples: dict[str, dict[str, Any]], kind: str
) -> None:
    payload = samples[kind]
    lc = _lc_for(kind, alice)
    edits = _edits(copy.deepcopy(payload))
    for name, edited in edits.items():
        for reader in (lc, alice, None):
            try:
                res = _decrypt(client, edited, reader)
            except Exception as err:  # pragma: no cover - the assertion message is the point
                pytest.fail(f"{name}: {type(err).__name__} escaped: {err}")
            assert res.data is None, f"{name}: decrypted"
            assert res.failure is not None and res.failure.type in TYPED_FAILURES, (name, res)
    # all at once: one bad item never sinks the others
    out = client.bulk_decrypt([payload, *edits.values(), payload]).with_lock_context(alice).unwrap()
    plaintext = "hi" if kind == "locked" else "yo"
    assert out[0].data == out[-1].data == plaintext
    assert all(r.failure is not None and r.failure.type in TYPED_FAILURES for r in out[1:-1])
    assert payload == samples[kind]  # nothing mutated the original

@pytest.mark.backends("local")  # OpenBao mode has no claims other than sub; see test_openbao.py
def test_lc_names_only_the_lock_context_can_fix_are_lock_context_errors(
    client: Encryption, alice: LockContext, samples: dict[str, dict[str, Any]]
) -> None:
    locked = samples["locked"]
    _assert_typed_failure(_decrypt(client, locked, None), ("LockContextError",), "with_lock_context")
    _assert_typed_failure(_decrypt(client, dict(locked, lc=["sub", "scopes"]), alice), ("LockContextError",))
    # an unlocked payload dressed up as locked: alice's lock context opens nothing
    _assert_typed_failure(_decrypt(client, dict(samples["unlocked"], lc=["sub"]), alice), ("DecryptionError",))
    # a locked payload with its lock removed: the unlocked key is another key
    res = _decrypt(client, _without(locked, "lc"), None)
    _assert_typed_failure(res, ("DecryptionError",), "other keys")


@pytest.mark.backends("local")  # OpenBao mode has no keyring versions; see test_openbao.py
def test_a_removed_key_version_is_a_decryption_error(
    client: Encryption, alice: LockContext, samples: dict[str, dict[str, Any]]
) -> None:
    res = _decrypt(client, dict(samples["locked"], kid="7"), alice)
    _assert_typed_failure(res, ("DecryptionError",), "key version 7")


def test_deeply_nested_json_payload_is_a_decryption_error(client: Encryption, alice: LockContext) -> None:
    """json.loads raises RecursionError here, which must not escape (nor sink a bulk)."""
    deep = "[" * 100_000 + "]" * 100_000
    res = client.decrypt(deep).with_lock_context(alice).result()
    assert res.failure is not None and res.failure.type == "DecryptionError"
    out = client.bulk_decrypt([deep, None]).with_lock_context(alice).unwrap()
    assert out[0].failure is not None and out[1].failure is None


def test_deeply_nested_json_value_is_an_encryption_error(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    """json.dumps raises RecursionError here, which must not escape (nor sink a bulk)."""
    deep: list[Any] = []
    cur = deep
    for _ in range(5000):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    res = client.encrypt(deep, column="notes", table=users).with_lock_context(alice).result()
    assert res.failure is not None and res.failure.type == "EncryptionError"
    out = client.bulk_encrypt([deep, [1]], column="notes", table=users).with_lock_context(alice).unwrap()
    assert out[0].failure is not None and out[1].failure is None


# -- moved payloads --------------------------------------------------------------------------


@pytest.fixture
def accounts() -> EncryptedTable:
    return encrypted_table("accounts", email=encrypted_column("email").equality(), owner=encrypted_column("owner"))


@pytest.fixture
def two_table_client(
    users: EncryptedTable, accounts: EncryptedTable, key_service: LocalKeyService, token_service: EmbeddedTokenService
) -> Encryption:
    return Encryption([users, accounts], key_service=key_service, token_service=token_service)


def test_a_payload_moved_to_another_column_belongs_elsewhere(
    client: Encryption, users: EncryptedTable, alice: LockContext
) -> None:
    enc = client.encrypt_model({"email": "a@example.com", "name": "Alice"}, users).with_lock_context(alice).unwrap()
    swapped = {"email": enc["name"], "name": enc["email"]}
    res = client.decrypt_model(swapped, users).with_lock_context(alice)
    _assert_typed_failure(res, ("DecryptionError",), "belongs to users.name")
    bulk = client.bulk_decrypt_models([enc, swapped], users).with_lock_context(alice)
    _assert_typed_failure(bulk, ("DecryptionError",), "belongs to")
    # editing the header to claim the new column does not help: the header is authenticated
    forged = dict(enc["name"], i={"t": "users", "c": "email"})
    for op in (client.decrypt_model({"email": forged}, users), client.decrypt(forged)):
        _assert_typed_failure(op.with_lock_context(alice).result(), ("DecryptionError",))


def test_a_payload_moved_to_another_table_fails(
    two_table_client: Encryption, users: EncryptedTable, accounts: EncryptedTable, alice: LockContext
) -> None:
    c = two_table_client
    p = _sealed(c.encrypt("a@example.com", column=users.email, table=users).with_lock_context(alice))
    own = _sealed(c.encrypt("b@example.com", column=accounts.email, table=accounts).with_lock_context(alice))
    assert c.decrypt_model({"email": own}, accounts).with_lock_context(alice).unwrap() == {"email": "b@example.com"}
    res = c.decrypt_model({"email": p}, accounts).with_lock_context(alice)
    _assert_typed_failure(res, ("DecryptionError",), "belongs to users.email, not accounts.email")
    for header in ({"t": "accounts", "c": "email"}, {"t": "accounts", "c": "owner"}):
        forged = dict(p, i=header)
        _assert_typed_failure(c.decrypt(forged).with_lock_context(alice).result(), ("DecryptionError",))
        _assert_typed_failure(
            c.decrypt_model({header["c"]: forged}, accounts).with_lock_context(alice).result(), ("DecryptionError",)
        )


def test_a_payload_moved_to_another_identity_fails(
    client: Encryption, users: EncryptedTable, alice: LockContext, bob: LockContext, identify: Identify
) -> None:
    p = _sealed(client.encrypt("a@example.com", column=users.email, table=users).with_lock_context(alice))
    model = client.encrypt_model({"email": "a@example.com"}, users).with_lock_context(alice).unwrap()
    _assert_typed_failure(client.decrypt(p).with_lock_context(bob).result(), ("DecryptionError",), "another identity")
    _assert_typed_failure(client.decrypt_model(model, users).with_lock_context(bob).result(), ("DecryptionError",))
    # relabelled to claims bob shares with alice (same org): still alice's key
    org_bob = identify("bob", identity_claim=("org_id",), org_id="acme")
    _assert_typed_failure(client.decrypt(dict(p, lc=["org_id"])).with_lock_context(org_bob).result())
    # relabelled to a lock bob can name with his own scopes: still alice's key
    scoped_bob = identify("bob", identity_claim=("sub", "scopes"), scope="read")
    _assert_typed_failure(client.decrypt(dict(p, lc=["sub", "scopes"])).with_lock_context(scoped_bob).result())
    # and alice's own scoped identity is another identity than alice
    scoped_alice = identify("alice", identity_claim=("sub", "scopes"), scope="read")
    _assert_typed_failure(client.decrypt(dict(p, lc=["sub", "scopes"])).with_lock_context(scoped_alice).result())


# -- forged CTS tokens -----------------------------------------------------------------------


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    h, p, s = token.split(".")
    return json.loads(_unb64url(h)), json.loads(_unb64url(p)), s


def _jws(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    signing_input = f"{_b64url_json(header)}.{_b64url_json(payload)}"
    sig = _b64url(sign(signing_input.encode())) if sign is not None else ""
    return f"{signing_input}.{sig}"


@pytest.fixture
def forged_tokens(
    alice: LockContext, bob: LockContext, idp: LocalIssuer, keyring: Keyring, token_service: EmbeddedTokenService
) -> dict[str, str]:
    """CTS access tokens an attacker could present, all claiming to be alice (or bob-as-alice)."""
    assert alice.cts_token is not None and bob.cts_token is not None
    real = alice.cts_token.access_token
    header, claims, signature = _segments(real)
    workspace = keyring.workspace_crn
    verifiers = [OIDCVerifier(idp.issuer_config())]

    other_keyring = EmbeddedTokenService(
        workspace_crn=workspace, keyring=Keyring.generate(workspace), verifiers=verifiers
    ).authorize(idp.mint("alice")).access_token
    other_ws = "crn:local:ws-other"
    other_workspace = EmbeddedTokenService(
        workspace_crn=other_ws, keyring=Keyring.generate(other_ws), verifiers=verifiers
    ).authorize(idp.mint("alice")).access_token
    # our keyring's own signing key, but minted for another workspace (audience)
    other_audience = EmbeddedTokenService(
        workspace_crn=other_ws, keyring=keyring, verifiers=verifiers
    ).authorize(idp.mint("alice")).access_token

    then = time.time() - 3600
    expired = token_service.authorize(idp.mint("alice", now=then), now=then).access_token

    public = keyring.cts_public_keys()[header["kid"]]
    raw_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem_public = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def hs256(key: bytes) -> Callable[[bytes], bytes]:
        return lambda msg: hmac.new(key, msg, hashlib.sha256).digest()

    signing_key = keyring.cts_signing_key(keyring.primary)  # to test claim checks behind a valid signature

    def sign_real(payload: dict[str, Any], **hdr: Any) -> str:
        return jwt.encode(payload, signing_key, algorithm="EdDSA", headers={"kid": header["kid"], **hdr})

    bob_h, bob_claims, _ = _segments(bob.cts_token.access_token)
    p_h, p_c, _ = real.split(".")
    return {
        "another keyring": other_keyring,
        "another workspace": other_workspace,
        "another audience, same keyring": other_audience,
        "expired": expired,
        "alg none": _jws(dict(header, alg="none"), claims, None),
        "alg none, signature kept": _jws(dict(header, alg="none"), claims, None) + signature,
        "alg None": _jws(dict(header, alg="None"), claims, None),
        "HS256 with raw public key": _jws(dict(header, alg="HS256"), claims, hs256(raw_public)),
        "HS256 with PEM public key": _jws(dict(header, alg="HS256"), claims, hs256(pem_public)),
        "sub edited": f"{p_h}.{_b64url_json(dict(claims, sub='bob'))}.{signature}",
        "ctx edited": f"{p_h}.{_b64url_json(dict(claims, ctx={'org_id': 'acme'}))}.{signature}",
        "exp extended": f"{p_h}.{_b64url_json(dict(claims, exp=claims['exp'] + 86400))}.{signature}",
        "bob's claims, alice's signature": f"{p_h}.{_b64url_json(bob_claims)}.{signature}",
        "signature truncated": real[:-4],
        "signature of another token": f"{p_h}.{p_c}.{bob.cts_token.access_token.split('.')[2]}",
        "unknown kid": _jws(dict(header, kid="cts-v9"), claims, None) + signature,
        "jwk header": sign_real(claims, jwk={"kty": "OKP"}),
        "jku header": sign_real(claims, jku="https://evil.example/jwks"),
        "wrong issuer": sign_real(dict(claims, iss="someone-else")),
        "no idp claim": sign_real({k: v for k, v in claims.items() if k != "idp"}),
        "ctx not an object": sign_real(dict(claims, ctx=["org_id"])),
        "empty sub": sign_real(dict(claims, sub="")),
        "no exp": sign_real({k: v for k, v in claims.items() if k != "exp"}),
        "exp as string": sign_real(dict(claims, exp=str(claims["exp"]))),
        "garbage": "garbage",
        "two segments": f"{p_h}.{p_c}",
        "oversized": "a" * 20_000,
    }


@pytest.mark.backends("local")  # OpenBao mode has no the embedded CTS token format; see test_openbao.py
def test_forged_cts_tokens_are_refused_before_any_key_is_released(
    client: Encryption,
    users: EncryptedTable,
    alice: LockContext,
    key_service: LocalKeyService,
    forged_tokens: dict[str, str],
) -> None:
    mine = _sealed(client.encrypt("secret", column=users.email, table=users).with_lock_context(alice))
    model = client.encrypt_model({"email": "secret"}, users).with_lock_context(alice).unwrap()
    for name, token in forged_tokens.items():
        lc = LockContext(cts_token=CtsToken(token, time.time() + 600))
        calls, derivations = key_service.release_calls, key_service.derivations
        ops = {
            "encrypt": client.encrypt("x", column=users.email, table=users),
            "decrypt": client.decrypt(mine),
            "bulk_decrypt": client.bulk_decrypt([mine, mine]),
            "decrypt_model": client.decrypt_model(model, users),
            "encrypt_query": client.encrypt_query("secret", column=users.email, table=users),
        }
        for op_name, op in ops.items():
            res = op.with_lock_context(lc).result()
            assert res.data is None, f"{name}/{op_name}: accepted"
            assert res.failure is not None and res.failure.type == "LockContextError", (name, op_name, res.failure)
        assert (key_service.release_calls, key_service.derivations) == (calls, derivations), name
    # and the real token still works after all that (nothing was poisoned)
    assert client.decrypt(mine).with_lock_context(alice).unwrap() == "secret"


@pytest.mark.backends("local")  # OpenBao mode has no the embedded CTS token format; see test_openbao.py
def test_forged_token_messages_say_why(
    client: Encryption, users: EncryptedTable, forged_tokens: dict[str, str]
) -> None:
    expected = {
        "expired": "Call identify again",
        "another keyring": "invalid signature",
        "sub edited": "invalid signature",
        "another audience, same keyring": "another workspace",
        "alg none": "unexpected header",
        "HS256 with raw public key": "unexpected header",
        "unknown kid": "unknown key",
    }
    for name, fragment in expected.items():
        lc = LockContext(cts_token=CtsToken(forged_tokens[name], time.time() + 600))
        res = client.encrypt("x", column=users.email, table=users).with_lock_context(lc).result()
        assert res.failure is not None and fragment in res.failure.message, (name, res.failure)


# -- identity JWTs at the token service ------------------------------------------------------


@pytest.fixture
def untrusted_idp() -> Iterator[LocalIssuer]:
    with LocalIssuer(audience="lockkit-test") as issuer:
        yield issuer


def test_rejected_identity_jwts_are_cts_token_errors(
    client: Encryption,
    users: EncryptedTable,
    idp: LocalIssuer,
    untrusted_idp: LocalIssuer,
    key_service: LocalKeyService,
) -> None:
    real = idp.mint("alice")
    h, p, s = real.split(".")
    claims = json.loads(_unb64url(p))
    pem = idp.public_key_pem()
    bad = {
        "wrong audience": idp.mint("alice", aud="another-app"),
        "expired": idp.mint("alice", now=time.time() - 3600, ttl=300),
        "garbage": "garbage",
        "three garbage segments": "a.b.c",
        "empty": "",
        "untrusted issuer": untrusted_idp.mint("alice"),
        "untrusted issuer claiming our iss": untrusted_idp.mint("alice", iss=idp.issuer),
        "sub edited": f"{h}.{_b64url_json(dict(claims, sub='bob'))}.{s}",
        "alg none": _jws({"alg": "none", "typ": "JWT"}, claims, None),
        "HS256 with the public key": _jws(
            {"alg": "HS256", "typ": "JWT", "kid": idp.current_kid}, claims,
            lambda msg: hmac.new(pem, msg, hashlib.sha256).digest(),
        ),
        "no sub": idp.mint(None),
        "not yet valid": idp.mint("alice", nbf=int(time.time()) + 3600),
    }
    calls = key_service.release_calls
    for name, token in bad.items():
        res = client.lock_context().identify(token)
        assert res.data is None, f"{name}: accepted"
        assert res.failure is not None and res.failure.type == "CtsTokenError", (name, res.failure)
        assert token not in res.failure.message or not token
    assert key_service.release_calls == calls
    # control: the real token is accepted and works
    lc = client.lock_context().identify(real).unwrap()
    assert client.encrypt("ok", column=users.email, table=users).with_lock_context(lc).failure is None


def test_identify_reports_the_reason_coarsely(client: Encryption, idp: LocalIssuer) -> None:
    res = client.lock_context().identify(idp.mint("alice", now=time.time() - 3600))
    assert res.failure is not None and "expired" in res.failure.message
    with pytest.raises(CtsTokenError):
        res.unwrap()
