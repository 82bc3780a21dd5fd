"""Stage code for the CLI tests' fixture pipelines (copied next to the YAML in tmp_path).

Deterministic and fast: nothing sleeps, nothing reads the clock. Behaviour is steered by the
item's data, so one module serves every fixture pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treadle_cli.model import StageContext, StageOutcome, SubTask, WorkItem


def parse(item: WorkItem, ctx: StageContext) -> dict[str, Any]:
    """Complete with a small output derived from the item's data."""
    return {"title": item.data.get("title", item.id), "keys": sorted(item.data)}


def gate(item: WorkItem, ctx: StageContext) -> StageOutcome:
    """A human gate whose prompt repeats a previous rejection's reason."""
    prompt = f"Publish {ctx.item_id}?"
    if ctx.review is not None and ctx.review.reason:
        prompt = f"Previously rejected: {ctx.review.reason}. {prompt}"
    return StageOutcome.needs_review(prompt, {"title": ctx.outputs["parse"]["title"]})


def publish(item: WorkItem, ctx: StageContext) -> dict[str, Any]:
    """Complete with what the review stage handed downstream (an edited output if given)."""
    return {"reviewed": ctx.outputs.get("review")}


def split(item: WorkItem, ctx: StageContext) -> StageOutcome:
    """Fan out into a, b, c; ``b`` fails for good until the file ``data["gate"]`` exists."""
    if ctx.subtask is None:
        return StageOutcome.fan_out([SubTask("a"), SubTask("b"), SubTask("c")])
    if ctx.subtask == "b" and not Path(item.data["gate"]).exists():
        raise ValueError(f"gate file {item.data['gate']} is missing")
    return StageOutcome.complete({"sub": ctx.subtask, "attempt": ctx.attempt})


def explode(item: WorkItem, ctx: StageContext) -> None:
    """Always raises."""
    raise RuntimeError("kaboom")


def flaky(item: WorkItem, ctx: StageContext) -> dict[str, Any]:
    """Fails its first attempt, succeeds after."""
    if ctx.attempt == 1:
        raise ConnectionError("busy, try later")
    return {"attempt": ctx.attempt}
