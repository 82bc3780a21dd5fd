"""Shared helpers of the reliability tests (a module of its own: every test folder has a
``conftest.py``, so ``from conftest import ...`` could find another folder's).

A :class:`World` is backed by a SQLite file or, with a ``url``, by a PostgreSQL database
(the ``pg_url`` fixture). Its :meth:`World.query` takes the same SQL on both: ``?``
placeholders, unqualified table names (the PostgreSQL connection's search path is the schema
``treadle``), and JSON columns read back as text, as SQLite returns them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
STRESS = os.environ.get("TREADLE_STRESS") == "1"
#: ``@pytest.mark.parametrize("world", BACKENDS, indirect=True)`` runs a test on a SQLite
#: file and on a PostgreSQL database (marked ``pg``: skipped without a server unless CI,
#: see tests/conftest.py; ``-m "not pg"`` leaves them out).
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.pg)]
#: The PostgreSQL variant alone, for a test whose SQLite form is parametrized by case.
POSTGRES = BACKENDS[1:]


def sized(ci: Any, stress: Any) -> Any:
    """The CI size, or the long one under ``make stress``."""
    return stress if STRESS else ci


def treadle_cmd() -> list[str]:
    """The installed entry point next to this Python, else ``python -m treadle_cli``."""
    exe = Path(sys.executable).with_name("treadle")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "treadle_cli"]


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def pg_connect(url: str) -> Any:
    """A psycopg connection (autocommit) that reads treadle's tables the way sqlite3 does."""
    import psycopg
    from psycopg.types.string import TextLoader

    conn = psycopg.connect(
        url,
        autocommit=True,
        application_name="reliability-test",
        options="-c search_path=treadle -c timezone=UTC",
    )
    conn.adapters.register_loader("json", TextLoader)  # JSON as its text, like SQLite
    return conn


Query = Callable[..., list[Any]]


