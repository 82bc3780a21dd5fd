"""bigdb: ``status`` on a big database built through the library; its peak memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core import (
    PY,
    RUN,
    TREADLE,
    Bench,
    child_env,
    log,
    med,
    open_store,
    run_child,
    run_in_pty,
)
from bench.report import Row

BIG_STATUS_TARGET_S = 1.0
BIG_MEM_TARGET_RATIO = 1.5

#: the floor of ``status --all --json``: the same document from plain sqlite3 and json
FLOOR_STATUS_JSON = r"""
import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
w = sys.stdout.write
w('{"items": [')
first = True
cur = c.execute("SELECT id, pipeline, state, progress, waiting_on FROM items ORDER BY created_at, id")
while rows := cur.fetchmany(1000):
    for r in rows:
        w(("" if first else ", ") + json.dumps({"id": r[0], "pipeline": r[1], "state": r[2],
                                               "progress": r[3], "waiting_on": r[4]}))
        first = False
counts = dict(c.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
w('], "counts": ' + json.dumps(counts) + "}\n")
"""


# --------------------------------------------------------------- building the database


def _big_stage(kind: str) -> Callable[..., Any]:
    def fn(item: Any, ctx: Any) -> Any:
        k = item.data["k"]
        if kind == "fail" and k % 10 == 3:
            raise ValueError(f"cannot parse document {k}")
        if kind == "review" and k % 3 == 0:
            from treadle_cli import StageOutcome

            return StageOutcome.needs_review("check the summary", {"k": k, "summary": "x" * 40})
        return {"k": k, "words": k % 997}

    return fn


def big_workflow() -> Any:
    from treadle_cli import Workflow

    return (
        Workflow.builder("bigdb")
        .stage("fetch", _big_stage("ok"))
        .stage("parse", _big_stage("fail"), needs="fetch")
        .stage("enrich", _big_stage("ok"), needs="parse")
        .stage("review", _big_stage("review"), needs="enrich")
        .stage("publish", _big_stage("ok"), needs="review")
        .build()
    )


def big_db_child(path: str, start: int, stop: int) -> None:
    wf = big_workflow()
    store = open_store(path)
    for k in range(start, stop):
        wf.advance(f"doc-{k:06d}", store, data={"k": k})
    store.close()


def make_big_db(path: str, n: int, workers: int = 2, start: int = 0) -> float:
    """Add items ``start``..``n`` (x 5 stages) through the library, in ``workers`` processes."""
    # Create the schema first so the workers do not race to migrate.
    open_store(path).close()
    t0 = time.perf_counter()
    bounds = [start + (n - start) * w // workers for w in range(workers + 1)]
    procs = [
        subprocess.Popen(
            [PY, str(RUN), "--_child", "bigdb", path, str(bounds[w]), str(bounds[w + 1])],
            env=child_env(),
        )
        for w in range(workers)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"big DB creation failed (exit {p.returncode})")
    return time.perf_counter() - t0


def big_db(b: Bench, n: int, base: tuple[str, int] | None = None) -> tuple[str, float | None]:
    """A database of ``n`` items; ``base`` (path, items) is a smaller one to extend."""
    cache = b.args.cache
    from treadle_cli.store import sqlite as sqlite_store

    # keyed on the schema version: a cached database from an older schema is not reused
    name = f"big-{n}-v{getattr(sqlite_store, 'SCHEMA_VERSION', 0)}.db"
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        path = os.path.join(cache, name)
        if os.path.exists(path):
            log(f"  reusing cached {path}")
            return path, None
    else:
        path = os.path.join(b.tmp, name)
    start = 0
    if base is not None:
        shutil.copyfile(base[0], path)  # closed cleanly: no -wal file left
        start = base[1]
    log(f"  adding items {start:,}..{n:,} (x 5 stages) through the library, 2 processes...")
    el = make_big_db(path, n, start=start)
    log(f"  took {el:.1f}s ({(n - start) / el:,.0f} items/s)")
    return path, el


# ------------------------------------------------------------------------ the bench


def run_bigdb(b: Bench) -> None:
    n_big, n_small = b.mode["big"], b.mode["small"]
    runs = b.runs("big_runs")
    log(f"big DB: {n_big:,} and {n_small:,} items")
    small, made_small = big_db(b, n_small)
    big, made_big = big_db(b, n_big, base=(small, n_small))
    if made_big and made_small:
        total = made_big + made_small
        b.info["bigdb_create_seconds"] = total
        b.rows.append(
            Row(
                "bigdb-create",
                f"create {n_big:,} items x 5 stages (library, 2 procs)",
                "s",
                [total],
                notes=f"{n_big / total:,.0f} items/s; setup cost, not "
                "a target; --cache DIR keeps the databases for the next run",
            )
        )
    check = run_child([TREADLE, "--db", big, "status", "--all", "--json"], capture=True)
    doc = json.loads(check.stdout)
    if len(doc["items"]) != n_big:
        raise SystemExit(f"status --all --json listed {len(doc['items'])} of {n_big} items")
    b.info["bigdb_states"] = doc["counts"]
    out_path = os.path.join(b.tmp, "status.json")
    js: list[float] = []
    fl: list[float] = []
    term: list[float] = []
    rss_big: list[int] = []
    rss_small: list[int] = []
    for _ in range(runs):
        r = run_child(
            [TREADLE, "--db", big, "status", "--all", "--json"], stdout_path=out_path, rss=True
        )
        js.append(r.wall)
        rss_big.append(r.maxrss_kb)
        r = run_child(
            [TREADLE, "--db", small, "status", "--all", "--json"],
            stdout_path=out_path,
            rss=True,
        )
        rss_small.append(r.maxrss_kb)
        r = run_child([PY, "-c", FLOOR_STATUS_JSON, big], stdout_path=out_path)
        fl.append(r.wall)
        r = run_in_pty([TREADLE, "--db", big, "status"])
        if r.rc != 0:
            raise SystemExit(f"status (terminal) failed: {r.stdout[-400:]!r}")
        term.append(r.wall)
    b.info["bigdb_terminal_tail"] = r.stdout.decode(errors="replace")[-1500:]
    b.rows.append(
        Row(
            "bigdb-json",
            f"status --all --json, {n_big:,} items",
            "s",
            js,
            floor=med(fl),
            floor_label="python+sqlite3+json, same output",
            target=f"≤ {BIG_STATUS_TARGET_S:g} s",
            ok=med(js) <= BIG_STATUS_TARGET_S,
            notes="whole process, stdout to a file",
        )
    )
    b.rows.append(
        Row(
            "bigdb-term",
            f"status (terminal view), {n_big:,} items",
            "s",
            term,
            target=f"≤ {BIG_STATUS_TARGET_S:g} s",
            ok=med(term) <= BIG_STATUS_TARGET_S,
            notes="whole process on a pseudo-terminal, 120x50",
        )
    )
    mb, ms = med(rss_big) / 1024, med(rss_small) / 1024
    b.rows.append(
        Row(
            "bigdb-mem",
            f"status --all --json peak RSS, {n_big:,} vs {n_small:,}",
            "MiB",
            [x / 1024 for x in rss_big],
            floor=ms,
            floor_label=f"RSS at {n_small:,}",
            target=f"≤ {BIG_MEM_TARGET_RATIO:g}x",
            ok=mb / ms <= BIG_MEM_TARGET_RATIO,
            notes="peak RSS of each fresh child (/usr/bin/time %M)",
        )
    )
