"""The embedded default store: one SQLite file in WAL mode.

Transitions are single ``BEGIN IMMEDIATE`` transactions of prepared SQL (shared with the
PostgreSQL store in :mod:`.sql`); sqlite-utils creates the schema and runs migrations
(imported only then, to keep start-up fast). The schema is a public contract, documented
in the README.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import DatabaseLockedError, IncompatibleDatabaseError, StoreError, UsageError
from ..model import ItemRecord, StageRecord, SubtaskRecord, WorkerRecord, iso, utcnow
from .sql import (
    BOOL_COLS,
    JSON_COLS,
    TIME_COLS,
    Dialect,
    SqlStore,
    SqlTx,
    Statements,
    column_kinds,
    dump_json,
)

SCHEMA_VERSION = 2
#: Marks a file as ours in the SQLite header ("trdl"), so a foreign database is refused.
APPLICATION_ID = 0x7472646C
SQLITE_MAGIC = b"SQLite format 3\x00"

DIALECT = Dialect(
    param="?",
    is_="IS",
    true="1",
    prefix="",
    # StrEnum members bind as the text they are; times are ISO text, JSON is text.
    encode={
        **dict.fromkeys(JSON_COLS, dump_json),
        **dict.fromkeys(TIME_COLS, iso),
        **dict.fromkeys(BOOL_COLS, int),
    },
    decode={
        **dict.fromkeys(JSON_COLS, json.loads),
        **dict.fromkeys(TIME_COLS, datetime.fromisoformat),
        **dict.fromkeys(BOOL_COLS, bool),
    },
    unlimited="-1",
)
SQL = Statements(DIALECT)


def _columns(cls: Any) -> dict[str, type]:
    """Column types from a record's fields, so the tables and the records cannot drift."""
    types = {"int": int, "bool": int, "float": float}
    return {name: types.get(kind, str) for name, kind in column_kinds(cls).items()}


def _create_schema(conn: sqlite3.Connection) -> None:
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    text, integer = str, int
    db.table("items").create(
        _columns(ItemRecord), pk="id", not_null={"pipeline", "state", "created_at"}
    )
    db.table("stages").create(
        _columns(StageRecord),
        pk=("item_id", "name"),
        not_null={"status"},
        foreign_keys=[("item_id", "items", "id")],
    )
    db.table("subtasks").create(
        _columns(SubtaskRecord),
        pk=("item_id", "stage", "name"),
        not_null={"status"},
        foreign_keys=[("item_id", "items", "id")],
    )
    db.table("decisions").create(
        {
            "id": integer,
            "item_id": text,
            "stage": text,
            "subtask": text,
            "decision": text,
            "by": text,
            "at": text,
            "reason": text,
            "comment": text,
            "output": text,
        },
        pk="id",
        foreign_keys=[("item_id", "items", "id")],
    )
    db.table("events").create(
        {
            "id": integer,
            "ts": text,
            "kind": text,
            "item_id": text,
            "stage": text,
            "subtask": text,
            "data": text,
        },
        pk="id",
    )
    # Indexes are chosen for the write path: nothing indexes items.state, which changes on
    # every transition; stage counts read a covering index; the review inbox reads partial
    # indexes that only change when a review starts or ends.
    db.table("items").create_index(["created_at", "id"])
    db.table("items").create_index(["pipeline"])
    db.table("decisions").create_index(["item_id"])
    db.table("events").create_index(["item_id", "id"])
    conn.execute("CREATE INDEX idx_stages_counts ON stages (name, status) WHERE active = 1")
    conn.execute(
        "CREATE INDEX idx_stages_reviews ON stages (item_id) WHERE status = 'awaiting_review'"
    )
    conn.execute(
        "CREATE INDEX idx_subtasks_reviews ON subtasks (item_id) WHERE status = 'awaiting_review'"
    )


def _add_workers(conn: sqlite3.Connection) -> None:
    import sqlite_utils

    sqlite_utils.Database(conn).table("workers").create(
        _columns(WorkerRecord), pk="name", not_null={"host", "pid", "heartbeat_at"}
    )


