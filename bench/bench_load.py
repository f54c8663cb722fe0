"""Throughput under load: the example app served by gunicorn, driven by wrk on loopback.

The example app (``examples.flask_clerk:create_app``, dev sign-in, neither debug nor testing
mode, cookie sessions, SQLite) runs under **gunicorn** (4 ``gthread`` workers x 2 threads on
127.0.0.1) once per key backend:

* ``embedded``: the embedded token service and the local keyring (``LOCKKIT_KEYRING_JSON``,
  the same for every worker);
* ``openbao``: ``LOCKKIT_KEY_BACKEND=openbao`` against an OpenBao dev node this benchmark
  starts (configured with :func:`lockkit.keys.openbao_setup.setup`; the dev issuer's JWKS is
  served by the app itself, so gunicorn starts first). The node has a file audit device, so
  the benchmark counts every request OpenBao served while wrk ran.

Set-up, per backend, over HTTP like a client: an identity token from the dev provider
(``DevProvider(SECRET_KEY).mint``; every worker derives the same issuer key from
``SECRET_KEY``) as ``Authorization: Bearer``; ``GET /notes/new`` (the CTS exchange; the sealed
CTS token goes into the session cookie), ``POST /notes`` with the form's CSRF token (one note,
two tags), then the note's page. The session cookie then carries the CTS token, so any worker
serves the user without an exchange (no Redis needed: Flask's cookie session is readable by
every worker with the same ``SECRET_KEY``). Checked before load: ``GET /api/notes/<id>`` with
the Bearer header and the cookie answers 200 with the note and sets no cookie.

Load: **wrk** (2 threads, 8 connections, keep-alive) requests ``GET /api/notes/<id>`` (SQLite
read of the note and its tags, one decrypt operation, JSON) for a fixed time (10 s; 3 s with
``--quick``) after an untimed warm-up, runs interleaved (embedded, OpenBao, floor, then again;
3 repetitions, 1 with ``--quick``). The ``floor`` is an unauthenticated JSON route of the same
embedded server (``/lockkit/dev/jwks.json``: Flask, the example's hooks and lockkit's
no-credential middleware path, no database, no crypto) - what this stack serves at best.
wrk's Lua ``done()`` prints requests, errors and latency percentiles.

Every process is stopped at the end (gunicorn master and workers, OpenBao; also on SIGTERM;
on Linux they get SIGTERM if the benchmark dies outright), and the benchmark checks that none
outlived it. Nothing here asserts anything about time; errors are reported, not asserted.

``run()`` returns (JSON-serialisable)::

    {"config": {reps, duration_s, warmup_s, connections, wrk_threads, workers, worker_threads,
                worker_class, path, quick},
     "versions": {...}, "openbao": "OpenBao x.y.z ...",
     "targets": {name: {"label", "backend", "path"}},
     "runs": {name: [{requests, duration_s, rps, bytes, errors: {connect, read, write, status,
                      timeout, total}, latency_us: {p50, p90, p99, p999, mean, max},
                      cpu_ms_per_request: {app, openbao}, openbao_requests: {login, decrypt,
                      datakey, other, total}} per repetition]},
     "summary": {name: {rps_median, p50_us_median, p99_us_median, errors_total, rps_samples}},
     "ratios": {"openbao_over_embedded_rps": median of per-repetition ratios,
                "embedded_over_floor_rps": ...},
     "processes_left": [pids still alive after shutdown - expected empty],
     "load_average_end", "cpu_steal_percent", "wall_s" (added by run.py)}
"""

from __future__ import annotations

import atexit
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from common import cpu_times, fmt_table, load_average, steal_percent, stop_process

ROOT = Path(__file__).resolve().parent.parent

NAME = "load"
DESCRIPTION = "throughput under load: example app on gunicorn (embedded, OpenBao) driven by wrk"

WORKSPACE = "crn:local:bench-load"
USER = "bench-load-user"
NOTE = {"title": "Load test note", "body": "Steady-state reads of one encrypted note. " * 8, "tags": "load, bench"}
APP_SPEC = "examples.flask_clerk:create_app({'LOCKKIT_DEV_ALLOW_IN_PRODUCTION': True, 'LOCKKIT_INSECURE_COOKIES': True})"

