"""The SQL of workers, shared by both SQL backends: which stages are ready across items, and
the ``workers`` table (who is running, when it was last heard from).

Readiness is decided in one query from the worker's own pipeline definitions: for each
stage, its item's pipeline and name, and that none of the stages it needs is unfinished.
The ``(name, status)`` index of stage counts serves each branch of it.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import fields
from datetime import datetime
from typing import Any

from ..model import Owner, StageRecord, WorkerRecord
from .protocol import Outlook, WorkSpec

STAGE_COLS = tuple(f.name for f in fields(StageRecord))
WORKER_COLS = tuple(f.name for f in fields(WorkerRecord))
DONE = "('completed', 'skipped')"

#: A worker spec as a hashable key: ((pipeline, ((stage, (needs...)), ...)), ...).
SpecKey = tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...]


def spec_key(work: WorkSpec) -> SpecKey:
    return tuple(
        (p, tuple((name, tuple(needs)) for name, needs in sorted(stages.items())))
        for p, stages in sorted(work.items())
    )


def _branches(key: SpecKey, p: str, t: Any, true: str) -> tuple[str, list[Any]]:
    """``(pipeline, stage, needs done)`` for every stage a worker serves, OR-ed."""
    parts: list[str] = []
    params: list[Any] = []
    for pipeline, stages in key:
        for name, needs in stages:
            cond = f"(i.pipeline = {p} AND s.name = {p}"
            params += [pipeline, name]
            if needs:
                cond += (
                    f" AND NOT EXISTS (SELECT 1 FROM {t('stages')} d WHERE d.item_id = s.item_id"
                    f" AND d.name IN ({', '.join([p] * len(needs))}) AND d.active = {true}"
                    f" AND d.status NOT IN {DONE})"
                )
                params += list(needs)
            parts.append(cond + ")")
    return "(" + " OR ".join(parts or ["1 = 0"]) + ")", params


_QUERIES: dict[tuple[str, int, SpecKey], tuple[str, tuple[Any, ...]]] = {}


def _cached(kind: str, build: Any) -> Any:
    """Build each query once per dialect and spec (a dialect is one per backend, for good)."""

    @functools.wraps(build)
    def get(d: Any, key: SpecKey) -> tuple[str, tuple[Any, ...]]:
        k = (kind, id(d), key)
        if k not in _QUERIES:
            _QUERIES[k] = build(d, key)
        return _QUERIES[k]

    return get


def _ready_query(d: Any, key: SpecKey) -> tuple[str, tuple[Any, ...]]:
    """The candidates query of a spec; the caller appends now, now, host, limit."""
    p, t = d.param, d.t
    branches, params = _branches(key, p, t, d.true)
    cols = ", ".join(f"s.{c}" for c in STAGE_COLS)
    sql = (
        f"SELECT i.pipeline, {cols} FROM {t('stages')} s JOIN {t('items')} i ON i.id = s.item_id "
        f"WHERE s.active = {d.true} AND {branches} AND ("
        f"(s.status = 'pending' AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= {p})) "
        f"OR (s.status = 'running' AND (s.lease_until <= {p} OR s.owner_host = {p}))) "
        f"ORDER BY i.created_at, i.id, s.position LIMIT {p}{d.skip_locked}"
    )
    return sql, tuple(params)


def _outlook_query(d: Any, key: SpecKey) -> tuple[str, tuple[Any, ...]]:
    """Running count, next retry and next lease expiry of a spec's pipelines."""
    p, t = d.param, d.t
    pipelines = [pipeline for pipeline, _ in key]
    marks = ", ".join([p] * len(pipelines)) or "NULL"
    sql = (
        "SELECT sum(CASE WHEN s.status = 'running' THEN 1 ELSE 0 END), "
        "min(CASE WHEN s.status = 'pending' THEN s.next_attempt_at END), "
        "min(CASE WHEN s.status = 'running' THEN s.lease_until END) "
        f"FROM {t('stages')} s JOIN {t('items')} i ON i.id = s.item_id "
        f"WHERE s.active = {d.true} AND s.status IN ('pending', 'running') "
        f"AND i.pipeline IN ({marks})"
    )
    return sql, tuple(pipelines)


