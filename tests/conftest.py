"""Suite-wide fixtures: a real, throwaway PostgreSQL server (``scripts/pgcluster.py``).

``pg_url`` gives a test a fresh empty database on it (``postgresql://treadle:treadle-pw@...``);
``pg_cluster`` is the server itself, started once per run and only when a test asks for it.
Without PostgreSQL these tests are skipped, unless ``CI=true`` or ``TREADLE_REQUIRE_PG=1``
makes that a failure. ``TREADLE_PG_BIN`` names the binaries folder (a wrong one: "missing").
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_pgcluster():
    # scripts/ is no package and must not go on sys.path; register it so tests can
    # `import pgcluster` too.
    if "pgcluster" in sys.modules:
        return sys.modules["pgcluster"]
    spec = importlib.util.spec_from_file_location("pgcluster", ROOT / "scripts" / "pgcluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pgcluster"] = module
    spec.loader.exec_module(module)
    return module


pgcluster = _load_pgcluster()
_db_numbers = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pg: needs the throwaway PostgreSQL server (the pg_url / pg_cluster fixtures); "
        "skipped without PostgreSQL unless CI=true or TREADLE_REQUIRE_PG=1",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Using the fixture is enough to be a `pg` test, so `-m "not pg"` deselects them all.
    for item in items:
        if "pg_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pg)


def pg_required() -> bool:
    """True when a missing or broken PostgreSQL must fail the run instead of skipping."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("TREADLE_REQUIRE_PG") == "1"


def _unavailable(reason: str) -> None:
    if pg_required():
        pytest.fail(f"{reason} -- required here (CI=true or TREADLE_REQUIRE_PG=1)", pytrace=False)
    pytest.skip(f"{reason}; set TREADLE_REQUIRE_PG=1 to make this a failure")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgcluster.Cluster]:
    """One server for the whole run (pytest caches a skip or failure here just the same)."""
    bin_dir = pgcluster.find_pg_bin()
    if bin_dir is None:
        _unavailable(
            "PostgreSQL not installed (apt-get install postgresql), no initdb/pg_ctl on PATH or "
            "in /usr/lib/postgresql/*/bin"
            + (
                f" nor in TREADLE_PG_BIN={os.environ[pgcluster.BIN_ENV]}"
                if pgcluster.BIN_ENV in os.environ
                else ""
            )
        )
    try:
        cluster = pgcluster.start(bin_dir=bin_dir)
    except pgcluster.ClusterError as exc:
        _unavailable(f"PostgreSQL from {bin_dir} failed to start: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def _pg_marked(request: pytest.FixtureRequest) -> None:
    """A test marked ``pg`` without the fixtures still gets the server, or its skip."""
    if request.node.get_closest_marker("pg") is not None:
        request.getfixturevalue("pg_cluster")


@pytest.fixture
def pg_url(pg_cluster: pgcluster.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh empty database owned by ``treadle``, dropped after the test."""
    # Named after the test, so the server log points at it; the number makes it unique.
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    name = f"t{next(_db_numbers)}_{slug}"[:63]
    url = pg_cluster.create_database(name)
    yield url
    pg_cluster.drop_database_later(name)
