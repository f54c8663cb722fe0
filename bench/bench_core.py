"""Core benchmark: lockkit bulk encrypt/decrypt against an AES-GCM floor and Fernet.

Everything runs in one process on the same data, with a lock context (one user identified
once through the embedded token service with a LocalIssuer RS256 JWT; the CTS token is then
reused for every operation). Numbers are per value (or per model), the median of N
repetitions after a warm-up run, contenders interleaved. Nothing here asserts anything about
time; the only checks are that every contender round-trips the data.

Run through the dispatcher: ``.venv/bin/python bench/run.py core [--quick] [--json PATH]``.
"""

from __future__ import annotations

import binascii
import datetime as dt
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

from common import cpu_times, fmt_table, load_average, measure_paired, paired_ratio, steal_percent, summarise

from lockkit import Encryption, LockContext, encrypted_column, encrypted_table
from lockkit import payload as pl
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.errors import ok_results
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.oidc import OIDCVerifier
from lockkit.schema import EncryptedTable
from lockkit.testing import LocalIssuer

NAME = "core"
DESCRIPTION = "bulk encrypt/decrypt of strings and models vs AES-GCM floor and Fernet"

WORKSPACE = "crn:local:bench"
AUDIENCE = "lockkit-bench"

FULL = {"reps": 7, "strings": 10_000, "models": 2_000, "single_calls": 300}
QUICK = {"reps": 3, "strings": 2_000, "models": 400, "single_calls": 100}

# Targets printed beside the ratios (informational, never asserted).
TARGET_FLOOR_RATIO = 3.0
#: what the Bound contender does per value, by operation (for the reports)
BOUND_STEPS = {
    "encrypt": "tag and UTF-8, a nonce, GCM-SIV, base64, the payload dict, one Result",
    "decrypt": "base64, GCM-SIV, decode, one Result",
}
TARGET_FERNET_RATIO = 1.0

FIELDS = ("email", "name", "city", "age", "joined")


# -- data ---------------------------------------------------------------------------------
_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret",
          "Dennis", "Radia", "Tim", "Sophie", "John", "Katherine", "Linus", "Guido", "Anita",
          "Niklaus", "Hedy")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
         "Hamilton", "Ritchie", "Perlman", "Berners-Lee", "Wilson", "McCarthy", "Johnson",
         "Torvalds", "van Rossum", "Borg", "Wirth", "Lamarr")
_CITY = ("London", "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Dublin", "Vienna", "Prague",
         "Warsaw", "Oslo", "Helsinki", "Athens", "Zurich", "Amsterdam", "Brussels")


def make_emails(n: int, seed: int = 1234) -> list[str]:
    """``n`` distinct short emails like ``user1234@example.com`` (deterministic)."""
    rng = random.Random(seed)
    return [f"user{i}@example.com" for i in rng.sample(range(1_000, 1_000_000), n)]


def make_models(n: int, seed: int = 5678) -> list[dict[str, Any]]:
    """``n`` five-field models: email, name, city (text), age (int), joined (date)."""
    rng = random.Random(seed)
    emails = make_emails(n, seed + 1)
    base = dt.date(2015, 1, 1)
    return [
        {
            "email": emails[i],
            "name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "city": rng.choice(_CITY),
            "age": rng.randint(18, 90),
            "joined": base + dt.timedelta(days=rng.randrange(3650)),
        }
        for i in range(n)
    ]


# -- lockkit wiring (no config files; the same shape as tests/conftest.py) -----------------
def plain_table(table: str = "people") -> EncryptedTable:
    return encrypted_table(
        table,
        email=encrypted_column("email"),
        name=encrypted_column("name"),
        city=encrypted_column("city"),
        age=encrypted_column("age").data_type("int"),
        joined=encrypted_column("joined").data_type("date"),
    )


def indexed_table(table: str = "people_idx") -> EncryptedTable:
    """email and name with equality + match indexes; the rest plain."""
    return encrypted_table(
        table,
        email=encrypted_column("email").equality().free_text_search(),
        name=encrypted_column("name").equality().free_text_search(),
        city=encrypted_column("city"),
        age=encrypted_column("age").data_type("int"),
        joined=encrypted_column("joined").data_type("date"),
    )


@dataclass
class Env:
    client: Encryption
    lc: LockContext
    plain: EncryptedTable
    indexed: EncryptedTable
    identify_ms: float


