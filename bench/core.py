"""Shared measuring: paths, modes, the run's context, child processes and the raw floor."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pty
import random
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import Row

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: the entry point; child processes (``--_child``) are started through it
RUN = HERE / "run.py"
PY = sys.executable
BIN = Path(PY).parent
TREADLE = str(BIN / "treadle") if (BIN / "treadle").exists() else shutil.which("treadle")

MODES: dict[str, dict[str, Any]] = {
    #          W1 etc. runs, CLI runs, items in the big DB (and the small one for memory),
    #          fan-out memory sizes, watch rounds, throughput items and runs
    "quick": dict(
        runs=3,
        cli_runs=7,
        big=2_000,
        small=200,
        mem_sub=(500, 5_000),
        watch=10,
        tput=200,
        tput_runs=1,
        big_runs=3,
    ),
    "default": dict(
        runs=7,
        cli_runs=15,
        big=20_000,
        small=2_000,
        mem_sub=(1_000, 10_000),
        watch=20,
        tput=1_000,
        tput_runs=3,
        big_runs=5,
    ),
    "full": dict(
        runs=9,
        cli_runs=21,
        big=100_000,
        small=10_000,
        mem_sub=(1_000, 10_000),
        watch=30,
        tput=10_000,
        tput_runs=1,
        big_runs=5,
    ),
}

LOG_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - LOG_T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ------------------------------------------------------------------- the run's context


@dataclass
class Bench:
    """What the workloads of one invocation share: options, temp dir, rows and floors."""

    args: argparse.Namespace
    tmp: str
    rows: list[Row] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    floor_normal: list[float] = field(default_factory=list)
    floor_full: list[float] = field(default_factory=list)

    @property
    def mode(self) -> dict[str, Any]:
        return MODES[self.args.mode]

    def runs(self, key: str = "runs") -> int:
        return self.args.runs or self.mode[key]

    def need_floor(self) -> float:
        """The NORMAL floor's median, measured now if W1 has not run."""
        if not self.floor_normal:
            floor_run(self.tmp, "NORMAL")
            self.floor_normal = [floor_run(self.tmp, "NORMAL") for _ in range(self.runs())]
            self.rows.append(
                Row(
                    "floor",
                    "raw floor: sqlite3, 2 commits/transition (NORMAL)",
                    "µs",
                    [x * 1e6 for x in self.floor_normal],
                )
            )
        return med(self.floor_normal)


# ------------------------------------------------------------------- child processes


#: Bytecode cache for child processes (set in main): an installed package has .pyc files,
#: so start-up is measured with them, even where PYTHONDONTWRITEBYTECODE is set. The
#: cache lives in the run's temp dir, so nothing is written into the source tree.
PYCACHE: str | None = None


