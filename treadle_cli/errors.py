"""The treadle error tree.

Every error a user can cause carries the exit code the CLI maps it to::

    TreadleError (exit 2)
    ├── UsageError (2)               bad arguments, bad JSON, bad item id
    │   ├── UnknownItemError (2)     item_id=
    │   └── UnknownStageError (2)    item_id=, stage=
    ├── PipelineError (2)            path=, problems= (every problem, located)
    │   ├── CycleError (2)           stages=
    │   └── StageImportError (2)     path=
    ├── ConflictError (3)            the transition is not allowed in the current state
    └── StoreError (4)               path=
        ├── DatabaseLockedError (4)
        └── IncompatibleDatabaseError (4)  foreign file or newer schema

A stage that fails is a *recorded outcome*, never one of these.
"""

from __future__ import annotations


class TreadleError(Exception):
    """Root of every error treadle raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(TreadleError):
    """Invalid input from the caller: arguments, JSON, identifiers."""

    exit_code = 2


class UnknownItemError(UsageError):
    def __init__(self, item_id: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"unknown item {item_id!r}",
            hint=hint or "check the id with `treadle status --all`",
        )
        self.item_id = item_id


class UnknownStageError(UsageError):
    def __init__(self, item_id: str, stage: str, *, known: list[str] | None = None) -> None:
        hint = f"stages are: {', '.join(known)}" if known else "check `treadle status ITEM`"
        super().__init__(f"item {item_id!r} has no stage {stage!r}", hint=hint)
        self.item_id = item_id
        self.stage = stage


class PipelineError(TreadleError):
    """A pipeline definition is invalid; ``problems`` lists every located problem."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        problems: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.problems = problems or [message]


class CycleError(PipelineError):
    def __init__(self, stages: list[str], *, path: str | None = None, where: str = "") -> None:
        loop = " -> ".join([*stages, stages[0]]) if stages else ""
        super().__init__(
            f"{where}dependency cycle between stages {loop}",
            path=path,
            hint="remove one of these `needs` so the stages form a DAG",
        )
        self.stages = stages


class StageImportError(PipelineError):
    pass


class ConflictError(TreadleError):
    """The requested transition is not allowed in the current state."""

    exit_code = 3


class StoreError(TreadleError):
    """The database cannot be used."""

    exit_code = 4

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class DatabaseLockedError(StoreError):
    pass


class IncompatibleDatabaseError(StoreError):
    pass
