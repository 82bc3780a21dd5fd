"""Error paths: the exit code, one `error: ` line on stderr, no traceback, and a database left
exactly as it was (bytes and dump)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from clihelpers import Cli, created, error_line, set_schema_version, shown, snapshot


@pytest.fixture
def seeded(cli: Cli, pl: Path, db: Path) -> Path:
    """A database holding doc-1 (awaiting review) and b-1 (failed)."""
    cli("advance", pl / "chain.yaml", "doc-1")
    cli("advance", pl / "boom.yaml", "b-1", code=1)
    return pl


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status", "nope"], 2, "error: unknown item 'nope' — "),
        (["history", "nope"], 2, "error: unknown item 'nope' — "),
        (["watch", "nope"], 2, "error: unknown item 'nope' — "),
        (["approve", "nope", "review"], 2, "error: unknown item 'nope' — "),
        (["retry", "nope", "explode"], 2, "error: unknown item 'nope' — "),
        (
            ["approve", "doc-1", "nostage"],
            2,
            "error: item 'doc-1' has no stage 'nostage' — stages are: parse, review, publish",
        ),
        (["reject", "doc-1", "nostage", "--reason", "x"], 2, "error: item 'doc-1' has no stage"),
        (["retry", "b-1", "nostage"], 2, "error: item 'b-1' has no stage 'nostage'"),
        (["approve", "doc-1", "parse"], 3, "error: doc-1 parse is completed, not awaiting review"),
        (["approve", "b-1", "explode"], 3, "error: "),
        (["reject", "doc-1", "parse", "--reason", "x"], 3, "error: "),
        (["retry", "doc-1", "review"], 3, "error: "),
        (
            ["approve", "doc-1", "review", "--output", "{nope"],
            2,
            "error: --output is not valid JSON: ",
        ),
        (["reject", "doc-1", "review", "--reason", "   "], 2, "error: a rejection needs a reason"),
        (["watch", "doc-1", "--all"], 2, "error: ITEM and --all both given"),
        (["status", "--state", "bogus"], 2, "error: unknown state 'bogus'"),
    ],
)
def test_errors_on_an_existing_database(
    cli: Cli, seeded: Path, db: Path, args: list[str], code: int, message: str
) -> None:
    before = snapshot(db)
    line = error_line(cli(*args, code=code), code)
    assert line.startswith(message)
    assert snapshot(db) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "{bad"], "error: --data is not valid JSON: "),
        (["--data", "[1, 2]"], "error: --data must be a JSON object, not list"),
        (["--data", '"text"'], "error: --data must be a JSON object, not str"),
        (["--data", "{}", "--data-file", "x.json"], "error: --data and --data-file both given"),
        (["--data-file", "/nonexistent/data.json"], "error: cannot read /nonexistent/data.json"),
    ],
)
def test_bad_data_for_advance(
    cli: Cli, seeded: Path, db: Path, extra: list[str], message: str
) -> None:
    before = snapshot(db)
    line = error_line(cli("advance", seeded / "chain.yaml", "doc-9", *extra, code=2), 2)
    assert line.startswith(message)
    assert snapshot(db) == before


def test_bad_items_file(cli: Cli, seeded: Path, db: Path, tmp_path: Path) -> None:
    before = snapshot(db)
    f = _write(tmp_path / "items.jsonl", '{"id": "ok-1"}\n{"id": 7}\n')
    line = error_line(cli("advance", seeded / "chain.yaml", "--items", f, code=2), 2)
    assert line.startswith(f'error: {f}:2: each line needs a string "id"')
    f = _write(tmp_path / "items.jsonl", '{"id": "ok-1"}\nnot json\n')
    line = error_line(cli("advance", seeded / "chain.yaml", "--items", f, code=2), 2)
    assert line.startswith(f"error: {f}:2: not valid JSON")
    line = error_line(cli("advance", seeded / "chain.yaml", code=2), 2)
    assert line.startswith("error: no items to advance — ")
    assert snapshot(db) == before


def test_advance_with_another_pipelines_file(cli: Cli, seeded: Path, db: Path) -> None:
    before = snapshot(db)
    line = error_line(cli("advance", seeded / "boom.yaml", "doc-1", code=2), 2)
    assert line.startswith("error: item 'doc-1' belongs to pipeline 'chain', not 'boom'")
    assert snapshot(db) == before


def test_malformed_yaml(cli: Cli, seeded: Path, db: Path) -> None:
    bad = _write(seeded / "bad.yaml", "pipeline: bad\nstages:\n  a: [unclosed\n")
    before = snapshot(db)
    for args in (["validate", bad], ["graph", bad], ["advance", bad, "x-1"]):
        line = error_line(cli(*args, code=2), 2)
        assert line.startswith(f"error: {bad}:"), line
        assert "invalid YAML" in line
    assert snapshot(db) == before


def test_cycle_names_the_stages(cli: Cli, seeded: Path, db: Path) -> None:
    cyc = _write(
        seeded / "cyc.yaml",
        "pipeline: cyc\nstages:\n"
        "  a: {uses: clistages:parse, needs: b}\n"
        "  b: {uses: clistages:parse, needs: a}\n",
    )
    before = snapshot(db)
    for args in (["validate", cyc], ["advance", cyc, "x-1"]):
        line = error_line(cli(*args, code=2), 2)
        assert "cycle" in line and "a -> b -> a" in line
    assert snapshot(db) == before


def test_failing_import_reports_the_import_error(cli: Cli, seeded: Path, db: Path) -> None:
    _write(seeded / "brokenmod.py", 'raise ImportError("broken on purpose")\n')
    imp = _write(seeded / "imp.yaml", "pipeline: imp\nstages:\n  a: {uses: brokenmod:parse}\n")
    before = snapshot(db)
    for args in (["validate", imp], ["advance", imp, "x-1"]):
        line = error_line(cli(*args, code=2), 2)
        assert "cannot import 'brokenmod:parse': ImportError: broken on purpose" in line
    assert snapshot(db) == before


def test_pipeline_errors_list_every_problem_on_indented_lines(
    cli: Cli, seeded: Path, db: Path
) -> None:
    f = _write(
        seeded / "many.yaml",
        "pipeline: many\nstages:\n"
        "  a: {uses: nosuchmod:parse}\n"
        "  b: {uses: clistages:nosuch, needs: zzz}\n",
    )
    before = snapshot(db)
    r = cli("validate", f, code=2)
    assert "Traceback" not in r.stderr and r.stdout == ""
    head, *problems = r.stderr.splitlines()
    assert head.startswith(f"error: {f}: ") and "problems" in head
    assert len(problems) >= 3
    assert all(p.startswith(f"  {f}:") for p in problems)
    text = "\n".join(problems)
    assert "nosuchmod" in text and "nosuch" in text and "zzz" in text
    assert snapshot(db) == before


def test_missing_pipeline_file(cli: Cli, seeded: Path, db: Path) -> None:
    before = snapshot(db)
    line = error_line(cli("validate", seeded / "nope.yaml", code=2), 2)
    assert line.startswith("error: pipeline file not found: ")
    assert snapshot(db) == before


def test_reject_without_reason_is_a_usage_error(cli: Cli, seeded: Path, db: Path) -> None:
    before = snapshot(db)
    r = cli("reject", "doc-1", "review", code=2)
    assert "Missing option" in r.stderr and "--reason" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert snapshot(db) == before


@pytest.mark.sqlite_only  # foreign files; a foreign schema: test_cli_postgres.py
def test_not_a_treadle_database(cli: Cli, pl: Path, tmp_path: Path) -> None:
    text = _write(tmp_path / "notes.db", "just some text, not SQLite\n" * 10)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE foo (x)")
    con.execute("INSERT INTO foo VALUES (1)")
    con.commit()
    con.close()
    for path in (text, other):
        before = snapshot(path)
        for args in (
            ["status"],
            ["status", "doc-1"],
            ["reviews"],
            ["approve", "doc-1", "r"],
            ["advance", pl / "chain.yaml", "doc-1"],
        ):
            line = error_line(cli(*args, db=path, code=4), 4)
            assert line.startswith(f"error: {path} is not a treadle database"), line
        assert snapshot(path) == before


def test_database_from_a_newer_schema(cli: Cli, seeded: Path, db: Path) -> None:
    set_schema_version(db, 99)
    before = snapshot(db)
    for args in (
        ["status"],
        ["status", "doc-1"],
        ["reviews"],
        ["history", "doc-1"],
        ["approve", "doc-1", "review"],
        ["retry", "b-1", "explode"],
        ["advance", seeded / "chain.yaml", "doc-2"],
        ["watch", "--until-settled"],
    ):
        line = error_line(cli(*args, code=4), 4)
        assert "newer treadle (schema 99" in line, line
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "args",
    [
        ["approve", "doc-1", "review"],
        ["reject", "doc-1", "review", "--reason", "x"],
        ["retry", "doc-1", "review"],
    ],
)
def test_decisions_on_a_missing_database_create_nothing(
    cli: Cli, db: Path, args: list[str]
) -> None:
    line = error_line(cli(*args, code=2), 2)
    assert line.startswith(f"error: no treadle database at {shown(db)} — ")
    assert not created(db)


def test_reads_on_a_missing_database_see_nothing_and_create_nothing(cli: Cli, db: Path) -> None:
    assert cli("status").stdout == ""
    assert cli("status", "--all").stdout == ""
    assert cli("reviews").stdout == ""
    assert json.loads(cli("reviews", "--json").stdout) == []
    error_line(cli("status", "doc-1", code=2), 2)
    error_line(cli("history", "doc-1", code=2), 2)
    error_line(cli("watch", "doc-1", "--until-settled", code=2), 2)
    assert not created(db)  # neither the file (nor its WAL) nor the schema treadle


def test_errors_in_json_mode_are_a_json_object_on_stderr(cli: Cli, seeded: Path, db: Path) -> None:
    before = snapshot(db)
    r = cli("status", "nope", "--json", code=2)
    assert r.stdout == ""
    [line] = r.stderr.splitlines()
    err = json.loads(line)
    assert err["error"] == "unknown item 'nope'"
    assert err["exit_code"] == 2 and err["type"] == "UnknownItemError" and err["hint"]
    r = cli("approve", "doc-1", "parse", "--json", code=3)
    assert json.loads(r.stderr)["exit_code"] == 3
    r = cli("advance", seeded / "chain.yaml", "x", "--data", "[]", "--json", code=2)
    assert json.loads(r.stderr)["error"].startswith("--data must be a JSON object")
    bad = _write(
        seeded / "many.yaml",
        "pipeline: many\nstages:\n"
        "  a: {uses: nosuchmod:parse}\n  b: {uses: clistages:parse, needs: zzz}\n",
    )
    err = json.loads(cli("validate", bad, "--json", code=2).stderr)
    assert len(err["problems"]) == 2
    assert snapshot(db) == before


def test_debug_shows_a_traceback(cli: Cli, seeded: Path) -> None:
    r = cli("--debug", "status", "nope", code=2)
    assert "Traceback (most recent call last)" in r.stderr
    assert "UnknownItemError" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: unknown item 'nope'")


def test_snapshot_does_see_a_change(cli: Cli, seeded: Path, db: Path) -> None:
    """The control for every `snapshot(db) == before` above: a real write is detected."""
    before = snapshot(db)
    cli("approve", "doc-1", "review")
    assert snapshot(db) != before


def test_input_files_that_are_not_utf8_are_usage_errors(
    cli: Cli, seeded: Path, db: Path, tmp_path: Path
) -> None:
    before = snapshot(db)
    items = tmp_path / "items.jsonl"
    items.write_bytes(b'{"id": "u-1", "data": {"t": "\xff\xfe"}}\n')
    line = error_line(cli("advance", seeded / "chain.yaml", "--items", items, code=2), 2)
    assert line.startswith(f"error: {items} is not UTF-8 text")
    data = tmp_path / "data.json"
    data.write_bytes(b'{"t": "\xff"}')
    line = error_line(cli("advance", seeded / "chain.yaml", "u-2", "--data-file", data, code=2), 2)
    assert line.startswith(f"error: {data} is not UTF-8 text")
    r = cli("advance", seeded / "chain.yaml", "--items", "-", input=b'{"id": "\xff"}\n', code=2)
    assert error_line(r, 2).startswith("error: - is not UTF-8 text")
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "args",
    [
        ["--durability", "eventually", "status"],
        ["advance", "x.yaml", "a", "--jobs", "0"],
        ["advance", "x.yaml", "a", "--wait", "-1"],
        ["watch", "--interval", "0"],
        ["status", "--limit", "-1"],
        ["frobnicate"],
    ],
)
def test_bad_options_are_usage_errors(cli: Cli, seeded: Path, db: Path, args: list[str]) -> None:
    before = snapshot(db)
    r = cli(*args, code=2)
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert snapshot(db) == before
