"""Workers: processes that claim ready stages of any item of their pipelines and run them,
until told to stop (or, with ``until_idle``, until nothing is left to do).

A worker records itself in the ``workers`` table and heartbeats every few seconds; each
heartbeat renews the leases of the stages it runs, so a live worker's stage is never taken
over however long it runs, and a silent one's is taken over once its lease runs out. Time
is the database's clock (:class:`ServerClock`). Claims are fenced by their token: a worker
that was frozen past its lease finds its late result refused and says so.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .engine import Engine
from .errors import ConflictError, IncompatibleDatabaseError, StoreError, UsageError
from .model import (
    Event,
    EventKind,
    StageChange,
    StageRecord,
    StageStatus,
    WorkerRecord,
    utcnow,
)
from .owners import current_owner, owner_is_dead, worker_state
from .store.protocol import StateStore, WorkSpec
from .workflow import Workflow

log = logging.getLogger("treadle.worker")

DEFAULT_LEASE = 30.0
DEFAULT_GRACE = 30.0
DEFAULT_CONCURRENCY = 4
UNFINISHED = ("pending", "running", "awaiting_review", "failed", "rejected")
#: Longest a waiting worker goes without looking, whatever it was told.
MAX_IDLE = 5.0
#: Backoff while the database is unreachable: first and longest pause, in seconds.
BACKOFF = (0.5, 30.0)


class ServerClock:
    """The database's clock: this machine's, corrected by the offset the server reports.

    Leases are written and judged on it, so workers whose machines' clocks disagree still
    agree on when a lease ran out.
    """

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.offset = timedelta(0)

    def sync(self) -> None:
        before = utcnow()
        server = self._store.server_now()
        after = utcnow()
        self.offset = server - (before + (after - before) / 2)

    def now(self) -> datetime:
        return utcnow() + self.offset

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class RetryingStore:
    """A store whose calls wait out an unreachable database instead of failing.

    Every operation is one transaction, so running one again after a failure is safe; a
    finish whose commit landed before the connection broke is refused the second time (its
    claim is spent), which the engine logs.
    """

    def __init__(self, store: StateStore, stopping: Callable[[], bool]) -> None:
        self._store = store
        self._stopping = stopping
        self.location = store.location

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._store, name)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            return patiently(lambda: fn(*args, **kwargs), self._stopping, name)

        return call


def patiently(fn: Callable[[], Any], stopping: Callable[[], bool], what: str) -> Any:
    """``fn()``, run again with backoff while the database is unreachable (not while it is
    incompatible, or once the worker is stopping at once)."""
    pause = BACKOFF[0]
    warned = False
    while True:
        try:
            result = fn()
        except IncompatibleDatabaseError:
            raise
        except StoreError as exc:
            if stopping():
                raise
            log.warning("database unavailable (%s); retrying in %.0fs", exc.message, pause)
            warned = True
            time.sleep(pause)
            pause = min(pause * 2, BACKOFF[1])
            continue
        if warned:
            log.warning("database reachable again; %s resumed", what)
        return result


@dataclass
class WorkerCounts:
    """What a worker did: attempts running now, stages done, failed, waiting on a human."""

    running: int = 0
    done: int = 0
    failed: int = 0
    waiting: int = 0
    taken_over: int = 0

    def line(self) -> str:
        return (
            f"running {self.running} · done {self.done} · failed {self.failed} · "
            f"waiting {self.waiting}"
        )


@dataclass
class WorkerStatus:
    """One row of ``treadle workers``."""

    record: WorkerRecord
    state: str  # alive, stale or stopped
    running: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        from .model import iso

        r = self.record
        return {
            "name": r.name,
            "host": r.host,
            "pid": r.pid,
            "started": iso(r.started_at),
            "heartbeat": iso(r.heartbeat_at),
            "state": self.state,
            "running": self.running,
            "pipelines": r.pipelines or [],
            "concurrency": r.concurrency,
            "lease": r.lease,
            "stopped": iso(r.stopped_at),
        }


def list_workers(store: StateStore) -> list[WorkerStatus]:
    now = store.server_now()
    return [WorkerStatus(rec, worker_state(rec, now), run) for rec, run in store.list_workers()]


def default_name() -> str:
    owner = current_owner()
    return f"{socket.gethostname()}-{owner.pid}"


class Worker:
    """Claims ready stages of its workflows' items and runs up to ``concurrency`` at once.

    ``run()`` returns when :meth:`stop` was called (after running attempts finished within
    the grace period, the rest released) or, with ``until_idle``, when nothing of its
    pipelines is ready or running; its result is the exit code ``treadle worker`` uses.
    """

    def __init__(
        self,
        workflows: Sequence[Workflow],
        store: StateStore,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        name: str | None = None,
        lease: float = DEFAULT_LEASE,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        if lease <= 0:
            raise UsageError("the lease must be a positive number of seconds")
        names: dict[str, Workflow] = {}
        for wf in workflows:
            if wf.name in names and names[wf.name].pipeline.path != wf.pipeline.path:
                raise UsageError(
                    f"two pipeline files are both named {wf.name!r}: "
                    f"{names[wf.name].pipeline.path} and {wf.pipeline.path}",
                    hint="give each pipeline its own name",
                )
            names[wf.name] = wf
        if not names:
            raise UsageError("a worker needs at least one pipeline")
        self.workflows = names
        self.concurrency = concurrency
        self.name = name or default_name()
        self.lease = lease
        self.grace = grace
        self.owner = current_owner()
        self.counts = WorkerCounts()
        self._raw = store
        self._stop = threading.Event()  # stop claiming
        self._abort = threading.Event()  # stop at once
        self._wake = threading.Event()
        self.store: StateStore = RetryingStore(store, self._abort.is_set)
        self.clock = ServerClock(self.store)
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}  # claim -> its thread
        self._engines = {
            n: Engine(
                wf.pipeline,
                self.store,
                self.clock,
                wf.bus,
                lease,
                pool=wf._subtask_pool(),
                renewed=True,
            )
            for n, wf in names.items()
        }
        self.work: WorkSpec = {
            n: {s: list(wf.pipeline.stages[s].needs) for s in wf.pipeline.order}
            for n, wf in names.items()
        }
        self._unsubscribe = [wf.bus.add(self._count) for wf in names.values()]

    @property
    def heartbeat_every(self) -> float:
        return max(0.2, min(5.0, self.lease / 6))

    # ---------------------------------------------------------------- control

    def stop(self) -> None:
        """Stop claiming; running attempts finish within the grace period (thread-safe,
        and safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def abort(self) -> None:
        """Stop at once: release every claim and return."""
        self._stop.set()
        self._abort.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -------------------------------------------------------------------- run

    def run(self, *, until_idle: bool = False, wait: float = 60.0) -> int:
        """Work until stopped (0), or with ``until_idle`` until settled: 0 all done, 1 a stage
        failed or was rejected, 5 waiting on a human."""
        self.clock.sync()
        self._register()
        beat = threading.Thread(target=self._heartbeats, name="treadle-heartbeat", daemon=True)
        beat.start()
        feed = self.store.changes()
        watcher = threading.Thread(
            target=self._watch, args=(feed,), name="treadle-changes", daemon=True
        )
        watcher.start()
        code = 0
        try:
            self._sync_items()
            code = self._loop(until_idle, wait)
        finally:
            self._shutdown()
            feed.close()
            for remove in self._unsubscribe:
                remove()
        return code

    def _register(self) -> None:
        now = self.clock.now()
        for rec, _ in self.store.list_workers():
            if (
                rec.name == self.name
                and rec.owner != self.owner
                and worker_state(rec, now) == "alive"
            ):
                raise ConflictError(
                    f"a worker named {self.name!r} is already running "
                    f"(pid {rec.pid} on {rec.host})",
                    hint="give this one another name, or stop that one first",
                )
        self.store.register_worker(
            WorkerRecord(
                self.name,
                self.owner.host,
                self.owner.pid,
                self.owner.started,
                now,
                now,
                self.lease,
                sorted(self.workflows),
                self.concurrency,
            )
        )

    def _sync_items(self) -> None:
        """Bring items registered with another version of a pipeline file in line with it,
        as advance does when it meets them, so their new stages can be claimed."""
        for name, wf in self.workflows.items():
            p = wf.pipeline
            engine = self._engines[name]
            for rec in self.store.list_items(pipeline=name, states=UNFINISHED):
                if (rec.pipeline_hash, rec.pipeline_path) != (p.hash, p.path):
                    engine.ensure_item(rec.id)

    def _loop(self, until_idle: bool, wait: float) -> int:
        while not self._stop.is_set():
            self._wake.clear()
            if self._free() <= 0:  # every slot busy: a finishing attempt wakes us
                self._wake.wait(MAX_IDLE)
                continue
            if self._claim():
                continue
            now = self.clock.now()
            outlook = self.store.work_outlook(self.work, now)
            with self._lock:
                mine = len(self._threads)
            wake_at = [now + timedelta(seconds=MAX_IDLE)]
            if outlook.next_retry is not None:
                wake_at.append(outlook.next_retry)
            if outlook.next_expiry is not None:
                wake_at.append(outlook.next_expiry)
            if until_idle and not mine and not outlook.running:
                retry = outlook.next_retry
                if retry is None or retry > now + timedelta(seconds=wait):
                    return self._settled_code()
            timeout = max(0.0, (min(wake_at) - now).total_seconds())
            self._wake.wait(min(timeout, MAX_IDLE))
        return 0

    def _free(self) -> int:
        with self._lock:
            return self.concurrency - len(self._threads)

    def _claim(self) -> int:
        free = self._free()
        if free <= 0 or self._stop.is_set():
            return 0
        now = self.clock.now()
        got = self.store.claim_ready(
            self.work,
            owner=self.owner,
            now=now,
            lease_until=now + timedelta(seconds=self.lease),
            limit=free,
            accept=self._accept,
        )
        for c in got:
            wf = self.workflows[c.pipeline]
            with wf.bus.ordered():
                wf.bus.publish(c.events)
            self._start(c.pipeline, c.record)
        return len(got)

    def _accept(self, rec: StageRecord) -> bool:
        if rec.status != StageStatus.RUNNING:
            return True
        dead = owner_is_dead(rec.owner_host, rec.owner_pid, rec.owner_started)
        if dead is None:  # another host: the query already found its lease run out
            return rec.lease_until is not None and rec.lease_until <= self.clock.now()
        return dead

    def _start(self, pipeline: str, rec: StageRecord) -> None:
        assert rec.claim is not None
        t = threading.Thread(
            target=self._run_one,
            args=(pipeline, rec),
            name=f"treadle-stage-{rec.item_id}-{rec.name}",
            daemon=True,
        )
        with self._lock:
            self._threads[rec.claim] = t
            self.counts.running = len(self._threads)
        t.start()

    def _run_one(self, pipeline: str, rec: StageRecord) -> None:
        try:
            self._engines[pipeline].run_claimed(rec)
        except BaseException:  # the engine released the claim; the worker carries on
            if not self._abort.is_set():
                log.exception("%s %s: the attempt could not be completed", rec.item_id, rec.name)
        finally:
            with self._lock:
                self._threads.pop(rec.claim or "", None)
                self.counts.running = len(self._threads)
            self._wake.set()

    def _count(self, ev: Event) -> None:
        k = ev.kind
        with self._lock:
            if k in (EventKind.STAGE_COMPLETED, EventKind.STAGE_SKIPPED):
                self.counts.done += 1
            elif k in (EventKind.STAGE_FAILED, EventKind.SUBTASK_FAILED):
                self.counts.failed += 1
            elif k == EventKind.REVIEW_REQUIRED:
                self.counts.waiting += 1
            elif k == EventKind.STAGE_STARTED and (ev.data or {}).get("previous_owner"):
                self.counts.taken_over += 1

    def _settled_code(self) -> int:
        states: dict[str, int] = {}
        for name in self.workflows:
            for state, n in self.store.count_items(pipeline=name).items():
                states[state] = states.get(state, 0) + n
        if states.get("failed") or states.get("rejected"):
            return 1
        if states.get("awaiting_review"):
            return 5
        return 0

    # ------------------------------------------------------------- background

    def _heartbeats(self) -> None:
        while not self._abort.wait(self.heartbeat_every):
            try:
                self.clock.sync()
                now = self.clock.now()
                self._raw.heartbeat(self.name, self.owner, now, now + timedelta(seconds=self.lease))
            except StoreError as exc:
                log.warning("heartbeat failed (%s); retrying", exc.message)
            except Exception:  # the heartbeat must outlive a bug in one beat
                log.exception("heartbeat failed")

    def _watch(self, feed: Any) -> None:
        while not self._abort.is_set():
            try:
                changed = feed.wait(1.0)
            except Exception:
                time.sleep(1.0)
                changed = True
            if changed:
                self._wake.set()

    # ---------------------------------------------------------------- stopping

    def _shutdown(self) -> None:
        deadline = time.monotonic() + (0 if self._abort.is_set() else self.grace)
        while not self._abort.is_set():
            with self._lock:
                threads = list(self._threads.values())
            if not threads or time.monotonic() >= deadline:
                break
            threads[0].join(min(0.1, max(0.0, deadline - time.monotonic())))
        self._abort.set()  # from here on nothing waits for the database
        try:
            self._release_all()
            self._raw.stop_worker(self.name, self.clock.now())
        except StoreError as exc:
            log.warning(
                "could not release claims (%s); they are taken over when the lease runs out",
                exc.message,
            )

    def _release_all(self) -> None:
        now = self.clock.now()
        for rec in self._raw.held_stages(self.owner):
            if rec.claim is None:
                continue
            wf = self.workflows.get(self._pipeline_of(rec.item_id) or "")
            events = self._raw.finish_stage(
                rec.item_id,
                rec.name,
                claim=rec.claim,
                change=StageChange(StageStatus.PENDING),
                events=[],
                now=now,
            )
            if wf is not None and events:
                wf.bus.publish(events)
            log.info("%s %s: released for another worker", rec.item_id, rec.name)

    def _pipeline_of(self, item_id: str) -> str | None:
        rec = self._raw.get_item(item_id)
        return rec.pipeline if rec else None

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._threads)


@contextmanager
def signals_stop(worker: Worker) -> Iterator[None]:
    """SIGTERM / SIGINT: the first stops claiming, the second stops at once."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        if worker.stopping:
            worker.abort()
        else:
            worker.stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
