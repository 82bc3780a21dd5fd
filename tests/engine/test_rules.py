"""One test (or a few) per rule of DESIGN.md §4, against the memory store and SQLite."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from treadle_cli import (
    ConflictError,
    CycleError,
    DecisionKind,
    Item,
    ItemState,
    MemoryStateStore,
    PipelineError,
    RetryPolicy,
    SqliteStateStore,
    Stage,
    StageContext,
    StageOutcome,
    StageStatus,
    SubTask,
    SubtaskStatus,
    TreadleError,
    UnknownItemError,
    UnknownStageError,
    UsageError,
    Workflow,
    WorkItem,
)
from treadle_cli.engine import _proc_start
from treadle_cli.model import Owner, iso

from .support import T0, Calls, FakeClock, Gauge, kinds


def noop(item: WorkItem, ctx: StageContext) -> None:
    return None


def echo(item: WorkItem, ctx: StageContext) -> dict:
    return {"stage": ctx.stage}


def snapshot(wf: Workflow, store: Any, item_id: str) -> tuple:
    """Everything a decision could change: status, the event log and the decisions."""
    return (
        wf.status(item_id, store).to_json(),
        [e.to_json() for e in store.events()],
        [d.to_json() for d in store.decisions(item_id)],
    )


# --------------------------------------------------------------------- branches


def test_a_failure_on_one_branch_never_blocks_another(store, clock):
    def broken(item, ctx):
        raise RuntimeError("no")

    wf = (
        Workflow.builder("branches")
        .stage("root", echo)
        .stage("bad", broken, needs="root")
        .stage("after_bad", echo, needs="bad")
        .stage("good", echo, needs="root")
        .stage("after_good", echo, needs="good")
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    assert status.state is ItemState.FAILED
    assert status.failed_stages() == ["bad"]
    assert status.completed_stages() == ["root", "good", "after_good"]
    assert status.stage("after_bad").status is StageStatus.PENDING
    assert status.progress_percent() == 60.0


def test_a_review_on_one_branch_never_blocks_another(store, clock):
    wf = (
        Workflow.builder("branches")
        .stage("root", echo)
        .stage("gate", echo, needs="root", review=True)
        .stage("after_gate", echo, needs="gate")
        .stage("good", echo, needs="root")
        .stage("after_good", echo, needs="good")
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    assert status.state is ItemState.AWAITING_REVIEW
    assert status.review_stages() == ["gate"]
    assert status.completed_stages() == ["root", "good", "after_good"]
    assert status.stage("after_gate").status is StageStatus.PENDING


# ----------------------------------------------------------------- stage kinds


class SyncStage(Stage):
    def execute(self, item: WorkItem, ctx: StageContext) -> StageOutcome:
        return StageOutcome.complete({"kind": "sync", "data": ctx.data["n"]})


class AsyncStage(Stage):
    async def execute(self, item: WorkItem, ctx: StageContext) -> StageOutcome:
        await asyncio.sleep(0)
        return StageOutcome.complete({"kind": "async", "up": ctx.outputs["sync"]["kind"]})


def plain(item: WorkItem, ctx: StageContext) -> dict:
    return {"kind": "plain", "ups": sorted(ctx.outputs)}


async def async_plain(item: WorkItem, ctx: StageContext) -> None:
    await asyncio.sleep(0)


def kinds_workflow(clock: FakeClock, timeout: float | None = None) -> Workflow:
    return (
        Workflow.builder("kinds")
        .stage("sync", SyncStage(), timeout=timeout)
        .stage("async", AsyncStage, needs="sync", timeout=timeout)  # a class: instantiated
        .stage("plain", plain, needs="async", timeout=timeout)
        .stage("async_plain", async_plain, needs="plain", timeout=timeout)
        .build(clock=clock)
    )


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_sync_async_and_plain_function_stages_all_run(store, clock, timeout):
    status = kinds_workflow(clock, timeout).advance(Item("k", {"n": 7}), store)

    assert status.is_complete()
    out = {s.name: s.record.output for s in status.stages}
    assert out == {
        "sync": {"kind": "sync", "data": 7},
        "async": {"kind": "async", "up": "sync"},
        "plain": {"kind": "plain", "ups": ["async", "sync"]},
        "async_plain": None,
    }


def test_async_stages_run_when_advance_is_called_inside_an_event_loop(clock):
    store = MemoryStateStore()
    wf = kinds_workflow(clock)

    async def main() -> Any:
        return wf.advance(Item("k", {"n": 1}), store)

    assert asyncio.run(main()).is_complete()


# ------------------------------------------------------------ failed attempts


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_an_exception_is_a_failed_attempt_with_its_traceback(store, clock, timeout):
    def explode(item, ctx):
        raise ValueError("bad input")

    wf = (
        Workflow.builder("x")
        .stage("explode", explode, timeout=timeout)
        .stage("after", echo, needs="explode")
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    rec = status.stage("explode").record
    assert rec.status is StageStatus.FAILED
    assert rec.error == "ValueError: bad input"
    assert rec.output is None
    assert rec.traceback is not None
    assert "Traceback" in rec.traceback and "in explode" in rec.traceback
    assert rec.traceback.rstrip().endswith("ValueError: bad input")
    assert status.stage("after").status is StageStatus.PENDING
    failed = store.events(item_id="x")[-1]
    assert failed.kind.value == "stage_failed"
    assert failed.data == {"error": "ValueError: bad input", "attempts": 1}


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (42, "stage returned int"),
        ("done", "stage returned str"),
        ([1, 2], "stage returned list"),
        ({"when": datetime(2024, 1, 1)}, "not JSON-serializable"),
        (StageOutcome.complete({"obj": object()}), "not JSON-serializable"),
        (StageOutcome.needs_review("look", {1, 2}), "review data is not JSON-serializable"),
    ],
)
def test_garbage_from_a_stage_is_a_failed_attempt(store, clock, value, needle):
    wf = (
        Workflow.builder("x")
        .stage("bad", lambda item, ctx: value)
        .stage("after", echo, needs="bad")
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    rec = status.stage("bad").record
    assert rec.status is StageStatus.FAILED
    assert rec.error.startswith("TypeError: ")
    assert needle in rec.error
    assert rec.output is None
    assert status.stage("after").status is StageStatus.PENDING


def test_retries_back_off_exponentially_up_to_max_backoff(store, clock):
    attempts: list[int] = []

    def flaky(item, ctx):
        attempts.append(ctx.attempt)
        raise ConnectionError(f"try {ctx.attempt}")

    wf = (
        Workflow.builder("x")
        .stage("flaky", flaky, retry=RetryPolicy(max_attempts=5, backoff=1, max_backoff=3))
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    assert attempts == [1, 2, 3, 4, 5]
    assert clock.slept == [1, 2, 3, 3]
    assert clock.now() == T0 + timedelta(seconds=9)
    rec = status.stage("flaky").record
    assert (rec.status, rec.attempts, rec.error) == (
        StageStatus.FAILED,
        5,
        "ConnectionError: try 5",
    )
    retrying = [e for e in store.events(item_id="x") if e.kind.value == "stage_retrying"]
    assert [(e.data["attempt"], e.data["delay"]) for e in retrying] == [
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 3),
    ]
    assert retrying[0].data["error"] == "ConnectionError: try 1"


def test_a_retried_stage_succeeds_within_one_advance(store, clock):
    attempts: list[int] = []

    def flaky(item, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("not yet")
        return {"ok": ctx.attempt}

    wf = (
        Workflow.builder("x")
        .stage("flaky", flaky, retry=RetryPolicy(max_attempts=4, backoff=2, max_backoff=60))
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    assert status.is_complete()
    assert attempts == [1, 2, 3]
    assert clock.slept == [2, 4]
    rec = status.stage("flaky").record
    assert (rec.attempts, rec.output, rec.error, rec.next_attempt_at) == (3, {"ok": 3}, None, None)


def test_retry_outcome_uses_its_own_delay(store, clock):
    attempts: list[int] = []

    def poll(item, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            return StageOutcome.retry("not ready", delay=7.5)
        return None

    wf = (
        Workflow.builder("x")
        .stage("poll", poll, retry=RetryPolicy(max_attempts=3, backoff=100))
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    assert status.is_complete()
    assert attempts == [1, 2]
    assert clock.slept == [7.5]
    retrying = [e for e in store.events(item_id="x") if e.kind.value == "stage_retrying"]
    assert [(e.data["delay"], e.data["error"]) for e in retrying] == [(7.5, "retry: not ready")]


def test_a_retry_due_after_the_wait_budget_is_left_pending(store, clock):
    attempts: list[int] = []

    def flaky(item, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise TimeoutError("upstream slow")

    wf = (
        Workflow.builder("x")
        .stage("first", echo)
        .stage("flaky", flaky, needs="first", retry=RetryPolicy(max_attempts=2, backoff=120))
        .build(clock=clock)
    )
    status = wf.advance("x", store, wait=60)

    due = T0 + timedelta(seconds=120)
    rec = status.stage("flaky").record
    assert (rec.status, rec.next_attempt_at, rec.error) == (
        StageStatus.PENDING,
        due,
        "TimeoutError: upstream slow",
    )
    assert status.state is ItemState.PENDING
    assert status.to_json()["stages"][1]["next_attempt_at"] == iso(due)
    assert status.waiting_on == f"retry: flaky at {iso(due)}"
    assert clock.slept == []

    clock.advance(30)  # still early: nothing runs
    assert wf.advance("x", store, wait=0).stage("flaky").status is StageStatus.PENDING
    assert attempts == [1]

    clock.advance(90)
    status = wf.advance("x", store, wait=0)
    assert status.is_complete()
    assert attempts == [1, 2]
    assert clock.slept == []


def test_a_retry_due_within_the_wait_budget_runs_in_the_same_advance(store, clock):
    attempts: list[int] = []

    def flaky(item, ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise TimeoutError("upstream slow")

    wf = (
        Workflow.builder("x")
        .stage("flaky", flaky, retry=RetryPolicy(max_attempts=2, backoff=120))
        .build(clock=clock)
    )

    assert wf.advance("x", store, wait=300).is_complete()
    assert attempts == [1, 2]
    assert clock.slept == [120]


def test_a_sync_attempt_past_its_timeout_fails(store, clock):
    release = threading.Event()

    def stuck(item, ctx):
        release.wait(30)  # far longer than the timeout; released when the test ends

    wf = Workflow.builder("x").stage("stuck", stuck, timeout=0.2).build(clock=clock)
    try:
        status = wf.advance("x", store)
    finally:
        release.set()

    rec = status.stage("stuck").record
    assert rec.status is StageStatus.FAILED
    assert rec.error == "TimeoutError: attempt exceeded its timeout of 0.2s"


def test_an_async_attempt_past_its_timeout_fails(store, clock):
    cancelled = threading.Event()

    async def stuck(item, ctx):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    wf = Workflow.builder("x").stage("stuck", stuck, timeout=0.2).build(clock=clock)
    status = wf.advance("x", store)

    rec = status.stage("stuck").record
    assert rec.status is StageStatus.FAILED
    assert rec.error == "TimeoutError: attempt exceeded its timeout of 0.2s"
    assert cancelled.is_set()


def test_a_timeout_raised_by_the_stage_itself_keeps_its_message(store, clock):
    async def own(item, ctx):
        raise TimeoutError("the API timed out")

    wf = Workflow.builder("x").stage("own", own, timeout=5).build(clock=clock)
    assert wf.advance("x", store).stage("own").record.error == "TimeoutError: the API timed out"


def test_sys_exit_in_a_stage_is_a_failed_attempt(store, clock):
    import sys

    def quits(item, ctx):
        sys.exit(3)

    wf = Workflow.builder("x").stage("quits", quits).stage("other", echo).build(clock=clock)
    status = wf.advance("x", store)

    assert status.stage("quits").record.error == "SystemExit: 3"
    assert status.stage("quits").status is StageStatus.FAILED
    assert status.stage("other").status is StageStatus.COMPLETED


def test_fail_outcome_fails_at_once_without_retries(store, clock):
    calls = Calls()

    def corrupt(item, ctx):
        calls.add(ctx.attempt)
        return StageOutcome.fail("file is corrupt")

    wf = (
        Workflow.builder("x")
        .stage("corrupt", corrupt, retry=RetryPolicy(max_attempts=5))
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    assert calls.log == [1]
    assert clock.slept == []
    rec = status.stage("corrupt").record
    assert rec.status is StageStatus.FAILED
    assert "file is corrupt" in rec.error
    assert "stage_retrying" not in kinds(store.events(item_id="x"))


def test_skip_counts_as_done_for_downstream_and_progress(store, clock):
    calls = Calls()

    def maybe(item, ctx):
        return StageOutcome.skip("nothing to translate")

    def last(item, ctx):
        calls.add(ctx.stage)

    wf = (
        Workflow.builder("x")
        .stage("first", echo)
        .stage("translate", maybe, needs="first")
        .stage("last", last, needs="translate")
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    assert status.stage("translate").status is StageStatus.SKIPPED
    assert calls.log == ["last"]
    assert status.is_complete()
    assert status.progress_percent() == 100.0
    skipped = [e for e in store.events(item_id="x") if e.kind.value == "stage_skipped"]
    assert [e.data for e in skipped] == [{"reason": "nothing to translate"}]


# ---------------------------------------------------------------------- fan-out


def test_duplicate_subtask_names_are_a_failed_attempt(store, clock):
    def split(item, ctx):
        return StageOutcome.fan_out(["a", "b", "a", SubTask("b", {"x": 1}), "c"])

    wf = Workflow.builder("x").stage("split", split).build(clock=clock)
    status = wf.advance("x", store)

    rec = status.stage("split").record
    assert rec.status is StageStatus.FAILED
    assert rec.error == "ValueError: duplicate subtask names: a, b"
    assert store.get_subtasks("x") == []


@pytest.mark.parametrize("concurrency", [1, 2, 3, None])
def test_concurrency_bounds_parallel_subtasks(store, clock, concurrency):
    limit = concurrency or 4  # the default
    gauge = Gauge()
    # Each group of `limit` subtasks must meet: proves `limit` run at once (no timing).
    barrier = threading.Barrier(limit, timeout=30)

    def fan(item, ctx):
        if ctx.subtask is None:
            return StageOutcome.fan_out([f"part-{i}" for i in range(limit * 3)])
        with gauge:
            barrier.wait()
        return {"part": ctx.subtask}

    kw = {} if concurrency is None else {"concurrency": concurrency}
    wf = Workflow.builder("x").stage("fan", fan, **kw).build(clock=clock)
    status = wf.advance("x", store)

    assert status.is_complete(), str(status)
    assert gauge.peak == limit
    assert len(status.stage("fan").record.output) == limit * 3


def failing_subtask_workflow(clock: FakeClock, calls: Calls, broken: set[str]) -> Workflow:
    def enrich(item, ctx):
        calls.add(ctx.subtask)
        if ctx.subtask is None:
            return StageOutcome.fan_out(["a", "b", "c"])
        if ctx.subtask in broken:
            raise LookupError(f"{ctx.subtask} unavailable")
        return {"sub": ctx.subtask, "attempt": ctx.attempt}

    def publish(item, ctx):
        calls.add("publish")
        return {"saw": ctx.outputs["enrich"]}

    return (
        Workflow.builder("fan")
        .stage("enrich", enrich, concurrency=1, retry=RetryPolicy(max_attempts=2, backoff=1))
        .stage("publish", publish, needs="enrich")
        .build(clock=clock)
    )


def test_a_failing_subtask_exhausts_its_attempts_without_stopping_the_others(store, clock):
    calls, broken = Calls(), {"a"}
    wf = failing_subtask_workflow(clock, calls, broken)
    status = wf.advance("x", store)

    enrich = status.stage("enrich")
    assert enrich.status is StageStatus.FAILED
    assert {s.name: (s.status, s.attempts) for s in enrich.subtasks} == {
        "a": (SubtaskStatus.FAILED, 2),
        "b": (SubtaskStatus.COMPLETED, 1),
        "c": (SubtaskStatus.COMPLETED, 1),
    }
    assert enrich.subtasks[0].error == "LookupError: a unavailable"
    assert "a (LookupError: a unavailable)" in enrich.record.error
    assert status.failed_stages() == ["enrich"]
    assert status.stage("publish").status is StageStatus.PENDING
    assert calls.counts() == {None: 1, "a": 2, "b": 1, "c": 1}
    assert clock.slept == [1]
    assert kinds(store.events(item_id="x"))[-1] == "stage_failed"


def test_retry_reruns_only_the_failed_subtasks(store, clock):
    calls, broken = Calls(), {"a"}
    wf = failing_subtask_workflow(clock, calls, broken)
    wf.advance("x", store)

    broken.clear()
    events = wf.retry("x", "enrich", store)
    assert [(e.kind.value, e.data) for e in events] == [("stage_reset", {"subtasks": ["a"]})]
    assert wf.status("x", store).stage("enrich").status is StageStatus.PENDING
    status = wf.advance("x", store)

    assert status.is_complete()
    assert calls.counts() == {None: 1, "a": 3, "b": 1, "c": 1, "publish": 1}
    assert status.stage("enrich").record.output == {
        "a": {"sub": "a", "attempt": 3},
        "b": {"sub": "b", "attempt": 1},
        "c": {"sub": "c", "attempt": 1},
    }
    assert status.stage("publish").record.output == {"saw": status.stage("enrich").record.output}


@pytest.mark.timeout(60)
def test_an_advance_whose_fan_out_claim_is_taken_over_stops(clock):
    """Another process taking the stage over must not leave this advance spinning."""
    store = MemoryStateStore()
    calls = Calls()

    def fan(item, ctx):
        calls.add(ctx.subtask)
        if ctx.subtask is None:
            return StageOutcome.fan_out(["a", "b", "c"])
        if ctx.subtask == "a":  # simulate another host's takeover of the stage
            rec = next(r for r in store.get_stages(item.id) if r.name == "fan")
            store.claim_stage(
                item.id,
                "fan",
                expected=rec,
                claim="thief",
                owner=Owner("elsewhere", 1, "boot"),
                now=clock.now(),
                lease_until=clock.now() + timedelta(hours=1),
            )

    wf = Workflow.builder("x").stage("fan", fan, concurrency=1).build(clock=clock)
    status = wf.advance("x", store)

    assert status.stage("fan").status is StageStatus.RUNNING
    assert status.stage("fan").record.claim == "thief"
    assert calls.log == [None, "a"]


def test_a_subtask_retry_due_after_the_wait_budget_is_left_for_a_later_advance(store, clock):
    calls = Calls()

    def fan(item, ctx):
        calls.add((ctx.subtask, ctx.attempt))
        if ctx.subtask is None:
            return StageOutcome.fan_out(["a", "b"])
        if ctx.subtask == "b" and ctx.attempt == 1:
            return StageOutcome.retry("rate limited", delay=600)
        return {"sub": ctx.subtask}

    wf = (
        Workflow.builder("x")
        .stage("fan", fan, retry=RetryPolicy(max_attempts=2))
        .build(clock=clock)
    )
    status = wf.advance("x", store, wait=60)

    due = T0 + timedelta(seconds=600)
    fan_view = status.stage("fan")
    assert (fan_view.status, fan_view.record.next_attempt_at) == (StageStatus.PENDING, due)
    assert [(s.name, s.status, s.next_attempt_at) for s in fan_view.subtasks] == [
        ("a", SubtaskStatus.COMPLETED, None),
        ("b", SubtaskStatus.PENDING, due),
    ]
    assert status.waiting_on == f"retry: fan at {iso(due)}"

    clock.advance(600)
    status = wf.advance("x", store, wait=0)
    assert status.is_complete()
    assert status.stage("fan").record.output == {"a": {"sub": "a"}, "b": {"sub": "b"}}
    assert calls.counts() == {(None, 1): 1, ("a", 1): 1, ("b", 1): 1, ("b", 2): 1}


def subtask_review_workflow(clock: FakeClock, calls: Calls) -> Workflow:
    def enrich(item, ctx):
        calls.add((ctx.subtask, ctx.review and ctx.review.decision.value))
        if ctx.subtask is None:
            return StageOutcome.fan_out(["a", "b"])
        if ctx.subtask == "a" and ctx.review is None:
            return StageOutcome.needs_review("Is a right?", {"guess": 1})
        return {"sub": ctx.subtask}

    return (
        Workflow.builder("fan")
        .stage("enrich", enrich)
        .stage("after", lambda item, ctx: {"up": ctx.outputs["enrich"]}, needs="enrich")
        .build(clock=clock)
    )


def test_a_subtask_review_is_decided_on_the_subtask(store, clock):
    calls = Calls()
    wf = subtask_review_workflow(clock, calls)
    status = wf.advance("x", store)

    assert status.review_stages() == ["enrich"]
    assert [r["subtask"] for r in store.pending_reviews()] == ["a"]
    before = snapshot(wf, store, "x")
    with pytest.raises(ConflictError, match="enrich/a"):
        wf.approve_review("x", "enrich", store, by="ann")
    assert snapshot(wf, store, "x") == before

    result = wf.approve_review("x", "enrich/a", store, by="ann", output={"guess": 2})
    assert (result.stage, result.subtask, result.changed) == ("enrich", "a", True)
    status = wf.advance("x", store)
    assert status.is_complete()
    assert status.stage("after").record.output == {"up": {"a": {"guess": 2}, "b": {"sub": "b"}}}
    assert calls.counts() == {(None, None): 1, ("a", None): 1, ("b", None): 1}


def test_a_rejected_subtask_reruns_alone_after_retry(store, clock):
    calls = Calls()
    wf = subtask_review_workflow(clock, calls)
    wf.advance("x", store)

    wf.reject_review("x", "enrich", "wrong", store, by="ann", subtask="a")
    assert wf.status("x", store).state is ItemState.REJECTED
    wf.retry("x", "enrich", store)
    status = wf.advance("x", store)

    assert status.is_complete()
    assert calls.counts() == {(None, None): 1, ("a", None): 1, ("b", None): 1, ("a", "rejected"): 1}


def test_review_always_on_a_fan_out_stage_reviews_the_combined_output(store, clock):
    def fan(item, ctx):
        if ctx.subtask is None:
            return StageOutcome.fan_out(["a", "b"])
        return {"sub": ctx.subtask}

    wf = Workflow.builder("x").stage("fan", fan, review=True).build(clock=clock)
    status = wf.advance("x", store)

    rec = status.stage("fan").record
    assert rec.status is StageStatus.AWAITING_REVIEW
    assert rec.review_data == {"a": {"sub": "a"}, "b": {"sub": "b"}}
    wf.approve_review("x", "fan", store, by="bo")
    assert wf.status("x", store).is_complete()


# ---------------------------------------------------------------------- reviews


def review_workflow(clock: FakeClock, seen: list[Any]) -> Workflow:
    def draft(item, ctx):
        seen.append(("draft", ctx.attempt, ctx.review))
        return StageOutcome.needs_review("Is the draft right?", {"text": "v1"})

    def publish(item, ctx):
        seen.append(("publish", ctx.outputs["draft"]))
        return {"published": ctx.outputs["draft"]}

    return (
        Workflow.builder("review")
        .stage("draft", draft)
        .stage("publish", publish, needs="draft")
        .build(clock=clock)
    )


def test_needs_review_persists_prompt_and_data(tmp_path, clock):
    path = tmp_path / "reviews.db"
    store = SqliteStateStore.open(path)
    review_workflow(clock, []).advance("x", store)
    store.close()

    reopened = SqliteStateStore.open(path)
    status = Workflow.builder("other").stage("a", noop).build().status("x", reopened)
    rec = status.stage("draft").record
    assert (rec.status, rec.review_prompt, rec.review_data, rec.requested_at) == (
        StageStatus.AWAITING_REVIEW,
        "Is the draft right?",
        {"text": "v1"},
        T0,
    )
    assert status.to_json()["stages"][0]["review"] == {
        "prompt": "Is the draft right?",
        "data": {"text": "v1"},
        "requested_at": iso(T0),
    }
    assert reopened.pending_reviews() == [
        {
            "item": "x",
            "stage": "draft",
            "subtask": None,
            "prompt": "Is the draft right?",
            "data": {"text": "v1"},
            "requested_at": iso(T0),
        }
    ]
    reopened.close()


def test_review_always_pauses_after_success_until_approved(store, clock):
    seen: list[Any] = []

    def publish(item, ctx):
        seen.append(ctx.outputs)

    wf = (
        Workflow.builder("x")
        .stage("render", lambda i, c: {"html": "<p>"}, review=True)
        .stage("publish", publish, needs="render")
        .build(clock=clock)
    )
    status = wf.advance("x", store)

    rec = status.stage("render").record
    assert rec.status is StageStatus.AWAITING_REVIEW
    assert rec.review_data == {"html": "<p>"}
    assert rec.review_prompt
    assert seen == []

    wf.approve_review("x", "render", store, by="dana")
    status = wf.advance("x", store)
    assert status.is_complete()
    assert status.stage("render").record.output == {"html": "<p>"}
    assert seen == [{"render": {"html": "<p>"}}]


def test_an_approved_edited_output_is_what_downstream_sees(store, clock):
    seen: list[Any] = []
    wf = review_workflow(clock, seen)
    wf.advance("x", store)

    wf.approve_review("x", "draft", store, by="erin", output={"text": "v2, edited"})
    status = wf.advance("x", store)

    assert status.stage("draft").record.output == {"text": "v2, edited"}
    assert seen[-1] == ("publish", {"text": "v2, edited"})
    assert status.stage("publish").record.output == {"published": {"text": "v2, edited"}}


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_reject_requires_a_reason(store, clock, reason):
    wf = review_workflow(clock, [])
    wf.advance("x", store)
    before = snapshot(wf, store, "x")

    with pytest.raises(UsageError, match="reason"):
        wf.reject_review("x", "draft", reason, store, by="frank")
    assert snapshot(wf, store, "x") == before


def test_reject_then_retry_reruns_the_stage_with_the_rejection(store, clock):
    seen: list[Any] = []
    wf = review_workflow(clock, seen)
    wf.advance("x", store)

    clock.advance(10)
    wf.reject_review("x", "draft", "wrong tone", store, by="gina")
    status = wf.status("x", store)
    assert status.state is ItemState.REJECTED
    assert status.stage("draft").record.error == "rejected by gina: wrong tone"
    assert wf.advance("x", store).state is ItemState.REJECTED  # nothing runs
    assert len(seen) == 1

    wf.retry("x", "draft", store)
    status = wf.advance("x", store)
    assert status.review_stages() == ["draft"]
    name, attempt, review = seen[-1]
    assert (name, attempt) == ("draft", 2)
    assert review.decision == DecisionKind.REJECTED == "rejected"
    assert (review.reason, review.by, review.at) == (
        "wrong tone",
        "gina",
        T0 + timedelta(seconds=10),
    )

    wf.approve_review("x", "draft", store, by="gina")
    assert wf.advance("x", store).is_complete()


def test_conflicting_decisions_raise_and_change_nothing(store, clock):
    wf = (
        Workflow.builder("x")
        .stage("done", echo)
        .stage("gate", echo, review=True)
        .stage("later", echo, needs="gate")
        .build(clock=clock)
    )
    wf.advance("x", store)
    wf.reject_review("x", "gate", "no", store, by="hal")

    before = snapshot(wf, store, "x")
    attempts = [
        lambda: wf.approve_review("x", "done", store, by="hal"),  # completed, never reviewed
        lambda: wf.reject_review("x", "later", "why", store, by="hal"),  # pending
        lambda: wf.approve_review("x", "gate", store, by="hal"),  # after a rejection
        lambda: wf.retry("x", "done", store),  # only failed or rejected stages
        lambda: wf.retry("x", "later", store),
    ]
    for attempt in attempts:
        with pytest.raises(ConflictError) as info:
            attempt()
        assert info.value.exit_code == 3
        assert snapshot(wf, store, "x") == before


def test_rejecting_an_approved_stage_is_a_conflict(store, clock):
    wf = review_workflow(clock, [])
    wf.advance("x", store)
    wf.approve_review("x", "draft", store, by="ivy")
    before = snapshot(wf, store, "x")

    with pytest.raises(ConflictError, match="not awaiting review"):
        wf.reject_review("x", "draft", "changed my mind", store, by="ivy")
    assert snapshot(wf, store, "x") == before


def test_a_repeated_identical_decision_is_a_no_op(store, clock):
    wf = (
        Workflow.builder("x")
        .stage("a", echo, review=True)
        .stage("b", echo, review=True)
        .build(clock=clock)
    )
    wf.advance("x", store)
    first = wf.approve_review("x", "a", store, by="jo")
    wf.reject_review("x", "b", "no", store, by="jo")
    before = snapshot(wf, store, "x")

    again = wf.approve_review("x", "a", store, by="jo")
    assert (first.changed, again.changed, again.events) == (True, False, [])
    assert again.message == "x a already approved"
    assert "already rejected" in wf.reject_review("x", "b", "no", store, by="jo").message
    assert snapshot(wf, store, "x") == before


def test_every_decision_is_stored_with_who_when_and_why(store, clock):
    wf = review_workflow(clock, [])
    wf.advance("x", store)
    clock.advance(5)
    wf.reject_review("x", "draft", "typos", store, by="kim")
    wf.retry("x", "draft", store)
    wf.advance("x", store)
    clock.advance(5)
    wf.approve_review("x", "draft", store, by="lee", comment="better", output={"text": "v3"})

    got = [(d.decision, d.by, d.at, d.reason, d.comment, d.output) for d in store.decisions("x")]
    assert got == [
        (DecisionKind.REJECTED, "kim", T0 + timedelta(seconds=5), "typos", None, None),
        (DecisionKind.APPROVED, "lee", T0 + timedelta(seconds=10), None, "better", {"text": "v3"}),
    ]
    assert store.last_decision("x", "draft").by == "lee"
    approved = [e for e in store.events(item_id="x") if e.kind.value == "review_approved"]
    assert approved[0].data["by"] == "lee" and approved[0].data["comment"] == "better"


def test_deciding_an_unknown_item_or_stage_is_a_usage_error(store, clock):
    wf = review_workflow(clock, [])
    wf.advance("x", store)

    with pytest.raises(UnknownItemError):
        wf.approve_review("nope", "draft", store, by="m")
    with pytest.raises(UnknownStageError, match="publish") as info:
        wf.approve_review("x", "pubilsh", store, by="m")
    assert isinstance(info.value, UsageError)
    with pytest.raises(UnknownStageError):
        wf.retry("x", "nope", store)


# ----------------------------------------------------------------------- events


def test_subscribers_get_the_logs_events_in_the_logs_order(store, clock):
    """Many stages commit from parallel threads; listeners must still see log order."""

    def work(item, ctx):
        if ctx.stage.startswith("fan") and ctx.subtask is None:
            return StageOutcome.fan_out(["p", "q", "r", "s"])
        if ctx.stage == "bad" and ctx.attempt == 1:
            raise RuntimeError("first try fails")
        return {"at": ctx.stage, "sub": ctx.subtask}

    builder = Workflow.builder("wide").stage("root", work)
    for name in ("fan1", "fan2", "bad", "w1", "w2", "w3"):
        builder.stage(name, work, needs="root")
    builder.stage("gate", work, needs=["fan1", "fan2"], review=True)
    wf = builder.build(clock=clock)

    sub = wf.subscribe()
    via_callback: list[Any] = []

    def slow_listener(ev: Any) -> None:
        time.sleep(0.0005)  # lets other threads commit meanwhile
        via_callback.append(ev)

    unsubscribe = wf.subscribe(slow_listener)
    for n in range(3):
        wf.advance(f"i{n}", store)
        wf.approve_review(f"i{n}", "gate", store, by="nina")
        wf.retry(f"i{n}", "bad", store)
        wf.advance(f"i{n}", store)
    unsubscribe()
    wf.advance("after-unsubscribe", store)

    logged = [e.to_json() for e in store.events() if e.item_id != "after-unsubscribe"]
    assert all(wf.is_complete(f"i{n}", store) for n in range(3))
    assert [e.to_json() for e in via_callback] == logged
    queued = sub.drain()
    assert [e.to_json() for e in queued] == [e.to_json() for e in store.events()]
    sub.close()
    wf.advance(Item("after-close"), store)
    assert sub.drain() == []


def test_a_failing_listener_is_logged_and_never_wedges_the_item(store, clock, caplog):
    def broken_listener(ev: Any) -> None:
        if ev.kind.value == "stage_started":
            raise RuntimeError("listener bug")

    good: list[Any] = []
    wf = Workflow.builder("x").stage("a", echo).stage("b", echo, needs="a").build(clock=clock)
    wf.subscribe(broken_listener)
    wf.subscribe(good.append)
    with caplog.at_level("ERROR", logger="treadle"):
        status = wf.advance("x", store)

    assert status.is_complete()
    assert [e.to_json() for e in good] == [e.to_json() for e in store.events()]
    assert "listener bug" in caplog.text


# ---------------------------------------------------------------- claims


def claim_as(
    store: Any, item_id: str, stage: str, owner: Owner, now: datetime, lease: timedelta
) -> None:
    """Mark ``stage`` running under ``owner``, as another process's advance would."""
    rec = next(r for r in store.get_stages(item_id) if r.name == stage)
    got = store.claim_stage(
        item_id,
        stage,
        expected=rec,
        claim="someone-else",
        owner=owner,
        now=now,
        lease_until=now + lease,
    )
    assert got is not None


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claim_workflow(clock: FakeClock, calls: Calls) -> Workflow:
    def run(item, ctx):
        calls.add((ctx.stage, ctx.attempt))

    return (
        Workflow.builder("claims")
        .stage("held", run)
        .stage("after_held", run, needs="held")
        .stage("free", run)
        .build(clock=clock)
    )


