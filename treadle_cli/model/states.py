"""Statuses, the one table of legal transitions, and what an item's state derives from.

The enum *values* are what the database stores and ``--json`` prints.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ..errors import ConflictError
from .clock import iso


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
