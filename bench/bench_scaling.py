"""Scaling benchmark: bulk operations from 1,000 to 1,000,000 values, list-based vs streamed.

For each size N (1k, 10k, 100k, 1M; ``--quick`` stops at 100k) and each API, a **fresh child
process** encrypts N short e-mails and then decrypts N payloads, with a lock context (the
``bench_core`` wiring: embedded token service, local keyring, one identified user):

* ``bulk``: ``client.bulk_encrypt(values, column=..., table=...).with_lock_context(lc)`` and
  ``client.bulk_decrypt(payloads)`` - the list-based API: every input, payload and per-item
  ``Result`` is in memory at once;
* ``stream``: ``client.stream_encrypt(values, column=..., table=..., lock_context=lc,
  chunk_size=1000)`` and ``client.stream_decrypt(payloads, lock_context=lc, chunk_size=1000)``
  - one key-service call per chunk, results yielded as they are made.

The values come from a generator for both APIs (``bulk_encrypt`` makes its own list). Every
output is consumed (``Result.unwrap()``), counted and dropped, except that ``bulk`` keeps its
payloads (references, 8 bytes each) as the input of its decrypt: a caller of the list-based
decrypt has all N payloads in memory. ``stream`` decrypts a lazy cycle over 1,000 payloads
made up front (the same work per value, no N-sized input). Round trips are checked on about
100 evenly spaced samples per phase.

Time: ``time.perf_counter`` around each phase (including consumption); inside one child each
phase runs ``inner_reps(N)`` times (10 at 1k and 10k, 1 from 100k) and the median
counts. Peak memory: the child's peak resident set size (``VmHWM`` in ``/proc/self/status``)
during the phase's first run, reset just before it by writing ``5`` to
``/proc/self/clear_refs`` (Linux), so each phase's peak is its own; off
Linux (no reset) ``ru_maxrss`` of the child is used, and the decrypt peak then also covers
the encrypt phase. (The reset also resets the child's ``ru_maxrss``, which is the same
high-water mark.) Each point runs ``reps`` times (fresh processes, bulk and stream back to back)
and the median is shown. Nothing here asserts anything about time or memory.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from common import cpu_times, fmt_table, load_average, paired_ratio, steal_percent

NAME = "scaling"
DESCRIPTION = "bulk_encrypt/bulk_decrypt vs stream_encrypt/stream_decrypt from 1k to 1M values: time and peak memory"

FULL: dict[str, Any] = {"sizes": [1_000, 10_000, 100_000, 1_000_000], "reps": 3, "chunk_size": 1_000, "pool": 1_000,
        "warmup": 2_000}
QUICK: dict[str, Any] = {"sizes": [1_000, 10_000, 100_000], "reps": 3, "chunk_size": 1_000, "pool": 1_000, "warmup": 2_000}
APIS = ("bulk", "stream")
OPS = ("encrypt", "decrypt")

# Shape checks printed beside the numbers (informational, never asserted).
LINEAR_LIMIT = 1.5      # us/value at the largest N over us/value at 10k: time grows linearly
FLAT_LIMIT_MB = 16.0    # streamed peak at the largest N minus at the smallest: memory stays flat


def value(i: int) -> str:
    """The i-th short e-mail (deterministic, distinct)."""
    return f"user{100_000 + i}@example.com"


def values(n: int) -> Iterator[str]:
    return (value(i) for i in range(n))


# -- memory in the child --------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r // 1024) if sys.platform == "darwin" else int(r)


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def inner_reps(n: int) -> int:
    """Timed runs of each phase inside one child: more for small N (a 1k run takes ~10 ms and
    one run is at the mercy of the scheduler), one at 1M."""
    return max(1, min(10, 100_000 // n))


def phase(fn: Callable[[], int], reps: int) -> dict[str, Any]:
    """Run ``fn`` (which returns how many outputs it consumed) ``reps`` times; the peak RSS is
    that of the first run (reset just before it), the time the median of all runs."""
    gc.collect()
    resettable = _reset_peak()
    start_kb = _status_kb("VmRSS") or _maxrss_kb()
    times: list[float] = []
    counts: list[int] = []
    peak_kb = 0
    for k in range(reps):
        if k:
            gc.collect()
        t0 = time.perf_counter()
        counts.append(fn())
        times.append(time.perf_counter() - t0)
        if k == 0:
            got = _status_kb("VmHWM") if resettable else None
            peak_kb = got if got is not None else _maxrss_kb()
    return {"s": statistics.median(times), "runs_s": times, "count": min(counts), "start_kb": start_kb,
            "peak_kb": peak_kb, "resettable": resettable}


# -- the child: one API, one size -----------------------------------------------------------
def child(api: str, n: int, chunk_size: int, pool_size: int, warmup: int) -> dict[str, Any]:
    from bench_core import lockkit_env

    step = max(1, n // 100)
    reps = inner_reps(n)
    with lockkit_env() as env:
        c, lc, table = env.client, env.lc, env.plain

        def bulk_enc(k: int) -> list[Any]:
            out: list[Any] = c.bulk_encrypt(values(k), column="email", table=table).with_lock_context(lc).unwrap()
            return out

        # pool for the streamed decrypt (untimed) and a warm-up of both APIs
        pool = [r.unwrap() for r in bulk_enc(pool_size)]
        for r in c.bulk_decrypt(pool).with_lock_context(lc).unwrap():
            r.unwrap()
        for _ in c.stream_encrypt(values(warmup), column="email", table=table, lock_context=lc, chunk_size=chunk_size):
            pass
        for _ in c.stream_decrypt(pool, lock_context=lc, chunk_size=chunk_size):
            pass
        baseline_kb = _status_kb("VmRSS") or _maxrss_kb()

        out: dict[str, Any] = {"api": api, "n": n, "inner_reps": reps, "baseline_kb": baseline_kb}
        samples: list[tuple[int, Any]] = []
        if api == "bulk":
            kept: list[list[Any]] = [[]]

            def enc_bulk() -> int:
                kept[0] = []  # the previous run's payloads go first (as a caller's would)
                results = bulk_enc(n)
                payloads: list[Any] = []
                keep = payloads.append
                for r in results:
                    keep(r.unwrap())
                del results
                kept[0] = payloads
                return len(payloads)

            def dec_bulk() -> int:
                results = c.bulk_decrypt(kept[0]).with_lock_context(lc).unwrap()
                count = 0
                for i, r in enumerate(results):
                    got = r.unwrap()
                    count += 1
                    if i % step == 0 and got != value(i):
                        raise RuntimeError(f"bulk round trip failed at {i} (benchmark is broken)")
                return count

            out["encrypt"] = phase(enc_bulk, reps)
            out["decrypt"] = phase(dec_bulk, reps)
            samples = [(i, kept[0][i]) for i in range(0, n, step)]
            kept.clear()
        else:
            def enc_stream() -> int:
                samples.clear()
                count = 0
                for i, r in enumerate(c.stream_encrypt(values(n), column="email", table=table, lock_context=lc,
                                                       chunk_size=chunk_size)):
                    p = r.unwrap()
                    count += 1
                    if i % step == 0:
                        samples.append((i, p))
                return count

            def cycled() -> Iterator[Any]:
                for i in range(n):
                    yield pool[i % pool_size]

            def dec_stream() -> int:
                count = 0
                for i, r in enumerate(c.stream_decrypt(cycled(), lock_context=lc, chunk_size=chunk_size)):
                    got = r.unwrap()
                    count += 1
                    if i % step == 0 and got != value(i % pool_size):
                        raise RuntimeError(f"stream round trip failed at {i} (benchmark is broken)")
                return count

            out["encrypt"] = phase(enc_stream, reps)
            out["decrypt"] = phase(dec_stream, reps)
        # the encrypt phase's outputs, checked on the samples it kept
        got = [r.unwrap() for r in c.bulk_decrypt([p for _, p in samples]).with_lock_context(lc).unwrap()]
        if got != [value(i) for i, _ in samples] or out["encrypt"]["count"] != n or out["decrypt"]["count"] != n:
            raise RuntimeError(f"{api} n={n}: wrong count or round trip (benchmark is broken)")
        out["samples_checked"] = len(samples)
        out["peak_method"] = ("VmHWM, reset per phase via /proc/self/clear_refs" if out["encrypt"]["resettable"]
                              else "ru_maxrss of the child (not resettable: decrypt includes encrypt)")
    return out


def _spawn(api: str, n: int, cfg: Mapping[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", api, str(n), str(cfg["chunk_size"]),
           str(cfg["pool"]), str(cfg["warmup"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=os.path.dirname(cmd[1]))
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"scaling child {api} n={n} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return json.loads(stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- the benchmark --------------------------------------------------------------------------
def run(*, quick: bool = False) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    cpu_before = cpu_times()
    points: list[dict[str, Any]] = []
    for rep in range(cfg["reps"]):
        for n in cfg["sizes"]:
            for api in APIS:  # bulk and stream back to back at each size
                p = _spawn(api, n, cfg)
                p["rep"] = rep
                points.append(p)
    summary: dict[str, dict[str, dict[str, Any]]] = {api: {} for api in APIS}
    for api in APIS:
        for n in cfg["sizes"]:
            pts = [p for p in points if p["api"] == api and p["n"] == n]
            row: dict[str, Any] = {"n": n, "baseline_mb": statistics.median(p["baseline_kb"] for p in pts) / 1024}
            for op in OPS:
                secs = [p[op]["s"] for p in pts]
                row[op] = {
                    "s": statistics.median(secs), "samples_s": secs,
                    "us_per_value": statistics.median(secs) / n * 1e6,
                    "peak_mb": statistics.median(p[op]["peak_kb"] for p in pts) / 1024,
                    "start_mb": statistics.median(p[op]["start_kb"] for p in pts) / 1024,
                    "spread": (max(secs) - min(secs)) / statistics.median(secs),
                }
            summary[api][str(n)] = row
    results: dict[str, Any] = {
        "config": {**cfg, "quick": quick},
        "peak_method": points[0]["peak_method"] if points else "",
        "points": points,
        "summary": summary,
    }
    results["checks"] = _checks(results)
    results["load_average_end"] = load_average()
    results["cpu_steal_percent"] = steal_percent(cpu_before, cpu_times())
    return results


def _checks(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Shape checks (printed, never asserted): time per value at the largest N against 10k
    (or the smallest N above 1k), streamed memory growth, and the stream/bulk time ratio."""
    sizes = results["config"]["sizes"]
    big = str(max(sizes))
    ref = str(10_000 if 10_000 in sizes else min(sizes))
    small = str(min(sizes))
    s = results["summary"]
    out: list[dict[str, Any]] = []
    for api in APIS:
        for op in OPS:
            r = s[api][big][op]["us_per_value"] / s[api][ref][op]["us_per_value"]
            out.append({"what": f"{api} {op}: us/value at {int(big):,} / at {int(ref):,} (linear time)",
                        "ratio": r, "target": f"<= {LINEAR_LIMIT:g}x", "met": r <= LINEAR_LIMIT})
    for op in OPS:
        grow = s["stream"][big][op]["peak_mb"] - s["stream"][small][op]["peak_mb"]
        out.append({"what": f"stream {op}: peak MB at {int(big):,} minus at {int(small):,} (flat memory)",
                    "value_mb": grow, "target": f"< {FLAT_LIMIT_MB:g} MB", "met": grow < FLAT_LIMIT_MB})
    return out


