"""State stores: the protocol, and where state lives.

``open_store(target)`` picks the backend from the target: a file path (or ``sqlite:///PATH``)
is the embedded SQLite default; a ``postgresql://`` or ``postgres://`` URL is a PostgreSQL
server. The PostgreSQL store (and psycopg) is imported only when asked for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .memory import MemoryStateStore
from .operations import TransactionalStore
from .protocol import StateStore
from .sqlite import SqliteStateStore

if TYPE_CHECKING:
    from .postgres import PostgresStateStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | os.PathLike[str]) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def sqlite_path(target: str | os.PathLike[str]) -> str:
    """The file a SQLite target names (``sqlite:///PATH`` or a plain path)."""
    text = os.fspath(target)
    if text.startswith("sqlite://"):
        rest = text[len("sqlite://") :]
        if not rest.startswith("/") or rest == "/":
            raise UsageError(
                f"bad SQLite URL {text!r}", hint="write sqlite:///relative.db or sqlite:////abs.db"
            )
        return rest[1:]
    return text


def display_target(target: str | os.PathLike[str]) -> str:
    """The target fit to print: a URL's password is shown as ***."""
    if is_postgres(target):
        from .postgres import redact

        return redact(str(target))
    return sqlite_path(target)


def database_exists(target: str | os.PathLike[str]) -> bool:
    """Whether the target holds a treadle database (read-only: never creates one)."""
    if is_postgres(target):
        from .postgres import PostgresStateStore

        return PostgresStateStore.exists(str(target))
    path = sqlite_path(target)
    return os.path.isfile(path) and os.path.getsize(path) > 0


def open_store(
    target: str | os.PathLike[str],
    *,
    durability: str = "normal",
    timeout: float = 30.0,
    readonly: bool = False,
) -> StateStore:
    """Open the store a path or URL names (creating it on first write).

    ``readonly=True`` never creates or writes anything: a database that does not exist yet
    reads as empty. ``durability`` is SQLite's ``synchronous`` level ("normal" survives a
    process crash, "full" also power loss); on PostgreSQL commits are as durable as the
    server's settings make them, and "full" insists on ``synchronous_commit = on``.
    """
    if is_postgres(target):
        from .postgres import PostgresStateStore

        return PostgresStateStore.open(
            str(target), durability=durability, timeout=timeout, readonly=readonly
        )
    return SqliteStateStore.open(
        sqlite_path(target), durability=durability, timeout=timeout, readonly=readonly
    )


def __getattr__(name: str) -> Any:
    if name == "PostgresStateStore":
        from .postgres import PostgresStateStore

        return PostgresStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MemoryStateStore",
    "PostgresStateStore",
    "SqliteStateStore",
    "StateStore",
    "TransactionalStore",
    "database_exists",
    "display_target",
    "is_postgres",
    "open_store",
]

if TYPE_CHECKING:
    # mypy checks here that every backend still satisfies the protocol.
    def _conforms(
        memory: MemoryStateStore, sqlite: SqliteStateStore, postgres: PostgresStateStore
    ) -> list[StateStore]:
        return [memory, sqlite, postgres]
