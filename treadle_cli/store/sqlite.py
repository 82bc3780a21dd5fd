"""The embedded default store: one SQLite file in WAL mode.

Transitions are single ``BEGIN IMMEDIATE`` transactions of prepared SQL; sqlite-utils
creates the schema and runs migrations (imported only then, to keep start-up fast).
The schema is a public contract, documented in the README.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DatabaseLockedError, IncompatibleDatabaseError, StoreError, UsageError
from ..model import (
    DecisionKind,
    Event,
    EventKind,
    ItemRecord,
    ItemState,
    ReviewData,
    StageRecord,
    StageStatus,
    SubtaskRecord,
    SubtaskStatus,
    iso,
    parse_ts,
)
from .base import ItemSummary, TransactionalStore

SCHEMA_VERSION = 1
#: Marks a file as ours in the SQLite header ("trdl"), so a foreign database is refused.
APPLICATION_ID = 0x7472646C
SQLITE_MAGIC = b"SQLite format 3\x00"

ITEM_COLS = tuple(f.name for f in fields(ItemRecord))
STAGE_COLS = tuple(f.name for f in fields(StageRecord))
SUBTASK_COLS = tuple(f.name for f in fields(SubtaskRecord))
DECISION_COLS = (
    "id",
    "item_id",
    "stage",
    "subtask",
    "decision",
    "by",
    "at",
    "reason",
    "comment",
    "output",
)
EVENT_COLS = ("id", "ts", "kind", "item_id", "stage", "subtask", "data")

_JSON = {"data", "output", "review_data"}
_TIME = {
    "created_at",
    "updated_at",
    "requested_at",
    "next_attempt_at",
    "lease_until",
    "started_at",
    "finished_at",
    "at",
    "ts",
}
_BOOL = {"active", "fanned_out"}


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _to_db(col: str, value: Any) -> Any:
    fn = _ENCODE.get(col)
    return value if fn is None or value is None else fn(value)


#: Column -> conversion to the database (StrEnum members bind as the text they are).
_ENCODE: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_JSON, _dump),
    **dict.fromkeys(_TIME, iso),
    **dict.fromkeys(_BOOL, int),
}
#: Column -> conversion from the database, for the columns that need one.
_DECODE: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_JSON, json.loads),
    **dict.fromkeys(_TIME, datetime.fromisoformat),
    **dict.fromkeys(_BOOL, bool),
}


def _decoder(cls: Any, cols: Sequence[str], **enums: Any) -> Callable[[Sequence[Any]], Any]:
    """A fast row -> record function; ``cols`` follow the record's field order."""
    fns = [enums.get(c) or _DECODE.get(c) for c in cols]

    def decode(row: Sequence[Any]) -> Any:
        return cls(
            *[v if fn is None or v is None else fn(v) for fn, v in zip(fns, row, strict=True)]
        )

    return decode


