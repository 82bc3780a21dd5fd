"""Helpers shared by the CLI tests (a module of its own: test folders have no __init__.py, so
``from conftest import ...`` would be ambiguous between folders).

A database (``db``) is a SQLite file's ``Path`` or a ``postgresql://`` URL (``str``); the
helpers here accept both.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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

    db: Path | str
    runner: CliRunner

    def __call__(
        self,
        *args: Any,
        code: int | None = 0,
        env: dict[str, str] | None = None,
        catch: bool | None = None,
        db: Path | str | None = None,
        input: str | None = None,
    ) -> Result:
        """Run a command; assert its exit code unless ``code`` is None.

        When success is expected, exceptions propagate (``catch_exceptions=False``) so a bug
        shows its traceback instead of a bare exit code.
        """
        target = db or self.db
        argv = ["--db", str(target), *[str(a) for a in args]]
        if catch is None:
            catch = code != 0
        with closing_postgres_stores(is_postgres(target)):
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


def is_postgres(db: Path | str) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def shown(db: Path | str) -> str:
    """How treadle names a database in its messages: a URL's password as ***."""
    return re.sub(r"^(postgres(?:ql)?://[^:/@]*):[^@/]*@", r"\1:***@", str(db))


@contextmanager
def closing_postgres_stores(active: bool = True) -> Iterator[None]:
    """Close the PostgreSQL stores opened inside the block.

    The CLI leaves its store to process exit; in-process, each invocation would leave a
    connection pool (and its threads) to the garbage collector, which may run it on one of
    the pool's own threads.
    """
    if not active:
        yield
        return
    from treadle_cli.store.postgres import PostgresStateStore

    opened: list[PostgresStateStore] = []
    original = PostgresStateStore.__init__

    def recording_init(self: PostgresStateStore, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opened.append(self)

    PostgresStateStore.__init__ = recording_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        PostgresStateStore.__init__ = original  # type: ignore[method-assign]
        for store in opened:
            store.close()


def pg_schema_exists(url: str) -> bool:
    """Whether the database holds a schema ``treadle`` (what treadle creates on first write)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regnamespace('treadle') IS NOT NULL").fetchone()
        return bool(row and row[0])


def created(db: Path | str) -> bool:
    """Whether anything of a treadle database exists: the file (or its WAL), or the schema."""
    if is_postgres(db):
        return pg_schema_exists(str(db))
    path = Path(db)
    return any(Path(str(path) + suffix).exists() for suffix in ("", "-wal", "-shm"))


def pg_dump(url: str) -> tuple[Any, ...] | None:
    """Every table, column and row of the schema ``treadle`` (None: there is no such schema)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT to_regnamespace('treadle') IS NOT NULL").fetchone()[0]:
            return None
        columns = conn.execute(
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'treadle' ORDER BY 1, 2"
        ).fetchall()
        tables = sorted({c[0] for c in columns})
        rows = {
            t: sorted(r[0] for r in conn.execute(f'SELECT x::text FROM treadle."{t}" AS x'))
            for t in tables
        }
    return ("postgres", tuple(columns), tuple(sorted(rows.items())))


def set_schema_version(db: Path | str, version: int) -> None:
    """Mark the database as written by another treadle: ``PRAGMA user_version`` on SQLite,
    ``schema_version`` in ``treadle.meta`` on PostgreSQL."""
    if is_postgres(db):
        import psycopg

        with psycopg.connect(str(db), autocommit=True) as conn:
            cur = conn.execute(
                "UPDATE treadle.meta SET value = %s WHERE key = 'schema_version'", (str(version),)
            )
            assert cur.rowcount == 1
        return
    snapshot(db)  # fold the WAL in, so the raw connection below sees everything
    con = sqlite3.connect(db)
    try:
        con.execute(f"PRAGMA user_version = {int(version)}")
        con.commit()
    finally:
        con.close()


def snapshot(db: Path | str) -> tuple[Any, ...] | None:
    """What must not change when a command fails: file bytes and, for SQLite, a full dump;
    on PostgreSQL every row of the schema ``treadle`` (see ``pg_dump``).

    Connections the in-process CLI left open are collected first and the WAL is folded into
    the main file, so the bytes compared hold the whole committed state.
    """
    if is_postgres(db):
        return pg_dump(str(db))
    path = Path(db)
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
