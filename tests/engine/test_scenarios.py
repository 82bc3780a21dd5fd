"""The original crate's integration scenarios: parse -> enrich (fan-out) -> review -> export."""

from __future__ import annotations

from treadle_cli import (
    Item,
    ItemState,
    RetryPolicy,
    Stage,
    StageContext,
    StageOutcome,
    StageStatus,
    SubTask,
    SubtaskStatus,
    Workflow,
    WorkItem,
)
from treadle_cli.model import iso

from .support import T0, Calls, FakeClock, kinds

SUBTASKS = ("entities", "links", "summary")


def document_workflow(calls: Calls, clock: FakeClock, *, concurrency: int = 4) -> Workflow:
    """The four-stage document pipeline every scenario uses; each call is logged."""

    def parse(item: WorkItem, ctx: StageContext) -> dict:
        calls.add(("parse", item.id))
        return {"words": item.data["text"].split()}

    class Enrich(Stage):
        def execute(self, item: WorkItem, ctx: StageContext) -> StageOutcome:
            calls.add(("enrich", item.id, ctx.subtask))
            if ctx.subtask is None:
                return StageOutcome.fan_out([SubTask(n, {"kind": n}) for n in SUBTASKS])
            assert ctx.subtask_data == {"kind": ctx.subtask}
            return StageOutcome.complete({"n": len(ctx.outputs["parse"]["words"])})

    def review(item: WorkItem, ctx: StageContext) -> StageOutcome:
        calls.add(("review", item.id))
        return StageOutcome.needs_review(f"Publish {item.id}?", {"words": ctx.outputs["parse"]})

    def export(item: WorkItem, ctx: StageContext) -> dict:
        calls.add(("export", item.id))
        return {"exported": sorted(ctx.outputs["enrich"]), "approved": ctx.outputs["review"]}

    return (
        Workflow.builder("documents")
        .stage("parse", parse)
        .stage("enrich", Enrich(), concurrency=concurrency)
        .stage("review", review)
        .stage("export", export)
        .dependency("enrich", "parse")
        .dependency("review", "enrich")
        .dependency("export", "review")
        .build(clock=clock)
    )


def doc(n: int) -> Item:
    return Item(f"doc-{n}", {"text": " ".join(["word"] * n)})


def test_first_advance_stops_at_review_without_running_export(store, clock):
    calls = Calls()
    wf = document_workflow(calls, clock)

    status = wf.advance(doc(3), store)

    assert status.state is ItemState.AWAITING_REVIEW
    assert status.progress_percent() == 50.0
    assert status.has_pending_reviews()
    assert status.review_stages() == ["review"]
    assert status.completed_stages() == ["parse", "enrich"]
    assert status.stage("export").status is StageStatus.PENDING
    assert calls.count(("export", "doc-3")) == 0
    assert [s.status for s in status.stage("enrich").subtasks] == [SubtaskStatus.COMPLETED] * 3
    assert status.stage("enrich").record.output == {n: {"n": 3} for n in SUBTASKS}
    assert store.pending_reviews() == [
        {
            "item": "doc-3",
            "stage": "review",
            "subtask": None,
            "prompt": "Publish doc-3?",
            "data": {"words": {"words": ["word"] * 3}},
            "requested_at": iso(T0),
        }
    ]
    assert not wf.is_complete("doc-3", store)


def test_approve_then_advance_completes_and_export_runs_once(store, clock):
    calls = Calls()
    wf = document_workflow(calls, clock)
    wf.advance(doc(2), store)

    result = wf.approve_review("doc-2", "review", store, by="alice", comment="fine")
    assert result.changed
    assert wf.status("doc-2", store).progress_percent() == 75.0
    status = wf.advance("doc-2", store)

    assert status.is_complete() and wf.is_complete("doc-2", store)
    assert status.progress_percent() == 100.0
    assert status.stage("export").record.output == {
        "exported": list(SUBTASKS),
        "approved": {"words": {"words": ["word", "word"]}},
    }
    # Advancing a finished item again runs nothing.
    wf.advance("doc-2", store)
    assert calls.counts() == {
        ("parse", "doc-2"): 1,
        ("enrich", "doc-2", None): 1,
        **{("enrich", "doc-2", n): 1 for n in SUBTASKS},
        ("review", "doc-2"): 1,
        ("export", "doc-2"): 1,
    }


