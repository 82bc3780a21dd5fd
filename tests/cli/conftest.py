"""Fixtures for the CLI tests: a private copy of the fixture pipelines, a real SQLite file on
tmp_path, and an in-process runner (helpers live in ``clihelpers.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clihelpers import ENV_NOISE, FIXTURES, Cli
from typer.testing import CliRunner


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "demo: runs scripts/demo.sh end to end (part of `make test`, never skipped)"
    )


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No colour, database or user setting of the developer's shell leaks into a test."""
    for name in ENV_NOISE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "tester")


@pytest.fixture
def pl(tmp_path: Path) -> Path:
    """A private copy of the fixture pipelines: YAML files next to ``clistages.py``."""
    dest = tmp_path / "pipelines"
    shutil.copytree(FIXTURES, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "treadle.db"


@pytest.fixture
def cli(db: Path) -> Cli:
    return Cli(db, CliRunner())
