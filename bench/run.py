"""Benchmark dispatcher: ``python bench/run.py [NAME ...] [--quick] [--json PATH] [--report PATH]``.

With no NAME every registered benchmark runs, in order. ``--quick`` is a fast smoke run
(fewer repetitions, smaller data); ``--json PATH`` also writes the raw results (machine,
configuration, every sample); ``--report PATH`` also writes a Markdown report with charts
(``bench/report.py``; ``make bench`` writes ``docs/benchmarks.md``). Benchmarks print numbers
and ratios; none asserts anything about time, so a slow machine never fails this script.

To add a benchmark: a module ``bench/bench_<name>.py`` with ``NAME``, ``DESCRIPTION``,
``run(*, quick: bool) -> dict`` (JSON-serialisable raw results) and ``report(results)``
(prints them), then one line in ``BENCHMARKS`` below.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from common import machine_info, print_machine  # noqa: E402

# name -> module under bench/ (run in this order when no name is given)
BENCHMARKS: dict[str, str] = {
    "core": "bench_core",
    "openbao": "bench_openbao",
    "requests": "bench_requests",
    "load": "bench_load",
    "peers": "bench_peers",
    "scaling": "bench_scaling",
}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, dt.date | dt.datetime):
        return obj.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="lockkit benchmarks (print numbers and ratios; assert nothing about time)",
    )
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="fast smoke run: fewer repetitions, less data")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results to PATH as JSON")
    parser.add_argument("--report", metavar="PATH",
                        help="also write a Markdown report to PATH, with chart PNGs beside it (bench/report.py)")
    parser.add_argument("--raft", action="store_true", help="openbao: a single-node Raft server instead of a dev node")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.raft:
        os.environ["LOCKKIT_BENCH_OPENBAO"] = "raft"

    if args.list:
        for name, module_name in BENCHMARKS.items():
            print(f"{name:12} {importlib.import_module(module_name).DESCRIPTION}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = list(dict.fromkeys(args.names)) or list(BENCHMARKS)

    info = machine_info()
    print_machine(info)
    out: dict[str, Any] = {"machine": info, "quick": args.quick, "started": time.time(), "benchmarks": {}}
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        t0 = time.perf_counter()
        results = module.run(quick=args.quick)
        results["wall_s"] = time.perf_counter() - t0
        module.report(results)
        print(f"\n[{name}: {results['wall_s']:.1f} s wall]")
        out["benchmarks"][name] = results
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, default=_json_default)
        print(f"raw results written to {args.json}")
    if args.report:
        from report import write_report

        # the report reads what --json would write (so a saved JSON gives the same report)
        data = json.loads(json.dumps(out, default=_json_default))
        for path in write_report(data, args.report):
            print(f"report written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
