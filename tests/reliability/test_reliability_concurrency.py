"""Concurrency test: 8 processes at once on one database for a bounded time.

Three advancers (``advance --all --jobs 3``, each registering items as it goes), an
approver, a rejecter, a retrier, a reader (status, history, reviews) and ``watch --json``
share one database — a SQLite file, and (``pg``) a PostgreSQL database: CI 15 s, ``make
stress`` 5 minutes, then new items stop and the work settles. Every command's exit code
and stderr is logged (rel_workers.py).

Checked: no stage or subtask ran twice except after a `treadle retry` (ledger against
log); no "database is locked" (nor any other error) reached a user; every item ends in
the state its decisions imply, with exactly those decisions; `watch` printed every event,
in order; the file passes ``PRAGMA integrity_check`` (SQLite) and the rows agree with
each other and with the log (rel_support.consistency).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from rel_ledger import check, read_events, read_ledger
from rel_support import BACKENDS, HERE, KILL_PIPELINE, World, sized, wait_for
from rel_workers import policy

from treadle_cli.store import open_store

pytestmark = [pytest.mark.stress, pytest.mark.timeout(sized(600, 3600))]

SECONDS = float(os.environ.get("RELIABILITY_SECONDS", sized(15, 300)))
ADVANCERS = 3
ROLES = ["approve", "reject", "retry", "status"]
EXPECTED_RC = {"advance": {0, 1}, "approve": {0}, "reject": {0}, "retry": {0}, "status": {0}}
PIPELINE = KILL_PIPELINE.replace("pipeline: reliability", "pipeline: concurrency")


def _has_open(pid: int, path: Path) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd_dir / fd) == str(path) for fd in os.listdir(fd_dir))
    except OSError:
        return False


#: What can happen to an item: rel_workers.policy, and subtask b failing its first attempt.
FATES = {"approve", "reject", "reject_then_approve", "fail_once"}


def _fates(world: World) -> set[str]:
    ids = [i for (i,) in world.query("SELECT id FROM items")]
    return {policy(i) for i in ids} | {
        "fail_once" for i in ids if int(i.rsplit("-", 1)[1]) % 4 == 1
    }


def _watching(world: World, pid: int) -> bool:
    """Has watch opened the database (SQLite) or asked it for the newest event (PostgreSQL:
    nothing but watch is connected yet, and its pool keeps the connection)?"""
    if world.url is None:
        return _has_open(pid, world.db)
    rows = world.query(
        "SELECT query FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'treadle'"
    )
    return any("events" in (q or "") for (q,) in rows)


@pytest.mark.parametrize("world", BACKENDS, indirect=True)
def test_eight_processes_at_once_lose_nothing_and_never_run_twice(
    world: World, figures: dict
) -> None:
    pipeline = world.pipeline("concurrency", PIPELINE)
    open_store(world.target).close()  # an empty database: watch follows it from event 1
    env = {**world.env, "RELIABILITY_FAIL_ONCE": "1", "RELIABILITY_SLEEP": "0.5"}
    log, no_new, stop = (world.root / n for n in ("commands.jsonl", "no-new", "stop"))
    watch_out = (world.root / "watch.jsonl").open("w")
    watch_err = (world.root / "watch.stderr").open("w")
    watch = subprocess.Popen(
        world.cmd("watch", "--json", "--interval", "0.1"),
        env=env,
        cwd=world.root,
        stdout=watch_out,
        stderr=watch_err,
        # A runner started in the background ignores SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # watch starts from the end of the log: let it open the database before anything happens.
    assert wait_for(lambda: _watching(world, watch.pid), timeout=30, interval=0.05)
    time.sleep(0.5)
    errs = (world.root / "workers.stderr").open("w")
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "rel_workers.py"),
                role,
                str(pipeline),
                str(log),
                str(no_new),
                str(stop),
                *args,
            ],
            env=env,
            cwd=world.root,
            stdout=subprocess.DEVNULL,
            stderr=errs,
        )
        for role, *args in [
            # Advancer n numbers its items n, n + 3, ...: the first few have every fate.
            *[("advance", f"c{n}", str(n), str(ADVANCERS)) for n in range(1, ADVANCERS + 1)],
            *[(r, r) for r in ROLES],
        ]
    ]
    assert len(workers) + 1 == 8  # the workers and watch
    started = time.monotonic()
    try:
        time.sleep(SECONDS)
        # Slower processes (PostgreSQL's start-up, a loaded machine) register fewer items in
        # that time: go on until every fate has an item, so every path is exercised.
        covered = wait_for(lambda: _fates(world) == FATES, timeout=4 * SECONDS, interval=0.5)
        new_items_for = time.monotonic() - started
        no_new.touch()

        def settled() -> bool:
            rows = world.query("SELECT id, state FROM items")
            return bool(rows) and all(
                state == ("rejected" if policy(item) == "reject" else "completed")
                for item, state in rows
            )

        ok = wait_for(settled, timeout=sized(180, 900), interval=0.5)
        busy = time.monotonic() - started
    finally:
        stop.touch()
        for w in workers:
            try:
                w.wait(timeout=300)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        errs.close()
    assert covered, f"after {new_items_for:.0f} s, items only for {_fates(world)}"
    assert ok, "items did not settle: " + repr(
        world.query(
            "SELECT id, state, waiting_on FROM items WHERE state NOT IN ('completed', 'rejected')"
        )
    )
    events = read_events(world.target)
    # watch polls every 0.1 s: give it time to print the last events, then Ctrl-C.
    wait_for(lambda: _last_line_id(world.root / "watch.jsonl") == events[-1].id, timeout=30)
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=30) == 0
    watch_out.close()
    watch_err.close()
    integrity = world.integrity()
    assert integrity == "ok", integrity

    # No error of any kind reached a user, "database is locked" least of all.
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    bad = [
        c
        for c in ran
        if c["rc"] not in EXPECTED_RC[c["role"]]
        or any(w in c["stderr"] for w in ("locked", "Traceback", "error:"))
    ]
    assert not bad, f"{len(bad)} commands failed, e.g. {bad[:3]}"
    assert (world.root / "workers.stderr").read_text() == ""
    assert (world.root / "watch.stderr").read_text() == ""

    # watch printed every event once, in log order, as the database holds it.
    seen = [json.loads(line) for line in (world.root / "watch.jsonl").read_text().splitlines()]
    assert [e["id"] for e in seen] == [e.id for e in events]
    assert [(e["kind"], e["item"], e["stage"], e["subtask"]) for e in seen] == [
        (e.kind, e.item, e.stage, e.subtask) for e in events
    ]

    # Every item ended as its decisions imply, with exactly those decisions.
    items = dict(world.query("SELECT id, state FROM items"))
    decided: dict[str, list[str]] = {i: [] for i in items}
    for item, decision in world.query("SELECT item_id, decision FROM decisions ORDER BY id"):
        decided[item].append(decision)
    wanted = {
        "approve": ["approved"],
        "reject": ["rejected"],
        "reject_then_approve": ["rejected", "approved"],
    }
    for item, state in items.items():
        assert decided[item] == wanted[policy(item)], (item, decided[item])
        assert state == ("rejected" if policy(item) == "reject" else "completed"), (item, state)

    # 0 double executions: every repeat is a `treadle retry` of what failed or was rejected.
    executions = read_ledger(world.ledger)
    verdict = check(executions, events, killed=set(), slots=0)
    assert not verdict.violations, "\n".join(verdict.violations[:20])
    assert verdict.interrupted == 0
    retried_subtasks = sum(1 for e in events if e.kind == "stage_reset" and e.stage == "fan")
    assert retried_subtasks == sum(1 for i in items if int(i.rsplit("-", 1)[1]) % 4 == 1)

    by_role = Counter(c["role"] for c in ran)
    figures.update(
        backend=world.backend,
        processes=len(workers) + 1,
        seconds_of_new_items=round(new_items_for, 1),
        seconds_until_settled=round(busy, 1),
        items=len(items),
        final_states=dict(Counter(items.values())),
        commands=len(ran),
        commands_by_role=dict(by_role),
        stage_executions=len(executions),
        reruns_after_retry=verdict.repeats_explained,
        double_executions=0,
        events_watched=len(seen),
        locked_errors=0,
        slowest_command_s=max(c["seconds"] for c in ran),
    )


def _last_line_id(path: Path) -> int | None:
    lines = path.read_text().splitlines()
    try:
        return json.loads(lines[-1])["id"] if lines else None
    except (ValueError, KeyError):
        return None
