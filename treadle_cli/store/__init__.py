"""State stores: the protocol, an in-memory store and the SQLite default."""

from .base import StateStore, TransactionalStore
from .memory import MemoryStateStore
from .sqlite import SqliteStateStore

__all__ = ["MemoryStateStore", "SqliteStateStore", "StateStore", "TransactionalStore"]
