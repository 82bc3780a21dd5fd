"""The CLI on PostgreSQL where it differs from SQLite: servers that are down or refuse the
login, databases without (or with a foreign, or a newer) schema ``treadle``, and the README's
tour run for real with ``TREADLE_DB`` set to a URL.

Every other CLI test runs on PostgreSQL too (``[postgres]``, see conftest.py); these do not use
the ``cli`` fixture, so they run once.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from clihelpers import (
    REPO,
    Cli,
    error_line,
    lines_of,
    pg_schema_exists,
    shown,
    snapshot,
    subprocess_env,
    treadle_exe,
)
from typer.testing import CliRunner

# A password with characters that must be percent-encoded in a URL: neither the encoded nor
# the decoded form may appear anywhere.
SECRET = "Sec/ret:Pw@42"
ENCODED = quote(SECRET, safe="")


def _free_port() -> int:
    """A local port nobody listens on (bound and released: nothing takes it in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(url: str) -> Cli:
    return Cli(url, CliRunner())


def _seed(cli: Cli, pl: Path) -> None:
    """doc-1 awaiting review, b-1 failed."""
    cli("advance", pl / "chain.yaml", "doc-1")
    cli("advance", pl / "boom.yaml", "b-1", code=1)


def _commands(pl: Path) -> list[list[Any]]:
    """One of every command that opens the database."""
    return [
        ["status"],
        ["status", "--all"],
        ["status", "doc-1"],
        ["reviews"],
        ["history", "doc-1"],
        ["approve", "doc-1", "review"],
        ["reject", "doc-1", "review", "--reason", "no"],
        ["retry", "b-1", "explode"],
        ["advance", pl / "chain.yaml", "doc-2"],
        ["watch", "doc-1", "--until-settled"],
        ["watch", "--until-settled"],
    ]


# ------------------------------------------------------------ no server, no login


@pytest.fixture(
    params=[
        "server down",
        "server down, password as a parameter",
        pytest.param("wrong password", marks=pytest.mark.pg),
        pytest.param("missing database", marks=pytest.mark.pg),
    ]
)
def unreachable(request: pytest.FixtureRequest) -> tuple[str, str, str, list[str]]:
    """(URL, "host:port", database, passwords that must never show) for each way in which
    a database cannot be used at all."""
    if request.param.startswith("server down"):
        port = _free_port()
        if request.param == "server down":
            url = f"postgresql://treadle:{ENCODED}@127.0.0.1:{port}/somedb"
        else:
            url = f"postgresql://treadle@127.0.0.1:{port}/somedb?password={ENCODED}"
        return url, f"127.0.0.1:{port}", "somedb", [SECRET, ENCODED]
    cluster = request.getfixturevalue("pg_cluster")
    where = f"{cluster.host}:{cluster.port}"
    if request.param == "wrong password":
        url = request.getfixturevalue("pg_url")
        dbname = url.rsplit("/", 1)[1]
        url = url.replace(f":{cluster.password}@", f":{ENCODED}@")
        assert ENCODED in url
        return url, where, dbname, [SECRET, ENCODED, cluster.password]
    return cluster.url("no_such_database"), where, "no_such_database", [cluster.password]


@pytest.mark.parametrize("mode", ["plain", "json", "debug"])
def test_a_database_out_of_reach_is_exit_4_naming_host_and_database_never_the_password(
    unreachable: tuple[str, str, str, list[str]], mode: str, pl: Path
) -> None:
    url, where, dbname, secrets = unreachable
    cli = _cli(url)
    for args in _commands(pl):
        argv = [*args, "--json"] if mode == "json" else args
        if mode == "debug":
            argv = ["--debug", *argv]
        r = cli(*argv, code=4)
        for secret in secrets:
            assert secret not in r.stdout + r.stderr, (args, r.stderr)
        if mode == "plain":
            line = error_line(r, 4)
        elif mode == "json":
            assert r.stdout == ""
            [raw] = r.stderr.splitlines()
            err = json.loads(raw)
            assert err["exit_code"] == 4 and err["hint"], err
            line = err["error"]
        else:
            assert "Traceback (most recent call last)" in r.stderr
            line = r.stderr.splitlines()[-1]
            assert line.startswith("error: ")
        assert where in line and dbname in line, (args, line)


def test_commands_that_need_no_database_work_while_the_server_is_down(pl: Path) -> None:
    cli = _cli(f"postgresql://treadle:{ENCODED}@127.0.0.1:{_free_port()}/somedb")
    assert cli("validate", pl / "chain.yaml").stdout.startswith("ok: chain")
    assert cli("graph", pl / "chain.yaml").stdout
    assert cli("--version").stdout.startswith("treadle ")
    assert "Example" in cli("status", "--help").stdout


LEAKS = "libpq quotes the malformed token or the whole URI; postgres._where passes it on"
NOT_USAGE = "libpq only rejects it when connecting: exit 4 'cannot reach PostgreSQL', not 2"


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        pytest.param("postgresql://u:Secret-0@h/db?bogus=1", "Secret-0", id="unknown-parameter"),
        pytest.param(
            "postgresql://u:Sec%zzret-1@127.0.0.1/db",
            "Sec%zzret-1",
            id="bad-escape-in-password",
            marks=pytest.mark.xfail(strict=True, reason=LEAKS),
        ),
        pytest.param(
            "postgresql://u@127.0.0.1/db?password=Sec%zzret-2",
            "Sec%zzret-2",
            id="bad-escape-in-password-parameter",
            marks=pytest.mark.xfail(strict=True, reason=LEAKS),
        ),
        pytest.param(
            "postgresql://u:Sec ret-3@127.0.0.1/db",
            "Sec ret-3",
            id="space-in-password",
            marks=pytest.mark.xfail(strict=True, reason=LEAKS),
        ),
        pytest.param(
            "postgresql://u:Secret-4@[::1/db",
            "Secret-4",
            id="unclosed-ipv6-bracket",
            marks=pytest.mark.xfail(strict=True, reason=LEAKS),
        ),
        pytest.param(
            "postgresql://u:Secret-5@127.0.0.1:notaport/db",
            "Secret-5",
            id="port-not-a-number",
            marks=pytest.mark.xfail(strict=True, reason=NOT_USAGE),
        ),
        pytest.param(
            "postgresql://u:Secret-6@127.0.0.1:1/db?sslmode=nope",
            "Secret-6",
            id="unknown-sslmode",
            marks=pytest.mark.xfail(strict=True, reason=NOT_USAGE),
        ),
    ],
)
def test_a_malformed_url_is_a_usage_error_that_never_shows_the_password(
    url: str, secret: str
) -> None:
    cli = _cli(url)
    for argv in (["status"], ["status", "--json"], ["--debug", "status"]):
        r = cli(*argv, code=None)
        assert secret not in r.stdout + r.stderr, (argv, r.stderr)
        assert r.exit_code == 2, (argv, r.stderr)
    assert error_line(cli("status", code=2), 2).startswith("error: bad PostgreSQL URL ")


