"""The records the stores keep, and the changes a transition writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .clock import iso
from .states import EventKind, ItemState, StageStatus, SubtaskStatus


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


@dataclass
class WorkerRecord:
    """A worker process as the ``workers`` table records it."""

    name: str
    host: str
    pid: int
    started: str  # process start marker, as in :class:`Owner`
    started_at: datetime
    heartbeat_at: datetime
    lease: float  # seconds without a heartbeat after which its claims may be taken over
    pipelines: Any = None  # the pipeline names it serves (JSON list)
    concurrency: int = 1
    stopped_at: datetime | None = None

    @property
    def owner(self) -> Owner:
        return Owner(self.host, self.pid, self.started)
