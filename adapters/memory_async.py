"""AsyncMemoryStore: the :class:`~fsm.store.AsyncStore` contract on a :class:`MemoryStore`.

Every method delegates to the wrapped memory store, which never blocks (one short mutex, no
I/O), so there is nothing to await and no second copy of its logic. The wrapped store is
``.sync``: the synchronous operator toolkit (``fsm ls``, ``check``, ``backup``) and sync tests
work on the very data the async engine writes.

>>> import asyncio
>>> store = AsyncMemoryStore()
>>> asyncio.run(store.save("alice", b"snapshot", version=1, expected_version=0, ttl=60)).status
<SaveStatus.SAVED: 'saved'>
>>> store.sync.load("alice").record
Record(version=1, payload=<8 bytes>)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.memory import MemoryStore
from fsm.records import Due, DueStats, HistoryEntry, Loaded, LockInfo, SaveResult
from fsm.store import AsyncStore


class AsyncMemoryStore(AsyncStore):
    """An in-process async store: a fresh :class:`MemoryStore` made from ``options`` (the
    same as MemoryStore's: ``clock``, ``history_limit``, ...), or ``store`` if given."""

    takes_lease_on_save = True
    keeps_timers = True

    def __init__(self, store: MemoryStore | None = None, **options: Any) -> None:
        if store is not None and options:
            raise TypeError("pass either a MemoryStore or options for a new one, not both")
        self.sync = store if store is not None else MemoryStore(**options)

    async def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return self.sync.load(user_key, message_id=message_id)

    async def save(
        self,
        user_key: str,
        payload: bytes,
        *,
        version: int,
        expected_version: int,
        ttl: float,
        history: HistoryEntry | None = None,
        message_id: str | None = None,
        owner: str | None = None,
        release: bool = False,
        expected_tag: str = "",
        lease: float | None = None,
    ) -> SaveResult:
        return self.sync.save(
            user_key, payload, version=version, expected_version=expected_version, ttl=ttl,
            history=history, message_id=message_id, owner=owner, release=release,
            expected_tag=expected_tag, lease=lease,
        )  # fmt: skip

    async def delete(self, user_key: str) -> bool:
        return self.sync.delete(user_key)

    async def ttl(self, user_key: str) -> float | None:
        return self.sync.ttl(user_key)

    async def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return self.sync.history(user_key, limit=limit)

    async def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self.sync.acquire_lock(user_key, owner, ttl)

    async def release_lock(self, user_key: str, owner: str) -> bool:
        return self.sync.release_lock(user_key, owner)

    async def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self.sync.extend_lock(user_key, owner, ttl)

    async def lock_info(self, user_key: str) -> LockInfo | None:
        return self.sync.lock_info(user_key)

    async def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        return self.sync.lock_and_load(user_key, owner, ttl, message_id=message_id)

    async def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return self.sync.quarantine(user_key, raw, reason)

    async def index_due(self, user_key: str, armed: str, due: float) -> None:
        self.sync.index_due(user_key, armed, due)

    async def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        return self.sync.claim_due(now, limit=limit, hold=hold)

    async def settle_due(self, entries: Sequence[Due]) -> None:
        self.sync.settle_due(entries)

    async def due_stats(self, now: float) -> DueStats:
        return self.sync.due_stats(now)

    async def aclose(self) -> None:
        self.sync.close()
