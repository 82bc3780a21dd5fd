"""``treadle advance``: register items and run every ready stage."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
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
    exit_for,
    json_object,
    out_is_terminal,
    state,
)

if TYPE_CHECKING:
    from ...status import PipelineStatus
    from ...store.protocol import StateStore
    from ...workflow import Workflow

#: An item to advance: its id, and the data to register it with (None: keep what is stored).
Target = tuple[str, dict[str, Any] | None]
UNFINISHED = ("pending", "running", "awaiting_review", "failed", "rejected")


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
    st = state(ctx)
    payload = _read_data(data, data_file)
    targets: list[Target] = [(i, payload) for i in items or []]
    if items_file is not None:
        targets.extend(_read_items_file(items_file))
    if not targets and not all_items:
        raise UsageError(
            "no items to advance", hint="name items, or pass --items FILE.jsonl or --all"
        )
    from ...execution import validate_item_id
    from ...workflow import Workflow

    for item_id, _ in targets:
        validate_item_id(item_id)
    # An id named twice (or in both ITEM... and --items) is one item: advance and report it
    # once; its first data wins, as registration keeps the first data anyway.
    first: dict[str, Target] = {}
    for t in targets:
        first.setdefault(t[0], t)
    targets = list(first.values())
    wf = Workflow.from_yaml(pipeline)
    if wf.pipeline.durability == "full":  # the pipeline file may ask for power-loss safety
        st.durability = Durability.full
    store = st.open()
    if all_items:
        seen = {t[0] for t in targets}
        for rec in store.iter_summaries(pipeline=wf.name, states=UNFINISHED):
            if rec.id not in seen:
                targets.append((rec.id, None))
    results = _advance_many(wf, store, targets, jobs, wait, show_progress=not json_output)
    given = dict(targets)
    for res in results:  # registration keeps an item's first data; say so rather than drop it
        new = given.get(res.item_id)
        if new is not None and new != res.item.data:
            sys.stderr.write(
                f"warning: {res.item_id} already exists; its stored data was kept "
                "and the new data ignored\n"
            )
    if json_output:
        output.print_advance(results)
    else:
        _report(results)
    raise typer.Exit(exit_for([res.state.value for res in results]))


def _read_data(data: str | None, data_file: Path | None) -> dict[str, Any] | None:
    """The object --data or --data-file holds, if either was given."""
    if data is not None and data_file is not None:
        raise UsageError("--data and --data-file both given", hint="use one of them")
    if data is not None:
        return json_object(data, "--data")
    if data_file is None:
        return None
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
    return json_object(text, str(data_file))


def _read_items_file(path: Path) -> Iterator[Target]:
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


def _advance_many(
    wf: Workflow,
    store: StateStore,
    targets: list[Target],
    jobs: int,
    wait: float,
    show_progress: bool,
) -> list[PipelineStatus]:
    """Advance each target, ``jobs`` at a time, with a progress bar on a terminal."""

    def one(target: Target) -> PipelineStatus:
        return wf.advance(target[0], store, data=target[1], wait=wait)

    err = console(stderr=True)
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
                for res in pool.map(one, targets):
                    results.append(res)
                    if progress is not None:
                        progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    return results


def _report(results: list[PipelineStatus]) -> None:
    """Each item's status on stdout; counts and the commands to run next on stderr."""
    from ..render import advance_summary, item_line, items_table, status_lines, status_tree

    terminal = out_is_terminal()
    if len(results) == 1:
        if terminal:
            console().print(status_tree(results[0]))
        else:
            typer.echo("\n".join(status_lines(results[0])))
    elif terminal:
        out = console()
        out.print(items_table([res.item for res in results[:50]]))
        if len(results) > 50:
            out.print(f"… and {len(results) - 50} more (treadle status --all)", style="hint")
    else:
        for res in results:
            typer.echo(item_line(res.item))
    for line in advance_summary(results):
        sys.stderr.write(line + "\n")