@contextmanager
def lockkit_env() -> Iterator[Env]:
    """A client on the embedded token service + local key service, and one identified user."""
    with LocalIssuer(audience=AUDIENCE) as idp:
        keyring = Keyring.generate(WORKSPACE)
        token_service = EmbeddedTokenService(
            workspace_crn=WORKSPACE,
            keyring=keyring,
            verifiers=[OIDCVerifier(idp.issuer_config())],
        )
        key_service = LocalKeyService(keyring, token_service.verifier())
        plain, indexed = plain_table(), indexed_table()
        client = Encryption([plain, indexed], key_service=key_service, token_service=token_service)
        t0 = time.perf_counter()
        lc = client.lock_context().identify(idp.mint("bench-user")).unwrap()
        identify_ms = (time.perf_counter() - t0) * 1e3
        yield Env(client, lc, plain, indexed, identify_ms)


# -- contenders ---------------------------------------------------------------------------
Codec = tuple[Callable[[Any], bytes], Callable[[bytes], Any]]
CODECS: dict[str, Codec] = {
    "email": (str.encode, bytes.decode),
    "name": (str.encode, bytes.decode),
    "city": (str.encode, bytes.decode),
    "age": (lambda v: str(v).encode(), int),
    "joined": (lambda v: v.isoformat().encode(), lambda b: dt.date.fromisoformat(b.decode())),
}


class Aead:
    """The floor (and the GCM-SIV reference): one key object, a fresh os.urandom(12) nonce
    per value, ``nonce | ciphertext+tag`` stored; nothing else."""

    def __init__(self, cls: type[AESGCM] | type[AESGCMSIV], aad: bytes | None = None) -> None:
        self._aead = cls(os.urandom(32))
        self._aad = aad

    def enc_strings(self, values: list[str]) -> list[bytes]:
        enc, rnd, aad = self._aead.encrypt, os.urandom, self._aad
        out = []
        for v in values:
            n = rnd(12)
            out.append(n + enc(n, v.encode(), aad))
        return out

    def dec_strings(self, blobs: list[bytes]) -> list[str]:
        dec, aad = self._aead.decrypt, self._aad
        return [dec(b[:12], b[12:], aad).decode() for b in blobs]

    def enc_models(self, models: list[dict[str, Any]]) -> list[dict[str, bytes]]:
        enc, rnd, aad = self._aead.encrypt, os.urandom, self._aad
        out = []
        for m in models:
            row = {}
            for f, v in m.items():
                n = rnd(12)
                row[f] = n + enc(n, CODECS[f][0](v), aad)
            out.append(row)
        return out

    def dec_models(self, rows: list[dict[str, bytes]]) -> list[dict[str, Any]]:
        dec, aad = self._aead.decrypt, self._aad
        return [{f: CODECS[f][1](dec(b[:12], b[12:], aad)) for f, b in r.items()} for r in rows]


class Bound:
    """Not a lockkit code path: the least that encrypting or decrypting text through lockkit's
    API and stored format can cost in pure Python with ``cryptography``, each step a C function
    applied with ``map`` (or one small loop where a dict must be built per value), with no key
    release, no lock context and no checks. If a bound alone is over the 3x target, no
    pure-Python implementation of the format and API can meet it.

    * encrypt, per value: the type tag and UTF-8, a slice of one ``os.urandom`` call as the
      nonce, one AES-256-GCM-SIV encrypt with lockkit's 16-byte AAD, base64 of
      ``nonce | 4-byte key check | ciphertext``, the payload dict (its header copied from a
      template, with its own ``i`` dict and ``lc`` list), one ``Result`` made and read;
    * decrypt, per value: one base64 decode of the stored string, one GCM-SIV decrypt, the tag
      stripped and the text decoded, one ``Result`` made and read.
    """

    _nonce, _body, _rest = itemgetter(slice(0, 12)), itemgetter(slice(16, None)), itemgetter(slice(1, None))

    def __init__(self, aad: bytes) -> None:
        self._aead = AESGCMSIV(os.urandom(32))
        self._aad = aad

    def enc_strings(self, values: list[str]) -> list[dict[str, Any]]:
        n = len(values)
        rnd = os.urandom(12 * n)
        nonces = [rnd[k : k + 12] for k in range(0, 12 * n, 12)]
        heads = map(bytes.__add__, nonces, repeat(bytes(4), n))
        sealed = map(bytes.__add__, heads, map(self._aead.encrypt, nonces, map(b"s".__add__, map(str.encode, values)),
                                                repeat(self._aad, n)))
        template = {"v": 1, "k": "ct", "i": None, "ks": "default", "kid": "1", "c": None, "lc": None}
        ident, names, b64 = {"t": "people", "c": "email"}, ["sub"], binascii.b2a_base64
        out = []
        for blob in sealed:
            p = template.copy()
            p["i"], p["c"], p["lc"] = ident.copy(), b64(blob, newline=False).decode(), names.copy()
            out.append(p)
        return [r.unwrap() for r in ok_results(out)]

    def dec_strings(self, payloads: list[dict[str, Any]]) -> list[str]:
        raws = list(map(binascii.a2b_base64, map(itemgetter("c"), payloads)))
        plains = map(self._aead.decrypt, map(self._nonce, raws), map(self._body, raws), repeat(self._aad, len(raws)))
        return [r.unwrap() for r in ok_results(list(map(self._rest, map(bytes.decode, plains))))]


