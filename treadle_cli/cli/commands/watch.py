"""``treadle watch``: follow the database live while other processes change it."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ...errors import UnknownItemError, UsageError
from .. import output
from ..app import (
    EXIT_FAILED,
    EXIT_HUMAN,
    EXIT_OK,
    JsonOpt,
    State,
    app,
    command,
    console,
    out_is_terminal,
    state,
)

if TYPE_CHECKING:
    from ...store.protocol import StateStore

#: Events read per poll; a full batch is followed at once by the next.
BATCH = 1000


@app.command()
@command
def watch(
    ctx: typer.Context,
    item: Annotated[
        str | None, typer.Argument(metavar="[ITEM]", help="Follow one item (default: every item).")
    ] = None,
    all_items: Annotated[
        bool, typer.Option("--all", help="Follow every item, including new ones.")
    ] = False,
    until_settled: Annotated[
        bool,
        typer.Option(
            "--until-settled",
            help="Exit when nothing is pending or running: 0 all complete, "
            "1 a failure or rejection, 5 waiting on a human.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.02, max=10, help="Seconds between polls.")
    ] = 0.2,
    json_output: JsonOpt = False,
) -> None:
    """Follow the database live while other processes change it. Ctrl-C (or SIGTERM) exits 0.

    Examples: treadle watch · treadle watch doc-1 --until-settled · treadle watch --json
    """
    st = state(ctx)
    if item is not None and all_items:
        raise UsageError("ITEM and --all both given", hint="pass one of them")
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # `kill PID` from a script ends it as cleanly as Ctrl-C does.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = _follow(st, item, until_settled, interval, json_output)
    except KeyboardInterrupt:
        code = EXIT_OK
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)


def _settled_code(store: StateStore, item: str | None) -> int | None:
    """The exit code once nothing is pending or running; None while something is."""
    if item is not None:
        rec = store.get_item(item)
        counts = {rec.state.value: 1} if rec else {}
    else:
        counts = store.count_items()
    if not counts or counts.get("pending") or counts.get("running"):
        return None
    if counts.get("failed") or counts.get("rejected"):
        return EXIT_FAILED
    return EXIT_HUMAN if counts.get("awaiting_review") else EXIT_OK


def _follow(
    st: State, item: str | None, until_settled: bool, interval: float, json_output: bool
) -> int:
    # Following every item, wait for the database to appear (creating it is not ours to do).
    # One item on a missing database is an unknown item, as for `status ITEM`: the
    # read-only store opened below reads a missing file as empty.
    from ...store import database_exists

    while item is None and not database_exists(st.db):
        time.sleep(interval)
    store = st.open(readonly=True)
    if item is not None and store.get_item(item) is None:
        raise UnknownItemError(item)
    cursor = store.last_event_id()
    if until_settled and (code := _settled_code(store, item)) is not None:
        return code
    live = None
    terminal = not json_output and out_is_terminal()
    if terminal:
        from rich.live import Live

        live = Live(_view(store, item), console=console(), refresh_per_second=8, transient=False)
        live.start()
    try:
        while True:
            events = store.events(after=cursor, item_id=item, limit=BATCH)
            if events:
                cursor = events[-1].id or cursor
                if json_output:
                    output.print_events(events)
                elif not terminal:
                    from ..render import event_line

                    for ev in events:
                        sys.stdout.write(event_line(ev) + "\n")
                    sys.stdout.flush()
                if live is not None:
                    live.update(_view(store, item))
                if until_settled and (code := _settled_code(store, item)) is not None:
                    return code
                if len(events) == BATCH:
                    continue
            time.sleep(interval)
    finally:
        if live is not None:
            live.stop()


def _view(store: StateStore, item: str | None) -> Any:
    """What the live display shows: one item's tree, or the unfinished items and counts."""
    from rich.console import Group

    from ..render import counts_table, items_table, status_tree, summary_text

    if item is not None:
        from ...status import load_status

        return status_tree(load_status(store, item))
    states = ["pending", "running", "awaiting_review", "failed", "rejected"]
    rows = list(store.iter_summaries(states=states, limit=30))
    counts = store.count_items()
    return Group(
        counts_table(store.stage_counts()),
        items_table(rows, title="unfinished items"),
        summary_text(counts),
    )