# -- report ---------------------------------------------------------------------------------
def _t(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def report(results: Mapping[str, Any]) -> None:
    cfg = results["config"]
    s = results["summary"]
    print(f"\n== scaling: bulk vs streamed encrypt/decrypt, {', '.join(f'{n:,}' for n in cfg['sizes'])} values "
          f"({'QUICK: ' if cfg['quick'] else ''}median of {cfg['reps']} fresh child processes per point; "
          f"chunk_size {cfg['chunk_size']:,}) ==")
    print(f"peak memory: {results['peak_method']}; 'base' = the child's RSS after set-up and warm-up\n")
    headers = ["api", "N", "enc time", "enc us/v", "dec time", "dec us/v", "enc peak MB", "dec peak MB", "base MB",
               "noise"]
    rows = []
    for api in APIS:
        for n in cfg["sizes"]:
            r = s[api][str(n)]
            e, d = r["encrypt"], r["decrypt"]
            rows.append([api, f"{n:,}", _t(e["s"]), f"{e['us_per_value']:.2f}", _t(d["s"]), f"{d['us_per_value']:.2f}",
                         f"{e['peak_mb']:,.0f}", f"{d['peak_mb']:,.0f}", f"{r['baseline_mb']:.0f}",
                         f"{max(e['spread'], d['spread']) * 100:.0f}%"])
    print(fmt_table(headers, rows, [False] + [True] * 9))
    print("\nstream / bulk time (median of run-by-run ratios, children run back to back):")
    for n in cfg["sizes"]:
        parts = []
        for op in OPS:
            ratio = paired_ratio(s["stream"][str(n)][op]["samples_s"], s["bulk"][str(n)][op]["samples_s"])
            parts.append(f"{op} {ratio:.2f}x")
        print(f"  {n:>9,}: {', '.join(parts)}")
    print("\nshape checks (printed, never asserted):")
    for c in results["checks"]:
        val = f"{c['ratio']:.2f}x" if "ratio" in c else f"{c['value_mb']:+.1f} MB"
        print(f"  {c['what']:62} {val:>9}  target {c['target']:9} {'met' if c['met'] else 'MISSED'}")
    steal = results.get("cpu_steal_percent")
    print(f"\nload average at end: {results['load_average_end']}; CPU steal during the run: "
          + (f"{steal:.1f}%" if steal is not None else "n/a"))
    print(
        "\nHow to read it:\n"
        "  bulk   : bulk_encrypt(generator) (which makes a list) then bulk_decrypt(all payloads): every value,\n"
        "           payload and Result is in memory at once, so the peak grows with N.\n"
        "  stream : stream_encrypt(generator, chunk_size) / stream_decrypt(lazy payloads, chunk_size): one key-service\n"
        "           call per chunk, outputs consumed and dropped as they come; the peak should not depend on N.\n"
        "  time   : one phase, incl. reading every Result; us/v = time / N. At 1k the per-call fixed cost (key\n"
        "           release, one per operation or chunk) weighs most. Peak MB is the whole process (interpreter,\n"
        "           lockkit, the LocalIssuer), not only the data."
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # internal: one point, JSON on stdout
        api, n, chunk, pool, warm = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(child(api, n, chunk, pool, warm)))
        sys.exit(0)
    from run import main

    sys.exit(main(["scaling", *sys.argv[1:]]))
