"""Read commands: status, reviews, history, validate, graph, watch --until-settled, help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import Cli, created, lines_of

from treadle_cli import __version__


@pytest.fixture
def mixed(cli: Cli, pl: Path) -> Path:
    """Items in every interesting state: review, failed, completed, rejected."""
    cli("advance", pl / "chain.yaml", "doc-1", "doc-2", "doc-3")
    cli("reject", "doc-2", "review", "--reason", "no", "--by", "bob")
    cli("approve", "doc-3", "review", "--advance")
    cli("advance", pl / "boom.yaml", "b-1", code=1)
    cli(
        "advance",
        pl / "fanout.yaml",
        "f-1",
        "--data",
        json.dumps({"gate": str(pl / "never")}),
        code=1,
    )
    return pl


def test_status_item_lists_every_stage_and_subtask_with_its_status(cli: Cli, mixed: Path) -> None:
    out = lines_of(cli("status", "f-1").stdout)
    assert out[0] == "f-1 fanout failed 33.3%"
    assert out[1] == "f-1 prepare completed"
    assert out[2].startswith("f-1 split failed error='1 of 3 subtasks failed: b (ValueError: ")
    assert out[3:6] == [
        "f-1 split/a completed",
        f"f-1 split/b failed error='ValueError: gate file {mixed / 'never'} is missing'",
        "f-1 split/c completed",
    ]
    assert out[6] == "f-1 finish pending"
    assert lines_of(cli("status", "doc-3").stdout) == [
        "doc-3 chain completed 100%",
        "doc-3 parse completed",
        "doc-3 review completed",
        "doc-3 publish completed",
    ]


def test_status_table_shows_unfinished_items_and_counts(cli: Cli, mixed: Path) -> None:
    out = lines_of(cli("status").stdout)
    items = [line for line in out if not line.startswith("count ")]
    assert items == [
        "doc-1 chain awaiting_review 33.3% waiting_on='review: review'",
        "doc-2 chain rejected 33.3% waiting_on='rejected: review'",
        "b-1 boom failed 33.3% waiting_on='failed: explode'",
        "f-1 fanout failed 33.3% waiting_on='failed: split'",
    ]
    counts = [line for line in out if line.startswith("count ")]
    assert "count review awaiting_review 1" in counts
    assert "count review completed 1" in counts
    assert "count explode failed 1" in counts
    assert "count parse completed 3" in counts


def test_status_all_pipeline_state_limit(cli: Cli, mixed: Path) -> None:
    def ids(*args: str) -> list[str]:
        r = cli("status", *args)
        return [line.split()[0] for line in lines_of(r.stdout) if not line.startswith("count ")]

    assert ids("--all") == ["doc-1", "doc-2", "doc-3", "b-1", "f-1"]
    assert ids("--pipeline", "chain") == ["doc-1", "doc-2"]
    assert ids("--pipeline", "chain", "--all") == ["doc-1", "doc-2", "doc-3"]
    assert ids("--state", "failed") == ["b-1", "f-1"]
    assert ids("--state", "failed", "--state", "rejected") == ["doc-2", "b-1", "f-1"]
    assert ids("--state", "completed") == ["doc-3"]
    assert ids("--all", "--limit", "2") == ["doc-1", "doc-2"]
    assert ids("--pipeline", "nope") == []
    # --pipeline narrows the per-stage counts too.
    counts = [
        line
        for line in lines_of(cli("status", "--pipeline", "boom").stdout)
        if line.startswith("count ")
    ]
    assert counts == ["count after pending 1", "count explode failed 1", "count first completed 1"]


def test_reviews_lists_what_awaits_a_human(cli: Cli, mixed: Path) -> None:
    out = lines_of(cli("reviews").stdout)
    assert len(out) == 1
    assert out[0].startswith("doc-1 review ")
    assert "prompt='Publish doc-1?'" in out[0]
    assert 'data={"title": "doc-1"}' in out[0]
    assert lines_of(cli("reviews", "--pipeline", "boom").stdout) == []
    assert len(lines_of(cli("reviews", "--pipeline", "chain").stdout)) == 1


def test_history_shows_events_and_decisions_with_who_and_why(cli: Cli, mixed: Path) -> None:
    out = lines_of(cli("history", "doc-2").stdout)
    kinds = [line.split()[3] for line in out if not line.startswith("decision ")]
    assert kinds == [
        "item_registered",
        "stage_started",
        "stage_completed",
        "stage_started",
        "review_required",
        "review_rejected",
    ]
    ids = [int(line.split()[0]) for line in out if not line.startswith("decision ")]
    assert ids == sorted(ids)
    decisions = [line for line in out if line.startswith("decision ")]
    assert len(decisions) == 1
    assert "doc-2 review rejected by=bob reason='no'" in decisions[0]
    out = cli("history", "doc-3").stdout
    assert "review approved by=tester" in out
    assert "item_completed" in out


@pytest.mark.no_db
def test_validate(cli: Cli, pl: Path) -> None:
    r = cli("validate", pl / "chain.yaml")
    assert r.stdout == "ok: chain (3 stages: parse → review → publish)\n"
    out = json.loads(cli("validate", pl / "fanout.yaml", "--json").stdout)
    assert out["valid"] is True and out["pipeline"] == "fanout"
    assert [(s["name"], s["needs"], s["uses"]) for s in out["stages"]] == [
        ("prepare", [], "clistages:parse"),
        ("split", ["prepare"], "clistages:split"),
        ("finish", ["split"], "clistages:parse"),
    ]


def test_validate_creates_no_database(cli: Cli, pl: Path, db: Path) -> None:
    cli("validate", pl / "chain.yaml")
    cli("graph", pl / "chain.yaml")
    assert not created(db)


@pytest.mark.no_db
def test_graph_formats(cli: Cli, pl: Path) -> None:
    assert cli("graph", pl / "chain.yaml").stdout == ("parse\nreview <- parse\npublish <- review\n")
    assert cli("graph", pl / "chain.yaml", "--format", "tree").stdout == (
        "parse\nreview <- parse\npublish <- review\n"
    )
    assert cli("graph", pl / "chain.yaml", "--format", "mermaid").stdout == (
        "graph TD\n    parse\n    parse --> review\n    review --> publish\n"
    )
    dot = cli("graph", pl / "chain.yaml", "-f", "dot").stdout
    assert dot.startswith('digraph "chain" {')
    assert '"parse" -> "review";' in dot and '"review" -> "publish";' in dot
    assert dot.rstrip().endswith("}")
    r = cli("graph", pl / "chain.yaml", "--format", "png", code=2)
    assert "png" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(("item", "code"), [("doc-3", 0), ("b-1", 1), ("doc-2", 1), ("doc-1", 5)])
def test_watch_until_settled_on_a_settled_item(cli: Cli, mixed: Path, item: str, code: int) -> None:
    r = cli("watch", item, "--until-settled", code=code)
    assert "Traceback" not in r.stderr


def test_watch_until_settled_on_everything(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "single.yaml", "s-1")
    cli("watch", "--until-settled")
    cli("watch", "--all", "--until-settled", "--json")
    cli("advance", pl / "chain.yaml", "doc-1")
    cli("watch", "--until-settled", code=5)  # a review outranks completed items
    cli("advance", pl / "boom.yaml", "b-1", code=1)
    cli("watch", "--until-settled", code=1)  # a failure outranks a review


@pytest.mark.no_db
def test_version(cli: Cli) -> None:
    r = cli("--version")
    assert r.stdout == f"treadle {__version__}\n"


COMMANDS = [
    "advance",
    "approve",
    "reject",
    "retry",
    "status",
    "watch",
    "reviews",
    "history",
    "validate",
    "graph",
]


@pytest.mark.no_db
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command_has_an_example(cli: Cli, command: str | None) -> None:
    r = cli(*([command] if command else []), "--help")
    assert "Example" in r.stdout
    assert "\x1b[" not in r.stdout