#: Forward migrations: MIGRATIONS[n] takes a version-n database to n+1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _create_schema,
    1: _add_workers,
}


def _empty_readonly_conn() -> sqlite3.Connection:
    """An empty schema in memory: what a read-only open of a database not yet written sees."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    for version in range(SCHEMA_VERSION):
        MIGRATIONS[version](conn)
    conn.execute("PRAGMA query_only = 1")  # writes fail as they would on the real file
    return conn


def _header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(100)


class SqliteStateStore(SqlStore):
    """State in one SQLite file. Open with :meth:`open`; safe to share across threads."""

    sql = SQL

    def __init__(self, conn: sqlite3.Connection, path: str, timeout: float) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = self.location = path
        self.timeout = timeout
        self.durability = "normal"

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: str = "normal",
        timeout: float = 30.0,
        readonly: bool = False,
    ) -> SqliteStateStore:
        """Open (creating if needed) a treadle database.

        ``durability="full"`` syncs every commit (power-loss safe); ``"normal"`` survives a
        process crash. ``readonly=True`` never creates or writes the file: a missing one
        reads as empty. A foreign file or one from a newer treadle is refused unchanged.
        """
        if durability not in ("normal", "full"):
            raise UsageError(f"unknown durability {durability!r}", hint="use 'normal' or 'full'")
        p = Path(path)
        where = str(p)
        if p.is_dir():
            raise StoreError(
                f"{where} is a folder, not a database file",
                path=where,
                hint="pass a file path with --db",
            )
        missing = not p.exists() or p.stat().st_size == 0
        if readonly and missing:
            return cls(_empty_readonly_conn(), where, timeout)
        if not missing:
            cls._check_header(p)
        try:
            conn = sqlite3.connect(
                str(p), timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open database {where}: {exc}",
                path=where,
                hint="check the path and its folder's permissions",
            ) from exc
        store = cls(conn, where, timeout)
        try:
            store._prepare(durability, readonly)
        except sqlite3.Error as exc:
            conn.close()
            raise store._translate(exc) from exc
        except BaseException:
            conn.close()
            raise
        return store

    @staticmethod
    def _check_header(p: Path) -> None:
        where = str(p)
        try:
            head = _header(p)
        except OSError as exc:
            raise StoreError(
                f"cannot read database {where}: {exc.strerror}",
                path=where,
                hint="check the file's permissions",
            ) from exc
        if not head.startswith(SQLITE_MAGIC) or len(head) < 100:
            raise IncompatibleDatabaseError(
                f"{where} is not a treadle database (not SQLite)",
                path=where,
                hint="point --db at a treadle database or a new file",
            )

    def _prepare(self, durability: str, readonly: bool) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        version = c.execute("PRAGMA user_version").fetchone()[0]
        tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (tables or app_id or version):
            # Every treadle database carries our application_id from its first commit.
            what = (
                "it holds other tables"
                if tables
                else f"its application_id is {app_id}"
                if app_id
                else f"its user_version is {version}"
            )
            raise IncompatibleDatabaseError(
                f"{self.path} is not a treadle database ({what})",
                path=self.path,
                hint="point --db at a treadle database or a new file",
            )
        if version > SCHEMA_VERSION:
            raise IncompatibleDatabaseError(
                f"{self.path} was written by a newer treadle (schema {version}, this one "
                f"reads up to {SCHEMA_VERSION})",
                path=self.path,
                hint="upgrade treadle (pip install -U treadle-cli)",
            )
        if readonly:
            if not tables:
                # Nothing written yet (a version-0 file): read it as empty, like a missing
                # file, rather than migrate a file we were asked not to write.
                c.close()
                self._conn = _empty_readonly_conn()
                return
            c.execute("PRAGMA query_only = 1")
            return
        if version < SCHEMA_VERSION:
            self._migrate(version)
        c.execute("PRAGMA journal_mode = WAL")
        c.execute(f"PRAGMA synchronous = {durability.upper()}")
        self.durability = durability

    def use_durability(self, durability: str) -> None:
        """Sync commits on this connection from now on ("full") or not ("normal")."""
        if durability not in ("normal", "full"):
            raise UsageError(f"unknown durability {durability!r}", hint="use 'normal' or 'full'")
        with self._lock:
            self._conn.execute(f"PRAGMA synchronous = {durability.upper()}")
            self.durability = durability

    def _honour_item(self, item_id: str) -> None:
        # An item whose pipeline asked for power-loss safety gets synced decisions too;
        # SQLite cannot change this inside a transaction, so it is read first.
        if self.durability != "full":
            rec = self.get_item(item_id)
            if rec is not None and rec.durability == "full":
                self.use_durability("full")

    def decide(self, item_id: str, *args: Any, **kwargs: Any) -> Any:
        self._honour_item(item_id)
        return super().decide(item_id, *args, **kwargs)

    def reset_stage(self, item_id: str, *args: Any, **kwargs: Any) -> Any:
        self._honour_item(item_id)
        return super().reset_stage(item_id, *args, **kwargs)

    def _migrate(self, version: int) -> None:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = c.execute("PRAGMA user_version").fetchone()[0]
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](c)
                version += 1
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            c.execute(f"PRAGMA user_version = {version}")
            c.execute("COMMIT")
        except BaseException:
            self._rollback()  # never let a failed ROLLBACK hide why the migration failed
            raise

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return DatabaseLockedError(
                f"database {self.path} is locked (waited {self.timeout:g}s)",
                path=self.path,
                hint="another process holds it; retry, or allow a longer busy timeout",
            )
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return StoreError(
                f"database {self.path} is read-only: {text}",
                path=self.path,
                hint="check the permissions of the file and its folder",
            )
        if "not a database" in text or "malformed" in text:
            return IncompatibleDatabaseError(
                f"{self.path} is damaged or not a treadle database: {text}",
                path=self.path,
                hint="restore it from a backup or point --db at another file",
            )
        return StoreError(
            f"database error on {self.path}: {text}",
            path=self.path,
            hint="run with --debug for details",
        )

    # ------------------------------------------------------------ transactions

    @contextmanager
    def _tx(self) -> Iterator[SqlTx]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
            try:
                yield SqlTx(self._conn, SQL)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._translate(exc) from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the failed statement may have rolled back already

    @contextmanager
    def _read(self) -> Iterator[SqlTx]:
        with self._lock:
            try:
                yield SqlTx(self._conn, SQL)
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Sequence[Any]]:
        return self.iter_query(sql, params)

    def iter_query(self, sql: str, params: Sequence[Any] = (), size: int = 1000) -> Iterator[Any]:
        """Stream a query's rows without holding them all in memory."""
        try:
            with self._lock:
                cur = self._conn.cursor()
                cur.execute(sql, params)
            while True:
                with self._lock:
                    rows = cur.fetchmany(size)
                if not rows:
                    return
                yield from rows
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ----------------------------------------------------------------- workers

    def _has_workers_table(self) -> bool:
        # A read-only open does not migrate: an older file has no workers yet.
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE name = 'workers'"))

    def server_now(self) -> datetime:
        return utcnow()

    def changes(self) -> DataVersionFeed:
        return DataVersionFeed(self.path if self.path and Path(self.path).exists() else None)


class DataVersionFeed:
    """Notices commits by other connections through ``PRAGMA data_version``: one cheap read
    of the file's header page every ``interval`` seconds while a worker waits."""

    def __init__(self, path: str | None, interval: float = 0.1) -> None:
        self.interval = interval
        self._conn = (
            sqlite3.connect(path, isolation_level=None, check_same_thread=False) if path else None
        )
        self._last = self._version()

    def _version(self) -> int:
        if self._conn is None:
            return 0
        try:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return -1  # the file is in trouble: wake the worker, whose own query will say why

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            version = self._version()
            if version != self._last:
                self._last = version
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.interval, left))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
