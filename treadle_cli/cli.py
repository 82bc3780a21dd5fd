"""The ``treadle`` command: parse, call the library, render, exit.

Heavy modules (networkx, yaml, rich, stage code) are imported inside the commands that
need them, so ``treadle approve`` and ``treadle status ITEM`` start fast.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from . import __version__
from .errors import TreadleError, UnknownItemError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from .status import PipelineStatus
    from .store.protocol import StateStore
    from .workflow import Workflow

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFLICT, EXIT_DB, EXIT_HUMAN = 0, 1, 2, 3, 4, 5
EXIT_BUG = 70  # an unexpected exception: a bug in treadle or in the stage code's imports
EXIT_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`treadle status | head`)
DEFAULT_BUSY_TIMEOUT = 30.0

app = typer.Typer(
    name="treadle",
    help="Persistent, resumable, human-in-the-loop pipelines for work items.\n\n"
    'Example: treadle advance pipelines/document_review.yaml doc-1 --data \'{"path": "a.md"}\'',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Durability(enum.StrEnum):
    normal = "normal"
    full = "full"


class GraphFormat(enum.StrEnum):
    tree = "tree"
    mermaid = "mermaid"
    dot = "dot"


@dataclass
class State:
    """Options shared by every command, built once per invocation."""

    db: str
    debug: bool
    durability: Durability
    timeout: float

    def open(self, *, readonly: bool = False, must_exist: bool = False) -> StateStore:
        """Open the database --db names; ``must_exist`` refuses to create one."""
        from .store import database_exists, display_target, open_store

        if must_exist and not database_exists(self.db):
            raise UsageError(
                f"no treadle database at {display_target(self.db)}",
                hint="pass --db PATH (or set TREADLE_DB), or run `treadle advance` first",
            )
        return open_store(
            self.db, durability=self.durability.value, timeout=self.timeout, readonly=readonly
        )

    def open_for(self, item_id: str) -> StateStore:
        """Open to change one item (the store syncs it as its pipeline asked)."""
        return self.open(must_exist=True)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (see README).")]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        help="Seconds to wait for retries due soon; later ones are left for the next call.",
    ),
]
ItemArg = Annotated[str, typer.Argument(metavar="ITEM", help="The item id.")]
AdvanceOpt = Annotated[
    bool,
    typer.Option(
        "--advance", help="Then advance the item with the pipeline file it was registered with."
    ),
]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who decides (default: the OS user).")]

F = TypeVar("F", bound=Callable[..., Any])


def _emit_error(exc: TreadleError, json_mode: bool) -> None:
    if json_mode:
        payload: dict[str, Any] = {
            "error": exc.message,
            "hint": exc.hint,
            "exit_code": exc.exit_code,
            "type": type(exc).__name__,
        }
        problems = getattr(exc, "problems", None)
        if problems and problems != [exc.message]:
            payload["problems"] = problems
        sys.stderr.write(json.dumps(payload) + "\n")
        return
    sys.stderr.write(f"error: {exc}\n")
    problems = getattr(exc, "problems", None)
    if problems and problems != [exc.message]:
        for p in problems:
            sys.stderr.write(f"  {p}\n")


def command(fn: F) -> F:
    """The one place where errors become messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.get("ctx")
        state: State | None = getattr(ctx, "obj", None)
        debug = bool(state and state.debug)
        json_mode = bool(kwargs.get("json_output"))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except TreadleError as exc:
            if debug:
                traceback.print_exc()
            _emit_error(_with_cli_hint(exc), json_mode)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # Not a bug: whoever read stdout has had enough. Exit quietly, as a process
            # killed by SIGPIPE would, and keep the interpreter's final flush from failing.
            _silence_stdout()
            raise typer.Exit(EXIT_PIPE) from None
        except Exception as exc:
            if debug:
                traceback.print_exc()
            bug = TreadleError(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="this is a bug; rerun with --debug and report the traceback",
            )
            bug.exit_code = EXIT_BUG
            _emit_error(bug, json_mode)
            raise typer.Exit(EXIT_BUG) from None

    return wrapper  # type: ignore[return-value]


def _with_cli_hint(exc: TreadleError) -> TreadleError:
    """The library's hints name no flags; here they may say which option to change."""
    from .errors import DatabaseLockedError

    if isinstance(exc, DatabaseLockedError) and "busy timeout" in (exc.hint or ""):
        exc.hint = "another process holds it; retry, or raise TREADLE_BUSY_TIMEOUT (seconds)"
    return exc


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (e.g. under CliRunner)
        pass