def test_a_stage_held_by_a_live_process_on_this_host_is_skipped(store, clock):
    calls = Calls()
    wf = claim_workflow(clock, calls)
    store.register_item("x", "claims", {}, None, wf.pipeline.hash, wf.pipeline.order, clock.now())
    parent = os.getppid()  # alive for as long as this test runs
    live = Owner(socket.gethostname(), parent, _proc_start(parent) or "")
    claim_as(store, "x", "held", live, clock.now(), timedelta(hours=1))

    status = wf.advance("x", store)

    assert status.running_stages() == ["held"]
    assert status.stage("after_held").status is StageStatus.PENDING
    assert status.stage("free").status is StageStatus.COMPLETED
    assert status.state is ItemState.RUNNING
    assert calls.log == [("free", 1)]


def test_a_stage_held_by_a_dead_process_on_this_host_is_taken_over_at_once(store, clock):
    calls = Calls()
    wf = claim_workflow(clock, calls)
    store.register_item("x", "claims", {}, None, wf.pipeline.hash, wf.pipeline.order, clock.now())
    gone = Owner(socket.gethostname(), dead_pid(), "12345")
    claim_as(store, "x", "held", gone, clock.now(), timedelta(hours=1))  # lease still valid

    status = wf.advance("x", store)

    assert status.is_complete()
    assert ("held", 2) in calls.log  # at-least-once: ctx.attempt says it is a second run
    started = [
        e
        for e in store.events(item_id="x")
        if e.stage == "held" and e.kind.value == "stage_started"
    ]
    assert started[-1].data["previous_owner"] == f"{gone.host}:{gone.pid}"