FULL = {"reps": 3, "duration_s": 10, "warmup_s": 3, "connections": 8, "wrk_threads": 2, "workers": 4,
        "worker_threads": 2}
QUICK = {"reps": 1, "duration_s": 3, "warmup_s": 1, "connections": 8, "wrk_threads": 2, "workers": 4,
         "worker_threads": 2}

CLK_TCK = os.sysconf("SC_CLK_TCK")

_WRK_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LOCKKIT_WRK %d %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f %.1f %.1f\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process (clock ticks), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    except (OSError, IndexError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def _lean_session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


# -- processes ------------------------------------------------------------------------------
class BaoAudited:
    """An OpenBao ``-dev`` node on loopback with a file audit device (declared in a config
    file: OpenBao 2.x enables audit devices only from configuration), so the requests it
    serves can be counted. Stopped by :meth:`close` (also at exit)."""

    def __init__(self, tmp: Path) -> None:
        from bench_openbao import _bao_binary, _free_port

        self.binary = _bao_binary()
        self.dir = tmp / "bao"
        self.dir.mkdir()
        self.port = _free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token = "lockkit-bench-load-root"
        self.audit_path = self.dir / "audit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = "unknown"

    def start(self) -> BaoAudited:
        from bench_openbao import _die_with_parent

        atexit.register(self.close)
        conf = self.dir / "audit.hcl"
        conf.write_text(f'audit "file" "bench" {{\n  options {{ file_path = "{self.audit_path}" }}\n}}\n')
        cmd = [self.binary, "server", "-dev", f"-dev-root-token-id={self.root_token}",
               f"-dev-listen-address=127.0.0.1:{self.port}", f"-config={conf}"]
        with open(self.dir / "bao.log", "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "HOME": str(self.dir)}, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited with {self.proc.returncode}; see {self.dir / 'bao.log'}")
            try:
                r = requests.get(f"{self.addr}/v1/sys/health", timeout=1)
                if r.status_code == 200:
                    self.version = str(r.json().get("version", "unknown"))
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"OpenBao at {self.addr} did not become ready; see {self.dir / 'bao.log'}")

    def audit_offset(self) -> int:
        try:
            return self.audit_path.stat().st_size
        except OSError:
            return 0

    def served_since(self, offset: int) -> dict[str, int]:
        """Responses OpenBao wrote to its audit log after ``offset``, by kind of path."""
        counts = {"login": 0, "decrypt": 0, "datakey": 0, "other": 0}
        with open(self.audit_path, "rb") as f:
            f.seek(offset)
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("type") != "response":
                    continue
                path = str((entry.get("request") or {}).get("path", ""))
                if path.startswith("auth/"):
                    counts["login"] += 1
                elif "/decrypt/" in path:
                    counts["decrypt"] += 1
                elif "/datakey/" in path:
                    counts["datakey"] += 1
                else:
                    counts["other"] += 1
        counts["total"] = sum(counts.values())
        return counts

    def close(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)
        atexit.unregister(self.close)


