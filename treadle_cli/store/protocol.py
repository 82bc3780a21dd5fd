"""What a store is: the :class:`StateStore` protocol the library speaks, and the row
primitives (:class:`Tx`) a backend offers inside one transaction.

Every mutating call is one atomic transaction whose events are written with it, so the log
and the state never disagree. The transitions themselves are written once, in
:mod:`.operations`, over :class:`Tx`; a backend supplies only the primitives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from ..model import (
    Event,
    EventKind,
    ItemRecord,
    ItemState,
    Owner,
    ReviewData,
    StageChange,
    StageRecord,
    SubTask,
    SubtaskChange,
    SubtaskRecord,
    WorkerRecord,
)


class ItemSummary(NamedTuple):
    """What item listings show; states are plain strings as stored, times ISO text."""

    id: str
    pipeline: str
    state: str
    progress: float
    waiting_on: str | None
    updated_at: str


@dataclass(frozen=True)
class ClaimRequest:
    """Claim the stage ``expected`` describes, if its row still matches it."""

    expected: StageRecord
    claim: str
    owner: Owner
    lease_until: datetime | None


#: What a worker serves: pipeline name -> stage name -> the stages that stage needs.
WorkSpec = Mapping[str, Mapping[str, Sequence[str]]]


class ReadyClaim(NamedTuple):
    """A stage a worker claimed: running under ``record.claim`` from this commit on."""

    pipeline: str
    record: StageRecord
    events: list[Event]


class Outlook(NamedTuple):
    """What may still happen in a worker's pipelines when nothing is ready now."""

    running: int  # stages running now, whoever runs them
    next_retry: datetime | None  # the earliest retry scheduled for later
    next_expiry: datetime | None  # the earliest lease of a running stage to run out


class ChangeFeed(Protocol):
    """Wakes a waiting worker when another process commits (LISTEN, or a cheap check)."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if something was committed meanwhile."""
        ...

    def close(self) -> None: ...


#: An event to append: kind, subtask (or None) and data. Item and stage come from the call.
EventSpec = tuple[EventKind, str | None, dict[str, Any] | None]


