"""Output modes: plain grep-able lines when piped, a rich tree with symbols on a terminal."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from clihelpers import Cli, snapshot
from rich.console import Console

from treadle_cli.cli.render import status_lines, status_tree, theme
from treadle_cli.status import load_status
from treadle_cli.store import open_store

ANSI = "\x1b["
#: An SGR sequence that sets a foreground or background colour (30-49, 90-107).
COLOUR = re.compile(r"\x1b\[(?:\d+;)*(?:3\d|4\d|9\d|10\d)(?:;\d+)*m")
TERMINAL = {"FORCE_COLOR": "1"}  # rich treats the output as a terminal


@pytest.fixture
def items(cli: Cli, pl: Path) -> Path:
    cli("advance", pl / "chain.yaml", "doc-1", "doc-2")
    cli("approve", "doc-2", "review", "--advance", "--comment", "fine")
    cli(
        "advance",
        pl / "fanout.yaml",
        "f-1",
        "--data",
        json.dumps({"gate": str(pl / "never")}),
        code=1,
    )
    return pl


def test_piped_output_has_no_escape_codes(cli: Cli, items: Path) -> None:
    runs = [
        cli("status", "doc-1"),
        cli("status", "f-1"),
        cli("status"),
        cli("status", "--all"),
        cli("reviews"),
        cli("history", "doc-2"),
        cli("graph", items / "fanout.yaml"),
        cli("validate", items / "chain.yaml"),
        cli("watch", "doc-2", "--until-settled"),
        cli("advance", items / "chain.yaml", "doc-1", "doc-3"),
        cli("advance", items / "fanout.yaml", "f-1", code=1),
        cli("approve", "doc-1", "review", "--advance"),
        cli("--help"),
        cli("status", "--help"),
    ]
    for r in runs:
        assert ANSI not in r.stdout and ANSI not in r.stderr, (r.stdout, r.stderr)
        assert "\t" not in r.stdout


def test_terminal_status_item_is_a_tree_with_symbols(cli: Cli, items: Path) -> None:
    r = cli("status", "f-1", env=TERMINAL)
    assert ANSI in r.stdout
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout)
    assert plain.splitlines()[0].startswith("f-1  [fanout]  ✖ failed  33.3%")
    assert "├── prepare  ✔ completed" in plain
    assert "│   ├── a  ✔ completed" in plain
    assert "b  ✖ failed" in plain
    assert "└── finish  ○ pending" in plain
    r = cli("status", "doc-1", env=TERMINAL)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout)
    assert "⏸ awaiting_review" in plain
    assert "treadle approve doc-1 review" in plain


def test_terminal_tables_and_trees_render(cli: Cli, items: Path) -> None:
    for args in (
        ["status"],
        ["status", "--all"],
        ["reviews"],
        ["history", "doc-2"],
        ["graph", items / "chain.yaml"],
    ):
        r = cli(*args, env=TERMINAL)
        assert ANSI in r.stdout, args
        assert r.stderr == ""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", cli("status", "--all", env=TERMINAL).stdout)
    assert "stages × state" in plain and "3 items:" in plain


def test_no_color_is_honoured_on_a_terminal(cli: Cli, items: Path) -> None:
    env = {**TERMINAL, "NO_COLOR": "1"}
    for args in (["status", "f-1"], ["status", "--all"], ["reviews"]):
        r = cli(*args, env=env)
        assert not COLOUR.search(r.stdout), args
    assert "✔ completed" in cli("status", "f-1", env=env).stdout


def test_json_stays_exact_on_a_terminal(cli: Cli, items: Path) -> None:
    assert json.loads(cli("status", "f-1", "--json", env=TERMINAL).stdout)["id"] == "f-1"
    assert json.loads(cli("status", "--json", env=TERMINAL).stdout)["items"]
    r = cli("advance", items / "chain.yaml", "doc-5", "doc-6", "--json", env=TERMINAL)
    assert json.loads(r.stdout)["summary"] == {"awaiting_review": 2}
    assert r.stderr == ""  # no progress bar in JSON mode


def test_render_status_tree_on_a_fixed_width_console(cli: Cli, items: Path, db: Path) -> None:
    snapshot(db)  # let go of the in-process CLI's connections
    store = open_store(db, readonly=True)
    try:
        st = load_status(store, "f-1")
        now = st.item.updated_at + timedelta(seconds=5)
        buf = io.StringIO()
        Console(file=buf, force_terminal=True, width=100, theme=theme()).print(
            status_tree(st, now=now, outdated=True)
        )
        out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
        assert "✔ completed" in out and "✖ failed" in out and "○ pending" in out
        assert "(ran on an older version of the pipeline file)" in out
        lines = status_lines(st, now=now)
        assert lines[0] == "f-1 fanout failed 33.3%"
        assert "f-1 split/c completed" in lines
    finally:
        store.close()


def test_status_says_when_the_pipeline_file_changed(cli: Cli, pl: Path) -> None:
    cli("advance", pl / "chain.yaml", "doc-1")
    with open(pl / "chain.yaml", "a", encoding="utf-8") as fh:
        fh.write("# edited\n")
    assert cli("status", "doc-1").stdout.splitlines()[0].endswith("(older pipeline version)")
    assert json.loads(cli("status", "doc-1", "--json").stdout)["outdated"] is True


def test_user_text_that_looks_like_markup_is_shown_as_is(cli: Cli, pl: Path) -> None:
    """Names, `--by` and data are user text: `[/]` must print, not crash rich's markup."""
    (pl / "markup.py").write_text(
        "from treadle_cli.model import StageOutcome, SubTask\n\n"
        "def check(item, ctx):\n"
        "    if ctx.subtask is None:\n"
        "        return StageOutcome.fan_out([SubTask('a[/]'), SubTask('[red]b')])\n"
        "    return StageOutcome.needs_review('ok [/]?', {'x': '[/]'})\n",
        encoding="utf-8",
    )
    (pl / "markup.yaml").write_text(
        "pipeline: markup\nstages:\n  check: {uses: markup:check}\n", encoding="utf-8"
    )
    r = cli("advance", pl / "markup.yaml", "m 1")
    # The hints can be pasted into a shell: ids and targets are quoted.
    assert "treadle approve 'm 1' 'check/a[/]'" in r.stderr
    assert "treadle approve 'm 1' 'check/[red]b'" in r.stderr
    cli("approve", "m 1", "check/a[/]", "--by", "eve[/]", "--comment", "[bold]ok")
    cli("status", "--all", env=TERMINAL)
    for args in (["reviews"], ["history", "m 1"], ["status", "m 1"]):
        r = cli(*args, env=TERMINAL)
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout)
        assert "[red]b" in plain, args
    history = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", cli("history", "m 1", env=TERMINAL).stdout)
    assert "eve[/]" in history and "✔ approved" in history and "[bold]ok" in history
    tree = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", cli("status", "m 1", env=TERMINAL).stdout)
    assert "a[/]" in tree


def test_piped_status_never_imports_rich(tmp_path):
    """Plain output stays light: rich is for terminals only."""
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from treadle_cli.cli import app\n"
        f"CliRunner().invoke(app, ['--db', {str(tmp_path / 'x.db')!r}, 'status', '--all'])\n"
        "print('rich' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
