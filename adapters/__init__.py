"""Persistence adapters: the :class:`Store` and :class:`AsyncStore` contracts and their
implementations.

``base`` is imported first and imports nothing from :mod:`fsm`, so ``import adapters`` and
``import fsm`` work in either order.
"""

from adapters.memory import MemoryStore
from adapters.memory_async import AsyncMemoryStore
from adapters.redis import RedisStore
from adapters.redis_async import AsyncRedisStore
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
    "AsyncStore",
    "HistoryEntry",
    "Loaded",
    "LockInfo",
    "MemoryStore",
    "QuarantineEntry",
    "Record",
    "RedisStore",
    "SaveResult",
    "SaveStatus",
    "SessionView",
    "Store",
]
