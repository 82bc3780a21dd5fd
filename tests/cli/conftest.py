"""Fixtures for the CLI tests: a private copy of the fixture pipelines, a database, and an
in-process runner (helpers live in ``clihelpers.py``).

Every test that uses ``db`` (or ``cli``) runs twice, once per backend: ``[sqlite]`` on a real
SQLite file on tmp_path, ``[postgres]`` on a fresh database of the throwaway PostgreSQL server
(``pg_url``; marked ``pg``, so skipped without PostgreSQL unless CI requires it). Two markers
keep a test to one run, on SQLite:

- ``sqlite_only``: the test is about the SQLite file itself (created or not, its bytes, WAL,
  PRAGMAs, foreign files); its PostgreSQL counterpart, if any, is in test_cli_postgres.py.
- ``no_db``: the command never opens the database (help, version, validate, graph), so the
  backend cannot matter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clihelpers import ENV_NOISE, FIXTURES, Cli
from typer.testing import CliRunner

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", marks=pytest.mark.pg)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "demo: runs scripts/demo.sh end to end (part of `make test`, never skipped)"
    )
    config.addinivalue_line(
        "markers", "sqlite_only: about the SQLite file itself; the db fixture is not run on both"
    )
    config.addinivalue_line(
        "markers", "no_db: never opens the database; the db fixture is not run on both"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses the database on both backends (see the module docstring)."""
    if "backend" not in metafunc.fixturenames:
        return
    if any(metafunc.definition.get_closest_marker(m) for m in ("sqlite_only", "no_db")):
        return
    metafunc.parametrize("backend", BACKENDS, indirect=True)


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
def backend(request: pytest.FixtureRequest) -> str:
    """Which store ``db`` is: "sqlite" or "postgres" (pytest_generate_tests parametrizes it;
    a test it leaves alone gets "sqlite")."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def db(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """The database --db names: a SQLite file's path (not created yet), or the URL of an
    empty PostgreSQL database (no schema ``treadle`` yet)."""
    if backend == "postgres":
        return request.getfixturevalue("pg_url")
    return tmp_path / "treadle.db"


@pytest.fixture
def cli(db: Path | str) -> Cli:
    return Cli(db, CliRunner())