def _from_db(cols: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    return {
        c: (v if (fn := _DECODE.get(c)) is None or v is None else fn(v))
        for c, v in zip(cols, row, strict=True)
    }


_item = _decoder(ItemRecord, ITEM_COLS, state=ItemState)
_stage = _decoder(StageRecord, STAGE_COLS, status=StageStatus)
_subtask = _decoder(SubtaskRecord, SUBTASK_COLS, status=SubtaskStatus)


def _decision(row: Sequence[Any]) -> ReviewData:
    d = _from_db(DECISION_COLS, row)
    return ReviewData(
        decision=DecisionKind(d["decision"]),
        by=d["by"],
        at=d["at"],
        reason=d["reason"],
        comment=d["comment"],
        output=d["output"],
        item_id=d["item_id"],
        stage=d["stage"],
        subtask=d["subtask"],
        id=d["id"],
    )


def _event(row: Sequence[Any]) -> Event:
    d = _from_db(EVENT_COLS, row)
    return Event(
        EventKind(d["kind"]),
        d["item_id"],
        d["stage"],
        d["subtask"],
        d["data"],
        id=d["id"],
        ts=d["ts"],
    )


def _select(table: str, cols: Sequence[str]) -> str:
    return f"SELECT {', '.join(cols)} FROM {table}"


def _insert(table: str, cols: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _update(table: str, cols: Sequence[str], keys: Sequence[str]) -> str:
    sets = ", ".join(f"{c} = ?" for c in cols if c not in keys)
    where = " AND ".join(f"{k} = ?" for k in keys)
    return f"UPDATE {table} SET {sets} WHERE {where}"


def _values(rec: Any, cols: Sequence[str], keys: Sequence[str] = ()) -> list[Any]:
    order = [c for c in cols if c not in keys] + list(keys)
    return [_to_db(c, getattr(rec, c)) for c in order]


_SQL = {
    "get_item": _select("items", ITEM_COLS) + " WHERE id = ?",
    "insert_item": _insert("items", ITEM_COLS),
    "update_item": _update("items", ITEM_COLS, ("id",)),
    "get_stage": _select("stages", STAGE_COLS) + " WHERE item_id = ? AND name = ?",
    "list_stages": _select("stages", STAGE_COLS) + " WHERE item_id = ? ORDER BY position",
    "insert_stage": _insert("stages", STAGE_COLS),
    "update_stage": _update("stages", STAGE_COLS, ("item_id", "name")),
    "active_stages": "SELECT name, status, next_attempt_at FROM stages "
    "WHERE item_id = ? AND active = 1 ORDER BY position",
    "get_subtask": _select("subtasks", SUBTASK_COLS)
    + " WHERE item_id = ? AND stage = ? AND name = ?",
    "list_subtasks": _select("subtasks", SUBTASK_COLS)
    + " WHERE item_id = ? AND stage = ? ORDER BY position",
    "insert_subtask": _insert("subtasks", SUBTASK_COLS),
    "update_subtask": _update("subtasks", SUBTASK_COLS, ("item_id", "stage", "name")),
    "insert_event": _insert("events", EVENT_COLS[1:]),
    "stage_claim": "SELECT status, claim FROM stages WHERE item_id = ? AND name = ?",
    "set_item_summary": "UPDATE items SET state = ?, progress = ?, waiting_on = ?, "
    "updated_at = ? WHERE id = ? AND NOT (state IS ? AND progress IS ? AND waiting_on IS ?)",
    "insert_decision": _insert("decisions", DECISION_COLS[1:]),
    "last_decision": _select("decisions", DECISION_COLS)
    + " WHERE item_id = ? AND stage = ? AND subtask IS ? ORDER BY id DESC LIMIT 1",
}


@functools.cache
def _cas_sql(
    table: str, keys: tuple[str, ...], sets: tuple[str, ...], where: tuple[str, ...]
) -> str:
    """UPDATE ... SET sets WHERE keys = ? AND each where-column IS ? (NULL-safe)."""
    assignments = ", ".join(f"{c} = ?" for c in sets)
    conditions = " AND ".join([f"{k} = ?" for k in keys] + [f"{c} IS ?" for c in where])
    return f"UPDATE {table} SET {assignments} WHERE {conditions}"


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    def get_item(self, item_id: str) -> ItemRecord | None:
        row = self.c.execute(_SQL["get_item"], (item_id,)).fetchone()
        return _item(row) if row else None

    def insert_item(self, rec: ItemRecord) -> None:
        self.c.execute(_SQL["insert_item"], _values(rec, ITEM_COLS))

    def update_item(self, rec: ItemRecord) -> None:
        self.c.execute(_SQL["update_item"], _values(rec, ITEM_COLS, ("id",)))

    def get_stage(self, item_id: str, stage: str) -> StageRecord | None:
        row = self.c.execute(_SQL["get_stage"], (item_id, stage)).fetchone()
        return _stage(row) if row else None

    def list_stages(self, item_id: str, include_inactive: bool) -> list[StageRecord]:
        rows = [_stage(r) for r in self.c.execute(_SQL["list_stages"], (item_id,))]
        return rows if include_inactive else [r for r in rows if r.active]

    def insert_stage(self, rec: StageRecord) -> None:
        self.c.execute(_SQL["insert_stage"], _values(rec, STAGE_COLS))

    def insert_stages(self, recs: list[StageRecord]) -> None:
        self.c.executemany(_SQL["insert_stage"], [_values(r, STAGE_COLS) for r in recs])

    def update_stage(self, rec: StageRecord) -> None:
        self.c.execute(_SQL["update_stage"], _values(rec, STAGE_COLS, ("item_id", "name")))

    def active_stages(self, item_id: str) -> list[tuple[str, str, datetime | None]]:
        return [
            (n, s, parse_ts(t)) for n, s, t in self.c.execute(_SQL["active_stages"], (item_id,))
        ]

    def get_subtask(self, item_id: str, stage: str, name: str) -> SubtaskRecord | None:
        row = self.c.execute(_SQL["get_subtask"], (item_id, stage, name)).fetchone()
        return _subtask(row) if row else None

    def list_subtasks(self, item_id: str, stage: str) -> list[SubtaskRecord]:
        return [_subtask(r) for r in self.c.execute(_SQL["list_subtasks"], (item_id, stage))]

    def insert_subtask(self, rec: SubtaskRecord) -> None:
        self.c.execute(_SQL["insert_subtask"], _values(rec, SUBTASK_COLS))

    def update_subtask(self, rec: SubtaskRecord) -> None:
        self.c.execute(
            _SQL["update_subtask"], _values(rec, SUBTASK_COLS, ("item_id", "stage", "name"))
        )

    def cas_stage(
        self, item_id: str, stage: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        sql = _cas_sql("stages", ("item_id", "name"), tuple(sets), tuple(where))
        params = [_to_db(c, v) for c, v in sets.items()] + [item_id, stage]
        params += [_to_db(c, v) for c, v in where.items()]
        return self.c.execute(sql, params).rowcount == 1

    def cas_subtask(
        self, item_id: str, stage: str, name: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        sql = _cas_sql("subtasks", ("item_id", "stage", "name"), tuple(sets), tuple(where))
        params = [_to_db(c, v) for c, v in sets.items()] + [item_id, stage, name]
        params += [_to_db(c, v) for c, v in where.items()]
        return self.c.execute(sql, params).rowcount == 1

    def stage_claim(self, item_id: str, stage: str) -> tuple[str, str | None] | None:
        row = self.c.execute(_SQL["stage_claim"], (item_id, stage)).fetchone()
        return (row[0], row[1]) if row else None

    def set_item_summary(
        self, item_id: str, state: ItemState, progress: float, waiting: str, now: datetime
    ) -> bool:
        params = (state.value, progress, waiting, iso(now), item_id, state.value, progress, waiting)
        return self.c.execute(_SQL["set_item_summary"], params).rowcount == 1

    def insert_event(self, ev: Event) -> Event:
        cur = self.c.execute(
            _SQL["insert_event"],
            (iso(ev.ts), ev.kind.value, ev.item_id, ev.stage, ev.subtask, _dump(ev.data)),
        )
        return Event(ev.kind, ev.item_id, ev.stage, ev.subtask, ev.data, id=cur.lastrowid, ts=ev.ts)

    def insert_decision(self, rev: ReviewData) -> ReviewData:
        cur = self.c.execute(
            _SQL["insert_decision"],
            (
                rev.item_id,
                rev.stage,
                rev.subtask,
                rev.decision.value,
                rev.by,
                iso(rev.at),
                rev.reason,
                rev.comment,
                _dump(rev.output),
            ),
        )
        return ReviewData(
            rev.decision,
            rev.by,
            rev.at,
            rev.reason,
            rev.comment,
            rev.output,
            rev.item_id,
            rev.stage,
            rev.subtask,
            id=cur.lastrowid,
        )

    def last_decision(self, item_id: str, stage: str, subtask: str | None) -> ReviewData | None:
        row = self.c.execute(_SQL["last_decision"], (item_id, stage, subtask)).fetchone()
        return _decision(row) if row else None


T = TypeVar("T")


def _wrap_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn sqlite3 errors into StoreError at the boundary."""

    @functools.wraps(fn)
    def wrapper(self: SqliteStateStore, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    return wrapper


def _columns(cls: Any) -> dict[str, type]:
    """Column types from a record's fields, so the tables and the records cannot drift."""
    out: dict[str, type] = {}
    for f in fields(cls):
        kind = str(f.type)
        out[f.name] = (
            int if kind.startswith(("int", "bool")) else float if kind.startswith("float") else str
        )
    return out


def _create_schema(conn: sqlite3.Connection) -> None:
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    text, integer = str, int
    db["items"].create(_columns(ItemRecord), pk="id", not_null={"pipeline", "state", "created_at"})
    db["stages"].create(
        _columns(StageRecord),
        pk=("item_id", "name"),
        not_null={"status"},
        foreign_keys=[("item_id", "items", "id")],
    )
    db["subtasks"].create(
        _columns(SubtaskRecord),
        pk=("item_id", "stage", "name"),
        not_null={"status"},
        foreign_keys=[("item_id", "items", "id")],
    )
    db["decisions"].create(
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
    db["events"].create(
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
    db["items"].create_index(["created_at", "id"])
    db["items"].create_index(["pipeline"])
    db["decisions"].create_index(["item_id"])
    db["events"].create_index(["item_id", "id"])
    conn.execute("CREATE INDEX idx_stages_counts ON stages (name, status) WHERE active = 1")
    conn.execute(
        "CREATE INDEX idx_stages_reviews ON stages (item_id) WHERE status = 'awaiting_review'"
    )
    conn.execute(
        "CREATE INDEX idx_subtasks_reviews ON subtasks (item_id) WHERE status = 'awaiting_review'"
    )


#: Forward migrations: MIGRATIONS[n] takes a version-n database to n+1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _create_schema}


def _empty_readonly_conn() -> sqlite3.Connection:
    """An empty schema in memory: what a read-only open of a database not yet written sees."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    _create_schema(conn)
    conn.execute("PRAGMA query_only = 1")  # writes fail as they would on the real file
    return conn


def _header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(100)


class SqliteStateStore(TransactionalStore):
    """State in one SQLite file. Open with :meth:`open`; safe to share across threads."""

    def __init__(self, conn: sqlite3.Connection, path: str, timeout: float) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        self.timeout = timeout

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

    def use_durability(self, durability: str) -> None:
        """Sync commits on this connection from now on ("full") or not ("normal")."""
        if durability not in ("normal", "full"):
            raise UsageError(f"unknown durability {durability!r}", hint="use 'normal' or 'full'")
        with self._lock:
            self._conn.execute(f"PRAGMA synchronous = {durability.upper()}")

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
                hint="another treadle holds it; retry, or raise TREADLE_BUSY_TIMEOUT",
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
    def _tx(self) -> Iterator[_SqliteTx]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
            try:
                yield _SqliteTx(self._conn)
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

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

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

    # ------------------------------------------------------------------ queries

    @_wrap_errors
    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._lock:
            return _SqliteTx(self._conn).get_item(item_id)

    @_wrap_errors
    def get_stages(self, item_id: str, *, include_inactive: bool = False) -> list[StageRecord]:
        with self._lock:
            return _SqliteTx(self._conn).list_stages(item_id, include_inactive)

    @_wrap_errors
    def get_subtasks(self, item_id: str, stage: str | None = None) -> list[SubtaskRecord]:
        if stage is not None:
            with self._lock:
                return _SqliteTx(self._conn).list_subtasks(item_id, stage)
        cols = ", ".join(f"t.{c}" for c in SUBTASK_COLS)
        rows = self._query(
            f"SELECT {cols} FROM subtasks t LEFT JOIN stages s ON s.item_id = t.item_id "
            "AND s.name = t.stage WHERE t.item_id = ? ORDER BY s.position, t.position",
            (item_id,),
        )
        return [_subtask(r) for r in rows]

    @_wrap_errors
    def last_decision(
        self, item_id: str, stage: str, subtask: str | None = None
    ) -> ReviewData | None:
        with self._lock:
            return _SqliteTx(self._conn).last_decision(item_id, stage, subtask)

    @_wrap_errors
    def decisions(self, item_id: str) -> list[ReviewData]:
        rows = self._query(
            _select("decisions", DECISION_COLS) + " WHERE item_id = ? ORDER BY id", (item_id,)
        )
        return [_decision(r) for r in rows]

    @_wrap_errors
    def events(
        self, *, after: int = 0, item_id: str | None = None, limit: int | None = None
    ) -> list[Event]:
        sql = _select("events", EVENT_COLS) + " WHERE id > ?"
        params: list[Any] = [after]
        if item_id is not None:
            sql += " AND item_id = ?"
            params.append(item_id)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_event(r) for r in self._query(sql, params)]

    @_wrap_errors
    def last_event_id(self) -> int:
        return self._query("SELECT coalesce(max(id), 0) FROM events")[0][0]

    @staticmethod
    def _item_filter(pipeline: str | None, states: Sequence[str] | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if pipeline is not None:
            clauses.append("pipeline = ?")
            params.append(pipeline)
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def items_query(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        cols: Sequence[str] = ITEM_COLS,
    ) -> tuple[str, list[Any]]:
        where, params = self._item_filter(pipeline, states)
        sql = _select("items", cols) + where + " ORDER BY created_at, id"
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else limit, offset]
        return sql, params

    @_wrap_errors
    def list_items(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ItemRecord]:
        sql, params = self.items_query(pipeline=pipeline, states=states, limit=limit, offset=offset)
        return [_item(r) for r in self._query(sql, params)]

    def iter_items(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ItemRecord]:
        """Every matching item, streamed in creation order."""
        sql, params = self.items_query(pipeline=pipeline, states=states, limit=limit)
        try:
            for row in self.iter_query(sql, params):
                yield _item(row)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def iter_summaries(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ItemSummary]:
        """The listing columns of every matching item, streamed: cheap enough for 100k rows."""
        sql, params = self.items_query(
            pipeline=pipeline, states=states, limit=limit, cols=ItemSummary._fields
        )
        try:
            for row in self.iter_query(sql, params):
                yield ItemSummary(*row)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    @_wrap_errors
    def count_items(
        self, *, pipeline: str | None = None, states: Sequence[str] | None = None
    ) -> dict[str, int]:
        where, params = self._item_filter(pipeline, states)
        rows = self._query(f"SELECT state, count(*) FROM items{where} GROUP BY state", params)
        return {state: n for state, n in rows}

    @_wrap_errors
    def stage_counts(self, *, pipeline: str | None = None) -> dict[str, dict[str, int]]:
        sql = "SELECT s.name, s.status, count(*) FROM stages s"
        params: list[Any] = []
        if pipeline is not None:
            sql += " JOIN items i ON i.id = s.item_id WHERE s.active = 1 AND i.pipeline = ?"
            params.append(pipeline)
        else:
            sql += " WHERE s.active = 1"
        out: dict[str, dict[str, int]] = {}
        for name, status, n in self._query(sql + " GROUP BY s.name, s.status", params):
            out.setdefault(name, {})[status] = n
        return out

    @_wrap_errors
    def pending_reviews(self, *, pipeline: str | None = None) -> list[dict[str, Any]]:
        join = " JOIN items i ON i.id = x.item_id" + (" AND i.pipeline = ?" if pipeline else "")
        params = [pipeline] if pipeline else []
        rows = self._query(
            "SELECT x.item_id, x.name, NULL, x.review_prompt, x.review_data, x.requested_at "
            f"FROM stages x{join} WHERE x.status = 'awaiting_review' AND x.active = 1 "
            "AND x.review_prompt IS NOT NULL "
            "UNION ALL SELECT x.item_id, x.stage, x.name, x.review_prompt, x.review_data, "
            f"x.requested_at FROM subtasks x{join} JOIN stages s ON s.item_id = x.item_id "
            "AND s.name = x.stage AND s.active = 1 WHERE x.status = 'awaiting_review' "
            "ORDER BY 6, 1",
            params * 2,
        )
        return [
            {
                "item": r[0],
                "stage": r[1],
                "subtask": r[2],
                "prompt": r[3],
                "data": _load(r[4]),
                "requested_at": r[5],
            }
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