class Gunicorn:
    """The example app under gunicorn on 127.0.0.1. A generated config file's
    ``post_worker_init`` hook marks each worker ready (after it loaded the app), so
    :meth:`start` returns when every worker serves. :meth:`close` stops master and workers."""

    def __init__(self, name: str, tmp: Path, env: dict[str, str], workers: int, threads: int) -> None:
        from bench_openbao import _free_port

        self.name = name
        self.dir = tmp / f"gunicorn-{name}"
        self.dir.mkdir()
        self.ready = self.dir / "ready"
        self.ready.mkdir()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.workers, self.threads = workers, threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_pids: set[int] = set()

    def start(self) -> Gunicorn:
        from bench_openbao import _die_with_parent

        atexit.register(self.close)
        conf = self.dir / "gunicorn_conf.py"
        conf.write_text(
            "import os\n"
            f"READY = {str(self.ready)!r}\n"
            "def post_worker_init(worker):\n"
            "    open(os.path.join(READY, str(worker.pid)), 'w').close()\n"
        )
        cmd = [sys.executable, "-m", "gunicorn", "--config", str(conf),
               "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
               "--worker-class", "gthread", "--threads", str(self.threads),
               "--graceful-timeout", "5", "--timeout", "120", "--log-level", "warning",
               "--error-logfile", str(self.dir / "error.log"), APP_SPEC]
        with open(self.dir / "stdout.log", "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.name}) exited with {self.proc.returncode}: "
                                   f"{self._log_tail()}")
            pids = {int(p.name) for p in self.ready.iterdir() if p.name.isdigit()}
            if len(pids) >= self.workers:
                self.worker_pids = pids
                r = requests.get(f"{self.url}/lockkit/dev/jwks.json", timeout=10)
                if r.status_code != 200:
                    raise RuntimeError(f"gunicorn ({self.name}): /lockkit/dev/jwks.json answered {r.status_code}")
                return self
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn ({self.name}) workers did not become ready: {self._log_tail()}")

    def _log_tail(self) -> str:
        text = ""
        for name in ("error.log", "stdout.log"):
            try:
                text += (self.dir / name).read_text(errors="replace")[-1500:]
            except OSError:
                pass
        return text

    def pids(self) -> list[int]:
        return ([self.proc.pid] if self.proc is not None else []) + sorted(self.worker_pids)

    def cpu_ticks(self) -> int:
        return sum(_cpu_ticks(p) for p in self.pids())

    def close(self) -> list[int]:
        """Stop master and workers; returns the pids still alive afterwards (expected: none)."""
        proc, self.proc = self.proc, None
        workers = sorted(self.worker_pids)
        stop_process(proc, timeout=30)  # graceful: the master stops its workers
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        for p in workers:  # only the workers this benchmark started (recorded by their own hook)
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        atexit.unregister(self.close)
        return [p for p in workers if _alive(p)]


# -- wrk --------------------------------------------------------------------------------------
def _write_script(path: Path, headers: Mapping[str, str]) -> Path:
    """A wrk Lua script setting ``headers`` (they carry the identity token and the session
    cookie: the file is created 0600 in the benchmark's private temporary directory and
    removed with it; nothing secret goes on a command line)."""
    lines = ['wrk.method = "GET"']
    for k, v in headers.items():
        if '"' in v or "\\" in v or "\n" in v:
            raise ValueError(f"unexpected character in header {k}")
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n" + _WRK_DONE)
    return path


def _wrk(wrk: str, url: str, script: Path, duration_s: int, connections: int, threads: int) -> dict[str, Any]:
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration_s}s", "--timeout", "10s",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    m = re.search(r"^LOCKKIT_WRK (.+)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stdout + out.stderr)[-1000:]}")
    f = m.group(1).split()
    n, dur_us, nbytes = int(f[0]), int(f[1]), int(f[2])
    errors = dict(zip(("connect", "read", "write", "status", "timeout"), (int(x) for x in f[3:8])))
    errors["total"] = sum(errors.values())
    p50, p90, p99, p999, mean, mx = (float(x) for x in f[8:14])
    return {
        "requests": n, "duration_s": dur_us / 1e6, "rps": n / (dur_us / 1e6) if dur_us else 0.0, "bytes": nbytes,
        "errors": errors,
        "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p999": p999, "mean": mean, "max": mx},
    }


# -- set-up over HTTP ----------------------------------------------------------------------
def _sign_in_and_write(base: str, bearer: str) -> tuple[int, str]:
    """Exchange (first request), write one note through the form, read its page (which
    consumes the flash message). Returns the note id and the session cookie's value."""
    s = _lean_session()
    auth = {"Authorization": f"Bearer {bearer}"}
    page = s.get(f"{base}/notes/new", headers=auth, timeout=30)
    if page.status_code != 200:
        raise RuntimeError(f"GET /notes/new with a Bearer token answered {page.status_code}")
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if m is None:
        raise RuntimeError("no CSRF token on /notes/new")
    made = s.post(f"{base}/notes", headers=auth, timeout=30,
                  data={"csrf_token": m.group(1), "title": NOTE["title"], "body": NOTE["body"], "tags": NOTE["tags"]})
    target = re.fullmatch(rf"{re.escape(base)}/notes/(\d+)", made.url)
    if made.status_code != 200 or target is None or NOTE["title"] not in made.text:
        raise RuntimeError(f"creating a note failed: HTTP {made.status_code} at {made.url}")
    cookie = s.cookies.get("session")
    if not cookie:
        raise RuntimeError("no session cookie after sign-in")
    return int(target.group(1)), cookie


