"""Kill test: SIGKILL `treadle advance` at random moments while a human decides.

One process after another runs ``treadle advance PIPELINE --items F --all --jobs 2`` over
rounds of items going through prepare -> fan (4 subtasks, 3 at a time) -> gate (a human
review) -> publish, and most are killed with SIGKILL after a random delay: while starting
up, registering items, running stage code or committing. Meanwhile rel_approver.py
approves, or rejects then retries, every review. After every kill the database must pass
``PRAGMA integrity_check`` (SQLite) and show no half-written transition (its rows agree
with each other and with the event log: rel_support.consistency); at the end every item is
completed, every decision whose command exited 0 is in the ``decisions`` table, nothing the
database recorded as done ran again, and each kill caused at most one re-run per execution
slot (see rel_ledger.py).

It runs on a SQLite file (``synchronous`` normal, and ``--durability full``) and on a
PostgreSQL database (``pg``: the throwaway server of tests/conftest.py). There
``--durability full`` only asks the server for ``synchronous_commit = on``, which is about
the server crashing, not a client being killed, so it is not run twice.

CI: 50 kills on each backend, and 10 under ``--durability full``. ``make stress``: 1,000
and 100. The seed is printed; ``RELIABILITY_SEED=N`` replays the same delays (the
processes' timing still varies).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from pathlib import Path

import pytest
from rel_ledger import check, ran_to_end, read_events, read_ledger
from rel_support import FAN_CONCURRENCY, HERE, KILL_PIPELINE, World, sized, wait_for

pytestmark = [pytest.mark.stress, pytest.mark.timeout(sized(600, 4 * 3600))]

KILLS = int(os.environ.get("RELIABILITY_KILLS", sized(50, 1000)))
FULL_KILLS = int(os.environ.get("RELIABILITY_FULL_KILLS", sized(10, 100)))
ITEMS_PER_ROUND = sized(30, 60)
JOBS = 2
SLOTS = JOBS * FAN_CONCURRENCY
STAGE_KEYS = [
    ("prepare", None),
    ("fan", None),
    *[("fan", s) for s in "abcd"],
    ("gate", None),
    ("publish", None),
]


def _kill_plan(rng: random.Random, ready: float) -> tuple[str, float]:
    """(phase, delay). A quarter of the kills land while the process starts (imports, opens
    the database, registers items): ``delay`` after it was started, within ``ready``. The
    rest land while stages run and commit: ``delay`` (up to 1.2 s) after its first stage
    started, as the ledger shows — timed from the work itself, so a slower start (a loaded
    machine, psycopg's import) does not turn them into kills of a process still starting. A
    process that starts no stage while one would have started (1.2 s past the slowest of
    the last ten first stages) is killed then: it has nothing to run, or has not found it."""
    if rng.random() < 0.25:
        return "start-up", rng.uniform(0.0, ready)
    return "stages", rng.uniform(0.0, 1.2)


def _first_stage(
    ledger: Path, offset: int, name: str, proc: subprocess.Popen[bytes], limit: float
) -> float | None:
    """Seconds until run ``name`` (RUN:PID) started its first stage; None when it ended, or
    started none within ``limit`` seconds."""
    needle = f" {name} ".encode()  # in its start lines only: an end line ends with the name
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < limit:
        try:
            with ledger.open("rb") as fh:
                fh.seek(offset)
                if needle in fh.read():
                    return time.monotonic() - t0
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    return None


def _startup(world: World) -> float:
    """Seconds ``treadle status`` takes on this database (the quickest of three): importing
    psycopg and connecting make it ~0.3 s longer on PostgreSQL, a loaded machine on both."""
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        r = world.run("status")
        times.append(time.monotonic() - t0)
        assert r.returncode == 0, r.stderr
    return min(times)


def _unfinished(world: World) -> int:
    # A kill during the very first advance can leave the database before its schema commits.
    if not world.has_schema():
        return -1
    return world.query("SELECT count(*) FROM items WHERE state != 'completed'")[0][0]


@pytest.mark.parametrize(
    ("durability", "world"),
    [
        pytest.param("normal", "sqlite", id="normal-sqlite"),
        pytest.param("full", "sqlite", id="full-sqlite"),
        pytest.param("normal", "postgres", id="normal-postgres", marks=pytest.mark.pg),
    ],
    indirect=["world"],
)
def test_sigkill_advance_loses_nothing_and_repeats_only_interrupted_work(
    world: World, figures: dict, durability: str
) -> None:
    kills_wanted = KILLS if durability == "normal" else FULL_KILLS
    world.env["TREADLE_DURABILITY"] = durability
    seed = int(os.environ.get("RELIABILITY_SEED", random.randrange(2**32)))
    print(f"kill test seed ({world.backend}): {seed} (RELIABILITY_SEED={seed} replays the delays)")
    rng = random.Random(seed)
    ready = max(0.4, _startup(world))
    print(f"kills: 0-{ready:.2f} s after the start, or 0-1.2 s after the first stage")
    pipeline = world.pipeline("kill", KILL_PIPELINE)
    decisions, commands, stop = (
        world.root / n for n in ("decisions.jsonl", "commands.jsonl", "stop")
    )
    advance_err = (world.root / "advance.stderr").open("a")
    approver = subprocess.Popen(
        [sys.executable, str(HERE / "rel_approver.py"), str(decisions), str(commands), str(stop)],
        env=world.env,
        cwd=world.root,
        stdout=subprocess.DEVNULL,
        stderr=(world.root / "approver.stderr").open("w"),
    )
    started = time.monotonic()
    killed: set[str] = set()
    killed_in: Counter[str] = Counter()  # phase -> kills
    first_stages: deque[float] = deque(maxlen=10)  # seconds from start to the first stage
    round_started_work = False  # has a run of this round's items started a stage yet?
    slowest_first = 0.0
    exits: Counter[int] = Counter()
    rounds, runs, integrity_checks = 0, 0, 0
    items_file = world.root / "items.jsonl"

    def advance() -> tuple[subprocess.Popen[bytes], str]:
        nonlocal runs
        runs += 1
        env = {**world.env, "RELIABILITY_RUN": str(runs)}
        proc = subprocess.Popen(
            world.cmd(
                "advance",
                str(pipeline),
                "--items",
                str(items_file),
                "--all",
                "--jobs",
                str(JOBS),
                "--wait",
                "0",
            ),
            env=env,
            cwd=world.root,
            stdout=subprocess.DEVNULL,
            stderr=advance_err,
        )
        return proc, f"{runs}:{proc.pid}"

    def check_integrity(after: str) -> None:
        nonlocal integrity_checks
        integrity_checks += 1
        result = world.integrity()
        assert result == "ok", f"seed {seed}: integrity_check after {after}: {result}"

    try:
        while len(killed) < kills_wanted:
            registered = (
                world.query("SELECT count(*) FROM items")[0][0] if world.has_schema() else 0
            )
            if registered == rounds * ITEMS_PER_ROUND and _unfinished(world) <= 0:
                rounds += 1  # every item so far is done: a new round of items
                round_started_work = False
                items_file.write_text(
                    "".join(
                        json.dumps({"id": f"r{rounds}-{i:04d}", "data": {"round": rounds}}) + "\n"
                        for i in range(1, ITEMS_PER_ROUND + 1)
                    )
                )
            offset = world.ledger.stat().st_size if world.ledger.exists() else 0
            proc, name = advance()
            phase, delay = _kill_plan(rng, ready)
            if phase == "stages":
                # New items have work for sure: wait for it, and learn how long it takes.
                known = round_started_work and first_stages
                limit = max(first_stages) + 1.2 if known else 300.0
                first = _first_stage(world.ledger, offset, name, proc, limit)
                if first is None:
                    phase, delay = "idle", 0.0
                else:
                    first_stages.append(first)
                    slowest_first = max(slowest_first, first)
                    round_started_work = True
            try:
                exits[proc.wait(timeout=delay)] += 1
                time.sleep(0.05)  # nothing left to run until the approver acts
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                if proc.returncode == -signal.SIGKILL:
                    killed.add(name)
                    killed_in[phase] += 1
                else:  # it ended on its own just before the signal
                    exits[proc.returncode] += 1
            check_integrity(f"run {name} (kill {len(killed)})")

        # Let the work finish: no more kills, the approver still deciding.
        def settled() -> bool:
            proc, _ = advance()
            exits[proc.wait(timeout=600)] += 1
            return _unfinished(world) == 0

        assert wait_for(settled, timeout=300, interval=0.3), (
            f"seed {seed}: items left unfinished: "
            f"{world.query('SELECT id, state, waiting_on FROM items WHERE state != ?', ('completed',))}"
        )
    finally:
        stop.touch()
        try:
            approver.wait(timeout=120)
        except subprocess.TimeoutExpired:
            approver.kill()
            approver.wait()
        advance_err.close()
    check_integrity("the run")
    duration = time.monotonic() - started

    # Normal exits: 0, or 1 while an item sat rejected between the approver's reject and retry.
    assert set(exits) <= {0, 1}, f"seed {seed}: advance exit codes {dict(exits)}"
    err = (world.root / "advance.stderr").read_text()
    for bad in ("Traceback", "error:", "locked"):
        assert bad not in err, f"seed {seed}: {bad!r} in advance's stderr:\n{err[-3000:]}"

    # The human's commands all succeeded, and none of their decisions was lost.
    ran = [json.loads(line) for line in commands.read_text().splitlines()]
    failed = [c for c in ran if c["rc"] != 0]
    assert not failed, f"seed {seed}: approver commands failed: {failed[:5]}"
    recorded = [json.loads(line) for line in decisions.read_text().splitlines()]
    stored = world.query(
        "SELECT item_id, stage, decision, coalesce(reason, comment) FROM decisions ORDER BY id"
    )
    assert sorted(map(tuple, (d.values() for d in recorded))) == sorted(map(tuple, stored)), (
        f"seed {seed}: decisions that exited 0 differ from the decisions table"
    )
    items = [r[0] for r in world.query("SELECT id FROM items ORDER BY id")]
    for item in items:
        kinds = [d for i, _, d, _ in stored if i == item]
        wanted = ["rejected", "approved"] if int(item.rsplit("-", 1)[1]) % 5 == 0 else ["approved"]
        assert kinds == wanted, f"seed {seed}: {item} decisions {kinds}, expected {wanted}"

    # Nothing done ran again; each kill cost at most one re-run per running slot.
    executions = read_ledger(world.ledger)
    verdict = check(executions, read_events(world.target), killed, SLOTS)
    assert not verdict.violations, f"seed {seed}:\n" + "\n".join(verdict.violations[:20])
    done = ran_to_end(executions)
    missing = [(i, s, t) for i in items for s, t in STAGE_KEYS if (i, s, t) not in done]
    assert not missing, f"seed {seed}: never ran to the end: {missing[:10]}"
    assert len(items) >= 30 and _unfinished(world) == 0
    # Not a run of idle kills: some landed while stage code ran.
    assert verdict.interrupted > 0, f"seed {seed}: no kill interrupted a stage"

    figures.update(
        seed=seed,
        kills=len(killed),
        runs_of_advance=runs,
        natural_exits=dict(exits),
        rounds=rounds,
        items=len(items),
        integrity_checks=integrity_checks,
        stage_executions=verdict.executions,
        kills_at_start_up=f"{killed_in['start-up']} (within {ready:.2f} s)",
        kills_while_stages_ran=killed_in["stages"],
        kills_with_no_stage_started=killed_in["idle"],
        slowest_first_stage_s=round(slowest_first, 2),
        interrupted_mid_stage=verdict.interrupted,
        reruns_after_kills=verdict.repeats_after_kill,
        max_reruns_per_kill=f"{verdict.max_per_kill} (limit {SLOTS})",
        reruns_after_retry=verdict.repeats_explained,
        decisions_exited_0=len(recorded),
        decisions_lost=0,
        approver_commands=len(ran),
        durability=durability,
        backend=world.backend,
        seconds=round(duration, 1),
    )
