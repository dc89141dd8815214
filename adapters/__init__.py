"""Persistence adapters: implementations of the core's store contract (:mod:`fsm.store`).

The contract's names (``Store``, ``AsyncStore``, the records) are re-exported here for
convenience; they are defined in :mod:`fsm.store` and :mod:`fsm.records`.
"""

from adapters.memory import MemoryStore
from adapters.memory_async import AsyncMemoryStore
from adapters.redis import RedisStore
from adapters.redis_async import AsyncRedisStore
from adapters.sqlite import SQLiteStore
from adapters.sqlite_async import AsyncSQLiteStore
from fsm.records import (
    HistoryEntry,
    Loaded,
    LockInfo,
    QuarantineEntry,
    Record,
    SaveResult,
    SaveStatus,
    SessionView,
)
from fsm.store import AsyncStore, Store


def __getattr__(name: str) -> object:
    """The PostgreSQL stores, imported on first use: psycopg is the optional ``postgres``
    extra, and ``import adapters`` must work without it."""
    if name == "PostgresStore":
        from adapters.postgres import PostgresStore

        return PostgresStore
    if name == "AsyncPostgresStore":
        from adapters.postgres_async import AsyncPostgresStore

        return AsyncPostgresStore
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")


__all__ = [
    "AsyncMemoryStore",
    "AsyncPostgresStore",
    "AsyncRedisStore",
    "AsyncSQLiteStore",
    "AsyncStore",
    "HistoryEntry",
    "Loaded",
    "LockInfo",
    "MemoryStore",
    "PostgresStore",
    "QuarantineEntry",
    "Record",
    "RedisStore",
    "SQLiteStore",
    "SaveResult",
    "SaveStatus",
    "SessionView",
    "Store",
]
