"""MemoryStore: the whole Store contract in one process, for tests and embedded use.

The engine's port is :class:`~adapters.memory_session.MemorySessionStore` (its module holds the
theory of operation); this adds the operator's port (:class:`fsm.store.OperatorStore`: scan,
TTL, delete, lock info, the quarantine's listing) on the same state, under the same mutex.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from adapters.memory_session import MemorySessionStore, positive
from fsm.records import HistoryEntry, LockInfo, QuarantineEntry, SessionView
from fsm.store import Store


class MemoryStore(MemorySessionStore, Store):
    """A thread-safe, in-process :class:`~fsm.store.Store` with expiry on an injected clock.

    >>> store = MemoryStore()
    >>> store.save("alice", b"snapshot", version=1, expected_version=0, ttl=60).status
    <SaveStatus.SAVED: 'saved'>
    """

    def delete(self, user_key: str) -> bool:
        with self._mutex:
            if self._live_session(user_key, self._tick()) is None:
                return False
            del self._sessions[user_key]
            return True

    def ttl(self, user_key: str) -> float | None:
        with self._mutex:
            now = self._tick()
            if self._live_session(user_key, now) is None:
                return None
            return self._sessions[user_key][1] - now

    def import_history(self, user_key: str, entries: Sequence[HistoryEntry]) -> int:
        with self._mutex:
            now = self._tick()
            for entry in entries:
                self._append_history(user_key, entry, now)
        return len(entries)

    def scan(self, *, batch: int = 500) -> Iterator[str]:
        positive("batch", batch)
        with self._mutex:
            keys = list(self._sessions)  # a snapshot: writers may change the dict meanwhile
        for start in range(0, len(keys), batch):
            with self._mutex:
                now = self._tick()
                live = [
                    k for k in keys[start : start + batch] if self._live_session(k, now) is not None
                ]
            yield from live

    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        positive("ttl", ttl)
        with self._mutex:
            now = self._tick()
            if self._live_lock(user_key, now) is not None:
                return False
            self._set_lock(user_key, owner, now + ttl)
            return True

    def lock_info(self, user_key: str) -> LockInfo | None:
        with self._mutex:
            now = self._tick()
            lock = self._live_lock(user_key, now)
            return None if lock is None else LockInfo(lock[0], lock[1] - now)

    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        with self._mutex:
            entries = [e for e in self._quarantine if user_key is None or e.user_key == user_key]
        yield from entries

    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        with self._mutex:
            for entry in self._quarantine:
                if entry.id == entry_id and entry.user_key == user_key:
                    self._quarantine.remove(entry)
                    return entry
        return None

    def session_view(self, user_key: str) -> SessionView | None:
        with self._mutex:
            return self._view(user_key, self._tick())

    def _view(self, user_key: str, now: float) -> SessionView | None:
        record = self._live_session(user_key, now)
        if record is None:
            return None
        lock = self._live_lock(user_key, now)
        return SessionView(
            user_key,
            record,
            self._sessions[user_key][1] - now,
            None if lock is None else LockInfo(lock[0], lock[1] - now),
        )

    def sessions(self, *, batch: int = 500) -> Iterator[SessionView]:
        positive("batch", batch)
        with self._mutex:
            keys = list(self._sessions)
        for start in range(0, len(keys), batch):
            with self._mutex:
                now = self._tick()
                views = [self._view(k, now) for k in keys[start : start + batch]]
            yield from (v for v in views if v is not None)

    def server_stats(self) -> dict[str, int | float]:
        with self._mutex:
            return {"expired_keys": self.expired_sessions}
