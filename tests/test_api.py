"""The public surface: exported names, layering, and the README's library example."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import treadle_cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "treadle_cli"
CLI = PACKAGE / "cli"

EXPECTED = {
    "ConflictError",
    "CycleError",
    "DatabaseLockedError",
    "DecisionKind",
    "Event",
    "EventKind",
    "IncompatibleDatabaseError",
    "Item",
    "ItemState",
    "MemoryStateStore",
    "Pipeline",
    "PipelineError",
    "PipelineStatus",
    "RetryPolicy",
    "ReviewData",
    "SqliteStateStore",
    "Stage",
    "StageContext",
    "StageImportError",
    "StageOutcome",
    "StageSpec",
    "StageStatus",
    "StageView",
    "StateStore",
    "StoreError",
    "SubTask",
    "Subscription",
    "SubtaskStatus",
    "TreadleError",
    "UnknownItemError",
    "UnknownStageError",
    "UsageError",
    "WorkItem",
    "Workflow",
    "WorkflowBuilder",
    "__version__",
}


def test_public_api_is_exactly_the_documented_list():
    assert set(treadle_cli.__all__) == EXPECTED
    for name in treadle_cli.__all__:
        assert getattr(treadle_cli, name) is not None


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too), as absolute names;
    ``from m import n`` counts as importing both ``m`` and ``m.n``."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


CLI_FILES = sorted(CLI.rglob("*.py"))
#: The library: everything but the CLI package and ``python -m treadle_cli``, which runs it.
LIBRARY_FILES = sorted(
    p for p in PACKAGE.rglob("*.py") if CLI not in p.parents and p.name != "__main__.py"
)


def test_library_never_imports_typer_or_rich():
    mods = _modules_after(
        "import treadle_cli\nfrom treadle_cli import Workflow, SqliteStateStore, MemoryStateStore\n"
        "import treadle_cli.engine, treadle_cli.workflow, treadle_cli.status, treadle_cli.decisions"
    )
    assert "typer" not in mods and "rich" not in mods
    assert not any(m.startswith("treadle_cli.cli") for m in mods)


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: _module_name(p))
def test_no_library_module_imports_the_cli_typer_or_rich(path: Path) -> None:
    """Static, so an import inside a function that no test reaches is caught too."""
    imported = _imports(path)
    assert not _top(imported) & {"typer", "rich", "click"}
    assert not any(m == "treadle_cli.cli" or m.startswith("treadle_cli.cli.") for m in imported)


#: What a light command must not load: the DAG and YAML libraries, the PostgreSQL driver,
#: rich (piped output), and the parts of the library that run stages.
HEAVY = ("networkx", "yaml", "rich", "psycopg", "treadle_cli.engine", "treadle_cli.pipeline")


@pytest.mark.parametrize(
    "module",
    [
        "treadle_cli.cli",
        "treadle_cli.cli.app",
        "treadle_cli.cli.output",
        "treadle_cli.cli.render",
        "treadle_cli.cli.commands.decide",
        "treadle_cli.cli.commands.read",
    ],
)
def test_importing_the_cli_loads_nothing_heavy(module: str) -> None:
    mods = _modules_after(f"import {module}")
    assert not [m for m in HEAVY if m in mods]
    assert "treadle_cli.workflow" not in mods and "treadle_cli.store.postgres" not in mods


def test_light_commands_load_nothing_heavy(tmp_path: Path) -> None:
    """`treadle approve`, `reject`, `retry` and `status ITEM`, piped, on a SQLite file."""
    db = tmp_path / "t.db"
    code = f"""
from treadle_cli import StageOutcome, Workflow
from treadle_cli.store import open_store
def gate(item, ctx):
    return StageOutcome.needs_review("ok?")
def boom(item, ctx):
    raise RuntimeError("no")