def _check_steady(base: str, path: str, headers: Mapping[str, str]) -> None:
    """The exact request wrk makes answers 200 with the note and sets no cookie."""
    r = requests.get(f"{base}{path}", headers=dict(headers), timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"GET {path}: HTTP {r.status_code} (benchmark is broken)")
    doc = r.json()
    want_tags = sorted(t.strip() for t in NOTE["tags"].split(","))
    if doc.get("title") != NOTE["title"] or doc.get("body") != NOTE["body"].strip() or doc.get("tags") != want_tags:
        raise RuntimeError(f"GET {path} does not carry the note (benchmark is broken)")
    if "Set-Cookie" in r.headers:
        raise RuntimeError(f"GET {path} changed the session: not the steady state")


# -- the benchmark --------------------------------------------------------------------------
def run(*, quick: bool = False) -> dict[str, Any]:
    from bench_openbao import terminate_on_sigterm

    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not found: `make bench` installs it (Debian: apt-get install wrk)")
    cfg = QUICK if quick else FULL
    cpu_before = cpu_times()
    tmp = Path(tempfile.mkdtemp(prefix="lockkit-bench-load-"))
    os.chmod(tmp, 0o700)
    bao = BaoAudited(tmp)
    servers: list[Gunicorn] = []
    left: list[int] = []
    with terminate_on_sigterm():
        try:
            bao.start()
            results = _run(cfg, quick, tmp, wrk, bao, servers)
        finally:
            for srv in servers:
                left += srv.close()
            bao.close()
            shutil.rmtree(tmp, ignore_errors=True)
    results["processes_left"] = left
    results["load_average_end"] = load_average()
    results["cpu_steal_percent"] = steal_percent(cpu_before, cpu_times())
    return results