class FernetPeer:
    """``cryptography.fernet.Fernet``, one object, encrypt/decrypt per value."""

    def __init__(self) -> None:
        self._f = Fernet(Fernet.generate_key())

    def enc_strings(self, values: list[str]) -> list[bytes]:
        enc = self._f.encrypt
        return [enc(v.encode()) for v in values]

    def dec_strings(self, tokens: list[bytes]) -> list[str]:
        dec = self._f.decrypt
        return [dec(t).decode() for t in tokens]

    def enc_models(self, models: list[dict[str, Any]]) -> list[dict[str, bytes]]:
        enc = self._f.encrypt
        return [{f: enc(CODECS[f][0](v)) for f, v in m.items()} for m in models]

    def dec_models(self, rows: list[dict[str, bytes]]) -> list[dict[str, Any]]:
        dec = self._f.decrypt
        return [{f: CODECS[f][1](dec(t)) for f, t in r.items()} for r in rows]


def _check(label: str, got: Any, want: Any) -> None:
    if got != want:
        raise RuntimeError(f"{label}: round trip does not give back the input (benchmark is broken)")


# -- the benchmark ------------------------------------------------------------------------
def run(*, quick: bool = False) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    reps, n_str, n_mod = cfg["reps"], cfg["strings"], cfg["models"]
    emails = make_emails(n_str)
    models = make_models(n_mod)
    cpu_before = cpu_times()

    with lockkit_env() as env:
        c, lc, plain, indexed = env.client, env.lc, env.plain, env.indexed
        # lockkit's AEAD alone, with an AAD the size of lockkit's real one (reference column).
        siv_aad = pl.associated_data(WORKSPACE, c.keyset, plain.table_name, "email", "1", list(lc.identity_claim))
        floor, siv, fernet = Aead(AESGCM), Aead(AESGCMSIV, siv_aad), FernetPeer()
        bound = Bound(siv_aad)

        # -- lockkit operations, as a caller writes them --------------------------------
        def lk_enc(table: EncryptedTable) -> Callable[[], list[Any]]:
            return lambda: [
                r.unwrap()
                for r in c.bulk_encrypt(emails, column="email", table=table).with_lock_context(lc).unwrap()
            ]

        def lk_dec(payloads: list[Any]) -> Callable[[], list[Any]]:
            return lambda: [r.unwrap() for r in c.bulk_decrypt(payloads).with_lock_context(lc).unwrap()]

        def lk_enc_models(table: EncryptedTable) -> Callable[[], list[dict[str, Any]]]:
            return lambda: c.bulk_encrypt_models(models, table).with_lock_context(lc).unwrap()

        def lk_dec_models(rows: list[Any], table: EncryptedTable) -> Callable[[], list[dict[str, Any]]]:
            return lambda: c.bulk_decrypt_models(rows, table).with_lock_context(lc).unwrap()

        # Inputs for the decrypt runs, made once (untimed) from the same data; each
        # contender decrypts its own ciphertexts. Round trips are checked here.
        p_plain, p_idx = lk_enc(plain)(), lk_enc(indexed)()
        if "lc" not in p_plain[0] or not {"hm", "bf"} <= set(p_idx[0]):
            raise RuntimeError("lockkit payloads are not locked / not indexed as expected")
        b_floor, b_siv, t_fernet = floor.enc_strings(emails), siv.enc_strings(emails), fernet.enc_strings(emails)
        s_bound = bound.enc_strings(emails)
        m_plain, m_idx = lk_enc_models(plain)(), lk_enc_models(indexed)()
        mb_floor, mb_siv, mt_fernet = floor.enc_models(models), siv.enc_models(models), fernet.enc_models(models)
        for label, fn in [
            ("lockkit strings", lk_dec(p_plain)), ("lockkit strings indexed", lk_dec(p_idx)),
            ("floor strings", lambda: floor.dec_strings(b_floor)), ("siv strings", lambda: siv.dec_strings(b_siv)),
            ("fernet strings", lambda: fernet.dec_strings(t_fernet)), ("bound strings", lambda: bound.dec_strings(s_bound)),
        ]:
            _check(label, fn(), emails)
        for label, fn in [
            ("lockkit models", lk_dec_models(m_plain, plain)), ("lockkit models indexed", lk_dec_models(m_idx, indexed)),
            ("floor models", lambda: floor.dec_models(mb_floor)), ("siv models", lambda: siv.dec_models(mb_siv)),
            ("fernet models", lambda: fernet.dec_models(mt_fernet)),
        ]:
            _check(label, fn(), models)

        groups: list[tuple[str, str, int, dict[str, Callable[[], Any]]]] = [
            ("strings", "encrypt", n_str, {
                "lockkit": lk_enc(plain), "lockkit_idx": lk_enc(indexed),
                "floor": lambda: floor.enc_strings(emails), "siv": lambda: siv.enc_strings(emails),
                "fernet": lambda: fernet.enc_strings(emails), "bound": lambda: bound.enc_strings(emails),
            }),
            ("strings", "decrypt", n_str, {
                "lockkit": lk_dec(p_plain), "lockkit_idx": lk_dec(p_idx),
                "floor": lambda: floor.dec_strings(b_floor), "siv": lambda: siv.dec_strings(b_siv),
                "fernet": lambda: fernet.dec_strings(t_fernet), "bound": lambda: bound.dec_strings(s_bound),
            }),
            ("models", "encrypt", n_mod, {
                "lockkit": lk_enc_models(plain), "lockkit_idx": lk_enc_models(indexed),
                "floor": lambda: floor.enc_models(models), "siv": lambda: siv.enc_models(models),
                "fernet": lambda: fernet.enc_models(models),
            }),
            ("models", "decrypt", n_mod, {
                "lockkit": lk_dec_models(m_plain, plain), "lockkit_idx": lk_dec_models(m_idx, indexed),
                "floor": lambda: floor.dec_models(mb_floor), "siv": lambda: siv.dec_models(mb_siv),
                "fernet": lambda: fernet.dec_models(mt_fernet),
            }),
        ]

        results: dict[str, Any] = {
            "config": {**cfg, "quick": quick, "fields_per_model": len(FIELDS)},
            "identify_ms": env.identify_ms,
            "groups": [],
        }
        for kind, op, n, contenders in groups:
            times = measure_paired(contenders, reps=reps, warmup=1)
            results["groups"].append({
                "data": kind, "op": op, "n": n,
                "unit": "value" if kind == "strings" else "model",
                "stats": {name: summarise(ts, n) for name, ts in times.items()},
            })

        # Per-call fixed cost: single-value encrypt()/decrypt() (key release, CTS token check
        # from the verifier's cache, the derived key from the key cache, one value). Amortised away in bulk.
        k = cfg["single_calls"]
        one = emails[0]
        one_payload = p_plain[0]

        def single_enc() -> None:
            for _ in range(k):
                c.encrypt(one, column="email", table=plain).with_lock_context(lc).unwrap()

        def single_dec() -> None:
            for _ in range(k):
                c.decrypt(one_payload).with_lock_context(lc).unwrap()

        single = measure_paired({"encrypt": single_enc, "decrypt": single_dec}, reps=reps, warmup=1)
        results["single_call"] = {name: summarise(ts, k) for name, ts in single.items()}
        results["load_average_end"] = load_average()
        results["cpu_steal_percent"] = steal_percent(cpu_before, cpu_times())
    return results


