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
