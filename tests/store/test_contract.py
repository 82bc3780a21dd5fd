"""The StateStore contract: the same behaviours, run against every store.

Each test takes the parametrized ``store`` (through the ``drv`` driver), so a new store joins
the suite by being added to ``STORE_KINDS`` in conftest.py.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treadle_cli.errors import ConflictError, UnknownItemError, UnknownStageError
from treadle_cli.model import (
    DecisionKind,
    EventKind,
    ItemState,
    ReviewData,
    StageChange,
    StageStatus,
    SubTask,
    SubtaskChange,
    SubtaskStatus,
    iso,
)
from treadle_cli.store import StateStore

if TYPE_CHECKING:
    from conftest import Driver


S, T, E = StageStatus, SubtaskStatus, EventKind


# ------------------------------------------------------------------ register_item


def test_register_item_creates_every_stage_pending(drv: Driver) -> None:
    rec, events = drv.register("doc-1", ["parse", "enrich", "publish"], data={"title": "x"})

    assert (rec.id, rec.pipeline, rec.data) == ("doc-1", "p", {"title": "x"})
    assert (rec.pipeline_path, rec.pipeline_hash) == ("p.yaml", "h1")
    assert (rec.state, rec.progress) == (ItemState.PENDING, 0.0)
    assert drv.store.get_item("doc-1") == rec
    stages = drv.store.get_stages("doc-1")
    assert [(s.name, s.status, s.position, s.attempts, s.active) for s in stages] == [
        ("parse", S.PENDING, 0, 0, True),
        ("enrich", S.PENDING, 1, 0, True),
        ("publish", S.PENDING, 2, 0, True),
    ]
    assert [(e.kind, e.item_id, e.stage, e.subtask, e.data) for e in events] == [
        (E.ITEM_REGISTERED, "doc-1", None, None, {"pipeline": "p", "path": "p.yaml"}),
    ]
    assert drv.store.events() == events


def test_register_item_twice_returns_the_existing_item_and_no_events(drv: Driver) -> None:
    first, _ = drv.register("doc-1", ["a"], data={"v": 1})
    before = drv.snapshot("doc-1")

    again, events = drv.register("doc-1", ["a", "b", "c"], data={"v": 2}, pipeline="other")

    assert events == []
    assert again == first
    assert again.data == {"v": 1}
    assert drv.snapshot("doc-1") == before


def test_register_item_without_stages_is_complete_at_once(drv: Driver) -> None:
    rec, events = drv.register("empty", [])

    assert drv.kinds(events) == [E.ITEM_REGISTERED, E.ITEM_COMPLETED]
    stored = drv.store.get_item("empty")
    assert stored is not None
    assert (stored.state, stored.progress) == (ItemState.COMPLETED, 100.0)
    assert rec == stored


def test_unknown_item_reads_as_nothing(drv: Driver) -> None:
    s = drv.store
    assert s.get_item("nope") is None
    assert s.get_stages("nope") == []
    assert s.get_subtasks("nope") == []
    assert s.decisions("nope") == []
    assert s.last_decision("nope", "a") is None
    assert s.events(item_id="nope") == []


# -------------------------------------------------------------------- sync_stages


def test_sync_stages_adds_new_stages_pending_and_keeps_removed_ones_inactive(
    drv: Driver,
) -> None:
    drv.register("i", ["a", "b", "c"])
    drv.run("i", "a")
    drv.run("i", "b", S.FAILED, error="boom")

    events = drv.store.sync_stages("i", ["a", "c", "d"], "p2.yaml", "h2", drv.now())

    assert events == []
    active = drv.store.get_stages("i")
    assert [(s.name, s.status, s.position) for s in active] == [
        ("a", S.COMPLETED, 0),
        ("c", S.PENDING, 1),
        ("d", S.PENDING, 2),
    ]
    every = {s.name: s for s in drv.store.get_stages("i", include_inactive=True)}
    assert set(every) == {"a", "b", "c", "d"}
    removed = every["b"]
    assert (removed.active, removed.status, removed.error) == (False, S.FAILED, "boom")
    item = drv.store.get_item("i")
    assert item is not None
    assert (item.pipeline_path, item.pipeline_hash) == ("p2.yaml", "h2")
    # The failed stage no longer counts: the item is pending again, a third of the way.
    assert (item.state, item.progress) == (ItemState.PENDING, 33.3)


def test_sync_stages_recomputes_the_item_state(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    drv.run("i", "a")
    assert drv.store.get_item("i").state == ItemState.PENDING  # type: ignore[union-attr]

    events = drv.store.sync_stages("i", ["a"], "p.yaml", "h2", drv.now())

    assert drv.kinds(events) == [E.ITEM_COMPLETED]
    item = drv.store.get_item("i")
    assert item is not None
    assert (item.state, item.progress) == (ItemState.COMPLETED, 100.0)

    # Bringing the stage back revives its row as it was (pending), so the item reopens.
    assert drv.store.sync_stages("i", ["a", "b"], "p.yaml", "h1", drv.now()) == []
    item = drv.store.get_item("i")
    assert item is not None
    assert (item.state, item.progress) == (ItemState.PENDING, 50.0)
    assert drv.statuses("i") == {"a": S.COMPLETED, "b": S.PENDING}


def test_sync_stages_on_an_unknown_item_raises(drv: Driver) -> None:
    with pytest.raises(UnknownItemError) as info:
        drv.store.sync_stages("ghost", ["a"], None, None, drv.now())
    assert info.value.exit_code == 2
    assert drv.store.get_item("ghost") is None


# -------------------------------------------------------------------- claim_stage


def test_claim_stage_moves_pending_to_running(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    expected = drv.stage("i", "a")
    now = drv.now()

    got = drv.store.claim_stage(
        "i",
        "a",
        expected=expected,
        claim="c1",
        owner=drv.owner,
        now=now,
        lease_until=now + timedelta(seconds=30),
    )

    assert got is not None
    rec, events = got
    assert (rec.status, rec.claim, rec.attempts) == (S.RUNNING, "c1", 1)
    assert (rec.owner_host, rec.owner_pid, rec.owner_started) == ("host-a", 4242, "boot-1")
    assert (rec.started_at, rec.lease_until) == (now, now + timedelta(seconds=30))
    assert drv.stage("i", "a") == rec
    assert [(e.kind, e.stage, e.data) for e in events] == [
        (E.STAGE_STARTED, "a", {"attempt": 1, "owner": "host-a:4242"}),
    ]
    assert drv.store.get_item("i").state == ItemState.RUNNING  # type: ignore[union-attr]


def test_claim_stage_with_a_stale_expected_record_returns_none(drv: Driver) -> None:
    drv.register("i", ["a"])
    stale = drv.stage("i", "a")
    assert drv.claim("i", "a", "first") is not None
    before = drv.snapshot("i")

    now = drv.now()
    second = drv.store.claim_stage(
        "i", "a", expected=stale, claim="second", owner=drv.owner, now=now, lease_until=None
    )

    assert second is None
    assert drv.snapshot("i") == before
    assert drv.stage("i", "a").claim == "first"


def test_claim_stage_takes_over_a_running_stage_it_was_shown(drv: Driver) -> None:
    drv.register("i", ["a"])
    drv.claim("i", "a", "dead-owner")

    got = drv.claim("i", "a", "heir")  # expected = the running record, as read just now

    assert got is not None
    rec, events = got
    assert (rec.status, rec.claim, rec.attempts) == (S.RUNNING, "heir", 2)
    assert events[0].data == {"attempt": 2, "owner": "host-a:4242", "previous_owner": "host-a:4242"}
    # The dead owner can no longer write its result.
    assert drv.finish("i", "a", S.COMPLETED, claim="dead-owner") is None


def test_claim_stage_of_an_unknown_stage_returns_none(drv: Driver) -> None:
    drv.register("i", ["a"])
    expected = drv.stage("i", "a")
    now = drv.now()
    assert (
        drv.store.claim_stage(
            "i", "zz", expected=expected, claim="c", owner=drv.owner, now=now, lease_until=None
        )
        is None
    )
    assert (
        drv.store.claim_stage(
            "ghost", "a", expected=expected, claim="c", owner=drv.owner, now=now, lease_until=None
        )
        is None
    )


@pytest.mark.parametrize("status", [S.COMPLETED, S.SKIPPED, S.AWAITING_REVIEW])
def test_claiming_a_stage_outside_the_transition_table_raises_conflict(
    drv: Driver,
    status: StageStatus,
) -> None:
    drv.register("i", ["a", "b"])
    if status == S.AWAITING_REVIEW:
        drv.review("i", "a")
    else:
        drv.run("i", "a", status)
    before = drv.snapshot("i")

    with pytest.raises(ConflictError) as info:
        drv.claim("i", "a", "again")

    assert info.value.exit_code == 3
    assert drv.snapshot("i") == before


# ------------------------------------------------------------------- finish_stage


def test_finish_stage_writes_the_result_and_releases_the_claim(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    drv.claim("i", "a")
    now = drv.now()

    events = drv.store.finish_stage(
        "i",
        "a",
        claim="c1",
        change=StageChange(S.COMPLETED, output={"n": 1}),
        events=[(E.STAGE_COMPLETED, None, {"ms": 3})],
        now=now,
    )

    assert events is not None
    assert [(e.kind, e.item_id, e.stage, e.subtask, e.data, e.ts) for e in events] == [
        (E.STAGE_COMPLETED, "i", "a", None, {"ms": 3}, now),
    ]
    rec = drv.stage("i", "a")
    assert (rec.status, rec.output, rec.finished_at, rec.updated_at) == (
        S.COMPLETED,
        {"n": 1},
        now,
        now,
    )
    assert (rec.claim, rec.owner_host, rec.owner_pid, rec.owner_started, rec.lease_until) == (
        None,
        None,
        None,
        None,
        None,
    )
    item = drv.store.get_item("i")
    assert item is not None
    assert (item.state, item.progress) == (ItemState.PENDING, 50.0)


def test_finish_stage_with_the_wrong_claim_returns_none_and_changes_nothing(
    drv: Driver,
) -> None:
    drv.register("i", ["a"])
    drv.claim("i", "a", "mine")
    before = drv.snapshot("i")

    out = drv.finish(
        "i",
        "a",
        S.COMPLETED,
        claim="not-mine",
        output={"x": 1},
        events=[(E.STAGE_COMPLETED, None, None)],
    )

    assert out is None
    assert drv.snapshot("i") == before


def test_finish_stage_twice_returns_none_the_second_time(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    drv.run("i", "a")
    before = drv.snapshot("i")
    assert drv.finish("i", "a", S.FAILED, error="late") is None
    assert drv.snapshot("i") == before


def test_finish_stage_for_review_records_the_request(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    drv.claim("i", "a")
    now = drv.now()
    drv.store.finish_stage(
        "i",
        "a",
        claim="c1",
        change=StageChange(
            S.AWAITING_REVIEW, review_prompt="Check it", review_data={"draft": [1, 2]}
        ),
        events=[(E.REVIEW_REQUIRED, None, {"prompt": "Check it"})],
        now=now,
    )

    rec = drv.stage("i", "a")
    assert (rec.status, rec.review_prompt, rec.review_data, rec.requested_at) == (
        S.AWAITING_REVIEW,
        "Check it",
        {"draft": [1, 2]},
        now,
    )
    assert drv.store.get_item("i").state == ItemState.AWAITING_REVIEW  # type: ignore[union-attr]


def test_finish_stage_back_to_pending_schedules_a_retry(drv: Driver) -> None:
    drv.register("i", ["a"])
    drv.claim("i", "a")
    due = drv.now() + timedelta(seconds=10)

    drv.finish(
        "i",
        "a",
        S.PENDING,
        error="flaky",
        traceback="Traceback ...",
        next_attempt_at=due,
        events=[(E.STAGE_RETRYING, None, {"delay": 10})],
    )

    rec = drv.stage("i", "a")
    assert (rec.status, rec.error, rec.traceback, rec.next_attempt_at) == (
        S.PENDING,
        "flaky",
        "Traceback ...",
        due,
    )
    assert rec.finished_at is None  # a retry is not an end
    assert rec.claim is None

    # The next attempt clears the schedule; a success can clear the old error explicitly.
    claimed = drv.claim("i", "a", "c2")
    assert claimed is not None
    assert (claimed[0].attempts, claimed[0].next_attempt_at) == (2, None)
    drv.finish("i", "a", S.COMPLETED, claim="c2", output=0, clear=frozenset({"error", "traceback"}))
    rec = drv.stage("i", "a")
    assert (rec.status, rec.output, rec.error, rec.traceback) == (S.COMPLETED, 0, None, None)


# -------------------------------------------------------------------- subtasks


def test_add_subtasks_records_a_fan_out(drv: Driver) -> None:
    drv.register("i", ["split"])
    drv.claim("i", "split")

    events = drv.store.add_subtasks(
        "i", "split", claim="c1", subtasks=[SubTask("x", {"page": 1}), SubTask("y")], now=drv.now()
    )

    assert events is not None
    assert [(e.kind, e.stage, e.data) for e in events] == [
        (E.FAN_OUT, "split", {"subtasks": ["x", "y"]}),
    ]
    assert drv.stage("i", "split").fanned_out is True
    subs = drv.store.get_subtasks("i", "split")
    assert [(s.name, s.status, s.position, s.data, s.attempts) for s in subs] == [
        ("x", T.PENDING, 0, {"page": 1}, 0),
        ("y", T.PENDING, 1, None, 0),
    ]


def test_add_subtasks_with_the_wrong_claim_returns_none(drv: Driver) -> None:
    drv.register("i", ["split"])
    drv.claim("i", "split", "mine")
    before = drv.snapshot("i")
    assert (
        drv.store.add_subtasks("i", "split", claim="other", subtasks=[SubTask("x")], now=drv.now())
        is None
    )
    assert drv.snapshot("i") == before


def test_add_subtasks_keeps_the_state_of_existing_subtasks(drv: Driver) -> None:
    drv.register("i", ["split"])
    drv.fan_out("i", "split", ["x", "y"])
    drv.run_sub("i", "split", "x", T.COMPLETED, output={"done": "x"})
    drv.run_sub("i", "split", "y", T.FAILED, error="bad y")
    x_before = drv.subtask("i", "split", "x")

    events = drv.store.add_subtasks(
        "i",
        "split",
        claim="c1",
        subtasks=[SubTask("z"), SubTask("x", {"new": True}), SubTask("y")],
        now=drv.now(),
    )

    assert events is not None
    subs = drv.store.get_subtasks("i", "split")
    assert [(s.name, s.status, s.position) for s in subs] == [
        ("z", T.PENDING, 0),
        ("x", T.COMPLETED, 1),
        ("y", T.FAILED, 2),
    ]
    x = drv.subtask("i", "split", "x")
    assert (x.output, x.data, x.attempts, x.finished_at) == (
        {"done": "x"},
        {"n": "x"},
        1,
        x_before.finished_at,
    )
    assert drv.subtask("i", "split", "y").error == "bad y"


def test_claim_and_finish_subtask(drv: Driver) -> None:
    drv.register("i", ["split"])
    drv.fan_out("i", "split", ["x"])
    now = drv.now()

    got = drv.store.claim_subtask("i", "split", "x", claim="c1", now=now)

    assert got is not None
    sub, events = got
    assert (sub.status, sub.attempts, sub.started_at) == (T.RUNNING, 1, now)
    assert [(e.kind, e.stage, e.subtask, e.data) for e in events] == [
        (E.SUBTASK_STARTED, "split", "x", {"attempt": 1}),
    ]
    assert drv.subtask("i", "split", "x") == sub

    later = drv.now()
    out = drv.store.finish_subtask(
        "i",
        "split",
        "x",
        claim="c1",
        change=SubtaskChange(T.COMPLETED, output=[1, 2]),
        events=[(E.SUBTASK_COMPLETED, "x", None)],
        now=later,
    )

    assert out is not None
    assert [(e.kind, e.subtask) for e in out] == [(E.SUBTASK_COMPLETED, "x")]
    sub = drv.subtask("i", "split", "x")
    assert (sub.status, sub.output, sub.finished_at) == (T.COMPLETED, [1, 2], later)
    # The stage's own status is the engine's to settle while it holds the claim.
    assert drv.stage("i", "split").status == S.RUNNING


def test_subtask_calls_need_the_stage_claim_and_the_right_status(drv: Driver) -> None:
    drv.register("i", ["split"])
    drv.fan_out("i", "split", ["x", "y"])
    drv.run_sub("i", "split", "x", T.COMPLETED)
    before = drv.snapshot("i")

    s, now = drv.store, drv.now()
    assert s.claim_subtask("i", "split", "y", claim="wrong", now=now) is None
    assert s.claim_subtask("i", "split", "x", claim="c1", now=now) is None  # completed
    assert s.claim_subtask("i", "split", "nope", claim="c1", now=now) is None
    change = SubtaskChange(T.COMPLETED)
    assert (
        s.finish_subtask("i", "split", "y", claim="c1", change=change, events=[], now=now) is None
    )  # not running
    assert (
        s.finish_subtask("i", "split", "x", claim="c1", change=change, events=[], now=now) is None
    )  # done already
    assert drv.snapshot("i") == before

    assert s.claim_subtask("i", "split", "y", claim="c1", now=now) is not None
    assert (
        s.finish_subtask("i", "split", "y", claim="wrong", change=change, events=[], now=now)
        is None
    )
    assert drv.subtask("i", "split", "y").status == T.RUNNING


def test_finishing_a_subtask_outside_the_transition_table_raises_conflict(
    drv: Driver,
) -> None:
    drv.register("i", ["split"])
    drv.fan_out("i", "split", ["x"])
    drv.store.claim_subtask("i", "split", "x", claim="c1", now=drv.now())
    before = drv.snapshot("i")

    with pytest.raises(ConflictError):
        drv.store.finish_subtask(
            "i",
            "split",
            "x",
            claim="c1",
            change=SubtaskChange(T.REJECTED),
            events=[(E.SUBTASK_FAILED, "x", None)],
            now=drv.now(),
        )

    assert drv.snapshot("i") == before


def test_get_subtasks_orders_by_stage_then_subtask_position(drv: Driver) -> None:
    drv.register("i", ["first", "second"])
    drv.fan_out("i", "second", ["b", "a"])
    drv.fan_out("i", "first", ["z", "y"])
    assert [(s.stage, s.name) for s in drv.store.get_subtasks("i")] == [
        ("first", "z"),
        ("first", "y"),
        ("second", "b"),
        ("second", "a"),
    ]


# ------------------------------------------------------------------------ decide


def test_approve_with_an_edited_output(drv: Driver) -> None:
    drv.register("i", ["draft", "publish"])
    drv.review("i", "draft", data={"text": "helo"})

    changed, events = drv.approve("i", "draft", output={"text": "hello"}, comment="typo")

    assert changed is True
    assert drv.kinds(events) == [E.REVIEW_APPROVED, E.STAGE_COMPLETED]
    assert events[0].data is not None
    assert events[0].data["by"] == "alice"
    assert events[0].data["comment"] == "typo"
    rec = drv.stage("i", "draft")
    assert (rec.status, rec.output) == (S.COMPLETED, {"text": "hello"})
    decision = drv.store.last_decision("i", "draft")
    assert decision is not None
    assert (decision.decision, decision.by, decision.comment, decision.output) == (
        DecisionKind.APPROVED,
        "alice",
        "typo",
        {"text": "hello"},
    )
    assert (decision.item_id, decision.stage, decision.subtask) == ("i", "draft", None)
    assert events[0].data["decision_id"] == decision.id
    assert drv.store.decisions("i") == [decision]
    assert drv.store.pending_reviews() == []


def test_approve_without_output_passes_the_review_data_on(drv: Driver) -> None:
    drv.register("i", ["draft", "publish"])
    drv.review("i", "draft", data={"text": "fine"})
    drv.approve("i", "draft")
    assert drv.stage("i", "draft").output == {"text": "fine"}


def test_reject_records_who_and_why(drv: Driver) -> None:
    drv.register("i", ["draft", "publish"])
    drv.review("i", "draft")

    changed, events = drv.reject("i", "draft", reason="too short", by="bob")

    assert changed is True
    assert [(e.kind, e.data) for e in events] == [
        (
            E.REVIEW_REJECTED,
            {
                "by": "bob",
                "decision_id": events[0].data["decision_id"],  # type: ignore[index]
                "reason": "too short",
            },
        ),
    ]
    rec = drv.stage("i", "draft")
    assert rec.status == S.REJECTED
    assert rec.error is not None and "bob" in rec.error and "too short" in rec.error
    assert drv.store.get_item("i").state == ItemState.REJECTED  # type: ignore[union-attr]
    last = drv.store.last_decision("i", "draft")
    assert last is not None
    assert (last.decision, last.by, last.reason) == (DecisionKind.REJECTED, "bob", "too short")


@pytest.mark.parametrize("kind", ["approve", "reject"])
def test_a_repeated_identical_decision_is_a_no_op(drv: Driver, kind: str) -> None:
    drv.register("i", ["draft", "publish"])
    drv.review("i", "draft")
    decide = drv.approve if kind == "approve" else drv.reject
    assert decide("i", "draft")[0] is True
    before = drv.snapshot("i")

    assert decide("i", "draft") == (False, [])
    assert drv.snapshot("i") == before


@pytest.mark.parametrize("first, second", [("approve", "reject"), ("reject", "approve")])
def test_a_contrary_decision_after_one_was_made_is_a_conflict(
    drv: Driver,
    first: str,
    second: str,
) -> None:
    drv.register("i", ["draft", "publish"])
    drv.review("i", "draft")
    (drv.approve if first == "approve" else drv.reject)("i", "draft")
    before = drv.snapshot("i")

    with pytest.raises(ConflictError):
        (drv.approve if second == "approve" else drv.reject)("i", "draft")

    assert drv.snapshot("i") == before


@pytest.mark.parametrize("setup", ["pending", "running", "completed", "failed"])
@pytest.mark.parametrize("kind", ["approve", "reject"])
def test_deciding_what_does_not_await_review_is_a_conflict_and_changes_nothing(
    drv: Driver,
    setup: str,
    kind: str,
) -> None:
    drv.register("i", ["a", "b"])
    if setup == "running":
        drv.claim("i", "a")
    elif setup != "pending":
        drv.run("i", "a", S(setup))
    before = drv.snapshot("i")

    with pytest.raises(ConflictError) as info:
        (drv.approve if kind == "approve" else drv.reject)("i", "a")

    assert info.value.exit_code == 3
    assert drv.snapshot("i") == before


def test_deciding_an_unknown_item_or_stage_raises(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    drv.review("i", "a")
    drv.store.sync_stages("i", ["b"], "p.yaml", "h2", drv.now())  # "a" is now inactive
    before = drv.snapshot("i")

    with pytest.raises(UnknownItemError) as item_err:
        drv.approve("ghost", "a")
    assert item_err.value.item_id == "ghost"
    with pytest.raises(UnknownStageError) as stage_err:
        drv.approve("i", "zz")
    assert (stage_err.value.item_id, stage_err.value.stage) == ("i", "zz")
    with pytest.raises(UnknownStageError):
        drv.reject("i", "a")  # removed from the pipeline: no longer decidable
    with pytest.raises(UnknownStageError):
        drv.approve("i", "b", "no-such-subtask")

    assert drv.snapshot("i") == before
    assert drv.store.get_item("ghost") is None


def _fanned_out_reviews(drv: Driver, names: list[str]) -> None:
    """A fan-out stage whose subtasks all wait on a human, the stage settled to match."""
    drv.register("i", ["split", "after"])
    drv.fan_out("i", "split", names)
    for n in names:
        drv.run_sub(
            "i", "split", n, T.AWAITING_REVIEW, review_prompt=f"check {n}", review_data={"sub": n}
        )
    assert (
        drv.finish("i", "split", S.AWAITING_REVIEW, events=[(E.REVIEW_REQUIRED, None, None)])
        is not None
    )


def test_subtask_decisions_move_the_parent_stage(drv: Driver) -> None:
    _fanned_out_reviews(drv, ["x", "y"])
    assert {(r["stage"], r["subtask"]) for r in drv.store.pending_reviews()} == {
        ("split", "x"),
        ("split", "y"),
    }

    changed, events = drv.approve("i", "split", "x", output={"edited": "x"})

    assert changed is True
    assert [(e.kind, e.subtask) for e in events] == [
        (E.REVIEW_APPROVED, "x"),
        (E.SUBTASK_COMPLETED, "x"),
    ]
    x = drv.subtask("i", "split", "x")
    assert (x.status, x.output) == (T.COMPLETED, {"edited": "x"})
    assert drv.stage("i", "split").status == S.AWAITING_REVIEW  # y still waits
    assert drv.store.last_decision("i", "split", "x") is not None
    assert drv.store.last_decision("i", "split") is None  # the stage itself was not decided

    drv.approve("i", "split", "y")

    assert drv.subtask("i", "split", "y").output == {"sub": "y"}
    # Every subtask done: pending, so the next advance completes the stage with its output.
    assert drv.stage("i", "split").status == S.PENDING
    assert drv.store.pending_reviews() == []


def test_rejecting_a_subtask_rejects_the_parent_stage(drv: Driver) -> None:
    _fanned_out_reviews(drv, ["x", "y"])

    drv.reject("i", "split", "y", reason="blurry")

    assert drv.subtask("i", "split", "y").status == T.REJECTED
    assert drv.stage("i", "split").status == S.REJECTED
    assert drv.store.get_item("i").state == ItemState.REJECTED  # type: ignore[union-attr]
    # x can still be decided; the stage stays rejected until a retry.
    drv.approve("i", "split", "x")
    assert drv.stage("i", "split").status == S.REJECTED


def test_a_fan_out_stage_waiting_on_its_subtasks_cannot_be_decided_as_a_whole(
    drv: Driver,
) -> None:
    _fanned_out_reviews(drv, ["x"])
    before = drv.snapshot("i")

    with pytest.raises(ConflictError) as info:
        drv.approve("i", "split")

    assert "split/x" in str(info.value)
    assert drv.snapshot("i") == before


def test_a_subtask_decision_leaves_a_running_stage_to_its_owner(drv: Driver) -> None:
    drv.register("i", ["split"])
    drv.fan_out("i", "split", ["x", "y"])
    drv.run_sub("i", "split", "x", T.AWAITING_REVIEW, review_prompt="x?")

    drv.approve("i", "split", "x")

    assert drv.subtask("i", "split", "x").status == T.COMPLETED
    assert drv.stage("i", "split").status == S.RUNNING
    assert drv.stage("i", "split").claim == "c1"


# -------------------------------------------------------------------- reset_stage


def test_reset_a_failed_stage_makes_it_pending_with_a_fresh_attempt_count(
    drv: Driver,
) -> None:
    drv.register("i", ["a"])
    drv.run("i", "a", S.FAILED, error="ValueError: x", traceback="Traceback ...")
    assert drv.stage("i", "a").attempts == 1

    events = drv.store.reset_stage("i", "a", drv.now())

    assert [(e.kind, e.stage, e.data) for e in events] == [(E.STAGE_RESET, "a", None)]
    rec = drv.stage("i", "a")
    assert (rec.status, rec.attempts, rec.attempt_base) == (S.PENDING, 1, 1)
    assert (rec.error, rec.traceback, rec.next_attempt_at) == (None, None, None)
    assert drv.store.get_item("i").state == ItemState.PENDING  # type: ignore[union-attr]

    claimed = drv.claim("i", "a", "c2")
    assert claimed is not None
    assert claimed[0].attempts == 2
    assert claimed[1][0].data == {"attempt": 1, "owner": "host-a:4242"}


def test_reset_a_rejected_stage_keeps_the_decision_on_record(drv: Driver) -> None:
    drv.register("i", ["a"])
    drv.review("i", "a")
    drv.reject("i", "a", reason="no")

    drv.store.reset_stage("i", "a", drv.now())

    assert drv.stage("i", "a").status == S.PENDING
    last = drv.store.last_decision("i", "a")
    assert last is not None and last.reason == "no"


def test_reset_re_runs_only_failed_subtasks(drv: Driver) -> None:
    drv.register("i", ["split"])
    drv.fan_out("i", "split", ["ok", "bad1", "bad2"])
    drv.run_sub("i", "split", "ok", T.COMPLETED, output={"v": 1})
    drv.run_sub("i", "split", "bad1", T.FAILED, error="e1")
    drv.run_sub("i", "split", "bad2", T.FAILED, error="e2")
    drv.finish("i", "split", S.FAILED, error="2 subtasks failed")
    ok_before = drv.subtask("i", "split", "ok")

    events = drv.store.reset_stage("i", "split", drv.now())

    assert [(e.kind, e.data) for e in events] == [
        (E.STAGE_RESET, {"subtasks": ["bad1", "bad2"]}),
    ]
    assert drv.subtask("i", "split", "ok") == ok_before  # completed: untouched
    for name in ("bad1", "bad2"):
        sub = drv.subtask("i", "split", name)
        assert (sub.status, sub.attempts, sub.attempt_base, sub.error) == (T.PENDING, 1, 1, None)
    stage = drv.stage("i", "split")
    assert (stage.status, stage.fanned_out) == (S.PENDING, True)

    # The next run claims the stage without counting a new attempt of the stage itself.
    claimed = drv.claim("i", "split", "c2")
    assert claimed is not None
    assert claimed[0].attempts == stage.attempts
    got = drv.store.claim_subtask("i", "split", "bad1", claim="c2", now=drv.now())
    assert got is not None
    assert got[1][0].data == {"attempt": 1}
    assert drv.store.claim_subtask("i", "split", "ok", claim="c2", now=drv.now()) is None


@pytest.mark.parametrize("setup", ["pending", "running", "completed", "awaiting_review"])
def test_reset_of_a_stage_that_did_not_fail_is_a_conflict(drv: Driver, setup: str) -> None:
    drv.register("i", ["a", "b"])
    if setup == "running":
        drv.claim("i", "a")
    elif setup == "awaiting_review":
        drv.review("i", "a")
    elif setup == "completed":
        drv.run("i", "a")
    before = drv.snapshot("i")

    with pytest.raises(ConflictError) as info:
        drv.store.reset_stage("i", "a", drv.now())

    assert info.value.exit_code == 3
    assert drv.snapshot("i") == before


def test_reset_of_an_unknown_item_or_stage_raises(drv: Driver) -> None:
    drv.register("i", ["a"])
    with pytest.raises(UnknownItemError):
        drv.store.reset_stage("ghost", "a", drv.now())
    with pytest.raises(UnknownStageError):
        drv.store.reset_stage("i", "zz", drv.now())


# ------------------------------------------------------------ item state, progress


def test_item_state_follows_the_precedence_of_its_stages(drv: Driver) -> None:
    drv.register("i", ["a", "b", "c", "d"])

    def state() -> tuple[ItemState, float]:
        item = drv.store.get_item("i")
        assert item is not None
        return item.state, item.progress

    assert state() == (ItemState.PENDING, 0.0)
    drv.run("i", "a")
    assert state() == (ItemState.PENDING, 25.0)
    drv.run("i", "b", S.SKIPPED)
    assert state() == (ItemState.PENDING, 50.0)  # skipped counts as done
    drv.claim("i", "c")
    assert state() == (ItemState.RUNNING, 50.0)
    drv.review("i", "d")
    assert state() == (ItemState.AWAITING_REVIEW, 50.0)  # review outranks running
    drv.finish("i", "c", S.FAILED, error="x")
    assert state() == (ItemState.FAILED, 50.0)  # failure outranks everything
    drv.reject("i", "d")
    assert state() == (ItemState.FAILED, 50.0)
    drv.store.reset_stage("i", "c", drv.now())
    assert state() == (ItemState.REJECTED, 50.0)
    drv.store.reset_stage("i", "d", drv.now())
    assert state() == (ItemState.PENDING, 50.0)
    drv.run("i", "c")
    assert state() == (ItemState.PENDING, 75.0)
    drv.review("i", "d")
    drv.approve("i", "d")
    assert state() == (ItemState.COMPLETED, 100.0)


def test_progress_is_rounded_to_one_decimal(drv: Driver) -> None:
    drv.register("i", ["a", "b", "c"])
    drv.run("i", "a")
    item = drv.store.get_item("i")
    assert item is not None and item.progress == 33.3


def test_item_completed_is_emitted_exactly_once(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    drv.run("i", "a")
    drv.review("i", "b")

    _, events = drv.approve("i", "b")

    assert drv.kinds(events) == [E.REVIEW_APPROVED, E.STAGE_COMPLETED, E.ITEM_COMPLETED]
    # Nothing that leaves the item complete announces it again.
    drv.approve("i", "b")
    drv.store.sync_stages("i", ["a", "b"], "p.yaml", "h1", drv.now())
    drv.store.sync_stages("i", ["b", "a"], "p.yaml", "h3", drv.now())
    drv.register("i", ["a", "b"])
    completed = [e for e in drv.store.events(item_id="i") if e.kind == E.ITEM_COMPLETED]
    assert len(completed) == 1
    assert completed[0].id == events[-1].id


def test_item_completed_follows_the_stage_event_that_completed_it(drv: Driver) -> None:
    drv.register("i", ["a"])
    events = drv.run("i", "a")
    assert drv.kinds(events) == [E.STAGE_COMPLETED, E.ITEM_COMPLETED]
    assert events[0].id is not None and events[1].id is not None
    assert events[0].id < events[1].id


# ---------------------------------------------------------------------- events


def test_events_have_increasing_ids_in_log_order(drv: Driver) -> None:
    drv.register("one", ["a"])
    drv.register("two", ["a"])
    drv.run("one", "a")
    drv.run("two", "a", S.FAILED, error="x")

    log = drv.store.events()

    ids = [e.id for e in log]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert drv.store.last_event_id() == ids[-1]
    assert [(e.kind, e.item_id) for e in log] == [
        (E.ITEM_REGISTERED, "one"),
        (E.ITEM_REGISTERED, "two"),
        (E.STAGE_STARTED, "one"),
        (E.STAGE_COMPLETED, "one"),
        (E.ITEM_COMPLETED, "one"),
        (E.STAGE_STARTED, "two"),
        (E.STAGE_FAILED, "two"),
    ]
    timestamps = [e.ts for e in log]
    assert timestamps == sorted(timestamps)  # each operation passed a later `now`


def test_events_filters_after_item_and_limit(drv: Driver) -> None:
    drv.register("one", ["a", "b"])
    drv.register("two", ["a"])
    drv.run("one", "a")
    drv.run("two", "a")
    log = drv.store.events()
    ids = [e.id for e in log]
    assert ids[0] is not None

    assert drv.store.events(after=ids[2]) == log[3:]
    assert drv.store.events(after=ids[-1]) == []
    assert drv.store.events(limit=2) == log[:2]
    assert drv.store.events(limit=0) == []
    assert drv.store.events(item_id="two") == [e for e in log if e.item_id == "two"]
    assert drv.store.events(after=ids[1], item_id="one", limit=1) == [
        next(e for e in log[2:] if e.item_id == "one")
    ]


def test_the_event_log_of_an_empty_store(store: StateStore) -> None:
    assert store.events() == []
    assert store.last_event_id() == 0


def test_events_carry_the_timestamp_of_their_operation(drv: Driver) -> None:
    now = drv.at(1000)
    _, events = drv.store.register_item("i", "p", {}, None, None, ["a"], now)
    assert events[0].ts == now
    stored = drv.store.events()[0]
    assert stored.ts == now
    assert stored.to_json() == {
        "id": stored.id,
        "ts": iso(now),
        "kind": "item_registered",
        "item": "i",
        "stage": None,
        "subtask": None,
        "data": {"pipeline": "p", "path": None},
    }


def test_events_returned_by_an_operation_are_the_stored_ones(drv: Driver) -> None:
    returned: list[Any] = []
    returned += drv.register("i", ["a", "b"])[1]
    returned += drv.run("i", "a")
    drv.review("i", "b")
    returned = drv.store.events()
    _, approved = drv.approve("i", "b")
    assert drv.store.events() == returned + approved


# ---------------------------------------------------------------------- queries


def _populate(drv: Driver) -> None:
    """Items over two pipelines in every interesting state, created in id order."""
    drv.register("d1", ["a", "b"], pipeline="docs")  # pending
    drv.register("d2", ["a", "b"], pipeline="docs")
    drv.run("d2", "a", S.FAILED, error="x")  # failed
    drv.register("d3", ["a", "b"], pipeline="docs")
    drv.review("d3", "a", prompt="look", data={"d": 3})  # awaiting review
    drv.register("m1", ["a"], pipeline="mail")
    drv.run("m1", "a")  # completed
    drv.register("m2", ["a"], pipeline="mail")
    drv.claim("m2", "a")  # running


def test_list_items_filters_by_pipeline_and_state_in_creation_order(drv: Driver) -> None:
    _populate(drv)
    s = drv.store

    def ids(**kw: Any) -> list[str]:
        return [r.id for r in s.list_items(**kw)]

    assert ids() == ["d1", "d2", "d3", "m1", "m2"]
    assert ids(pipeline="docs") == ["d1", "d2", "d3"]
    assert ids(pipeline="nope") == []
    assert ids(states=["failed", "completed"]) == ["d2", "m1"]
    assert ids(states=[ItemState.RUNNING]) == ["m2"]
    assert ids(pipeline="mail", states=["pending"]) == []
    assert ids(states=[]) == ids()
    assert ids(limit=2) == ["d1", "d2"]
    assert ids(limit=2, offset=2) == ["d3", "m1"]
    assert ids(offset=3) == ["m1", "m2"]
    assert ids(limit=0) == []
    assert s.list_items(pipeline="mail", states=["completed"]) == [s.get_item("m1")]


def test_list_items_breaks_ties_of_creation_time_by_id(drv: Driver) -> None:
    for item_id in ("b", "c", "a"):
        drv.store.register_item(item_id, "p", {}, None, None, ["x"], drv.at(1))
    assert [r.id for r in drv.store.list_items()] == ["a", "b", "c"]


def test_count_items_by_state(drv: Driver) -> None:
    _populate(drv)
    s = drv.store
    assert s.count_items() == {
        "pending": 1,
        "failed": 1,
        "awaiting_review": 1,
        "completed": 1,
        "running": 1,
    }
    assert s.count_items(pipeline="mail") == {"completed": 1, "running": 1}
    assert s.count_items(states=["failed", "pending"]) == {"failed": 1, "pending": 1}
    assert s.count_items(pipeline="nope") == {}


def test_stage_counts_by_stage_and_status(drv: Driver) -> None:
    _populate(drv)
    drv.store.sync_stages("d1", ["a"], "p.yaml", "h2", drv.now())  # d1's "b" is inactive
    s = drv.store
    assert s.stage_counts() == {
        "a": {"pending": 1, "failed": 1, "awaiting_review": 1, "completed": 1, "running": 1},
        "b": {"pending": 2},
    }
    assert s.stage_counts(pipeline="mail") == {"a": {"completed": 1, "running": 1}}
    assert s.stage_counts(pipeline="nope") == {}


def test_pending_reviews_lists_stages_and_subtasks(drv: Driver) -> None:
    _populate(drv)
    drv.register("m3", ["split"], pipeline="mail")
    drv.fan_out("m3", "split", ["x"])
    drv.run_sub("m3", "split", "x", T.AWAITING_REVIEW, review_prompt="x ok?", review_data=[1])
    d3 = drv.stage("d3", "a")
    x = drv.subtask("m3", "split", "x")

    reviews = drv.store.pending_reviews()

    assert reviews == [
        {
            "item": "d3",
            "stage": "a",
            "subtask": None,
            "prompt": "look",
            "data": {"d": 3},
            "requested_at": iso(d3.requested_at),
        },
        {
            "item": "m3",
            "stage": "split",
            "subtask": "x",
            "prompt": "x ok?",
            "data": [1],
            "requested_at": iso(x.requested_at),
        },
    ]
    assert drv.store.pending_reviews(pipeline="docs") == reviews[:1]
    assert drv.store.pending_reviews(pipeline="mail") == reviews[1:]
    assert drv.store.pending_reviews(pipeline="nope") == []


def test_decisions_are_listed_oldest_first(drv: Driver) -> None:
    drv.register("i", ["a", "b"])
    drv.review("i", "a")
    drv.reject("i", "a", reason="first")
    drv.store.reset_stage("i", "a", drv.now())
    drv.review("i", "a")
    drv.approve("i", "a", comment="second")
    drv.register("j", ["a"])
    drv.review("j", "a")
    drv.approve("j", "a")

    got = drv.store.decisions("i")

    assert [(d.decision, d.reason, d.comment) for d in got] == [
        (DecisionKind.REJECTED, "first", None),
        (DecisionKind.APPROVED, None, "second"),
    ]
    assert got[0].id is not None and got[1].id is not None and got[0].id < got[1].id
    assert drv.store.last_decision("i", "a") == got[1]


# ----------------------------------------------------------------- isolation


def test_records_read_from_a_store_are_copies(drv: Driver) -> None:
    data = {"nested": {"list": [1, 2]}}
    drv.register("i", ["a", "b"], data=data)
    drv.review("i", "a", data={"r": [1]})
    drv.approve("i", "a", output={"o": [1]})
    data["nested"]["list"].append(3)  # the caller's object is not the stored one

    item = drv.store.get_item("i")
    assert item is not None
    item.data["nested"]["list"].append(4)
    drv.store.list_items()[0].data["nested"]["x"] = 1
    drv.stage("i", "a").output["o"].append(2)
    drv.store.decisions("i")[0].output["o"].append(3)
    drv.store.events()[0].data["pipeline"] = "changed"  # type: ignore[index]

    item = drv.store.get_item("i")
    assert item is not None and item.data == {"nested": {"list": [1, 2]}}
    assert drv.stage("i", "a").output == {"o": [1]}
    assert drv.store.decisions("i")[0].output == {"o": [1]}
    assert drv.store.events()[0].data == {"pipeline": "p", "path": "p.yaml"}


# --------------------------------------------------------- JSON round-trips


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=5)
_ids = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=json_objects, output=json_objects, review=json_values, event_data=json_objects)
def test_store_round_trips_are_the_identity_for_json(
    drv: Driver,
    data: dict[str, Any],
    output: dict[str, Any],
    review: Any,
    event_data: dict[str, Any],
) -> None:
    # One store serves every example; a fresh item id keeps the examples apart.
    store = drv.store
    item_id = f"item-{next(_ids)}"

    rec, _ = drv.register(item_id, ["a", "b"], data=data)
    assert rec.data == data
    item = store.get_item(item_id)
    assert item is not None and item.data == data
    assert [r.data for r in store.list_items() if r.id == item_id] == [data]

    drv.claim(item_id, "a")
    events = drv.finish(
        item_id, "a", S.COMPLETED, output=output, events=[(E.STAGE_COMPLETED, None, event_data)]
    )
    assert events is not None
    assert drv.stage(item_id, "a").output == output
    stored_event = store.events(item_id=item_id)[-1]
    assert stored_event.data == event_data == events[0].data

    drv.claim(item_id, "b")
    drv.finish(item_id, "b", S.AWAITING_REVIEW, review_prompt="?", review_data=review)
    assert drv.stage(item_id, "b").review_data == review
    assert [r["data"] for r in store.pending_reviews() if r["item"] == item_id] == [review]
    drv.approve(item_id, "b", output=output)
    last = store.last_decision(item_id, "b")
    assert last is not None and last.output == output
    assert drv.stage(item_id, "b").output == output


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sub_data=json_values, sub_output=json_objects)
def test_subtask_round_trips_are_the_identity_for_json(
    drv: Driver,
    sub_data: Any,
    sub_output: dict[str, Any],
) -> None:
    store = drv.store
    item_id = f"item-{next(_ids)}"
    drv.register(item_id, ["split"])
    drv.claim(item_id, "split")
    store.add_subtasks(
        item_id, "split", claim="c1", subtasks=[SubTask("x", sub_data)], now=drv.now()
    )
    drv.run_sub(item_id, "split", "x", T.COMPLETED, output=sub_output)
    sub = drv.subtask(item_id, "split", "x")
    assert (sub.data, sub.output) == (sub_data, sub_output)


def test_decision_timestamps_are_the_operation_time(drv: Driver) -> None:
    drv.register("i", ["a"])
    drv.review("i", "a")
    now = drv.at(5000)
    decision = ReviewData(DecisionKind.APPROVED, by="carol", at=drv.at(1))
    drv.store.decide("i", "a", None, decision, now)
    last = drv.store.last_decision("i", "a")
    assert last is not None and last.at == now
    assert drv.stage("i", "a").finished_at == now


def test_pending_reviews_ignore_stages_removed_from_the_pipeline(drv: Driver) -> None:
    drv.register("i", ["split", "gate", "kept"])
    drv.fan_out("i", "split", ["x"])
    drv.run_sub("i", "split", "x", T.AWAITING_REVIEW, review_prompt="x?")
    drv.review("i", "gate")
    drv.review("i", "kept")

    drv.store.sync_stages("i", ["kept"], "p.yaml", "h2", drv.now())

    # Only what can still be decided is listed: a removed stage's history is ignored.
    assert [(r["stage"], r["subtask"]) for r in drv.store.pending_reviews()] == [("kept", None)]
    with pytest.raises(UnknownStageError):
        drv.approve("i", "split", "x")
