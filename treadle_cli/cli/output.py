"""Every JSON the command line prints: the payload of each command, and how it is written.

``--json`` means stdout is exactly JSON (errors go to stderr, as a JSON object too). Keys may
be added, never renamed (README, "JSON output"). Imports only the standard library: the
objects printed arrive already loaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..decisions import DecisionResult
    from ..errors import TreadleError
    from ..model import Event, ReviewData
    from ..pipeline import Pipeline
    from ..status import PipelineStatus
    from ..store.protocol import ItemSummary


def print_json(value: Any) -> None:
    """One JSON document on a line of stdout, flushed."""
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ items


def status_payload(st: PipelineStatus, *, outdated: bool) -> dict[str, Any]:
    """``status ITEM --json``: the item, its stages and subtasks."""
    payload = st.to_json()
    payload["outdated"] = outdated
    return payload


def print_status(st: PipelineStatus, *, outdated: bool) -> None:
    print_json(status_payload(st, outdated=outdated))


def advance_payload(results: list[PipelineStatus]) -> dict[str, Any]:
    """``advance --json``: each item's status and how many ended in each state."""
    counts: dict[str, int] = {}
    for st in results:
        counts[st.state.value] = counts.get(st.state.value, 0) + 1
    return {"items": [st.to_json() for st in results], "summary": counts}


def print_advance(results: list[PipelineStatus]) -> None:
    print_json(advance_payload(results))


def summary_payload(rec: ItemSummary) -> dict[str, Any]:
    """One row of ``status --json``."""
    return {
        "id": rec.id,
        "pipeline": rec.pipeline,
        "state": rec.state,
        "progress": rec.progress,
        "waiting_on": rec.waiting_on,
    }


def stream_items(
    rows: Iterable[ItemSummary],
    counts: Mapping[str, int],
    stage_counts: Mapping[str, Mapping[str, int]],
) -> None:
    """Write ``status --json`` row by row, so memory stays flat on big databases."""
    w = sys.stdout.write
    w('{"items": [')
    first = True
    for rec in rows:
        w(("" if first else ", ") + json.dumps(summary_payload(rec)))
        first = False
    totals = {"items": counts, "stages": stage_counts, "total": sum(counts.values())}
    w('], "counts": ' + json.dumps(totals) + "}\n")
    sys.stdout.flush()


def print_reviews(rows: list[dict[str, Any]]) -> None:
    """``reviews --json``: the list the store returns, as it is."""
    print_json(rows)


def history_payload(
    item_id: str, events: list[Event], decisions: list[ReviewData]
) -> dict[str, Any]:
    """``history ITEM --json``: the item's events and decisions, oldest first."""
    return {
        "item": item_id,
        "events": [e.to_json() for e in events],
        "decisions": [d.to_json() for d in decisions],
    }


def print_history(item_id: str, events: list[Event], decisions: list[ReviewData]) -> None:
    print_json(history_payload(item_id, events, decisions))


def print_events(events: Iterable[Event]) -> None:
    """``watch --json``: one event per line, flushed."""
    for ev in events:
        sys.stdout.write(json.dumps(ev.to_json()) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ decisions


def decision_payload(result: DecisionResult, st: PipelineStatus | None) -> dict[str, Any]:
    """``approve``/``reject --json``; ``status`` when ``--advance`` continued the item."""
    payload: dict[str, Any] = {
        "item": result.item_id,
        "stage": result.stage,
        "subtask": result.subtask,
        "decision": result.decision.value,
        "changed": result.changed,
    }
    if result.events:
        payload["by"] = (result.events[0].data or {}).get("by")
    if st is not None:
        payload["status"] = st.to_json()
    return payload


def print_decision(result: DecisionResult, st: PipelineStatus | None) -> None:
    print_json(decision_payload(result, st))


def retry_payload(
    item_id: str, stage: str, subtasks: list[str], st: PipelineStatus | None
) -> dict[str, Any]:
    """``retry --json``: which subtasks were reset; ``status`` after ``--advance``."""
    payload: dict[str, Any] = {"item": item_id, "stage": stage, "reset": True, "subtasks": subtasks}
    if st is not None:
        payload["status"] = st.to_json()
    return payload


def print_retry(item_id: str, stage: str, subtasks: list[str], st: PipelineStatus | None) -> None:
    print_json(retry_payload(item_id, stage, subtasks, st))


# ------------------------------------------------------------------ pipelines


def validate_payload(p: Pipeline) -> dict[str, Any]:
    """``validate --json`` of a valid file (an invalid one is an error)."""
    return {
        "valid": True,
        "pipeline": p.name,
        "path": p.path,
        "stages": [
            {"name": s.name, "needs": list(s.needs), "uses": s.uses} for s in p.stages.values()
        ],
    }


def print_validate(p: Pipeline) -> None:
    print_json(validate_payload(p))


def graph_payload(p: Pipeline) -> dict[str, Any]:
    """``graph --json``: stages in order and ``[needs, stage]`` edges."""
    return {
        "pipeline": p.name,
        "nodes": p.order,
        "edges": [[dep, name] for name in p.order for dep in p.stages[name].needs],
    }


def print_graph(p: Pipeline) -> None:
    print_json(graph_payload(p))


# ------------------------------------------------------------------ errors


def error_payload(exc: TreadleError) -> dict[str, Any]:
    """An error in JSON mode: message, hint, exit code, type, and every problem if several."""
    payload: dict[str, Any] = {
        "error": exc.message,
        "hint": exc.hint,
        "exit_code": exc.exit_code,
        "type": type(exc).__name__,
    }
    problems = getattr(exc, "problems", None)
    if problems and problems != [exc.message]:
        payload["problems"] = problems
    return payload


def print_error(exc: TreadleError) -> None:
    """The error as one JSON object on stderr."""
    sys.stderr.write(json.dumps(error_payload(exc)) + "\n")
