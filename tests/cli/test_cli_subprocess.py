"""The installed entry point, run as a real process: exit codes, live watch, start-up imports
and the demo script."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from clihelpers import REPO, lines_of, subprocess_env, treadle_exe

from treadle_cli import __version__

DEADLINE = 60.0  # seconds: only a guard against hanging, never an assertion about speed


def treadle(db: Path, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(treadle_exe()), "--db", str(db), *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        cwd=cwd,
    )


def test_version_from_both_entry_points() -> None:
    for argv in (
        [sys.executable, "-m", "treadle_cli", "--version"],
        [str(treadle_exe()), "--version"],
    ):
        r = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"treadle {__version__}\n"


def test_advance_then_approve_advance_round_trip(pl: Path, db: Path) -> None:
    r = treadle(db, "advance", pl / "chain.yaml", "doc-1", "--data", '{"title": "T"}')
    assert r.returncode == 0, r.stderr
    assert "doc-1 review awaiting_review" in r.stdout
    assert "treadle approve doc-1 review" in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "treadle_cli",
            "--db",
            str(db),
            "approve",
            "doc-1",
            "review",
            "--by",
            "carol",
            "--advance",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert lines_of(r.stdout)[:2] == ["doc-1 review approved", "doc-1 chain completed 100%"]
    st = json.loads(treadle(db, "status", "doc-1", "--json").stdout)
    assert st["state"] == "completed"
    assert st["stages"][1]["review"]["by"] == "carol"


@pytest.mark.sqlite_only  # the file is created; a URL in TREADLE_DB: test_cli_postgres.py
def test_treadle_db_env_var_is_the_default_database(pl: Path, db: Path) -> None:
    env = subprocess_env(TREADLE_DB=str(db))
    r = subprocess.run(
        [str(treadle_exe()), "advance", str(pl / "single.yaml"), "s-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=pl,
    )
    assert r.returncode == 0, r.stderr
    assert db.exists() and not (pl / "treadle.db").exists()


def test_exit_codes_propagate(pl: Path, db: Path, tmp_path: Path) -> None:
    assert treadle(db, "advance", pl / "boom.yaml", "b-1").returncode == 1
    treadle(db, "advance", pl / "chain.yaml", "doc-1")
    assert treadle(db, "watch", "doc-1", "--until-settled").returncode == 5
    r = treadle(db, "approve", "doc-1", "parse")
    assert r.returncode == 3 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    r = treadle(db, "status", "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = treadle(db, "reject", "doc-1", "review")
    assert r.returncode == 2 and "--reason" in r.stderr
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 20, encoding="utf-8")
    r = treadle(junk, "status")
    assert r.returncode == 4 and r.stderr.startswith("error: ")
    r = treadle(tmp_path / "missing.db", "approve", "doc-1", "review")
    assert r.returncode == 2 and not (tmp_path / "missing.db").exists()
    r = subprocess.run(
        [sys.executable, "-m", "treadle_cli", "--db", str(db), "status", "nope"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert r.returncode == 2


class Watcher:
    """A `treadle watch` child process whose stdout lines are collected by a thread."""

    def __init__(self, db: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(treadle_exe()), "--db", str(db), "watch", "--interval", "0.05", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            # A runner started in the background ignores SIGINT, and children inherit that;
            # Ctrl-C is what this test sends, so let the child receive it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def poll(self, timeout: float) -> bool:
        """Collect what arrived within ``timeout``; False if nothing did."""
        got = False
        try:
            while (line := self.queue.get(timeout=timeout)) is not None:
                self.lines.append(line.rstrip("\n"))
                got, timeout = True, 0.01
        except queue.Empty:
            return got
        raise AssertionError(f"watch ended early: {self.stop()}")

    def stop(self) -> tuple[int, str]:
        """Ctrl-C it; its exit code and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def test_watch_follows_events_written_by_other_processes(pl: Path, db: Path) -> None:
    # An existing database, so watch starts from the current end of its log.
    assert treadle(db, "advance", pl / "single.yaml", "seed").returncode == 0
    as_json, plain = Watcher(db, "--json"), Watcher(db)
    deadline = time.monotonic() + DEADLINE
    try:
        # Only events written once a watcher is ready reach it, so write small completed
        # items until both have shown one.
        n = 0
        while not (as_json.lines and plain.lines):
            assert time.monotonic() < deadline, "watch never reported an event"
            n += 1
            assert treadle(db, "advance", pl / "single.yaml", f"ping-{n}").returncode == 0
            as_json.poll(timeout=0.5)
            plain.poll(timeout=0.5)
        assert treadle(db, "advance", pl / "chain.yaml", "doc-1").returncode == 0
        assert treadle(db, "approve", "doc-1", "review", "--advance").returncode == 0
        for w in (as_json, plain):
            while not any("item_completed" in line and "doc-1" in line for line in w.lines):
                assert time.monotonic() < deadline, f"no item_completed for doc-1 in {w.lines}"
                w.poll(timeout=0.5)
    finally:
        (code, err), (plain_code, plain_err) = as_json.stop(), plain.stop()
    assert (code, plain_code) == (0, 0), err + plain_err
    assert "Traceback" not in err + plain_err

    events = [json.loads(line) for line in as_json.lines]
    ids = [e["id"] for e in events]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for e in events:
        assert set(e) >= {"id", "ts", "kind", "item", "stage", "subtask", "data"}
    doc = [e["kind"] for e in events if e["item"] == "doc-1"]
    assert doc[0] == "item_registered"
    assert "review_required" in doc and "review_approved" in doc
    assert doc[-1] == "item_completed"
    assert "seed" not in {e["item"] for e in events}  # from the end of the log, not the start

    # Piped without --json: one grep-able line per event, `id ts item kind stage...`.
    by_id = {e["id"]: e for e in events}
    for line in plain.lines:
        assert "\x1b[" not in line
        ev_id, _ts, item, kind, *_ = line.split()
        if int(ev_id) in by_id:
            assert (item, kind) == (by_id[int(ev_id)]["item"], by_id[int(ev_id)]["kind"])
    plain_doc = [line.split()[3] for line in plain.lines if line.split()[2] == "doc-1"]
    assert plain_doc == doc


