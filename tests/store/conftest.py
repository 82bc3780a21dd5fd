"""Fixtures for the store tests: every store, and a small driver that speaks the protocol.

The driver only shortens the calls the tests repeat (claim a stage as it is now, finish it);
it never reaches into a store's internals, so what passes here passes for any StateStore.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from treadle_cli.model import (
    DecisionKind,
    Event,
    EventKind,
    Owner,
    ReviewData,
    StageChange,
    StageRecord,
    StageStatus,
    SubTask,
    SubtaskChange,
    SubtaskStatus,
)
from treadle_cli.store import MemoryStateStore, SqliteStateStore, StateStore, open_store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OWNER = Owner(host="host-a", pid=4242, started="boot-1")


def at(seconds: float) -> datetime:
    """A timestamp ``seconds`` after T0: tests pass time explicitly, never read a clock."""
    return T0 + timedelta(seconds=seconds)


def make_store(kind: str, path: Path, pg_url: str | None = None) -> StateStore:
    if kind == "memory":
        return MemoryStateStore()
    if kind == "postgres":
        assert pg_url is not None
        return open_store(pg_url)
    return SqliteStateStore.open(path / "t.db")


STORE_KINDS = ["memory", "sqlite", "postgres"]


class Driver:
    """Shorthands over one store. Every call goes through the public protocol."""

    owner = OWNER

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.clock = 0.0

    @staticmethod
    def at(seconds: float) -> datetime:
        return at(seconds)

    def now(self) -> datetime:
        """A fresh, strictly later timestamp on every call."""
        self.clock += 1
        return at(self.clock)

    # ------------------------------------------------------------- reads

    def stage(self, item_id: str, name: str) -> StageRecord:
        for rec in self.store.get_stages(item_id, include_inactive=True):
            if rec.name == name:
                return rec
        raise AssertionError(f"no stage {name!r} on {item_id!r}")

    def statuses(self, item_id: str) -> dict[str, str]:
        return {s.name: s.status for s in self.store.get_stages(item_id)}

    def subtask(self, item_id: str, stage: str, name: str) -> Any:
        for rec in self.store.get_subtasks(item_id, stage):
            if rec.name == name:
                return rec
        raise AssertionError(f"no subtask {stage}/{name} on {item_id!r}")

    def kinds(self, events: Sequence[Event]) -> list[EventKind]:
        return [e.kind for e in events]

    def snapshot(self, item_id: str) -> tuple[Any, ...]:
        """Everything observable about one item, to show an operation changed nothing."""
        s = self.store
        return (
            s.get_item(item_id),
            s.get_stages(item_id, include_inactive=True),
            s.get_subtasks(item_id),
            s.decisions(item_id),
            s.events(),
            s.last_event_id(),
        )

    # ------------------------------------------------------------ writes

    def register(
        self,
        item_id: str,
        stages: Sequence[str] = ("a", "b"),
        *,
        pipeline: str = "p",
        data: Any = None,
        path: str | None = "p.yaml",
        pipeline_hash: str | None = "h1",
    ) -> tuple[Any, list[Event]]:
        return self.store.register_item(
            item_id,
            pipeline,
            {} if data is None else data,
            path,
            pipeline_hash,
            stages,
            self.now(),
        )

    def claim(self, item_id: str, stage: str, claim: str = "c1") -> Any:
        expected = self.stage(item_id, stage)
        now = self.now()
        return self.store.claim_stage(
            item_id,
            stage,
            expected=expected,
            claim=claim,
            owner=OWNER,
            now=now,
            lease_until=now + timedelta(minutes=5),
        )

    def finish(
        self,
        item_id: str,
        stage: str,
        status: StageStatus,
        *,
        claim: str = "c1",
        events: Sequence[Any] = (),
        **fields: Any,
    ) -> list[Event] | None:
        return self.store.finish_stage(
            item_id,
            stage,
            claim=claim,
            change=StageChange(status, **fields),
            events=list(events),
            now=self.now(),
        )

    def run(
        self, item_id: str, stage: str, status: StageStatus = StageStatus.COMPLETED, **fields: Any
    ) -> list[Event]:
        """Claim a stage and finish it with ``status`` in two transactions, as the engine does."""
        claimed = self.claim(item_id, stage)
        assert claimed is not None, f"could not claim {stage}"
        kind = {
            StageStatus.COMPLETED: EventKind.STAGE_COMPLETED,
            StageStatus.FAILED: EventKind.STAGE_FAILED,
            StageStatus.SKIPPED: EventKind.STAGE_SKIPPED,
            StageStatus.AWAITING_REVIEW: EventKind.REVIEW_REQUIRED,
            StageStatus.PENDING: EventKind.STAGE_RETRYING,
            StageStatus.REJECTED: EventKind.STAGE_FAILED,
        }[status]
        out = self.finish(item_id, stage, status, events=[(kind, None, None)], **fields)
        assert out is not None
        return out

    def review(self, item_id: str, stage: str, *, prompt: str = "ok?", data: Any = None) -> None:
        self.run(
            item_id,
            stage,
            StageStatus.AWAITING_REVIEW,
            review_prompt=prompt,
            review_data={"draft": 1} if data is None else data,
        )

    def fan_out(self, item_id: str, stage: str, names: Sequence[str], claim: str = "c1") -> None:
        assert self.claim(item_id, stage, claim) is not None
        out = self.store.add_subtasks(
            item_id,
            stage,
            claim=claim,
            subtasks=[SubTask(n, {"n": n}) for n in names],
            now=self.now(),
        )
        assert out is not None

    def run_sub(
        self,
        item_id: str,
        stage: str,
        name: str,
        status: SubtaskStatus,
        claim: str = "c1",
        **fields: Any,
    ) -> list[Event] | None:
        got = self.store.claim_subtask(item_id, stage, name, claim=claim, now=self.now())
        assert got is not None, f"could not claim {stage}/{name}"
        kind = {
            SubtaskStatus.COMPLETED: EventKind.SUBTASK_COMPLETED,
            SubtaskStatus.FAILED: EventKind.SUBTASK_FAILED,
            SubtaskStatus.AWAITING_REVIEW: EventKind.REVIEW_REQUIRED,
            SubtaskStatus.PENDING: EventKind.STAGE_RETRYING,
        }[status]
        return self.store.finish_subtask(
            item_id,
            stage,
            name,
            claim=claim,
            change=SubtaskChange(status, **fields),
            events=[(kind, name, None)],
            now=self.now(),
        )

    def approve(
        self,
        item_id: str,
        stage: str,
        subtask: str | None = None,
        *,
        output: Any = None,
        comment: str | None = None,
        by: str = "alice",
    ) -> tuple[bool, list[Event]]:
        now = self.now()
        decision = ReviewData(DecisionKind.APPROVED, by=by, at=now, comment=comment, output=output)
        return self.store.decide(item_id, stage, subtask, decision, now)

    def reject(
        self,
        item_id: str,
        stage: str,
        subtask: str | None = None,
        *,
        reason: str = "wrong",
        by: str = "bob",
    ) -> tuple[bool, list[Event]]:
        now = self.now()
        decision = ReviewData(DecisionKind.REJECTED, by=by, at=now, reason=reason)
        return self.store.decide(item_id, stage, subtask, decision, now)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """Each store in turn: in memory, SQLite on a real file, a real PostgreSQL server."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    s = make_store(request.param, tmp_path, url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def drv(store: StateStore) -> Driver:
    return Driver(store)
