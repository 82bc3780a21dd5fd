"""W2: one stage fanning out into subtasks, per subtask; and its peak memory (W2-mem)."""

from __future__ import annotations

import json
import os
import random
import resource
import time
from pathlib import Path
from typing import Any

from bench.core import PY, RUN, Bench, floor_run, log, med, open_store, run_child
from bench.report import Row

W2_TARGET_RATIO = 3.0
FANOUT_MEM_TARGET_RATIO = 1.5


def _fan(item: Any, ctx: Any) -> Any:
    from treadle_cli import StageOutcome, SubTask

    if ctx.subtask is None:
        return StageOutcome.fan_out([SubTask(f"t{i}") for i in range(item.data["n"])])
    return None


def fanout_workflow(concurrency: int = 4) -> Any:
    from treadle_cli import Workflow

    return Workflow.builder("w2").stage("split", _fan, concurrency=concurrency).build()


def w2_run(tmp: str, items: int, subtasks: int, concurrency: int = 4) -> float:
    """Seconds per subtask: ``items`` items whose one stage fans out into ``subtasks``."""
    wf = fanout_workflow(concurrency)
    store = open_store(os.path.join(tmp, f"w2-{random.getrandbits(32):x}.db"))
    t0 = time.perf_counter()
    for i in range(items):
        st = wf.advance(f"doc-{i}", store, data={"n": subtasks})
    el = time.perf_counter() - t0
    assert st.state.value == "completed", st
    store.close()
    return el / (items * subtasks)


# ---------------------------------------------------------- fan-out memory (child)


def vm_hwm_kb() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the parent's, see
    run_child)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fanout_mem_child(path: str, n: int) -> None:
    """Child process: peak RSS before and after one item's fan-out into n subtasks."""
    wf = fanout_workflow()
    store = open_store(path)
    wf.advance("warm", store, data={"n": 2})  # imports and caches settle first
    base = vm_hwm_kb()
    t0 = time.perf_counter()
    st = wf.advance("doc-1", store, data={"n": n})
    el = time.perf_counter() - t0
    peak = vm_hwm_kb()
    print(
        json.dumps(
            {"n": n, "base_kb": base, "peak_kb": peak, "seconds": el, "state": st.state.value}
        )
    )


# ------------------------------------------------------------------------ the bench


def run_w2(b: Bench) -> None:
    n = max(3, b.runs() - 2)
    log(f"W2: fan-out, {n} runs each of 1 x 1000 and 100 x 10 subtasks")
    b.need_floor()
    a: list[float] = []
    c: list[float] = []
    fl: list[float] = []
    for _ in range(n):
        fl.append(floor_run(b.tmp, "NORMAL"))
        a.append(w2_run(b.tmp, 1, 1000))
        c.append(w2_run(b.tmp, 100, 10))
    b.floor_normal += fl
    f = med(b.floor_normal)
    for key, label, xs in (
        ("W2-1x1000", "W2 fan-out 1 item x 1000 subtasks, per subtask", a),
        ("W2-100x10", "W2 fan-out 100 items x 10 subtasks, per subtask", c),
    ):
        b.rows.append(
            Row(
                key,
                label,
                "µs",
                [x * 1e6 for x in xs],
                floor=f * 1e6,
                floor_label="raw floor",
                target=f"≤ {W2_TARGET_RATIO:g}x floor",
                ok=med(xs) <= W2_TARGET_RATIO * f,
                notes="a subtask is claim + finish = 2 transactions, like a stage; "
                "concurrency 4 (the default)",
            )
        )
    # memory: one fresh process per size
    lo, hi = b.mode["mem_sub"]
    res = {}
    for size in (lo, hi):
        path = os.path.join(b.tmp, f"w2mem-{size}.db")
        r = run_child([PY, str(RUN), "--_child", "fanout-mem", path, str(size)], capture=True)
        if r.rc != 0:
            raise SystemExit(f"fan-out memory child failed: {r.stderr}")
        res[size] = json.loads(r.stdout.decode().strip().splitlines()[-1])
        log(
            f"  fan-out of {size}: peak RSS {res[size]['peak_kb'] / 1024:.1f} MiB "
            f"(before {res[size]['base_kb'] / 1024:.1f} MiB), {res[size]['seconds']:.2f}s"
        )
    ratio = res[hi]["peak_kb"] / res[lo]["peak_kb"]
    growth = (res[hi]["peak_kb"] - res[hi]["base_kb"]) * 1024 / hi
    b.rows.append(
        Row(
            "W2-mem",
            f"W2 peak RSS, fan-out of {hi:,} vs {lo:,} subtasks",
            "MiB",
            [res[hi]["peak_kb"] / 1024],
            floor=res[lo]["peak_kb"] / 1024,
            floor_label=f"RSS at {lo:,}",
            target=f"≤ {FANOUT_MEM_TARGET_RATIO:g}x (flat)",
            ok=ratio <= FANOUT_MEM_TARGET_RATIO,
            notes=f"whole-process peak RSS; ≈ {growth:,.0f} bytes per subtask above "
            "the pre-fan-out peak",
            extra={"children": res},
        )
    )
