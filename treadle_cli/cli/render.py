"""Turn statuses, events and reviews into rich renderables or plain lines. Never prints.

Rich output is for terminals; plain lines (tab-free, one record per line, no escape codes)
are for pipes and ``grep``. The CLI picks one per invocation.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..model import Event, ItemRecord, ReviewData, StageStatus, iso, utcnow
from ..status import PipelineStatus
from ..store.protocol import ItemSummary

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    from rich.theme import Theme
    from rich.tree import Tree

    from ..worker import WorkerStatus

# rich is imported inside the functions that draw, so piped output never loads it.
STYLES = {
    "status.completed": "green",
    "status.skipped": "dim green",
    "status.running": "cyan",
    "status.pending": "dim",
    "status.awaiting_review": "yellow bold",
    "status.failed": "red bold",
    "status.rejected": "magenta bold",
    "item": "bold",
    "hint": "dim",
    "error": "red",
    "prompt": "yellow",
}


def theme() -> Theme:
    from rich.theme import Theme

    return Theme(STYLES)


SYMBOLS = {
    "completed": "✔",
    "skipped": "↷",
    "running": "▶",
    "pending": "○",
    "awaiting_review": "⏸",
    "failed": "✖",
    "rejected": "⊘",
}
STATES = ("pending", "running", "awaiting_review", "failed", "rejected", "completed", "skipped")


def age(ts: datetime | str | None, now: datetime | None = None) -> str:
    """``3m``, ``2h``, ``5d``: how long ago ``ts`` was."""
    if ts is None:
        return ""
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    seconds = max(0, int(((now or utcnow()) - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def until(ts: datetime | None, now: datetime | None = None) -> str:
    if ts is None:
        return ""
    seconds = int((ts - (now or utcnow())).total_seconds())
    return "now" if seconds <= 0 else f"in {age(now or utcnow(), ts)}"


def styled(status: str) -> Text:
    from rich.text import Text

    return Text(f"{SYMBOLS.get(status, '?')} {status}", style=f"status.{status}")


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ one item


def status_tree(st: PipelineStatus, *, now: datetime | None = None, outdated: bool = False) -> Tree:
    """The stage → subtask tree of one item."""
    from rich.text import Text
    from rich.tree import Tree

    head = Text.assemble(
        (st.item.id, "item"),
        "  ",
        (f"[{st.item.pipeline}]", "hint"),
        "  ",
        styled(st.state.value),
        f"  {st.progress_percent():g}%",
    )
    if outdated:
        head.append("  (ran on an older version of the pipeline file)", style="hint")
    tree = Tree(head)
    for view in st.stages:
        r = view.record
        line = Text.assemble((r.name, "bold"), "  ", styled(r.status.value))
        if r.attempts > 1:
            line.append(f"  attempts {r.attempts}", style="hint")
        if r.status == StageStatus.PENDING and r.next_attempt_at:
            line.append(f"  retry {until(r.next_attempt_at, now)}", style="hint")
        if r.status in (StageStatus.RUNNING, StageStatus.AWAITING_REVIEW):
            since = r.requested_at if r.status == StageStatus.AWAITING_REVIEW else r.started_at
            line.append(f"  for {age(since, now)}", style="hint")
        node = tree.add(line)
        if r.error:
            node.add(Text(r.error, style="error"))
        if r.status == StageStatus.AWAITING_REVIEW and r.review_prompt is not None:
            node.add(Text.assemble(("review: ", "prompt"), r.review_prompt))
            if r.review_data is not None:
                node.add(Text(_short(r.review_data, 300), style="hint"))
            item, stage = shlex.quote(st.item.id), shlex.quote(r.name)
            node.add(
                Text(
                    f"treadle approve {item} {stage}   |   "
                    f"treadle reject {item} {stage} --reason ...",
                    style="hint",
                )
            )
        elif view.decision is not None:
            d = view.decision
            why = f": {d.reason}" if d.reason else (f": {d.comment}" if d.comment else "")
            node.add(Text(f"{d.decision.value} by {d.by} {age(d.at, now)} ago{why}", style="hint"))
        for sub in view.subtasks:
            s = Text.assemble(sub.name, "  ", styled(sub.status.value))
            if sub.attempts > 1:
                s.append(f"  attempts {sub.attempts}", style="hint")
            if sub.status == "pending" and sub.next_attempt_at:
                s.append(f"  retry {until(sub.next_attempt_at, now)}", style="hint")
            child = node.add(s)
            if sub.error:
                child.add(Text(sub.error, style="error"))
            if sub.status == "awaiting_review" and sub.review_prompt:
                child.add(Text.assemble(("review: ", "prompt"), sub.review_prompt))
    return tree


def status_lines(
    st: PipelineStatus, *, now: datetime | None = None, outdated: bool = False
) -> list[str]:
    """The same as :func:`status_tree`, as grep-able lines: ``item stage[/subtask] status``."""
    note = " (older pipeline version)" if outdated else ""
    lines = [f"{st.item.id} {st.item.pipeline} {st.state.value} {st.progress_percent():g}%{note}"]
    for view in st.stages:
        r = view.record
        extra = []
        if r.attempts > 1:
            extra.append(f"attempts={r.attempts}")
        if r.next_attempt_at and r.status == StageStatus.PENDING:
            extra.append(f"retry_at={iso(r.next_attempt_at)}")
        if r.error:
            extra.append(f"error={r.error!r}")
        if r.status == StageStatus.AWAITING_REVIEW and r.review_prompt is not None:
            extra.append(f"prompt={r.review_prompt!r}")
        lines.append(" ".join([f"{st.item.id} {r.name} {r.status.value}", *extra]))
        for sub in view.subtasks:
            bits = [f"{st.item.id} {r.name}/{sub.name} {sub.status.value}"]
            if sub.attempts > 1:
                bits.append(f"attempts={sub.attempts}")
            if sub.error:
                bits.append(f"error={sub.error!r}")
            lines.append(" ".join(bits))
    return lines


def advance_summary(results: list[PipelineStatus], *, limit: int = 10) -> list[str]:
    """What ``advance`` ends with on stderr: counts per state, then the next commands to run
    (at most ``limit`` of them)."""
    counts: dict[str, int] = {}
    for st in results:
        counts[st.state.value] = counts.get(st.state.value, 0) + 1
    summary = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
    hints: list[str] = []
    for st in results:
        for stage in st.review_stages():
            view = st.stage(stage)
            subs = [s.name for s in view.subtasks if s.status == "awaiting_review"]
            for target in [f"{stage}/{s}" for s in subs] or [stage]:
                hints.append(f"treadle approve {shlex.quote(st.item_id)} {shlex.quote(target)}")
        for stage in st.failed_stages() + st.rejected_stages():
            hints.append(f"treadle retry {shlex.quote(st.item_id)} {shlex.quote(stage)}")
    lines = [f"{len(results)} item(s): {summary}", *[f"  {h}" for h in hints[:limit]]]
    if len(hints) > limit:
        lines.append(f"  … {len(hints) - limit} more: treadle reviews")
    return lines


# ------------------------------------------------------------------ many items


def items_table(rows: Iterable[ItemRecord | ItemSummary], *, title: str | None = None) -> Table:
    from rich.markup import escape
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, expand=False, show_edge=False)
    for col in ("item", "pipeline", "progress", "", "state", "waiting on", "updated"):
        table.add_column(col, no_wrap=col in ("item", "progress"))
    now = utcnow()
    for r in rows:
        table.add_row(
            Text(r.id, style="item"),
            Text(r.pipeline),
            ProgressBar(total=100, completed=r.progress, width=16),
            f"{r.progress:g}%",
            styled(str(r.state)),
            escape(r.waiting_on or ""),
            age(r.updated_at, now),
        )
    return table


def item_line(r: ItemRecord | ItemSummary) -> str:
    waiting = f" waiting_on={r.waiting_on!r}" if r.waiting_on else ""
    return f"{r.id} {r.pipeline} {r.state} {r.progress:g}%{waiting}"


def counts_table(counts: Mapping[str, Mapping[str, int]], order: list[str] | None = None) -> Table:
    from rich.table import Table
    from rich.text import Text

    present = [s for s in STATES if any(s in per for per in counts.values())]
    table = Table(title="stages × state", show_edge=False)
    table.add_column("stage")
    for s in present:
        table.add_column(Text(s, style=f"status.{s}"), justify="right")
    for name in order or sorted(counts):
        per = counts.get(name, {})
        table.add_row(Text(name), *[str(per.get(s, "")) for s in present])
    return table


def counts_lines(
    counts: Mapping[str, Mapping[str, int]], order: list[str] | None = None
) -> list[str]:
    return [
        f"count {name} {state} {n}"
        for name in (order or sorted(counts))
        for state, n in sorted(counts.get(name, {}).items())
    ]


def summary_text(item_counts: Mapping[str, int]) -> str:
    total = sum(item_counts.values())
    parts = [f"{n} {state.replace('_', ' ')}" for state, n in sorted(item_counts.items())]
    return f"{total} items: " + ", ".join(parts) if parts else "no items"


# ------------------------------------------------------------------ reviews, history


def reviews_table(rows: list[dict[str, Any]]) -> Table:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title="awaiting review", show_edge=False)
    for col in ("item", "stage", "age", "prompt", "data"):
        table.add_column(col, overflow="fold")
    now = utcnow()
    for r in rows:
        target = r["stage"] + (f"/{r['subtask']}" if r["subtask"] else "")
        table.add_row(
            Text(r["item"], style="item"),
            Text(target),
            age(r["requested_at"], now),
            Text(r["prompt"] or "", style="prompt"),
            escape(_short(r["data"], 200)) if r["data"] is not None else "",
        )
    return table


def review_line(r: dict[str, Any]) -> str:
    target = r["stage"] + (f"/{r['subtask']}" if r["subtask"] else "")
    data = f" data={_short(r['data'], 200)}" if r["data"] is not None else ""
    return f"{r['item']} {target} {r['requested_at']} prompt={r['prompt']!r}{data}"


def _event_detail(ev: Event) -> str:
    data = dict(ev.data or {})
    return " ".join(f"{k}={_short(v, 160)}" for k, v in data.items() if v not in (None, ""))


def history_table(events: list[Event], decisions: list[ReviewData]) -> Group:
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title="events", show_edge=False)
    for col in ("#", "when", "event", "stage", "detail"):
        table.add_column(col, overflow="fold")
    for ev in events:
        target = (ev.stage or "") + (f"/{ev.subtask}" if ev.subtask else "")
        table.add_row(
            str(ev.id), iso(ev.ts) or "", ev.kind.value, Text(target), escape(_event_detail(ev))
        )
    parts: list[Any] = [table]
    if decisions:
        dt = Table(title="decisions", show_edge=False)
        for col in ("when", "stage", "decision", "by", "why"):
            dt.add_column(col, overflow="fold")
        for d in decisions:
            target = d.stage + (f"/{d.subtask}" if d.subtask else "")
            # Cells are Text, not markup: names and `--by` are user text ("[/]" must not crash).
            dt.add_row(
                iso(d.at) or "",
                Text(target),
                _decision_text(d.decision.value),
                Text(d.by),
                escape(d.reason or d.comment or ""),
            )
        parts.append(dt)
    return Group(*parts)


def _decision_text(decision: str) -> Text:
    from rich.text import Text

    status = "completed" if decision == "approved" else "rejected"
    return Text(f"{SYMBOLS[status]} {decision}", style=f"status.{status}")


def event_line(ev: Event) -> str:
    target = (ev.stage or "-") + (f"/{ev.subtask}" if ev.subtask else "")
    detail = _event_detail(ev)
    return f"{ev.id} {iso(ev.ts)} {ev.item_id} {ev.kind.value} {target}" + (
        f" {detail}" if detail else ""
    )


def decision_line(d: ReviewData) -> str:
    target = d.stage + (f"/{d.subtask}" if d.subtask else "")
    why = f" reason={d.reason!r}" if d.reason else ""
    comment = f" comment={d.comment!r}" if d.comment else ""
    return f"decision {iso(d.at)} {d.item_id} {target} {d.decision.value} by={d.by}{why}{comment}"


# ------------------------------------------------------------------ pipelines


def graph_tree(name: str, order: list[str], needs: Mapping[str, tuple[str, ...]]) -> Tree:
    from rich.text import Text
    from rich.tree import Tree

    tree = Tree(Text(name, style="item"))
    for stage in order:
        deps = needs[stage]
        label = Text(stage, style="bold")
        if deps:
            label.append(f"  ← {', '.join(deps)}", style="hint")
        tree.add(label)
    return tree


def graph_mermaid(order: list[str], needs: Mapping[str, tuple[str, ...]]) -> str:
    lines = ["graph TD"]
    for stage in order:
        if not needs[stage]:
            lines.append(f"    {stage}")
        for dep in needs[stage]:
            lines.append(f"    {dep} --> {stage}")
    return "\n".join(lines)


def graph_dot(name: str, order: list[str], needs: Mapping[str, tuple[str, ...]]) -> str:
    lines = [f'digraph "{name}" {{', "    rankdir=LR;"]
    for stage in order:
        lines.append(f'    "{stage}";')
    for stage in order:
        for dep in needs[stage]:
            lines.append(f'    "{dep}" -> "{stage}";')
    lines.append("}")
    return "\n".join(lines)


# ------------------------------------------------------------------ workers


def workers_table(rows: Iterable[WorkerStatus]) -> Table:
    from rich.table import Table
    from rich.text import Text

    styles = {"alive": "status.completed", "stale": "status.failed", "stopped": "hint"}
    table = Table(show_edge=False)
    for col in ("worker", "host", "pid", "state", "started", "heartbeat", "running"):
        table.add_column(col, overflow="fold")
    for r in rows:
        w = r.record
        table.add_row(
            Text(w.name),
            Text(w.host),
            str(w.pid),
            Text(r.state, style=styles.get(r.state, "")),
            age(w.started_at) + " ago",
            age(w.heartbeat_at) + " ago",
            Text(", ".join(r.running)),
        )
    return table


def worker_line(r: WorkerStatus) -> str:
    w = r.record
    running = " running=" + ",".join(x.replace(" ", ":") for x in r.running) if r.running else ""
    return (
        f"{w.name} host={w.host} pid={w.pid} state={r.state} started={iso(w.started_at)} "
        f"heartbeat={iso(w.heartbeat_at)}{running}"
    )
