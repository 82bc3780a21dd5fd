"""Reliability tests: real ``treadle`` processes against a real SQLite file, and the kill
and concurrency tests (and the bad-input cases about treadle rather than a file) also
against a real PostgreSQL server.

Plain ``pytest`` runs every test here at CI size (a few minutes in all). ``make stress``
sets ``TREADLE_STRESS=1`` and selects ``-m stress``: the same tests at their long sizes.
Each test reports its figures (kills survived, processes, cases tried...); they are
printed at the end of the run and, when ``TREADLE_RELIABILITY_REPORT`` names a file,
written there as JSON for docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rel_support import HERE, STRESS, World, base_env

FIGURES = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stress: reliability test with a long form; TREADLE_STRESS=1 (make stress) selects "
        "the long sizes",
    )
    config.stash[FIGURES] = {}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, {})
    if not figures:
        return
    terminalreporter.section("reliability figures" + (" (stress)" if STRESS else " (CI size)"))
    for name, values in figures.items():
        terminalreporter.write_line(f"{name}:")
        for key, value in values.items():
            terminalreporter.write_line(f"    {key}: {value}")
    if target := os.environ.get("TREADLE_RELIABILITY_REPORT"):
        Path(target).write_text(json.dumps({"stress": STRESS, "tests": figures}, indent=2))


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A dict the test fills with its measured figures."""
    out: dict[str, Any] = {}
    request.config.stash[FIGURES][request.node.name] = out  # name includes parameters
    return out


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """A folder with the stage module, on a SQLite file (the default) or, parametrized
    ``postgres`` (rel_support.BACKENDS), on a fresh PostgreSQL database of its own."""
    shutil.copy(HERE / "relstages.py", tmp_path / "relstages.py")
    db, ledger = tmp_path / "treadle.db", tmp_path / "ledger.txt"
    backend = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    yield World(tmp_path, db, ledger, base_env(url or db, ledger), url=url)