def test_a_stage_held_on_another_host_waits_for_its_lease(store, clock):
    calls = Calls()
    wf = claim_workflow(clock, calls)
    store.register_item("x", "claims", {}, None, wf.pipeline.hash, wf.pipeline.order, clock.now())
    elsewhere = Owner("some-other-host", 1, "boot")
    claim_as(store, "x", "held", elsewhere, clock.now(), timedelta(minutes=10))

    status = wf.advance("x", store)
    assert status.running_stages() == ["held"]
    assert calls.log == [("free", 1)]

    clock.advance(601)
    status = wf.advance("x", store)
    assert status.is_complete()
    assert calls.counts() == {("free", 1): 1, ("held", 2): 1, ("after_held", 1): 1}


def test_threads_advancing_one_item_never_run_a_stage_twice(store, clock):
    calls = Calls()

    def run(item, ctx):
        calls.add(ctx.stage)
        time.sleep(0.01)  # keeps the stage running while the other threads look

    builder = Workflow.builder("threads").stage("root", run)
    for n in range(6):
        builder.stage(f"s{n}", run, needs="root")
    wf = builder.build(clock=clock)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                if wf.advance("x", store).is_complete():
                    return
                time.sleep(0.005)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    # Whoever finishes root goes on to claim what nobody else did, so all is done.
    assert wf.is_complete("x", store)
    assert calls.counts() == dict.fromkeys(["root", *(f"s{n}" for n in range(6))], 1)


