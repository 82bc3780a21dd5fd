"""A throwaway PostgreSQL server for tests, benchmarks and trying treadle by hand.

Standalone on purpose (stdlib, plus psycopg when installed): the test suite, the benchmarks and
a developer's shell all use it without importing treadle.

    cluster = start()                  # initdb + pg_ctl start in a fresh temp folder
    cluster.create_database("t1")
    url = cluster.url("t1")            # postgresql://treadle:treadle-pw@127.0.0.1:PORT/t1
    cluster.stop()                     # also done at exit

From a shell::

    python scripts/pgcluster.py start [DIR]   # prints the URL of a database "treadle"
    python scripts/pgcluster.py stop DIR
    python scripts/pgcluster.py bin           # the binaries folder find_pg_bin() picks

The server listens on 127.0.0.1 (a free port, password login) and on a socket inside its
folder (trusted, for the superuser); nothing outside that folder is touched. When run as root
the server runs as the ``postgres`` account, because initdb refuses to run as root.
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

USER = "treadle"
PASSWORD = "treadle-pw"
SUPERUSER = "postgres"
STATE_FILE = "pgcluster.json"
BIN_ENV = "TREADLE_PG_BIN"  # overrides the search; a folder without the binaries means "none"
_NEEDED = ("initdb", "pg_ctl", "postgres")
# A Unix socket path is limited to 107 bytes; "/.s.PGSQL.NNNNN" takes 15 of them.
_SOCKET_MAX = 107 - 15
# Where fast clusters live when there is room: on this kind of VM disk CREATE DATABASE takes
# 150-500 ms even with fsync off, on tmpfs 15-40 ms.
_RAM_DIR = Path("/dev/shm")
_RAM_DIR_MIN_FREE = 1 << 30  # Docker's default /dev/shm is 64 MB: too small, use disk there


class ClusterError(RuntimeError):
    """The server could not be set up, started or driven; the message has the log tail."""


def _has_binaries(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in _NEEDED)


def _version_key(folder: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: "15" or "9.6" sorts numerically, newest first.
    return tuple(int(p) for p in re.findall(r"\d+", folder.parent.name)) or (0,)


def find_pg_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None when PostgreSQL is missing.

    ``$TREADLE_PG_BIN`` wins when set (a folder without them gives None, to test the skip
    path); then PATH (symlinks resolved, because postgres lives next to the real pg_ctl);
    then ``/usr/lib/postgresql/*/bin``, newest version first (Debian keeps them off PATH).
    """
    override = os.environ.get(BIN_ENV)
    if override is not None:
        folder = Path(override)
        return folder if _has_binaries(folder) else None
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            folder = Path(found).resolve().parent
            if _has_binaries(folder):
                return folder
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    return next((c for c in candidates if _has_binaries(c)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_parent(fast: bool) -> str | None:
    """tmpfs for a fast cluster when it has room, else the usual temp dir ($TMPDIR wins)."""
    if fast and "TMPDIR" not in os.environ:
        try:
            if (
                os.access(_RAM_DIR, os.W_OK)
                and shutil.disk_usage(_RAM_DIR).free >= _RAM_DIR_MIN_FREE
            ):
                return str(_RAM_DIR)
        except OSError:
            pass
    return None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean_env() -> dict[str, str]:
    # The developer's PGHOST, PGDATA, PGPORT... must not redirect our commands.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class Cluster:
    """One running server in its own folder: ``data/``, ``sock/``, ``server.log``."""

    host = "127.0.0.1"
    user = USER
    password = PASSWORD

    def __init__(self, base_dir: Path, bin_dir: Path, port: int, *, fast: bool = True) -> None:
        self.base_dir = base_dir
        self.bin_dir = bin_dir
        self.port = port
        self.fast = fast
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "sock"
        self.log_file = base_dir / "server.log"
        self._admin: Any = None  # a psycopg connection, opened on first use
        self._lock = threading.Lock()
        self._drops: queue.Queue[str | None] | None = None
        self._dropper: threading.Thread | None = None
        self._stopped = False

    # -- URLs ------------------------------------------------------------------------------

    def url(self, dbname: str = USER) -> str:
        """The libpq URL of ``dbname`` for the password role ``treadle`` over TCP."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}"
        )

    def admin_url(self, dbname: str = "postgres") -> str:
        """The superuser's URL over the cluster's socket (trusted, no password)."""
        return (
            f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}"
            f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}"
        )

    # -- life cycle ------------------------------------------------------------------------

    def _run(self, *args: str | os.PathLike[str], timeout: float = 120) -> str:
        """Run a server binary, as ``postgres`` when we are root; its output on failure."""
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        try:
            done = subprocess.run(
                cmd,
                cwd=self.base_dir,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"{Path(cmd[0]).name} failed: {exc}") from exc
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def _initdb(self) -> None:
        self._run(
            self.bin_dir / "initdb",
            "-D",
            self.data_dir,
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            # A throwaway cluster need not survive a power cut between initdb and use.
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": _quote_literal(str(self.socket_dir)),
            "max_connections": "200",
            "password_encryption": "'scram-sha-256'",
            # %e: the SQLSTATE of each logged error. libpq hands clients no SQLSTATE for a
            # failed login (psycopg's .sqlstate is None), so the log is where tests see 28P01.
            "log_line_prefix": "'%m [%p] %e %q%u@%d '",
        }
        if self.fast:
            # Tests only: losing the data on a crash is fine, waiting for the disk is not.
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
            # Checkpoint sooner than the 1 GB default, so WAL stays small on tmpfs.
            settings["max_wal_size"] = "'256MB'"
        conf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\n# pgcluster.py (later lines win)\n" + conf)
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )

    def _pg_ctl_start(self) -> None:
        try:
            self._run(
                self.bin_dir / "pg_ctl",
                "-D",
                self.data_dir,
                "-l",
                self.log_file,
                "-w",
                "-t",
                "60",
                "start",
            )
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n--- server log ---\n{_tail(self.log_file)}") from None

    def _set_port(self, port: int) -> None:
        self.port = port
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write(f"port = {port}\n")

    def _start(self) -> None:
        self._initdb()
        # The free port may be taken between probing and binding: try a few.
        for attempt in range(3):
            try:
                self._pg_ctl_start()
                break
            except ClusterError as exc:
                if attempt == 2 or "already in use" not in str(exc):
                    raise
                self._set_port(_free_port())
        self.sql(
            f"CREATE ROLE {_quote_ident(USER)} LOGIN CREATEDB PASSWORD {_quote_literal(PASSWORD)}"
        )
        self._write_state()

    def _write_state(self) -> None:
        state = {"bin_dir": str(self.bin_dir), "port": self.port, "fast": self.fast}
        (self.base_dir / STATE_FILE).write_text(json.dumps(state) + "\n")

    @classmethod
    def attach(cls, base_dir: Path) -> Cluster:
        """The cluster that ``start`` left running in ``base_dir`` (for ``stop DIR``)."""
        try:
            state = json.loads((base_dir / STATE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(f"{base_dir} is not a pgcluster folder: {exc}") from None
        return cls(base_dir, Path(state["bin_dir"]), int(state["port"]), fast=state["fast"])

    def stop(self) -> None:
        """Stop the server (no checkpoint: the data goes anyway) and remove its folder."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self._dropper is not None and self._drops is not None:
            # Pending drops are moot: the whole folder goes.
            while not self._drops.empty():
                self._drops.get_nowait()
            self._drops.put(None)
            self._dropper.join(timeout=5)
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                pass
            self._admin = None
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self._run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "immediate", "stop")
            except ClusterError:
                self._kill_postmaster()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        # pg_ctl failed (binaries gone, account gone...): don't leave a server behind.
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)

    def detach(self) -> None:
        """Leave the server running when this process exits (the CLI's ``start``)."""
        atexit.unregister(self.stop)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- SQL as the superuser ----------------------------------------------------------------

    def sql(self, statement: str, dbname: str = "postgres") -> None:
        """Run one statement as the superuser (autocommit, so CREATE DATABASE works)."""
        try:
            import psycopg
        except ImportError:
            self._psql(statement, dbname)
            return
        if dbname != "postgres":
            with psycopg.connect(self.admin_url(dbname), autocommit=True) as conn:
                conn.execute(statement)
            return
        with self._lock:
            # One kept connection: per-test CREATE/DROP DATABASE then cost no connection setup.
            if self._admin is None or self._admin.closed:
                self._admin = psycopg.connect(self.admin_url(), autocommit=True)
            self._admin.execute(statement)

    def _psql(self, statement: str, dbname: str) -> None:
        cmd = [str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        cmd += ["-d", self.admin_url(dbname), "-c", statement]
        done = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise ClusterError(f"psql: {done.stderr.strip()}")

    def create_database(self, name: str) -> str:
        """Create an empty database owned by ``treadle``; returns its URL."""
        # template0 so nothing leaks in from template1. FILE_COPY (fast clusters only): the
        # default WAL_LOG writes the 7 MB template into the WAL, measured ~30% slower per
        # database on tmpfs and growing the WAL; FILE_COPY's two checkpoints cost ~1 ms each
        # with fsync off.
        strategy = " STRATEGY FILE_COPY" if self._file_copy_ok() else ""
        self.sql(
            f"CREATE DATABASE {_quote_ident(name)} TEMPLATE template0 "
            f"OWNER {_quote_ident(USER)}{strategy}"
        )
        return self.url(name)

    def _file_copy_ok(self) -> bool:
        # STRATEGY exists from PostgreSQL 15 on; its checkpoints are only cheap without fsync.
        try:
            major = int((self.data_dir / "PG_VERSION").read_text().split(".")[0])
        except (OSError, ValueError):
            return False
        return self.fast and major >= 15

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still on it."""
        self.sql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def drop_database_later(self, name: str) -> None:
        """Drop a database in a background thread (for test teardown).

        DROP DATABASE waits in 100 ms steps for the backends of just-closed connections to
        exit, which would double the cost of every test; nobody needs to wait for it.
        """
        try:
            import psycopg
        except ImportError:
            self.drop_database(name)
            return
        with self._lock:
            if self._dropper is None:
                self._drops = queue.Queue()
                conn = psycopg.connect(self.admin_url(), autocommit=True)
                self._dropper = threading.Thread(
                    target=self._drop_loop,
                    args=(conn, self._drops),
                    name="pgcluster-drop",
                    daemon=True,
                )
                self._dropper.start()
        assert self._drops is not None
        self._drops.put(name)

    def _drop_loop(self, conn: Any, drops: queue.Queue[str | None]) -> None:
        try:
            while (name := drops.get()) is not None:
                try:
                    conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
                except Exception as exc:
                    # A leftover database costs disk space, not correctness: say so, go on.
                    print(f"pgcluster: could not drop {name}: {exc}", file=sys.stderr)
                    if conn.closed:
                        return
        finally:
            conn.close()


def start(
    base_dir: Path | None = None, *, fast: bool = True, bin_dir: Path | None = None
) -> Cluster:
    """initdb and start a server in ``base_dir`` (new or empty; default: a fresh temp folder).

    ``fast`` turns durability off (tests); benchmarks pass ``fast=False``. The server is
    stopped and its folder removed by ``Cluster.stop()`` or, failing that, at exit.
    """
    bin_dir = bin_dir or find_pg_bin()
    if bin_dir is None:
        raise ClusterError("PostgreSQL binaries not found (apt-get install postgresql)")
    if base_dir is None:
        base_dir = Path(tempfile.mkdtemp(prefix="treadle-pg-", dir=_default_parent(fast)))
    else:
        base_dir = base_dir.resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
        if any(base_dir.iterdir()):
            raise ClusterError(f"{base_dir} is not empty")
    cluster = Cluster(base_dir, bin_dir, _free_port(), fast=fast)
    if len(str(cluster.socket_dir)) > _SOCKET_MAX:
        shutil.rmtree(base_dir, ignore_errors=True)
        raise ClusterError(f"{base_dir} is too long a path for a Unix socket; use a shorter one")
    atexit.register(cluster.stop)
    try:
        cluster.socket_dir.mkdir()
        if os.geteuid() == 0:
            _give_to_postgres(base_dir)
        cluster._start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _give_to_postgres(base_dir: Path) -> None:
    try:
        account = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ClusterError(
            f"running as root, but there is no {SUPERUSER!r} account to run the server as"
        ) from None
    groups = set(os.getgrouplist(SUPERUSER, account.pw_gid))
    for parent in base_dir.parents:
        # Fail with a reason rather than initdb's "permission denied" (e.g. DIR under /root).
        st = parent.stat()
        if not (
            st.st_mode & 0o001
            or (st.st_gid in groups and st.st_mode & 0o010)
            or (st.st_uid == account.pw_uid and st.st_mode & 0o100)
        ):
            raise ClusterError(
                f"the {SUPERUSER!r} account cannot reach {base_dir}: {parent} is closed to it "
                f"(mode {st.st_mode & 0o777:o}); use a folder under /tmp"
            )
    for path in (base_dir, base_dir / "sock"):
        os.chown(path, account.pw_uid, account.pw_gid)


def main(argv: list[str]) -> int:
    usage = "usage: pgcluster.py start [DIR] | stop DIR | bin"
    if argv[:1] == ["bin"] and len(argv) == 1:
        found = find_pg_bin()
        if found is None:
            print("PostgreSQL binaries not found", file=sys.stderr)
            return 1
        print(found)
        return 0
    if argv[:1] == ["start"] and len(argv) <= 2:
        try:
            cluster = start(Path(argv[1]) if len(argv) == 2 else None)
            cluster.create_database(USER)
        except ClusterError as exc:
            print(f"pgcluster: {exc}", file=sys.stderr)
            return 1
        cluster.detach()
        # The URL alone on stdout, so `export TREADLE_DB=$(... start)` works.
        print(cluster.url(USER))
        print(f"stop it with: python {sys.argv[0]} stop {cluster.base_dir}", file=sys.stderr)
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        try:
            Cluster.attach(Path(argv[1]).resolve()).stop()
        except ClusterError as exc:
            print(f"pgcluster: {exc}", file=sys.stderr)
            return 1
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
