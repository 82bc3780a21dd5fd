"""The read commands: ``status``, ``reviews`` and ``history``. They never write, and on a
missing database they see an empty one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ...errors import UnknownItemError, UsageError
from .. import output
from ..app import ItemArg, JsonOpt, app, command, console, out_is_terminal, state

if TYPE_CHECKING:
    from ...status import PipelineStatus


def show_status(st: PipelineStatus, json_output: bool) -> None:
    """One item: JSON, a rich tree on a terminal, or grep-able lines."""
    outdated = st.is_outdated()
    if json_output:
        output.print_status(st, outdated=outdated)
        return
    from ..render import status_lines, status_tree

    if out_is_terminal():
        console().print(status_tree(st, outdated=outdated))
    else:
        typer.echo("\n".join(status_lines(st, outdated=outdated)))


@app.command()
@command
def status(
    ctx: typer.Context,
    item: Annotated[
        str | None, typer.Argument(metavar="[ITEM]", help="One item: show its stage tree.")
    ] = None,
    all_items: Annotated[bool, typer.Option("--all", help="Include completed items.")] = False,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="Only this pipeline's items.")
    ] = None,
    state_filter: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="Only items in this state (repeatable): pending, running, "
            "awaiting_review, failed, rejected, completed.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="At most this many rows.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Show one item's stage tree, or a table of items with counts per stage and state.

    Examples: treadle status doc-1 · treadle status --all · treadle status --state failed --json
    """
    store = state(ctx).open(readonly=True)
    if item is not None:
        from ...status import load_status

        show_status(load_status(store, item), json_output)
        return
    states = _states(state_filter, all_items)
    counts = store.count_items(pipeline=pipeline, states=states)
    stage_counts = store.stage_counts(pipeline=pipeline)
    if json_output:
        rows = store.iter_summaries(pipeline=pipeline, states=states, limit=limit)
        output.stream_items(rows, counts, stage_counts)
        return
    from ..render import counts_lines, counts_table, item_line, items_table, summary_text

    if out_is_terminal():
        shown = 50 if limit is None else limit
        out = console()
        table = list(store.iter_summaries(pipeline=pipeline, states=states, limit=shown))
        if stage_counts:
            out.print(counts_table(stage_counts))
        if table:
            out.print(items_table(table))
        out.print(summary_text(counts), style="hint")
        total = sum(counts.values())
        if total > len(table):
            out.print(
                f"showing {len(table)} of {total}; use --limit N or --json for more", style="hint"
            )
        return
    for line in counts_lines(stage_counts):
        typer.echo(line)
    for rec in store.iter_summaries(pipeline=pipeline, states=states, limit=limit):
        typer.echo(item_line(rec))


def _states(state_filter: list[str] | None, all_items: bool) -> list[str] | None:
    """The item states to list: those --state names, every one (--all), or the unfinished."""
    from ...model import ItemState

    if state_filter:
        valid = {s.value for s in ItemState}
        bad = [s for s in state_filter if s not in valid]
        if bad:
            raise UsageError(
                f"unknown state {bad[0]!r}", hint=f"use one of: {', '.join(sorted(valid))}"
            )
        return list(state_filter)
    if all_items:
        return None
    return [s.value for s in ItemState if s != ItemState.COMPLETED]


@app.command()
@command
def reviews(
    ctx: typer.Context,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="Only this pipeline's items.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """The review inbox: what awaits a human decision, oldest first.

    Example: treadle reviews --json | jq '.[].item'
    """
    store = state(ctx).open(readonly=True)
    rows = store.pending_reviews(pipeline=pipeline)
    if json_output:
        output.print_reviews(rows)
        return
    from ..render import review_line, reviews_table

    if out_is_terminal():
        if rows:
            console().print(reviews_table(rows))
        else:
            console().print("nothing awaits review", style="hint")
        return
    for r in rows:
        typer.echo(review_line(r))


@app.command()
@command
def history(
    ctx: typer.Context,
    item: ItemArg,
    json_output: JsonOpt = False,
) -> None:
    """An item's events and decisions (who, when, why), oldest first.

    Example: treadle history doc-1
    """
    store = state(ctx).open(readonly=True)
    if store.get_item(item) is None:
        raise UnknownItemError(item)
    events = store.events(item_id=item)
    decided = store.decisions(item)
    if json_output:
        output.print_history(item, events, decided)
        return
    from ..render import decision_line, event_line, history_table

    if out_is_terminal():
        console().print(history_table(events, decided))
        return
    for e in events:
        typer.echo(event_line(e))
    for d in decided:
        typer.echo(decision_line(d))