# ------------------------------------------------------------- pipeline changes


def versioned(
    clock: FakeClock,
    calls: Calls,
    stages: list[tuple[str, str | None]],
    name: str = "docs",
    fail: frozenset[str] = frozenset(),
) -> Workflow:
    def run(item, ctx):
        calls.add(ctx.stage)
        if ctx.stage in fail:
            raise RuntimeError("broken")
        return {"by": ctx.stage}

    builder = Workflow.builder(name)
    for stage, needs in stages:
        builder.stage(stage, run, needs=needs or ())
    return builder.build(clock=clock)


def test_a_new_stage_in_a_changed_pipeline_becomes_pending_then_runs(store, clock):
    calls = Calls()
    v1 = versioned(clock, calls, [("a", None), ("b", "a"), ("c", "b")])
    assert v1.advance("x", store).is_complete()
    old_hash = store.get_item("x").pipeline_hash

    seen: list[Any] = []
    v2 = versioned(clock, calls, [("a", None), ("b", "a"), ("c", "b"), ("d", "c")])
    v2.subscribe(seen.append)
    status = v2.advance("x", store)

    assert status.is_complete()
    assert [s.name for s in status.stages] == ["a", "b", "c", "d"]
    assert calls.counts() == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert store.get_item("x").pipeline_hash != old_hash
    assert [(e.kind.value, e.stage) for e in seen] == [
        ("stage_started", "d"),
        ("stage_completed", "d"),
        ("item_completed", None),
    ]


