"""Real processes on one SQLite file: concurrent advances, and a process killed mid-stage."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from treadle_cli import SqliteStateStore, StageStatus

from .proc_worker import build_workflow

WORKER = str(Path(__file__).with_name("proc_worker.py"))
#: Generous bounds on *waiting* only (never asserted as durations): a loaded 2-core CI
#: machine may take seconds to start Python.
STARTUP_LIMIT = 60.0
RUN_LIMIT = 120.0

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals")


def spawn(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until(predicate, what: str, procs: list[subprocess.Popen[str]]) -> None:
    """Poll ``predicate``; fail early, with their stderr, if a process died instead."""
    deadline = time.monotonic() + STARTUP_LIMIT
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                _, err = p.communicate()
                pytest.fail(f"worker {p.pid} exited {p.returncode} before {what}:\n{err}")
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
                p.wait()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen[str]) -> dict:
    try:
        out, err = proc.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    assert proc.returncode == 0, err
    return json.loads(out)


def test_three_processes_advancing_one_item_run_each_stage_once(tmp_path):
    db, ledger = tmp_path / "treadle.db", tmp_path / "ledger.txt"
    ready, go = tmp_path / "ready.txt", tmp_path / "go"
    SqliteStateStore.open(db).close()  # the schema exists; the item is registered by a race

    procs = [spawn(db, ledger, "doc-1", "wide", ready, go, cwd=tmp_path) for _ in range(3)]
    wait_until(lambda: len(lines(ready)) == 3, "all three workers are ready", procs)
    go.touch()
    results = [finish(p) for p in procs]

    ran = Counter(line.split()[0] for line in lines(ledger))
    assert ran == dict.fromkeys("abcdef", 1)
    store = SqliteStateStore.open(db)
    try:
        status = build_workflow("wide", str(ledger)).status("doc-1", store)
        assert status.is_complete()
        assert [s.attempts for s in status.stages] == [1] * 6
        started = Counter(e.stage for e in store.events() if e.kind.value == "stage_started")
        assert started == dict.fromkeys("abcdef", 1)
        assert [e.kind.value for e in store.events()].count("item_registered") == 1
        # f saw every branch's output, whichever processes ran them.
        assert status.stage("f").record.output["ups"] == list("abcde")
    finally:
        store.close()
    assert [r["state"] for r in results] == ["completed"] * 3


@pytest.mark.parametrize("takeover", ["in-process", "subprocess"])
def test_a_stage_left_running_by_a_killed_process_is_taken_over_at_once(tmp_path, takeover):
    db, ledger = tmp_path / "treadle.db", tmp_path / "ledger.txt"
    victim = spawn(db, ledger, "doc-1", "sleepy", cwd=tmp_path)
    wait_until(lambda: any(s.startswith("b started") for s in lines(ledger)), "b started", [victim])
    victim.kill()  # SIGKILL: no cleanup, no finally blocks
    victim.wait()
    victim.stdout.close()
    victim.stderr.close()

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    store = SqliteStateStore.open(db)
    try:
        left = {s.name: s for s in store.get_stages("doc-1")}
        assert [left[n].status for n in "abc"] == [
            StageStatus.COMPLETED,
            StageStatus.RUNNING,
            StageStatus.PENDING,
        ]
        assert left["b"].owner_pid == victim.pid

        if takeover == "in-process":
            wf = build_workflow("fast", str(ledger))
            status = wf.advance("doc-1", store, wait=0).to_json()
        else:
            status = finish(spawn(db, ledger, "doc-1", "fast", cwd=tmp_path))

        assert status["state"] == "completed"
        assert [s["attempts"] for s in status["stages"]] == [1, 2, 1]
        started = [e for e in store.events() if e.kind.value == "stage_started"]
        assert [e.stage for e in started] == ["a", "b", "b", "c"]
        assert started[2].data["previous_owner"] == f"{socket.gethostname()}:{victim.pid}"
        assert started[2].data["attempt"] == 2
    finally:
        store.close()
    ran = Counter(" ".join(line.split()[:2]) for line in lines(ledger))
    assert ran == {"a started": 1, "b started": 2, "c started": 1}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_claims_under_its_own_pid():
    from treadle_cli.engine import current_owner

    parent = current_owner()  # cached in the parent before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, without pytest's cleanup
        try:
            os.write(write_end, str(current_owner().pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, code = os.waitpid(pid, 0)
    child_owner_pid = int(os.read(read_end, 32).decode())
    os.close(read_end)

    assert code == 0
    assert parent.pid == os.getpid()
    assert child_owner_pid == pid
