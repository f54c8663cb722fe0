"""Shared helpers for the benchmarks: machine description and a paired timing loop.

Nothing here asserts anything about time; it only measures and formats.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    """``/proc/loadavg``'s first three fields (other work on the machine), or ``n/a``."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def cpu_times() -> list[int] | None:
    """The aggregate ``cpu`` line of ``/proc/stat`` (jiffies), or None off Linux."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            first = f.readline().split()
    except OSError:
        return None
    return [int(x) for x in first[1:]] if first and first[0] == "cpu" else None


def steal_percent(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of CPU time the hypervisor gave to someone else between two :func:`cpu_times`
    readings (field 8, ``steal``), in percent; None when unknown."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after) - sum(before)
    return 100.0 * (after[7] - before[7]) / total if total > 0 else None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    openssl = "unknown"
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        openssl = backend.openssl_version_text()
    except Exception:  # pragma: no cover - informational only
        pass
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "cryptography": _version("cryptography"),
        "openssl": openssl,
        "lockkit": _version("lockkit"),
        "pyjwt": _version("PyJWT"),
        "load_average_start": load_average(),
    }


def print_machine(info: Mapping[str, Any]) -> None:
    print(f"machine      : {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable)")
    print(f"platform     : {info['platform']}")
    print(f"python       : {info['python']}")
    print(f"cryptography : {info['cryptography']} ({info['openssl']})")
    print(f"lockkit      : {info['lockkit']}   PyJWT: {info['pyjwt']}")
    print(f"load average : {info['load_average_start']} (1/5/15 min, at start)")


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds for one call of ``fn`` (after a ``gc.collect()``); the result is dropped
    outside the timed region."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    del out
    return elapsed


def measure_paired(
    contenders: Mapping[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each contender ``reps`` times after ``warmup`` untimed runs.

    Contenders are interleaved (A B C, A B C, ...) so that background load on a shared
    machine lands on all of them alike rather than on whichever ran during a busy second.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            times[name].append(time_once(fn))
    return times


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-repetition ratios ``num[i] / den[i]``. Runs with the same index ran
    back to back (see :func:`measure_paired`), so a busy moment cancels out of each ratio."""
    return statistics.median(a / b for a, b in zip(num, den))


def summarise(samples: Sequence[float], per: int) -> dict[str, Any]:
    """Median / min / max of ``samples`` (seconds per run) in microseconds per item."""
    us = [s / per * 1e6 for s in samples]
    med = statistics.median(us)
    return {
        "median_us": med,
        "min_us": min(us),
        "max_us": max(us),
        "spread": (max(us) - min(us)) / med if med else 0.0,
        "samples_us": us,
    }


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A plain fixed-width table (no third-party formatting)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15) -> None:
    """Terminate ``proc`` (SIGTERM), wait ``timeout`` seconds, then kill it."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
