"""Every transition, written once over the row primitives of :class:`~.protocol.Tx`.

A store speaks in atomic operations: register an item, claim a stage, finish it, record a
decision, reset a stage. Each operation is one transaction that first locks its item's row,
and the events it appends are written in that same transaction, so the log and the state
never disagree. A backend whose transactions can lose a race (a serialization failure, a
deadlock, two processes registering one item) raises :class:`RetryTransaction` and the
operation runs again from the start; nothing of the lost attempt was committed.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from ..errors import ConflictError, UnknownItemError, UnknownStageError
from ..model import (
    DONE_STATUSES,
    DecisionKind,
    Event,
    EventKind,
    ItemRecord,
    ItemState,
    Owner,
    ReviewData,
    StageChange,
    StageRecord,
    StageStatus,
    SubTask,
    SubtaskChange,
    SubtaskRecord,
    SubtaskStatus,
    check_transition,
    derive_item_state,
    fanout_stage_status,
    waiting_on,
)
from .protocol import ClaimRequest, EventSpec, Tx

#: How often an operation that lost a race is run again before the error is shown.
MAX_TRIES = 20


class RetryTransaction(Exception):
    """Raised by a backend when a transaction lost a race and may simply run again."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


F = TypeVar("F", bound=Callable[..., Any])


