"""What both SQL backends share: columns, codecs, the row primitives and the read queries.

A backend describes its dialect (placeholder, NULL-safe equality, table names, how values
are encoded and decoded) in a :class:`Dialect`; the SQL text is built from it once. Each
backend adds only connecting, migrations, its transactions and error translation.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from ..model import (
    DecisionKind,
    Event,
    EventKind,
    ItemRecord,
    ItemState,
    ReviewData,
    StageRecord,
    StageStatus,
    SubtaskRecord,
    SubtaskStatus,
    iso,
)
from .operations import TransactionalStore
from .protocol import ItemSummary, WorkSpec
from .sqlwork import SqlWorkers, ready_query, spec_key

ITEM_COLS = tuple(f.name for f in fields(ItemRecord))
STAGE_COLS = tuple(f.name for f in fields(StageRecord))
SUBTASK_COLS = tuple(f.name for f in fields(SubtaskRecord))
DECISION_COLS = (
    "id",
    "item_id",
    "stage",
    "subtask",
    "decision",
    "by",
    "at",
    "reason",
    "comment",
    "output",
)
EVENT_COLS = ("id", "ts", "kind", "item_id", "stage", "subtask", "data")

JSON_COLS = frozenset({"data", "output", "review_data", "pipelines"})
TIME_COLS = frozenset(
    {
        "created_at",
        "updated_at",
        "requested_at",
        "next_attempt_at",
        "lease_until",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "stopped_at",
        "at",
        "ts",
    }
)
BOOL_COLS = frozenset({"active", "fanned_out"})


def column_kinds(cls: Any) -> dict[str, str]:
    """Each record field's kind (json, time, bool, int, float, text), from the dataclass,
    so tables and records cannot drift."""
    out: dict[str, str] = {}
    for f in fields(cls):
        kind = str(f.type)
        if f.name in JSON_COLS:
            out[f.name] = "json"
        elif f.name in TIME_COLS:
            out[f.name] = "time"
        elif f.name in BOOL_COLS:
            out[f.name] = "bool"
        elif kind.startswith("int"):
            out[f.name] = "int"
        elif kind.startswith("float"):
            out[f.name] = "float"
        else:
            out[f.name] = "text"
    return out


def dump_json(value: Any) -> str | None:
    """The one text form of JSON values: compact, keys sorted (the same on every backend)."""
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Dialect:
    """How one backend spells the SQL both share, and converts values to and from it."""

    param: str  # the placeholder: "?" or "%s"
    is_: str  # NULL-safe equality: "IS" or "IS NOT DISTINCT FROM"
    true: str  # the literal a boolean column is compared with
    prefix: str  # before table names: "" or "treadle."
    encode: dict[str, Callable[[Any], Any]]  # column -> to the database
    decode: dict[str, Callable[[Any], Any]]  # column -> from the database
    unlimited: str  # LIMIT for "no limit" before an OFFSET: "-1" or "ALL"
    skip_locked: str = ""  # after a worker's candidates query: lock their items, skip held ones

    def t(self, table: str) -> str:
        return self.prefix + table

    def to_db(self, col: str, value: Any) -> Any:
        fn = self.encode.get(col)
        return value if fn is None or value is None else fn(value)

    def values(self, rec: Any, cols: Sequence[str], keys: Sequence[str] = ()) -> list[Any]:
        order = [c for c in cols if c not in keys] + list(keys)
        return [self.to_db(c, getattr(rec, c)) for c in order]

    def decoder(
        self, cls: Any, cols: Sequence[str], **enums: Any
    ) -> Callable[[Sequence[Any]], Any]:
        """A fast row -> record function; ``cols`` follow the record's field order."""
        fns = [enums.get(c) or self.decode.get(c) for c in cols]

        def decode(row: Sequence[Any]) -> Any:
            return cls(
                *[v if fn is None or v is None else fn(v) for fn, v in zip(fns, row, strict=True)]
            )

        return decode

    def row(self, cols: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
        return {
            c: (v if (fn := self.decode.get(c)) is None or v is None else fn(v))
            for c, v in zip(cols, row, strict=True)
        }


class Statements:
    """Every statement of the row primitives, built once per dialect."""

    def __init__(self, d: Dialect) -> None:
        p, t = d.param, d.t
        self.d = d

        def select(table: str, cols: Sequence[str]) -> str:
            return f"SELECT {', '.join(cols)} FROM {t(table)}"

        def insert(table: str, cols: Sequence[str]) -> str:
            marks = ", ".join([p] * len(cols))
            return f"INSERT INTO {t(table)} ({', '.join(cols)}) VALUES ({marks})"

        def update(table: str, cols: Sequence[str], keys: Sequence[str]) -> str:
            sets = ", ".join(f"{c} = {p}" for c in cols if c not in keys)
            where = " AND ".join(f"{k} = {p}" for k in keys)
            return f"UPDATE {t(table)} SET {sets} WHERE {where}"

        self.select = select
        self.get_item = select("items", ITEM_COLS) + f" WHERE id = {p}"
        self.insert_item = insert("items", ITEM_COLS)
        self.update_item = update("items", ITEM_COLS, ("id",))
        self.get_stage = select("stages", STAGE_COLS) + f" WHERE item_id = {p} AND name = {p}"
        self.list_stages = select("stages", STAGE_COLS) + f" WHERE item_id = {p} ORDER BY position"
        self.insert_stage = insert("stages", STAGE_COLS)
        self.update_stage = update("stages", STAGE_COLS, ("item_id", "name"))
        self.active_stages = (
            f"SELECT name, status, next_attempt_at FROM {t('stages')} "
            f"WHERE item_id = {p} AND active = {d.true} ORDER BY position"
        )
        self.get_subtask = (
            select("subtasks", SUBTASK_COLS)
            + f" WHERE item_id = {p} AND stage = {p} AND name = {p}"
        )
        self.list_subtasks = (
            select("subtasks", SUBTASK_COLS)
            + f" WHERE item_id = {p} AND stage = {p} ORDER BY position"
        )
        self.insert_subtask = insert("subtasks", SUBTASK_COLS)
        self.update_subtask = update("subtasks", SUBTASK_COLS, ("item_id", "stage", "name"))
        self.insert_event = insert("events", EVENT_COLS[1:])
        self.stage_claim = (
            f"SELECT status, claim FROM {t('stages')} WHERE item_id = {p} AND name = {p}"
        )
        self.set_item_summary = (
            f"UPDATE {t('items')} SET state = {p}, progress = {p}, waiting_on = {p}, "
            f"updated_at = {p} WHERE id = {p} AND NOT (state {d.is_} {p} "
            f"AND progress {d.is_} {p} AND waiting_on {d.is_} {p})"
        )
        self.insert_decision = insert("decisions", DECISION_COLS[1:])
        self.last_decision = (
            select("decisions", DECISION_COLS)
            + f" WHERE item_id = {p} AND stage = {p} AND subtask {d.is_} {p} ORDER BY id DESC LIMIT 1"
        )
        self.decode_item = d.decoder(ItemRecord, ITEM_COLS, state=ItemState)
        self.decode_stage = d.decoder(StageRecord, STAGE_COLS, status=StageStatus)
        self.decode_subtask = d.decoder(SubtaskRecord, SUBTASK_COLS, status=SubtaskStatus)

    @functools.cache  # noqa: B019 - one Statements per dialect, kept for the process
    def cas(
        self, table: str, keys: tuple[str, ...], sets: tuple[str, ...], where: tuple[str, ...]
    ) -> str:
        """UPDATE ... SET sets WHERE keys = ? AND each where-column IS ? (NULL-safe)."""
        p = self.d.param
        assignments = ", ".join(f"{c} = {p}" for c in sets)
        conditions = " AND ".join(
            [f"{k} = {p}" for k in keys] + [f"{c} {self.d.is_} {p}" for c in where]
        )
        return f"UPDATE {self.d.t(table)} SET {assignments} WHERE {conditions}"

    def decision(self, row: Sequence[Any]) -> ReviewData:
        d = self.d.row(DECISION_COLS, row)
        return ReviewData(
            decision=DecisionKind(d["decision"]),
            by=d["by"],
            at=d["at"],
            reason=d["reason"],
            comment=d["comment"],
            output=d["output"],
            item_id=d["item_id"],
            stage=d["stage"],
            subtask=d["subtask"],
            id=d["id"],
        )

    def event(self, row: Sequence[Any]) -> Event:
        d = self.d.row(EVENT_COLS, row)
        return Event(
            EventKind(d["kind"]),
            d["item_id"],
            d["stage"],
            d["subtask"],
            d["data"],
            id=d["id"],
            ts=d["ts"],
        )


class SqlTx:
    """The row primitives over one DB-API cursor; backends add what their dialect lacks."""

    def __init__(self, cur: Any, sql: Statements) -> None:
        self.c = cur
        self.q = sql
        self.d = sql.d

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        return self.c.execute(sql, params).fetchone()

    def _inserted_id(self, sql: str, params: Sequence[Any]) -> int:
        """Insert a row and return its new id."""
        return int(self.c.execute(sql, params).lastrowid)

    def lock_item(self, item_id: str) -> None:
        pass

    def get_item(self, item_id: str) -> ItemRecord | None:
        row = self._one(self.q.get_item, (item_id,))
        return self.q.decode_item(row) if row else None

    def insert_item(self, rec: ItemRecord) -> None:
        self.c.execute(self.q.insert_item, self.d.values(rec, ITEM_COLS))

    def update_item(self, rec: ItemRecord) -> None:
        self.c.execute(self.q.update_item, self.d.values(rec, ITEM_COLS, ("id",)))

    def get_stage(self, item_id: str, stage: str) -> StageRecord | None:
        row = self._one(self.q.get_stage, (item_id, stage))
        return self.q.decode_stage(row) if row else None

    def list_stages(self, item_id: str, include_inactive: bool) -> list[StageRecord]:
        rows = [self.q.decode_stage(r) for r in self.c.execute(self.q.list_stages, (item_id,))]
        return rows if include_inactive else [r for r in rows if r.active]

    def insert_stage(self, rec: StageRecord) -> None:
        self.c.execute(self.q.insert_stage, self.d.values(rec, STAGE_COLS))

    def insert_stages(self, recs: list[StageRecord]) -> None:
        self.c.executemany(self.q.insert_stage, [self.d.values(r, STAGE_COLS) for r in recs])

    def update_stage(self, rec: StageRecord) -> None:
        self.c.execute(self.q.update_stage, self.d.values(rec, STAGE_COLS, ("item_id", "name")))

    def active_stages(self, item_id: str) -> list[tuple[str, str, datetime | None]]:
        ts = self.d.decode.get("next_attempt_at")
        return [
            (n, s, t if t is None or ts is None else ts(t))
            for n, s, t in self.c.execute(self.q.active_stages, (item_id,))
        ]

    def get_subtask(self, item_id: str, stage: str, name: str) -> SubtaskRecord | None:
        row = self._one(self.q.get_subtask, (item_id, stage, name))
        return self.q.decode_subtask(row) if row else None

    def list_subtasks(self, item_id: str, stage: str) -> list[SubtaskRecord]:
        return [
            self.q.decode_subtask(r) for r in self.c.execute(self.q.list_subtasks, (item_id, stage))
        ]

    def insert_subtask(self, rec: SubtaskRecord) -> None:
        self.c.execute(self.q.insert_subtask, self.d.values(rec, SUBTASK_COLS))

    def update_subtask(self, rec: SubtaskRecord) -> None:
        self.c.execute(
            self.q.update_subtask, self.d.values(rec, SUBTASK_COLS, ("item_id", "stage", "name"))
        )

    def _cas(
        self, table: str, keys: dict[str, str], where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        sql = self.q.cas(table, tuple(keys), tuple(sets), tuple(where))
        to_db = self.d.to_db
        params = [to_db(c, v) for c, v in sets.items()] + list(keys.values())
        params += [to_db(c, v) for c, v in where.items()]
        return int(self.c.execute(sql, params).rowcount) == 1

    def cas_stage(
        self, item_id: str, stage: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        return self._cas("stages", {"item_id": item_id, "name": stage}, where, sets)

    def cas_subtask(
        self, item_id: str, stage: str, name: str, where: dict[str, Any], sets: dict[str, Any]
    ) -> bool:
        keys = {"item_id": item_id, "stage": stage, "name": name}
        return self._cas("subtasks", keys, where, sets)

    def stage_claim(self, item_id: str, stage: str) -> tuple[str, str | None] | None:
        row = self._one(self.q.stage_claim, (item_id, stage))
        return (row[0], row[1]) if row else None

    def set_item_summary(
        self, item_id: str, state: ItemState, progress: float, waiting: str, now: datetime
    ) -> bool:
        at = self.d.to_db("updated_at", now)
        params = (state.value, progress, waiting, at, item_id, state.value, progress, waiting)
        return int(self.c.execute(self.q.set_item_summary, params).rowcount) == 1

    def ready_stages(
        self, work: WorkSpec, now: datetime, host: str, limit: int
    ) -> list[tuple[str, StageRecord]]:
        sql, params = ready_query(self.d, spec_key(work))
        at = self.d.to_db("lease_until", now)
        rows = self.c.execute(sql, (*params, at, at, host, limit)).fetchall()
        return [(r[0], self.q.decode_stage(r[1:])) for r in rows]

    def insert_event(self, ev: Event) -> Event:
        to_db = self.d.to_db
        new_id = self._inserted_id(
            self.q.insert_event,
            (
                to_db("ts", ev.ts),
                ev.kind.value,
                ev.item_id,
                ev.stage,
                ev.subtask,
                to_db("data", ev.data),
            ),
        )
        return Event(ev.kind, ev.item_id, ev.stage, ev.subtask, ev.data, id=new_id, ts=ev.ts)

    def insert_decision(self, rev: ReviewData) -> ReviewData:
        to_db = self.d.to_db
        new_id = self._inserted_id(
            self.q.insert_decision,
            (
                rev.item_id,
                rev.stage,
                rev.subtask,
                rev.decision.value,
                to_db("by", rev.by),
                to_db("at", rev.at),
                to_db("reason", rev.reason),
                to_db("comment", rev.comment),
                to_db("output", rev.output),
            ),
        )
        return ReviewData(
            rev.decision,
            rev.by,
            rev.at,
            rev.reason,
            rev.comment,
            rev.output,
            rev.item_id,
            rev.stage,
            rev.subtask,
            id=new_id,
        )

    def last_decision(self, item_id: str, stage: str, subtask: str | None) -> ReviewData | None:
        row = self._one(self.q.last_decision, (item_id, stage, subtask))
        return self.q.decision(row) if row else None


class SqlStore(TransactionalStore, SqlWorkers):
    """The read queries, written once; a backend supplies ``_tx``, ``_read`` and ``_stream``."""

    sql: Statements
    location: str

    def _read(self) -> AbstractContextManager[SqlTx]:  # pragma: no cover - abstract
        """A cursor for reads outside any write transaction."""
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._read() as tx:
            return list(tx.c.execute(sql, params).fetchall())

    def _stream(
        self, sql: str, params: Sequence[Any]
    ) -> Iterator[Sequence[Any]]:  # pragma: no cover
        """A query's rows, without holding them all in memory."""
        raise NotImplementedError

    @property
    def _p(self) -> str:
        return self.sql.d.param

    def _t(self, table: str) -> str:
        return self.sql.d.t(table)

    # ------------------------------------------------------------------ records

    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._read() as tx:
            return tx.get_item(item_id)

    def get_stages(self, item_id: str, *, include_inactive: bool = False) -> list[StageRecord]:
        with self._read() as tx:
            return tx.list_stages(item_id, include_inactive)

    def get_subtasks(self, item_id: str, stage: str | None = None) -> list[SubtaskRecord]:
        if stage is not None:
            with self._read() as tx:
                return tx.list_subtasks(item_id, stage)
        cols = ", ".join(f"t.{c}" for c in SUBTASK_COLS)
        rows = self._query(
            f"SELECT {cols} FROM {self._t('subtasks')} t LEFT JOIN {self._t('stages')} s "
            "ON s.item_id = t.item_id AND s.name = t.stage "
            f"WHERE t.item_id = {self._p} ORDER BY s.position, t.position",
            (item_id,),
        )
        return [self.sql.decode_subtask(r) for r in rows]

    def last_decision(
        self, item_id: str, stage: str, subtask: str | None = None
    ) -> ReviewData | None:
        with self._read() as tx:
            return tx.last_decision(item_id, stage, subtask)

    def decisions(self, item_id: str) -> list[ReviewData]:
        rows = self._query(
            self.sql.select("decisions", DECISION_COLS) + f" WHERE item_id = {self._p} ORDER BY id",
            (item_id,),
        )
        return [self.sql.decision(r) for r in rows]

    # ------------------------------------------------------------------- events

    def events(
        self, *, after: int = 0, item_id: str | None = None, limit: int | None = None
    ) -> list[Event]:
        p = self._p
        sql = self.sql.select("events", EVENT_COLS) + f" WHERE id > {p}"
        params: list[Any] = [after]
        if item_id is not None:
            sql += f" AND item_id = {p}"
            params.append(item_id)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {p}"
            params.append(limit)
        return [self.sql.event(r) for r in self._query(sql, params)]

    def last_event_id(self) -> int:
        return int(self._query(f"SELECT coalesce(max(id), 0) FROM {self._t('events')}")[0][0])

    # ------------------------------------------------------------------- items

    def _item_filter(
        self, pipeline: str | None, states: Sequence[str] | None
    ) -> tuple[str, list[Any]]:
        p = self._p
        clauses, params = [], []
        if pipeline is not None:
            clauses.append(f"pipeline = {p}")
            params.append(pipeline)
        if states:
            clauses.append(f"state IN ({', '.join([p] * len(states))})")
            params.extend(states)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def _items_query(
        self,
        cols: Sequence[str],
        pipeline: str | None,
        states: Sequence[str] | None,
        limit: int | None,
        offset: int = 0,
    ) -> tuple[str, list[Any]]:
        where, params = self._item_filter(pipeline, states)
        sql = self.sql.select("items", cols) + where + " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {self._p}"
            params.append(limit)
        elif offset:
            sql += f" LIMIT {self.sql.d.unlimited}"
        if offset:
            sql += f" OFFSET {self._p}"
            params.append(offset)
        return sql, params

    def list_items(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ItemRecord]:
        sql, params = self._items_query(ITEM_COLS, pipeline, states, limit, offset)
        return [self.sql.decode_item(r) for r in self._query(sql, params)]

    def iter_items(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ItemRecord]:
        """Every matching item, streamed in creation order."""
        sql, params = self._items_query(ITEM_COLS, pipeline, states, limit)
        for row in self._stream(sql, params):
            yield self.sql.decode_item(row)

    def iter_summaries(
        self,
        *,
        pipeline: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[ItemSummary]:
        sql, params = self._items_query(ItemSummary._fields, pipeline, states, limit)
        for row in self._stream(sql, params):
            at = row[5]  # summaries carry times as ISO text, as SQLite stores them
            text = at if isinstance(at, str) else iso(at)
            yield ItemSummary(row[0], row[1], row[2], row[3], row[4], text or "")

    def count_items(
        self, *, pipeline: str | None = None, states: Sequence[str] | None = None
    ) -> dict[str, int]:
        where, params = self._item_filter(pipeline, states)
        rows = self._query(
            f"SELECT state, count(*) FROM {self._t('items')}{where} GROUP BY state", params
        )
        return {state: int(n) for state, n in rows}

    def stage_counts(self, *, pipeline: str | None = None) -> dict[str, dict[str, int]]:
        true = self.sql.d.true
        sql = f"SELECT s.name, s.status, count(*) FROM {self._t('stages')} s"
        params: list[Any] = []
        if pipeline is not None:
            sql += (
                f" JOIN {self._t('items')} i ON i.id = s.item_id "
                f"WHERE s.active = {true} AND i.pipeline = {self._p}"
            )
            params.append(pipeline)
        else:
            sql += f" WHERE s.active = {true}"
        out: dict[str, dict[str, int]] = {}
        for name, status, n in self._query(sql + " GROUP BY s.name, s.status", params):
            out.setdefault(name, {})[status] = int(n)
        return out

    def pending_reviews(self, *, pipeline: str | None = None) -> list[dict[str, Any]]:
        p, t, true = self._p, self._t, self.sql.d.true
        join = f" JOIN {t('items')} i ON i.id = x.item_id" + (
            f" AND i.pipeline = {p}" if pipeline else ""
        )
        params = [pipeline] if pipeline else []
        rows = self._query(
            "SELECT x.item_id, x.name, NULL, x.review_prompt, x.review_data, x.requested_at "
            f"FROM {t('stages')} x{join} WHERE x.status = 'awaiting_review' "
            f"AND x.active = {true} AND x.review_prompt IS NOT NULL "
            "UNION ALL SELECT x.item_id, x.stage, x.name, x.review_prompt, x.review_data, "
            f"x.requested_at FROM {t('subtasks')} x{join} JOIN {t('stages')} s "
            f"ON s.item_id = x.item_id AND s.name = x.stage AND s.active = {true} "
            "WHERE x.status = 'awaiting_review' ORDER BY 6, 1",
            params * 2,
        )
        data = self.sql.d.decode.get("review_data") or (lambda v: v)
        at = self.sql.d.decode.get("requested_at") or (lambda v: v)
        return [
            {
                "item": r[0],
                "stage": r[1],
                "subtask": r[2],
                "prompt": r[3],
                "data": None if r[4] is None else data(r[4]),
                "requested_at": None if r[5] is None else iso(at(r[5])),
            }
            for r in rows
        ]
