"""Rules that hold for all inputs: DAG order, and the transition table under any operations."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from treadle_cli import (
    ConflictError,
    MemoryStateStore,
    RetryPolicy,
    SqliteStateStore,
    StageOutcome,
    StageStatus,
    TreadleError,
    UsageError,
    Workflow,
)
from treadle_cli.model import STAGE_TRANSITIONS, derive_item_state

from .support import FakeClock, stage_transitions

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def open_store(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if kind == "memory":
        return MemoryStateStore()
    return SqliteStateStore.open(tmp_path_factory.mktemp("prop") / "treadle.db")


# ----------------------------------------------------------------- random DAGs


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], set[tuple[int, int]], list[int]]:
    """Node names (shuffled), edges i -> j only for i < j, and a declaration order."""
    n = draw(st.integers(min_value=1, max_value=8))
    pairs = [(i, j) for j in range(n) for i in range(j)]
    edges = draw(st.sets(st.sampled_from(pairs))) if pairs else set()
    names = draw(st.permutations([f"stage_{c}" for c in "abcdefgh"[:n]]))
    order = draw(st.permutations(range(n)))
    return list(names), edges, list(order)


def ancestors(node: int, edges: set[tuple[int, int]]) -> set[int]:
    found: set[int] = set()
    todo = [i for i, j in edges if j == node]
    while todo:
        i = todo.pop()
        if i not in found:
            found.add(i)
            todo.extend(a for a, b in edges if b == i)
    return found


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@SETTINGS
@given(dag=dags(), use_dependency=st.booleans())
def test_any_dag_runs_each_stage_once_in_topological_order(
    kind, tmp_path_factory, dag, use_dependency
):
    names, edges, order = dag
    lock = threading.Lock()
    log: list[tuple[str, str]] = []
    wrong_outputs: list[str] = []
    index = {name: i for i, name in enumerate(names)}

    def run(item, ctx):
        with lock:
            log.append(("start", ctx.stage))
        expected = {names[a] for a in ancestors(index[ctx.stage], edges)}
        if set(ctx.outputs) != expected or any(ctx.outputs[up] != {"by": up} for up in expected):
            wrong_outputs.append(ctx.stage)
        with lock:
            log.append(("end", ctx.stage))
        return {"by": ctx.stage}

    builder = Workflow.builder("dag")
    for node in order:  # declared in a random order, not the topological one
        needs = [names[i] for i, j in sorted(edges) if j == node]
        builder.stage(names[node], run, needs=[] if use_dependency else needs)
    if use_dependency:
        for i, j in sorted(edges):
            builder.dependency(names[j], names[i])
    wf = builder.build(clock=FakeClock())
    store = open_store(kind, tmp_path_factory)
    try:
        status = wf.advance("item", store)
        wf.advance("item", store)  # a second advance runs nothing
    finally:
        store.close()

    assert status.is_complete()
    assert sorted(log) == sorted([("start", n) for n in names] + [("end", n) for n in names])
    position = {entry: k for k, entry in enumerate(log)}
    for i, j in edges:
        assert position[("end", names[i])] < position[("start", names[j])]
    assert wrong_outputs == []
    # Status lists stages in a topological order too.
    listed = [s.name for s in status.stages]
    for i, j in edges:
        assert listed.index(names[i]) < listed.index(names[j])


# ------------------------------------------------- operations vs the table

STAGES = ["flaky", "gate", "side", "last"]
# Decisions mostly target the two review gates, so the interesting paths come up often;
# the rarer operations are the ones that must fail cleanly.
COMMON_OPS = [
    ("advance", 60),
    ("advance", 0),
    ("approve", "gate"),
    ("approve", "side"),
    ("reject", "gate", "bad"),
    ("reject", "side", "bad"),
    ("retry", "gate"),
    ("retry", "side"),
    ("retry", "flaky"),
    ("tick", 31),
]
RARE_OPS = [
    ("tick", 10),
    ("approve", "flaky"),
    ("approve", "last"),
    ("approve", "nope"),
    ("reject", "gate", ""),
    ("reject", "last", "bad"),
    ("retry", "last"),
    ("retry", "nope"),
    ("foreign",),
]
OPS = st.one_of(st.sampled_from(COMMON_OPS), st.sampled_from(COMMON_OPS), st.sampled_from(RARE_OPS))


def table_workflow(clock: FakeClock, scripts: dict[str, list[bool]]) -> Workflow:
    """flaky -> gate (needs_review) -> last, side (review: always) -> last.

    Each stage pops its script: True means this call raises.
    """

    def step(item, ctx):
        script = scripts[ctx.stage]
        if script and script.pop(0):
            raise RuntimeError(f"{ctx.stage} attempt {ctx.attempt} failed")
        if ctx.stage == "gate":
            return StageOutcome.needs_review("Pass the gate?", {"attempt": ctx.attempt})
        return {"stage": ctx.stage}

    retry = RetryPolicy(max_attempts=2, backoff=30)
    return (
        Workflow.builder("table")
        .stage("flaky", step, retry=retry)
        .stage("gate", step, needs="flaky")
        .stage("side", step, review=True, retry=retry)
        .stage("last", step, needs=["gate", "side"])
        .build(clock=clock)
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@SETTINGS
@given(
    ops=st.lists(OPS, max_size=20),
    scripts=st.fixed_dictionaries({name: st.lists(st.booleans(), max_size=4) for name in STAGES}),
)
def test_any_operation_sequence_stays_inside_the_transition_table(
    kind, tmp_path_factory, ops, scripts
):
    clock = FakeClock()
    wf = table_workflow(clock, scripts)
    foreign = Workflow.builder("other").stage("flaky", lambda i, c: None).build(clock=clock)
    store = open_store(kind, tmp_path_factory)
    item = f"item-{uuid.uuid4().hex[:8]}"
    seen: set[tuple[StageStatus, StageStatus]] = set()

    def check(op: tuple) -> None:
        events = store.events(item_id=item)
        transitions, replayed = stage_transitions(events)
        for _, stage, old, new in transitions:
            assert new in STAGE_TRANSITIONS[old], (stage, old, new, op)
            seen.add((old, new))
            event(f"{old} -> {new}")
        statuses = {s.name: s.status for s in store.get_stages(item)}
        # The log and the state never disagree, and nothing is left running.
        assert statuses == {
            name: replayed.get((item, name), StageStatus.PENDING) for name in STAGES
        }, op
        assert StageStatus.RUNNING not in statuses.values()
        record = store.get_item(item)
        assert record.state == derive_item_state(statuses.values())
        done = sum(s in (StageStatus.COMPLETED, StageStatus.SKIPPED) for s in statuses.values())
        assert record.progress == round(100 * done / len(STAGES), 1)

    try:
        wf.advance(item, store, wait=0)
        check(("advance", 0))
        for op in ops:
            try:
                if op[0] == "advance":
                    wf.advance(item, store, wait=op[1])
                elif op[0] == "approve":
                    wf.approve_review(item, op[1], store, by="prop")
                elif op[0] == "reject":
                    wf.reject_review(item, op[1], op[2], store, by="prop")
                elif op[0] == "retry":
                    wf.retry(item, op[1], store)
                elif op[0] == "tick":
                    clock.advance(op[1])
                else:
                    with pytest.raises(UsageError):
                        foreign.advance(item, store)
            except TreadleError as exc:
                # Users cause conflicts and usage errors; anything else is a bug.
                assert isinstance(exc, ConflictError | UsageError), exc
            check(op)
    finally:
        store.close()
    assert (StageStatus.PENDING, StageStatus.RUNNING) in seen