def _run(cfg: Mapping[str, int], quick: bool, tmp: Path, wrk: str, bao: BaoAudited,
         servers: list[Gunicorn]) -> dict[str, Any]:
    from lockkit_dev import AUDIENCE, DevProvider

    from lockkit.config import OpenBaoConfig
    from lockkit.keys.keyring import Keyring
    from lockkit.keys.openbao_setup import setup

    secret = secrets.token_urlsafe(32)
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "PYTHONPATH": str(ROOT),
        "LANG": os.environ.get("LANG", "C.UTF-8"), "SECRET_KEY": secret, "LOCKKIT_WORKSPACE_CRN": WORKSPACE,
    }
    emb = Gunicorn("embedded", tmp, {**base_env, "DATABASE_URL": f"sqlite:///{tmp / 'embedded.db'}",
                                     "LOCKKIT_KEYRING_JSON": Keyring.generate(WORKSPACE).to_json()},
                   cfg["workers"], cfg["worker_threads"])
    servers.append(emb)
    emb.start()
    bao_srv = Gunicorn("openbao", tmp, {**base_env, "DATABASE_URL": f"sqlite:///{tmp / 'openbao.db'}",
                                        "LOCKKIT_KEY_BACKEND": "openbao", "LOCKKIT_OPENBAO_ADDR": bao.addr},
                       cfg["workers"], cfg["worker_threads"])
    servers.append(bao_srv)
    bao_srv.start()

    dev = DevProvider(secret)  # the same issuer key as every worker (derived from SECRET_KEY)
    # OpenBao checks the JWKS URL when configured: the dev issuer's keys are served by the app
    setup(OpenBaoConfig(addr=bao.addr), bao.root_token, issuer=dev.issuer,
          jwks_url=f"{bao_srv.url}/lockkit/dev/jwks.json", audiences=[AUDIENCE])

    targets: dict[str, dict[str, Any]] = {}
    scripts: dict[str, Path] = {}
    steady_headers: dict[str, dict[str, str]] = {}
    for srv in (emb, bao_srv):
        token = dev.mint(USER)
        note_id, cookie = _sign_in_and_write(srv.url, token)
        path = f"/api/notes/{note_id}"
        headers = {"Authorization": f"Bearer {token}", "Cookie": f"session={cookie}"}
        _check_steady(srv.url, path, headers)
        steady_headers[srv.name] = headers
        targets[srv.name] = {"label": f"{'embedded' if srv.name == 'embedded' else 'OpenBao'}: GET /api/notes/<id>",
                             "backend": srv.name, "path": "/api/notes/<id>", "url": f"{srv.url}{path}", "server": srv}
        scripts[srv.name] = _write_script(tmp / f"{srv.name}.lua", headers)
    targets["floor"] = {"label": "floor: GET /lockkit/dev/jwks.json (no credentials)", "backend": "embedded",
                        "path": "/lockkit/dev/jwks.json", "url": f"{emb.url}/lockkit/dev/jwks.json", "server": emb}
    scripts["floor"] = _write_script(tmp / "floor.lua", {})

    conns, threads, dur = cfg["connections"], cfg["wrk_threads"], cfg["duration_s"]
    for name, t in targets.items():  # warm-up: every worker verifies the CTS token once, caches keys
        _wrk(wrk, t["url"], scripts[name], cfg["warmup_s"], conns, threads)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(cfg["reps"]):
        for name, t in targets.items():
            server: Gunicorn = t["server"]
            app0, bao0, off = server.cpu_ticks(), _cpu_ticks(bao.proc.pid) if bao.proc else 0, bao.audit_offset()
            child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = _wrk(wrk, t["url"], scripts[name], dur, conns, threads)
            child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            app_ms = (server.cpu_ticks() - app0) * 1e3 / CLK_TCK
            bao_ms = ((_cpu_ticks(bao.proc.pid) if bao.proc else 0) - bao0) * 1e3 / CLK_TCK
            wrk_ms = (child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime) * 1e3
            n = max(r["requests"], 1)
            r["cpu_ms_per_request"] = {"app": app_ms / n, "openbao": bao_ms / n, "wrk": wrk_ms / n}
            r["openbao_requests"] = bao.served_since(off)
            runs[name].append(r)

    for srv in (emb, bao_srv):  # still serving the right note, from the same session, after the load
        _check_steady(srv.url, targets[srv.name]["url"][len(srv.url):], steady_headers[srv.name])

    summary = {
        name: {
            "rps_median": statistics.median(r["rps"] for r in rs),
            "p50_us_median": statistics.median(r["latency_us"]["p50"] for r in rs),
            "p99_us_median": statistics.median(r["latency_us"]["p99"] for r in rs),
            "errors_total": sum(r["errors"]["total"] for r in rs),
            "requests_total": sum(r["requests"] for r in rs),
            "rps_samples": [r["rps"] for r in rs],
        }
        for name, rs in runs.items()
    }
    ratios = {
        "openbao_over_embedded_rps": statistics.median(
            b["rps"] / a["rps"] for a, b in zip(runs["embedded"], runs["openbao"]) if a["rps"]),
        "embedded_over_floor_rps": statistics.median(
            a["rps"] / f["rps"] for a, f in zip(runs["embedded"], runs["floor"]) if f["rps"]),
    }
    return {
        "config": {**cfg, "quick": quick, "worker_class": "gthread", "path": "/api/notes/<id>",
                   "database": "SQLite (one file per backend, WAL)", "sessions": "Flask cookie sessions"},
        "versions": {"gunicorn": _version("gunicorn"), "wrk": _wrk_version(wrk), "flask": _version("flask")},
        "openbao": f"OpenBao {bao.version} dev node on 127.0.0.1 (in-memory storage, file audit device)",
        "targets": {name: {k: v for k, v in t.items() if k in ("label", "backend", "path")} for name, t in targets.items()},
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }


