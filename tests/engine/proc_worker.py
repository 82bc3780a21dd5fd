"""A separate process that advances one item; the process tests start it with sys.executable.

    python proc_worker.py DB LEDGER ITEM MODE [READY GO]

MODE ``wide``: a -> (b, c, d, e) -> f, each stage appends ``<stage> <pid>`` to LEDGER and
sleeps a little; the process advances again and again until the item is complete, as a
user re-running ``treadle advance`` would, so the processes compete for every stage. MODE ``sleepy``: a -> b -> c where b appends ``b started <pid>`` and then
sleeps 30 s (the test kills it there); ``fast`` is the same chain with b quick. With READY
and GO the process appends its pid to READY, then waits for the file GO to exist, so
several processes start advancing together. Prints the item's status as JSON at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from treadle_cli import SqliteStateStore, StageContext, Workflow, WorkItem


def append(path: str, line: str) -> None:
    """One write(2) with O_APPEND: lines from several processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def build_workflow(mode: str, ledger: str) -> Workflow:
    def step(item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        if mode == "sleepy" and ctx.stage == "b":
            append(ledger, f"b started {os.getpid()}")
            time.sleep(30)
        elif mode in ("sleepy", "fast"):
            append(ledger, f"{ctx.stage} started {os.getpid()}")
        else:
            append(ledger, f"{ctx.stage} {os.getpid()}")
            time.sleep(0.1)
        return {"stage": ctx.stage, "pid": os.getpid(), "ups": sorted(ctx.outputs)}

    if mode == "wide":
        middle = ["b", "c", "d", "e"]
        builder = Workflow.builder("procs").stage("a", step)
        for name in middle:
            builder.stage(name, step, needs="a")
        return builder.stage("f", step, needs=middle).build()
    return (
        Workflow.builder("chain")
        .stage("a", step)
        .stage("b", step, needs="a")
        .stage("c", step, needs="b")
        .build()
    )


def main(argv: list[str]) -> int:
    db, ledger, item, mode, *gate = argv
    wf = build_workflow(mode, ledger)
    store = SqliteStateStore.open(db)
    if gate:
        ready, go = gate
        append(ready, str(os.getpid()))
        deadline = time.monotonic() + 60
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                print("never told to go", file=sys.stderr)
                return 3
            time.sleep(0.01)
    status = wf.advance(item, store, wait=0)
    deadline = time.monotonic() + 60
    while mode == "wide" and not status.is_complete() and time.monotonic() < deadline:
        time.sleep(0.005)
        status = wf.advance(item, store, wait=0)
    print(json.dumps(status.to_json()))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