store = open_store({str(db)!r})
Workflow.builder("p").stage("review", gate).build().advance("a", store)
Workflow.builder("p").stage("review", gate).build().advance("b", store)
Workflow.builder("q").stage("work", boom).build().advance("c", store, wait=0)
store.close()
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    runs = [
        ["approve", "a", "review", "--by", "x"],
        ["reject", "b", "review", "--reason", "no"],
        ["retry", "c", "work"],
        ["status", "a"],
        ["status", "a", "--json"],
    ]
    for argv in runs:
        mods = _modules_after(
            "from typer.testing import CliRunner\nfrom treadle_cli.cli import app\n"
            f"r = CliRunner().invoke(app, {['--db', str(db), *argv]!r})\n"
            "assert r.exit_code == 0, (r.stdout, r.stderr)"
        )
        assert not [m for m in HEAVY if m in mods], argv
        assert "treadle_cli.workflow" not in mods, argv


BACKENDS = {"treadle_cli.store.sqlite", "treadle_cli.store.postgres", "treadle_cli.store.memory"}
BACKEND_CLASSES = {"SqliteStateStore", "PostgresStateStore", "MemoryStateStore"}


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: _module_name(p))
def test_the_cli_speaks_to_the_store_protocol_only(path: Path) -> None:
    """`open_store` picks the backend; the CLI names no backend module or class."""
    assert not _imports(path) & BACKENDS
    names = {
        n.id if isinstance(n, ast.Name) else n.attr
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(n, ast.Name | ast.Attribute)
    }
    assert not names & BACKEND_CLASSES


def _calls(path: Path) -> set[str]:
    """``f`` for ``f(...)`` and ``a.f`` for ``a.f(...)``: the calls a file makes."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                found.add(f.id)
            elif isinstance(f, ast.Attribute):
                owner = f.value.id if isinstance(f.value, ast.Name) else "?"
                found.add(f"{owner}.{f.attr}")
    return found


def test_render_never_prints() -> None:
    calls = _calls(CLI / "render.py")
    assert not {c for c in calls if c.split(".")[-1] in ("print", "echo", "write", "secho")}
    assert "sys" not in _imports(CLI / "render.py") and "typer" not in _imports(CLI / "render.py")


@pytest.mark.parametrize(
    "path",
    [p for p in CLI_FILES if p.name not in ("output.py", "render.py")],  # render quotes data
    ids=lambda p: _module_name(p),
)
def test_json_is_written_only_by_output(path: Path) -> None:
    """--json output has one home: `treadle_cli/cli/output.py`."""
    assert not {"json.dumps", "json.dump"} & _calls(path)


def test_stores_do_not_import_the_engine():
    mods = _modules_after("import treadle_cli.store.sqlite, treadle_cli.store.memory")
    assert "treadle_cli.engine" not in mods and "treadle_cli.workflow" not in mods


def test_each_cli_hint_rewrites_a_hint_the_library_gives():
    """A library hint reworded without CLI_HINTS would silently lose its CLI wording."""
    from treadle_cli.cli.app import CLI_HINTS

    source = "\n".join(p.read_text(encoding="utf-8") for p in LIBRARY_FILES)
    for _, phrase in CLI_HINTS:
        assert phrase in source, phrase


def test_library_hints_name_no_cli_flag_or_command(tmp_path: Path) -> None:
    from treadle_cli import MemoryStateStore, TreadleError
    from treadle_cli.workflow import advance_registered

    (tmp_path / "p.yaml").write_text(
        "pipeline: p\nstages:\n  gate: {uses: treadle_cli.stages:approval}\n"
    )
    store = MemoryStateStore()
    wf = treadle_cli.Workflow.from_yaml(tmp_path / "p.yaml")
    wf.advance("a", store)
    errors: list[TreadleError] = []
    try:
        wf.reject_review("a", "gate", " ", store)
    except TreadleError as exc:
        errors.append(exc)
    (tmp_path / "p.yaml").unlink()
    try:
        advance_registered("a", store)
    except TreadleError as exc:
        errors.append(exc)
    assert [type(e).__name__ for e in errors] == ["UsageError", "UsageError"]
    for exc in errors:
        assert exc.hint and "--" not in exc.hint and "treadle " not in exc.hint, exc.hint


def test_readme_library_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has a python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "awaiting_review 50%" in out.stdout
    assert "item_completed" in out.stdout
