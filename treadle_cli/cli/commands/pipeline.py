"""Pipeline files: ``validate`` checks one, ``graph`` draws its DAG."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from .. import output
from ..app import JsonOpt, app, command, console, out_is_terminal

PipelineArg = Annotated[Path, typer.Argument(metavar="PIPELINE", help="The pipeline YAML file.")]


class GraphFormat(enum.StrEnum):
    tree = "tree"
    mermaid = "mermaid"
    dot = "dot"


@app.command()
@command
def validate(
    ctx: typer.Context,
    pipeline: PipelineArg,
    json_output: JsonOpt = False,
) -> None:
    """Check a pipeline file: every problem is reported with its file and line.

    Example: treadle validate pipelines/document_review.yaml
    """
    from ...workflow import Workflow

    p = Workflow.from_yaml(pipeline).pipeline
    if json_output:
        output.print_validate(p)
        return
    typer.echo(f"ok: {p.name} ({len(p.stages)} stages: {' → '.join(p.order)})")


@app.command()
@command
def graph(
    ctx: typer.Context,
    pipeline: PipelineArg,
    fmt: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="tree, mermaid or dot.")
    ] = GraphFormat.tree,
    json_output: JsonOpt = False,
) -> None:
    """Draw a pipeline's DAG as a tree, a Mermaid chart or Graphviz dot.

    Example: treadle graph pipelines/document_review.yaml --format dot | dot -Tpng > dag.png
    """
    from ...workflow import Workflow
    from ..render import graph_dot, graph_mermaid, graph_tree

    p = Workflow.from_yaml(pipeline).pipeline
    needs = {name: spec.needs for name, spec in p.stages.items()}
    if json_output:
        output.print_graph(p)
    elif fmt == GraphFormat.mermaid:
        typer.echo(graph_mermaid(p.order, needs))
    elif fmt == GraphFormat.dot:
        typer.echo(graph_dot(p.name, p.order, needs))
    elif out_is_terminal():
        console().print(graph_tree(p.name, p.order, needs))
    else:
        for name in p.order:
            typer.echo(f"{name}" + (f" <- {', '.join(needs[name])}" if needs[name] else ""))
