"""The ledger checker itself: it must see the faults the other tests look for.

A checker that passes everything proves nothing, so each fault is planted in a small
synthetic ledger and event log and must be reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rel_ledger import EventRow, check, read_ledger

KEY = ("k-1", "prepare", None)


def ev(
    id: int, kind: str, stage: str = "prepare", sub: str | None = None, data: dict | None = None
) -> EventRow:
    return EventRow(id, kind, "k-1", stage, sub, data)


def ledger(tmp_path: Path, *lines: str) -> list:
    path = tmp_path / "ledger.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return read_ledger(path)


def test_one_clean_execution_passes(tmp_path: Path) -> None:
    runs = ledger(tmp_path, "start k-1 prepare - 1 1:10 1", "end k-1 prepare - 1 1:10")
    v = check(runs, [ev(1, "stage_started"), ev(2, "stage_completed")], set(), 6)
    assert not v.violations and v.executions == 1 and v.interrupted == 0


def test_rerun_after_completion_is_caught(tmp_path: Path) -> None:
    runs = ledger(
        tmp_path,
        "start k-1 prepare - 1 1:10 1",
        "end k-1 prepare - 1 1:10",
        "start k-1 prepare - 2 2:11 3",
        "end k-1 prepare - 2 2:11",
    )
    events = [ev(1, "stage_started"), ev(2, "stage_completed"), ev(3, "stage_started")]
    v = check(runs, events, killed={"1:10"}, slots=6)
    assert any("after the database recorded it completed" in x for x in v.violations)


def test_rerun_after_a_live_process_is_caught(tmp_path: Path) -> None:
    runs = ledger(tmp_path, "start k-1 prepare - 1 1:10 1", "start k-1 prepare - 2 2:11 2")
    events = [ev(1, "stage_started"), ev(2, "stage_started")]
    v = check(runs, events, killed=set(), slots=6)
    assert any("never killed" in x for x in v.violations)
    assert any("never ended" in x for x in v.violations)


def test_rerun_after_a_kill_is_charged_to_it(tmp_path: Path) -> None:
    runs = ledger(
        tmp_path,
        "start k-1 prepare - 1 1:10 1",
        "start k-1 prepare - 2 2:11 2",
        "end k-1 prepare - 2 2:11",
    )
    events = [ev(1, "stage_started"), ev(2, "stage_started"), ev(3, "stage_completed")]
    v = check(runs, events, killed={"1:10"}, slots=6)
    assert not v.violations and v.repeats_after_kill == 1 and v.charged == {"1:10": 1}


def test_more_reruns_than_slots_is_caught(tmp_path: Path) -> None:
    lines = []
    for sub in "abc":
        lines += [f"start k-1 fan {sub} 1 1:10 1", f"start k-1 fan {sub} 2 2:11 2"]
    events = [ev(1, "subtask_started", "fan", "a"), ev(2, "subtask_started", "fan", "a")]
    v = check(ledger(tmp_path, *lines), events, killed={"1:10", "2:11"}, slots=2)
    assert any("caused 3 re-runs" in x for x in v.violations)


def test_rerun_after_recorded_result_is_caught_even_if_killed(tmp_path: Path) -> None:
    runs = ledger(
        tmp_path, "start k-1 gate - 1 1:10 1", "end k-1 gate - 1 1:10", "start k-1 gate - 2 2:11 5"
    )
    events = [
        ev(1, "stage_started", "gate"),
        ev(2, "review_required", "gate"),
        ev(5, "stage_started", "gate"),
    ]
    v = check(runs, events, killed={"1:10"}, slots=6)
    assert any("was recorded" in x for x in v.violations)


@pytest.mark.parametrize(
    "reset",
    [
        ev(3, "stage_reset", "gate"),
        ev(3, "stage_retrying", "gate"),
    ],
)
def test_rerun_after_retry_is_legitimate(tmp_path: Path, reset: EventRow) -> None:
    runs = ledger(
        tmp_path,
        "start k-1 gate - 1 1:10 1",
        "end k-1 gate - 1 1:10",
        "start k-1 gate - 2 2:11 4",
        "end k-1 gate - 2 2:11",
    )
    events = [
        ev(1, "stage_started", "gate"),
        ev(2, "review_rejected", "gate"),
        reset,
        ev(4, "stage_started", "gate"),
    ]
    v = check(runs, events, killed=set(), slots=6)
    assert not v.violations and v.repeats_explained == 1


def test_reset_of_other_subtasks_does_not_excuse_a_rerun(tmp_path: Path) -> None:
    runs = ledger(
        tmp_path,
        "start k-1 fan a 1 1:10 1",
        "end k-1 fan a 1 1:10",
        "start k-1 fan a 2 2:11 4",
        "end k-1 fan a 2 2:11",
    )
    events = [
        ev(1, "subtask_started", "fan", "a"),
        ev(2, "subtask_failed", "fan", "a"),
        ev(3, "stage_reset", "fan", data={"subtasks": ["b"]}),
        ev(4, "subtask_started", "fan", "a"),
    ]
    v = check(runs, events, killed=set(), slots=6)
    assert v.violations


def test_torn_ledger_line_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="torn"):
        ledger(tmp_path, "start k-1 prepare - 1 1:10 1", "sta")