def test_new_stages_behind_a_new_gate_stay_pending_until_it_is_approved(store, clock):
    calls = Calls()
    v1 = versioned(clock, calls, [("a", None), ("b", "a"), ("c", "b")])
    v1.advance("x", store)

    builder = Workflow.builder("docs")  # the same pipeline, with d behind a new gate
    for name, needs in [("a", None), ("b", "a"), ("c", "b"), ("gate", "c"), ("d", "gate")]:
        builder.stage(
            name, lambda item, ctx: calls.add(ctx.stage), needs=needs or (), review=name == "gate"
        )
    v3 = builder.build(clock=clock)
    status = v3.advance("x", store)

    assert [(s.name, s.status) for s in status.stages] == [
        ("a", StageStatus.COMPLETED),
        ("b", StageStatus.COMPLETED),
        ("c", StageStatus.COMPLETED),
        ("gate", StageStatus.AWAITING_REVIEW),
        ("d", StageStatus.PENDING),
    ]
    assert status.progress_percent() == 60.0
    v3.approve_review("x", "gate", store, by="olga")
    assert v3.advance("x", store).is_complete()
    assert calls.counts() == {"a": 1, "b": 1, "c": 1, "gate": 1, "d": 1}


def test_a_removed_stage_keeps_its_history_but_no_longer_counts(store, clock):
    calls = Calls()
    v1 = versioned(clock, calls, [("a", None), ("b", "a"), ("c", "b")], fail=frozenset({"b"}))
    status = v1.advance("x", store)
    assert status.state is ItemState.FAILED
    assert status.progress_percent() == pytest.approx(33.3)

    v2 = versioned(clock, calls, [("a", None), ("c", "a")])
    status = v2.advance("x", store)

    assert status.is_complete()
    assert status.progress_percent() == 100.0
    assert [s.name for s in status.stages] == ["a", "c"]
    assert [s.name for s in store.get_stages("x")] == ["a", "c"]
    history = {s.name: s for s in store.get_stages("x", include_inactive=True)}
    assert history["b"].active is False
    assert (history["b"].status, history["b"].error) == (StageStatus.FAILED, "RuntimeError: broken")
    assert calls.counts() == {"a": 1, "b": 1, "c": 1}


