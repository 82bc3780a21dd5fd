"""What every transition builds on: one transaction per operation, run again when it lost a
race, its events, and the item's derived state refreshed before it commits."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar

from ..errors import UnknownItemError, UnknownStageError
from ..model import (
    DONE_STATUSES,
    Event,
    EventKind,
    ItemState,
    StageChange,
    StageRecord,
    SubtaskChange,
    derive_item_state,
    waiting_on,
)
from .protocol import Tx

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


CLAIM_FIELDS = ("claim", "owner_host", "owner_pid", "owner_started", "lease_until")


CHANGE_FIELDS = ("error", "traceback", "output", "review_prompt", "review_data", "next_attempt_at")


def change_sets(change: StageChange | SubtaskChange) -> dict[str, Any]:
    """The columns a change writes: given values, and None for the cleared ones."""
    sets: dict[str, Any] = {"status": change.status}
    for name in CHANGE_FIELDS:
        value = getattr(change, name)
        if value is not None:
            sets[name] = value
        elif name in change.clear:
            sets[name] = None
    return sets


class Transactions:
    """What every operation builds on: a transaction, its events, the item's derived state."""

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
