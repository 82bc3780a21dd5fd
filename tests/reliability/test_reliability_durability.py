"""Durability: which fsync level every commit of a real `treadle` process uses.

``synchronous=NORMAL`` (the default) in WAL mode survives any process crash (the kill
test shows it); after a power loss or OS crash the last transactions may roll back.
``--durability full`` (or ``TREADLE_DURABILITY=full``, or ``durability: full`` in the
pipeline file) syncs the WAL at every commit, so what a command reported is on disk when
it exits. rel_probe.py runs the real CLI and records ``PRAGMA synchronous`` at each COMMIT.
"""

from __future__ import annotations

import json
import sys

import pytest
from rel_support import HERE, World

NORMAL, FULL = 1, 2
PIPELINE = (
    "pipeline: {name}\n{extra}stages:\n  gate: {{uses: relstages:gate}}\n"
    "  broken: {{uses: relstages:wrong_type}}\n"
)


def probe(world: World, *args: str, env: dict[str, str] | None = None) -> list[int]:
    """The synchronous level of each commit the command made."""
    out = world.root / "probe.json"
    out.unlink(missing_ok=True)
    r = world.run(
        *args,
        env={"RELIABILITY_PROBE": str(out), **(env or {})},
        cmd=[sys.executable, str(HERE / "rel_probe.py")],
    )
    assert r.returncode in (0, 1), r.stderr
    commits = json.loads(out.read_text())["commits"]
    assert commits, f"{args} committed nothing"
    return commits


@pytest.fixture
def ready(world: World) -> World:
    """A database (already migrated) with k-0001 awaiting review and a failed stage."""
    for name, extra in (("normal", ""), ("full", "durability: full\n")):
        world.pipeline(name, PIPELINE.format(name=f"durability-{name}", extra=extra))
    assert world.run("advance", "normal.yaml", "k-0001").returncode == 1
    return world


def test_default_is_wal_with_synchronous_normal(ready: World) -> None:
    assert ready.query("PRAGMA journal_mode") == [("wal",)]
    assert set(probe(ready, "advance", "normal.yaml", "k-0002")) == {NORMAL}
    assert set(probe(ready, "approve", "k-0001", "gate")) == {NORMAL}
    assert set(probe(ready, "retry", "k-0001", "broken")) == {NORMAL}


@pytest.mark.parametrize("how", ["option", "env"])
def test_durability_full_syncs_every_commit(ready: World, how: str) -> None:
    opt, env = (
        (["--durability", "full"], None)
        if how == "option"
        else ([], {"TREADLE_DURABILITY": "full"})
    )
    assert set(probe(ready, *opt, "advance", "normal.yaml", "k-0002", env=env)) == {FULL}
    assert set(probe(ready, *opt, "reject", "k-0001", "gate", "--reason", "no", env=env)) == {FULL}
    assert set(probe(ready, *opt, "retry", "k-0001", "gate", env=env)) == {FULL}
    assert set(probe(ready, *opt, "advance", "normal.yaml", "k-0001", env=env)) == {FULL}
    assert set(probe(ready, *opt, "approve", "k-0001", "gate", env=env)) == {FULL}


def test_pipeline_file_can_ask_for_full_durability(ready: World) -> None:
    assert set(probe(ready, "advance", "full.yaml", "f-0001")) == {FULL}


def test_decisions_on_a_full_durability_pipeline_are_synced(ready: World) -> None:
    assert ready.run("advance", "full.yaml", "f-0001").returncode == 1
    assert set(probe(ready, "approve", "f-0001", "gate")) == {FULL}


def test_unknown_durability_is_a_usage_error(ready: World) -> None:
    r = ready.run("--durability", "fast", "status")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = ready.run("status", env={"TREADLE_DURABILITY": "fast"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    bad = ready.pipeline("bad", PIPELINE.format(name="bad", extra="durability: fast\n"))
    r = ready.run("validate", str(bad))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {bad}:2:"), r.stderr
