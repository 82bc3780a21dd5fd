"""Human decisions: ``approve``, ``reject`` and ``retry``. They need no pipeline file (unless
``--advance`` continues the item), so they start fast."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from .. import output
from ..app import (
    AdvanceOpt,
    ByOpt,
    ItemArg,
    JsonOpt,
    WaitOpt,
    app,
    command,
    exit_for,
    parse_json,
    state,
)

if TYPE_CHECKING:
    from ...decisions import DecisionResult
    from ...status import PipelineStatus
    from ...store.protocol import StateStore

TargetArg = Annotated[
    str,
    typer.Argument(metavar="STAGE[/SUBTASK]", help="STAGE or STAGE/SUBTASK awaiting review."),
]


@app.command()
@command
def approve(
    ctx: typer.Context,
    item: ItemArg,
    stage: TargetArg,
    comment: Annotated[
        str | None, typer.Option("--comment", help="A note kept with the decision.")
    ] = None,
    by: ByOpt = None,
    output_json: Annotated[
        str | None,
        typer.Option("--output", help="JSON: an edited output that downstream stages see instead."),
    ] = None,
    advance_after: AdvanceOpt = False,
    wait: WaitOpt = 60.0,
    json_output: JsonOpt = False,
) -> None:
    """Approve a stage (or subtask) that awaits review.

    Example: treadle approve doc-1 review --comment "looks good" --advance
    """
    from ... import decisions

    edited = parse_json(output_json, "--output") if output_json is not None else None
    store = state(ctx).open(must_exist=True)
    result = decisions.approve(store, item, stage, by=by, comment=comment, output=edited)
    _finish_decision(store, result, advance_after, wait, json_output)


@app.command()
@command
def reject(
    ctx: typer.Context,
    item: ItemArg,
    stage: TargetArg,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (required; the stage sees it on retry).")
    ],
    by: ByOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Reject a stage (or subtask) that awaits review, with a reason.

    Example: treadle reject doc-2 review --reason "title is wrong"
    """
    from ... import decisions

    store = state(ctx).open(must_exist=True)
    result = decisions.reject(store, item, stage, reason, by=by)
    _finish_decision(store, result, False, 0.0, json_output)


def _finish_decision(
    store: StateStore,
    result: DecisionResult,
    advance_after: bool,
    wait: float,
    json_output: bool,
) -> None:
    status = _advance(store, result.item_id, wait) if advance_after else None
    if json_output:
        output.print_decision(result, status)
    else:
        typer.echo(result.message)
        if status is not None:
            _show(status)
        elif result.changed and result.decision.value == "approved":
            _say_next(store, result.item_id)
    if status is not None:
        raise typer.Exit(exit_for([status.state.value]))


def _say_next(store: StateStore, item_id: str) -> None:
    """How the item continues: a live worker of its pipeline will, or this command will."""
    from ...owners import worker_state

    rec = store.get_item(item_id)
    if rec is None:
        return
    now = store.server_now()
    serving = [
        w.name
        for w, _ in store.list_workers()
        if rec.pipeline in (w.pipelines or []) and worker_state(w, now) == "alive"
    ]
    if serving:
        sys.stderr.write(f"  next: worker {serving[0]} continues it\n")
        return
    path = shlex.quote(rec.pipeline_path) if rec.pipeline_path else "PIPELINE"
    sys.stderr.write(f"  next: treadle advance {path} {shlex.quote(item_id)} (or a worker)\n")


def _advance(store: StateStore, item_id: str, wait: float) -> PipelineStatus:
    """--advance: continue the item with its pipeline file (imported only then: it loads
    the pipeline machinery and the stage code)."""
    from ...workflow import advance_registered

    return advance_registered(item_id, store, wait=wait)


def _show(status: PipelineStatus) -> None:
    # Imported when used: importing `read` registers its commands, and --help lists
    # approve, reject and retry before status.
    from .read import show_status

    show_status(status, False)


@app.command()
@command
def retry(
    ctx: typer.Context,
    item: ItemArg,
    stage: Annotated[str, typer.Argument(metavar="STAGE", help="A failed or rejected stage.")],
    advance_after: AdvanceOpt = False,
    wait: WaitOpt = 60.0,
    json_output: JsonOpt = False,
) -> None:
    """Make a failed or rejected stage pending again (only its failed subtasks re-run).

    Example: treadle retry doc-2 enrich --advance
    """
    from ... import decisions

    store = state(ctx).open(must_exist=True)
    events = decisions.retry(store, item, stage)
    status = _advance(store, item, wait) if advance_after else None
    subtasks = (events[0].data or {}).get("subtasks", []) if events else []
    if json_output:
        output.print_retry(item, stage, subtasks, status)
    else:
        which = f" (subtasks: {', '.join(subtasks)})" if subtasks else ""
        typer.echo(f"{item} {stage} reset to pending{which}")
        if status is not None:
            _show(status)
        else:
            _say_next(store, item)
    if status is not None:
        raise typer.Exit(exit_for([status.state.value]))
