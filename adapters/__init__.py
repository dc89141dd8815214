"""Persistence adapters: the :class:`Store` contract and its implementations.

``base`` is imported first and imports nothing from :mod:`fsm`, so ``import adapters`` and
``import fsm`` work in either order.
"""

from adapters.base import (
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
from adapters.redis import RedisStore

__all__ = [
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
