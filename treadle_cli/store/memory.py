"""An in-process store: the same behaviour as SQLite, for tests and throwaway runs."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..model import (
    Event,
    ItemRecord,
    ItemState,
    Owner,
    ReviewData,
    StageRecord,
    StageStatus,
    SubtaskRecord,
    SubtaskStatus,
    WorkerRecord,
    utcnow,
)
from .operations import TransactionalStore
from .protocol import ItemSummary, Outlook, WorkSpec

_DONE = (StageStatus.COMPLETED, StageStatus.SKIPPED)


class _MemoryTx:
    """Row primitives over dictionaries; copies out so callers never alias stored rows."""

    def __init__(self, store: MemoryStateStore) -> None:
        self.s = store

    def lock_item(self, item_id: str) -> None:
        pass  # the store's lock is held for the whole transaction

    def get_item(self, item_id: str) -> ItemRecord | None:
        rec = self.s._items.get(item_id)
        return copy.deepcopy(rec) if rec else None

    def insert_item(self, rec: ItemRecord) -> None:
        self.s._items[rec.id] = copy.deepcopy(rec)

    update_item = insert_item

    def get_stage(self, item_id: str, stage: str) -> StageRecord | None:
        rec = self.s._stages.get((item_id, stage))
        return copy.deepcopy(rec) if rec else None

    def list_stages(self, item_id: str, include_inactive: bool) -> list[StageRecord]:
        rows = [copy.deepcopy(r) for (i, _), r in self.s._stages.items() if i == item_id]
        return sorted((r for r in rows if include_inactive or r.active), key=lambda r: r.position)

    def insert_stage(self, rec: StageRecord) -> None:
        self.s._stages[(rec.item_id, rec.name)] = copy.deepcopy(rec)

    update_stage = insert_stage

    def insert_stages(self, recs: list[StageRecord]) -> None:
        for rec in recs:
            self.insert_stage(rec)

    def active_stages(self, item_id: str) -> list[tuple[str, str, datetime | None]]:
        rows = sorted(
            (r for (i, _), r in self.s._stages.items() if i == item_id and r.active),
            key=lambda r: r.position,
        )
        return [(r.name, r.status, r.next_attempt_at) for r in rows]

    def get_subtask(self, item_id: str, stage: str, name: str) -> SubtaskRecord | None:
        rec = self.s._subtasks.get((item_id, stage, name))
        return copy.deepcopy(rec) if rec else None

    def list_subtasks(self, item_id: str, stage: str) -> list[SubtaskRecord]:
        rows = [
            copy.deepcopy(r)
            for (i, st, _), r in self.s._subtasks.items()
            if i == item_id and st == stage
        ]
        return sorted(rows, key=lambda r: r.position)

    def insert_subtask(self, rec: SubtaskRecord) -> None:
        self.s._subtasks[(rec.item_id, rec.stage, rec.name)] = copy.deepcopy(rec)

    update_subtask = insert_subtask

    @staticmethod
    def _cas(rec: Any, where: dict[str, Any], sets: dict[str, Any]) -> bool:
        if rec is None or any(getattr(rec, k) != v for k, v in where.items()):
            return False
        for k, v in sets.items():
            setattr(rec, k, copy.deepcopy(v))
        return True

    def cas_stage(
        self, item_id: str, stage: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        return self._cas(self.s._stages.get((item_id, stage)), where, sets)

    def cas_subtask(
        self, item_id: str, stage: str, name: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        return self._cas(self.s._subtasks.get((item_id, stage, name)), where, sets)

    def stage_claim(self, item_id: str, stage: str) -> tuple[str, str | None] | None:
        rec = self.s._stages.get((item_id, stage))
        return (rec.status, rec.claim) if rec else None

    def set_item_summary(
        self, item_id: str, state: ItemState, progress: float, waiting: str, now: datetime
    ) -> bool:
        rec = self.s._items.get(item_id)
        if rec is None or (rec.state, rec.progress, rec.waiting_on) == (state, progress, waiting):
            return False
        rec.state, rec.progress, rec.waiting_on, rec.updated_at = state, progress, waiting, now
        return True

    def ready_stages(
        self, work: WorkSpec, now: datetime, host: str, limit: int
    ) -> list[tuple[str, StageRecord]]:
        out: list[tuple[ItemRecord, StageRecord]] = []
        for (item_id, name), rec in self.s._stages.items():
            item = self.s._items[item_id]
            needs = work.get(item.pipeline, {}).get(name)
            if needs is None or not rec.active:
                continue
            if rec.status == StageStatus.PENDING:
                due = rec.next_attempt_at is None or rec.next_attempt_at <= now
            elif rec.status == StageStatus.RUNNING:
                lapsed = rec.lease_until is not None and rec.lease_until <= now
                due = lapsed or rec.owner_host == host
            else:
                continue
            blocked = any(
                (d := self.s._stages.get((item_id, n))) is not None
                and d.active
                and d.status not in _DONE
                for n in needs
            )
            if due and not blocked:
                out.append((item, rec))
        out.sort(key=lambda p: (p[0].created_at, p[0].id, p[1].position))
        return [(item.pipeline, copy.deepcopy(rec)) for item, rec in out[:limit]]

    def insert_event(self, ev: Event) -> Event:
        stored = replace(ev, id=len(self.s._events) + 1, data=copy.deepcopy(ev.data))
        self.s._events.append(stored)
        return copy.deepcopy(stored)

    def insert_decision(self, rev: ReviewData) -> ReviewData:
        stored = replace(rev, id=len(self.s._decisions) + 1, output=copy.deepcopy(rev.output))
        self.s._decisions.append(stored)
        return copy.deepcopy(stored)

    def last_decision(self, item_id: str, stage: str, subtask: str | None) -> ReviewData | None:
        for d in reversed(self.s._decisions):
            if (d.item_id, d.stage, d.subtask) == (item_id, stage, subtask):
                return copy.deepcopy(d)
        return None


class MemoryStateStore(TransactionalStore):
    """Keeps everything in dictionaries; nothing survives the process."""

    location = ":memory:"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._items: dict[str, ItemRecord] = {}
        self._stages: dict[tuple[str, str], StageRecord] = {}
        self._subtasks: dict[tuple[str, str, str], SubtaskRecord] = {}
        self._events: list[Event] = []
        self._decisions: list[ReviewData] = []
        self._workers: dict[str, WorkerRecord] = {}

    @contextmanager
    def _tx(self) -> Iterator[_MemoryTx]:
        # Operations check before they write, so a lock is all atomicity needs here.
        with self._lock:
            yield _MemoryTx(self)

    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._tx() as tx:
            return tx.get_item(item_id)

    def get_stages(self, item_id: str, *, include_inactive: bool = False) -> list[StageRecord]:
        with self._tx() as tx:
            return tx.list_stages(item_id, include_inactive)

    def get_subtasks(self, item_id: str, stage: str | None = None) -> list[SubtaskRecord]:
        with self._lock:
            rows = [
                copy.deepcopy(r)
                for (i, st, _), r in self._subtasks.items()
                if i == item_id and (stage is None or st == stage)
            ]
            order = {s.name: s.position for s in self._stages.values() if s.item_id == item_id}
            return sorted(rows, key=lambda r: (order.get(r.stage, 0), r.position))

    def last_decision(
        self, item_id: str, stage: str, subtask: str | None = None
    ) -> ReviewData | None:
        with self._tx() as tx:
            return tx.last_decision(item_id, stage, subtask)

    def decisions(self, item_id: str) -> list[ReviewData]:
        with self._lock:
            return [copy.deepcopy(d) for d in self._decisions if d.item_id == item_id]

    def events(
        self, *, after: int = 0, item_id: str | None = None, limit: int | None = None
    ) -> list[Event]:
        with self._lock:
            rows = [e for e in self._events[after:] if item_id is None or e.item_id == item_id]
            return copy.deepcopy(rows[:limit] if limit is not None else rows)

    def last_event_id(self) -> int:
        with self._lock:
            return len(self._events)

    def _matching(self, pipeline: str | None, states: Sequence[str] | None) -> list[ItemRecord]:
        return [
            r
            for r in self._items.values()
            if (pipeline is None or r.pipeline == pipeline) and (not states or r.state in states)
        ]

    def list_items(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ItemRecord]:
        with self._lock:
            rows = sorted(self._matching(pipeline, states), key=lambda r: (r.created_at, r.id))
            end = None if limit is None else offset + limit
            return [copy.deepcopy(r) for r in rows[offset:end]]

    def iter_summaries(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ItemSummary]:
        from ..model import iso

        for r in self.list_items(pipeline=pipeline, states=states, limit=limit):
            yield ItemSummary(
                r.id, r.pipeline, r.state.value, r.progress, r.waiting_on, iso(r.updated_at) or ""
            )

    def count_items(
        self, *, pipeline: str | None = None, states: Sequence[str] | None = None
    ) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for r in self._matching(pipeline, states):
                counts[r.state] = counts.get(r.state, 0) + 1
            return counts

    def stage_counts(self, *, pipeline: str | None = None) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for rec in self._stages.values():
                item = self._items[rec.item_id]
                if not rec.active or (pipeline is not None and item.pipeline != pipeline):
                    continue
                per = out.setdefault(rec.name, {})
                per[rec.status] = per.get(rec.status, 0) + 1
            return out

    def pending_reviews(self, *, pipeline: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            out: list[dict[str, Any]] = []
            for rec in self._stages.values():
                item = self._items[rec.item_id]
                if pipeline is not None and item.pipeline != pipeline:
                    continue
                if (
                    rec.active
                    and rec.status == StageStatus.AWAITING_REVIEW
                    and rec.review_prompt is not None
                ):
                    out.append(_review_row(rec, None))
            for sub in self._subtasks.values():
                item = self._items[sub.item_id]
                if pipeline is not None and item.pipeline != pipeline:
                    continue
                parent = self._stages.get((sub.item_id, sub.stage))
                # A removed stage's subtasks are history, not an inbox entry (like the stage).
                if sub.status == SubtaskStatus.AWAITING_REVIEW and parent and parent.active:
                    out.append(_review_row(sub, sub.name))
            return sorted(out, key=lambda r: (r["requested_at"] or "", r["item"]))

    # ----------------------------------------------------------------- workers

    def work_outlook(self, work: WorkSpec, now: datetime) -> Outlook:
        with self._lock:
            rows = [
                r
                for r in self._stages.values()
                if r.active and self._items[r.item_id].pipeline in work
            ]
            retries = [
                r.next_attempt_at
                for r in rows
                if r.status == StageStatus.PENDING and r.next_attempt_at is not None
            ]
            running = [r for r in rows if r.status == StageStatus.RUNNING]
            leases = [r.lease_until for r in running if r.lease_until is not None]
            return Outlook(len(running), min(retries, default=None), min(leases, default=None))

    def held_stages(self, owner: Owner) -> list[StageRecord]:
        with self._lock:
            return [
                copy.deepcopy(r)
                for r in self._stages.values()
                if r.status == StageStatus.RUNNING
                and (r.owner_host, r.owner_pid, r.owner_started)
                == (owner.host, owner.pid, owner.started)
            ]

    def register_worker(self, rec: WorkerRecord) -> None:
        with self._lock:
            self._workers[rec.name] = copy.deepcopy(rec)

    def heartbeat(self, name: str, owner: Owner, now: datetime, lease_until: datetime) -> int:
        with self._lock:
            if name in self._workers:
                self._workers[name].heartbeat_at = now
            held = [
                r
                for r in self._stages.values()
                if r.status == StageStatus.RUNNING
                and (r.owner_host, r.owner_pid, r.owner_started)
                == (owner.host, owner.pid, owner.started)
            ]
            for r in held:
                r.lease_until = lease_until
            return len(held)

    def stop_worker(self, name: str, now: datetime) -> None:
        with self._lock:
            if name in self._workers:
                self._workers[name].stopped_at = self._workers[name].heartbeat_at = now

    def list_workers(self) -> list[tuple[WorkerRecord, list[str]]]:
        with self._lock:
            out = []
            for w in sorted(self._workers.values(), key=lambda w: (w.started_at, w.name)):
                running = []
                for r in sorted(self.held_stages(w.owner), key=lambda r: (r.item_id, r.position)):
                    subs = [
                        s.name
                        for s in self.get_subtasks(r.item_id, r.name)
                        if s.status == SubtaskStatus.RUNNING
                    ]
                    running += [f"{r.item_id} {r.name}/{s}" for s in subs] or [
                        f"{r.item_id} {r.name}"
                    ]
                out.append((copy.deepcopy(w), running))
            return out

    def server_now(self) -> datetime:
        return utcnow()

    def changes(self) -> _EventFeed:
        return _EventFeed(self)

    def close(self) -> None:
        pass


class _EventFeed:
    """Notices new events of an in-process store (for engine tests)."""

    def __init__(self, store: MemoryStateStore) -> None:
        self._store = store
        self._last = store.last_event_id()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            last = self._store.last_event_id()
            if last != self._last:
                self._last = last
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.02, left))

    def close(self) -> None:
        pass


def _review_row(rec: StageRecord | SubtaskRecord, subtask: str | None) -> dict[str, Any]:
    from ..model import iso

    stage = rec.stage if isinstance(rec, SubtaskRecord) else rec.name
    return {
        "item": rec.item_id,
        "stage": stage,
        "subtask": subtask,
        "prompt": rec.review_prompt,
        "data": rec.review_data,
        "requested_at": iso(rec.requested_at),
    }
