"""The library's front door: ``Workflow.from_yaml(path)`` or ``Workflow.builder()...build()``."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import decisions
from .engine import DEFAULT_LEASE, Engine
from .errors import PipelineError, UnknownItemError, UsageError
from .events import EventBus, Subscription
from .model import Clock, Event, Item, RetryPolicy, Stage, SystemClock, WorkItem
from .pipeline import Pipeline, StageSpec, build_pipeline, load_pipeline
from .status import PipelineStatus, load_status
from .store.protocol import StateStore

#: Threads shared by every fan-out of a workflow; each stage's `concurrency` bounds its own.
SUBTASK_THREADS = 32


class WorkflowBuilder:
    """Collects stages and dependencies; ``build()`` validates them into a Workflow."""

    def __init__(self, name: str = "default") -> None:
        self._name = name
        self._specs: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._duplicates: list[str] = []
        self._deps: list[tuple[str, str]] = []

    def stage(
        self,
        name: str,
        impl: Stage | Callable[..., Any],
        *,
        needs: str | Sequence[str] = (),
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        concurrency: int = 4,
        review: bool = False,
    ) -> WorkflowBuilder:
        """Add a stage: a ``Stage`` instance or a function ``(item, ctx)``."""
        if name in self._specs:
            self._duplicates.append(name)
        else:
            self._order.append(name)
        if isinstance(impl, type) and issubclass(impl, Stage):
            impl = impl()
        if isinstance(impl, Stage) and not impl.name:
            impl.name = name
        self._specs[name] = {
            "impl": impl,
            "retry": retry or RetryPolicy(),
            "timeout": timeout,
            "concurrency": concurrency,
            "review": review,
        }
        for dep in [needs] if isinstance(needs, str) else needs:
            self._deps.append((name, dep))
        return self

    def dependency(self, stage: str, needs: str) -> WorkflowBuilder:
        """``stage`` runs after ``needs`` completes."""
        self._deps.append((stage, needs))
        return self

    def build(self, *, clock: Clock | None = None) -> Workflow:
        needs: dict[str, list[str]] = {n: [] for n in self._order}
        orphans = []
        for stage, dep in self._deps:
            if stage in needs:
                if dep not in needs[stage]:
                    needs[stage].append(dep)
            else:
                orphans.append((stage, dep))
        specs = [StageSpec(name=n, needs=tuple(needs[n]), **self._specs[n]) for n in self._order]
        specs += [StageSpec(name=n, impl=self._specs[n]["impl"]) for n in self._duplicates]
        if orphans:
            names = ", ".join(sorted({stage for stage, _ in orphans}))
            raise PipelineError(
                f"dependency declared for unknown stage(s): {names}",
                hint="add the stage with .stage(name, impl) first",
            )
        canonical = "\n".join(f"{s.name}<-{','.join(s.needs)}" for s in specs)
        digest = hashlib.sha256(f"{self._name}\n{canonical}".encode()).hexdigest()
        pipeline = build_pipeline(self._name, specs, hash=digest)
        return Workflow(pipeline, clock=clock)


class Workflow:
    """A pipeline bound to a clock and an event bus; the store is passed to each call."""

    def __init__(
        self, pipeline: Pipeline, *, clock: Clock | None = None, lease: float = DEFAULT_LEASE
    ) -> None:
        self.pipeline = pipeline
        self.clock: Clock = clock or SystemClock()
        self.bus = EventBus()
        self.lease = lease
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @staticmethod
    def builder(name: str = "default") -> WorkflowBuilder:
        return WorkflowBuilder(name)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], *, clock: Clock | None = None) -> Workflow:
        """Load and validate a pipeline file (every problem reported at once)."""
        return cls(load_pipeline(path), clock=clock)

    @property
    def name(self) -> str:
        return self.pipeline.name

    def _subtask_pool(self) -> ThreadPoolExecutor:
        # One pool for the workflow's lifetime: a pool per fan-out costs more than no-op work.
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=SUBTASK_THREADS, thread_name_prefix="treadle-subtask"
                )
            return self._pool

    def _engine(self, store: StateStore) -> Engine:
        return Engine(
            self.pipeline, store, self.clock, self.bus, self.lease, pool=self._subtask_pool()
        )

    def advance(
        self, item: WorkItem | str, store: StateStore, *, data: Any = None, wait: float = 60.0
    ) -> PipelineStatus:
        """Register ``item`` if new, then run every ready stage until nothing is ready.

        A failed, rejected or waiting stage is a state in the result, never an exception.
        Retries due within ``wait`` seconds happen in this call; later ones are left.
        """
        return self._engine(store).advance(item, data=data, wait=wait)

    def submit(self, item: WorkItem | str, store: StateStore, *, data: Any = None) -> Item:
        """Register ``item`` (if new) without running anything: a worker will."""
        return self._engine(store).ensure_item(item, data)

    def approve_review(
        self,
        item_id: str,
        stage: str,
        store: StateStore,
        *,
        by: str | None = None,
        comment: str | None = None,
        output: Any = None,
        subtask: str | None = None,
    ) -> decisions.DecisionResult:
        """Approve what awaits review; ``output`` replaces what downstream stages see."""
        return decisions.approve(
            store,
            item_id,
            stage,
            subtask=subtask,
            by=by,
            comment=comment,
            output=output,
            clock=self.clock,
            bus=self.bus,
        )

    def reject_review(
        self,
        item_id: str,
        stage: str,
        reason: str,
        store: StateStore,
        *,
        by: str | None = None,
        subtask: str | None = None,
    ) -> decisions.DecisionResult:
        """Reject what awaits review; a reason is required."""
        return decisions.reject(
            store, item_id, stage, reason, subtask=subtask, by=by, clock=self.clock, bus=self.bus
        )

    def retry(self, item_id: str, stage: str, store: StateStore) -> list[Event]:
        """Make a failed or rejected stage pending again; completed subtasks stay done."""
        return decisions.retry(store, item_id, stage, clock=self.clock, bus=self.bus)

    def status(self, item_id: str, store: StateStore) -> PipelineStatus:
        return load_status(store, item_id)

    def is_complete(self, item_id: str, store: StateStore) -> bool:
        return load_status(store, item_id).is_complete()

    def subscribe(
        self, listener: Callable[[Event], None] | None = None
    ) -> Subscription | Callable[[], None]:
        """Receive events as they commit: pass a callback (returns an unsubscribe
        function), or nothing for a :class:`Subscription` to read from."""
        if listener is None:
            return Subscription(self.bus)
        return self.bus.add(listener)


def advance_registered(
    item_id: str, store: StateStore, *, wait: float = 60.0, clock: Clock | None = None
) -> PipelineStatus:
    """Advance an item with the pipeline file it was registered with (its stored path).

    UnknownItemError if there is no such item; UsageError if a library workflow registered
    it (there is no file to load: advance it from that code) or the file is gone.
    """
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
            hint="restore it, or advance the item with a pipeline file that has its stages",
        )
    return Workflow.from_yaml(rec.pipeline_path, clock=clock).advance(item_id, store, wait=wait)
