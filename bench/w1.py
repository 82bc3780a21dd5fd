"""W1: 200 items x 5 no-op stages, per stage, against the raw floor (and W1-full)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from bench.core import Bench, floor_run, log, med, open_store
from bench.report import Row

W1_TARGET_RATIO = 3.0
W1_FULL_TARGET_RATIO = 1.5


def noop(item: Any, ctx: Any) -> None:
    return None


def chain_workflow(name: str, n: int = 5, fn: Callable[..., Any] = noop) -> Any:
    from treadle_cli import Workflow

    b = Workflow.builder(name)
    prev: str | None = None
    for i in range(n):
        b.stage(f"s{i}", fn, needs=[prev] if prev else [])
        prev = f"s{i}"
    return b.build()


def w1_run(tmp: str, durability: str, items: int = 200, stages: int = 5) -> float:
    """Seconds per stage: ``items`` items x ``stages`` no-op stages, one advance each."""
    wf = chain_workflow("w1", stages)
    store = open_store(
        os.path.join(tmp, f"w1-{durability}-{random.getrandbits(32):x}.db"), durability
    )
    per_stage = advance_all(wf, store, items, stages)
    store.close()
    return per_stage


def advance_all(wf: Any, store: Any, items: int, stages: int) -> float:
    """Seconds per stage of one ``wf.advance`` for each of ``items`` new items."""
    t0 = time.perf_counter()
    for i in range(items):
        st = wf.advance(f"doc-{i}", store)
    el = time.perf_counter() - t0
    assert st.state.value == "completed", st
    return el / (items * stages)


def run_w1(b: Bench) -> None:
    n = b.runs()
    log(f"W1: {n} runs of 200 items x 5 no-op stages, interleaved with the raw floor")
    w1: list[float] = []
    floor_run(b.tmp, "NORMAL")  # warm-up: page cache, imports
    w1_run(b.tmp, "normal")
    for _ in range(n):
        b.floor_normal.append(floor_run(b.tmp, "NORMAL"))
        w1.append(w1_run(b.tmp, "normal"))
    f = med(b.floor_normal)
    b.rows.append(
        Row(
            "floor",
            "raw floor: sqlite3, 2 commits/transition (NORMAL)",
            "µs",
            [x * 1e6 for x in b.floor_normal],
            notes="UPDATE stage row + INSERT event row, x2 commits, WAL",
        )
    )
    b.rows.append(
        Row(
            "W1",
            "W1 engine overhead, per stage (200 items x 5 no-op)",
            "µs",
            [x * 1e6 for x in w1],
            floor=f * 1e6,
            floor_label="raw floor",
            target=f"≤ {W1_TARGET_RATIO:g}x floor",
            ok=med(w1) <= W1_TARGET_RATIO * f,
            notes="wall of 200 wf.advance() calls ÷ 1000 stage runs; includes "
            "registering each item and the returned status",
        )
    )


def run_w1_full(b: Bench) -> None:
    n = max(3, min(b.runs(), 5))
    log(f"W1 durability=full: {n} runs, interleaved with the FULL floor")
    w1: list[float] = []
    floor_run(b.tmp, "FULL")
    for _ in range(n):
        b.floor_full.append(floor_run(b.tmp, "FULL"))
        w1.append(w1_run(b.tmp, "full"))
    f = med(b.floor_full)
    b.rows.append(
        Row(
            "floor-full",
            "raw floor, synchronous=FULL",
            "µs",
            [x * 1e6 for x in b.floor_full],
        )
    )
    b.rows.append(
        Row(
            "W1-full",
            'W1 with durability="full", per stage',
            "µs",
            [x * 1e6 for x in w1],
            floor=f * 1e6,
            floor_label="FULL floor",
            target=f"≤ {W1_FULL_TARGET_RATIO:g}x FULL floor",
            ok=med(w1) <= W1_FULL_TARGET_RATIO * f,
        )
    )