# ------------------------------------------------- a database without treadle's schema


@pytest.fixture
def other_apps_db(pg_url: str) -> str:
    """A database that another application uses: a table in public, no schema treadle."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.invoices (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO public.invoices VALUES (1, 9.5)")
    return pg_url


def _invoices(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, total::text FROM public.invoices").fetchall()


def test_reads_without_the_schema_see_nothing_and_create_nothing(other_apps_db: str) -> None:
    cli = _cli(other_apps_db)
    assert cli("status").stdout == ""
    assert cli("status", "--all").stdout == ""
    assert cli("reviews").stdout == ""
    assert json.loads(cli("reviews", "--json").stdout) == []
    for args in (["status", "--json"], ["status", "--all", "--json"]):
        out = json.loads(cli(*args).stdout)
        assert out["items"] == [] and out["counts"]["total"] == 0
    for args in (["status", "doc-1"], ["history", "doc-1"], ["watch", "doc-1", "--until-settled"]):
        line = error_line(cli(*args, code=2), 2)
        assert line.startswith("error: unknown item 'doc-1'"), line
        err = json.loads(cli(*args, "--json", code=2).stderr)
        assert err["type"] == "UnknownItemError", err
    assert not pg_schema_exists(other_apps_db)
    assert _invoices(other_apps_db) == [(1, "9.5")]


@pytest.mark.parametrize(
    "args",
    [
        ["approve", "doc-1", "review"],
        ["reject", "doc-1", "review", "--reason", "x"],
        ["retry", "doc-1", "review"],
        ["approve", "doc-1", "review", "--advance", "--json"],
    ],
)
def test_decisions_without_the_schema_are_exit_2_and_create_nothing(
    other_apps_db: str, args: list[str]
) -> None:
    r = _cli(other_apps_db)(*args, code=2)
    if "--json" in args:
        err = json.loads(r.stderr)
        assert err["exit_code"] == 2 and "no treadle database at " in err["error"]
    else:
        line = error_line(r, 2)
        assert line.startswith(f"error: no treadle database at {shown(other_apps_db)} — ")
    assert ":***@" in shown(other_apps_db)
    assert "treadle-pw" not in r.stdout + r.stderr
    assert not pg_schema_exists(other_apps_db)
    assert _invoices(other_apps_db) == [(1, "9.5")]


def test_the_first_write_creates_the_schema_beside_other_applications_tables(
    other_apps_db: str, pl: Path
) -> None:
    cli = _cli(other_apps_db)
    cli("advance", pl / "chain.yaml", "doc-1")
    assert pg_schema_exists(other_apps_db)
    assert _invoices(other_apps_db) == [(1, "9.5")]
    with psycopg.connect(other_apps_db) as conn:
        rows = conn.execute("SELECT id, state FROM treadle.items").fetchall()
    assert rows == [("doc-1", "awaiting_review")]


def test_the_postgres_scheme_names_the_same_database(pg_url: str, pl: Path) -> None:
    alias = "postgres://" + pg_url.split("://", 1)[1]
    _cli(alias)("advance", pl / "chain.yaml", "doc-1")
    assert json.loads(_cli(pg_url)("status", "doc-1", "--json").stdout)["state"] == (
        "awaiting_review"
    )


# ------------------------------------------------- a schema treadle cannot use


def test_a_schema_treadle_holding_other_tables_is_refused_by_every_command(
    pg_url: str, pl: Path
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA treadle")
        conn.execute("CREATE TABLE treadle.notes (id int, body text)")
        conn.execute("INSERT INTO treadle.notes VALUES (1, 'mine')")
    before = snapshot(pg_url)
    cli = _cli(pg_url)
    for args in _commands(pl):
        line = error_line(cli(*args, code=4), 4)
        assert line.startswith(f"error: {shown(pg_url)} is not a treadle database"), line
    assert snapshot(pg_url) == before


def test_a_newer_schema_is_refused_by_every_command_and_nothing_is_written(
    pg_url: str, pl: Path
) -> None:
    cli = _cli(pg_url)
    _seed(cli, pl)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE treadle.meta SET value = '99' WHERE key = 'schema_version'")
    before = snapshot(pg_url)
    for args in _commands(pl):
        for extra in ([], ["--json"]):
            r = cli(*args, *extra, code=4)
            if extra:
                line = json.loads(r.stderr)["error"]
            else:
                line = error_line(r, 4)
            assert "newer treadle (schema 99" in line, (args, line)
            assert "treadle-pw" not in r.stdout + r.stderr
    assert snapshot(pg_url) == before
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT value FROM treadle.meta WHERE key = 'schema_version'"
        ).fetchone() == ("99",)


# ------------------------------------------------------------- the same on both

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")


def _comparable(value: Any) -> Any:
    """JSON with what legitimately differs between two runs taken out: times, log ids."""
    if isinstance(value, dict):
        return {
            k: "<id>" if k == "id" and isinstance(v, int) else _comparable(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, str):
        return ISO_TIME.sub("<time>", value)
    return value


def _scenario(cli: Cli, pl: Path) -> list[Any]:
    """Every JSON document a session of commands prints, with its exit code."""
    gate = json.dumps({"gate": str(pl / "never")})
    steps: list[tuple[list[Any], int]] = [
        (["advance", pl / "chain.yaml", "doc-1", "doc-2", "doc-3", "--data", '{"t": "T"}'], 0),
        (["approve", "doc-1", "review", "--by", "alice", "--comment", "ok", "--advance"], 0),
        (["approve", "doc-1", "review", "--by", "alice"], 0),
        (["reject", "doc-2", "review", "--reason", "no", "--by", "bob"], 0),
        (["retry", "doc-2", "review", "--advance"], 0),
        (["approve", "doc-3", "review", "--output", '{"edited": [1, 2.5, null]}'], 0),
        (["advance", pl / "boom.yaml", "b-1"], 1),
        (["retry", "b-1", "explode", "--advance"], 1),
        (["advance", pl / "fanout.yaml", "f-1", "--data", gate], 1),
        (["advance", pl / "chain.yaml", "--all"], 0),
        (["watch", "--until-settled"], 1),
        (["advance", pl / "flaky.yaml", "fl-1", "--wait", "0"], 0),
        (["status", "--all"], 0),
        (["status"], 0),
        (["status", "--state", "failed", "--pipeline", "boom"], 0),
        (["status", "--all", "--limit", "2"], 0),
        (["reviews"], 0),
        (["approve", "doc-1", "parse"], 3),
        (["status", "nope"], 2),
        (["reject", "doc-2", "nostage", "--reason", "x"], 2),
        (["retry", "doc-1", "review"], 3),
    ]
    steps += [(["status", i], 0) for i in ("doc-1", "doc-2", "doc-3", "b-1", "f-1", "fl-1")]
    steps += [(["history", i], 0) for i in ("doc-1", "doc-2", "doc-3", "b-1", "fl-1")]
    printed: list[Any] = []
    for args, code in steps:
        r = cli(*args, "--json", code=code)
        # Results on stdout; errors (exit 2, 3) as one JSON object on stderr.
        docs = [json.loads(text) for text in (r.stdout, r.stderr) if text]
        printed.append((args[0], code, _comparable(docs)))
    # f-1's subtasks run two at a time: their events interleave differently on every run.
    events = json.loads(cli("history", "f-1", "--json").stdout)["events"]
    printed.append(sorted(json.dumps(e, sort_keys=True) for e in _comparable(events)))
    return printed


def test_both_backends_print_the_same_json_and_exit_codes(
    pg_url: str, tmp_path: Path, pl: Path
) -> None:
    on_sqlite = _scenario(_cli(str(tmp_path / "same.db")), pl)
    on_postgres = _scenario(_cli(pg_url), pl)
    for a, b in zip(on_sqlite, on_postgres, strict=True):
        assert a == b


# ------------------------------------------------------------- the README's tour


PIPELINE = REPO / "pipelines" / "document_review.yaml"


def test_the_readme_tour_with_treadle_db_set_to_a_url(pg_url: str, tmp_path: Path) -> None:
    """README "A five-minute tour", command by command, as separate processes of the
    installed entry point, with ``TREADLE_DB=postgresql://...`` and no --db."""
    out_dir = tmp_path / "out"
    env = subprocess_env(TREADLE_DB=pg_url, USER="tour-user")

    def treadle(*args: object, code: int = 0) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [str(treadle_exe()), *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert r.returncode == code, (args, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "treadle-pw" not in r.stdout + r.stderr
        return r

    def as_json(*args: object, code: int = 0) -> Any:
        return json.loads(treadle(*args, "--json", code=code).stdout)

    def data(doc: str, **extra: Any) -> dict[str, Any]:
        return {"path": f"docs/{doc}.md", "out": str(out_dir), **extra}

    assert treadle("validate", PIPELINE).stdout.startswith("ok: document-review")
    assert "review <- enrich" in treadle("graph", PIPELINE).stdout

    # Register an item and run every stage that is ready; then many at once.
    r = treadle("advance", PIPELINE, "doc-1", "--data", json.dumps(data("onboarding")))
    assert "doc-1 review awaiting_review" in r.stdout
    assert "treadle approve doc-1 review" in r.stderr
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"id": "doc-2", "data": data("incident-report")})
        + "\n"
        + json.dumps({"id": "doc-3", "data": data("release-notes", flaky=True)})
        + "\n",
        encoding="utf-8",
    )
    out = as_json("advance", PIPELINE, "--items", items, "--jobs", "2")
    assert out["summary"] == {"awaiting_review": 2}
    assert [i["id"] for i in out["items"]] == ["doc-2", "doc-3"]

    table = as_json("status", "--all")
    # Oldest first; --jobs 2 registers doc-2 and doc-3 in either order.
    assert sorted((i["id"], i["state"], i["waiting_on"]) for i in table["items"]) == [
        (f"doc-{n}", "awaiting_review", "review: review") for n in (1, 2, 3)
    ]
    assert table["items"][0]["id"] == "doc-1"
    assert table["counts"]["total"] == 3
    assert table["counts"]["stages"]["review"] == {"awaiting_review": 3}
    plain = lines_of(treadle("status", "--all").stdout)
    assert [line.split()[0] for line in plain if not line.startswith("count ")] == [
        i["id"] for i in table["items"]
    ]
    assert "count review awaiting_review 3" in plain
    doc3 = as_json("status", "doc-3")
    assert [s["name"] for s in doc3["stages"]] == ["parse", "enrich", "review", "publish"]
    enrich = doc3["stages"][1]
    links = next(s for s in enrich["subtasks"] if s["name"] == "links")
    assert (enrich["status"], links["status"], links["attempts"]) == ("completed", "completed", 2)
    assert doc3["stages"][2]["review"]["prompt"].startswith("Publish doc-3")

    inbox = as_json("reviews")
    assert sorted(row["item"] for row in inbox) == ["doc-1", "doc-2", "doc-3"]
    assert {row["stage"] for row in inbox} == {"review"}
    assert "Publish doc-1" in treadle("reviews").stdout

    # Decide and continue; reject; retry sees the rejection.
    out = as_json("approve", "doc-1", "review", "--comment", "reads well", "--advance")
    assert (out["decision"], out["by"], out["status"]["state"]) == (
        "approved",
        "tour-user",
        "completed",
    )
    assert (out_dir / "doc-1.html").is_file() and (out_dir / "doc-1.json").is_file()
    out = as_json("reject", "doc-2", "review", "--reason", "title is wrong")
    assert (out["decision"], out["changed"]) == ("rejected", True)
    assert as_json("status", "doc-2")["state"] == "rejected"
    out = as_json("retry", "doc-2", "review", "--advance")
    assert out["reset"] is True and out["status"]["state"] == "awaiting_review"
    review = as_json("status", "doc-2")["stages"][2]["review"]
    assert review["prompt"].startswith("Previously rejected by tour-user: title is wrong.")

    history = as_json("history", "doc-1")
    kinds = [e["kind"] for e in history["events"]]
    assert kinds[0] == "item_registered" and kinds[-1] == "item_completed"
    assert "review_approved" in kinds and "fan_out" in kinds
    ids = [e["id"] for e in history["events"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    [decision] = history["decisions"]
    assert (decision["decision"], decision["by"], decision["comment"]) == (
        "approved",
        "tour-user",
        "reads well",
    )
    assert "review approved by=tour-user" in treadle("history", "doc-1").stdout
    rejected = as_json("history", "doc-2")["decisions"]
    assert [(d["decision"], d["reason"]) for d in rejected] == [("rejected", "title is wrong")]

    # `treadle watch doc-1 --until-settled && echo published`; everything: reviews wait.
    treadle("watch", "doc-1", "--until-settled")
    treadle("watch", "--until-settled", code=5)

    # `treadle watch --all` while another process approves doc-3; Ctrl-C ends it with 0.
    watcher = subprocess.Popen(
        [str(treadle_exe()), "watch", "--all", "--json", "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        # A runner started in the background ignores SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[dict[str, Any]] = []

    def wait_for(done: Any, nudge: Any = None) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, f"watch saw only {seen}"
            if nudge is not None:
                nudge()
            try:
                while (line := lines.get(timeout=0.5)) is not None:
                    seen.append(json.loads(line))
            except queue.Empty:
                continue
            raise AssertionError(f"watch ended early, after {seen}")

    def bounce_doc_2() -> None:
        # Events that leave doc-2 where it was: awaiting review.
        treadle("reject", "doc-2", "review", "--reason", "again")
        treadle("retry", "doc-2", "review", "--advance")

    try:
        # It follows from the end of the log once it is ready; only what is written after
        # that reaches it, so write until it has shown something.
        wait_for(lambda: seen, nudge=bounce_doc_2)
        treadle("approve", "doc-3", "review", "--advance")
        wait_for(lambda: any(e["kind"] == "item_completed" and e["item"] == "doc-3" for e in seen))
    finally:
        if watcher.poll() is None:
            watcher.send_signal(signal.SIGINT)
        code = watcher.wait(timeout=30)
    assert watcher.stderr is not None
    assert code == 0, watcher.stderr.read()
    assert all({"id", "ts", "kind", "item", "stage", "subtask", "data"} <= set(e) for e in seen)

    final = {i["id"]: i["state"] for i in as_json("status", "--all")["items"]}
    assert final["doc-1"] == final["doc-3"] == "completed"
    assert final["doc-2"] == "awaiting_review"
    # It all lives on the server: no SQLite file appeared where a default would go.
    assert not (tmp_path / "treadle.db").exists()
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT id, state FROM treadle.items ORDER BY id").fetchall()
    assert dict(stored) == final