def test_three_documents_share_one_store_independently(store, clock):
    calls = Calls()
    wf = document_workflow(calls, clock)
    for n in (1, 2, 3):
        wf.advance(doc(n), store)

    wf.approve_review("doc-2", "review", store, by="bob")
    wf.reject_review("doc-3", "review", "too short", store, by="bob")
    states = {n: wf.advance(f"doc-{n}", store).state for n in (1, 2, 3)}

    assert states == {1: ItemState.AWAITING_REVIEW, 2: ItemState.COMPLETED, 3: ItemState.REJECTED}
    for n in (1, 2, 3):
        status = wf.status(f"doc-{n}", store)
        assert status.stage("enrich").record.output == {s: {"n": n} for s in SUBTASKS}
        assert calls.count(("parse", f"doc-{n}")) == 1
        assert calls.count(("export", f"doc-{n}")) == (1 if n == 2 else 0)
    assert [d.item_id for d in store.decisions("doc-2")] == ["doc-2"]
    assert {i.id for i in store.list_items()} == {"doc-1", "doc-2", "doc-3"}
    assert all(e.item_id == "doc-1" for e in store.events(item_id="doc-1"))


def test_exact_event_sequence_of_a_run(store, clock):
    calls = Calls()
    wf = document_workflow(calls, clock, concurrency=1)
    sub = wf.subscribe()

    wf.advance(doc(1), store)
    wf.approve_review("doc-1", "review", store, by="alice")
    wf.advance("doc-1", store)

    expected = [
        ("item_registered", None, None),
        ("stage_started", "parse", None),
        ("stage_completed", "parse", None),
        ("stage_started", "enrich", None),
        ("fan_out", "enrich", None),
    ]
    for name in SUBTASKS:
        expected += [("subtask_started", "enrich", name), ("subtask_completed", "enrich", name)]
    expected += [
        ("stage_completed", "enrich", None),
        ("stage_started", "review", None),
        ("review_required", "review", None),
        ("review_approved", "review", None),
        ("stage_completed", "review", None),
        ("stage_started", "export", None),
        ("stage_completed", "export", None),
        ("item_completed", None, None),
    ]
    logged = store.events(item_id="doc-1")
    assert [(e.kind.value, e.stage, e.subtask) for e in logged] == expected
    assert [e.id for e in logged] == sorted(e.id for e in logged)
    assert [e.to_json() for e in sub.drain()] == [e.to_json() for e in logged]
    sub.close()


def test_progress_steps_through_a_four_stage_chain(store, clock):
    builder = Workflow.builder("chain")
    names = ["s1", "s2", "s3", "s4"]
    for i, name in enumerate(names):
        builder.stage(
            name,
            lambda item, ctx: {"stage": ctx.stage},
            review=True,
            needs=names[i - 1] if i else (),
        )
    wf = builder.build(clock=clock)

    after_advance, after_approve = [], []
    for name in names:
        after_advance.append(wf.advance("c-1", store).progress_percent())
        wf.approve_review("c-1", name, store, by="carol")
        after_approve.append(wf.status("c-1", store).progress_percent())
        assert store.get_item("c-1").progress == after_approve[-1]

    assert after_advance == [0.0, 25.0, 50.0, 75.0]
    assert after_approve == [25.0, 50.0, 75.0, 100.0]
    assert wf.is_complete("c-1", store)


def test_progress_steps_when_stages_fail_and_are_retried(store, clock):
    broken = {"s1", "s2", "s3", "s4"}

    def step(item: WorkItem, ctx: StageContext) -> None:
        if ctx.stage in broken:
            raise RuntimeError(f"{ctx.stage} is broken")

    builder = Workflow.builder("chain")
    names = ["s1", "s2", "s3", "s4"]
    for i, name in enumerate(names):
        builder.stage(name, step, needs=names[i - 1] if i else ())
    wf = builder.build(clock=clock)

    seen = [wf.advance("c-1", store).progress_percent()]
    for name in names:
        assert wf.status("c-1", store).failed_stages() == [name]
        broken.discard(name)
        wf.retry("c-1", name, store)
        seen.append(wf.advance("c-1", store).progress_percent())

    assert seen == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert wf.is_complete("c-1", store)


def test_default_retry_policy_is_one_attempt(store, clock):
    """A failed export is a state, not an exception, and is not retried by default."""
    calls = Calls()

    def export(item: WorkItem, ctx: StageContext) -> None:
        calls.add("export")
        raise OSError("disk full")

    wf = (
        Workflow.builder("documents")
        .stage("parse", lambda i, c: None)
        .stage("export", export, needs="parse")
        .build(clock=clock)
    )
    status = wf.advance("doc-1", store)

    assert status.state is ItemState.FAILED
    assert status.failed_stages() == ["export"]
    assert status.stage("export").record.error == "OSError: disk full"
    assert calls.count("export") == 1
    assert clock.slept == []
    assert RetryPolicy().max_attempts == 1
    assert kinds(store.events(item_id="doc-1"))[-1] == "stage_failed"
