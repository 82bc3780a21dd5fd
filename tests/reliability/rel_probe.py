"""Run the treadle CLI with a probe on SQLite: which ``synchronous`` level each commit used.

Usage: python rel_probe.py TREADLE-ARGS...   (writes JSON to $RELIABILITY_PROBE)

Every connection the CLI opens is made with a Connection subclass that, after each
``COMMIT``, reads ``PRAGMA synchronous`` (0 off, 1 normal, 2 full, 3 extra). The CLI
itself is unchanged: this is how the durability test sees what a real process did.
"""

from __future__ import annotations

import atexit
import json
import os
import sqlite3
import sys
from typing import Any

COMMITS: list[int] = []
_connect = sqlite3.connect


class ProbedConnection(sqlite3.Connection):
    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cur = super().execute(sql, *args)
        if sql.strip().upper() == "COMMIT":
            COMMITS.append(super().execute("PRAGMA synchronous").fetchone()[0])
        return cur


def _probed_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    kwargs.setdefault("factory", ProbedConnection)
    return _connect(*args, **kwargs)


def _report() -> None:
    with open(os.environ["RELIABILITY_PROBE"], "w") as fh:
        json.dump({"commits": COMMITS}, fh)


if __name__ == "__main__":
    sqlite3.connect = _probed_connect  # type: ignore[assignment]
    atexit.register(_report)
    from treadle_cli.cli import main

    sys.argv = ["treadle", *sys.argv[1:]]
    main()