ready_query = _cached("ready", _ready_query)
outlook_query = _cached("outlook", _outlook_query)


class SqlWorkers:
    """The worker queries of :class:`~.sql.SqlStore`."""

    sql: Any
    _read: Any
    _tx: Any

    _query: Any

    def _has_workers_table(self) -> bool:
        return True

    def _write(self) -> AbstractContextManager[Any]:
        """A plain write transaction (worker rows are not item transitions)."""
        return self._tx()

    def _time(self, col: str, value: Any) -> datetime | None:
        fn = self.sql.d.decode.get(col)
        return value if value is None or fn is None else fn(value)

    def work_outlook(self, work: WorkSpec, now: datetime) -> Outlook:
        sql, params = outlook_query(self.sql.d, spec_key(work))
        running, retry, expiry = self._query(sql, params)[0]
        return Outlook(
            int(running or 0),
            self._time("next_attempt_at", retry),
            self._time("lease_until", expiry),
        )

    def held_stages(self, owner: Owner) -> list[StageRecord]:
        p = self.sql.d.param
        rows = self._query(
            self.sql.select("stages", STAGE_COLS)
            + f" WHERE status = 'running' AND owner_host = {p} AND owner_pid = {p}"
            f" AND owner_started = {p}",
            (owner.host, owner.pid, owner.started),
        )
        return [self.sql.decode_stage(r) for r in rows]

    def register_worker(self, rec: WorkerRecord) -> None:
        d = self.sql.d
        p, t = d.param, d.t
        cols = ", ".join(WORKER_COLS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in WORKER_COLS if c != "name")
        with self._write() as tx:
            tx.c.execute(
                f"INSERT INTO {t('workers')} ({cols}) VALUES ({', '.join([p] * len(WORKER_COLS))}) "
                f"ON CONFLICT (name) DO UPDATE SET {updates}",
                d.values(rec, WORKER_COLS),
            )

    def heartbeat(self, name: str, owner: Owner, now: datetime, lease_until: datetime) -> int:
        d = self.sql.d
        p, t = d.param, d.t
        with self._write() as tx:
            tx.c.execute(
                f"UPDATE {t('workers')} SET heartbeat_at = {p} WHERE name = {p}",
                (d.to_db("heartbeat_at", now), name),
            )
            cur = tx.c.execute(
                f"UPDATE {t('stages')} SET lease_until = {p} WHERE status = 'running' "
                f"AND owner_host = {p} AND owner_pid = {p} AND owner_started = {p}",
                (d.to_db("lease_until", lease_until), owner.host, owner.pid, owner.started),
            )
            return int(cur.rowcount)

    def stop_worker(self, name: str, now: datetime) -> None:
        d = self.sql.d
        p, t = d.param, d.t
        at = d.to_db("stopped_at", now)
        with self._write() as tx:
            tx.c.execute(
                f"UPDATE {t('workers')} SET stopped_at = {p}, heartbeat_at = {p} WHERE name = {p}",
                (at, at, name),
            )

    def list_workers(self) -> list[tuple[WorkerRecord, list[str]]]:
        if not self._has_workers_table():
            return []
        d = self.sql.d
        t = d.t
        decode = d.decoder(WorkerRecord, WORKER_COLS)
        workers = [
            decode(r)
            for r in self._query(
                f"SELECT {', '.join(WORKER_COLS)} FROM {t('workers')} ORDER BY started_at, name"
            )
        ]
        running: dict[tuple[str, int, str], list[str]] = {}
        for host, pid, started, item, stage, sub in self._query(
            f"SELECT s.owner_host, s.owner_pid, s.owner_started, s.item_id, s.name, x.name "
            f"FROM {t('stages')} s LEFT JOIN {t('subtasks')} x ON x.item_id = s.item_id "
            "AND x.stage = s.name AND x.status = 'running' "
            "WHERE s.status = 'running' ORDER BY s.item_id, s.position, x.position"
        ):
            what = f"{item} {stage}" + (f"/{sub}" if sub else "")
            running.setdefault((host, pid, started), []).append(what)
        return [(w, running.get((w.host, w.pid, w.started), [])) for w in workers]
