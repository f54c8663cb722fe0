"""Where lockkit's per-value time goes in bulk encrypt / bulk decrypt.

    .venv/bin/python bench/profile_core.py [--n 10000] [--top 18] [--indexed] [--models]

Same wiring and data as ``bench_core`` (one identified user, the CTS token reused). For each
operation it prints a cProfile table (sorted by own time) and, when ``pyinstrument`` is
installed in the venv (``.venv/bin/pip install pyinstrument``; not a project dependency), a
sampling call tree, which distorts small Python functions less than cProfile does.
Times are per run of ``--n`` values; divide by n for per-value figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from bench_core import lockkit_env, make_emails, make_models  # noqa: E402


def _cprofile(label: str, fn: Callable[[], Any], n: int, top: int) -> None:
    fn()  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    total = stats.total_tt  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    print(f"\n--- cProfile: {label} (n={n:,}; {total * 1e3:.0f} ms under the profiler, "
          f"{total / n * 1e6:.2f} us/item; profiler overhead inflates small calls) ---")
    lines = buf.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    print("\n".join(ln for ln in lines[start:] if ln.strip()))


def _pyinstrument(label: str, fn: Callable[[], Any], reps: int) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        print(f"\n(pyinstrument not installed: no sampling profile for {label})")
        return
    fn()
    prof = Profiler(interval=0.0002)
    prof.start()
    for _ in range(reps):
        fn()
    prof.stop()
    print(f"\n--- pyinstrument: {label} ({reps} runs) ---")
    print(prof.output_text(unicode=False, color=False, show_all=False))


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/profile_core.py")
    ap.add_argument("--n", type=int, default=10_000, help="values per bulk call (models: n/5)")
    ap.add_argument("--top", type=int, default=18, help="cProfile rows to show")
    ap.add_argument("--indexed", action="store_true", help="also profile the eq+match indexed column")
    ap.add_argument("--models", action="store_true", help="also profile bulk_*_models")
    ap.add_argument("--reps", type=int, default=5, help="runs sampled by pyinstrument")
    args = ap.parse_args()

    emails = make_emails(args.n)
    models = make_models(max(1, args.n // 5))
    with lockkit_env() as env:
        c, lc = env.client, env.lc
        tables = [("plain", env.plain)] + ([("eq+match", env.indexed)] if args.indexed else [])
        for tag, table in tables:
            def enc(table: Any = table) -> list[Any]:
                return [r.unwrap() for r in
                        c.bulk_encrypt(emails, column="email", table=table).with_lock_context(lc).unwrap()]

            payloads = enc()

            def dec(payloads: list[Any] = payloads) -> list[Any]:
                return [r.unwrap() for r in c.bulk_decrypt(payloads).with_lock_context(lc).unwrap()]

            runs: list[tuple[str, Callable[[], Any]]] = [
                (f"bulk_encrypt strings [{tag}]", enc), (f"bulk_decrypt strings [{tag}]", dec)]
            for label, fn in runs:
                _cprofile(label, fn, args.n, args.top)
                _pyinstrument(label, fn, args.reps)
            if args.models:
                def enc_m(table: Any = table) -> list[Any]:
                    return c.bulk_encrypt_models(models, table).with_lock_context(lc).unwrap()

                rows = enc_m()

                def dec_m(rows: list[Any] = rows, table: Any = table) -> list[Any]:
                    return c.bulk_decrypt_models(rows, table).with_lock_context(lc).unwrap()

                runs = [(f"bulk_encrypt_models [{tag}]", enc_m), (f"bulk_decrypt_models [{tag}]", dec_m)]
                for label, fn in runs:
                    _cprofile(label, fn, len(models), args.top)
                    _pyinstrument(label, fn, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
