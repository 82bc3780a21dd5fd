"""W3: the human round trip (advance to a review gate, approve, advance), per item."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from bench.core import Bench, log, med, open_store
from bench.report import Row
from bench.w1 import noop

W3_TARGET_MS = 1.0


def review_workflow(name: str = "w3") -> Any:
    from treadle_cli import Workflow
    from treadle_cli.stages import Approval

    return (
        Workflow.builder(name)
        .stage("prepare", noop)
        .stage("review", Approval(), needs="prepare")
        .stage("publish", noop, needs="review")
        .build()
    )


def w3_run(tmp: str, items: int = 200) -> float:
    """Seconds per item: advance to the gate, approve, advance to the end."""
    wf = review_workflow()
    store = open_store(os.path.join(tmp, f"w3-{random.getrandbits(32):x}.db"))
    t0 = time.perf_counter()
    for i in range(items):
        st = wf.advance(f"doc-{i}", store)
    assert st.state.value == "awaiting_review", st
    for i in range(items):
        wf.approve_review(f"doc-{i}", "review", store, by="bench")
        st = wf.advance(f"doc-{i}", store)
    el = time.perf_counter() - t0
    assert st.state.value == "completed", st
    store.close()
    return el / items


def run_w3(b: Bench) -> None:
    n = max(3, b.runs() - 2)
    log(f"W3: human round trip, {n} runs of 200 items")
    f = b.need_floor()
    xs = [w3_run(b.tmp) for _ in range(n)]
    # register 1 + prepare 2 + review 2 + approve 1 + publish 2 = 8 commits = 4 floors
    b.rows.append(
        Row(
            "W3",
            "W3 review round trip, per item",
            "ms",
            [x * 1e3 for x in xs],
            floor=4 * f * 1e3,
            floor_label="8 raw commits",
            target=f"≤ {W3_TARGET_MS:g} ms",
            ok=med(xs) * 1e3 <= W3_TARGET_MS,
            notes="prepare -> review (Approval gate) -> publish; advance, approve_review, advance",
        )
    )
