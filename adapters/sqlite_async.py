"""AsyncSQLiteStore: the :class:`~fsm.store.AsyncStore` contract on a :class:`SQLiteStore`.

sqlite3 blocks (on the disk, and on the file's write lock behind another process), so each call
runs the sync store's method on a thread pool of this store's own, ``workers`` threads (not
``asyncio.to_thread``'s default pool: the store's calls neither wait behind the application's
other blocking work nor hold up theirs, and the threads bound the connections the store opens,
one each). There is no second copy of the logic: the wrapped store is ``.sync``, which the
synchronous operator toolkit (``fsm ls``, ``check``, ``backup``) may use on the same file, as
may any other process.

Cancellation: a cancelled call's thread runs on to the end of its transaction (a thread cannot
be stopped halfway, and SQLite rolls back nothing that committed), so the stored value is the
old one or the new one. A lock taken by a cancelled ``lock_and_load`` after the engine's
release ran is left to its TTL, which bounds it (as for AsyncRedisStore).

>>> import asyncio, pathlib, tempfile
>>> folder = tempfile.TemporaryDirectory()
>>> store = AsyncSQLiteStore(pathlib.Path(folder.name) / "fsm.db")
>>> asyncio.run(store.save("alice", b"snapshot", version=1, expected_version=0, ttl=60)).status
<SaveStatus.SAVED: 'saved'>
>>> store.sync.load("alice").record
Record(version=1, payload=<8 bytes>)
>>> asyncio.run(store.aclose()); folder.cleanup()
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar, Unpack

from adapters.sqlite import SQLiteOptions, SQLiteStore
from fsm.records import Due, DueStats, HistoryEntry, Loaded, LockInfo, SaveResult
from fsm.store import AsyncStore

__all__ = ["AsyncSQLiteStore"]

P = ParamSpec("P")
T = TypeVar("T")


class AsyncSQLiteStore(AsyncStore):
    """A :class:`SQLiteStore` on asyncio: a new one on ``path`` with ``options`` (the same as
    SQLiteStore's), or ``store`` if given; its calls run on ``workers`` threads."""

    takes_lease_on_save = True
    keeps_timers = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        store: SQLiteStore | None = None,
        workers: int = 4,
        **options: Unpack[SQLiteOptions],
    ) -> None:
        if (path is None) == (store is None):
            raise TypeError("pass either a path (with options for a new store) or a SQLiteStore")
        if store is not None and options:
            raise TypeError("pass either a SQLiteStore or options for a new one, not both")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.sync = store if store is not None else SQLiteStore(path, **options)  # type: ignore[arg-type]
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fsm-sqlite")

    @classmethod
    def from_url(
        cls, url: str, *, workers: int = 4, **options: Unpack[SQLiteOptions]
    ) -> AsyncSQLiteStore:
        """As :meth:`SQLiteStore.from_url`, on ``workers`` threads."""
        return cls(store=SQLiteStore.from_url(url, **options), workers=workers)

    def __repr__(self) -> str:
        return f"AsyncSQLiteStore({self.sync!r})"

    async def _run(self, call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(call, *args, **kwargs))

    async def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return await self._run(self.sync.load, user_key, message_id=message_id)

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
        return await self._run(
            self.sync.save, user_key, payload, version=version,
            expected_version=expected_version, ttl=ttl, history=history, message_id=message_id,
            owner=owner, release=release, expected_tag=expected_tag, lease=lease,
        )  # fmt: skip

    async def delete(self, user_key: str) -> bool:
        return await self._run(self.sync.delete, user_key)

    async def ttl(self, user_key: str) -> float | None:
        return await self._run(self.sync.ttl, user_key)

    async def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return await self._run(self.sync.history, user_key, limit=limit)

    async def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return await self._run(self.sync.acquire_lock, user_key, owner, ttl)

    async def release_lock(self, user_key: str, owner: str) -> bool:
        return await self._run(self.sync.release_lock, user_key, owner)

    async def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return await self._run(self.sync.extend_lock, user_key, owner, ttl)

    async def lock_info(self, user_key: str) -> LockInfo | None:
        return await self._run(self.sync.lock_info, user_key)

    async def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        return await self._run(self.sync.lock_and_load, user_key, owner, ttl, message_id=message_id)

    async def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return await self._run(self.sync.quarantine, user_key, raw, reason)

    async def index_due(self, user_key: str, armed: str, due: float) -> None:
        await self._run(self.sync.index_due, user_key, armed, due)

    async def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        return await self._run(self.sync.claim_due, now, limit=limit, hold=hold)

    async def settle_due(self, entries: Sequence[Due]) -> None:
        await self._run(self.sync.settle_due, entries)

    async def due_stats(self, now: float) -> DueStats:
        return await self._run(self.sync.due_stats, now)

    async def aclose(self) -> None:
        """Wait for the calls under way (off the loop), then close the store's connections."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.sync.close()
