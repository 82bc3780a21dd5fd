"""finish_and_claim: finishing a stage and claiming the one it unblocked is one transaction."""

from treadle_cli.model import EventKind, StageChange, StageStatus
from treadle_cli.store.protocol import ClaimRequest

S = StageStatus


def _request(drv, stage, claim="c2"):
    return ClaimRequest(drv.stage("i", stage), claim, drv.owner, None)


def test_finish_and_claim_moves_both_stages_at_once(drv):
    drv.register("i", ["a", "b"])
    drv.claim("i", "a", "c1")
    then = _request(drv, "b")
    before = drv.store.last_event_id()
    got = drv.store.finish_and_claim(
        "i",
        "a",
        claim="c1",
        change=StageChange(S.COMPLETED, output={"x": 1}),
        events=[(EventKind.STAGE_COMPLETED, None, None)],
        now=drv.now(),
        then=then,
    )
    assert got is not None
    events, claimed = got
    assert claimed is not None and claimed.name == "b" and claimed.claim == "c2"
    assert drv.statuses("i") == {"a": "completed", "b": "running"}
    assert [e.kind for e in events] == [EventKind.STAGE_COMPLETED, EventKind.STAGE_STARTED]
    assert [e.id for e in drv.store.events(after=before)] == [e.id for e in events]


def test_a_moved_successor_is_not_claimed_but_the_finish_stands(drv):
    drv.register("i", ["a", "b"])
    drv.claim("i", "a", "c1")
    stale = _request(drv, "b")
    drv.claim("i", "b", "other")  # someone else got there first
    got = drv.store.finish_and_claim(
        "i",
        "a",
        claim="c1",
        change=StageChange(S.COMPLETED),
        events=[(EventKind.STAGE_COMPLETED, None, None)],
        now=drv.now(),
        then=stale,
    )
    assert got is not None and got[1] is None
    assert drv.statuses("i") == {"a": "completed", "b": "running"}
    assert drv.stage("i", "b").claim == "other"


def test_no_claim_when_the_finish_is_not_done(drv):
    drv.register("i", ["a", "b"])
    drv.claim("i", "a", "c1")
    got = drv.store.finish_and_claim(
        "i",
        "a",
        claim="c1",
        change=StageChange(S.FAILED, error="E: x"),
        events=[(EventKind.STAGE_FAILED, None, None)],
        now=drv.now(),
        then=_request(drv, "b"),
    )
    assert got is not None and got[1] is None
    assert drv.statuses("i") == {"a": "failed", "b": "pending"}


def test_a_lost_claim_finishes_nothing(drv):
    drv.register("i", ["a", "b"])
    drv.claim("i", "a", "c1")
    got = drv.store.finish_and_claim(
        "i",
        "a",
        claim="wrong",
        change=StageChange(S.COMPLETED),
        events=[],
        now=drv.now(),
        then=_request(drv, "b"),
    )
    assert got is None
    assert drv.statuses("i") == {"a": "running", "b": "pending"}
