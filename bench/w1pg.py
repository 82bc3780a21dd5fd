"""W1-pg: W1 on PostgreSQL, per stage, against a raw psycopg floor on the same server."""

from __future__ import annotations

import importlib.util
import time
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from bench.core import FLOOR_STEPS, ROOT, Bench, log, med
from bench.report import Row
from bench.w1 import W1_TARGET_RATIO, advance_all, chain_workflow

PGCLUSTER = ROOT / "scripts" / "pgcluster.py"
FLOOR_TIME = datetime(2024, 1, 1, tzinfo=UTC)
LABEL = "W1 on PostgreSQL, per stage (200 items x 5 no-op)"


def load_pgcluster() -> ModuleType | None:
    """scripts/pgcluster.py (a standalone script, not a package), or None without it."""
    if not PGCLUSTER.exists():
        return None
    spec = importlib.util.spec_from_file_location("pgcluster", PGCLUSTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pg_floor_run(url: str, items: int = 200, stages: int = 5) -> float:
    """Raw psycopg, the SQLite floor's work: per stage two commits, each ``BEGIN; UPDATE``
    of its row ``; INSERT`` of an event row ``; COMMIT`` (prepared statements, one
    connection). Seconds per stage."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "CREATE TABLE stages (item_id text, name text, status text, attempts integer, "
            "updated_at timestamptz, PRIMARY KEY (item_id, name))"
        )
        c.execute(
            "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "ts timestamptz, kind text, item_id text, stage text, data json)"
        )
        c.execute("CREATE INDEX events_item ON events (item_id, id)")
        keys = [(f"doc-{i}", f"s{j}") for i in range(items) for j in range(stages)]
        with c.transaction(), c.cursor() as cur:
            cur.executemany("INSERT INTO stages VALUES (%s, %s, 'pending', 0, NULL)", keys)
        upd = (
            "UPDATE stages SET status = %s, attempts = attempts + 1, updated_at = %s "
            "WHERE item_id = %s AND name = %s"
        )
        ins = "INSERT INTO events (ts, kind, item_id, stage, data) VALUES (%s, %s, %s, %s, %s)"
        cur = c.cursor()
        ex = cur.execute
        t0 = time.perf_counter()
        for item, stage in keys:
            for status, kind, data in FLOOR_STEPS:
                ex("BEGIN")
                ex(upd, (status, FLOOR_TIME, item, stage), prepare=True)
                ex(ins, (FLOOR_TIME, kind, item, stage, data), prepare=True)
                ex("COMMIT")
        el = time.perf_counter() - t0
    return el / len(keys)


def w1pg_run(url: str, items: int = 200, stages: int = 5) -> float:
    """Seconds per stage: W1 through the library on the PostgreSQL database ``url``."""
    from treadle_cli.store import open_store

    wf = chain_workflow("w1", stages)
    store = open_store(url)
    store.count_items()  # connect before the clock starts, as opening a SQLite file does
    per_stage = advance_all(wf, store, items, stages)
    store.close()
    return per_stage


def run_w1pg(b: Bench) -> None:
    pgcluster = load_pgcluster()
    if pgcluster is None or pgcluster.find_pg_bin() is None:
        log("W1-pg: skipped, no PostgreSQL binaries (initdb, pg_ctl, postgres)")
        b.rows.append(
            Row(
                "W1-pg",
                LABEL,
                "µs",
                [],
                target=f"≤ {W1_TARGET_RATIO:g}x floor",
                notes="skipped: no PostgreSQL (initdb, pg_ctl and postgres not found; "
                "see scripts/pgcluster.py)",
                extra={"skipped": "no PostgreSQL"},
            )
        )
        return
    n = max(3, min(b.runs(), 5))
    log(f"W1-pg: starting a PostgreSQL server (fsync on); {n} runs, interleaved with its floor")
    try:
        cluster = pgcluster.start(fast=False)
    except pgcluster.ClusterError as exc:
        raise SystemExit(f"W1-pg: could not start PostgreSQL: {exc}") from None
    counter = iter(range(1_000_000))

    def fresh(kind: str, run: Any, *args: Any) -> float:
        # a fresh database each run, as the SQLite runs take a fresh file
        name = f"{kind}_{next(counter)}"
        url = cluster.create_database(name)
        try:
            return run(url, *args)
        finally:
            cluster.drop_database(name)

    floor: list[float] = []
    w1: list[float] = []
    try:
        info = cluster_info(cluster)
        fresh("floor", pg_floor_run)  # warm-up: page cache, imports, the server's caches
        fresh("w1", w1pg_run)
        for _ in range(n):
            floor.append(fresh("floor", pg_floor_run))
            w1.append(fresh("w1", w1pg_run))
    finally:
        cluster.stop()
    b.info["w1pg_server"] = info
    f = med(floor)
    b.rows.append(
        Row(
            "floor-pg",
            "raw floor: psycopg, 2 commits/transition (PostgreSQL)",
            "µs",
            [x * 1e6 for x in floor],
            notes="BEGIN; UPDATE stage row; INSERT event row; COMMIT, x2; prepared "
            "statements, one connection, fsync and synchronous_commit on",
        )
    )
    b.rows.append(
        Row(
            "W1-pg",
            LABEL,
            "µs",
            [x * 1e6 for x in w1],
            floor=f * 1e6,
            floor_label="psycopg floor",
            target=f"≤ {W1_TARGET_RATIO:g}x floor",
            ok=med(w1) <= W1_TARGET_RATIO * f,
            notes=f"open_store(postgresql://...) on a local server ({info['version']}, "
            "same server as its floor); a fresh database each run",
        )
    )


def cluster_info(cluster: Any) -> dict[str, Any]:
    """The server's version and the settings that decide what a commit costs."""
    import psycopg

    with psycopg.connect(cluster.url("postgres")) as c:
        version = c.execute("SHOW server_version").fetchone()[0]
        settings = dict(
            c.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
                "'synchronous_commit', 'full_page_writes', 'wal_sync_method', 'shared_buffers')"
            ).fetchall()
        )
    return {"version": f"PostgreSQL {version.split()[0]}", "settings": settings}
