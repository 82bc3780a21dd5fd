"""advance: claim ready stages, run their code, record outcomes, repeat until nothing is ready.

No transaction is open while stage code runs: a run is claim (one transaction), the
stage's code, then finish (another). Claims are compare-and-set, so two processes never
run one stage at once; a claim whose owner died on this host is taken over at once.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .errors import UsageError
from .events import EventBus
from .execution import (  # noqa: F401  (validate_item_id is part of this module's surface)
    _Attempt,
    _execute,
    _json_problem,
    failed_attempt,
    review_request,
    validate_item_id,
)
from .model import (
    DONE_STATUSES,
    Clock,
    EventKind,
    Item,
    OutcomeKind,
    StageChange,
    StageContext,
    StageOutcome,
    StageRecord,
    StageStatus,
    SubtaskChange,
    SubtaskRecord,
    SubtaskStatus,
    WorkItem,
    fanout_stage_status,
)
from .owners import _proc_start, current_owner, owner_is_dead  # noqa: F401
from .pipeline import Pipeline, StageSpec
from .status import PipelineStatus, load_status
from .store.protocol import ClaimRequest, EventSpec, StateStore

log = logging.getLogger("treadle")

#: How long a claim by a process on another host is trusted without news from it.
DEFAULT_LEASE = 3600.0
MAX_PARALLEL_STAGES = 8


# ------------------------------------------------------------------- the engine


_Next = tuple[StageRecord, str]  # a stage claimed for this run, and its claim token


@dataclass
class _Run:
    item: Item
    deadline: datetime
    stages: dict[str, StageRecord] = field(default_factory=dict)  # the loop's latest read


class Engine:
    """Advances items of one pipeline in one store. Built per call by ``Workflow``."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: StateStore,
        clock: Clock,
        bus: EventBus,
        lease: float = DEFAULT_LEASE,
        pool: Executor | None = None,
        renewed: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.clock = clock
        self.bus = bus
        self.lease = lease
        # A worker's claims are renewed by its heartbeat: the lease is just the silence
        # after which they may be taken over, whatever the stage's timeout.
        self.renewed = renewed
        self._pool = pool
        self.owner = current_owner()
        self._ancestors = self._compute_ancestors()
        self._dependents: dict[str, list[str]] = {n: [] for n in pipeline.order}
        for name in pipeline.order:
            for dep in pipeline.stages[name].needs:
                self._dependents[dep].append(name)

    @property
    def pool(self) -> Executor:
        """Threads for subtasks: the workflow's shared pool, or one of our own."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="treadle-subtask")
        return self._pool

    def _compute_ancestors(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.pipeline.order:  # topological: parents are done first
            seen: dict[str, None] = {}
            for dep in self.pipeline.stages[name].needs:
                for a in (*out[dep], dep):
                    seen[a] = None
            out[name] = list(seen)
        return out

    # ---------------------------------------------------------------- items

    def ensure_item(self, item: WorkItem | str, data: Any = None) -> Item:
        """Register the item if new; bring its stages in line with the pipeline."""
        if isinstance(item, str):
            item_id, payload = item, data
        else:
            item_id, payload = item.id, item.data
        validate_item_id(item_id)
        payload = {} if payload is None else payload
        if not isinstance(payload, dict):
            raise UsageError(
                f"item data must be a JSON object, not {type(payload).__name__}",
                hint='pass an object such as {"path": "docs/a.md"}',
            )
        if (problem := _json_problem(payload)) is not None:
            raise UsageError(f"item data is not JSON-serializable: {problem}")
        p = self.pipeline
        rec = self.store.get_item(item_id)
        now = self.clock.now()
        if rec is None:
            with self.bus.ordered():
                rec, events = self.store.register_item(
                    item_id,
                    p.name,
                    payload,
                    p.path,
                    p.hash,
                    p.order,
                    now,
                    durability=p.durability,
                )
                self.bus.publish(events)
        if rec.pipeline != p.name:
            raise UsageError(
                f"item {item_id!r} belongs to pipeline {rec.pipeline!r}, not {p.name!r}",
                hint="advance it with its own pipeline file",
            )
        # sync_stages records the hash last, so a matching hash means the rows match too.
        if (rec.pipeline_hash, rec.pipeline_path, rec.durability) != (p.hash, p.path, p.durability):
            with self.bus.ordered():
                self.bus.publish(
                    self.store.sync_stages(
                        item_id, p.order, p.path, p.hash, now, durability=p.durability
                    )
                )
        return Item(item_id, rec.data)

    # -------------------------------------------------------------- advance

    def advance(
        self, item: WorkItem | str, *, data: Any = None, wait: float = 60.0
    ) -> PipelineStatus:
        run = _Run(
            self.ensure_item(item, data), self.clock.now() + timedelta(seconds=max(wait, 0.0))
        )
        while True:
            stages = run.stages = {s.name: s for s in self.store.get_stages(run.item.id)}
            ready, next_due = self._ready(stages)
            if ready:
                self._run_all(run, ready)
                continue
            now = self.clock.now()
            if next_due is not None and next_due <= run.deadline:
                self.clock.sleep((next_due - now).total_seconds())
                continue
            break
        return load_status(self.store, run.item.id)

    def _claimable_running(self, rec: StageRecord) -> bool:
        dead = owner_is_dead(rec.owner_host, rec.owner_pid, rec.owner_started)
        if dead is None:  # another host: trust its lease
            return rec.lease_until is not None and rec.lease_until <= self.clock.now()
        return dead

    def _ready(self, stages: dict[str, StageRecord]) -> tuple[list[StageRecord], datetime | None]:
        now = self.clock.now()
        ready: list[StageRecord] = []
        next_due: datetime | None = None
        for name in self.pipeline.order:
            rec = stages.get(name)
            if rec is None:
                continue
            spec = self.pipeline.stages[name]
            if any(stages[d].status not in DONE_STATUSES for d in spec.needs if d in stages):
                continue
            if rec.status == StageStatus.PENDING:
                if rec.next_attempt_at is not None and rec.next_attempt_at > now:
                    if next_due is None or rec.next_attempt_at < next_due:
                        next_due = rec.next_attempt_at
                    continue
                ready.append(rec)
            elif rec.status == StageStatus.RUNNING and self._claimable_running(rec):
                ready.append(rec)
        return ready, next_due

    def _run_all(self, run: _Run, ready: list[StageRecord]) -> None:
        if len(ready) == 1:
            self._run_stage(run, ready[0])
            return
        with ThreadPoolExecutor(
            max_workers=min(len(ready), MAX_PARALLEL_STAGES), thread_name_prefix="treadle-stage"
        ) as pool:
            for f in [pool.submit(self._run_stage, run, rec) for rec in ready]:
                f.result()

    def _lease_until(self, spec: StageSpec) -> datetime:
        seconds = spec.timeout + 60.0 if spec.timeout and not self.renewed else self.lease
        return self.clock.now() + timedelta(seconds=seconds)

    def _context(
        self,
        run: _Run,
        spec: StageSpec,
        attempt: int,
        subtask: str | None = None,
        subtask_data: Any = None,
        with_review: bool = False,
    ) -> StageContext:
        wanted = self._ancestors[spec.name]
        outputs: dict[str, Any] = {}
        for name in wanted:  # upstream stages are done, so the loop's read is current
            rec = run.stages.get(name)
            if rec is not None and rec.status in DONE_STATUSES:
                outputs[name] = rec.output
        review = self.store.last_decision(run.item.id, spec.name, subtask) if with_review else None
        return StageContext(
            item_id=run.item.id,
            stage=spec.name,
            attempt=attempt,
            data=run.item.data,
            outputs=outputs,
            subtask=subtask,
            subtask_data=subtask_data,
            review=review,
            log=logging.getLogger(f"treadle.stage.{spec.name}"),
        )

    def _run_stage(self, run: _Run, expected: StageRecord) -> None:
        spec = self.pipeline.stages[expected.name]
        claim = uuid.uuid4().hex
        with self.bus.ordered():
            got = self.store.claim_stage(
                run.item.id,
                spec.name,
                expected=expected,
                claim=claim,
                owner=self.owner,
                now=self.clock.now(),
                lease_until=self._lease_until(spec),
            )
            if got is None:
                return  # another process claimed it first
            rec, events = got
            self.bus.publish(events)
        self._drive(run, rec, claim)

    def run_claimed(self, rec: StageRecord) -> None:
        """Run a stage claimed elsewhere (a worker's ``claim_ready``), and any stage its
        finish hands on, as advance would; retries due later are left for later."""
        item = self.store.get_item(rec.item_id)
        if item is None or rec.claim is None:
            return
        run = _Run(Item(item.id, item.data), self.clock.now())
        run.stages = {s.name: s for s in self.store.get_stages(item.id)}
        self._drive(run, rec, rec.claim)

    def _drive(self, run: _Run, rec: StageRecord, claim: str) -> None:
        nxt: _Next | None = (rec, claim)
        while nxt is not None:  # a finished stage may hand us the next one of its chain
            rec, claim = nxt
            try:
                nxt = self._work(run, self.pipeline.stages[rec.name], rec, claim)
            except BaseException:
                # Ctrl-C or a store error mid-run: hand the stage back rather than leave it
                # "running" under an owner that is still alive.
                self._release(run, rec.name, claim)
                raise

    def _release(self, run: _Run, name: str, claim: str) -> None:
        try:
            self.store.finish_stage(
                run.item.id,
                name,
                claim=claim,
                change=StageChange(StageStatus.PENDING),
                events=[],
                now=self.clock.now(),
            )
        except Exception:  # the store is failing: the claim dies with this process instead
            log.warning("%s %s: could not release the stage", run.item.id, name, exc_info=True)

    def _work(self, run: _Run, spec: StageSpec, rec: StageRecord, claim: str) -> _Next | None:
        if rec.fanned_out:
            return self._run_fanout(run, spec, rec, claim)
        ctx = self._context(run, spec, rec.attempts, with_review=rec.attempt_base > 0)
        try:
            outcome = _execute(spec, run.item, ctx)
        except _Attempt as failure:
            self._attempt_failed(run, spec, rec, claim, failure)
            return None
        return self._apply(run, spec, rec, claim, outcome)

    def _successor(self, run: _Run, name: str) -> StageRecord | None:
        """The one stage that ``name`` finishing makes ready, if exactly one (else the loop
        runs them, in parallel)."""
        now = self.clock.now()
        found: list[StageRecord] = []
        for after in self._dependents[name]:
            rec = run.stages.get(after)
            if rec is None or rec.status != StageStatus.PENDING:
                continue
            if rec.next_attempt_at is not None and rec.next_attempt_at > now:
                continue
            needs = self.pipeline.stages[after].needs
            if all(
                d == name or run.stages[d].status in DONE_STATUSES for d in needs if d in run.stages
            ):
                found.append(rec)
        return found[0] if len(found) == 1 else None

    def _finish(
        self,
        run: _Run,
        name: str,
        claim: str,
        change: StageChange,
        events: list[EventSpec],
        chain: bool = False,
    ) -> _Next | None:
        """Record a result; with ``chain``, claim the next stage in the same transaction."""
        nxt = self._successor(run, name) if chain else None
        item_id, now = run.item.id, self.clock.now()
        with self.bus.ordered():
            if nxt is None:
                out = self.store.finish_stage(
                    item_id, name, claim=claim, change=change, events=events, now=now
                )
                claimed = None
            else:
                request = ClaimRequest(
                    nxt,
                    uuid.uuid4().hex,
                    self.owner,
                    self._lease_until(self.pipeline.stages[nxt.name]),
                )
                got = self.store.finish_and_claim(
                    item_id,
                    name,
                    claim=claim,
                    change=change,
                    events=events,
                    now=now,
                    then=request,
                )
                out, claimed = got if got is not None else (None, None)
            self.bus.publish(out)
        if out is None:
            log.warning("%s %s: claim taken over by another process; result dropped", item_id, name)
            return None
        if change.status in DONE_STATUSES and name in run.stages:
            # What the next stage's context reads as this stage's output.
            run.stages[name] = replace(run.stages[name], status=change.status, output=change.output)
        return (claimed, claimed.claim) if claimed is not None and claimed.claim else None

    def _apply(
        self, run: _Run, spec: StageSpec, rec: StageRecord, claim: str, outcome: StageOutcome
    ) -> _Next | None:
        name = spec.name
        kind = outcome.kind
        if kind == OutcomeKind.COMPLETE:
            return self._completed(run, spec, claim, outcome.output)
        if kind == OutcomeKind.NEEDS_REVIEW:
            prompt = outcome.prompt or f"Review {name} of {run.item.id}"
            change, events = review_request(StageChange, prompt, outcome.data)
            self._finish(run, name, claim, change, events)
        elif kind == OutcomeKind.SKIP:
            return self._finish(
                run,
                name,
                claim,
                StageChange(StageStatus.SKIPPED, clear=frozenset({"error", "traceback"})),
                [(EventKind.STAGE_SKIPPED, None, {"reason": outcome.reason})],
                chain=True,
            )
        elif kind == OutcomeKind.FAN_OUT:
            with self.bus.ordered():
                fanned = self.store.add_subtasks(
                    run.item.id, name, claim=claim, subtasks=outcome.subtasks, now=self.clock.now()
                )
                self.bus.publish(fanned)
            if fanned is None:
                return None
            return self._run_fanout(run, spec, rec, claim)
        return None

    def _completed(self, run: _Run, spec: StageSpec, claim: str, output: Any) -> _Next | None:
        clear = frozenset({"error", "traceback", "next_attempt_at"})
        if spec.review:
            prompt = f"Review the output of {spec.name} for {run.item.id}"
            self._finish(
                run,
                spec.name,
                claim,
                StageChange(
                    StageStatus.AWAITING_REVIEW,
                    output=output,
                    review_prompt=prompt,
                    review_data=output,
                    clear=clear | {"output", "review_data"},
                ),
                [(EventKind.REVIEW_REQUIRED, None, {"prompt": prompt})],
            )
            return None
        return self._finish(
            run,
            spec.name,
            claim,
            StageChange(StageStatus.COMPLETED, output=output, clear=clear | {"output"}),
            [(EventKind.STAGE_COMPLETED, None, None)],
            chain=True,
        )

    def _attempt_failed(
        self, run: _Run, spec: StageSpec, rec: StageRecord, claim: str, failure: _Attempt
    ) -> None:
        used = rec.attempts - rec.attempt_base
        change, events = failed_attempt(StageChange, failure, used, spec.retry, self.clock.now())
        self._finish(run, spec.name, claim, change, events)

    # -------------------------------------------------------------- fan-out

    def _run_fanout(self, run: _Run, spec: StageSpec, rec: StageRecord, claim: str) -> _Next | None:
        item_id = run.item.id
        while True:
            now = self.clock.now()
            subs = self.store.get_subtasks(item_id, spec.name)
            # We hold the stage's claim, so a subtask still marked running is a dead run's.
            ready = [
                s
                for s in subs
                if s.status == SubtaskStatus.RUNNING
                or (
                    s.status == SubtaskStatus.PENDING
                    and (s.next_attempt_at is None or s.next_attempt_at <= now)
                )
            ]
            if ready:
                workers = max(1, min(spec.concurrency, len(ready)))
                if workers == 1:
                    held = [self._run_subtask(run, spec, s, claim) for s in ready]
                else:
                    held = self._run_bounded(run, spec, ready, claim, workers)
                if not any(held):
                    # Another process took the stage over: it runs the subtasks now, and
                    # spinning on claims that can only fail would never end.
                    log.warning(
                        "%s %s: claim taken over by another process; stopping", item_id, spec.name
                    )
                    return None
                continue
            later = [
                s.next_attempt_at
                for s in subs
                if s.status == SubtaskStatus.PENDING and s.next_attempt_at is not None
            ]
            next_due = min(later) if later else None
            if next_due is not None and next_due <= run.deadline:
                self.clock.sleep((next_due - now).total_seconds())
                continue
            break
        return self._settle_fanout(run, spec, subs, claim, next_due)

    def _run_bounded(
        self, run: _Run, spec: StageSpec, ready: list[SubtaskRecord], claim: str, workers: int
    ) -> list[bool]:
        """Run subtasks on the shared pool: ``workers`` loops, each taking the next one."""
        queue = iter(ready)
        lock = threading.Lock()

        def worker() -> list[bool]:
            held: list[bool] = []
            while True:
                with lock:
                    sub = next(queue, None)
                if sub is None:
                    return held
                held.append(self._run_subtask(run, spec, sub, claim))

        futures = [self.pool.submit(worker) for _ in range(workers)]
        return [h for f in futures for h in f.result()]

    def _settle_fanout(
        self,
        run: _Run,
        spec: StageSpec,
        subs: list[SubtaskRecord],
        claim: str,
        next_due: datetime | None,
    ) -> _Next | None:
        status = fanout_stage_status(s.status for s in subs)
        name = spec.name
        if status == StageStatus.COMPLETED:
            return self._completed(run, spec, claim, {s.name: s.output for s in subs})
        if status in (StageStatus.PENDING, StageStatus.RUNNING):
            self._finish(
                run, name, claim, StageChange(StageStatus.PENDING, next_attempt_at=next_due), []
            )
        elif status == StageStatus.AWAITING_REVIEW:
            waiting = [s.name for s in subs if s.status == SubtaskStatus.AWAITING_REVIEW]
            self._finish(
                run,
                name,
                claim,
                StageChange(
                    StageStatus.AWAITING_REVIEW, clear=frozenset({"review_prompt", "review_data"})
                ),
                [],
            )
            log.debug("%s %s waits on subtask reviews: %s", run.item.id, name, waiting)
        else:
            bad = [s for s in subs if s.status in (SubtaskStatus.FAILED, SubtaskStatus.REJECTED)]
            error = f"{len(bad)} of {len(subs)} subtasks {status.value}: " + ", ".join(
                f"{s.name} ({s.error})" for s in bad
            )
            # A rejection was logged when it was decided; a failure is news.
            events: list[EventSpec] = (
                []
                if status == StageStatus.REJECTED
                else [
                    (
                        EventKind.STAGE_FAILED,
                        None,
                        {"error": error, "subtasks": [s.name for s in bad]},
                    )
                ]
            )
            self._finish(run, name, claim, StageChange(status, error=error), events)
        return None

    def _run_subtask(self, run: _Run, spec: StageSpec, sub: SubtaskRecord, claim: str) -> bool:
        """Run one attempt of a subtask; False when the stage's claim is no longer ours."""
        item_id, name = run.item.id, spec.name
        with self.bus.ordered():
            got = self.store.claim_subtask(
                item_id, name, sub.name, claim=claim, now=self.clock.now(), expected=sub
            )
            if got is None:
                return False
            sub, events = got
            self.bus.publish(events)
        ctx = self._context(
            run,
            spec,
            sub.attempts,
            subtask=sub.name,
            subtask_data=sub.data,
            with_review=sub.attempt_base > 0,
        )
        change: SubtaskChange
        evs: list[EventSpec]
        try:
            outcome = _execute(spec, run.item, ctx)
            if outcome.kind in (OutcomeKind.FAN_OUT, OutcomeKind.SKIP):
                raise _Attempt(f"ValueError: a subtask cannot return {outcome.kind.value}()")
        except _Attempt as failure:
            used = sub.attempts - sub.attempt_base
            change, evs = failed_attempt(
                SubtaskChange, failure, used, spec.retry, self.clock.now(), sub.name
            )
        else:
            if outcome.kind == OutcomeKind.NEEDS_REVIEW:
                prompt = outcome.prompt or f"Review {name}/{sub.name} of {item_id}"
                change, evs = review_request(SubtaskChange, prompt, outcome.data, sub.name)
            else:
                change = SubtaskChange(
                    SubtaskStatus.COMPLETED,
                    output=outcome.output,
                    clear=frozenset({"error", "traceback", "output"}),
                )
                evs = [(EventKind.SUBTASK_COMPLETED, sub.name, None)]
        with self.bus.ordered():
            out = self.store.finish_subtask(
                item_id,
                name,
                sub.name,
                claim=claim,
                change=change,
                events=evs,
                now=self.clock.now(),
            )
            self.bus.publish(out)
        return out is not None
