"""Statuses, their transition table, outcomes and the records the stores keep.

The enum *values* are what the database stores and ``--json`` prints.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from .errors import ConflictError


class StageStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    AWAITING_REVIEW = "awaiting_review"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"


class SubtaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    AWAITING_REVIEW = "awaiting_review"
    FAILED = "failed"
    REJECTED = "rejected"


class ItemState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_REVIEW = "awaiting_review"
    REJECTED = "rejected"
    FAILED = "failed"
    COMPLETED = "completed"


S = StageStatus
#: The one table of legal stage transitions. ``running -> running`` is a takeover
#: of work whose owner died; ``running -> pending`` is a retry scheduled for later.
STAGE_TRANSITIONS: dict[StageStatus, frozenset[StageStatus]] = {
    S.PENDING: frozenset({S.RUNNING}),
    S.RUNNING: frozenset(
        {S.RUNNING, S.PENDING, S.COMPLETED, S.AWAITING_REVIEW, S.FAILED, S.REJECTED, S.SKIPPED}
    ),
    S.AWAITING_REVIEW: frozenset({S.COMPLETED, S.REJECTED, S.FAILED, S.PENDING}),
    S.FAILED: frozenset({S.PENDING, S.COMPLETED, S.AWAITING_REVIEW}),
    S.REJECTED: frozenset({S.PENDING, S.COMPLETED, S.AWAITING_REVIEW}),
    S.COMPLETED: frozenset(),
    S.SKIPPED: frozenset(),
}
# The odd-looking edges out of failed/rejected/awaiting_review exist only for fan-out
# stages, whose status follows their subtasks when one of them is decided.

T = SubtaskStatus
SUBTASK_TRANSITIONS: dict[SubtaskStatus, frozenset[SubtaskStatus]] = {
    T.PENDING: frozenset({T.RUNNING}),
    T.RUNNING: frozenset({T.RUNNING, T.PENDING, T.COMPLETED, T.AWAITING_REVIEW, T.FAILED}),
    T.AWAITING_REVIEW: frozenset({T.COMPLETED, T.REJECTED}),
    T.FAILED: frozenset({T.PENDING}),
    T.REJECTED: frozenset({T.PENDING}),
    T.COMPLETED: frozenset(),
}

DONE_STATUSES = frozenset({S.COMPLETED, S.SKIPPED})


def check_transition(kind: str, old: str, new: str) -> None:
    """Raise ConflictError unless ``old -> new`` is in the transition table."""
    table: Mapping[Any, frozenset[Any]] = (
        STAGE_TRANSITIONS if kind == "stage" else SUBTASK_TRANSITIONS
    )
    if new not in table[old]:
        raise ConflictError(f"a {kind} cannot go from {old} to {new}")


def derive_item_state(statuses: Iterable[str]) -> ItemState:
    """Item state from its active stages: completed, else the first of the precedence list."""
    present = set(statuses)
    if not present or present <= DONE_STATUSES:
        return ItemState.COMPLETED
    for state in (
        ItemState.FAILED,
        ItemState.REJECTED,
        ItemState.AWAITING_REVIEW,
        ItemState.RUNNING,
    ):
        if state.value in present:
            return state
    return ItemState.PENDING


def waiting_on(stages: Iterable[tuple[str, str, datetime | None]]) -> str:
    """What an item waits on, from its active stages' (name, status, next_attempt_at)."""
    rows = list(stages)
    for status, label in (
        (StageStatus.FAILED, "failed"),
        (StageStatus.REJECTED, "rejected"),
        (StageStatus.AWAITING_REVIEW, "review"),
        (StageStatus.RUNNING, "running"),
    ):
        names = [n for n, s, _ in rows if s == status]
        if names:
            return f"{label}: {', '.join(names)}"
    retries = [(due, n) for n, s, due in rows if s == StageStatus.PENDING and due is not None]
    if retries:
        due, name = min(retries)
        return f"retry: {name} at {iso(due)}"
    if all(s in DONE_STATUSES for _, s, _ in rows):
        return ""
    return "advance"


def fanout_stage_status(statuses: Iterable[str]) -> StageStatus:
    """A fan-out stage's status from its subtasks' statuses."""
    present = set(statuses)
    if present <= {T.COMPLETED}:
        return S.COMPLETED
    for sub, stage in (
        (T.RUNNING, S.RUNNING),
        (T.PENDING, S.PENDING),
        (T.FAILED, S.FAILED),
        (T.REJECTED, S.REJECTED),
    ):
        if sub in present:
            return stage
    return S.AWAITING_REVIEW


class EventKind(enum.StrEnum):
    ITEM_REGISTERED = "item_registered"
    STAGE_STARTED = "stage_started"
    STAGE_COMPLETED = "stage_completed"
    STAGE_FAILED = "stage_failed"
    STAGE_RETRYING = "stage_retrying"
    STAGE_SKIPPED = "stage_skipped"
    REVIEW_REQUIRED = "review_required"
    REVIEW_APPROVED = "review_approved"
    REVIEW_REJECTED = "review_rejected"
    FAN_OUT = "fan_out"
    SUBTASK_STARTED = "subtask_started"
    SUBTASK_COMPLETED = "subtask_completed"
    SUBTASK_FAILED = "subtask_failed"
    ITEM_COMPLETED = "item_completed"
    STAGE_RESET = "stage_reset"


