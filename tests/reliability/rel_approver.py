"""The human of the kill test, as a process: it works through `treadle reviews`.

Usage: python rel_approver.py DECISIONS.jsonl COMMANDS.jsonl STOPFILE

Items whose index % 5 == 0 are rejected once (with a reason) and then retried; every
other review is approved. Each decision whose command exited 0 is appended to
DECISIONS.jsonl *after* the exit, with a unique token in its reason or comment, so the
test can find it in the database. Every command run (arguments, exit code, stderr) goes to
COMMANDS.jsonl. The loop ends when STOPFILE exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

TREADLE = json.loads(os.environ.get("RELIABILITY_TREADLE", '["treadle"]'))


def index(item_id: str) -> int:
    return int(item_id.rsplit("-", 1)[1])


class Human:
    def __init__(self, decisions: Path, commands: Path) -> None:
        self.decisions = decisions.open("a", buffering=1)
        self.commands = commands.open("a", buffering=1)
        self.rejected: set[str] = set()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*TREADLE, *args], capture_output=True, text=True, timeout=600)
        self.commands.write(
            json.dumps({"args": list(args), "rc": r.returncode, "stderr": r.stderr[-2000:]}) + "\n"
        )
        return r

    def record(self, **decision: str) -> None:
        self.decisions.write(json.dumps(decision) + "\n")
        self.decisions.flush()

    def once(self) -> None:
        r = self.run("reviews", "--json")
        if r.returncode != 0:
            return
        for review in json.loads(r.stdout):
            item, stage = review["item"], review["stage"]
            target = stage + (f"/{review['subtask']}" if review["subtask"] else "")
            token = uuid.uuid4().hex
            if index(item) % 5 == 0 and item not in self.rejected:
                reason = f"reject-{token}"
                if (
                    self.run(
                        "reject", item, target, "--reason", reason, "--by", "approver", "--json"
                    ).returncode
                    == 0
                ):
                    self.record(item=item, stage=stage, decision="rejected", text=reason)
                    self.rejected.add(item)
                    # A retry that fails (it should not) is tried again next round.
                    for _ in range(100):
                        if self.run("retry", item, stage, "--json").returncode == 0:
                            break
                        time.sleep(0.2)
            else:
                comment = f"approve-{token}"
                if (
                    self.run(
                        "approve", item, target, "--comment", comment, "--by", "approver", "--json"
                    ).returncode
                    == 0
                ):
                    self.record(item=item, stage=stage, decision="approved", text=comment)


def main() -> None:
    decisions, commands, stop = (Path(a) for a in sys.argv[1:4])
    human = Human(decisions, commands)
    while not stop.exists():
        human.once()
        time.sleep(0.15)


if __name__ == "__main__":
    main()
