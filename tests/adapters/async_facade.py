"""An :class:`AsyncStore` behind the :class:`Store` interface, so that the one contract suite
(tests/adapters/test_store_contract.py) runs on every async adapter too.

Each method of the async contract runs the async store's coroutine on a private event loop in a
background thread and waits for its result; calls from several threads at once become
concurrent tasks on that one loop, as concurrent webhook requests would, so the suite's races
run on asyncio as well. The operator's methods, which async stores do not have (``scan``,
``sessions``, ``quarantined``, ...), go to ``twin``: a sync store on the same data (the same
MemoryStore, or a RedisStore on the same deployment and namespace), so the tests that list or
inspect what they saved also check that what an async store writes, a sync one reads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from fsm.records import HistoryEntry, Loaded, LockInfo, QuarantineEntry, SaveResult, SessionView
from fsm.store import AsyncStore, Store

T = TypeVar("T")


class AsyncStoreFacade(Store):
    """``store``'s methods, blocking; the operator's methods are ``twin``'s."""

    def __init__(self, store: AsyncStore, twin: Store) -> None:
        self.store = store
        self.twin = twin
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"loop-{type(store).__name__}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"AsyncStoreFacade({self.store!r}, twin={self.twin!r})"

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    # -- the async contract, run on the loop ------------------------------------------------
    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return self._wait(self.store.load(user_key, message_id=message_id))

    def save(self, user_key: str, payload: bytes, **options: Any) -> SaveResult:
        return self._wait(self.store.save(user_key, payload, **options))

    def delete(self, user_key: str) -> bool:
        return self._wait(self.store.delete(user_key))

    def ttl(self, user_key: str) -> float | None:
        return self._wait(self.store.ttl(user_key))

    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return self._wait(self.store.history(user_key, limit=limit))

    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self._wait(self.store.acquire_lock(user_key, owner, ttl))

    def release_lock(self, user_key: str, owner: str) -> bool:
        return self._wait(self.store.release_lock(user_key, owner))

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self._wait(self.store.extend_lock(user_key, owner, ttl))

    def lock_info(self, user_key: str) -> LockInfo | None:
        return self._wait(self.store.lock_info(user_key))

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        return self._wait(self.store.lock_and_load(user_key, owner, ttl, message_id=message_id))

    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return self._wait(self.store.quarantine(user_key, raw, reason))

    # -- the operator's methods, on the sync twin -------------------------------------------
    def scan(self, *, batch: int = 500) -> Iterator[str]:
        return self.twin.scan(batch=batch)

    def import_history(self, user_key: str, entries: Sequence[HistoryEntry]) -> int:
        return self.twin.import_history(user_key, entries)

    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        return self.twin.quarantined(user_key)

    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        return self.twin.remove_quarantined(user_key, entry_id)

    def session_view(self, user_key: str) -> SessionView | None:
        return self.twin.session_view(user_key)

    def sessions(self, *, batch: int = 500) -> Iterator[SessionView]:
        return self.twin.sessions(batch=batch)

    def server_stats(self) -> dict[str, int | float]:
        return self.twin.server_stats()

    def script_cache(self) -> tuple[int, int] | None:
        return self.twin.script_cache()

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the async store on its loop, then the loop, its thread and the twin."""
        try:
            self._wait(self.store.aclose())
            self._wait(self._loop.shutdown_asyncgens())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self.twin.close()
