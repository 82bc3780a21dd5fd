"""``treadle submit``, ``treadle worker`` and ``treadle workers``: work that continues by itself."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ...errors import UsageError
from .. import output
from ..app import (
    Durability,
    JsonOpt,
    WaitOpt,
    app,
    command,
    console,
    out_is_terminal,
    state,
)
from .advance import Target, _read_data, _read_items_file

if TYPE_CHECKING:
    from ...model import Event
    from ...worker import Worker

PipelineArg = Annotated[Path, typer.Argument(metavar="PIPELINE", help="The pipeline YAML file.")]


@app.command()
@command
def submit(
    ctx: typer.Context,
    pipeline: PipelineArg,
    items: Annotated[
        list[str] | None, typer.Argument(metavar="[ITEM]...", help="Item ids to register.")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="JSON object: the data of the items.")
    ] = None,
    data_file: Annotated[
        Path | None, typer.Option("--data-file", help="A file holding that JSON object.")
    ] = None,
    items_file: Annotated[
        Path | None,
        typer.Option("--items", help='JSON lines {"id": ..., "data": {...}} ("-" for stdin).'),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Register items without running anything; a `treadle worker` runs them.

    Example: treadle submit pipelines/document_review.yaml doc-1 --data '{"path": "docs/a.md"}'

    Prints the ids, one per line (--json: {"items": [ids]}). An item that exists already
    keeps its data.
    """
    st = state(ctx)
    payload = _read_data(data, data_file)
    targets: list[Target] = [(i, payload) for i in items or []]
    if items_file is not None:
        targets.extend(_read_items_file(items_file))
    if not targets:
        raise UsageError("no items to submit", hint="name items, or pass --items FILE.jsonl")
    from ...execution import validate_item_id
    from ...workflow import Workflow

    for item_id, _ in targets:
        validate_item_id(item_id)
    first: dict[str, Target] = {}
    for t in targets:
        first.setdefault(t[0], t)
    wf = Workflow.from_yaml(pipeline)
    if wf.pipeline.durability == "full":
        st.durability = Durability.full
    store = st.open()
    ids: list[str] = []
    for item_id, item_data in first.values():
        got = wf.submit(item_id, store, data=item_data)
        if item_data is not None and got.data != item_data:
            sys.stderr.write(
                f"warning: {item_id} already exists; its stored data was kept "
                "and the new data ignored\n"
            )
        ids.append(item_id)
    if json_output:
        output.print_json({"items": ids})
    else:
        for item_id in ids:
            typer.echo(item_id)
        sys.stderr.write(
            f"{len(ids)} item{'s' if len(ids) != 1 else ''} submitted; "
            f"`treadle worker {pipeline}` runs them\n"
        )


@app.command()
@command
def worker(
    ctx: typer.Context,
    pipelines: Annotated[
        list[Path], typer.Argument(metavar="PIPELINE...", help="The pipeline files to serve.")
    ],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=256, help="Attempts run at once.")
    ] = 4,
    until_idle: Annotated[
        bool,
        typer.Option(
            "--until-idle",
            help="Exit once nothing is ready or running: 0 all settled, 1 a stage failed "
            "or was rejected, 5 waiting on a human.",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace", min=0, help="On SIGTERM / Ctrl-C, seconds running attempts may finish."
        ),
    ] = 30.0,
    name: Annotated[
        str | None, typer.Option("--name", help="This worker's name (default: HOST-PID).")
    ] = None,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            min=1,
            help="Seconds without a heartbeat after which its stages may be taken over.",
        ),
    ] = 30.0,
    wait: WaitOpt = 60.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print each event as a JSON line on stdout.")
    ] = False,
) -> None:
    """Run ready stages of every item of these pipelines until stopped, across items and
    machines. SIGTERM or Ctrl-C stops claiming and lets running attempts finish (--grace);
    a second one stops at once. Both release what is unfinished, for other workers.

    Example: treadle worker pipelines/document_review.yaml --concurrency 8

    With --until-idle (cron, CI) it exits once nothing is ready or running; retries due
    within --wait seconds are waited for.
    """
    st = state(ctx)
    from ...worker import Worker, signals_stop
    from ...workflow import Workflow

    workflows = [Workflow.from_yaml(p) for p in pipelines]
    if any(wf.pipeline.durability == "full" for wf in workflows):
        st.durability = Durability.full
    store = st.open()
    w = Worker(workflows, store, concurrency=concurrency, name=name, lease=lease, grace=grace)
    _log_to_stderr(st.debug)
    view = _View(w, json_output)
    sys.stderr.write(
        f"worker {w.name}: {', '.join(sorted(w.workflows))} on {store.location}, "
        f"up to {concurrency} at once\n"
    )
    with signals_stop(w), view:
        code = w.run(until_idle=until_idle, wait=wait)
    c = w.counts
    sys.stderr.write(
        f"worker {w.name} stopped: {c.done} done, {c.failed} failed, {c.waiting} waiting on "
        "review\n"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    if w.busy:  # attempts still running past the grace period: their claims are released
        os._exit(code)
    raise typer.Exit(code)


class _StderrFormatter(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if self.debug and record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        elif record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {exc})"
        return text


def _log_to_stderr(debug: bool) -> None:
    """Warnings of the library, and the worker's own notes, as lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StderrFormatter(debug))
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name == "treadle.worker")
    root = logging.getLogger("treadle")
    root.addHandler(handler)
    logging.getLogger("treadle.worker").setLevel(logging.INFO)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    # Stage code's own INFO records stay out of the worker's output.
    logging.getLogger("treadle.stage").setLevel(logging.WARNING)


class _View:
    """What a worker shows: a live line on a terminal, a line per event when piped, or
    JSON lines with --json."""

    def __init__(self, w: Worker, json_output: bool) -> None:
        self.w = w
        self.json = json_output
        self.terminal = not json_output and out_is_terminal()
        self._live: Any = None
        self._remove: list[Any] = []

    def __enter__(self) -> _View:
        for wf in self.w.workflows.values():
            self._remove.append(wf.bus.add(self._event))
        if self.terminal:
            from rich.live import Live

            self._console = console()
            self._live = Live(
                self._line(), console=self._console, refresh_per_second=4, transient=True
            )
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for remove in self._remove:
            remove()
        if self._live is not None:
            self._live.stop()

    def _line(self) -> Any:
        from rich.text import Text

        state = "stopping" if self.w.stopping else "working" if self.w.busy else "idle"
        return Text(f"{self.w.name} · {state} · {self.w.counts.line()}", style="hint")

    def _event(self, ev: Event) -> None:
        if self.json:
            output.print_events([ev])
            return
        from ..render import event_line

        if self._live is not None:
            from rich.text import Text

            self._live.console.print(Text(event_line(ev)))
            self._live.update(self._line())
        else:
            sys.stdout.write(event_line(ev) + "\n")
            sys.stdout.flush()


@app.command()
@command
def workers(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Every worker recorded in the database: alive, stale or stopped, and what it runs.

    A stale worker has not been heard from within its lease (or its process is gone): its
    stages are taken over by any other worker.
    """
    from ...worker import list_workers

    rows = list_workers(state(ctx).open(readonly=True))
    if json_output:
        output.print_json({"workers": [r.to_json() for r in rows]})
        return
    if not rows:
        sys.stderr.write("no workers yet (start one with `treadle worker PIPELINE`)\n")
        return
    from ..render import worker_line, workers_table

    if out_is_terminal():
        console().print(workers_table(rows))
    else:
        for r in rows:
            typer.echo(worker_line(r))
