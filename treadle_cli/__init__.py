"""treadle: a persistent, resumable, human-in-the-loop workflow engine."""

from .errors import (
    ConflictError,
    CycleError,
    DatabaseLockedError,
    IncompatibleDatabaseError,
    PipelineError,
    StageImportError,
    StoreError,
    TreadleError,
    UnknownItemError,
    UnknownStageError,
    UsageError,
)
from .model import (
    DecisionKind,
    Event,
    EventKind,
    Item,
    ItemState,
    RetryPolicy,
    ReviewData,
    Stage,
    StageContext,
    StageOutcome,
    StageStatus,
    SubTask,
    SubtaskStatus,
    WorkItem,
)

__version__ = "0.1.0"
# Heavier pieces load on first use, so `treadle approve` starts fast.
_LAZY = {
    "Subscription": "events",
    "Pipeline": "pipeline",
    "StageSpec": "pipeline",
    "PipelineStatus": "status",
    "StageView": "status",
    "MemoryStateStore": "store",
    "SqliteStateStore": "store",
    "StateStore": "store",
    "Workflow": "workflow",
    "WorkflowBuilder": "workflow",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'treadle_cli' has no attribute {name!r}")


__all__ = [
    "ConflictError",
    "CycleError",
    "DatabaseLockedError",
    "DecisionKind",
    "Event",
    "EventKind",
    "IncompatibleDatabaseError",
    "Item",
    "ItemState",
    "MemoryStateStore",
    "Pipeline",
    "PipelineError",
    "PipelineStatus",
    "RetryPolicy",
    "ReviewData",
    "SqliteStateStore",
    "Stage",
    "StageContext",
    "StageImportError",
    "StageOutcome",
    "StageSpec",
    "StageStatus",
    "StageView",
    "StateStore",
    "StoreError",
    "SubTask",
    "Subscription",
    "SubtaskStatus",
    "TreadleError",
    "UnknownItemError",
    "UnknownStageError",
    "UsageError",
    "WorkItem",
    "Workflow",
    "WorkflowBuilder",
    "__version__",
]
