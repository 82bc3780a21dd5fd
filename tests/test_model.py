from treadle_cli.errors import ConflictError, StoreError, TreadleError, UsageError
from treadle_cli.model import (
    STAGE_TRANSITIONS,
    ItemState,
    StageStatus,
    derive_item_state,
    fanout_stage_status,
)


def test_every_error_carries_its_exit_code():
    assert TreadleError("x").exit_code == 2
    assert UsageError("x").exit_code == 2
    assert ConflictError("x").exit_code == 3
    assert StoreError("x").exit_code == 4


def test_transition_table_covers_every_status():
    assert set(STAGE_TRANSITIONS) == set(StageStatus)
    assert STAGE_TRANSITIONS[StageStatus.COMPLETED] == frozenset()


def test_item_state_precedence():
    assert derive_item_state(["completed", "skipped"]) is ItemState.COMPLETED
    assert derive_item_state(["failed", "awaiting_review", "pending"]) is ItemState.FAILED
    assert derive_item_state(["rejected", "awaiting_review"]) is ItemState.REJECTED
    assert (
        derive_item_state(["completed", "awaiting_review", "pending"]) is ItemState.AWAITING_REVIEW
    )
    assert derive_item_state(["completed", "pending"]) is ItemState.PENDING


def test_fanout_status_waits_for_every_subtask():
    assert fanout_stage_status(["completed", "completed"]) is StageStatus.COMPLETED
    assert fanout_stage_status(["completed", "pending", "failed"]) is StageStatus.PENDING
    assert fanout_stage_status(["completed", "failed"]) is StageStatus.FAILED
