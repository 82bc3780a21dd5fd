"""Helpers shared by the CLI tests (a module of its own: test folders have no __init__.py, so
``from conftest import ...`` would be ambiguous between folders)."""

from __future__ import annotations

import gc
import hashlib
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from treadle_cli.cli import app

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = HERE / "pipelines"
SQLITE_MAGIC = b"SQLite format 3\x00"

#: Environment that would change what the CLI prints or where it writes.
ENV_NOISE = (
    "TREADLE_DB",
    "TREADLE_DURABILITY",
    "TREADLE_BUSY_TIMEOUT",
    "FORCE_COLOR",
    "NO_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "COLUMNS",
    "LINES",
)


@dataclass
class Cli:
    """Invokes ``treadle --db DB ...`` in-process.

    Typer 0.28's ``CliRunner`` has no ``mix_stderr``: ``result.stdout`` and ``result.stderr``
    are separate already (``result.output`` is both, interleaved).
    """

    db: Path
    runner: CliRunner

    def __call__(
        self,
        *args: Any,
        code: int | None = 0,
        env: dict[str, str] | None = None,
        catch: bool | None = None,
        db: Path | None = None,
        input: str | None = None,
    ) -> Result:
        """Run a command; assert its exit code unless ``code`` is None.

        When success is expected, exceptions propagate (``catch_exceptions=False``) so a bug
        shows its traceback instead of a bare exit code.
        """
        argv = ["--db", str(db or self.db), *[str(a) for a in args]]
        if catch is None:
            catch = code != 0
        result = self.runner.invoke(app, argv, env=env, catch_exceptions=catch, input=input)
        if code is not None:
            assert result.exit_code == code, (
                f"treadle {' '.join(argv)} exited {result.exit_code}, expected {code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
            )
        return result


def error_line(result: Result, code: int) -> str:
    """Assert the one-line ``error: ...`` contract and return that line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


def snapshot(path: Path) -> tuple[Any, ...] | None:
    """What must not change when a command fails: file bytes and, for SQLite, a full dump.

    Connections the in-process CLI left open are collected first and the WAL is folded into
    the main file, so the bytes compared hold the whole committed state.
    """
    gc.collect()
    if not path.exists():
        return None
    raw = path.read_bytes()
    if not raw.startswith(SQLITE_MAGIC):
        return ("bytes", hashlib.sha256(raw).hexdigest())
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        dump = "\n".join(con.iterdump())
        pragmas = tuple(
            con.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("user_version", "application_id", "journal_mode")
        )
    finally:
        con.close()
    wal = Path(str(path) + "-wal")
    wal_bytes = wal.read_bytes() if wal.exists() else b""
    return ("sqlite", hashlib.sha256(path.read_bytes()).hexdigest(), dump, pragmas, wal_bytes)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment without settings that would leak into a child treadle."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NOISE}
    env.update(extra)
    return env


def treadle_exe() -> Path:
    """The installed console script of this venv."""
    exe = Path(sys.executable).parent / "treadle"
    assert exe.exists(), f"no treadle entry point next to {sys.executable}"
    return exe


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
