"""The processes of the concurrency test, one role each.

Usage: python rel_workers.py ROLE PIPELINE LOG.jsonl NO_NEW_FILE STOP_FILE [PREFIX [FIRST STEP]]

Roles: ``advance`` (registers an item now and then and runs ``advance --all --jobs 3``),
``approve``, ``reject``, ``retry`` and ``status`` (read commands). Each loops until
STOP_FILE exists, running ``treadle`` commands and appending one line per command to
LOG.jsonl: role, arguments, exit code, stderr, seconds. New items stop when NO_NEW_FILE
exists. What happens to an item depends on its index only (:func:`policy`), so the
workers never need to talk to each other and the test knows every item's final state. An
advancer numbers its items FIRST, FIRST + STEP, ... (default 1, 2, ...): advancer k of n
starting at k with step n, their first few items between them have every fate.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TREADLE = json.loads(os.environ.get("RELIABILITY_TREADLE", '["treadle"]'))
BACKLOG = 30  # an advancer registers no new item while this many of its items are unfinished


def index(item_id: str) -> int:
    return int(item_id.rsplit("-", 1)[1])


def policy(item_id: str) -> str:
    """``approve``; ``reject_then_approve`` (rejected once, retried, approved); ``reject``."""
    i = index(item_id)
    if i % 7 == 3:
        return "reject"
    if i % 3 == 0:
        return "reject_then_approve"
    return "approve"


class Worker:
    def __init__(
        self,
        role: str,
        pipeline: str,
        log: Path,
        no_new: Path,
        stop: Path,
        prefix: str,
        first: int = 1,
        step: int = 1,
    ) -> None:
        self.role, self.pipeline, self.prefix = role, pipeline, prefix
        self.log = log.open("a", buffering=1)
        self.no_new, self.stop = no_new, stop
        self.rng = random.Random(f"{role}{prefix}")
        self.next_item, self.step = first, step
        self.rejected: set[str] = set()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        r = subprocess.run([*TREADLE, *args], capture_output=True, text=True, timeout=600)
        self.log.write(
            json.dumps(
                {
                    "role": self.role,
                    "args": list(args),
                    "rc": r.returncode,
                    "stderr": r.stderr[-2000:],
                    "seconds": round(time.monotonic() - t0, 3),
                }
            )
            + "\n"
        )
        return r

    def json(self, *args: str) -> Any:
        r = self.run(*args, "--json")
        return json.loads(r.stdout) if r.returncode == 0 else None

    # ----------------------------------------------------------------- roles

    def advance(self) -> None:
        args = ["advance", self.pipeline, "--all", "--jobs", "3", "--wait", "0", "--json"]
        if not self.no_new.exists() and self.backlog < BACKLOG:
            args.insert(2, f"{self.prefix}-{self.next_item:04d}")
            self.next_item += self.step
        r = self.run(*args)
        if r.returncode in (0, 1):
            out = json.loads(r.stdout)
            self.backlog = sum(1 for it in out["items"] if it["state"] != "completed")

    backlog = 0

    def approve(self) -> None:
        reviews = self.json("reviews") or []
        later: list[str] = []
        for rv in reviews:
            item = rv["item"]
            if policy(item) == "approve":
                self.run("approve", item, rv["stage"], "--comment", "fine", "--by", "approver")
            elif policy(item) == "reject_then_approve":
                later.append(item)
        if not later:
            return
        # Approve a once-rejected item only when it awaits review *again*: its history shows
        # the retry, and a review list read after that history still shows it.
        retried = set()
        for item in later:
            history = self.json("history", item) or {"events": []}
            if any(e["kind"] == "stage_reset" and e["stage"] == "gate" for e in history["events"]):
                retried.add(item)
        for rv in self.json("reviews") or []:
            if rv["item"] in retried:
                self.run(
                    "approve", rv["item"], rv["stage"], "--comment", "fixed now", "--by", "approver"
                )

    def reject(self) -> None:
        for rv in self.json("reviews") or []:
            item = rv["item"]
            if policy(item) != "approve" and item not in self.rejected:
                r = self.run(
                    "reject", item, rv["stage"], "--reason", f"redo {item}", "--by", "rejecter"
                )
                if r.returncode == 0:
                    self.rejected.add(item)

    def retry(self) -> None:
        listing = self.json("status", "--state", "failed", "--state", "rejected") or {"items": []}
        for it in listing["items"]:
            item = it["id"]
            if it["state"] == "rejected":
                if policy(item) == "reject_then_approve":
                    self.run("retry", item, "gate")
                continue
            st = self.json("status", item)
            for stage in (st or {}).get("stages", []):
                if stage["status"] == "failed":
                    self.run("retry", item, stage["name"])

    def status(self) -> None:
        listing = self.json("status", "--all") or {"items": []}
        ids = [it["id"] for it in listing["items"]]
        if ids:
            item = self.rng.choice(ids)
            self.run("status", item, "--json")
            self.run("history", item)
        self.run("reviews")
        self.run("status")

    def loop(self) -> None:
        step = getattr(self, self.role)
        while not self.stop.exists():
            step()
            time.sleep(0.05)


def main() -> None:
    role, pipeline, log, no_new, stop = sys.argv[1:6]
    prefix = sys.argv[6] if len(sys.argv) > 6 else role
    first, step = (int(a) for a in sys.argv[7:9]) if len(sys.argv) > 8 else (1, 1)
    Worker(role, pipeline, Path(log), Path(no_new), Path(stop), prefix, first, step).loop()


if __name__ == "__main__":
    main()
