"""Who holds a claim, and whether that process is still alive.

An owner is a host, a pid and the kernel's start time of that pid, so a reused pid is not
mistaken for the process that claimed the stage.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from functools import cache

from .model import Owner, WorkerRecord


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), if /proc has it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] == "Z":
        return "zombie"
    return fields[19] if len(fields) > 19 else None


@cache
def current_owner() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, _proc_start(pid) or "")


# A forked child is another owner: without this it would claim stages under its
# parent's pid, and a child killed mid-stage would never be seen as dead.
os.register_at_fork(after_in_child=current_owner.cache_clear)


def owner_is_dead(host: str | None, pid: int | None, started: str | None) -> bool | None:
    """True/False for an owner on this host; None when it is elsewhere (trust its lease)."""
    me = current_owner()
    if host != me.host or pid is None:
        return None
    if pid == me.pid:
        return started != me.started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now_started = _proc_start(pid)
    if now_started == "zombie":
        return True
    return bool(started) and now_started is not None and now_started != started


def worker_state(rec: WorkerRecord, now: datetime) -> str:
    """alive, stale (silent past its lease, or its process is gone) or stopped."""
    if rec.stopped_at is not None:
        return "stopped"
    dead = owner_is_dead(rec.host, rec.pid, rec.started)
    if dead or rec.heartbeat_at + timedelta(seconds=rec.lease) < now:
        return "stale"
    return "alive"