class StateStore(Protocol):
    """What the library needs from a store. Every mutating call is one atomic transaction."""

    #: Where the data lives, fit to print: a file path, or a URL with its password as ***.
    location: str

    # ------------------------------------------------------------ transitions

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
    ) -> tuple[ItemRecord, list[Event]]: ...
    def sync_stages(
        self,
        item_id: str,
        stages: Sequence[str],
        path: str | None,
        pipeline_hash: str | None,
        now: datetime,
        durability: str | None = None,
    ) -> list[Event]: ...
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
    ) -> tuple[StageRecord, list[Event]] | None: ...
    def finish_stage(
        self,
        item_id: str,
        stage: str,
        *,
        claim: str,
        change: StageChange,
        events: Sequence[EventSpec],
        now: datetime,
    ) -> list[Event] | None: ...
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
    ) -> tuple[list[Event], StageRecord | None] | None: ...
    def add_subtasks(
        self,
        item_id: str,
        stage: str,
        *,
        claim: str,
        subtasks: Sequence[SubTask],
        now: datetime,
    ) -> list[Event] | None: ...
    def claim_subtask(
        self,
        item_id: str,
        stage: str,
        name: str,
        *,
        claim: str,
        now: datetime,
        expected: SubtaskRecord | None = None,
    ) -> tuple[SubtaskRecord, list[Event]] | None: ...
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
    ) -> list[Event] | None: ...
    def decide(
        self,
        item_id: str,
        stage: str,
        subtask: str | None,
        decision: ReviewData,
        now: datetime,
    ) -> tuple[bool, list[Event]]: ...
    def reset_stage(self, item_id: str, stage: str, now: datetime) -> list[Event]: ...

    # ---------------------------------------------------------------- workers

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
        """Claim up to ``limit`` ready stages of the pipelines in ``work``, in one transaction.

        Ready: pending with every need completed or skipped and any retry due, or running
        under a lease that ran out (or an owner on this host, which ``accept`` judges).
        Items another transaction holds are skipped, never waited for.
        """
        ...

    def work_outlook(self, work: WorkSpec, now: datetime) -> Outlook: ...
    def held_stages(self, owner: Owner) -> list[StageRecord]:
        """The stages running under ``owner``'s claims."""
        ...

    def register_worker(self, rec: WorkerRecord) -> None:
        """Record a worker (replacing a stopped or stale one of the same name)."""
        ...

    def heartbeat(self, name: str, owner: Owner, now: datetime, lease_until: datetime) -> int:
        """Renew the worker and the leases of its running stages; returns how many."""
        ...

    def stop_worker(self, name: str, now: datetime) -> None: ...
    def list_workers(self) -> list[tuple[WorkerRecord, list[str]]]:
        """Every recorded worker and what it runs (``ITEM STAGE[/SUBTASK]``), oldest first."""
        ...

    def server_now(self) -> datetime:
        """The database's clock (this machine's for an embedded store)."""
        ...

    def changes(self) -> ChangeFeed: ...

    # ---------------------------------------------------------------- queries

    def get_item(self, item_id: str) -> ItemRecord | None: ...
    def get_stages(self, item_id: str, *, include_inactive: bool = False) -> list[StageRecord]: ...
    def get_subtasks(self, item_id: str, stage: str | None = None) -> list[SubtaskRecord]: ...
    def last_decision(
        self, item_id: str, stage: str, subtask: str | None = None
    ) -> ReviewData | None: ...
    def decisions(self, item_id: str) -> list[ReviewData]: ...
    def events(
        self, *, after: int = 0, item_id: str | None = None, limit: int | None = None
    ) -> list[Event]:
        """Events with ``id > after`` in log order. A follower that passes the last id it
        saw never misses one: ids are in commit order on every backend."""
        ...

    def last_event_id(self) -> int: ...
    def list_items(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ItemRecord]: ...
    def iter_summaries(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ItemSummary]:
        """The listing columns of every matching item in creation order, streamed."""
        ...

    def count_items(
        self, *, pipeline: str | None = None, states: Sequence[str] | None = None
    ) -> dict[str, int]: ...
    def stage_counts(self, *, pipeline: str | None = None) -> dict[str, dict[str, int]]: ...
    def pending_reviews(self, *, pipeline: str | None = None) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class Tx(Protocol):
    """Row primitives a store offers inside one transaction."""

    def lock_item(self, item_id: str) -> None:
        """Hold the item's row until the transaction ends (a no-op where every write
        transaction is serialised anyway)."""
        ...

    def get_item(self, item_id: str) -> ItemRecord | None: ...
    def insert_item(self, rec: ItemRecord) -> None: ...
    def update_item(self, rec: ItemRecord) -> None: ...
    def get_stage(self, item_id: str, stage: str) -> StageRecord | None: ...
    def list_stages(self, item_id: str, include_inactive: bool) -> list[StageRecord]: ...
    def insert_stage(self, rec: StageRecord) -> None: ...
    def insert_stages(self, recs: list[StageRecord]) -> None: ...
    def update_stage(self, rec: StageRecord) -> None: ...
    def active_stages(self, item_id: str) -> list[tuple[str, str, datetime | None]]:
        """(name, status, next_attempt_at) of the item's active stages, in pipeline order."""
        ...

    def get_subtask(self, item_id: str, stage: str, name: str) -> SubtaskRecord | None: ...
    def list_subtasks(self, item_id: str, stage: str) -> list[SubtaskRecord]: ...
    def insert_subtask(self, rec: SubtaskRecord) -> None: ...
    def update_subtask(self, rec: SubtaskRecord) -> None: ...
    def cas_stage(
        self, item_id: str, stage: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        """Set ``sets`` on the stage row if its columns equal ``where``; True if it did."""
        ...

    def cas_subtask(
        self, item_id: str, stage: str, name: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool: ...
    def stage_claim(self, item_id: str, stage: str) -> tuple[str, str | None] | None:
        """(status, claim) of a stage, or None if there is no such stage."""
        ...

    def set_item_summary(
        self, item_id: str, state: ItemState, progress: float, waiting: str, now: datetime
    ) -> bool:
        """Store the derived state; True if it changed (an unchanged row is not written)."""
        ...

    def ready_stages(
        self, work: WorkSpec, now: datetime, host: str, limit: int
    ) -> list[tuple[str, StageRecord]]:
        """(pipeline, stage) rows a worker may claim (see ``StateStore.claim_ready``), their
        items locked for this transaction, skipping items locked by others."""
        ...

    def insert_event(self, ev: Event) -> Event: ...
    def insert_decision(self, rev: ReviewData) -> ReviewData: ...
    def last_decision(self, item_id: str, stage: str, subtask: str | None) -> ReviewData | None: ...
