"""Running stage code and judging what it returns.

Sync, ``async def`` and plain-function stages are called the same way; every exception,
timeout or unusable return value becomes a failed attempt (:class:`AttemptFailed`), never an
engine error.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import traceback
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UsageError
from .model import (
    EventKind,
    OutcomeKind,
    RetryPolicy,
    StageChange,
    StageContext,
    StageOutcome,
    StageStatus,
    SubtaskChange,
    SubtaskStatus,
    WorkItem,
    iso,
)

if TYPE_CHECKING:
    from .pipeline import StageSpec
    from .store.protocol import EventSpec

Change = TypeVar("Change", StageChange, SubtaskChange)

MAX_ITEM_ID = 200


def validate_item_id(item_id: str) -> str:
    """1-200 printable characters; quotes, spaces, SQL and Unicode are all fine."""
    if not isinstance(item_id, str) or not item_id.strip():
        raise UsageError("an item id cannot be empty", hint="pass an id like doc-1")
    if len(item_id) > MAX_ITEM_ID:
        raise UsageError(
            f"item id is {len(item_id)} characters long; the limit is {MAX_ITEM_ID}",
            hint="use a shorter id and keep long text in the item's data",
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in item_id):
        raise UsageError(
            f"item id {item_id!r} contains control characters (newline, tab...)",
            hint="use printable characters only",
        )
    return item_id


def _json_problem(value: Any) -> str | None:
    try:
        json.dumps(value, allow_nan=False)  # NaN would be stored as text no JSON reader takes
    except (TypeError, ValueError) as exc:
        return str(exc)
    except RecursionError:
        return "nested too deeply"
    return None


class _Attempt(Exception):
    """A failed attempt: message and traceback, with an optional retry delay."""

    def __init__(
        self, error: str, tb: str | None = None, delay: float | None = None, final: bool = False
    ) -> None:
        super().__init__(error)
        self.error, self.tb, self.delay, self.final = error, tb, delay, final


def _run_coroutine(coro: Any, timeout: float | None) -> Any:
    async def bounded() -> Any:
        if not timeout:
            return await coro
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError as exc:
            if str(exc):  # raised by the stage itself: keep its message
                raise
            # asyncio's own timeout carries no message; say what happened.
            raise TimeoutError(f"attempt exceeded its timeout of {timeout:g}s") from exc

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    box: dict[str, Any] = {}

    def runner() -> None:  # the caller is inside an event loop: use a fresh one elsewhere
        try:
            box["value"] = asyncio.run(bounded())
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_stage(impl: Any, item: WorkItem, ctx: StageContext, timeout: float | None) -> Any:
    """Run stage code; sync code with a timeout runs in a daemon thread we stop waiting for."""
    fn = impl.execute if hasattr(impl, "execute") else impl
    if inspect.iscoroutinefunction(fn):
        return _run_coroutine(fn(item, ctx), timeout)
    if timeout is None:
        result = fn(item, ctx)
    else:
        box: dict[str, Any] = {}

        def runner() -> None:
            try:
                box["value"] = fn(item, ctx)
            except BaseException as exc:
                box["error"] = exc
                box["tb"] = traceback.format_exc()

        t = threading.Thread(target=runner, daemon=True, name=f"treadle-{ctx.stage}")
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError(f"attempt exceeded its timeout of {timeout:g}s")
        if "error" in box:
            raise _Attempt(f"{type(box['error']).__name__}: {box['error']}", box["tb"])
        result = box["value"]
    if inspect.iscoroutine(result):
        return _run_coroutine(result, timeout)
    return result


def to_outcome(result: Any) -> StageOutcome:
    """None -> complete; dict -> complete(dict); a StageOutcome as is; else a failed attempt."""
    if result is None:
        return StageOutcome.complete()
    if isinstance(result, StageOutcome):
        return result
    if isinstance(result, dict):
        return StageOutcome.complete(result)
    raise _Attempt(
        f"TypeError: stage returned {type(result).__name__}; return a StageOutcome, a dict or None",
        final=False,
    )


def _execute(spec: StageSpec, item: WorkItem, ctx: StageContext) -> StageOutcome:
    try:
        outcome = to_outcome(call_stage(spec.impl, item, ctx, spec.timeout))
    except _Attempt:
        raise
    except TimeoutError as exc:
        raise _Attempt(f"TimeoutError: {exc}", traceback.format_exc()) from exc
    except (Exception, SystemExit) as exc:  # sys.exit() in stage code ends the attempt,
        # not the advance: escaping, it would leave the stage running under a live owner.
        raise _Attempt(f"{type(exc).__name__}: {exc}", traceback.format_exc()) from exc
    if outcome.kind == OutcomeKind.RETRY:
        raise _Attempt(f"retry: {outcome.reason}", None, outcome.delay)
    if outcome.kind == OutcomeKind.FAIL:
        raise _Attempt(f"failed: {outcome.reason}", None, final=True)
    for what, value in (("output", outcome.output), ("review data", outcome.data)):
        if (problem := _json_problem(value)) is not None:
            raise _Attempt(f"TypeError: stage {what} is not JSON-serializable: {problem}")
    if outcome.kind == OutcomeKind.FAN_OUT:
        names = [s.name for s in outcome.subtasks]
        if not names:
            raise _Attempt("ValueError: fan_out() needs at least one subtask")
        if any(not isinstance(n, str) or not n for n in names):
            raise _Attempt("ValueError: subtask names must be non-empty strings")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise _Attempt(f"ValueError: duplicate subtask names: {', '.join(dup)}")
        for s in outcome.subtasks:
            if (problem := _json_problem(s.data)) is not None:
                raise _Attempt(f"TypeError: data of subtask {s.name!r} is not JSON-serializable")
    return outcome


# ------------------------------------------------------- what a result does to its row
# Written once for stages and subtasks: ``change`` is StageChange or SubtaskChange, and
# ``subtask`` the subtask's name (None for a stage) as its events carry it.


def _status(change: type[Change], value: str) -> Any:
    return (SubtaskStatus if change is SubtaskChange else StageStatus)(value)


def failed_attempt(
    change: type[Change],
    failure: _Attempt,
    used: int,
    policy: RetryPolicy,
    now: datetime,
    subtask: str | None = None,
) -> tuple[Change, list[EventSpec]]:
    """A failed attempt: pending again after its backoff while attempts remain, else failed."""
    if not failure.final and used < policy.max_attempts:
        delay = failure.delay if failure.delay is not None else policy.delay(used)
        due = now + timedelta(seconds=max(delay, 0.0))
        data = {
            "attempt": used,
            "error": failure.error,
            "delay": delay,
            "next_attempt_at": iso(due),
        }
        pending = change(
            _status(change, "pending"),
            error=failure.error,
            traceback=failure.tb,
            next_attempt_at=due,
            clear=frozenset({"traceback"}),
        )
        return pending, [(EventKind.STAGE_RETRYING, subtask, data)]
    kind = EventKind.STAGE_FAILED if subtask is None else EventKind.SUBTASK_FAILED
    failed = change(
        _status(change, "failed"),
        error=failure.error,
        traceback=failure.tb,
        clear=frozenset({"traceback", "next_attempt_at"}),
    )
    return failed, [(kind, subtask, {"error": failure.error, "attempts": used})]


def review_request(
    change: type[Change], prompt: str, data: Any, subtask: str | None = None
) -> tuple[Change, list[EventSpec]]:
    """An attempt that asks a human: its prompt and data, awaiting review."""
    waiting = change(
        _status(change, "awaiting_review"),
        review_prompt=prompt,
        review_data=data,
        clear=frozenset({"error", "traceback", "output"}),
    )
    return waiting, [(EventKind.REVIEW_REQUIRED, subtask, {"prompt": prompt})]
