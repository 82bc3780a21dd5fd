"""Where an item stands: built from the store alone, so no pipeline file is needed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnknownItemError
from .model import (
    DONE_STATUSES,
    ItemRecord,
    ItemState,
    ReviewData,
    StageRecord,
    StageStatus,
    SubtaskRecord,
    iso,
    waiting_on,
)
from .store.protocol import StateStore


@dataclass
class StageView:
    """One stage of an item, with its subtasks and last decision."""

    record: StageRecord
    subtasks: list[SubtaskRecord] = field(default_factory=list)
    decision: ReviewData | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def status(self) -> StageStatus:
        return self.record.status

    @property
    def attempts(self) -> int:
        return self.record.attempts

    def to_json(self) -> dict[str, Any]:
        r = self.record
        review = None
        if r.status == StageStatus.AWAITING_REVIEW and r.review_prompt is not None:
            review = {
                "prompt": r.review_prompt,
                "data": r.review_data,
                "requested_at": iso(r.requested_at),
            }
        elif self.decision is not None:
            review = self.decision.to_json()
        return {
            "name": r.name,
            "status": r.status.value,
            "attempts": r.attempts,
            "error": r.error,
            "review": review,
            "output": r.output,
            "next_attempt_at": iso(r.next_attempt_at),
            "started_at": iso(r.started_at),
            "finished_at": iso(r.finished_at),
            "subtasks": [
                {
                    "name": s.name,
                    "status": s.status.value,
                    "attempts": s.attempts,
                    "error": s.error,
                    "next_attempt_at": iso(s.next_attempt_at),
                    "review": (
                        {"prompt": s.review_prompt, "data": s.review_data}
                        if s.review_prompt is not None
                        else None
                    ),
                }
                for s in self.subtasks
            ],
        }


@dataclass
class PipelineStatus:
    """An item's state, its stages in pipeline order and their subtasks."""

    item: ItemRecord
    stages: list[StageView]

    @property
    def item_id(self) -> str:
        return self.item.id

    @property
    def state(self) -> ItemState:
        return self.item.state

    def progress_percent(self) -> float:
        """100 × stages completed or skipped ÷ stages in the item's pipeline."""
        if not self.stages:
            return 100.0
        done = sum(1 for s in self.stages if s.status in DONE_STATUSES)
        return round(100.0 * done / len(self.stages), 1)

    def _named(self, status: StageStatus) -> list[str]:
        return [s.name for s in self.stages if s.status == status]

    def has_pending_reviews(self) -> bool:
        return bool(self.review_stages())

    def review_stages(self) -> list[str]:
        return self._named(StageStatus.AWAITING_REVIEW)

    def failed_stages(self) -> list[str]:
        return self._named(StageStatus.FAILED)

    def rejected_stages(self) -> list[str]:
        return self._named(StageStatus.REJECTED)

    def running_stages(self) -> list[str]:
        return self._named(StageStatus.RUNNING)

    def completed_stages(self) -> list[str]:
        return self._named(StageStatus.COMPLETED)

    def is_complete(self) -> bool:
        return self.item.state == ItemState.COMPLETED

    def is_outdated(self) -> bool:
        """Whether the item's pipeline file has changed since the item last ran with it.

        Reads the file. False when the item has no file (a library workflow registered it)
        or the file cannot be read: only a file whose bytes differ counts.
        """
        path = self.item.pipeline_path
        if not path:
            return False
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return False
        return digest != self.item.pipeline_hash

    def stage(self, name: str) -> StageView:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def waiting_on(self) -> str:
        return waiting_on((s.name, s.status, s.record.next_attempt_at) for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.item.id,
            "pipeline": self.item.pipeline,
            "state": self.item.state.value,
            "progress": self.progress_percent(),
            "waiting_on": self.waiting_on,
            "pipeline_path": self.item.pipeline_path,
            "pipeline_hash": self.item.pipeline_hash,
            "data": self.item.data,
            "created_at": iso(self.item.created_at),
            "updated_at": iso(self.item.updated_at),
            "stages": [s.to_json() for s in self.stages],
        }

    def __str__(self) -> str:
        lines = [
            f"{self.item.id} [{self.item.pipeline}] {self.item.state.value} "
            f"{self.progress_percent():g}%"
        ]
        for s in self.stages:
            extra = f" (attempts {s.attempts})" if s.attempts > 1 else ""
            if s.record.error:
                extra += f" — {s.record.error}"
            lines.append(f"  {s.name}: {s.status.value}{extra}")
            for sub in s.subtasks:
                err = f" — {sub.error}" if sub.error else ""
                lines.append(f"    {sub.name}: {sub.status.value}{err}")
        return "\n".join(lines)


def load_status(store: StateStore, item_id: str) -> PipelineStatus:
    """Read an item's status from ``store``; UnknownItemError if there is no such item."""
    item = store.get_item(item_id)
    if item is None:
        raise UnknownItemError(item_id)
    stages = store.get_stages(item_id)
    subs: dict[str, list[SubtaskRecord]] = {}
    if any(s.fanned_out for s in stages):
        for sub in store.get_subtasks(item_id):
            subs.setdefault(sub.stage, []).append(sub)
    decided: dict[str, ReviewData] = {}
    if any(s.requested_at for s in stages):
        for d in store.decisions(item_id):
            if d.subtask is None:
                decided[d.stage] = d
    views = [StageView(s, subs.get(s.name, []), decided.get(s.name)) for s in stages]
    return PipelineStatus(item, views)
