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
from .events import Subscription
from .pipeline import Pipeline, StageSpec
from .status import PipelineStatus, StageView
from .store import MemoryStateStore, SqliteStateStore, StateStore
from .workflow import Workflow, WorkflowBuilder

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
