"""`treadle advance`: registering items, running ready stages, the summary and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import Cli, lines_of

from treadle_cli.cli import app


def test_single_item_runs_to_the_review_gate(cli: Cli, pl: Path) -> None:
    r = cli("advance", pl / "chain.yaml", "doc-1", "--data", '{"title": "Hello"}')
    assert lines_of(r.stdout) == [
        "doc-1 chain awaiting_review 33.3%",
        "doc-1 parse completed",
        "doc-1 review awaiting_review prompt='Publish doc-1?'",
        "doc-1 publish pending",
    ]
    # The summary and the next step go to stderr, so stdout stays grep-able.
    err = lines_of(r.stderr)
    assert err[0] == "1 item(s): 1 awaiting review"
    assert "  treadle approve doc-1 review" in err
    st = json.loads(cli("status", "doc-1", "--json").stdout)
    assert st["stages"][0]["output"] == {"title": "Hello", "keys": ["title"]}


def test_several_items_print_one_line_each_and_a_summary(cli: Cli, pl: Path) -> None:
    r = cli("advance", pl / "chain.yaml", "doc-1", "doc-2", "doc-3")
    assert lines_of(r.stdout) == [
        f"doc-{n} chain awaiting_review 33.3% waiting_on='review: review'" for n in (1, 2, 3)
    ]
    err = r.stderr.splitlines()
    assert err[0] == "3 item(s): 3 awaiting review"
    assert [line.strip() for line in err[1:]] == [
        f"treadle approve doc-{n} review" for n in (1, 2, 3)
    ]


def test_data_file(cli: Cli, pl: Path, tmp_path: Path) -> None:
    f = tmp_path / "data.json"
    f.write_text('{"title": "From a file", "extra": 1}', encoding="utf-8")
    cli("advance", pl / "chain.yaml", "doc-1", "--data-file", f)
    st = json.loads(cli("status", "doc-1", "--json").stdout)
    assert st["stages"][0]["output"] == {"title": "From a file", "keys": ["extra", "title"]}


def test_items_file_registers_each_line_with_its_data(cli: Cli, pl: Path, tmp_path: Path) -> None:
    f = tmp_path / "items.jsonl"
    f.write_text('{"id": "a-1", "data": {"title": "A"}}\n\n{"id": "a-2"}\n', encoding="utf-8")
    r = cli("advance", pl / "chain.yaml", "--items", f)
    assert [line.split()[0] for line in lines_of(r.stdout)] == ["a-1", "a-2"]
    assert json.loads(cli("status", "a-1", "--json").stdout)["stages"][0]["output"]["title"] == "A"
    assert (
        json.loads(cli("status", "a-2", "--json").stdout)["stages"][0]["output"]["title"] == "a-2"
    )


def test_items_from_stdin(cli: Cli, pl: Path) -> None:
    r = cli("advance", pl / "single.yaml", "--items", "-", input='{"id": "s-1"}\n{"id": "s-2"}\n')
    assert lines_of(r.stdout) == ["s-1 single completed 100%", "s-2 single completed 100%"]


def test_all_advances_every_unfinished_item_of_that_pipeline(cli: Cli, pl: Path) -> None:
    gate = pl / "gate-open"
    data = json.dumps({"gate": str(gate)})
    cli("advance", pl / "fanout.yaml", "f-1", "f-2", "--data", data, code=1)
    cli("advance", pl / "chain.yaml", "c-1")
    # Nothing new is ready: failed stages stay failed until `retry`.
    r = cli("advance", pl / "fanout.yaml", "--all", code=1)
    assert [line.split()[0] for line in lines_of(r.stdout)] == ["f-1", "f-2"]  # not c-1
    gate.touch()
    for item in ("f-1", "f-2"):
        cli("retry", item, "split")
    r = cli("advance", pl / "fanout.yaml", "--all")
    assert lines_of(r.stdout) == ["f-1 fanout completed 100%", "f-2 fanout completed 100%"]
    # Completed items are no longer "unfinished", and the other pipeline's item was untouched.
    r = cli("advance", pl / "fanout.yaml", "--all")
    assert lines_of(r.stdout) == []
    assert r.stderr.startswith("0 item(s)")
    assert json.loads(cli("status", "c-1", "--json").stdout)["state"] == "awaiting_review"


def test_jobs_runs_items_in_parallel_with_the_same_result(cli: Cli, pl: Path) -> None:
    ids = [f"j-{n}" for n in range(6)]
    r = cli("advance", pl / "chain.yaml", *ids, "--jobs", "2")
    # Results are reported in the order the items were given, whatever finished first.
    assert [line.split()[0] for line in lines_of(r.stdout)] == ids
    assert all(" awaiting_review " in line for line in lines_of(r.stdout))
    assert lines_of(r.stderr)[0] == "6 item(s): 6 awaiting review"
    r = cli("advance", pl / "single.yaml", "k-1", "k-2", "k-3", "-j", "2")
    assert all(line.endswith("completed 100%") for line in lines_of(r.stdout))


def test_wait_zero_leaves_a_retry_pending_and_exits_0(cli: Cli, pl: Path) -> None:
    r = cli("advance", pl / "flaky.yaml", "f-1", "--wait", "0")
    out = lines_of(r.stdout)
    assert out[0] == "f-1 flaky pending 0%"
    assert out[1].startswith("f-1 work pending retry_at=")
    assert "error='ConnectionError: busy, try later'" in out[1]
    assert lines_of(r.stderr)[0] == "1 item(s): 1 pending"
    st = json.loads(cli("status", "f-1", "--json").stdout)
    work = st["stages"][0]
    assert (work["status"], work["attempts"]) == ("pending", 1)
    assert work["next_attempt_at"] is not None
    assert st["waiting_on"].startswith("retry: work at ")
    # Advancing again before the retry is due leaves it alone.
    cli("advance", pl / "flaky.yaml", "f-1", "--wait", "0")
    assert json.loads(cli("status", "f-1", "--json").stdout)["stages"][0]["attempts"] == 1


def test_failed_stage_exits_1_and_suggests_retry(cli: Cli, pl: Path) -> None:
    r = cli("advance", pl / "boom.yaml", "b-1", code=1)
    assert lines_of(r.stdout) == [
        "b-1 boom failed 33.3%",
        "b-1 first completed",
        "b-1 explode failed error='RuntimeError: kaboom'",
        "b-1 after pending",
    ]
    assert r.stderr == "1 item(s): 1 failed\n  treadle retry b-1 explode\n"


def test_one_failure_among_several_items_exits_1(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "ok-1")
    r = cli("advance", pl / "boom.yaml", "b-1", code=1)
    assert "failed" in r.stdout
    # The mixed summary counts each state.
    r = cli(
        "advance",
        pl / "fanout.yaml",
        "f-1",
        "f-2",
        "--data",
        json.dumps({"gate": str(pl / "missing")}),
        code=1,
    )
    assert lines_of(r.stderr)[0] == "2 item(s): 2 failed"
    assert [s.strip() for s in lines_of(r.stderr)[1:]] == [
        "treadle retry f-1 split",
        "treadle retry f-2 split",
    ]


def test_advance_json(cli: Cli, pl: Path) -> None:
    r = cli("advance", pl / "chain.yaml", "doc-1", "doc-2", "--json")
    out = json.loads(r.stdout)
    assert out["summary"] == {"awaiting_review": 2}
    assert [i["id"] for i in out["items"]] == ["doc-1", "doc-2"]
    assert {"id", "pipeline", "state", "progress", "stages"} <= set(out["items"][0])
    r = cli("advance", pl / "boom.yaml", "b-1", "--json", code=1)
    assert json.loads(r.stdout)["summary"] == {"failed": 1}


def test_advancing_a_registered_item_again_ignores_new_data(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1", "--data", '{"title": "First"}')
    cli("advance", pl / "chain.yaml", "doc-1", "--data", '{"title": "Second"}')
    st = json.loads(cli("status", "doc-1", "--json").stdout)
    assert st["stages"][0]["output"]["title"] == "First"
    assert st["stages"][0]["attempts"] == 1  # a completed stage never runs again


def test_durability_option_and_env(cli: Cli, pl: Path, db: Path) -> None:
    cli("--durability", "full", "advance", pl / "single.yaml", "s-1")
    cli("advance", pl / "single.yaml", "s-2", env={"TREADLE_DURABILITY": "full"})
    cli("--durability", "normal", "advance", pl / "single.yaml", "s-3")
    out = json.loads(cli("status", "--all", "--json").stdout)
    assert [i["state"] for i in out["items"]] == ["completed"] * 3
    r = cli("advance", pl / "single.yaml", "s-4", env={"TREADLE_DURABILITY": "bogus"}, code=2)
    assert "Traceback" not in r.stderr


@pytest.mark.sqlite_only  # the file is created; a URL in TREADLE_DB: test_cli_postgres.py
def test_db_from_the_environment(cli: Cli, pl: Path, tmp_path: Path) -> None:
    other = tmp_path / "from-env.db"
    r = cli.runner.invoke(
        app,
        ["advance", str(pl / "single.yaml"), "e-1"],
        env={"TREADLE_DB": str(other)},
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.stderr
    assert other.exists()
    assert not cli.db.exists()


def test_an_item_named_twice_is_advanced_and_reported_once(
    cli: Cli, pl: Path, tmp_path: Path
) -> None:
    f = tmp_path / "items.jsonl"
    f.write_text('{"id": "d-2", "data": {"title": "file"}}\n{"id": "d-1"}\n', encoding="utf-8")
    r = cli("advance", pl / "chain.yaml", "d-1", "d-1", "d-2", "--items", f, "--jobs", "4")
    assert [line.split()[0] for line in lines_of(r.stdout)] == ["d-1", "d-2"]
    assert r.stderr.splitlines()[0] == "2 item(s): 2 awaiting review"
    # The first mention's data wins (here: none on the command line, so {}).
    assert json.loads(cli("status", "d-2", "--json").stdout)["stages"][0]["output"] == {
        "title": "d-2",
        "keys": [],
    }