def test_an_item_of_one_pipeline_cannot_be_advanced_by_another(store, clock):
    calls = Calls()
    versioned(clock, calls, [("a", None)], name="pipeline-a").advance("x", store)
    other = versioned(clock, calls, [("a", None)], name="pipeline-b")

    with pytest.raises(UsageError, match="pipeline-a"):
        other.advance("x", store)
    assert calls.log == ["a"]


def test_a_completed_stage_never_runs_again(store, clock):
    calls = Calls()
    wf = versioned(clock, calls, [("a", None), ("b", "a"), ("c", "b")], fail=frozenset({"c"}))
    for _ in range(4):
        wf.advance("x", store)
    wf.retry("x", "c", store)
    wf.advance("x", store)

    assert calls.counts() == {"a": 1, "b": 1, "c": 2}
    assert wf.status("x", store).stage("a").attempts == 1


def test_status_of_an_unknown_item_is_a_usage_error(store, clock):
    wf = versioned(clock, Calls(), [("a", None)])
    with pytest.raises(UnknownItemError, match="nope"):
        wf.status("nope", store)
    with pytest.raises(UnknownItemError):
        wf.is_complete("nope", store)


@pytest.mark.parametrize("bad_id", ["", "   ", "a\nb", "x" * 201])
def test_bad_item_ids_are_usage_errors(store, clock, bad_id):
    wf = versioned(clock, Calls(), [("a", None)])
    with pytest.raises(UsageError):
        wf.advance(bad_id, store)


