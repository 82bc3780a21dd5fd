"""tput: ``treadle advance --all --jobs 2`` over a 10 ms stage, in items per second."""

from __future__ import annotations

from pathlib import Path

from bench.core import PY, TREADLE, Bench, log, med, open_store, run_child
from bench.report import Row

#: the floor: what sleeping alone allows, 2 threads sleeping 10 ms per item
TPUT_FLOOR = r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(2) as pool:
    list(pool.map(lambda _: time.sleep(0.010), range(int(sys.argv[1]))))
"""


def run_tput(b: Bench) -> None:
    n = b.mode["tput"]
    runs = b.mode["tput_runs"]
    ideal = n * 0.010 / 2
    log(
        f"throughput: advance --all --jobs 2 over {n:,} items of a 10 ms stage "
        f"(ideal {ideal:.1f}s) x {runs}"
    )
    d = Path(b.tmp) / "tput"
    d.mkdir(exist_ok=True)
    (d / "sleepy.py").write_text("import time\n\n\ndef nap(item, ctx):\n    time.sleep(0.010)\n")
    pipe = d / "tput.yaml"
    pipe.write_text("pipeline: tput\nstages:\n  nap:\n    uses: sleepy:nap\n")
    from datetime import UTC, datetime

    from treadle_cli import Workflow

    xs: list[float] = []
    cpu: list[float] = []
    floor: list[float] = []
    for r in range(runs):
        # floor: a fresh interpreter whose 2 threads each sleep 10 ms per item
        fl = run_child([PY, "-c", TPUT_FLOOR, str(n)])
        floor.append(n / fl.wall)
        db = str(d / f"tput-{r}.db")
        wf = Workflow.from_yaml(pipe)
        p = wf.pipeline
        store = open_store(db)
        now = datetime.now(UTC)
        for i in range(n):  # the store's own atomic operation, as advance does it
            store.register_item(f"doc-{i:05d}", p.name, {}, p.path, p.hash, p.order, now)
        store.close()
        res = run_child(
            [TREADLE, "--db", db, "advance", str(pipe), "--all", "--jobs", "2", "--wait", "0"],
            cwd=str(d),
            rss=True,
        )
        cpu.append(res.cpu)
        if res.rc != 0:
            raise SystemExit(f"advance --all failed ({res.rc}): {res.stderr[-800:]}")
        store = open_store(db)
        done = store.count_items().get("completed", 0)
        store.close()
        if done != n:
            raise SystemExit(f"advance --all completed {done} of {n} items")
        xs.append(res.wall)
    rate = [n / x for x in xs]
    overhead_ms = (med(xs) * 2 / n - 0.010) * 1e3
    cpu_ms = med(cpu) / n * 1e3
    b.rows.append(
        Row(
            "tput",
            f"advance --all --jobs 2, {n:,} items x 10 ms stage",
            "items/s",
            rate,
            floor=med(floor),
            floor_label="2 threads sleeping 10 ms",
            target="(none given)",
            ok=None,
            notes=f"wall {med(xs):.2f}s; ideal {ideal:.1f}s = {2 / 0.010:.0f} items/s "
            f"({n / med(xs) / 200:.0%} of it); ≈ {overhead_ms:.2f} ms per item "
            f"per worker beyond the 10 ms sleep (incl. start-up); process CPU "
            f"{cpu_ms:.2f} ms per item (the GIL caps --jobs at ≈ "
            f"{1000 / cpu_ms:,.0f} items/s)",
            extra={"ideal_items_per_s": 200.0, "cpu_ms_per_item": cpu_ms},
        )
    )