def child_env(bytecode: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    for k in ("NO_COLOR", "FORCE_COLOR", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE"):
        env.pop(k, None)
    if bytecode and PYCACHE:
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    elif not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("USER", "bench")
    return env


@dataclass
class ChildRun:
    wall: float
    rc: int
    maxrss_kb: int
    stderr: str
    stdout: bytes = b""
    cpu: float = 0.0  # user + system seconds (with rss=True)


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
RSS_WRAPPER = r"""
import os, resource, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(
    cmd: list[str],
    *,
    cwd: str | None = None,
    stdout_path: str | None = None,
    capture: bool = False,
    env: dict[str, str] | None = None,
    rss: bool = False,
) -> ChildRun:
    """Run ``cmd`` to completion: wall time, exit code and, with ``rss``, its peak RSS.

    The peak RSS comes through a small wrapper (``/usr/bin/time -f %M``): a child spawned
    straight from this (big) process would report this process's RSS as its floor, since
    Linux carries the exec'ing mm's high-water mark into ``ru_maxrss``.
    """
    rss_file = None
    if rss:
        rss_file = tempfile.NamedTemporaryFile(delete=False).name
        cmd = (
            [TIME, "-f", "%M %U %S", "-o", rss_file, *cmd]
            if TIME
            else [PY, "-c", RSS_WRAPPER, rss_file, *cmd]
        )
    with tempfile.TemporaryFile() as err, contextlib.ExitStack() as stack:
        if capture:
            out: Any = tempfile.TemporaryFile()
            stack.enter_context(out)
        elif stdout_path:
            out = stack.enter_context(open(stdout_path, "wb"))
        else:
            out = subprocess.DEVNULL
        t0 = time.perf_counter()
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env or child_env()
        )
        p.wait()
        wall = time.perf_counter() - t0
        err.seek(0)
        data = b""
        if capture:
            out.seek(0)
            data = out.read()
        maxrss, cpu = 0, 0.0
        if rss_file:
            with contextlib.suppress(ValueError, OSError, IndexError):
                # /usr/bin/time may print "Command exited with non-zero status" first
                fields = Path(rss_file).read_text().split()[-3:]
                maxrss, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
            os.unlink(rss_file)
        return ChildRun(wall, p.returncode, maxrss, err.read().decode(errors="replace"), data, cpu)


def run_in_pty(
    cmd: list[str], *, cwd: str | None = None, cols: int = 120, rows: int = 50
) -> ChildRun:
    """Run ``cmd`` on a pseudo-terminal (what a user at a terminal gets)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = child_env()
    env["TERM"] = "xterm-256color"  # and no NO_COLOR: what a user's terminal gets
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    p.wait()
    wall = time.perf_counter() - t0
    os.close(master)
    return ChildRun(wall, p.returncode, 0, "", b"".join(chunks))


# --------------------------------------------------------------------- the raw floor


FLOOR_TS = "2024-01-01T00:00:00.000000+00:00"
#: a transition's two commits: (new status, event kind, event data)
FLOOR_STEPS = (
    ("running", "stage_started", '{"attempt":1}'),
    ("completed", "stage_completed", None),
)


def floor_run(tmp: str, sync: str, items: int = 200, stages: int = 5) -> float:
    """Raw sqlite3: per stage two commits, each an UPDATE of its row + an INSERT of an
    event row (WAL, ``synchronous`` as given, prepared statements). Seconds per stage."""
    path = os.path.join(tmp, f"floor-{sync}-{random.getrandbits(32):x}.db")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute(f"PRAGMA synchronous = {sync}")
    c.execute(
        "CREATE TABLE stages (item_id TEXT, name TEXT, status TEXT, attempts INTEGER, "
        "updated_at TEXT, PRIMARY KEY (item_id, name))"
    )
    c.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT, kind TEXT, item_id TEXT, "
        "stage TEXT, data TEXT)"
    )
    c.execute("CREATE INDEX events_item ON events (item_id, id)")
    keys = [(f"doc-{i}", f"s{j}") for i in range(items) for j in range(stages)]
    c.execute("BEGIN")
    c.executemany("INSERT INTO stages VALUES (?, ?, 'pending', 0, NULL)", keys)
    c.execute("COMMIT")
    upd = (
        "UPDATE stages SET status = ?, attempts = attempts + 1, updated_at = ? "
        "WHERE item_id = ? AND name = ?"
    )
    ins = "INSERT INTO events (ts, kind, item_id, stage, data) VALUES (?, ?, ?, ?, ?)"
    ex = c.execute
    t0 = time.perf_counter()
    for item, stage in keys:
        for status, kind, data in FLOOR_STEPS:
            ex("BEGIN IMMEDIATE")
            ex(upd, (status, FLOOR_TS, item, stage))
            ex(ins, (FLOOR_TS, kind, item, stage, data))
            ex("COMMIT")
    el = time.perf_counter() - t0
    c.close()
    return el / len(keys)


# ------------------------------------------------------------------ the library's store


def open_store(path: str, durability: str = "normal") -> Any:
    from treadle_cli import SqliteStateStore

    return SqliteStateStore.open(path, durability=durability)