FAST_START = """
import sys
from typer.testing import CliRunner
from treadle_cli.cli import app
r = CliRunner().invoke(app, {argv!r})
assert r.exit_code == {code}, (r.exit_code, r.stdout, r.stderr)
print('networkx' in sys.modules, 'yaml' in sys.modules, 'clistages' in sys.modules)
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["status", "doc-1"], 0),
        (["status", "doc-1", "--json"], 0),
        (["approve", "doc-1", "review", "--by", "x"], 0),
        (["reject", "doc-2", "review", "--reason", "no"], 0),
        (["status"], 0),
        (["reviews"], 0),
    ],
)
def test_light_commands_import_neither_networkx_nor_yaml(
    pl: Path, db: Path, args: list[str], code: int
) -> None:
    assert treadle(db, "advance", pl / "chain.yaml", "doc-1", "doc-2").returncode == 0
    src = FAST_START.format(argv=["--db", str(db), *args], code=code)
    r = subprocess.run(
        [sys.executable, "-c", src],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        cwd=pl.parent,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "False"]


@pytest.mark.demo
def test_make_demo(tmp_path: Path) -> None:
    """`make demo` (scripts/demo.sh) runs end to end and publishes the approved document."""
    env = subprocess_env()
    env.pop("TREADLE_DB", None)
    r = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (REPO / ".demo" / "out" / "onboarding.html").exists()
    assert "Traceback" not in r.stdout + r.stderr
    assert os.path.exists(REPO / ".demo" / "treadle.db")


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--all"],
        ["status", "--all", "--json"],
        ["status", "doc-1"],
        ["history", "doc-1"],
        ["reviews"],
    ],
)
def test_a_closed_stdout_ends_quietly(pl: Path, db: Path, args: list[str]) -> None:
    """`treadle status | head -1`: the reader went away; no "bug" message, no traceback."""
    assert treadle(db, "advance", pl / "chain.yaml", "doc-1").returncode == 0
    # The read end is closed long before the child has imported enough to write.
    proc = subprocess.Popen(
        [str(treadle_exe()), "--db", str(db), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
