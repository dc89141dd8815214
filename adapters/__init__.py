"""Persistence adapters: the :class:`Store` and :class:`AsyncStore` contracts and their
implementations.

``base`` is imported first and imports nothing from :mod:`fsm`, so ``import adapters`` and
``import fsm`` work in either order.
"""

from adapters.base import (
    AsyncStore,
    HistoryEntry,
    Loaded,
    LockInfo,
    QuarantineEntry,
    Record,
    SaveResult,
    SaveStatus,
    SessionView,
    Store,
)
from adapters.memory import MemoryStore
from adapters.memory_async import AsyncMemoryStore
from adapters.redis import RedisStore
from adapters.redis_async import AsyncRedisStore

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
