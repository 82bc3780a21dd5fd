"""Every transition, written once over the row primitives of :class:`~.protocol.Tx`.

A store speaks in atomic operations: register an item, claim a stage, finish it, record a
decision, reset a stage. Each operation is one transaction that first locks its item's row,
and the events it appends are written in that same transaction, so the log and the state
never disagree. A backend whose transactions can lose a race (a serialization failure, a
deadlock, two processes registering one item) raises :class:`RetryTransaction` and the
operation runs again from the start; nothing of the lost attempt was committed.
Decisions and resets are in :mod:`.reviews`, what both build on in :mod:`.transactions`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..errors import UnknownItemError
from ..model import (
    DONE_STATUSES,
    Event,
    EventKind,
    ItemRecord,
    ItemState,
    Owner,
    StageChange,
    StageRecord,
    StageStatus,
    SubTask,
    SubtaskChange,
    SubtaskRecord,
    SubtaskStatus,
    check_transition,
)
from .protocol import ClaimRequest, EventSpec, ReadyClaim, Tx, WorkSpec
from .reviews import ReviewOperations
from .transactions import (  # noqa: F401  (re-exported: backends and tests use them from here)
    CLAIM_FIELDS,
    MAX_TRIES,
    RetryTransaction,
    atomic,
    change_sets,
)


class TransactionalStore(ReviewOperations):
    """The atomic operations, written once over :class:`Tx` primitives."""

    # -------------------------------------------------------------- operations

    @atomic
    def register_item(
        self,
        item_id: str,
        pipeline: str,
        data: Any,
        path: str | None,
        pipeline_hash: str | None,
        stages: Sequence[str],
        now: datetime,
        durability: str | None = None,
    ) -> tuple[ItemRecord, list[Event]]:
        """Create the item with every stage pending; an existing item is returned untouched."""
        with self._tx() as tx:
            tx.lock_item(item_id)
            existing = tx.get_item(item_id)
            if existing is not None:
                return existing, []
            rec = ItemRecord(
                item_id,
                pipeline,
                data,
                path,
                pipeline_hash,
                ItemState.PENDING,
                0.0,
                now,
                now,
                durability=durability,
            )
            tx.insert_item(rec)
            tx.insert_stages(
                [
                    StageRecord(item_id, n, StageStatus.PENDING, i, updated_at=now)
                    for i, n in enumerate(stages)
                ]
            )
            out = [
                self._event(
                    tx,
                    EventKind.ITEM_REGISTERED,
                    item_id,
                    None,
                    None,
                    {"pipeline": pipeline, "path": path},
                    now,
                )
            ]
            self._refresh_item(tx, item_id, now, out)
            # Return the row as stored: refreshing may have changed it (no stages: completed).
            return (rec if stages else tx.get_item(item_id) or rec), out

    @atomic
    def sync_stages(
        self,
        item_id: str,
        stages: Sequence[str],
        path: str | None,
        pipeline_hash: str | None,
        now: datetime,
        durability: str | None = None,
    ) -> list[Event]:
        """Match the item's stage rows to a (changed) pipeline: add new, deactivate removed."""
        with self._tx() as tx:
            tx.lock_item(item_id)
            item = tx.get_item(item_id)
            if item is None:
                raise UnknownItemError(item_id)
            wanted = {name: i for i, name in enumerate(stages)}
            for rec in tx.list_stages(item_id, True):
                active, position = rec.name in wanted, wanted.get(rec.name, rec.position)
                if (rec.active, rec.position) != (active, position):
                    rec.active, rec.position = active, position
                    tx.update_stage(rec)
                wanted.pop(rec.name, None)
            for name, i in wanted.items():
                tx.insert_stage(StageRecord(item_id, name, StageStatus.PENDING, i, updated_at=now))
            if (item.pipeline_path, item.pipeline_hash, item.durability) != (
                path,
                pipeline_hash,
                durability,
            ):
                item.pipeline_path, item.pipeline_hash, item.updated_at = path, pipeline_hash, now
                item.durability = durability
                tx.update_item(item)
            out: list[Event] = []
            self._refresh_item(tx, item_id, now, out)
            return out

    def _claim_in(
        self,
        tx: Tx,
        item_id: str,
        stage: str,
        request: ClaimRequest,
        now: datetime,
        out: list[Event],
    ) -> StageRecord | None:
        expected, owner = request.expected, request.owner
        check_transition("stage", expected.status, StageStatus.RUNNING)
        rec = replace(expected, item_id=item_id, name=stage)
        takeover = rec.status == StageStatus.RUNNING
        previous = {"previous_owner": f"{rec.owner_host}:{rec.owner_pid}"} if takeover else {}
        if not rec.fanned_out:
            rec.attempts += 1
        rec.status, rec.claim = StageStatus.RUNNING, request.claim
        rec.owner_host, rec.owner_pid, rec.owner_started = owner.host, owner.pid, owner.started
        rec.lease_until, rec.started_at, rec.updated_at = request.lease_until, now, now
        rec.next_attempt_at = None
        sets = {
            "status": rec.status,
            "claim": request.claim,
            "owner_host": owner.host,
            "owner_pid": owner.pid,
            "owner_started": owner.started,
            "lease_until": request.lease_until,
            "started_at": now,
            "updated_at": now,
            "next_attempt_at": None,
            "attempts": rec.attempts,
        }
        # The lease too: a heartbeat that renewed it since the read means its owner lives.
        where = {
            "status": expected.status,
            "claim": expected.claim,
            "updated_at": expected.updated_at,
            "lease_until": expected.lease_until,
        }
        if not tx.cas_stage(rec.item_id, rec.name, where, sets):
            return None
        data = {
            "attempt": rec.attempts - rec.attempt_base,
            "owner": f"{owner.host}:{owner.pid}",
            **previous,
        }
        out.append(self._event(tx, EventKind.STAGE_STARTED, rec.item_id, rec.name, None, data, now))
        return rec

    @atomic
    def claim_stage(
        self,
        item_id: str,
        stage: str,
        *,
        expected: StageRecord,
        claim: str,
        owner: Owner,
        now: datetime,
        lease_until: datetime | None,
    ) -> tuple[StageRecord, list[Event]] | None:
        """Compare-and-set ``expected`` to running under ``claim``; None if the row moved on.

        The row must still match ``expected``'s status, claim and ``updated_at``, so a stale
        read can never claim a stage that changed since (even back to the same status).
        """
        request = ClaimRequest(expected, claim, owner, lease_until)
        with self._tx() as tx:
            tx.lock_item(item_id)
            out: list[Event] = []
            rec = self._claim_in(tx, item_id, stage, request, now, out)
            if rec is None:
                return None
            self._refresh_item(tx, item_id, now, out)
            return rec, out

    @atomic
    def claim_ready(
        self,
        work: WorkSpec,
        *,
        owner: Owner,
        now: datetime,
        lease_until: datetime,
        limit: int,
        accept: Callable[[StageRecord], bool],
    ) -> list[ReadyClaim]:
        """Claim up to ``limit`` ready stages across items, in one transaction."""
        with self._tx() as tx:
            # Room for rows ``accept`` turns down (stages live processes here are running).
            rows = tx.ready_stages(work, now, owner.host, 2 * limit + 8)
            out: list[ReadyClaim] = []
            touched: dict[str, list[Event]] = {}
            for pipeline, rec in rows:
                if len(out) == limit:
                    break
                if not accept(rec):
                    continue
                events: list[Event] = []
                request = ClaimRequest(rec, uuid.uuid4().hex, owner, lease_until)
                claimed = self._claim_in(tx, rec.item_id, rec.name, request, now, events)
                if claimed is None:
                    continue
                touched[rec.item_id] = events  # the item's refresh events follow its last claim
                out.append(ReadyClaim(pipeline, claimed, events))
            for item_id, events in touched.items():
                self._refresh_item(tx, item_id, now, events)
            return out

    def _finish_in(
        self,
        tx: Tx,
        item_id: str,
        stage: str,
        claim: str,
        change: StageChange,
        events: Sequence[EventSpec],
        now: datetime,
    ) -> list[Event] | None:
        check_transition("stage", StageStatus.RUNNING, change.status)
        sets = change_sets(change)
        sets.update(dict.fromkeys(CLAIM_FIELDS), updated_at=now)
        if change.status == StageStatus.AWAITING_REVIEW:
            sets["requested_at"] = now
        if change.status != StageStatus.PENDING:
            sets["finished_at"] = now
        if not tx.cas_stage(item_id, stage, {"status": StageStatus.RUNNING, "claim": claim}, sets):
            return None
        return [self._event(tx, kind, item_id, stage, sub, data, now) for kind, sub, data in events]

    @atomic
    def finish_stage(
        self,
        item_id: str,
        stage: str,
        *,
        claim: str,
        change: StageChange,
        events: Sequence[EventSpec],
        now: datetime,
    ) -> list[Event] | None:
        """Write the result of a run we still hold; ``None`` if our claim was taken over."""
        with self._tx() as tx:
            tx.lock_item(item_id)
            out = self._finish_in(tx, item_id, stage, claim, change, events, now)
            if out is not None:
                self._refresh_item(tx, item_id, now, out)
            return out

    @atomic
    def finish_and_claim(
        self,
        item_id: str,
        stage: str,
        *,
        claim: str,
        change: StageChange,
        events: Sequence[EventSpec],
        now: datetime,
        then: ClaimRequest,
    ) -> tuple[list[Event], StageRecord | None] | None:
        """Finish ``stage`` and, in the same transaction, claim the stage it unblocked.

        ``then.expected`` must be a stage whose other needs are done; the claim is a
        compare-and-set like :meth:`claim_stage`, and simply not made if the row moved on.
        One commit instead of two for each step of a chain.
        """
        with self._tx() as tx:
            tx.lock_item(item_id)
            out = self._finish_in(tx, item_id, stage, claim, change, events, now)
            if out is None:
                return None
            rec = None
            if change.status in DONE_STATUSES:
                rec = self._claim_in(tx, item_id, then.expected.name, then, now, out)
            self._refresh_item(tx, item_id, now, out)
            return out, rec

    @atomic
    def add_subtasks(
        self,
        item_id: str,
        stage: str,
        *,
        claim: str,
        subtasks: Sequence[SubTask],
        now: datetime,
    ) -> list[Event] | None:
        """Record a fan-out. Subtasks that exist already keep their state and results."""
        with self._tx() as tx:
            tx.lock_item(item_id)
            rec = tx.get_stage(item_id, stage)
            if rec is None or rec.claim != claim:
                return None
            existing = {s.name: s for s in tx.list_subtasks(item_id, stage)}
            for i, sub in enumerate(subtasks):
                if sub.name in existing:
                    old = existing[sub.name]
                    if old.position != i:
                        old.position = i
                        tx.update_subtask(old)
                    continue
                tx.insert_subtask(
                    SubtaskRecord(
                        item_id,
                        stage,
                        sub.name,
                        SubtaskStatus.PENDING,
                        i,
                        data=sub.data,
                        updated_at=now,
                    )
                )
            rec.fanned_out, rec.updated_at = True, now
            tx.update_stage(rec)
            data = {"subtasks": [s.name for s in subtasks]}
            return [self._event(tx, EventKind.FAN_OUT, item_id, stage, None, data, now)]

    @atomic
    def claim_subtask(
        self,
        item_id: str,
        stage: str,
        name: str,
        *,
        claim: str,
        now: datetime,
        expected: SubtaskRecord | None = None,
    ) -> tuple[SubtaskRecord, list[Event]] | None:
        """Start a pending subtask, or restart one a dead owner left running.

        With ``expected`` (a row read earlier) the start is a compare-and-set on it.
        """
        with self._tx() as tx:
            tx.lock_item(item_id)
            held = tx.stage_claim(item_id, stage)
            if held is None or held[1] != claim:
                return None
            sub = expected if expected is not None else tx.get_subtask(item_id, stage, name)
            if sub is None or sub.status not in (SubtaskStatus.PENDING, SubtaskStatus.RUNNING):
                return None
            check_transition("subtask", sub.status, SubtaskStatus.RUNNING)
            where = {"status": sub.status, "updated_at": sub.updated_at}
            sub = replace(
                sub,
                status=SubtaskStatus.RUNNING,
                attempts=sub.attempts + 1,
                started_at=now,
                updated_at=now,
                next_attempt_at=None,
            )
            sets = {
                "status": sub.status,
                "attempts": sub.attempts,
                "started_at": now,
                "updated_at": now,
                "next_attempt_at": None,
            }
            if not tx.cas_subtask(item_id, stage, name, where, sets):
                return None
            data = {"attempt": sub.attempts - sub.attempt_base}
            ev = self._event(tx, EventKind.SUBTASK_STARTED, item_id, stage, name, data, now)
            return sub, [ev]

    @atomic
    def finish_subtask(
        self,
        item_id: str,
        stage: str,
        name: str,
        *,
        claim: str,
        change: SubtaskChange,
        events: Sequence[EventSpec],
        now: datetime,
    ) -> list[Event] | None:
        check_transition("subtask", SubtaskStatus.RUNNING, change.status)
        sets = change_sets(change)
        sets["updated_at"] = now
        if change.status == SubtaskStatus.AWAITING_REVIEW:
            sets["requested_at"] = now
        if change.status != SubtaskStatus.PENDING:
            sets["finished_at"] = now
        with self._tx() as tx:
            tx.lock_item(item_id)
            held = tx.stage_claim(item_id, stage)
            if held is None or held[1] != claim:
                return None
            if not tx.cas_subtask(item_id, stage, name, {"status": SubtaskStatus.RUNNING}, sets):
                return None
            return [self._event(tx, kind, item_id, stage, s, data, now) for kind, s, data in events]