# --------------------------------------------------------------------------- time


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """The one text form of a timestamp in the database and in JSON."""
    return None if ts is None else ts.astimezone(UTC).isoformat(timespec="microseconds")


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class Clock(Protocol):
    def now(self) -> datetime: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time; tests pass a fake with the same two methods."""

    def now(self) -> datetime:
        return utcnow()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


# ----------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class SubTask:
    """One named unit of a fan-out stage."""

    name: str
    data: Any = None


class OutcomeKind(enum.StrEnum):
    COMPLETE = "complete"
    NEEDS_REVIEW = "needs_review"
    FAN_OUT = "fan_out"
    RETRY = "retry"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class StageOutcome:
    """What a stage returns. Build one with the class-method constructors."""

    kind: OutcomeKind
    output: Any = None
    prompt: str | None = None
    data: Any = None
    subtasks: tuple[SubTask, ...] = ()
    reason: str | None = None
    delay: float | None = None

    @classmethod
    def complete(cls, output: Any = None) -> StageOutcome:
        return cls(OutcomeKind.COMPLETE, output=output)

    @classmethod
    def needs_review(cls, prompt: str, data: Any = None) -> StageOutcome:
        return cls(OutcomeKind.NEEDS_REVIEW, prompt=prompt, data=data)

    @classmethod
    def fan_out(cls, subtasks: Iterable[SubTask | str]) -> StageOutcome:
        subs = tuple(s if isinstance(s, SubTask) else SubTask(str(s)) for s in subtasks)
        return cls(OutcomeKind.FAN_OUT, subtasks=subs)

    @classmethod
    def retry(cls, reason: str, delay: float | None = None) -> StageOutcome:
        return cls(OutcomeKind.RETRY, reason=reason, delay=delay)

    @classmethod
    def fail(cls, reason: str) -> StageOutcome:
        return cls(OutcomeKind.FAIL, reason=reason)

    @classmethod
    def skip(cls, reason: str = "") -> StageOutcome:
        return cls(OutcomeKind.SKIP, reason=reason)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and exponential backoff: delay n = min(backoff * 2**(n-1), max_backoff)."""

    max_attempts: int = 1
    backoff: float = 1.0
    max_backoff: float = 300.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff * (2 ** max(attempt - 1, 0)), self.max_backoff)


# ------------------------------------------------------------------------ reviews


class DecisionKind(enum.StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class ReviewData:
    """A stored human decision: who, when, why, and an optional edited output."""

    decision: DecisionKind
    by: str
    at: datetime
    reason: str | None = None
    comment: str | None = None
    output: Any = None
    item_id: str = ""
    stage: str = ""
    subtask: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "item": self.item_id,
            "stage": self.stage,
            "subtask": self.subtask,
            "decision": self.decision.value,
            "by": self.by,
            "at": iso(self.at),
            "reason": self.reason,
            "comment": self.comment,
            "output": self.output,
        }


# -------------------------------------------------------------------- work items


@runtime_checkable
class WorkItem(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def data(self) -> Any: ...


@dataclass(frozen=True)
class Item:
    """A work item: an id and a JSON payload."""

    id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a stage sees besides the item."""

    item_id: str
    stage: str
    attempt: int
    data: Any
    outputs: dict[str, Any]
    subtask: str | None = None
    subtask_data: Any = None
    review: ReviewData | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("treadle.stage"))


class Stage:
    """Base class for stages: override ``execute`` (plain or ``async def``)."""

    name: str = ""

    def execute(self, item: WorkItem, ctx: StageContext) -> StageOutcome:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__}.execute is not implemented")


StageCallable = Callable[[WorkItem, StageContext], Any]


# ----------------------------------------------------------------------- records


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: a process on a host, and when that process started."""

    host: str
    pid: int
    started: str  # process start marker, guards against pid reuse


@dataclass
class ItemRecord:
    id: str
    pipeline: str
    data: Any
    pipeline_path: str | None
    pipeline_hash: str | None
    state: ItemState
    progress: float
    created_at: datetime
    updated_at: datetime
    waiting_on: str = "advance"
    durability: str | None = None  # "full" when its pipeline asks for synced commits


@dataclass
class StageRecord:
    item_id: str
    name: str
    status: StageStatus
    position: int
    attempts: int = 0
    attempt_base: int = 0
    error: str | None = None
    traceback: str | None = None
    output: Any = None
    review_prompt: str | None = None
    review_data: Any = None
    requested_at: datetime | None = None
    next_attempt_at: datetime | None = None
    fanned_out: bool = False
    claim: str | None = None
    owner_host: str | None = None
    owner_pid: int | None = None
    owner_started: str | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    active: bool = True


@dataclass
class SubtaskRecord:
    item_id: str
    stage: str
    name: str
    status: SubtaskStatus
    position: int
    data: Any = None
    attempts: int = 0
    attempt_base: int = 0
    error: str | None = None
    traceback: str | None = None
    output: Any = None
    review_prompt: str | None = None
    review_data: Any = None
    requested_at: datetime | None = None
    next_attempt_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Event:
    """One entry of the append-only log."""

    kind: EventKind
    item_id: str
    stage: str | None = None
    subtask: str | None = None
    data: dict[str, Any] | None = None
    id: int | None = None
    ts: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": iso(self.ts),
            "kind": self.kind.value,
            "item": self.item_id,
            "stage": self.stage,
            "subtask": self.subtask,
            "data": self.data or {},
        }


@dataclass
class StageChange:
    """The fields a transition writes; ``None`` means leave as is unless listed in ``clear``."""

    status: StageStatus
    error: str | None = None
    traceback: str | None = None
    output: Any = None
    review_prompt: str | None = None
    review_data: Any = None
    next_attempt_at: datetime | None = None
    clear: frozenset[str] = frozenset()


@dataclass
class SubtaskChange:
    status: SubtaskStatus
    error: str | None = None
    traceback: str | None = None
    output: Any = None
    review_prompt: str | None = None
    review_data: Any = None
    next_attempt_at: datetime | None = None
    clear: frozenset[str] = frozenset()
