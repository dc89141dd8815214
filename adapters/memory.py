"""MemoryStore: the Store contract in one process, for tests and embedded use.

Theory of operation: one lock guards all state, so every method is atomic. Everything that
expires (sessions, history, seen message ids, locks) is read through its deadline, so an expired
entry is invisible at once, and is also pushed on one heap of deadlines. Each call pops a bounded
number of due heap entries and drops what really expired (an entry refreshed since it was pushed
is left alone), so users who never come back leave no residue and no call pays for a full sweep.
When refreshes leave the heap mostly stale it is rebuilt, which keeps it proportional to the
live state.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator

from fsm.clock import SYSTEM_CLOCK, Clock
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
from fsm.store import Store, check_save_arguments

# Due entries dropped per call: bounds the latency any one call adds, while a steady write
# rate still purges faster (hundreds per call) than it creates (a handful per call).
_SWEEP_BUDGET = 512

_SESSION, _HISTORY, _SEEN, _LOCK = range(4)
_SAVED = SaveResult(SaveStatus.SAVED)  # immutable: one for every save that lands


class _History:
    __slots__ = ("entries", "expires")

    def __init__(self, limit: int) -> None:
        self.entries: deque[HistoryEntry] = deque(maxlen=limit)
        self.expires = 0.0


def _positive(name: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive, got {value!r}")


class MemoryStore(Store):
    """A thread-safe, in-process :class:`~fsm.store.Store` with expiry on an injected clock.

    >>> store = MemoryStore()
    >>> store.save("alice", b"snapshot", version=1, expected_version=0, ttl=60).status
    <SaveStatus.SAVED: 'saved'>
    """

    takes_lease_on_save = True

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        history_limit: int = 50,
        history_ttl: float = 7 * 24 * 3600,
        dedupe_limit: int = 1000,
        dedupe_ttl: float = 7 * 24 * 3600,
        quarantine_limit: int = 10_000,
    ) -> None:
        for name, value in [
            ("history_limit", history_limit),
            ("history_ttl", history_ttl),
            ("dedupe_limit", dedupe_limit),
            ("dedupe_ttl", dedupe_ttl),
            ("quarantine_limit", quarantine_limit),
        ]:
            _positive(name, value)
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._history_limit = history_limit
        self._history_ttl = history_ttl
        self._dedupe_limit = dedupe_limit
        self._dedupe_ttl = dedupe_ttl
        self._quarantine_limit = quarantine_limit
        self._mutex = threading.Lock()
        self._sessions: dict[str, tuple[Record, float]] = {}
        self._history: dict[str, _History] = {}
        # message id -> deadline, in insertion order: the oldest is evicted first and the newest
        # carries the latest deadline (the one the heap tracks for the user).
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        # (kind, key) -> the earliest deadline queued for it in the heap.
        self._queued: dict[tuple[int, str], float] = {}
        self._quarantine: deque[QuarantineEntry] = deque()
        self._quarantine_ids = itertools.count(1)
        self.expired_sessions = 0
        """Sessions that expired (and were purged) since this store was made."""
        self.quarantine_dropped = 0
        """Quarantined entries dropped (oldest first) to stay within ``quarantine_limit``."""

    # -- expiry ----------------------------------------------------------------------------
    def _tick(self) -> float:
        """Read the clock and purge a bounded number of due entries (caller holds the mutex)."""
        now = self._clock.now()
        heap = self._deadlines
        queued = self._queued
        for _ in range(_SWEEP_BUDGET):
            if not heap or heap[0][0] > now:
                break
            deadline, kind, key = heapq.heappop(heap)
            if queued.get((kind, key)) != deadline:
                continue  # superseded by an earlier deadline, handled already
            del queued[(kind, key)]
            later = self._purge(kind, key, now)
            if later is not None:  # refreshed since it was queued: check it again then
                self._expire_at(later, kind, key)
        return now

    def _purge(self, kind: int, key: str, now: float) -> float | None:
        """Drop the entry if it is due; else return its deadline now."""
        if kind == _SESSION:
            session = self._sessions.get(key)
            if session is None:
                return None
            if session[1] > now:
                return session[1]
            del self._sessions[key]
            self.expired_sessions += 1
        elif kind == _HISTORY:
            history = self._history.get(key)
            if history is None:
                return None
            if history.expires > now:
                return history.expires
            del self._history[key]
        elif kind == _SEEN:
            seen = self._live_seen(key, now)
            return None if seen is None else next(reversed(seen.values()))
        else:
            lock = self._locks.get(key)
            if lock is None:
                return None
            if lock[1] > now:
                return lock[1]
            del self._locks[key]
        return None

    def _expire_at(self, deadline: float, kind: int, key: str) -> None:
        """See that the entry is checked at ``deadline``. One heap entry per live entry: a
        deadline that moves later (every save slides the TTL) is found when the earlier one
        comes due, and only one that moves earlier is queued again."""
        queued = self._queued.get((kind, key))
        if queued is not None and queued <= deadline:
            return
        self._queued[(kind, key)] = deadline
        heapq.heappush(self._deadlines, (deadline, kind, key))

    def _live_session(self, user_key: str, now: float) -> Record | None:
        session = self._sessions.get(user_key)
        if session is None:
            return None
        if session[1] <= now:
            del self._sessions[user_key]
            self.expired_sessions += 1
            return None
        return session[0]

    def _live_seen(self, user_key: str, now: float) -> OrderedDict[str, float] | None:
        seen = self._seen.get(user_key)
        if seen is None:
            return None
        while seen and next(iter(seen.values())) <= now:
            seen.popitem(last=False)
        if not seen:
            del self._seen[user_key]
            return None
        return seen

    def _live_lock(self, user_key: str, now: float) -> tuple[str, float] | None:
        lock = self._locks.get(user_key)
        if lock is not None and lock[1] <= now:
            del self._locks[user_key]
            return None
        return lock

    # -- sessions --------------------------------------------------------------------------
    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        with self._mutex:
            return self._loaded(user_key, message_id, self._tick())

    def _loaded(self, user_key: str, message_id: str | None, now: float) -> Loaded:
        """What a load sees now (the mutex is held by the caller)."""
        seen = message_id is not None and message_id in (self._live_seen(user_key, now) or ())
        locked = self._live_lock(user_key, now) is not None
        return Loaded(self._live_session(user_key, now), seen, locked)

    def save(
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
        expected_tag: str = "",  # this store keeps no tags: one process cannot lose a write
        lease: float | None = None,
    ) -> SaveResult:
        check_save_arguments(ttl, version, expected_version, owner, release, lease)
        with self._mutex:
            now = self._tick()
            current = self._live_session(user_key, now)
            seen = None if message_id is None else self._live_seen(user_key, now)
            # Duplicate wins over conflict: a re-delivered message must be acknowledged, not
            # retried against a version that its first delivery already moved.
            if message_id is not None and seen is not None and message_id in seen:
                return SaveResult(SaveStatus.DUPLICATE, current)
            lock = self._live_lock(user_key, now)
            if lock is not None and lock[0] != owner:
                return SaveResult(SaveStatus.LOCKED, current)
            if (current.version if current is not None else 0) != expected_version:
                return SaveResult(SaveStatus.CONFLICT, current)
            if release and lock is not None:
                del self._locks[user_key]
            elif lease is not None and owner is not None:
                self._locks[user_key] = (owner, now + lease)
                self._expire_at(now + lease, _LOCK, user_key)
            deadline = now + ttl
            self._sessions[user_key] = (Record(bytes(payload), version), deadline)
            self._expire_at(deadline, _SESSION, user_key)
            if history is not None:
                entries = self._history.get(user_key)
                if entries is None or entries.expires <= now:  # expired, not yet swept
                    entries = self._history[user_key] = _History(self._history_limit)
                entries.entries.append(history)  # maxlen drops the oldest
                entries.expires = now + self._history_ttl
                self._expire_at(entries.expires, _HISTORY, user_key)
            if message_id is not None:
                if seen is None:
                    seen = self._seen[user_key] = OrderedDict()
                seen[message_id] = now + self._dedupe_ttl
                if len(seen) > self._dedupe_limit:
                    seen.popitem(last=False)
                self._expire_at(now + self._dedupe_ttl, _SEEN, user_key)
            return _SAVED

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

    def scan(self, *, batch: int = 500) -> Iterator[str]:
        _positive("batch", batch)
        with self._mutex:
            keys = list(self._sessions)  # a snapshot: writers may change the dict meanwhile
        for start in range(0, len(keys), batch):
            with self._mutex:
                now = self._tick()
                live = [
                    k for k in keys[start : start + batch] if self._live_session(k, now) is not None
                ]
            yield from live

    # -- history ---------------------------------------------------------------------------
    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        with self._mutex:
            now = self._tick()
            entries = self._history.get(user_key)
            if entries is None or entries.expires <= now:
                self._history.pop(user_key, None)
                return []
            newest_first = list(reversed(entries.entries))
        return newest_first if limit is None else newest_first[:limit]

    # -- lease lock ------------------------------------------------------------------------
    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        _positive("ttl", ttl)
        with self._mutex:
            return self._take_lock(user_key, owner, ttl, self._tick())

    def _take_lock(self, user_key: str, owner: str, ttl: float, now: float) -> bool:
        """Take the lock if it is free (the mutex is held by the caller)."""
        if self._live_lock(user_key, now) is not None:
            return False
        self._locks[user_key] = (owner, now + ttl)
        self._expire_at(now + ttl, _LOCK, user_key)
        return True

    def release_lock(self, user_key: str, owner: str) -> bool:
        with self._mutex:
            lock = self._live_lock(user_key, self._tick())
            if lock is None or lock[0] != owner:
                return False
            del self._locks[user_key]
            return True

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        _positive("ttl", ttl)
        with self._mutex:
            now = self._tick()
            lock = self._live_lock(user_key, now)
            if lock is None or lock[0] != owner:
                return False
            self._locks[user_key] = (owner, now + ttl)
            self._expire_at(now + ttl, _LOCK, user_key)
            return True

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        _positive("ttl", ttl)
        with self._mutex:
            now = self._tick()
            if not self._take_lock(user_key, owner, ttl, now):
                return None
            return self._loaded(user_key, message_id, now)

    def lock_info(self, user_key: str) -> LockInfo | None:
        with self._mutex:
            now = self._tick()
            lock = self._live_lock(user_key, now)
            return None if lock is None else LockInfo(lock[0], lock[1] - now)

    # -- quarantine ------------------------------------------------------------------------
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        with self._mutex:
            now = self._tick()
            current = self._live_session(user_key, now)
            if current is None or current.payload != raw:
                return None
            del self._sessions[user_key]
            entry_id = f"{int(now * 1000)}-{next(self._quarantine_ids)}"
            self._quarantine.append(
                QuarantineEntry(entry_id, user_key, current.payload, reason, now)
            )
            if len(self._quarantine) > self._quarantine_limit:
                self._quarantine.popleft()
                self.quarantine_dropped += 1
            return entry_id

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

    # -- operations ------------------------------------------------------------------------
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
        _positive("batch", batch)
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
