"""The command line: options, which workloads run, in what order, and the report."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import core
from bench.bigdb import big_db_child, run_bigdb
from bench.cli import run_cli
from bench.core import HERE, TREADLE, Bench, log
from bench.profiling import profile
from bench.report import machine_info, print_summary, print_table, write_results
from bench.tput import run_tput
from bench.w1 import run_w1, run_w1_full
from bench.w1pg import run_w1pg
from bench.w2 import fanout_mem_child, run_w2
from bench.w3 import run_w3
from bench.watch import run_watch

#: every workload, in the order they run
STEPS: dict[str, Callable[[Bench], None]] = {
    "W1": run_w1,
    "W1-full": run_w1_full,
    "W1-pg": run_w1pg,
    "W2": run_w2,
    "W3": run_w3,
    "cli": run_cli,
    "bigdb": run_bigdb,
    "watch": run_watch,
    "tput": run_tput,
}
BENCHES = list(STEPS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="treadle benchmarks (see bench/README.md)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="small sizes, few runs (~1 min)",
    )
    g.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="the issue's sizes: 100k-item database, 10k-item throughput (slow)",
    )
    ap.set_defaults(mode="default")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    ap.add_argument("--runs", type=int, default=0, help="override the number of runs")
    ap.add_argument(
        "--cache",
        default="",
        help="folder to keep (and reuse) the big databases between invocations",
    )
    ap.add_argument("--out", default=str(HERE / "results.json"), help="results file")
    ap.add_argument(
        "--profile",
        default="",
        metavar="W",
        help="cProfile one library workload (W1, W1-full, W2, W3) and exit",
    )
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    if args._child:
        kind, *rest = args._child
        if kind == "bigdb":
            big_db_child(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "fanout-mem":
            fanout_mem_child(rest[0], int(rest[1]))
        return 0

    if not TREADLE:
        raise SystemExit("no treadle executable next to this python; run `make install`")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    lower = {b.lower(): b for b in BENCHES}
    bad = [s for s in only if s.lower() not in lower]
    if bad:
        raise SystemExit(f"unknown benchmark(s) {', '.join(bad)}; use {', '.join(BENCHES)}")
    selected = [lower[s.lower()] for s in only] or BENCHES

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="treadle-bench-") as tmp:
        if args.profile:
            profile(args.profile, tmp)
            return 0
        core.PYCACHE = os.path.join(tmp, "pycache")
        b = Bench(args, tmp)
        info = machine_info()
        log(
            f"mode {args.mode}: {', '.join(selected)}; python {info['python']}, "
            f"sqlite {info['sqlite']}, {info['affinity']} CPUs, load {info['loadavg_start']}"
        )
        timings = {}
        for name in BENCHES:
            if name in selected:
                s = time.perf_counter()
                STEPS[name](b)
                timings[name] = time.perf_counter() - s
        elapsed = time.perf_counter() - t0
    info["loadavg_end"] = os.getloadavg()
    print()
    print_table(b.rows)
    print_summary(b.rows, args.mode, elapsed, info, b.info)
    write_results(
        Path(args.out),
        mode=args.mode,
        selected=selected,
        elapsed=elapsed,
        timings=timings,
        machine=info,
        rows=b.rows,
        info=b.info,
        partial=bool(only),
    )
    return 0