def _version(value: bool) -> None:
    if value:
        typer.echo(f"treadle {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="TREADLE_DB",
            help="A SQLite file, or a PostgreSQL URL postgresql://USER@HOST/DB.",
        ),
    ] = "treadle.db",
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    durability: Annotated[
        Durability,
        typer.Option(
            "--durability",
            envvar="TREADLE_DURABILITY",
            help="normal survives a process crash; full also survives power loss (slower).",
        ),
    ] = Durability.normal,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """Persistent, resumable, human-in-the-loop pipelines for work items."""
    try:
        timeout = float(os.environ.get("TREADLE_BUSY_TIMEOUT", DEFAULT_BUSY_TIMEOUT))
    except ValueError:
        timeout = DEFAULT_BUSY_TIMEOUT
    ctx.obj = State(db=db, debug=debug, durability=durability, timeout=timeout)


# ---------------------------------------------------------------------- output


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    from .render import theme

    return Console(theme=theme(), highlight=False, stderr=stderr)


def _out_is_terminal() -> bool:
    """What rich would decide, without importing rich for piped output."""
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible == "0":
        return False
    if os.environ.get("FORCE_COLOR") or tty_compatible == "1":
        return True
    return sys.stdout.isatty()


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="quote it, e.g. --data '{\"key\": 1}'",
        ) from None
    except ValueError as exc:  # NaN, Infinity: Python reads them, JSON has no such values
        raise UsageError(f"{what} is not valid JSON: {exc}", hint="use null or a number") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply", hint="flatten the JSON") from None


def _json_object(text: str, what: str) -> dict[str, Any]:
    value = _parse_json(text, what)
    if not isinstance(value, dict):
        raise UsageError(
            f"{what} must be a JSON object, not {type(value).__name__}",
            hint='wrap it: {"key": value}',
        )
    return value


def _state(ctx: typer.Context) -> State:
    return ctx.obj  # type: ignore[no-any-return]


def _load_workflow(path: Path) -> Workflow:
    from .workflow import Workflow

    return Workflow.from_yaml(path)


