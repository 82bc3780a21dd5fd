"""Helpers shared by the engine tests: a fake clock, call recorders, event folding."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from treadle_cli import Event, EventKind, StageStatus

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """Satisfies the Clock protocol; ``sleep`` moves time on at once and is recorded."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self._now += timedelta(seconds=max(seconds, 0.0))

    def advance(self, seconds: float) -> None:
        """Move time on without recording a sleep (the test waiting, not the engine)."""
        with self._lock:
            self._now += timedelta(seconds=seconds)


class Calls:
    """A thread-safe log of stage calls: ``calls.count("parse")``, ``calls.log``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.log: list[Any] = []

    def add(self, entry: Any) -> None:
        with self._lock:
            self.log.append(entry)

    def count(self, entry: Any) -> int:
        with self._lock:
            return self.log.count(entry)

    def counts(self) -> Counter[Any]:
        with self._lock:
            return Counter(self.log)


class Gauge:
    """Counts how many callers are inside at once; ``peak`` is the most seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0

    def __enter__(self) -> Gauge:
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.current -= 1


def kinds(events: Iterable[Event]) -> list[str]:
    return [e.kind.value for e in events]


#: The stage status each stage-level event leaves behind (subtask events change none).
_EVENT_STATUS = {
    EventKind.STAGE_STARTED: StageStatus.RUNNING,
    EventKind.STAGE_COMPLETED: StageStatus.COMPLETED,
    EventKind.STAGE_FAILED: StageStatus.FAILED,
    EventKind.STAGE_RETRYING: StageStatus.PENDING,
    EventKind.STAGE_SKIPPED: StageStatus.SKIPPED,
    EventKind.REVIEW_REQUIRED: StageStatus.AWAITING_REVIEW,
    EventKind.REVIEW_APPROVED: StageStatus.COMPLETED,
    EventKind.REVIEW_REJECTED: StageStatus.REJECTED,
    EventKind.STAGE_RESET: StageStatus.PENDING,
}


def stage_transitions(
    events: Iterable[Event], start: dict[tuple[str, str], StageStatus] | None = None
) -> tuple[list[tuple[str, str, StageStatus, StageStatus]], dict[tuple[str, str], StageStatus]]:
    """Replay stage-level events into (item, stage, old, new) transitions.

    Only events without a subtask are stage transitions. A repeated status (the
    ``stage_completed`` that follows ``review_approved``) is not a transition, except
    ``running -> running``: a takeover. Returns the transitions and the final statuses.
    """
    status = dict(start or {})
    out: list[tuple[str, str, StageStatus, StageStatus]] = []
    for ev in events:
        if ev.stage is None or ev.subtask is not None or ev.kind not in _EVENT_STATUS:
            continue
        key = (ev.item_id, ev.stage)
        old = status.get(key, StageStatus.PENDING)
        new = _EVENT_STATUS[ev.kind]
        if new != old or new == StageStatus.RUNNING:
            out.append((ev.item_id, ev.stage, old, new))
        status[key] = new
    return out, status
