"""The shared store: tables in the schema ``treadle`` of a PostgreSQL server.

Every transition locks its item's row first (``SELECT ... FOR UPDATE``), so processes on
different machines never both decide one review or leave a stale item summary under READ
COMMITTED. Event ids are taken under a transaction-level advisory lock held until commit,
so ids appear in commit order and a follower reading ``id > last seen`` never skips one.
Errors are mapped by SQLSTATE; serialization failures, deadlocks and a lost race to
register one item run the operation again (:func:`.operations.atomic`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import DatabaseLockedError, IncompatibleDatabaseError, StoreError, UsageError
from ..model import ItemRecord, StageRecord, SubtaskRecord, WorkerRecord
from .memory import MemoryStateStore
from .operations import RetryTransaction
from .sql import EVENT_COLS, JSON_COLS, Dialect, SqlStore, SqlTx, Statements, column_kinds

# The pool retries connections in the background and logs each failure; the error that
# reaches the caller already says what happened, so unless the application configured
# logging these must not reach stderr through logging's last-resort handler.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())

SCHEMA = "treadle"
SCHEMA_VERSION = 2
#: NOTIFY channel of every commit that appends events: idle workers wake on it.
CHANNEL = "treadle"
#: Advisory lock keys ("trdl" and the next): event ids in commit order, and migrations.
EVENT_LOCK = 0x7472646C
MIGRATE_LOCK = EVENT_LOCK + 1
#: Connections a process may hold at once (stage threads, subtasks, --jobs).
POOL_SIZE = 16

_RETRY = {"40001", "40P01", "23505"}  # serialization failure, deadlock, unique violation
_LOGIN = {"28P01", "28000"}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _json(value: Any) -> Json:
    return Json(value, dumps=_dumps)


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; keep the rest of the text rather than fail the write.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


_FREE_TEXT = ("error", "traceback", "review_prompt", "reason", "comment", "by", "waiting_on")

DIALECT = Dialect(
    param="%s",
    is_="IS NOT DISTINCT FROM",
    true="TRUE",
    prefix=f"{SCHEMA}.",
    encode={
        **dict.fromkeys(JSON_COLS, _json),
        **dict.fromkeys(_FREE_TEXT, _text),
        "status": str,
        "state": str,
    },
    decode={},  # psycopg returns datetimes, parsed JSON and booleans already
    unlimited="ALL",
    skip_locked=" FOR UPDATE OF i SKIP LOCKED",
)
SQL = Statements(DIALECT)

_PG_TYPES = {
    "json": "json",  # json, not jsonb: the text (keys sorted) reads back as SQLite's does
    "time": "timestamptz",
    "bool": "boolean",
    "int": "integer",
    "float": "double precision",
    "text": "text",
}


def _table(name: str, cls: Any, key: Sequence[str], not_null: Sequence[str], fk: bool) -> str:
    cols = [
        f"{col} {_PG_TYPES[kind]}{' NOT NULL' if col in not_null else ''}"
        for col, kind in column_kinds(cls).items()
    ]
    cols.append(f"PRIMARY KEY ({', '.join(key)})")
    if fk:
        cols.append(f"FOREIGN KEY (item_id) REFERENCES {SCHEMA}.items (id) ON DELETE CASCADE")
    return f"CREATE TABLE {SCHEMA}.{name} ({', '.join(cols)})"


def _create_schema(cur: psycopg.Cursor[Any]) -> None:
    s = SCHEMA
    for ddl in [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        _table("items", ItemRecord, ["id"], ["pipeline", "state", "created_at"], False),
        _table("stages", StageRecord, ["item_id", "name"], ["status"], True),
        _table("subtasks", SubtaskRecord, ["item_id", "stage", "name"], ["status"], True),
        f"CREATE TABLE {s}.decisions (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        f"item_id text REFERENCES {s}.items (id) ON DELETE CASCADE, stage text, subtask text, "
        "decision text, by text, at timestamptz, reason text, comment text, output json)",
        f"CREATE TABLE {s}.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "ts timestamptz, kind text, item_id text, stage text, subtask text, data json)",
        # The same indexes as SQLite, for the same reasons (see store/sqlite.py).
        f"CREATE INDEX items_created ON {s}.items (created_at, id)",
        f"CREATE INDEX items_pipeline ON {s}.items (pipeline)",
        f"CREATE INDEX decisions_item ON {s}.decisions (item_id)",
        f"CREATE INDEX events_item ON {s}.events (item_id, id)",
        f"CREATE INDEX stages_counts ON {s}.stages (name, status) WHERE active",
        f"CREATE INDEX stages_reviews ON {s}.stages (item_id) WHERE status = 'awaiting_review'",
        f"CREATE INDEX subtasks_reviews ON {s}.subtasks (item_id) WHERE status = 'awaiting_review'",
    ]:
        cur.execute(ddl)


def _add_workers(cur: psycopg.Cursor[Any]) -> None:
    cur.execute(_table("workers", WorkerRecord, ["name"], ["host", "pid", "heartbeat_at"], False))


#: Forward migrations: MIGRATIONS[n] takes a version-n schema to n+1.
MIGRATIONS = {0: _create_schema, 1: _add_workers}


# ------------------------------------------------------------------ addresses


def redact(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _where(url: str) -> tuple[str, str, str | None]:
    """(host:port, database, password) the URL names, with libpq's defaults."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise UsageError(
            f"bad PostgreSQL URL {redact(url)}: {_one_line(exc)}",
            hint="write postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ) from None
    host = str(info.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(info.get("port") or os.environ.get("PGPORT") or "5432")
    user = str(info.get("user") or os.environ.get("PGUSER") or "")
    db = str(info.get("dbname") or os.environ.get("PGDATABASE") or user or "postgres")
    password = info.get("password")
    return f"{host}:{port}", db, str(password) if password else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    text = re.sub(r"^connection failed:\s*", "", text)
    return re.sub(r"\s+", " ", text.replace("\n", "; "))


def _connect_sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a refused connection. libpq reports none before a session exists,
    so the server's FATAL message is the only witness; everything later is mapped by code."""
    if not isinstance(exc, psycopg.OperationalError):
        return None
    text = str(exc)
    if re.search(r'FATAL:\s+database ".*" does not exist', text):
        return "3D000"
    if re.search(
        r"FATAL:\s+(password authentication failed|no pg_hba.conf entry|role .* does "
        r"not exist|Peer authentication failed)",
        text,
    ):
        return "28000"
    if "fe_sendauth: no password supplied" in text:
        return "28000"
    return None


# ----------------------------------------------------------------- the store


class _PgTx(SqlTx):
    def __init__(self, cur: Any) -> None:
        super().__init__(cur, SQL)
        self._ordered = False

    def lock_item(self, item_id: str) -> None:
        self.c.execute(_LOCK_ITEM, (item_id,))

    def _inserted_id(self, sql: str, params: Sequence[Any]) -> int:
        if sql is SQL.insert_event and not self._ordered:
            # The first event takes the ordering lock in the same round trip; it is held
            # to commit, so the next writer's ids come after ours are visible. Its NOTIFY
            # is delivered at commit (once per transaction), waking idle workers.
            self._ordered = True
            sql = _INSERT_FIRST_EVENT
        else:
            sql = _RETURNING_ID[sql]
        row = self.c.execute(sql, params).fetchone()
        return int(row[0])


_RETURNING_ID = {q: q + " RETURNING id" for q in (SQL.insert_event, SQL.insert_decision)}
_INSERT_FIRST_EVENT = (
    f"INSERT INTO {SCHEMA}.events ({', '.join(EVENT_COLS[1:])}) "
    f"SELECT {', '.join(['%s'] * (len(EVENT_COLS) - 1))} "
    f"FROM pg_advisory_xact_lock({EVENT_LOCK}), pg_notify('{CHANNEL}', '') RETURNING id"
)
_LOCK_ITEM = f"SELECT 1 FROM {SCHEMA}.items WHERE id = %s FOR UPDATE"


class PostgresStateStore(SqlStore):
    """State in a PostgreSQL database shared by many processes and machines.

    Open with :meth:`open`; safe to share across threads (a small connection pool).
    """

    sql = SQL

    def __init__(self, url: str, timeout: float, readonly: bool, durability: str) -> None:
        self.url = url
        self.location = redact(url)
        self.timeout = timeout
        self.readonly = readonly
        self.durability = durability
        self._address, self._dbname, self._password = _where(url)
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        url: str,
        *,
        durability: str = "normal",
        timeout: float = 30.0,
        readonly: bool = False,
    ) -> PostgresStateStore | NoSchemaYet:
        """Connect, creating or migrating the ``treadle`` schema unless ``readonly``.

        A schema from a newer treadle, or one holding other tables, is refused unchanged.
        ``readonly`` never creates anything: before the schema exists it returns an empty,
        read-only view.
        """
        if durability not in ("normal", "full"):
            raise UsageError(f"unknown durability {durability!r}", hint="use 'normal' or 'full'")
        store = cls(url, timeout, readonly, durability)
        with store._connect() as conn:
            version = store._check(conn)
            if version == 0 and readonly:
                return NoSchemaYet(store.location)
            if version < SCHEMA_VERSION:
                store._migrate(conn)
        return store

    @classmethod
    def exists(cls, url: str, timeout: float = 30.0) -> bool:
        """Whether the database holds a treadle schema (never creates one)."""
        store = cls(url, timeout, True, "normal")
        with store._connect() as conn:
            return store._check(conn) > 0

    def _conn_kwargs(self) -> dict[str, Any]:
        options = f"-c timezone=UTC -c lock_timeout={int(self.timeout * 1000)}"
        if self.readonly:
            options += " -c default_transaction_read_only=on"
        if self.durability == "full":
            options += " -c synchronous_commit=on"
        return {
            "autocommit": True,
            "application_name": "treadle",
            "connect_timeout": max(2, int(self.timeout)),
            "options": options,
        }

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, **self._conn_kwargs())
        except psycopg.Error as exc:
            raise self._translate(exc) from None

    def _check(self, conn: psycopg.Connection[Any]) -> int:
        """The schema's version (0: none yet); refuses a foreign or newer schema."""
        try:
            row = conn.execute(
                "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
                "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s)",
                (SCHEMA, f"{SCHEMA}.meta", SCHEMA),
            ).fetchone()
            assert row is not None  # one row, always
            has_schema, has_meta, relations = row
            if not has_meta:
                if has_schema and relations:
                    raise self._foreign("its schema treadle holds other tables")
                return 0
            got = conn.execute(
                f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'"
            ).fetchone()
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        if got is None or not str(got[0]).isdigit():
            raise self._foreign("treadle.meta has no schema_version")
        version = int(got[0])
        if version > SCHEMA_VERSION:
            raise IncompatibleDatabaseError(
                f"{self.location} was written by a newer treadle (schema {version}, this one "
                f"reads up to {SCHEMA_VERSION})",
                path=self.location,
                hint="upgrade treadle (pip install -U treadle-cli)",
            )
        return version

    def _foreign(self, what: str) -> IncompatibleDatabaseError:
        return IncompatibleDatabaseError(
            f"{self.location} is not a treadle database ({what})",
            path=self.location,
            hint="point at another database, or drop the schema treadle there",
        )

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction(), conn.cursor() as cur:
                # One migrator at a time; re-read under the lock, another may have finished.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                version = self._check(conn)
                while version < SCHEMA_VERSION:
                    MIGRATIONS[version](cur)
                    version += 1
                cur.execute(
                    f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(version),),
                )
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    @property
    def pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    kwargs=self._conn_kwargs(),
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=self.timeout,
                    name="treadle",
                    open=True,
                )
            return self._pool

    # ----------------------------------------------------------------- errors

    def _translate(self, exc: BaseException) -> StoreError:
        code = getattr(exc, "sqlstate", None) or _connect_sqlstate(exc)
        reason = _one_line(exc)
        if self._password and len(self._password) >= 4:  # never in libpq's text; belt and braces
            reason = reason.replace(self._password, "***")
        where = f"{self._address} (database {self._dbname})"
        if isinstance(exc, PoolTimeout):
            return DatabaseLockedError(
                f"no free connection to PostgreSQL at {where} within {self.timeout:g}s",
                path=self.location,
                hint="fewer parallel jobs, or allow a longer busy timeout",
            )
        if code in _LOGIN:
            return StoreError(
                f"PostgreSQL at {where} refused the login: {reason}",
                path=self.location,
                hint="check the user and password (in the URL, PGPASSWORD or ~/.pgpass)",
            )
        if code == "3D000":
            return StoreError(
                f"PostgreSQL at {self._address} has no database {self._dbname!r}",
                path=self.location,
                hint=f"create it (createdb {self._dbname}) or fix the URL",
            )
        if code in ("55P03", "57014"):
            return DatabaseLockedError(
                f"database {self.location} is locked (waited {self.timeout:g}s)",
                path=self.location,
                hint="another process holds it; retry, or allow a longer busy timeout",
            )
        if code == "25006":
            return StoreError(
                f"database {self.location} is read-only: {reason}",
                path=self.location,
                hint="connect to the primary server, or with a user allowed to write",
            )
        if code == "42501":
            return StoreError(
                f"permission denied on {where}: {reason}",
                path=self.location,
                hint="grant the user CREATE on the database, or have its owner create the "
                "schema treadle",
            )
        if code == "42P01":
            return IncompatibleDatabaseError(
                f"{self.location} lost its treadle tables: {reason}",
                path=self.location,
                hint="restore the schema treadle from a backup",
            )
        if isinstance(exc, psycopg.OperationalError) or (code or "").startswith(("08", "57P")):
            return StoreError(
                f"cannot reach PostgreSQL at {where}: {reason}",
                path=self.location,
                hint="check that the server is running and the host, port and database",
            )
        return StoreError(
            f"database error on {where}: {reason}",
            path=self.location,
            hint="run with --debug for details",
        )

    def _gave_up(self, error: Exception) -> Exception:
        return self._translate(error)

    # ------------------------------------------------------------ transactions

    @contextmanager
    def _tx(self) -> Iterator[_PgTx]:
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield _PgTx(cur)
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) in _RETRY:
                raise RetryTransaction(exc) from exc
            raise self._translate(exc) from exc
        except PoolTimeout as exc:
            raise self._translate(exc) from exc

    @contextmanager
    def _read(self) -> Iterator[SqlTx]:
        try:
            with self.pool.connection() as conn, conn.cursor() as cur:
                yield SqlTx(cur, SQL)
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._translate(exc) from exc

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[Sequence[Any]]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                # A server-side cursor: rows arrive a batch at a time.
                with conn.cursor(name=f"treadle_{uuid.uuid4().hex}") as cur:
                    cur.execute(sql, params)
                    while rows := cur.fetchmany(1000):
                        yield from rows
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._translate(exc) from exc

    # ----------------------------------------------------------------- workers

    def _has_workers_table(self) -> bool:
        # A read-only open does not migrate: an older schema has no workers yet.
        return bool(self._query("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.workers",))[0][0])

    def server_now(self) -> Any:
        return self._query("SELECT clock_timestamp()")[0][0]

    def changes(self) -> ListenFeed:
        return ListenFeed(self)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close()


