"""What stage authors write against: stages, contexts, outcomes, retry policies, reviews."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .clock import iso


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