@contextmanager
def snapshot(target: str | Path) -> Iterator[Query]:
    """``query(sql, params=())`` reading one consistent snapshot of a SQLite file or a
    PostgreSQL URL (a read transaction: what others commit meanwhile is not seen)."""
    if is_postgres(target):
        with pg_connect(str(target)) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

            def pg_query(sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
                pg_sql = sql.replace("%", "%%").replace("?", "%s")
                return [tuple(r) for r in conn.execute(pg_sql, params).fetchall()]

            try:
                yield pg_query
            finally:
                conn.execute("ROLLBACK")
        return
    conn = sqlite3.connect(target, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN")  # deferred: the WAL snapshot is taken at the first read
        yield lambda sql, params=(): conn.execute(sql, params).fetchall()
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def query_db(target: str | Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql`` (``?`` placeholders) from a SQLite file or a PostgreSQL URL."""
    with snapshot(target) as query:
        return query(sql, params)


def item_state(stage_statuses: list[str]) -> str:
    """DESIGN §4: completed when every stage is completed or skipped; else failed, rejected,
    awaiting_review, running, pending, in that order of precedence."""
    if set(stage_statuses) <= {"completed", "skipped"}:
        return "completed"
    order = ("failed", "rejected", "awaiting_review", "running")
    return next((s for s in order if s in stage_statuses), "pending")


def consistency(target: str | Path) -> list[str]:
    """What would show a transition half-written: rows that disagree with each other or
    with the event log (every transition writes its rows and events in one transaction).

    - an item's state and progress are those its active stages imply;
    - a stage or subtask is completed exactly when the log has its ``*_completed`` event
      (completed is final), and an item exists exactly when its ``item_registered`` does;
    - a completed fan-out has every subtask completed; a failed or rejected one has none
      pending or running, and is failed when one of them is;
    - a running stage has a claim and an owner; one awaiting review has its prompt;
    - every decision belongs to an existing stage and has a ``review_*`` event.
    """
    with snapshot(target) as q:
        return _consistency(q)


def _consistency(q: Query) -> list[str]:
    problems: list[str] = []
    stages: dict[str, list[tuple[Any, ...]]] = {}
    for row in q(
        "SELECT item_id, name, status, fanned_out, claim, owner_pid, review_prompt, active "
        "FROM stages ORDER BY item_id, position"
    ):
        stages.setdefault(row[0], []).append(row)
    subtasks: dict[tuple[str, str], list[str]] = {}
    for item, stage, status in q("SELECT item_id, stage, status FROM subtasks"):
        subtasks.setdefault((item, stage), []).append(status)
    items = q("SELECT id, state, progress FROM items")
    for item, state, progress in items:
        active = [r[2] for r in stages.get(item, []) if r[7]]
        if state != item_state(active):
            problems.append(
                f"item {item} is {state}, its stages {active} make it {item_state(active)}"
            )
        done = sum(1 for s in active if s in ("completed", "skipped"))
        want = round(100.0 * done / len(active), 1) if active else 100.0
        if abs(float(progress) - want) > 0.05:
            problems.append(f"item {item} progress {progress}, its stages make it {want}")
    for rows in stages.values():
        for item, name, status, fanned_out, claim, owner_pid, prompt, _ in rows:
            subs = subtasks.get((item, name), [])
            if status == "running" and (claim is None or owner_pid is None):
                problems.append(f"{item} {name} is running with no claim or owner")
            if status == "awaiting_review" and not fanned_out and prompt is None:
                problems.append(f"{item} {name} awaits review with no prompt")
            if fanned_out and status == "completed" and set(subs) != {"completed"}:
                problems.append(f"{item} {name} is completed, its subtasks are {subs}")
            # Settled (none pending or running), a fan-out has failed if a subtask has.
            if fanned_out and status in ("failed", "rejected"):
                wanted = "failed" if "failed" in subs else "rejected"
                if status != wanted or {"pending", "running"} & set(subs):
                    problems.append(f"{item} {name} is {status}, its subtasks are {subs}")
    events = q("SELECT kind, item_id, stage, subtask FROM events")
    logged = {
        kind: {(i, s, t) for k, i, s, t in events if k == kind}
        for kind in ("stage_completed", "subtask_completed", "item_registered")
    }
    tables = {
        "stage_completed": {
            (i, n, None) for i, rows in stages.items() for _, n, st, *_ in rows if st == "completed"
        },
        "subtask_completed": {
            (i, s, n)
            for i, s, n, st in q("SELECT item_id, stage, name, status FROM subtasks")
            if st == "completed"
        },
        "item_registered": {(i, None, None) for i, _, _ in items},
    }
    for kind, rows in tables.items():
        if rows != logged[kind]:
            problems.append(
                f"{kind}: in the tables only {sorted(rows - logged[kind])[:5]}, "
                f"in the log only {sorted(logged[kind] - rows)[:5]}"
            )
    decided = q("SELECT item_id, stage, decision FROM decisions")
    for item, stage, _ in decided:
        if stage not in {r[1] for r in stages.get(item, [])}:
            problems.append(f"a decision on {item} {stage}, which does not exist")
    reviews = [e for e in events if e[0] in ("review_approved", "review_rejected")]
    if len(reviews) != len(decided):
        problems.append(f"{len(decided)} decisions, {len(reviews)} review events")
    return problems


@dataclass
class World:
    """A folder with a database, a ledger, the stage module and pipeline files.

    The database is the SQLite file ``db``, or the PostgreSQL database ``url`` when given.
    """

    root: Path
    db: Path
    ledger: Path
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None

    @property
    def backend(self) -> str:
        return "postgres" if self.url else "sqlite"

    @property
    def target(self) -> str:
        """What ``--db`` / ``TREADLE_DB`` names: the file, or the URL."""
        return self.url or str(self.db)

    def pipeline(self, name: str, text: str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        return path

    def cmd(self, *args: str) -> list[str]:
        return [*treadle_cmd(), *args]

    def run(
        self,
        *args: str,
        timeout: float = 300,
        env: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``treadle ARGS`` (or ``CMD ARGS``) in the world's folder, output captured."""
        return subprocess.run(
            [*(cmd or treadle_cmd()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=self.root,
            **kw,
        )

    def json(self, command: str, *args: str) -> Any:
        r = self.run(command, "--json", *args)
        assert r.returncode == 0, (args, r.returncode, r.stderr)
        return json.loads(r.stdout)

    def has_schema(self) -> bool:
        """Whether treadle's tables exist (a kill during the first advance may precede them)."""
        if self.url:
            got = query_db(self.url, "SELECT to_regclass('treadle.items') IS NOT NULL")
            return bool(got[0][0])
        return self.db.exists() and bool(
            self.query("SELECT 1 FROM sqlite_master WHERE name = 'items'")
        )

    def integrity(self) -> str:
        """``ok``, or what is wrong: SQLite's ``PRAGMA integrity_check`` of the file (a server
        keeps its own pages), then on both backends the rows' :func:`consistency`."""
        if not self.url:
            conn = sqlite3.connect(self.db, timeout=60)
            try:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
            finally:
                conn.close()
            result = "; ".join(r[0] for r in rows)
            if result != "ok":
                return result
        if not self.has_schema():  # killed before its first commit: nothing to check
            return "ok"
        from treadle_cli.store.postgres import SCHEMA_VERSION

        version = [(str(SCHEMA_VERSION),)]
        if (
            self.url
            and self.query("SELECT value FROM meta WHERE key = 'schema_version'") != version
        ):
            return f"treadle.meta has no schema_version {SCHEMA_VERSION}"
        return "; ".join(consistency(self.target)) or "ok"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return query_db(self.target, sql, params)


def base_env(db: Path | str, ledger: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TREADLE_", "RELIABILITY_"))}
    env.update(
        TREADLE_DB=str(db),
        RELIABILITY_LEDGER=str(ledger),
        NO_COLOR="1",
        USER="reliability",
        PYTHONDONTWRITEBYTECODE="1",
        RELIABILITY_TREADLE=json.dumps(treadle_cmd()),
    )
    if "TREADLE_DURABILITY" in os.environ:  # let a run exercise --durability full
        env["TREADLE_DURABILITY"] = os.environ["TREADLE_DURABILITY"]
    return env


KILL_PIPELINE = """\
pipeline: reliability
description: prepare, fan out into four parts (three at a time), a human gate, publish.
stages:
  prepare:
    uses: relstages:prepare
  fan:
    uses: relstages:fan
    needs: prepare
    concurrency: 3
  gate:
    uses: relstages:gate
    needs: fan
  publish:
    uses: relstages:publish
    needs: gate
"""
#: Executions one `advance --jobs J` of KILL_PIPELINE can have running at once: one
#: stage per item (the pipeline is a chain), and a fan-out runs at most 3 subtasks.
FAN_CONCURRENCY = 3


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