def _file_hash(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _show_status(st: PipelineStatus, json_output: bool) -> None:
    outdated = bool(st.item.pipeline_path) and _file_hash(st.item.pipeline_path) not in (
        None,
        st.item.pipeline_hash,
    )
    if json_output:
        payload = st.to_json()
        payload["outdated"] = outdated
        _print_json(payload)
        return
    from .render import status_lines, status_tree

    if _out_is_terminal():
        _console().print(status_tree(st, outdated=outdated))
    else:
        typer.echo("\n".join(status_lines(st, outdated=outdated)))


def _advance_registered(
    state: State, store: StateStore, item_id: str, wait: float
) -> PipelineStatus:
    """Advance an item with the pipeline file it was registered with."""
    rec = store.get_item(item_id)
    if rec is None:
        raise UnknownItemError(item_id)
    if not rec.pipeline_path:
        raise UsageError(
            f"item {item_id!r} was registered by a library workflow, not a pipeline file",
            hint="advance it from the code that created it",
        )
    if not Path(rec.pipeline_path).exists():
        raise UsageError(
            f"pipeline file {rec.pipeline_path} of item {item_id!r} is gone",
            hint="restore it, or run `treadle advance PIPELINE ITEM`",
        )
    wf = _load_workflow(Path(rec.pipeline_path))
    return wf.advance(item_id, store, wait=wait)


def _exit_for(states: list[str]) -> int:
    return EXIT_FAILED if any(s in ("failed", "rejected") for s in states) else EXIT_OK


# -------------------------------------------------------------------- advance


def _read_items_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        fh = sys.stdin if str(path) == "-" else open(path, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check the path") from None
    with fh:
        for n, line in enumerate(_decoded_lines(fh, path), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(
                    f"{path}:{n}: not valid JSON: {exc.msg}",
                    hint='one object per line: {"id": "doc-1", "data": {...}}',
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise UsageError(
                    f'{path}:{n}: each line needs a string "id"',
                    hint='one object per line: {"id": "doc-1", "data": {...}}',
                )
            data = row.get("data", {})
            if not isinstance(data, dict):
                raise UsageError(f'{path}:{n}: "data" must be a JSON object')
            yield row["id"], data


def _decoded_lines(fh: Any, path: Path) -> Iterator[str]:
    """The lines of ``fh``; text that is not UTF-8 is a usage error, not a crash."""
    try:
        yield from fh
    except UnicodeDecodeError as exc:  # decoded a block at a time: no reliable line number
        raise UsageError(
            f"{path} is not UTF-8 text ({exc.reason})", hint="save the file as UTF-8"
        ) from None


@app.command()
@command
def advance(
    ctx: typer.Context,
    pipeline: Annotated[Path, typer.Argument(metavar="PIPELINE", help="The pipeline YAML file.")],
    items: Annotated[
        list[str] | None, typer.Argument(metavar="[ITEM]...", help="Item ids to register/advance.")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="JSON object: the data of items registered now.")
    ] = None,
    data_file: Annotated[
        Path | None, typer.Option("--data-file", help="A file holding that JSON object.")
    ] = None,
    items_file: Annotated[
        Path | None,
        typer.Option("--items", help='JSON lines {"id": ..., "data": {...}} ("-" for stdin).'),
    ] = None,
    all_items: Annotated[
        bool, typer.Option("--all", help="Every unfinished item of this pipeline.")
    ] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, max=64, help="Items advanced in parallel.")
    ] = 1,
    wait: WaitOpt = 60.0,
    json_output: JsonOpt = False,
) -> None:
    """Register items and run every ready stage until each waits, fails or completes.

    Example: treadle advance pipelines/document_review.yaml doc-1 --data '{"path": "docs/a.md"}'

    Exits 1 if a stage failed or an item was rejected, 0 otherwise (waiting on review is fine).
    """
    state = _state(ctx)
    if data is not None and data_file is not None:
        raise UsageError("--data and --data-file both given", hint="use one of them")
    payload: dict[str, Any] | None = None
    if data is not None:
        payload = _json_object(data, "--data")
    elif data_file is not None:
        try:
            text = data_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"cannot read {data_file}: {exc.strerror}", hint="check the path"
            ) from None
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{data_file} is not UTF-8 text ({exc.reason})", hint="save the file as UTF-8"
            ) from None
        payload = _json_object(text, str(data_file))
    targets: list[tuple[str, dict[str, Any] | None]] = [(i, payload) for i in items or []]
    if items_file is not None:
        targets.extend(_read_items_file(items_file))
    if not targets and not all_items:
        raise UsageError(
            "no items to advance", hint="name items, or pass --items FILE.jsonl or --all"
        )
    from .execution import validate_item_id

    for item_id, _ in targets:
        validate_item_id(item_id)
    # An id named twice (or in both ITEM... and --items) is one item: advance and report it
    # once; its first data wins, as registration keeps the first data anyway.
    first: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for t in targets:
        first.setdefault(t[0], t)
    targets = list(first.values())
    wf = _load_workflow(pipeline)
    if wf.pipeline.durability == "full":  # the pipeline file may ask for power-loss safety
        state.durability = Durability.full
    store = state.open()
    if all_items:
        seen = {t[0] for t in targets}
        unfinished = ("pending", "running", "awaiting_review", "failed", "rejected")
        for rec in store.iter_summaries(pipeline=wf.name, states=unfinished):
            if rec.id not in seen:
                targets.append((rec.id, None))
    results = _advance_many(wf, store, targets, jobs, wait, show_progress=not json_output)
    given = dict(targets)
    for st in results:  # registration keeps an item's first data; say so rather than drop it
        new = given.get(st.item_id)
        if new is not None and new != st.item.data:
            sys.stderr.write(
                f"warning: {st.item_id} already exists; its stored data was kept "
                "and the new data ignored\n"
            )
    states = [st.state.value for st in results]
    if json_output:
        counts: dict[str, int] = {}
        for s in states:
            counts[s] = counts.get(s, 0) + 1
        _print_json({"items": [st.to_json() for st in results], "summary": counts})
    else:
        _report_advance(results)
    raise typer.Exit(_exit_for(states))


