"""What only the PostgreSQL store must get right: its schema, refusals, errors, the event
log's order under concurrent writers, and races between processes on different machines.

Every test runs against a real server (the ``pg_url`` fixture: a fresh database each).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from treadle_cli.errors import (
    ConflictError,
    DatabaseLockedError,
    IncompatibleDatabaseError,
    StoreError,
    UsageError,
)
from treadle_cli.model import DecisionKind, Event, EventKind, ReviewData, StageChange, StageStatus
from treadle_cli.store import PostgresStateStore, database_exists, display_target
from treadle_cli.store import open_store as _open_store
from treadle_cli.store.operations import MAX_TRIES, RetryTransaction, atomic
from treadle_cli.store.postgres import NoSchemaYet, redact

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_opened: list[Any] = []


def open_store(target: str, **kw: Any) -> Any:
    """Open a store that is closed when the test ends (a pool left to the garbage
    collector is closed from whichever thread collects it)."""
    store = _open_store(target, **kw)
    _opened.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_stores() -> Any:
    yield
    while _opened:
        _opened.pop().close()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def schema_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regnamespace('treadle') IS NOT NULL").fetchone()[0]


def register(store: Any, item_id: str = "doc-1", stages: tuple[str, ...] = ("a", "b")) -> None:
    store.register_item(item_id, "p", {"k": 1}, None, None, list(stages), at(0))


def awaiting_review(store: Any, item_id: str = "doc-1") -> None:
    """Bring stage ``a`` of ``item_id`` to awaiting_review through the protocol."""
    register(store, item_id)
    rec = store.get_stages(item_id)[0]
    got = store.claim_stage(
        item_id, "a", expected=rec, claim="c", owner=_owner(), now=at(1), lease_until=None
    )
    assert got is not None
    change = StageChange(StageStatus.AWAITING_REVIEW, review_prompt="ok?", review_data={"x": 1})
    done = store.finish_stage(item_id, "a", claim="c", change=change, events=[], now=at(2))
    assert done is not None


def _owner() -> Any:
    from treadle_cli.model import Owner

    return Owner("host-a", 1, "boot")


def approval(by: str = "alice") -> ReviewData:
    return ReviewData(DecisionKind.APPROVED, by=by, at=at(3))


# ------------------------------------------------------------------- the schema


def test_first_write_creates_the_versioned_schema_readable_with_sql(pg_url: str) -> None:
    store = open_store(pg_url)
    register(store)
    store.close()
    with psycopg.connect(pg_url) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'treadle'"
            )
        }
        assert tables == {"meta", "items", "stages", "subtasks", "decisions", "events", "workers"}
        version = conn.execute(
            "SELECT value FROM treadle.meta WHERE key = 'schema_version'"
        ).fetchone()
        assert version == ("2",)
        row = conn.execute(
            "SELECT id, pipeline, data->>'k', state, created_at FROM treadle.items"
        ).fetchone()
        assert row[:4] == ("doc-1", "p", "1", "pending")
        assert row[4] == at(0)
        names = conn.execute(
            "SELECT name, status, active FROM treadle.stages ORDER BY position"
        ).fetchall()
        assert names == [("a", "pending", True), ("b", "pending", True)]


def test_read_only_open_creates_nothing_and_reads_as_empty(pg_url: str) -> None:
    store = open_store(pg_url, readonly=True)
    assert isinstance(store, NoSchemaYet)
    assert store.get_item("doc-1") is None
    assert store.count_items() == {}
    assert list(store.iter_summaries()) == []
    assert store.last_event_id() == 0
    with pytest.raises(StoreError, match="read-only"):
        register(store)
    assert not schema_exists(pg_url)
    assert not database_exists(pg_url)


def test_a_read_only_store_refuses_writes_once_the_schema_exists(pg_url: str) -> None:
    register(open_store(pg_url))
    ro = open_store(pg_url, readonly=True)
    assert isinstance(ro, PostgresStateStore)
    assert ro.get_item("doc-1") is not None
    with pytest.raises(StoreError, match="read-only"):
        register(ro, "doc-2")
    assert open_store(pg_url).get_item("doc-2") is None


def test_a_newer_schema_is_refused_without_a_write(pg_url: str) -> None:
    register(open_store(pg_url))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE treadle.meta SET value = '99' WHERE key = 'schema_version'")
        before = conn.execute("SELECT count(*) FROM treadle.events").fetchone()
    for readonly in (False, True):
        with pytest.raises(IncompatibleDatabaseError, match="newer treadle") as info:
            open_store(pg_url, readonly=readonly)
        assert info.value.exit_code == 4
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM treadle.events").fetchone() == before
        assert conn.execute("SELECT value FROM treadle.meta").fetchone() == ("99",)


def test_a_foreign_schema_named_treadle_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA treadle")
        conn.execute("CREATE TABLE treadle.accounts (id int)")
    with pytest.raises(IncompatibleDatabaseError, match="not a treadle database"):
        open_store(pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('treadle.meta')").fetchone() == (None,)


def test_an_empty_schema_named_treadle_is_adopted(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA treadle")
    register(open_store(pg_url))
    assert open_store(pg_url).get_item("doc-1") is not None


def test_two_processes_creating_the_schema_at_once_both_succeed(pg_url: str) -> None:
    errors: list[BaseException] = []

    def first_write(n: int) -> None:
        try:
            register(open_store(pg_url), f"doc-{n}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert open_store(pg_url).count_items() == {"pending": 4}


# -------------------------------------------------------------------- errors


def test_wrong_password_is_exit_4_naming_host_and_database_never_the_password(
    pg_cluster: Any,
) -> None:
    url = pg_cluster.url("postgres").replace(pg_cluster.password, "not-the-Secret-42")
    with pytest.raises(StoreError) as info:
        open_store(url)
    err = info.value
    assert err.exit_code == 4
    text = str(err)
    assert "not-the-Secret-42" not in text and "not-the-Secret-42" not in (err.path or "")
    assert f"{pg_cluster.host}:{pg_cluster.port}" in text and "postgres" in text
    assert "refused the login" in text
    assert "\n" not in text


def test_server_down_is_exit_4_naming_host_and_database(pg_cluster: Any) -> None:
    with pytest.raises(StoreError) as info:
        open_store("postgresql://u:Secret-pw-1@127.0.0.1:1/somedb", timeout=2)
    text = str(info.value)
    assert info.value.exit_code == 4
    assert "127.0.0.1:1" in text and "somedb" in text and "Secret-pw-1" not in text
    assert "\n" not in text


def test_missing_database_is_exit_4_saying_how_to_create_it(pg_cluster: Any) -> None:
    url = pg_cluster.url("no_such_db")
    with pytest.raises(StoreError, match="createdb no_such_db") as info:
        open_store(url)
    assert info.value.exit_code == 4
    assert pg_cluster.password not in str(info.value)


def test_a_malformed_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="bad PostgreSQL URL"):
        open_store("postgresql://a b")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://bob:hunter2@db.example:5432/app",
            "postgresql://bob:***@db.example:5432/app",
        ),
        ("postgres://bob@db/app", "postgres://bob@db/app"),
        (
            "postgresql://db/app?password=hunter2&sslmode=require",
            "postgresql://db/app?password=***&sslmode=require",
        ),
        ("postgresql://bob:p%40ss@db/app", "postgresql://bob:***@db/app"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert display_target(url) == shown


def test_a_row_lock_held_past_the_timeout_is_exit_4_and_changes_nothing(pg_url: str) -> None:
    store = open_store(pg_url)
    awaiting_review(store)
    quick = open_store(pg_url, timeout=0.5)
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM treadle.items WHERE id = 'doc-1' FOR UPDATE")
        t0 = time.monotonic()
        with pytest.raises(DatabaseLockedError, match="locked") as info:
            quick.decide("doc-1", "a", None, approval(), at(3))
        assert time.monotonic() - t0 < 5
        assert info.value.exit_code == 4
    assert store.get_stages("doc-1")[0].status == StageStatus.AWAITING_REVIEW
    assert store.decisions("doc-1") == []


def test_text_with_nul_characters_is_stored_not_refused(pg_url: str) -> None:
    store = open_store(pg_url)
    awaiting_review(store)
    rev = ReviewData(DecisionKind.REJECTED, by="mal\x00lory", at=at(3), reason="bad\x00byte")
    changed, _ = store.decide("doc-1", "a", None, rev, at(3))
    assert changed
    got = store.decisions("doc-1")[0]
    assert got.by == "mal\ufffdlory" and got.reason == "bad\ufffdbyte"


# ------------------------------------------------------- races between processes


def test_two_processes_deciding_one_review_record_one_decision(pg_url: str) -> None:
    awaiting_review(open_store(pg_url))
    stores = [open_store(pg_url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    results: list[Any] = []

    def decide(store: Any, n: int) -> None:
        barrier.wait()
        try:
            results.append(store.decide("doc-1", "a", None, approval(f"user{n}"), at(3)))
        except ConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=decide, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    changed = [r for r in results if isinstance(r, tuple) and r[0]]
    assert len(changed) == 1
    assert len(open_store(pg_url).decisions("doc-1")) == 1
    assert open_store(pg_url).get_stages("doc-1")[0].status == StageStatus.COMPLETED


def test_two_processes_registering_one_item_both_see_it_once(pg_url: str) -> None:
    open_store(pg_url).close()  # the schema exists; the race is on the item alone
    stores = [open_store(pg_url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    got: list[Any] = []

    def reg(store: Any) -> None:
        barrier.wait()
        got.append(store.register_item("doc-1", "p", {}, None, None, ["a"], at(0)))

    threads = [threading.Thread(target=reg, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6
    assert sum(1 for _, events in got if events) == 1
    registered = [e for e in open_store(pg_url).events() if e.kind == EventKind.ITEM_REGISTERED]
    assert len(registered) == 1


def test_only_one_of_many_processes_claims_a_stage(pg_url: str) -> None:
    register(open_store(pg_url))
    stores = [open_store(pg_url) for _ in range(6)]
    rec = stores[0].get_stages("doc-1")[0]
    barrier = threading.Barrier(len(stores))
    won: list[Any] = []

    def claim(store: Any, n: int) -> None:
        barrier.wait()
        got = store.claim_stage(
            "doc-1", "a", expected=rec, claim=f"c{n}", owner=_owner(), now=at(1), lease_until=None
        )
        if got is not None:
            won.append(got)

    threads = [threading.Thread(target=claim, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert open_store(pg_url).get_stages("doc-1")[0].attempts == 1


def test_a_follower_never_skips_an_event_committed_out_of_id_order(pg_url: str) -> None:
    """A transaction that took an event id first but commits last must not be skipped by
    a follower reading ``id > last seen``: ids are handed out in commit order."""
    store = open_store(pg_url)
    for n in range(3):
        register(store, f"doc-{n}")
    start = store.last_event_id()
    slow_has_id = threading.Event()

    def slow_writer() -> None:
        with store._tx() as tx:  # one transaction, held open after its event has an id
            tx.lock_item("doc-0")
            tx.insert_event(Event(EventKind.STAGE_RESET, "doc-0", "a", ts=at(5)))
            slow_has_id.set()
            time.sleep(1.0)

    def fast_writer() -> None:
        slow_has_id.wait()
        other = open_store(pg_url)
        for n in (1, 2):
            with other._tx() as tx:
                tx.lock_item(f"doc-{n}")
                tx.insert_event(Event(EventKind.STAGE_RESET, f"doc-{n}", "a", ts=at(6)))

    seen: list[int] = []
    stop = threading.Event()

    def follower() -> None:
        reader = open_store(pg_url, readonly=True)
        cursor = start
        while not stop.is_set():
            for ev in reader.events(after=cursor):
                seen.append(ev.id or 0)
                cursor = ev.id or cursor
            time.sleep(0.01)
        for ev in reader.events(after=cursor):
            seen.append(ev.id or 0)

    threads = [threading.Thread(target=f) for f in (slow_writer, fast_writer, follower)]
    for t in threads:
        t.start()
    threads[0].join()
    threads[1].join()
    time.sleep(0.2)
    stop.set()
    threads[2].join()
    every = [e.id for e in store.events(after=start)]
    assert len(every) == 3
    assert seen == every  # each once, none skipped, in increasing order


def test_concurrent_writers_leave_a_gap_free_log_for_a_follower(pg_url: str) -> None:
    """Many writers on many items; a follower polling ``events(after=cursor)`` sees exactly
    the committed log, each event once, ids increasing."""
    open_store(pg_url).close()
    writers, per_writer = 6, 15
    seen: list[int] = []
    stop = threading.Event()

    def write(n: int) -> None:
        s = open_store(pg_url)
        for i in range(per_writer):
            register(s, f"w{n}-{i}")

    def follow() -> None:
        reader = open_store(pg_url, readonly=True)
        cursor = 0
        while True:
            done = stop.is_set()
            for ev in reader.events(after=cursor):
                seen.append(ev.id or 0)
                cursor = ev.id or cursor
            if done:
                return
            time.sleep(0.002)

    f = threading.Thread(target=follow)
    f.start()
    ws = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    f.join()
    every = [e.id for e in open_store(pg_url).events()]
    assert len(every) == writers * per_writer
    assert seen == every


# --------------------------------------------------------------- lost races


class _Flaky:
    def __init__(self, losses: int) -> None:
        self.losses = losses
        self.calls = 0

    def _gave_up(self, error: Exception) -> Exception:
        return StoreError(f"gave up: {error}")

    @atomic
    def op(self) -> str:
        self.calls += 1
        if self.calls <= self.losses:
            raise RetryTransaction(RuntimeError("serialization failure"))
        return "done"


def test_an_operation_that_lost_a_race_runs_again() -> None:
    flaky = _Flaky(3)
    assert flaky.op() == "done"
    assert flaky.calls == 4


def test_an_operation_that_keeps_losing_gives_up_with_a_store_error() -> None:
    flaky = _Flaky(MAX_TRIES + 5)
    with pytest.raises(StoreError, match="gave up"):
        flaky.op()
    assert flaky.calls == MAX_TRIES


def test_in_process_subscribers_see_every_event_in_log_order(pg_url: str) -> None:
    """Threads advancing items at once through one PostgreSQL store: a subscriber gets each
    committed event exactly once, in the order of the log."""
    from concurrent.futures import ThreadPoolExecutor

    from treadle_cli import StageOutcome, SubTask, Workflow

    def fan(item: Any, ctx: Any) -> Any:
        if ctx.subtask is None:
            return StageOutcome.fan_out([SubTask(f"s{i}") for i in range(4)])
        return {"s": ctx.subtask}

    wf = (
        Workflow.builder("sub")
        .stage("a", lambda item, ctx: {"a": 1})
        .stage("b", fan, needs="a", concurrency=3)
        .stage("c", lambda item, ctx: None, needs="b")
        .build()
    )
    store = open_store(pg_url)
    sub = wf.subscribe()
    with ThreadPoolExecutor(4) as pool:
        states = list(pool.map(lambda n: wf.advance(f"doc-{n}", store).state, range(12)))
    assert set(states) == {"completed"}
    got = [e.id for e in sub.drain()]
    assert got == [e.id for e in store.events()]
    assert got == sorted(got) and len(got) == len(set(got))


def test_a_connection_the_server_dropped_fails_one_call_cleanly_then_recovers(
    pg_url: str, pg_cluster: Any
) -> None:
    store = open_store(pg_url)
    awaiting_review(store)
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.admin_url("postgres"), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'treadle'",
            (dbname,),
        )
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(store.decide("doc-1", "a", None, approval(), at(3)))
        except StoreError as exc:
            assert exc.exit_code == 4 and "\n" not in str(exc)
            outcomes.append(exc)
    assert any(isinstance(o, tuple) and o[0] for o in outcomes)
    assert len(store.decisions("doc-1")) == 1
