"""The library's errors name no CLI flag or command; the CLI words their hints for the
command line (CLI_HINTS in treadle_cli/cli/app.py), in both output modes."""

from __future__ import annotations

import json
from pathlib import Path

from clihelpers import Cli, error_line, snapshot

from treadle_cli import StageOutcome, Workflow
from treadle_cli.store import open_store


def test_a_rejection_without_a_reason_names_the_flag(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    line = error_line(cli("reject", "doc-1", "review", "--reason", " ", code=2), 2)
    assert line == "error: a rejection needs a reason — pass --reason TEXT"
    r = cli("reject", "doc-1", "review", "--reason", " ", "--json", code=2)
    assert json.loads(r.stderr)["hint"] == "pass --reason TEXT"


def test_advance_after_a_decision_needs_the_registered_file(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1", "doc-2")
    (pl / "chain.yaml").unlink()
    line = error_line(cli("approve", "doc-1", "review", "--advance", code=2), 2)
    assert line == (
        f"error: pipeline file {pl / 'chain.yaml'} of item 'doc-1' is gone"
        " — restore it, or run `treadle advance PIPELINE ITEM`"
    )
    r = cli("approve", "doc-2", "review", "--advance", "--json", code=2)
    err = json.loads(r.stderr)
    assert err["hint"] == "restore it, or run `treadle advance PIPELINE ITEM`"
    assert err["type"] == "UsageError" and err["exit_code"] == 2


def test_advance_of_an_item_a_library_workflow_registered(cli: Cli, db: Path | str) -> None:
    def gate(item: object, ctx: object) -> StageOutcome:
        return StageOutcome.needs_review("ok?")

    store = open_store(db)
    try:
        Workflow.builder("lib").stage("gate", gate).build().advance("x-1", store)
    finally:
        store.close()
    if isinstance(db, Path):
        snapshot(db)
    line = error_line(cli("approve", "x-1", "gate", "--advance", code=2), 2)
    assert line == (
        "error: item 'x-1' was registered by a library workflow, not a pipeline file"
        " — advance it from the code that created it"
    )