def _advance_many(
    wf: Workflow,
    store: StateStore,
    targets: list[tuple[str, dict[str, Any] | None]],
    jobs: int,
    wait: float,
    show_progress: bool,
) -> list[PipelineStatus]:
    def one(target: tuple[str, dict[str, Any] | None]) -> PipelineStatus:
        return wf.advance(target[0], store, data=target[1], wait=wait)

    err = _console(stderr=True)
    progress = None
    if show_progress and len(targets) > 1 and err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
    results: list[PipelineStatus] = []
    if progress is not None:
        progress.start()
        task = progress.add_task("advancing", total=len(targets))
    try:
        if jobs == 1:
            for t in targets:
                results.append(one(t))
                if progress is not None:
                    progress.advance(task)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="treadle-item") as pool:
                for st in pool.map(one, targets):
                    results.append(st)
                    if progress is not None:
                        progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    return results


def _report_advance(results: list[PipelineStatus]) -> None:
    from .render import item_line, items_table, status_lines, status_tree

    terminal = _out_is_terminal()
    out = _console()
    if len(results) == 1:
        st = results[0]
        if terminal:
            out.print(status_tree(st))
        else:
            typer.echo("\n".join(status_lines(st)))
    elif terminal:
        out.print(items_table([st.item for st in results[:50]]))
        if len(results) > 50:
            out.print(f"… and {len(results) - 50} more (treadle status --all)", style="hint")
    else:
        for st in results:
            typer.echo(item_line(st.item))
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
                hints.append(f"treadle approve {_quote(st.item_id)} {_quote(target)}")
        for stage in st.failed_stages() + st.rejected_stages():
            hints.append(f"treadle retry {_quote(st.item_id)} {_quote(stage)}")
    err = sys.stderr
    err.write(f"{len(results)} item(s): {summary}\n")
    for h in hints[:10]:
        err.write(f"  {h}\n")
    if len(hints) > 10:
        err.write(f"  … {len(hints) - 10} more: treadle reviews\n")


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ------------------------------------------------------------------ decisions


