"""Human decisions and resets: approve or reject what awaits review, make a failed or
rejected stage pending again. Each is one transaction over :class:`~.protocol.Tx`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from ..errors import ConflictError, UnknownStageError
from ..model import (
    DecisionKind,
    Event,
    EventKind,
    ReviewData,
    StageRecord,
    StageStatus,
    SubtaskRecord,
    SubtaskStatus,
    check_transition,
    fanout_stage_status,
)
from .protocol import Tx
from .transactions import Transactions, atomic


class ReviewOperations(Transactions):
    """Decisions and resets, written once for every store."""

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
