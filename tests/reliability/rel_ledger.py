"""Reading the stages' ledger and checking it against the database's event log.

Every execution of stage code leaves a ``start`` line (with the newest event id at that
moment, its *snapshot*) and, unless the process died first, an ``end`` line. The claim
that let an execution run is committed before its code starts, so the snapshot orders
each execution against the log: an event with an id at or below the snapshot happened
before the execution began.

For each (item, stage, subtask) *key*, two consecutive executions are legitimate only if
the log shows, between their snapshots, a reset (``treadle retry``) or a scheduled retry
of that key. Any other repeat must follow an execution whose result the database never
recorded, run by a process that was killed: it is charged to that kill.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rel_support import query_db

Key = tuple[str, str, str | None]  # item, stage, subtask (None: the stage's own call)

#: Events that record the result of one execution of a key.
RESULT_KINDS = {
    "review_required",
    "stage_completed",
    "stage_failed",
    "stage_skipped",
    "fan_out",
    "subtask_completed",
    "subtask_failed",
    "stage_retrying",
}
COMPLETED_KINDS = {"stage_completed", "subtask_completed"}


@dataclass
class Execution:
    item: str
    stage: str
    subtask: str | None
    attempt: int
    proc: str  # RUN:PID of the process that ran it
    snapshot: int
    seq: int  # position of the start line in the ledger
    ended: bool = False

    @property
    def key(self) -> Key:
        return (self.item, self.stage, self.subtask)


@dataclass
class EventRow:
    id: int
    kind: str
    item: str | None
    stage: str | None
    subtask: str | None
    data: Any


def read_ledger(path: Path) -> list[Execution]:
    """Every execution in the ledger, in the order they started."""
    if not path.exists():
        return []
    out: list[Execution] = []
    open_runs: dict[tuple[str, str, str, str, str], list[Execution]] = defaultdict(list)
    for n, line in enumerate(path.read_text().splitlines()):
        parts = line.split(" ")
        word, rest = parts[0], parts[1:]
        if word == "start":
            item, stage, sub, attempt, pid, snap = rest  # pid: RUN:PID
            ex = Execution(
                item, stage, None if sub == "-" else sub, int(attempt), pid, int(snap), n
            )
            out.append(ex)
            open_runs[(item, stage, sub, attempt, pid)].append(ex)
        elif word == "end":
            runs = open_runs[tuple(rest)]  # type: ignore[index]
            assert runs, f"ledger line {n + 1}: an end without a start: {line!r}"
            runs.pop(0).ended = True
        else:
            raise AssertionError(f"ledger line {n + 1} is torn or unknown: {line!r}")
    return out


def read_events(db: Path | str) -> list[EventRow]:
    """The event log of a SQLite file or a PostgreSQL database (a URL)."""
    rows = query_db(db, "SELECT id, kind, item_id, stage, subtask, data FROM events ORDER BY id")
    return [
        EventRow(i, k, it, st, sub, json.loads(d) if d else None) for i, k, it, st, sub, d in rows
    ]


@dataclass
class Verdict:
    """What the ledger and the log say together."""

    executions: int = 0
    interrupted: int = 0  # started, never ended: the process died mid-stage
    repeats_explained: int = 0  # after `treadle retry` or a scheduled retry
    repeats_after_kill: int = 0  # re-runs of work whose result a killed process never recorded
    charged: Counter[str] = field(default_factory=Counter)  # killed pid -> re-runs it caused
    violations: list[str] = field(default_factory=list)

    @property
    def max_per_kill(self) -> int:
        return max(self.charged.values(), default=0)


def _explains(ev: EventRow, key: Key) -> bool:
    """Does this event make a new execution of ``key`` legitimate?"""
    item, stage, sub = key
    if ev.item != item or ev.stage != stage:
        return False
    if ev.kind == "stage_reset":
        listed = (ev.data or {}).get("subtasks")
        return sub in listed if listed else sub is None
    return ev.kind == "stage_retrying" and ev.subtask == sub


def _records(ev: EventRow, key: Key) -> bool:
    item, stage, sub = key
    return ev.kind in RESULT_KINDS and ev.item == item and ev.stage == stage and ev.subtask == sub


def check(
    executions: list[Execution], events: list[EventRow], killed: set[str], slots: int
) -> Verdict:
    """Check that nothing completed ran again and every re-run is paid for by a kill.

    ``slots``: how many executions one process can have running at once; a kill may
    interrupt at most that many, so it may cause at most that many re-runs.
    """
    v = Verdict(executions=len(executions))
    by_key: dict[Key, list[Execution]] = defaultdict(list)
    for ex in executions:
        by_key[ex.key].append(ex)
        if not ex.ended:
            v.interrupted += 1
            if ex.proc not in killed:
                v.violations.append(
                    f"{ex.key} attempt {ex.attempt} by live pid {ex.proc} started and never ended"
                )
    relevant: dict[Key, list[EventRow]] = defaultdict(list)
    for ev in events:
        if ev.item is None or ev.stage is None:
            continue
        keys = {(ev.item, ev.stage, ev.subtask), (ev.item, ev.stage, None)}
        if ev.kind == "stage_reset":
            keys.update((ev.item, ev.stage, sub) for sub in (ev.data or {}).get("subtasks") or ())
        for key in keys & by_key.keys():
            relevant[key].append(ev)
    for key, runs in by_key.items():
        runs.sort(key=lambda e: (e.snapshot, e.seq))
        evs = relevant[key]
        done = [ev.id for ev in evs if ev.kind in COMPLETED_KINDS and ev.subtask == key[2]]
        if done:
            late = [r for r in runs if r.snapshot >= min(done)]
            for r in late:
                v.violations.append(
                    f"{key} ran again (attempt {r.attempt}, pid {r.proc}) after the database "
                    f"recorded it completed (event {min(done)})"
                )
        for prev, nxt in zip(runs, runs[1:], strict=False):
            window = [ev for ev in evs if prev.snapshot < ev.id <= nxt.snapshot]
            if any(_explains(ev, key) for ev in window):
                v.repeats_explained += 1
                continue
            recorded = [ev for ev in window if _records(ev, key)]
            if recorded:
                v.violations.append(
                    f"{key} ran again (attempt {nxt.attempt}, pid {nxt.proc}) although the "
                    f"result of attempt {prev.attempt} was recorded (event {recorded[0].id} "
                    f"{recorded[0].kind})"
                )
            elif prev.proc not in killed:
                v.violations.append(
                    f"{key} ran again (attempt {nxt.attempt}, pid {nxt.proc}) after a run by "
                    f"pid {prev.proc}, which was never killed"
                )
            else:
                v.repeats_after_kill += 1
                v.charged[prev.proc] += 1
    for pid, n in v.charged.items():
        if n > slots:
            v.violations.append(
                f"the kill of pid {pid} caused {n} re-runs; "
                f"at most {slots} executions can run at once"
            )
    return v


def ran_to_end(executions: list[Execution]) -> set[Key]:
    return {ex.key for ex in executions if ex.ended}
