"""watch: latency from a commit in this process to the line ``treadle watch --json`` prints."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from typing import Any

from bench.cli import gate_db
from bench.core import TREADLE, Bench, child_env, log, med, open_store
from bench.report import Row
from bench.w3 import review_workflow

WATCH_TARGET_S = 0.5
WATCH_WARMUP = 10


def run_watch(b: Bench) -> None:
    rounds = b.mode["watch"]
    log(f"watch latency: {rounds} events committed by this process")
    db = gate_db(b.tmp, "watch.db", rounds, extra=[f"warm-{w}" for w in range(WATCH_WARMUP)])
    wf = review_workflow("cli")
    store = open_store(db)
    lines: list[tuple[float, dict[str, Any]]] = []
    cond = threading.Condition()
    p = subprocess.Popen(
        [TREADLE, "--db", db, "watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=child_env(),
    )

    def reader() -> None:
        assert p.stdout is not None
        for raw in p.stdout:
            t = time.perf_counter()
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            with cond:
                lines.append((t, ev))
                cond.notify_all()

    th = threading.Thread(target=reader, daemon=True)
    th.start()

    def wait_for(item: str, after: float, timeout: float = 10.0) -> float | None:
        deadline = time.perf_counter() + timeout
        with cond:
            while True:
                for t, ev in lines:
                    if (
                        ev.get("item") == item
                        and ev.get("kind") == "review_approved"
                        and t >= after - 1.0
                    ):
                        return t
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                cond.wait(left)

    lat: list[float] = []
    try:
        # readiness: watch starts at the end of the log, so an event committed before
        # it read its cursor is never shown; commit warm-up events until one appears.
        t_spawn = time.perf_counter()
        for w in range(WATCH_WARMUP):
            t_start = time.perf_counter()
            wf.approve_review(f"warm-{w}", "review", store, by="bench")
            if (seen := wait_for(f"warm-{w}", t_start, timeout=2.0)) is not None:
                break
        else:
            raise SystemExit(
                f"watch --json printed nothing in {WATCH_WARMUP * 2} s: "
                f"{p.stderr.read1(2000) if p.poll() is not None else ''}"
            )
        b.info["watch_first_event_after_spawn_s"] = seen - t_spawn
        rng = random.Random(7)
        for i in range(rounds):
            time.sleep(rng.uniform(0.05, 0.45))  # sample every phase of the poll
            wf.approve_review(f"doc-{i}", "review", store, by="bench")
            t_commit = time.perf_counter()
            t = wait_for(f"doc-{i}", t_commit)
            lat.append(float("inf") if t is None else t - t_commit)
    finally:
        p.send_signal(2)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        store.close()
    b.rows.append(
        Row(
            "watch",
            "watch --json latency (commit -> line)",
            "s",
            lat,
            target=f"≤ {WATCH_TARGET_S:g} s",
            ok=med(lat) <= WATCH_TARGET_S,
            notes=f"max {max(lat):.3f}s; Ctrl-C exit code {p.returncode}",
        )
    )
