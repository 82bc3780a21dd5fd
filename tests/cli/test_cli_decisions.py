"""`treadle approve`, `reject` and `retry`: decisions recorded with who and why."""

from __future__ import annotations

import json
from pathlib import Path

from clihelpers import Cli, lines_of


def _status(cli: Cli, item: str) -> dict:
    return json.loads(cli("status", item, "--json").stdout)


def _stage(cli: Cli, item: str, name: str) -> dict:
    return next(s for s in _status(cli, item)["stages"] if s["name"] == name)


def test_approve_records_comment_and_by_then_advance_continues(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    r = cli("approve", "doc-1", "review", "--comment", "looks good", "--by", "alice")
    assert r.stdout == "doc-1 review approved\n"
    review = _stage(cli, "doc-1", "review")
    assert review["status"] == "completed"
    assert review["review"]["decision"] == "approved"
    assert review["review"]["by"] == "alice"
    assert review["review"]["comment"] == "looks good"
    # Without --advance, nothing downstream ran.
    assert _stage(cli, "doc-1", "publish")["status"] == "pending"
    r = cli("advance", pl / "chain.yaml", "doc-1")
    assert lines_of(r.stdout)[0] == "doc-1 chain completed 100%"


def test_approve_by_defaults_to_the_os_user(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    cli("approve", "doc-1", "review")
    assert _stage(cli, "doc-1", "review")["review"]["by"] == "tester"  # $USER, set by conftest


def test_approve_output_is_what_downstream_sees(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    r = cli("approve", "doc-1", "review", "--output", '{"title": "Edited"}', "--advance")
    out = lines_of(r.stdout)
    assert out[0] == "doc-1 review approved"
    assert out[1] == "doc-1 chain completed 100%"
    assert "doc-1 publish completed" in out
    assert _stage(cli, "doc-1", "publish")["output"] == {"reviewed": {"title": "Edited"}}


def test_approve_advance_exits_1_when_the_continuation_fails(cli: Cli, pl: Path) -> None:
    (pl / "chain_boom.yaml").write_text(
        "pipeline: chain-boom\nstages:\n  parse: {uses: clistages:parse}\n"
        "  review: {uses: clistages:gate, needs: parse}\n"
        "  explode: {uses: clistages:explode, needs: review}\n",
        encoding="utf-8",
    )
    cli("advance", pl / "chain_boom.yaml", "doc-1")
    r = cli("approve", "doc-1", "review", "--advance", code=1)
    assert "doc-1 explode failed error='RuntimeError: kaboom'" in r.stdout


def test_repeated_identical_approval_succeeds_and_says_so(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    cli("approve", "doc-1", "review", "--by", "alice")
    r = cli("approve", "doc-1", "review", "--by", "alice")
    assert r.stdout == "doc-1 review already approved\n"


def test_approve_json(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    r = cli("approve", "doc-1", "review", "--by", "alice", "--advance", "--json")
    out = json.loads(r.stdout)
    assert out["item"] == "doc-1" and out["stage"] == "review" and out["subtask"] is None
    assert out["decision"] == "approved" and out["changed"] is True and out["by"] == "alice"
    assert out["status"]["state"] == "completed"


def test_subtask_review_with_the_stage_slash_subtask_form(cli: Cli, pl: Path) -> None:
    (pl / "subreview.py").write_text(
        "from treadle_cli.model import StageOutcome, SubTask\n\n"
        "def check(item, ctx):\n"
        "    if ctx.subtask is None:\n"
        "        return StageOutcome.fan_out([SubTask('x'), SubTask('y')])\n"
        "    if ctx.subtask == 'y' and ctx.review is None:\n"
        "        return StageOutcome.needs_review('is y right?', {'y': 1})\n"
        "    return {'done': ctx.subtask}\n",
        encoding="utf-8",
    )
    (pl / "subreview.yaml").write_text(
        "pipeline: subreview\nstages:\n  check: {uses: subreview:check}\n", encoding="utf-8"
    )
    r = cli("advance", pl / "subreview.yaml", "s-1")
    assert "s-1 check/y awaiting_review" in r.stdout
    assert "treadle approve s-1 check/y" in r.stderr
    rows = json.loads(cli("reviews", "--json").stdout)
    assert [(x["item"], x["stage"], x["subtask"]) for x in rows] == [("s-1", "check", "y")]
    r = cli("approve", "s-1", "check/y", "--comment", "fine", "--advance")
    assert lines_of(r.stdout)[0] == "s-1 check/y approved"
    assert _status(cli, "s-1")["state"] == "completed"


def test_reject_needs_a_reason_and_records_who(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    r = cli("reject", "doc-1", "review", "--reason", "title is wrong", "--by", "bob")
    assert r.stdout == "doc-1 review rejected\n"
    st = _status(cli, "doc-1")
    assert st["state"] == "rejected"
    review = st["stages"][1]["review"]
    assert (review["decision"], review["by"], review["reason"]) == (
        "rejected",
        "bob",
        "title is wrong",
    )
    r = cli("reject", "doc-1", "review", "--reason", "title is wrong", "--by", "bob", "--json")
    assert json.loads(r.stdout)["changed"] is False


def test_retry_after_reject_reruns_the_gate_with_the_rejection(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    cli("reject", "doc-1", "review", "--reason", "too short")
    r = cli("retry", "doc-1", "review")
    assert r.stdout == "doc-1 review reset to pending\n"
    assert f"next: treadle advance {pl / 'chain.yaml'} doc-1" in r.stderr
    assert _stage(cli, "doc-1", "review")["status"] == "pending"
    r = cli("retry", "doc-1", "review", code=3)  # pending now: nothing to retry
    r = cli("advance", pl / "chain.yaml", "doc-1")
    assert "prompt='Previously rejected: too short. Publish doc-1?'" in r.stdout


def test_retry_reruns_only_the_failed_subtasks(cli: Cli, pl: Path) -> None:
    gate = pl / "gate-open"
    cli("advance", pl / "fanout.yaml", "f-1", "--data", json.dumps({"gate": str(gate)}), code=1)
    split = _stage(cli, "f-1", "split")
    assert [(s["name"], s["status"]) for s in split["subtasks"]] == [
        ("a", "completed"),
        ("b", "failed"),
        ("c", "completed"),
    ]
    gate.touch()
    r = cli("retry", "f-1", "split", "--advance")
    out = lines_of(r.stdout)
    assert out[0] == "f-1 split reset to pending (subtasks: b)"
    assert out[1] == "f-1 fanout completed 100%"
    assert "f-1 split/b completed attempts=2" in out
    split = _stage(cli, "f-1", "split")
    assert {s["name"]: s["attempts"] for s in split["subtasks"]} == {"a": 1, "b": 2, "c": 1}
    # The history proves a and c never started again.
    events = json.loads(cli("history", "f-1", "--json").stdout)["events"]
    started = [e["subtask"] for e in events if e["kind"] == "subtask_started"]
    assert sorted(started) == ["a", "b", "b", "c"]
    assert [e["kind"] for e in events].count("stage_reset") == 1


def test_retry_advance_exits_1_when_it_fails_again(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "boom.yaml", "b-1", code=1)
    r = cli("retry", "b-1", "explode", "--advance", code=1)
    assert "b-1 explode failed attempts=2 error='RuntimeError: kaboom'" in r.stdout
    r = cli("retry", "b-1", "explode", "--json")
    assert json.loads(r.stdout) == {
        "item": "b-1",
        "stage": "explode",
        "reset": True,
        "subtasks": [],
    }
