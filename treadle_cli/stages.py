"""Built-in stages, usable from a pipeline file as ``uses: treadle_cli.stages:NAME``."""

from __future__ import annotations

import json
from typing import Any

from .model import Stage, StageContext, StageOutcome, WorkItem

_LIMIT = 200  # characters of each upstream output shown to the reviewer


class Approval(Stage):
    """A pure human gate: it pauses the item for a review and does nothing else.

    ``uses: treadle_cli.stages:approval``. ``with: {prompt: "Publish {item_id}?"}`` sets
    the question; ``{item_id}`` and ``{stage}`` in it are filled in. The review data is
    a short summary of the upstream outputs, so the reviewer sees what they approve.
    """

    def __init__(self, prompt: str = "Approve {stage} for {item_id}?") -> None:
        try:
            prompt.format(item_id="", stage="")
        except (KeyError, IndexError, ValueError) as exc:
            # Caught here, the pipeline fails validation instead of failing every item.
            raise ValueError(
                f"prompt {prompt!r} may only use {{item_id}} and {{stage}}: {exc!r}"
            ) from exc
        self.prompt = prompt

    def execute(self, item: WorkItem, ctx: StageContext) -> StageOutcome:
        prompt = self.prompt.format(item_id=ctx.item_id, stage=ctx.stage)
        return StageOutcome.needs_review(prompt, {k: _brief(v) for k, v in ctx.outputs.items()})


def _brief(value: Any) -> Any:
    """The value itself (as JSON data) when short, else the start of its JSON text."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _LIMIT:
        return text[: _LIMIT - 1] + "…"
    return value if isinstance(value, str) else json.loads(text)  # always JSON-safe


#: The class itself, not an instance, so that ``with:`` can pass it a prompt; the
#: pipeline loader instantiates a Stage subclass once per stage.
approval = Approval
