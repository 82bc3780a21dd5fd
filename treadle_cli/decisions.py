"""Human decisions and retries. No pipeline is needed, so the CLI stays light."""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .events import EventBus
from .model import Clock, DecisionKind, Event, ReviewData, SystemClock
from .store.protocol import StateStore


def default_user() -> str:
    """The OS user: $USER / $LOGNAME, else the account name, else ``uid:N``. Never fails."""
    for var in ("USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry, e.g. an arbitrary uid in a container
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def split_target(stage: str, subtask: str | None = None) -> tuple[str, str | None]:
    """``"enrich/links"`` -> ``("enrich", "links")``; a separate ``subtask`` wins."""
    if subtask is None and "/" in stage:
        stage, subtask = stage.split("/", 1)
    if not stage:
        raise UsageError("empty stage name", hint="write STAGE or STAGE/SUBTASK")
    return stage, subtask


@dataclass(frozen=True)
class DecisionResult:
    """What a decision did: ``changed`` is False for a repeated identical decision."""

    item_id: str
    stage: str
    subtask: str | None
    decision: DecisionKind
    changed: bool
    events: list[Event]

    @property
    def message(self) -> str:
        target = self.stage + (f"/{self.subtask}" if self.subtask else "")
        verb = self.decision.value
        return (
            f"{self.item_id} {target} {verb}"
            if self.changed
            else f"{self.item_id} {target} already {verb}"
        )


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} is not JSON-serializable: {exc}") from exc
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply") from None


def decide(
    store: StateStore,
    item_id: str,
    stage: str,
    decision: DecisionKind,
    *,
    subtask: str | None = None,
    by: str | None = None,
    reason: str | None = None,
    comment: str | None = None,
    output: Any = None,
    clock: Clock | None = None,
    bus: EventBus | None = None,
) -> DecisionResult:
    """Record an approval or rejection; raises ConflictError if nothing awaits it."""
    stage, subtask = split_target(stage, subtask)
    if decision == DecisionKind.REJECTED and not (reason and reason.strip()):
        raise UsageError(
            "a rejection needs a reason", hint="give the reason; the stage sees it when it reruns"
        )
    if output is not None:
        _check_json(output, "the approved output")
    now = (clock or SystemClock()).now()
    rec = ReviewData(
        decision=decision,
        by=by or default_user(),
        at=now,
        reason=reason,
        comment=comment,
        output=output,
    )
    if bus is None:
        changed, events = store.decide(item_id, stage, subtask, rec, now)
    else:
        with bus.ordered():  # listeners see events in the log's order
            changed, events = store.decide(item_id, stage, subtask, rec, now)
            bus.publish(events)
    return DecisionResult(item_id, stage, subtask, decision, changed, events)


def approve(store: StateStore, item_id: str, stage: str, **kw: Any) -> DecisionResult:
    return decide(store, item_id, stage, DecisionKind.APPROVED, **kw)


def reject(store: StateStore, item_id: str, stage: str, reason: str, **kw: Any) -> DecisionResult:
    return decide(store, item_id, stage, DecisionKind.REJECTED, reason=reason, **kw)


def retry(
    store: StateStore,
    item_id: str,
    stage: str,
    *,
    clock: Clock | None = None,
    bus: EventBus | None = None,
) -> list[Event]:
    """Make a failed or rejected stage pending again (only its failed subtasks re-run)."""
    stage, _ = split_target(stage)
    now = (clock or SystemClock()).now()
    if bus is None:
        return store.reset_stage(item_id, stage, now)
    with bus.ordered():  # listeners see events in the log's order
        events = store.reset_stage(item_id, stage, now)
        bus.publish(events)
    return events
