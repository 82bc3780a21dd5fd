"""What only the SQLite store has: the file, its pragmas, refusing foreign files, locks, schema.

Every refusal is checked twice: the error (a StoreError, exit code 4) and the file, which must
be byte-for-byte what it was, with the same modification time.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from treadle_cli.errors import (
    DatabaseLockedError,
    IncompatibleDatabaseError,
    StoreError,
    UsageError,
)
from treadle_cli.model import ItemState, StageStatus
from treadle_cli.store import SqliteStateStore
from treadle_cli.store.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

#: The documented schema (README, "Storage"). Users query these names with sqlite-utils or Datasette, so a column
#: may be added but never renamed or dropped: this list only ever grows.
PUBLIC_SCHEMA: dict[str, tuple[str, ...]] = {
    "items": (
        "id",
        "pipeline",
        "data",
        "pipeline_path",
        "pipeline_hash",
        "state",
        "progress",
        "waiting_on",
        "created_at",
        "updated_at",
    ),
    "stages": (
        "item_id",
        "name",
        "status",
        "position",
        "active",
        "attempts",
        "attempt_base",
        "error",
        "traceback",
        "output",
        "review_prompt",
        "review_data",
        "requested_at",
        "next_attempt_at",
        "fanned_out",
        "claim",
        "owner_host",
        "owner_pid",
        "owner_started",
        "lease_until",
        "started_at",
        "finished_at",
        "updated_at",
    ),
    "subtasks": (
        "item_id",
        "stage",
        "name",
        "status",
        "position",
        "data",
        "attempts",
        "attempt_base",
        "error",
        "traceback",
        "output",
        "review_prompt",
        "review_data",
        "requested_at",
        "next_attempt_at",
        "started_at",
        "finished_at",
        "updated_at",
    ),
    "decisions": (
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
    ),
    "events": ("id", "ts", "kind", "item_id", "stage", "subtask", "data"),
}
PRIMARY_KEYS = {
    "items": ("id",),
    "stages": ("item_id", "name"),
    "subtasks": ("item_id", "stage", "name"),
    "decisions": ("id",),
    "events": ("id",),
}


# ----------------------------------------------------------------------- helpers


def register(store: SqliteStateStore, item_id: str = "doc-1") -> None:
    store.register_item(item_id, "p", {"k": item_id}, "p.yaml", "h", ["a", "b"], NOW)


def make_db(path: Path, items: tuple[str, ...] = ("doc-1",)) -> Path:
    store = SqliteStateStore.open(path)
    for item_id in items:
        register(store, item_id)
    store.close()
    return path


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def pragma(path: Path, name: str) -> object:
    conn = raw(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_size


def assert_refused(
    path: Path, error: type[StoreError] = IncompatibleDatabaseError, **kwargs: object
) -> StoreError:
    """Opening ``path`` fails with ``error`` (exit 4) and leaves the file exactly as it was."""
    before = fingerprint(path)
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(error) as info:
        SqliteStateStore.open(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.exit_code == 4
    assert info.value.path == str(path)
    assert fingerprint(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == siblings  # no -wal, -shm left
    return info.value


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteStateStore]:
    store = SqliteStateStore.open(tmp_path / "t.db")
    yield store
    store.close()


# ------------------------------------------------------------------------ pragmas


def test_a_new_database_is_in_wal_mode_with_synchronous_normal(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = SqliteStateStore.open(path)
    try:
        assert path.exists()
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    finally:
        store.close()
    assert pragma(path, "journal_mode") == "wal"  # persistent: every connection sees it


def test_durability_full_syncs_every_commit(tmp_path: Path) -> None:
    store = SqliteStateStore.open(tmp_path / "t.db", durability="full")
    try:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_an_unknown_durability_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        SqliteStateStore.open(tmp_path / "t.db", durability="paranoid")
    assert info.value.exit_code == 2
    assert not (tmp_path / "t.db").exists()


def test_the_file_is_marked_as_a_treadle_database_of_this_schema(tmp_path: Path) -> None:
    path = make_db(tmp_path / "t.db")
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID
    assert path.read_bytes()[68:72] == APPLICATION_ID.to_bytes(4, "big")  # in the header


def test_the_busy_timeout_follows_the_timeout_argument(tmp_path: Path) -> None:
    store = SqliteStateStore.open(tmp_path / "t.db", timeout=0.25)
    try:
        assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    finally:
        store.close()


# -------------------------------------------------------------------- reopening


def test_reopening_keeps_everything_and_the_log_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = SqliteStateStore.open(path)
    register(store, "one")
    first_ids = [e.id for e in store.events()]
    store.close()

    again = SqliteStateStore.open(path)
    try:
        item = again.get_item("one")
        assert item is not None
        assert (item.data, item.state, item.created_at) == ({"k": "one"}, ItemState.PENDING, NOW)
        assert [s.name for s in again.get_stages("one")] == ["a", "b"]
        assert [e.id for e in again.events()] == first_ids
        register(again, "two")
        ids = [e.id for e in again.events()]
        assert ids[: len(first_ids)] == first_ids
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert pragma(path, "user_version") == SCHEMA_VERSION
    finally:
        again.close()


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    a, b = SqliteStateStore.open(path), SqliteStateStore.open(path)
    try:
        register(a, "from-a")
        assert b.get_item("from-a") is not None
        assert b.last_event_id() == a.last_event_id()
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------- refusing foreign files


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x8f\x00\xff" + bytes(range(256)) * 16, id="random-bytes"),
        pytest.param(b"id,name\n1,alice\n2,bob\n", id="text-file"),
        pytest.param(b"SQLite format 3", id="almost-the-magic"),
    ],
)
@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_sqlite_is_refused_untouched(
    tmp_path: Path,
    content: bytes,
    readonly: bool,
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    err = assert_refused(path, readonly=readonly)
    assert "not a treadle database" in str(err)


def test_random_bytes_are_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "noise.db"
    path.write_bytes(os.urandom(8192))
    assert_refused(path)


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_foreign_sqlite_database_is_refused_untouched(
    tmp_path: Path,
    journal: str,
    readonly: bool,
) -> None:
    path = tmp_path / "other.db"
    conn = raw(path)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('alice')")
    conn.close()

    err = assert_refused(path, readonly=readonly)

    assert "other tables" in str(err)
    conn = raw(path)
    assert conn.execute("SELECT name FROM customers").fetchall() == [("alice",)]
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0
    conn.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_database_from_a_newer_treadle_is_refused_untouched(
    tmp_path: Path,
    readonly: bool,
) -> None:
    path = make_db(tmp_path / "t.db")
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    err = assert_refused(path, readonly=readonly)

    assert "newer" in str(err)
    assert pragma(path, "user_version") == SCHEMA_VERSION + 1


@pytest.mark.parametrize("size", [50, 99, 100, 1024, 4096, 8192])
def test_a_truncated_database_is_refused_untouched(tmp_path: Path, size: int) -> None:
    whole = make_db(tmp_path / "whole.db", items=tuple(f"doc-{i}" for i in range(40)))
    data = whole.read_bytes()
    assert len(data) > size
    path = tmp_path / "cut.db"
    path.write_bytes(data[:size])

    assert_refused(path)


def test_a_folder_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        SqliteStateStore.open(tmp_path)
    assert info.value.exit_code == 4


def test_a_path_in_a_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        SqliteStateStore.open(tmp_path / "no" / "such" / "t.db")
    assert info.value.exit_code == 4
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------- read-only


def test_readonly_on_a_missing_path_creates_nothing_and_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"

    store = SqliteStateStore.open(path, readonly=True)
    try:
        assert store.list_items() == []
        assert store.count_items() == {}
        assert store.stage_counts() == {}
        assert store.pending_reviews() == []
        assert store.events() == []
        assert store.last_event_id() == 0
        assert store.get_item("doc-1") is None
        with pytest.raises(StoreError):  # a read-only store takes no writes, even in memory
            register(store)
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []


def test_readonly_on_an_empty_file_reads_as_empty_and_leaves_it_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    store = SqliteStateStore.open(path, readonly=True)
    try:
        assert store.list_items() == []
    finally:
        store.close()
    assert path.stat().st_size == 0
    assert [p.name for p in tmp_path.iterdir()] == ["empty.db"]


def test_readonly_on_a_version_0_database_reads_as_empty_without_migrating(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v0.db"
    conn = raw(path)
    conn.execute("CREATE TABLE scratch (x)")
    conn.execute("DROP TABLE scratch")  # a real SQLite file, with no tables, version 0
    conn.close()
    before = fingerprint(path)

    store = SqliteStateStore.open(path, readonly=True)
    try:
        assert store.list_items() == []
        assert store.events() == []
    finally:
        store.close()
    assert fingerprint(path) == before
    assert pragma(path, "user_version") == 0


def test_readonly_reads_an_existing_database_and_refuses_writes(tmp_path: Path) -> None:
    path = make_db(tmp_path / "t.db")
    before = fingerprint(path)

    store = SqliteStateStore.open(path, readonly=True)
    try:
        assert [i.id for i in store.list_items()] == ["doc-1"]
        with pytest.raises(StoreError) as info:
            register(store, "doc-2")
        assert info.value.exit_code == 4
        assert isinstance(info.value.__cause__, sqlite3.Error)
        assert [i.id for i in store.list_items()] == ["doc-1"]
    finally:
        store.close()
    assert fingerprint(path)[0] == before[0]


def test_a_read_only_file_is_readable_and_refuses_writes(tmp_path: Path) -> None:
    path = make_db(tmp_path / "t.db")
    path.chmod(0o444)
    try:
        # Root ignores file modes (tests may run as root): then ask for a read-only open,
        # which is what the mode would force on anyone else.
        permissions_hold = not os.access(path, os.W_OK)
        store = SqliteStateStore.open(path, readonly=not permissions_hold)
        try:
            assert [i.id for i in store.list_items()] == ["doc-1"]
            with pytest.raises(StoreError) as info:
                register(store, "doc-2")
            assert info.value.exit_code == 4
            assert isinstance(info.value.__cause__, sqlite3.Error)
            assert [i.id for i in store.list_items()] == ["doc-1"]
        finally:
            store.close()
    finally:
        path.chmod(0o644)
    check = SqliteStateStore.open(path)
    try:
        assert [i.id for i in check.list_items()] == ["doc-1"]
    finally:
        check.close()


# ----------------------------------------------------------------------- locks


def test_a_write_blocked_past_the_timeout_raises_database_locked(tmp_path: Path) -> None:
    path = make_db(tmp_path / "t.db")
    store = SqliteStateStore.open(path, timeout=0.2)
    holder = raw(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        last = store.last_event_id()
        with pytest.raises(DatabaseLockedError) as info:
            register(store, "doc-2")
        assert info.value.exit_code == 4
        assert "locked" in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        # Readers are not blocked in WAL mode, and see nothing of the failed write.
        assert store.get_item("doc-2") is None
        assert store.last_event_id() == last
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    try:
        assert store.get_item("doc-2") is None
        assert store.get_stages("doc-2") == []
        register(store, "doc-2")  # the lock is gone: the same write now succeeds
        assert store.get_item("doc-2") is not None
    finally:
        store.close()


def test_every_kind_of_write_reports_the_lock(tmp_path: Path) -> None:
    path = make_db(tmp_path / "t.db")
    store = SqliteStateStore.open(path, timeout=0.2)
    holder = raw(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseLockedError):
            store.sync_stages("doc-1", ["a"], "p.yaml", "h2", NOW)
        with pytest.raises(DatabaseLockedError):
            store.reset_stage("doc-1", "a", NOW)
        assert [s.name for s in store.get_stages("doc-1")] == ["a", "b"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


def test_creating_a_database_that_another_process_locks_raises_database_locked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    holder = raw(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseLockedError) as info:
            SqliteStateStore.open(path, timeout=0.2)
        assert info.value.exit_code == 4
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert pragma(path, "user_version") == 0  # the failed migration left nothing behind
    store = SqliteStateStore.open(path)
    store.close()
    assert pragma(path, "user_version") == SCHEMA_VERSION


# ------------------------------------------------------------- creation, migrations


def test_an_empty_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    path.touch()

    store = SqliteStateStore.open(path)
    try:
        register(store)
        assert store.get_item("doc-1") is not None
    finally:
        store.close()
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID
    assert pragma(path, "journal_mode") == "wal"


def test_every_schema_version_has_a_migration() -> None:
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


def test_a_version_0_database_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "v0.db"
    conn = raw(path)
    conn.execute("CREATE TABLE scratch (x)")
    conn.execute("DROP TABLE scratch")
    conn.close()
    assert path.stat().st_size > 0
    assert pragma(path, "user_version") == 0

    store = SqliteStateStore.open(path)
    try:
        register(store)
        assert store.get_stages("doc-1")[0].status == StageStatus.PENDING
    finally:
        store.close()
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID
    assert set(PUBLIC_SCHEMA) <= _tables(path)

    # Opening again migrates nothing and loses nothing.
    again = SqliteStateStore.open(path)
    try:
        assert [i.id for i in again.list_items()] == ["doc-1"]
    finally:
        again.close()


def _tables(path: Path) -> set[str]:
    conn = raw(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def _columns(path: Path, table: str) -> list[tuple[str, int]]:
    conn = raw(path)
    try:
        return [(r[1], r[5]) for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


@pytest.mark.parametrize("table", sorted(PUBLIC_SCHEMA))
def test_the_documented_schema_keeps_its_column_names(tmp_path: Path, table: str) -> None:
    path = make_db(tmp_path / "t.db")

    columns = _columns(path, table)

    names = [name for name, _ in columns]
    missing = [c for c in PUBLIC_SCHEMA[table] if c not in names]
    assert missing == [], f"{table} lost documented columns {missing}"
    pk = tuple(name for name, pos in sorted(columns, key=lambda c: c[1]) if pos)
    assert pk == PRIMARY_KEYS[table]


def test_stored_values_are_plain_text_json_and_iso_timestamps(tmp_path: Path) -> None:
    # What users see with sqlite-utils or Datasette: enum values, JSON text, ISO-8601 UTC.
    path = make_db(tmp_path / "t.db")
    conn = raw(path)
    try:
        item = conn.execute("SELECT state, data, created_at FROM items").fetchone()
        stage = conn.execute(
            "SELECT status, active, fanned_out FROM stages WHERE name = 'a'"
        ).fetchone()
        event = conn.execute("SELECT kind, data, ts FROM events").fetchone()
    finally:
        conn.close()
    assert item == ("pending", '{"k":"doc-1"}', "2024-05-01T12:00:00.000000+00:00")
    assert stage == ("pending", 1, 0)
    assert event == (
        "item_registered",
        '{"path":"p.yaml","pipeline":"p"}',
        "2024-05-01T12:00:00.000000+00:00",
    )


# ------------------------------------------------------------- wrapping errors


def test_sqlite_errors_on_reads_become_store_errors(db: SqliteStateStore) -> None:
    register(db)
    saboteur = raw(Path(db.path))
    saboteur.execute("DROP TABLE events")
    saboteur.close()

    with pytest.raises(StoreError) as info:
        db.events()

    assert info.value.exit_code == 4
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert "events" in str(info.value)


def test_a_failing_write_rolls_back_whole_and_becomes_a_store_error(
    db: SqliteStateStore,
) -> None:
    saboteur = raw(Path(db.path))
    saboteur.execute("DROP TABLE events")  # the item and stage rows insert, the event fails
    saboteur.close()

    with pytest.raises(StoreError) as info:
        register(db)

    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert db.get_item("doc-1") is None
    assert db.get_stages("doc-1", include_inactive=True) == []


def test_a_closed_store_raises_store_errors(tmp_path: Path) -> None:
    store = SqliteStateStore.open(tmp_path / "t.db")
    store.close()
    with pytest.raises(StoreError) as read:
        store.get_item("doc-1")
    assert isinstance(read.value.__cause__, sqlite3.Error)
    with pytest.raises(StoreError) as write:
        register(store)
    assert isinstance(write.value.__cause__, sqlite3.Error)
    with pytest.raises(StoreError):
        list(store.iter_items())
    with pytest.raises(StoreError):
        list(store.iter_query("SELECT 1"))


def test_iter_items_streams_every_item_in_creation_order(db: SqliteStateStore) -> None:
    for i in range(5):
        db.register_item(f"doc-{i}", "p" if i % 2 else "q", {}, None, None, ["a"], NOW)
    assert [r.id for r in db.iter_items()] == [f"doc-{i}" for i in range(5)]
    assert [r.id for r in db.iter_items(pipeline="p")] == ["doc-1", "doc-3"]
    assert [r.id for r in db.iter_items(limit=2)] == ["doc-0", "doc-1"]
    assert [r.id for r in db.iter_items()] == [r.id for r in db.list_items()]


@pytest.mark.parametrize("pragma", ["application_id = 1234", "user_version = 7"])
def test_an_empty_database_marked_by_someone_else_is_refused_unchanged(tmp_path, pragma):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA {pragma}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(IncompatibleDatabaseError, match="not a treadle database"):
        SqliteStateStore.open(path)
    assert path.read_bytes() == before
