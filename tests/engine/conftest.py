"""Fixtures for the engine tests: a fake clock and every store (SQLite on tmp_path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from treadle_cli import MemoryStateStore, SqliteStateStore, StateStore

from .support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    store = SqliteStateStore.open(tmp_path / "treadle.db")
    yield store
    store.close()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """Each test using it runs against the memory store and a real SQLite file."""
    if request.param == "memory":
        yield MemoryStateStore()
        return
    s = SqliteStateStore.open(tmp_path / "treadle.db")
    yield s
    s.close()
