"""The public surface: exported names, layering, and the README's library example."""

import re
import subprocess
import sys
from pathlib import Path

import treadle_cli

ROOT = Path(__file__).resolve().parents[1]

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


def test_library_never_imports_typer_or_rich():
    mods = _modules_after(
        "import treadle_cli\nfrom treadle_cli import Workflow, SqliteStateStore, MemoryStateStore\n"
        "import treadle_cli.engine, treadle_cli.workflow, treadle_cli.status, treadle_cli.decisions"
    )
    assert "typer" not in mods and "rich" not in mods


def test_stores_do_not_import_the_engine():
    mods = _modules_after("import treadle_cli.store.sqlite, treadle_cli.store.memory")
    assert "treadle_cli.engine" not in mods and "treadle_cli.workflow" not in mods


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