# -- report ---------------------------------------------------------------------------------
def report(results: Mapping[str, Any]) -> None:
    cfg = results["config"]
    print(f"\n== load: example app on gunicorn, driven by wrk on loopback "
          f"({'QUICK: ' if cfg['quick'] else ''}{cfg['reps']} x {cfg['duration_s']} s per target, interleaved, "
          f"after a {cfg['warmup_s']} s warm-up) ==")
    v = results["versions"]
    print(f"server : gunicorn {v['gunicorn']}, {cfg['workers']} {cfg['worker_class']} workers x {cfg['worker_threads']}"
          f" threads on 127.0.0.1; {cfg['database']}; {cfg['sessions']}; not debug/testing")
    print(f"client : wrk {v['wrk']}, {cfg['wrk_threads']} threads, {cfg['connections']} keep-alive connections;"
          " Bearer identity token (dev provider) + the session cookie holding the sealed CTS token")
    print(f"openbao: {results['openbao']}\n")

    headers = ["target", "req/s", "p50 ms", "p99 ms", "errors", "app CPU ms/req", "OpenBao CPU ms/req",
               "OpenBao req", "rps spread"]
    rows = []
    for name, rs in results["runs"].items():
        s = results["summary"][name]
        label = results["targets"][name]["label"]
        app_cpu = statistics.median(r["cpu_ms_per_request"]["app"] for r in rs)
        bao_cpu = statistics.median(r["cpu_ms_per_request"]["openbao"] for r in rs)
        bao_req = sum(r["openbao_requests"]["total"] for r in rs)
        rps = s["rps_samples"]
        spread = (max(rps) - min(rps)) / s["rps_median"] if s["rps_median"] else 0.0
        rows.append([label, f"{s['rps_median']:,.0f}", f"{s['p50_us_median'] / 1e3:.2f}", f"{s['p99_us_median'] / 1e3:.2f}",
                     f"{s['errors_total']}", f"{app_cpu:.2f}", f"{bao_cpu:.3f}" if name == "openbao" else "-",
                     f"{bao_req}" if name == "openbao" else "-", f"{spread * 100:.0f}%"])
    print(fmt_table(headers, rows, [False] + [True] * 8))
    ra = results["ratios"]
    print(f"\nratios (median of per-repetition ratios, runs back to back): OpenBao/embedded req/s "
          f"{ra['openbao_over_embedded_rps']:.2f}x; embedded/floor req/s {ra['embedded_over_floor_rps']:.2f}x")

    bad = {name: s["errors_total"] for name, s in results["summary"].items() if s["errors_total"]}
    total = sum(s["requests_total"] for s in results["summary"].values())
    if not bad:
        print(f"errors : 0 in {total:,} requests (non-2xx/3xx, connect, read, write, timeout) - target met")
    else:
        for name, rs in results["runs"].items():
            agg = {k: sum(r["errors"][k] for r in rs) for k in ("connect", "read", "write", "status", "timeout")}
            if any(agg.values()):
                print(f"errors : MISSED for {results['targets'][name]['label']}: {agg}")
    bao_runs = results["runs"]["openbao"]
    kinds = {k: sum(r["openbao_requests"][k] for r in bao_runs) for k in ("login", "decrypt", "datakey", "other")}
    n_bao = sum(r["requests"] for r in bao_runs)
    print(f"OpenBao served {sum(kinds.values())} requests during {n_bao:,} app requests (from its audit log): "
          f"{kinds['login']} logins, {kinds['decrypt']} data-key unwraps, {kinds['datakey']} data keys, "
          f"{kinds['other']} other")
    left = results.get("processes_left", [])
    print(f"processes left after shutdown: {len(left)}" + (f" (pids {left})" if left else ""))
    steal = results.get("cpu_steal_percent")
    print(f"load average at end: {results['load_average_end']}; CPU steal during the run: "
          + (f"{steal:.1f}%" if steal is not None else "n/a"))
    print(
        "\nHow to read it:\n"
        "  req/s, p50, p99 : wrk's numbers (latency percentiles from its done() hook), median over repetitions.\n"
        "  errors          : wrk's socket errors plus responses outside 2xx/3xx; must be 0.\n"
        "  CPU ms/req      : CPU time of the gunicorn master + workers (and of OpenBao) during the run, per\n"
        "                    request - the cost that does not depend on how busy the machine was.\n"
        "  OpenBao req     : requests OpenBao served during the timed runs. In the steady state the CTS token\n"
        "                    rides in the session cookie (no login) and each worker keeps unwrapped data keys\n"
        "                    for 60 s, so expect about workers x data keys per minute, not one per request.\n"
        "  floor           : the same server's unauthenticated JSON route: Flask + the example's hooks, no DB,\n"
        "                    no crypto. embedded/floor = the share of the stack's capacity a protected read keeps.\n"
        "  wrk, gunicorn and OpenBao share the machine's cores: compare ratios across runs, not absolute req/s."
    )


if __name__ == "__main__":  # ``python bench/bench_load.py [--quick] [--json PATH]``
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import main

    sys.exit(main(["load", *sys.argv[1:]]))
