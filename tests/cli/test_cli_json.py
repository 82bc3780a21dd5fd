"""`--json`: stdout is exactly JSON, with the keys DESIGN.md §5 documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import Cli, created

STAGE_KEYS = {"name", "status", "attempts", "error", "review", "output", "subtasks"}
SUBTASK_KEYS = {"name", "status", "attempts", "error"}


@pytest.fixture
def items(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1", "doc-2")
    cli("approve", "doc-2", "review", "--advance", "--by", "alice", "--comment", "ok")
    cli(
        "advance",
        pl / "fanout.yaml",
        "f-1",
        "--data",
        json.dumps({"gate": str(pl / "never")}),
        code=1,
    )


def test_status_item_json(cli: Cli, items: None) -> None:
    st = json.loads(cli("status", "f-1", "--json").stdout)
    assert {"id", "pipeline", "state", "progress", "stages"} <= set(st)
    assert (st["id"], st["pipeline"], st["state"]) == ("f-1", "fanout", "failed")
    assert isinstance(st["progress"], int | float) and st["progress"] == pytest.approx(33.3)
    for stage in st["stages"]:
        assert STAGE_KEYS <= set(stage)
        for sub in stage["subtasks"]:
            assert SUBTASK_KEYS <= set(sub)
    assert [s["name"] for s in st["stages"]] == ["prepare", "split", "finish"]
    split = st["stages"][1]
    assert split["status"] == "failed" and split["attempts"] == 1
    assert split["error"].startswith("1 of 3 subtasks failed")
    assert [(s["name"], s["status"], s["attempts"]) for s in split["subtasks"]] == [
        ("a", "completed", 1),
        ("b", "failed", 1),
        ("c", "completed", 1),
    ]
    assert split["subtasks"][1]["error"].startswith("ValueError: gate file ")
    assert split["subtasks"][0]["error"] is None


def test_status_item_json_review_and_decision(cli: Cli, items: None) -> None:
    waiting = json.loads(cli("status", "doc-1", "--json").stdout)["stages"][1]
    assert waiting["status"] == "awaiting_review"
    assert waiting["review"]["prompt"] == "Publish doc-1?"
    assert waiting["review"]["data"] == {"title": "doc-1"}
    assert waiting["review"]["requested_at"]
    decided = json.loads(cli("status", "doc-2", "--json").stdout)
    assert decided["state"] == "completed" and decided["progress"] == 100
    review = decided["stages"][1]["review"]
    assert (review["decision"], review["by"], review["comment"]) == ("approved", "alice", "ok")


def test_status_all_json(cli: Cli, items: None) -> None:
    out = json.loads(cli("status", "--all", "--json").stdout)
    assert set(out) >= {"items", "counts"}
    assert [i["id"] for i in out["items"]] == ["doc-1", "doc-2", "f-1"]
    for i in out["items"]:
        assert {"id", "pipeline", "state", "progress", "waiting_on"} <= set(i)
    by_id = {i["id"]: i for i in out["items"]}
    assert by_id["doc-1"]["waiting_on"] == "review: review"
    assert by_id["doc-2"]["state"] == "completed" and by_id["doc-2"]["progress"] == 100
    assert out["counts"]["items"] == {"awaiting_review": 1, "completed": 1, "failed": 1}
    assert out["counts"]["stages"]["split"] == {"failed": 1}
    # Without --all: only unfinished items; --limit caps the list but not the counts.
    out = json.loads(cli("status", "--json").stdout)
    assert [i["id"] for i in out["items"]] == ["doc-1", "f-1"]
    out = json.loads(cli("status", "--all", "--json", "--limit", "1").stdout)
    assert [i["id"] for i in out["items"]] == ["doc-1"]
    assert out["counts"]["total"] == 3
    out = json.loads(cli("status", "--json", "--state", "failed", "--pipeline", "fanout").stdout)
    assert [i["id"] for i in out["items"]] == ["f-1"]


def test_status_all_json_on_an_empty_database(cli: Cli, db: Path) -> None:
    out = json.loads(cli("status", "--all", "--json").stdout)
    assert out["items"] == [] and out["counts"]["total"] == 0
    assert not created(db)


def test_reviews_json(cli: Cli, items: None) -> None:
    rows = json.loads(cli("reviews", "--json").stdout)
    assert len(rows) == 1
    row = rows[0]
    assert set(row) >= {"item", "stage", "subtask", "prompt", "data", "requested_at"}
    assert (row["item"], row["stage"], row["subtask"]) == ("doc-1", "review", None)
    assert row["prompt"] == "Publish doc-1?" and row["data"] == {"title": "doc-1"}
    assert json.loads(cli("reviews", "--json", "--pipeline", "fanout").stdout) == []


def test_history_json(cli: Cli, items: None) -> None:
    out = json.loads(cli("history", "doc-2", "--json").stdout)
    assert out["item"] == "doc-2"
    kinds = [e["kind"] for e in out["events"]]
    assert kinds[0] == "item_registered" and kinds[-1] == "item_completed"
    assert "review_approved" in kinds
    for e in out["events"]:
        assert {"id", "ts", "kind", "item", "stage", "subtask", "data"} <= set(e)
        assert e["item"] == "doc-2"
    ids = [e["id"] for e in out["events"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    [d] = out["decisions"]
    assert (d["decision"], d["by"], d["comment"]) == ("approved", "alice", "ok")


def test_watch_until_settled_json_prints_nothing_when_already_settled(
    cli: Cli, items: None
) -> None:
    r = cli("watch", "doc-2", "--until-settled", "--json")
    assert r.stdout == ""


def test_validate_and_decisions_json(cli: Cli, pl: Path) -> None:
    assert json.loads(cli("validate", pl / "chain.yaml", "--json").stdout)["valid"] is True
    cli("advance", pl / "chain.yaml", "doc-1")
    out = json.loads(cli("reject", "doc-1", "review", "--reason", "r", "--json").stdout)
    assert out["decision"] == "rejected" and out["by"] == "tester"
    out = json.loads(cli("retry", "doc-1", "review", "--advance", "--json").stdout)
    assert out["reset"] is True and out["status"]["state"] == "awaiting_review"
