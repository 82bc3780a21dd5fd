"""Stages for the reliability tests. Every execution is written to a side ledger.

The tests copy this file next to the pipeline YAML they write, so the engine imports it
the way it imports any user's stage module. Configuration comes from the environment
the test gives each ``treadle`` process:

- ``TREADLE_DB``: the database (the CLI reads it too); a stage opens it read-only to note
  the newest event id when it starts, which orders the ledger against the event log. A
  SQLite file, or a PostgreSQL URL (read over one connection per thread, kept open: event
  ids there are taken in commit order, so the newest visible id has every lower one
  committed before it).
- ``RELIABILITY_LEDGER``: the ledger file. One line per start and per end of an execution:
  ``start ITEM STAGE SUBTASK ATTEMPT PROC EVENT_ID`` / ``end ITEM STAGE SUBTASK ATTEMPT PROC``,
  written with O_APPEND and a single ``os.write`` so lines from parallel threads and
  processes never interleave. ``SUBTASK`` is ``-`` for a stage's own call. ``PROC`` is
  ``RUN:PID``, RUN being ``RELIABILITY_RUN`` (the test numbers the processes it starts, as
  pids are reused over a long run).
- ``RELIABILITY_SLEEP``: a factor on every stage's (deterministic, per item) duration.
- ``RELIABILITY_FAIL_ONCE``: when ``1``, subtask ``b`` of items whose index % 4 == 1 fails
  its first attempt, so the concurrency test has failed subtasks to retry.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from typing import Any

from treadle_cli import StageOutcome, SubTask

SUBTASKS = ("a", "b", "c", "d")


def item_index(item_id: str) -> int:
    """``k-0007`` -> 7: the tests decide by index what happens to an item."""
    return int(item_id.rsplit("-", 1)[1])


_local = threading.local()


def _newest_event() -> int:
    db = os.environ["TREADLE_DB"]
    if db.startswith(("postgresql://", "postgres://")):
        conn = getattr(_local, "pg", None)
        if conn is None:
            import psycopg

            conn = _local.pg = psycopg.connect(
                db, autocommit=True, application_name="reliability-ledger"
            )
        return conn.execute("SELECT coalesce(max(id), 0) FROM treadle.events").fetchone()[0]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    finally:
        conn.close()


def _ledger(line: str) -> None:
    fd = os.open(os.environ["RELIABILITY_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _sleep(ctx: Any, low: float, high: float) -> None:
    scale = float(os.environ.get("RELIABILITY_SLEEP", "1"))
    rng = random.Random(f"{ctx.item_id}/{ctx.stage}/{ctx.subtask}/{ctx.attempt}")
    time.sleep(rng.uniform(low, high) * scale)


class _Run:
    """Ledger bracket around one execution."""

    def __init__(self, ctx: Any) -> None:
        proc = f"{os.environ.get('RELIABILITY_RUN', '-')}:{os.getpid()}"
        self.key = f"{ctx.item_id} {ctx.stage} {ctx.subtask or '-'} {ctx.attempt} {proc}"

    def __enter__(self) -> _Run:
        _ledger(f"start {self.key} {_newest_event()}")
        return self

    def __exit__(self, *exc: Any) -> None:
        _ledger(f"end {self.key}")


def prepare(item: Any, ctx: Any) -> dict[str, Any]:
    with _Run(ctx):
        _sleep(ctx, 0.01, 0.06)
        return {"prepared": ctx.item_id}


def fan(item: Any, ctx: Any) -> Any:
    with _Run(ctx):
        if ctx.subtask is None:
            _sleep(ctx, 0.0, 0.02)
            return StageOutcome.fan_out([SubTask(name, {"part": name}) for name in SUBTASKS])
        _sleep(ctx, 0.02, 0.12)
        fail_once = os.environ.get("RELIABILITY_FAIL_ONCE") == "1"
        if (
            fail_once
            and ctx.subtask == "b"
            and item_index(ctx.item_id) % 4 == 1
            and ctx.attempt == 1
        ):
            raise RuntimeError("planned failure of the first attempt")
        return {"part": ctx.subtask, "by": os.getpid()}


def gate(item: Any, ctx: Any) -> StageOutcome:
    """A review gate: it asks a human, and says so again after a rejection."""
    with _Run(ctx):
        _sleep(ctx, 0.0, 0.02)
        prompt = f"Approve {ctx.item_id}?"
        if ctx.review is not None:
            prompt += f" (rejected before: {ctx.review.reason})"
        return StageOutcome.needs_review(prompt, {"item": ctx.item_id})


def publish(item: Any, ctx: Any) -> dict[str, Any]:
    with _Run(ctx):
        _sleep(ctx, 0.01, 0.05)
        return {"published": ctx.item_id, "review": ctx.outputs.get("gate")}


def wrong_type(item: Any, ctx: Any) -> Any:
    """Returns neither None, a dict nor a StageOutcome: a failed attempt, clearly reported."""
    return 42


def not_json(item: Any, ctx: Any) -> dict[str, Any]:
    """Returns an output JSON cannot hold (NaN): a failed attempt, not a stored non-JSON."""
    return {"score": float("nan")}


def quick(item: Any, ctx: Any) -> None:
    return None
