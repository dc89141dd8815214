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

__all__ = [
    "AsyncMemoryStore",
    "AsyncRedisStore",
    "AsyncSQLiteStore",
    "AsyncStore",
    "HistoryEntry",
    "Loaded",
    "LockInfo",
    "MemoryStore",
    "QuarantineEntry",
    "Record",
    "RedisStore",
    "SQLiteStore",
    "SaveResult",
    "SaveStatus",
    "SessionView",
    "Store",
]