def test_item_data_must_be_a_json_object(store, clock):
    wf = versioned(clock, Calls(), [("a", None)])
    with pytest.raises(UsageError, match="JSON object"):
        wf.advance(Item("x", [1, 2]), store)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="JSON"):
        wf.advance(Item("x", {"when": datetime(2024, 1, 1)}), store)
    assert store.get_item("x") is None


# ------------------------------------------------------------------ the builder


def test_builder_rejects_a_dependency_on_an_unknown_stage():
    builder = Workflow.builder("x").stage("parse", noop).stage("export", noop)
    with pytest.raises(PipelineError, match="parsee") as info:
        builder.dependency("export", "parsee").build()
    assert isinstance(info.value, TreadleError)
    assert "export" in str(info.value)


def test_builder_rejects_a_dependency_of_an_unknown_stage():
    with pytest.raises(TreadleError, match="ghost"):
        Workflow.builder("x").stage("parse", noop).dependency("ghost", "parse").build()


def test_builder_rejects_a_duplicate_stage():
    with pytest.raises(PipelineError, match="duplicate stage 'parse'"):
        Workflow.builder("x").stage("parse", noop).stage("parse", echo).build()


@pytest.mark.parametrize(
    ("edges", "names"),
    [
        ([("a", "b"), ("b", "a")], ["a", "b"]),
        ([("b", "a"), ("c", "b"), ("a", "c")], ["a", "b", "c"]),
        ([("a", "a")], ["a"]),
    ],
)
def test_builder_rejects_a_cycle_naming_its_stages(edges, names):
    builder = Workflow.builder("x")
    for n in ("a", "b", "c"):
        builder.stage(n, noop)
    for stage, needs in edges:
        builder.dependency(stage, needs)

    with pytest.raises(CycleError) as info:
        builder.build()
    message = str(info.value)
    assert "cycle" in message
    assert all(f"{n} " in message or message.endswith(n) for n in names)
    assert sorted(info.value.stages) == names