@app.command()
@command
def approve(
    ctx: typer.Context,
    item: ItemArg,
    stage: Annotated[
        str,
        typer.Argument(metavar="STAGE[/SUBTASK]", help="STAGE or STAGE/SUBTASK awaiting review."),
    ],
    comment: Annotated[
        str | None, typer.Option("--comment", help="A note kept with the decision.")
    ] = None,
    by: ByOpt = None,
    output: Annotated[
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
    from . import decisions

    state = _state(ctx)
    edited = _parse_json(output, "--output") if output is not None else None
    store = state.open_for(item)
    result = decisions.approve(store, item, stage, by=by, comment=comment, output=edited)
    _finish_decision(state, store, result, advance_after, wait, json_output)


@app.command()
@command
def reject(
    ctx: typer.Context,
    item: ItemArg,
    stage: Annotated[
        str,
        typer.Argument(metavar="STAGE[/SUBTASK]", help="STAGE or STAGE/SUBTASK awaiting review."),
    ],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (required; the stage sees it on retry).")
    ],
    by: ByOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Reject a stage (or subtask) that awaits review, with a reason.

    Example: treadle reject doc-2 review --reason "title is wrong"
    """
    from . import decisions

    store = _state(ctx).open_for(item)
    result = decisions.reject(store, item, stage, reason, by=by)
    _finish_decision(_state(ctx), store, result, False, 0.0, json_output)


def _finish_decision(
    state: State,
    store: StateStore,
    result: Any,
    advance_after: bool,
    wait: float,
    json_output: bool,
) -> None:
    st = _advance_registered(state, store, result.item_id, wait) if advance_after else None
    if json_output:
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
        _print_json(payload)
    else:
        typer.echo(result.message)
        if st is not None:
            _show_status(st, False)
    if st is not None:
        raise typer.Exit(_exit_for([st.state.value]))


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
    from . import decisions

    state = _state(ctx)
    store = state.open_for(item)
    events = decisions.retry(store, item, stage)
    st = _advance_registered(state, store, item, wait) if advance_after else None
    subtasks = (events[0].data or {}).get("subtasks", []) if events else []
    if json_output:
        payload: dict[str, Any] = {
            "item": item,
            "stage": stage,
            "reset": True,
            "subtasks": subtasks,
        }
        if st is not None:
            payload["status"] = st.to_json()
        _print_json(payload)
    else:
        which = f" (subtasks: {', '.join(subtasks)})" if subtasks else ""
        typer.echo(f"{item} {stage} reset to pending{which}")
        if st is not None:
            _show_status(st, False)
        else:
            rec = store.get_item(item)
            path = _quote(rec.pipeline_path) if rec and rec.pipeline_path else "PIPELINE"
            sys.stderr.write(f"  next: treadle advance {path} {_quote(item)}\n")
    if st is not None:
        raise typer.Exit(_exit_for([st.state.value]))


# --------------------------------------------------------------------- status


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
    from .model import ItemState

    store = _state(ctx).open(readonly=True)
    if item is not None:
        from .status import load_status

        _show_status(load_status(store, item), json_output)
        return
    states: list[str] | None
    if state_filter:
        valid = {s.value for s in ItemState}
        bad = [s for s in state_filter if s not in valid]
        if bad:
            raise UsageError(
                f"unknown state {bad[0]!r}", hint=f"use one of: {', '.join(sorted(valid))}"
            )
        states = list(state_filter)
    elif all_items:
        states = None
    else:
        states = [s.value for s in ItemState if s != ItemState.COMPLETED]
    counts = store.count_items(pipeline=pipeline, states=states)
    stage_counts = store.stage_counts(pipeline=pipeline)
    total = sum(counts.values())
    if json_output:
        _stream_items_json(store, pipeline, states, limit, counts, stage_counts)
        return
    from .render import counts_lines, counts_table, item_line, items_table, summary_text

    if _out_is_terminal():
        shown = 50 if limit is None else limit
        out = _console()
        rows = list(store.iter_summaries(pipeline=pipeline, states=states, limit=shown))
        if stage_counts:
            out.print(counts_table(stage_counts))
        if rows:
            out.print(items_table(rows))
        out.print(summary_text(counts), style="hint")
        if total > len(rows):
            out.print(
                f"showing {len(rows)} of {total}; use --limit N or --json for more", style="hint"
            )
        return
    for line in counts_lines(stage_counts):
        typer.echo(line)
    for rec in store.iter_summaries(pipeline=pipeline, states=states, limit=limit):
        typer.echo(item_line(rec))


def _stream_items_json(
    store: StateStore,
    pipeline: str | None,
    states: list[str] | None,
    limit: int | None,
    counts: dict[str, int],
    stage_counts: dict[str, dict[str, int]],
) -> None:
    """Write the status JSON item by item, so memory stays flat on big databases."""
    w = sys.stdout.write
    w('{"items": [')
    first = True
    for rec in store.iter_summaries(pipeline=pipeline, states=states, limit=limit):
        w(
            ("" if first else ", ")
            + json.dumps(
                {
                    "id": rec.id,
                    "pipeline": rec.pipeline,
                    "state": rec.state,
                    "progress": rec.progress,
                    "waiting_on": rec.waiting_on,
                }
            )
        )
        first = False
    w(
        '], "counts": '
        + json.dumps({"items": counts, "stages": stage_counts, "total": sum(counts.values())})
        + "}\n"
    )
    sys.stdout.flush()


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
    store = _state(ctx).open(readonly=True)
    rows = store.pending_reviews(pipeline=pipeline)
    if json_output:
        _print_json(rows)
        return
    from .render import review_line, reviews_table

    if _out_is_terminal():
        if rows:
            _console().print(reviews_table(rows))
        else:
            _console().print("nothing awaits review", style="hint")
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
    store = _state(ctx).open(readonly=True)
    if store.get_item(item) is None:
        raise UnknownItemError(item)
    events = store.events(item_id=item)
    decided = store.decisions(item)
    if json_output:
        _print_json(
            {
                "item": item,
                "events": [e.to_json() for e in events],
                "decisions": [d.to_json() for d in decided],
            }
        )
        return
    from .render import decision_line, event_line, history_table

    if _out_is_terminal():
        _console().print(history_table(events, decided))
        return
    for e in events:
        typer.echo(event_line(e))
    for d in decided:
        typer.echo(decision_line(d))


# ---------------------------------------------------------------------- watch


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
    state = _state(ctx)
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
        code = _watch(state, item, until_settled, interval, json_output)
    except KeyboardInterrupt:
        code = EXIT_OK
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    raise typer.Exit(code)


def _settled_code(store: StateStore, item: str | None) -> int | None:
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


def _watch(
    state: State, item: str | None, until_settled: bool, interval: float, json_output: bool
) -> int:
    # Following every item, wait for the database to appear (creating it is not ours to do).
    # One item on a missing database is an unknown item, as for `status ITEM`: the
    # read-only store opened below reads a missing file as empty.
    from .store import database_exists

    while item is None and not database_exists(state.db):
        time.sleep(interval)
    store = state.open(readonly=True)
    if item is not None and store.get_item(item) is None:
        raise UnknownItemError(item)
    cursor = store.last_event_id()
    if until_settled and (code := _settled_code(store, item)) is not None:
        return code
    live = None
    terminal = not json_output and _out_is_terminal()
    if terminal:
        from rich.live import Live

        live = Live(
            _watch_view(store, item), console=_console(), refresh_per_second=8, transient=False
        )
        live.start()
    try:
        while True:
            events = store.events(after=cursor, item_id=item, limit=1000)
            if events:
                cursor = events[-1].id or cursor
                for ev in events:
                    if json_output:
                        sys.stdout.write(json.dumps(ev.to_json()) + "\n")
                    elif not terminal:
                        from .render import event_line

                        sys.stdout.write(event_line(ev) + "\n")
                sys.stdout.flush()
                if live is not None:
                    live.update(_watch_view(store, item))
                if until_settled and (code := _settled_code(store, item)) is not None:
                    return code
                if len(events) == 1000:
                    continue
            time.sleep(interval)
    finally:
        if live is not None:
            live.stop()


def _watch_view(store: StateStore, item: str | None) -> Any:
    from rich.console import Group

    from .render import counts_table, items_table, status_tree, summary_text

    if item is not None:
        from .status import load_status

        return status_tree(load_status(store, item))
    states = ["pending", "running", "awaiting_review", "failed", "rejected"]
    rows = list(store.iter_summaries(states=states, limit=30))
    counts = store.count_items()
    return Group(
        counts_table(store.stage_counts()),
        items_table(rows, title="unfinished items"),
        summary_text(counts),
    )


# ------------------------------------------------------------------ pipelines


@app.command()
@command
def validate(
    ctx: typer.Context,
    pipeline: Annotated[Path, typer.Argument(metavar="PIPELINE", help="The pipeline YAML file.")],
    json_output: JsonOpt = False,
) -> None:
    """Check a pipeline file: every problem is reported with its file and line.

    Example: treadle validate pipelines/document_review.yaml
    """
    wf = _load_workflow(pipeline)
    p = wf.pipeline
    if json_output:
        _print_json(
            {
                "valid": True,
                "pipeline": p.name,
                "path": p.path,
                "stages": [
                    {"name": s.name, "needs": list(s.needs), "uses": s.uses}
                    for s in p.stages.values()
                ],
            }
        )
        return
    typer.echo(f"ok: {p.name} ({len(p.stages)} stages: {' → '.join(p.order)})")


@app.command()
@command
def graph(
    ctx: typer.Context,
    pipeline: Annotated[Path, typer.Argument(metavar="PIPELINE", help="The pipeline YAML file.")],
    fmt: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="tree, mermaid or dot.")
    ] = GraphFormat.tree,
    json_output: JsonOpt = False,
) -> None:
    """Draw a pipeline's DAG as a tree, a Mermaid chart or Graphviz dot.

    Example: treadle graph pipelines/document_review.yaml --format dot | dot -Tpng > dag.png
    """
    from .render import graph_dot, graph_mermaid, graph_tree

    p = _load_workflow(pipeline).pipeline
    needs = {name: spec.needs for name, spec in p.stages.items()}
    if json_output:
        _print_json(
            {
                "pipeline": p.name,
                "nodes": p.order,
                "edges": [[dep, name] for name in p.order for dep in needs[name]],
            }
        )
    elif fmt == GraphFormat.mermaid:
        typer.echo(graph_mermaid(p.order, needs))
    elif fmt == GraphFormat.dot:
        typer.echo(graph_dot(p.name, p.order, needs))
    elif _out_is_terminal():
        _console().print(graph_tree(p.name, p.order, needs))
    else:
        for name in p.order:
            typer.echo(f"{name}" + (f" <- {', '.join(needs[name])}" if needs[name] else ""))


def main() -> None:
    """The console script: usage errors become one line, like every other error."""
    try:
        code = app(prog_name="treadle", standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if type(exc).__name__ == "Abort":  # Ctrl-C at a prompt
            sys.exit(130)
        show = getattr(exc, "format_message", None)
        if show is None or not isinstance(getattr(exc, "exit_code", None), int):
            raise
        where = getattr(getattr(exc, "ctx", None), "command_path", None) or "treadle"
        if message := show().strip():  # empty when bare `treadle` printed its help
            sys.stderr.write(f"error: {message} — see `{where} --help`\n")
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
