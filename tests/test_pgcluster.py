"""The throwaway PostgreSQL server of ``tests/conftest.py`` (``scripts/pgcluster.py``) works."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pgcluster
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pgcluster.py"


def test_pg_url_is_a_fresh_writable_database(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        user, tables = conn.execute(
            "SELECT current_user, (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
        ).fetchone()
        assert (user, tables) == ("treadle", 0)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO t VALUES (1, 'x')")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT note FROM t").fetchall() == [("x",)]


def test_wrong_password_is_refused(pg_cluster: pgcluster.Cluster, pg_url: str) -> None:
    params = conninfo_to_dict(pg_url)
    assert params["host"] == "127.0.0.1"
    params["password"] = "not-the-password"
    log_start = pg_cluster.log_file.stat().st_size
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(**params)
    # libpq gives the client no SQLSTATE for a failed login (caught.value.sqlstate is None);
    # what it has is the message and that a password was sent.
    assert "password authentication failed" in str(caught.value)
    assert caught.value.pgconn is not None and caught.value.pgconn.used_password
    # The server logs before it answers, with the SQLSTATE (%e in log_line_prefix).
    with pg_cluster.log_file.open("rb") as log:
        log.seek(log_start)
        lines = log.read().decode(errors="replace").splitlines()
    assert any(
        " 28P01 " in line and 'password authentication failed for user "treadle"' in line
        for line in lines
    ), lines


@pytest.fixture
def second_pg_url(pg_url: str, pg_cluster: pgcluster.Cluster) -> Iterator[str]:
    """Another database in the same test, the way pg_url makes one."""
    name = ("second_" + conninfo_to_dict(pg_url)["dbname"])[:63]
    yield pg_cluster.create_database(name)
    pg_cluster.drop_database_later(name)


def test_two_pg_urls_are_different_databases(pg_url: str, second_pg_url: str) -> None:
    assert pg_url != second_pg_url
    with psycopg.connect(pg_url) as a, psycopg.connect(second_pg_url) as b:
        a.execute("CREATE TABLE only_in_a (x int)")
        a.commit()
        assert a.execute("SELECT current_database()").fetchone() != (
            b.execute("SELECT current_database()").fetchone()
        )
        assert b.execute("SELECT to_regclass('only_in_a')").fetchone() == (None,)


@pytest.mark.pg
def test_server_is_private_and_fast(pg_cluster: pgcluster.Cluster) -> None:
    with psycopg.connect(pg_cluster.admin_url()) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('listen_addresses', "
            "'unix_socket_directories', 'fsync', 'max_connections', 'port')"
        ).fetchall()
        (is_super,) = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert is_super
    assert dict(rows) == {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(pg_cluster.socket_dir),
        "fsync": "off",
        "max_connections": "200",
        "port": str(pg_cluster.port),
    }
    assert pg_cluster.socket_dir.is_relative_to(pg_cluster.base_dir)


@pytest.mark.pg
def test_startup_failure_names_the_log(
    pg_cluster: pgcluster.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every port offered is the running server's: the new one cannot bind, even on retry.
    monkeypatch.setattr(pgcluster, "_free_port", lambda: pg_cluster.port)
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(mkdtemp(**kw)) or made[-1])
    with pytest.raises(pgcluster.ClusterError) as caught:
        pgcluster.start()
    message = str(caught.value)
    assert "--- server log ---" in message
    assert "Address already in use" in message
    assert len(made) == 1 and not Path(made[0]).exists()  # cleaned up after the failure


@pytest.mark.pg
def test_cli_start_prints_a_working_url_and_stop_removes_it() -> None:
    done = subprocess.run(
        [sys.executable, SCRIPT, "start"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    folder = Path(done.stderr.split()[-1])
    try:
        assert url.startswith("postgresql://treadle:treadle-pw@127.0.0.1:")
        assert url.endswith("/treadle")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("treadle",)
    finally:
        stopped = subprocess.run(
            [sys.executable, SCRIPT, "stop", folder], capture_output=True, text=True, timeout=60
        )
    assert stopped.returncode == 0, stopped.stderr
    assert not folder.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def _child_pytest(**env: str) -> subprocess.CompletedProcess[str]:
    """One pg_url test of this file in a child pytest, under the given environment."""
    child_env = {k: v for k, v in os.environ.items() if k not in ("CI", "TREADLE_REQUIRE_PG")}
    child_env.update(env)
    test = f"{Path(__file__).relative_to(ROOT)}::test_wrong_password_is_refused"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", test],
        env=child_env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_missing_postgres_is_a_skip() -> None:
    done = _child_pytest(TREADLE_PG_BIN="/nonexistent")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "PostgreSQL not installed (apt-get install postgresql)" in done.stdout


@pytest.mark.parametrize("env", [{"CI": "true"}, {"TREADLE_REQUIRE_PG": "1"}])
def test_missing_postgres_fails_where_required(env: dict[str, str]) -> None:
    done = _child_pytest(TREADLE_PG_BIN="/nonexistent", **env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout
    assert "PostgreSQL not installed" in done.stdout
    assert "required here" in done.stdout