def atomic(fn: F) -> F:
    """Run an operation again, from the start, when its transaction lost a race."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        for tries in range(1, MAX_TRIES + 1):
            try:
                return fn(self, *args, **kwargs)
            except RetryTransaction as exc:
                if tries == MAX_TRIES:
                    raise self._gave_up(exc.error) from exc.error
                # Jitter, so two losers of one race do not meet again at once.
                time.sleep(random.uniform(0, 0.002 * tries))
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]


_CLAIM_FIELDS = ("claim", "owner_host", "owner_pid", "owner_started", "lease_until")


_CHANGE_FIELDS = ("error", "traceback", "output", "review_prompt", "review_data", "next_attempt_at")


def _apply_change(rec: Any, change: StageChange | SubtaskChange) -> None:
    rec.status = change.status
    for name, value in _change_sets(change).items():
        setattr(rec, name, value)


def _change_sets(change: StageChange | SubtaskChange) -> dict[str, Any]:
    """The columns a change writes: given values, and None for the cleared ones."""
    sets: dict[str, Any] = {"status": change.status}
    for name in _CHANGE_FIELDS:
        value = getattr(change, name)
        if value is not None:
            sets[name] = value
        elif name in change.clear:
            sets[name] = None
    return sets


class TransactionalStore:
    """The atomic operations, written once over :class:`Tx` primitives."""

    def _tx(self) -> AbstractContextManager[Tx]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gave_up(self, error: Exception) -> Exception:
        """The error to show when an operation kept losing races."""
        return error

    # ----------------------------------------------------------------- helpers

    def _event(
        self,
        tx: Tx,
        kind: EventKind,
        item_id: str,
        stage: str | None,
        subtask: str | None,
        data: dict[str, Any] | None,
        now: datetime,
    ) -> Event:
        return tx.insert_event(Event(kind, item_id, stage, subtask, data, ts=now))

    def _refresh_item(self, tx: Tx, item_id: str, now: datetime, out: list[Event]) -> None:
        rows = tx.active_stages(item_id)
        statuses = [s for _, s, _ in rows]
        state = derive_item_state(statuses)
        done = sum(1 for s in statuses if s in DONE_STATUSES)
        progress = round(100.0 * done / len(statuses), 1) if statuses else 100.0
        # A completed item has nothing left to change, so "changed to completed" is new.
        if tx.set_item_summary(item_id, state, progress, waiting_on(rows), now):
            if state == ItemState.COMPLETED:
                out.append(
                    self._event(tx, EventKind.ITEM_COMPLETED, item_id, None, None, None, now)
                )

    def _require_stage(self, tx: Tx, item_id: str, stage: str) -> StageRecord:
        rec = tx.get_stage(item_id, stage)
        if rec is None or not rec.active:
            if tx.get_item(item_id) is None:
                raise UnknownItemError(item_id)
            known = [s.name for s in tx.list_stages(item_id, False)]
            raise UnknownStageError(item_id, stage, known=known)
        return rec

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
        where = {
            "status": expected.status,
            "claim": expected.claim,
            "updated_at": expected.updated_at,
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
        sets = _change_sets(change)
        sets.update(dict.fromkeys(_CLAIM_FIELDS), updated_at=now)
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
        sets = _change_sets(change)
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

    @atomic
    def decide(
        self,
        item_id: str,
        stage: str,
        subtask: str | None,
        decision: ReviewData,
        now: datetime,
    ) -> tuple[bool, list[Event]]:
        """Approve or reject what awaits review. Returns (changed, events).

        A decision identical to the last one on a target already decided is a no-op
        (``changed`` False); anything else not awaiting review is a ConflictError.
        """
        with self._tx() as tx:
            tx.lock_item(item_id)
            rec = self._require_stage(tx, item_id, stage)
            target: StageRecord | SubtaskRecord = rec
            if subtask is not None:
                sub = tx.get_subtask(item_id, stage, subtask)
                if sub is None:
                    names = [s.name for s in tx.list_subtasks(item_id, stage)]
                    raise UnknownStageError(
                        item_id, f"{stage}/{subtask}", known=[f"{stage}/{n}" for n in names] or None
                    )
                target = sub
            elif rec.fanned_out and rec.status == StageStatus.AWAITING_REVIEW:
                waiting = [
                    s.name
                    for s in tx.list_subtasks(item_id, stage)
                    if s.status == SubtaskStatus.AWAITING_REVIEW
                ]
                if waiting:
                    raise ConflictError(
                        f"{item_id} {stage} waits on its subtasks, not on a decision of its own",
                        hint="decide each one: " + ", ".join(f"{stage}/{n}" for n in waiting),
                    )
            where = f"{item_id} {stage}" + (f"/{subtask}" if subtask else "")
            approve = decision.decision == DecisionKind.APPROVED
            if target.status != StageStatus.AWAITING_REVIEW:
                last = tx.last_decision(item_id, stage, subtask)
                done = StageStatus.COMPLETED if approve else StageStatus.REJECTED
                if (
                    last is not None
                    and last.decision == decision.decision
                    and target.status == done
                ):
                    return False, []
                raise ConflictError(
                    f"{where} is {target.status}, not awaiting review",
                    hint="see `treadle reviews` for what awaits a decision",
                )
            stored = tx.insert_decision(
                replace(decision, item_id=item_id, stage=stage, subtask=subtask, at=now)
            )
            out: list[Event] = []
            data: dict[str, Any] = {"by": stored.by, "decision_id": stored.id}
            if approve:
                if decision.output is not None:
                    target.output = decision.output
                elif target.output is None:
                    target.output = target.review_data
                target.status = StageStatus.COMPLETED
                target.error = None
                if stored.comment:
                    data["comment"] = stored.comment
            else:
                target.status = StageStatus.REJECTED
                target.error = f"rejected by {stored.by}: {stored.reason}"
                data["reason"] = stored.reason
            target.finished_at = target.updated_at = now
            kind = EventKind.REVIEW_APPROVED if approve else EventKind.REVIEW_REJECTED
            out.append(self._event(tx, kind, item_id, stage, subtask, data, now))
            if isinstance(target, SubtaskRecord):
                target.status = SubtaskStatus(target.status)
                tx.update_subtask(target)
                if approve:
                    out.append(
                        self._event(
                            tx, EventKind.SUBTASK_COMPLETED, item_id, stage, subtask, None, now
                        )
                    )
                self._follow_subtasks(tx, rec, now)
            else:
                target.status = StageStatus(target.status)
                tx.update_stage(target)
                if approve:
                    out.append(
                        self._event(tx, EventKind.STAGE_COMPLETED, item_id, stage, None, None, now)
                    )
            self._refresh_item(tx, item_id, now, out)
            return True, out

    def _follow_subtasks(self, tx: Tx, rec: StageRecord, now: datetime) -> None:
        """After a subtask decision, move a stage nobody is running to match its subtasks."""
        if rec.status == StageStatus.RUNNING:
            return  # the running advance will settle it
        new = fanout_stage_status(s.status for s in tx.list_subtasks(rec.item_id, rec.name))
        if new == StageStatus.COMPLETED:
            new = StageStatus.PENDING  # the next advance finishes it (output, review: always)
        if new != rec.status:
            check_transition("stage", rec.status, new)
            rec.status, rec.updated_at = new, now
            tx.update_stage(rec)

    @atomic
    def reset_stage(self, item_id: str, stage: str, now: datetime) -> list[Event]:
        """Make a failed or rejected stage pending again; only failed subtasks will re-run."""
        with self._tx() as tx:
            tx.lock_item(item_id)
            rec = self._require_stage(tx, item_id, stage)
            if rec.status not in (StageStatus.FAILED, StageStatus.REJECTED):
                raise ConflictError(
                    f"{item_id} {stage} is {rec.status}; only a failed or rejected stage can be retried",
                    hint="see `treadle status " + item_id + "`",
                )
            again: list[str] = []
            if rec.fanned_out:
                for sub in tx.list_subtasks(item_id, stage):
                    if sub.status in (SubtaskStatus.FAILED, SubtaskStatus.REJECTED):
                        sub.status, sub.attempt_base = SubtaskStatus.PENDING, sub.attempts
                        sub.error = sub.traceback = sub.next_attempt_at = None
                        sub.updated_at = now
                        tx.update_subtask(sub)
                        again.append(sub.name)
                if not again:
                    rec.fanned_out = False  # a rejected whole: run the stage itself again
            rec.status, rec.attempt_base = StageStatus.PENDING, rec.attempts
            rec.error = rec.traceback = rec.next_attempt_at = None
            rec.updated_at = now
            tx.update_stage(rec)
            data = {"subtasks": again} if again else None
            out = [self._event(tx, EventKind.STAGE_RESET, item_id, stage, None, data, now)]
            self._refresh_item(tx, item_id, now, out)
            return out