class ListenFeed:
    """``LISTEN treadle`` on a connection of its own; reconnects after the server went away."""

    def __init__(self, store: PostgresStateStore) -> None:
        self._store = store
        self._conn: psycopg.Connection[Any] | None = None
        self._listen()

    def _listen(self) -> None:
        try:
            conn = psycopg.connect(self._store.url, **self._store._conn_kwargs())
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error:
            self._conn = None  # the worker's own queries report the outage
            return
        self._conn = conn

    def wait(self, timeout: float) -> bool:
        if self._conn is None or self._conn.closed:
            time.sleep(min(max(timeout, 0.0), 1.0))
            self._listen()
            return True  # what happened meanwhile is unknown: look
        try:
            got = list(self._conn.notifies(timeout=max(timeout, 0.0), stop_after=1))
            if got:  # take whatever else is queued, so one look covers it all
                got += list(self._conn.notifies(timeout=0.0))
        except psycopg.Error:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            return True
        return bool(got)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()


class NoSchemaYet(MemoryStateStore):
    """What a read-only open sees before the ``treadle`` schema exists: nothing at all."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreError(
            f"database {self.location} was opened read-only",
            path=self.location,
            hint="open it for writing to create the schema treadle",
        )

    register_item = sync_stages = claim_stage = finish_stage = finish_and_claim = _refuse
    add_subtasks = claim_subtask = finish_subtask = decide = reset_stage = _refuse
    claim_ready = register_worker = heartbeat = stop_worker = _refuse