# -- report -------------------------------------------------------------------------------
def _us(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def report(results: Mapping[str, Any]) -> None:
    cfg = results["config"]
    print(f"\n== core: lockkit bulk encrypt/decrypt vs floor (AES-GCM) and Fernet "
          f"({'QUICK: ' if cfg['quick'] else ''}{cfg['strings']:,} strings, {cfg['models']:,} models x "
          f"{cfg['fields_per_model']} fields; median of {cfg['reps']} runs after 1 warm-up) ==")
    print(f"lock context: identified once via embedded CTS with a LocalIssuer RS256 JWT "
          f"({results['identify_ms']:.1f} ms, one-off); the CTS token is reused for every run\n")
    headers = ["data", "op", "index", "unit", "lockkit", "floor", "Fernet", "GCM-SIV",
               "lk/floor", "lk/Fernet", "<=3x floor", "<Fernet", "noise"]
    rows: list[list[str]] = []
    noisy = False
    extra: list[str] = []
    for g in results["groups"]:
        s = g["stats"]
        fl, fe, sv = s["floor"]["median_us"], s["fernet"]["median_us"], s["siv"]["median_us"]
        for key, index in (("lockkit", "none"), ("lockkit_idx", "eq+match")):
            lk = s[key]["median_us"]
            r_floor = paired_ratio(s[key]["samples_us"], s["floor"]["samples_us"])
            r_fernet = paired_ratio(s[key]["samples_us"], s["fernet"]["samples_us"])
            spread = max(s[key]["spread"], s["floor"]["spread"], s["fernet"]["spread"])
            noisy = noisy or spread > 0.20
            if index == "none":
                t1 = "met" if r_floor <= TARGET_FLOOR_RATIO else "MISSED"
                t2 = "met" if r_fernet < TARGET_FERNET_RATIO else "MISSED"
            else:
                t1 = t2 = "(info)"
            rows.append([g["data"], g["op"], index, f"us/{g['unit']}", _us(lk), _us(fl), _us(fe), _us(sv),
                         f"{r_floor:.2f}x", f"{r_fernet:.2f}x", t1, t2, f"{spread * 100:.0f}%"])
        d = s["lockkit_idx"]["median_us"] - s["lockkit"]["median_us"]
        where = "email" if g["data"] == "strings" else "email and name"
        note = "" if g["op"] == "encrypt" else "  (decrypt computes no terms: ~0 expected, the rest is noise)"
        extra.append(f"  {g['data']:7} {g['op']}: {d:+.2f} us/{g['unit']} for eq+match terms on {where}{note}")
    print(fmt_table(headers, rows, [False, False, False, False] + [True] * 9))
    for g in results["groups"]:
        s = g["stats"]
        if "bound" in s:
            r_bound = paired_ratio(s["bound"]["samples_us"], s["floor"]["samples_us"])
            r_lk = paired_ratio(s["lockkit"]["samples_us"], s["bound"]["samples_us"])
            what = BOUND_STEPS[g["op"]]
            print(f"\n{g['data']} {g['op']} bound (the least a pure-Python {g['op']} through lockkit's API and "
                  f"stored format can cost: {what}): {_us(s['bound']['median_us'])} us/{g['unit']} = "
                  f"{r_bound:.2f}x the floor (target {TARGET_FLOOR_RATIO:.0f}x); lockkit = {r_lk:.2f}x the bound")
    print("\nsearch-term cost (lockkit eq+match minus lockkit plain, same run):")
    print("\n".join(extra))
    sc = results["single_call"]
    print("\nper-call fixed cost (single-value encrypt()/decrypt() with the lock context; key release,"
          " cached CTS check, derived key from the cache; a first call per user and column also derives it):")
    print(f"  encrypt {_us(sc['encrypt']['median_us'])} us/call   decrypt {_us(sc['decrypt']['median_us'])} us/call"
          "   (amortised over the batch in the bulk rows above)")
    steal = results.get("cpu_steal_percent")
    print(f"\nload average at end: {results['load_average_end']}; CPU steal during the run: "
          + (f"{steal:.1f}%" if steal is not None else "n/a"))
    if noisy:
        print("NOTE: some rows spread >20% between runs (max-min over median): the machine is busy or"
              " small; trust the ratios (contenders are interleaved) more than the absolute numbers.")
    print(
        "\nHow to read it:\n"
        "  lockkit  : the public bulk API as a caller writes it, incl. reading each per-item Result\n"
        "             (bulk_encrypt/bulk_decrypt for strings; bulk_*_models(models, table) for models).\n"
        "  floor    : cryptography AESGCM, one key object, os.urandom(12) nonce per value, nonce|ct stored;\n"
        "             str/int/date <-> bytes only. It EXCLUDES key derivation, payload dict/JSON/base64,\n"
        "             AAD (associated data), key checks, type tags, per-item Results and the lock context.\n"
        "  Fernet   : cryptography.fernet.Fernet, one object, encrypt/decrypt per value (AES-CBC + HMAC,\n"
        "             base64 token). Models: 5 Fernet operations per model; floor: 5 AESGCM operations.\n"
        "  GCM-SIV  : reference only - the floor loop with lockkit's own AEAD (AES-256-GCM-SIV) and an AAD\n"
        "             of lockkit's size: how much of lockkit/floor is the cipher itself.\n"
        "  ratios   : median over repetitions of lockkit_i / peer_i, where run i of each contender ran\n"
        "             back to back (so they need not equal the quotient of the medians shown).\n"
        "  targets  : printed, not asserted: lockkit plain within 3x of the floor; faster than Fernet.\n"
        "  noise    : worst (max-min)/median over the lockkit, floor and Fernet runs of that row."
    )


if __name__ == "__main__":  # ``python bench/bench_core.py [--quick] [--json PATH]``
    import sys

    from run import main

    sys.exit(main(["core", *sys.argv[1:]]))
