"""Shared helpers of the reliability tests (a module of its own: every test folder has a
``conftest.py``, so ``from conftest import ...`` could find another folder's).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STRESS = os.environ.get("TREADLE_STRESS") == "1"


def sized(ci: Any, stress: Any) -> Any:
    """The CI size, or the long one under ``make stress``."""
    return stress if STRESS else ci


def treadle_cmd() -> list[str]:
    """The installed entry point next to this Python, else ``python -m treadle_cli``."""
    exe = Path(sys.executable).with_name("treadle")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "treadle_cli"]


@dataclass
class World:
    """A folder with a database, a ledger, the stage module and pipeline files."""

    root: Path
    db: Path
    ledger: Path
    env: dict[str, str] = field(default_factory=dict)

    def pipeline(self, name: str, text: str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        return path

    def cmd(self, *args: str) -> list[str]:
        return [*treadle_cmd(), *args]

    def run(
        self,
        *args: str,
        timeout: float = 300,
        env: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``treadle ARGS`` (or ``CMD ARGS``) in the world's folder, output captured."""
        return subprocess.run(
            [*(cmd or treadle_cmd()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            cwd=self.root,
            **kw,
        )

    def json(self, command: str, *args: str) -> Any:
        r = self.run(command, "--json", *args)
        assert r.returncode == 0, (args, r.returncode, r.stderr)
        return json.loads(r.stdout)

    def integrity(self) -> str:
        conn = sqlite3.connect(self.db, timeout=60)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
        return "; ".join(r[0] for r in rows)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(self.db, timeout=60)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


def base_env(db: Path, ledger: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TREADLE_", "RELIABILITY_"))}
    env.update(
        TREADLE_DB=str(db),
        RELIABILITY_LEDGER=str(ledger),
        NO_COLOR="1",
        USER="reliability",
        PYTHONDONTWRITEBYTECODE="1",
        RELIABILITY_TREADLE=json.dumps(treadle_cmd()),
    )
    if "TREADLE_DURABILITY" in os.environ:  # let a run exercise --durability full
        env["TREADLE_DURABILITY"] = os.environ["TREADLE_DURABILITY"]
    return env


KILL_PIPELINE = """\
pipeline: reliability
description: prepare, fan out into four parts (three at a time), a human gate, publish.
stages:
  prepare:
    uses: relstages:prepare
  fan:
    uses: relstages:fan
    needs: prepare
    concurrency: 3
  gate:
    uses: relstages:gate
    needs: fan
  publish:
    uses: relstages:publish
    needs: gate
"""
#: Executions one `advance --jobs J` of KILL_PIPELINE can have running at once: one
#: stage per item (the pipeline is a chain), and a fan-out runs at most 3 subtasks.
FAN_CONCURRENCY = 3


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
