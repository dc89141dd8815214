"""MemorySessionStore: the engine's port (:class:`fsm.store.SessionStore`) in one process.

Theory of operation: one lock guards all state, so every method is atomic. Everything that
expires (sessions, history, seen message ids, locks) is read through its deadline, so an
expired entry is invisible at once, and is queued on one heap of deadlines
(:mod:`adapters.memory_expiry`) that each call sweeps a bounded part of. :class:`MemoryStore`
adds the operator's port on the same state; build that one.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence

from adapters.memory_expiry import Deadlines
from fsm.clock import SYSTEM_CLOCK, Clock
from fsm.records import (
    Due,
    DueStats,
    HistoryEntry,
    Loaded,
    QuarantineEntry,
    Record,
    SaveResult,
    SaveStatus,
)
from fsm.store import SessionStore, check_save_arguments

_SESSION, _HISTORY, _SEEN, _LOCK = range(4)
_SAVED = SaveResult(SaveStatus.SAVED)  # immutable: one for every save that lands


class _History:
    __slots__ = ("entries", "expires")

    def __init__(self, limit: int) -> None:
        self.entries: deque[HistoryEntry] = deque(maxlen=limit)
        self.expires = 0.0


def positive(name: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive, got {value!r}")


class MemorySessionStore(SessionStore):
    """The engine's port on in-process state, with expiry on an injected clock."""

    takes_lease_on_save = True
    keeps_timers = True

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
        limits = [("history_limit", history_limit), ("history_ttl", history_ttl)]
        limits += [("dedupe_limit", dedupe_limit), ("dedupe_ttl", dedupe_ttl)]
        for name, value in [*limits, ("quarantine_limit", quarantine_limit)]:
            positive(name, value)
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._history_limit, self._history_ttl = history_limit, history_ttl
        self._dedupe_limit, self._dedupe_ttl = dedupe_limit, dedupe_ttl
        self._quarantine_limit = quarantine_limit
        self._mutex = threading.Lock()
        self._sessions: dict[str, tuple[Record, float]] = {}
        self._history: dict[str, _History] = {}
        # message id -> deadline, in insertion order: the oldest is evicted first and the newest
        # carries the latest deadline (the one the heap tracks for the user).
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._deadlines = Deadlines()
        self._quarantine: deque[QuarantineEntry] = deque()
        self._quarantine_ids = itertools.count(1)
        self.expired_sessions = 0
        """Sessions that expired (and were purged) since this store was made."""
        self.quarantine_dropped = 0
        """Quarantined entries dropped (oldest first) to stay within ``quarantine_limit``."""
        # The index of deadlines: (user, armed) -> due, a heap of (due, user, armed) with
        # stale rows skipped when popped, and the claimed entries with their claim's end.
        self._index: dict[tuple[str, str], float] = {}
        self._index_heap: list[tuple[float, str, str]] = []
        self._claimed: dict[tuple[str, str], tuple[float, float]] = {}

    # -- expiry ----------------------------------------------------------------------------
    def _tick(self) -> float:
        """Read the clock and purge a bounded number of due entries (caller holds the mutex)."""
        now = self._clock.now()
        if not self._deadlines.any_due(now):
            return now  # the common case: no generator made
        for kind, key in self._deadlines.due(now):
            later = self._purge(kind, key, now)
            if later is not None:  # refreshed since it was queued: check it again then
                self._deadlines.expire_at(later, kind, key)
        return now

    def _purge(self, kind: int, key: str, now: float) -> float | None:
        """Drop the entry if it is due; else return its deadline now."""
        if kind == _SESSION:
            return None if self._live_session(key, now) is None else self._sessions[key][1]
        if kind == _HISTORY:
            history = self._history.get(key)
            if history is None or history.expires > now:
                return None if history is None else history.expires
            del self._history[key]
            return None
        if kind == _SEEN:
            seen = self._live_seen(key, now)
            return None if seen is None else next(reversed(seen.values()))
        lock = self._live_lock(key, now)
        return None if lock is None else lock[1]

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

    # -- the engine's port -----------------------------------------------------------------
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
                self._set_lock(user_key, owner, now + lease)
            self._sessions[user_key] = (Record(bytes(payload), version), now + ttl)
            self._deadlines.expire_at(now + ttl, _SESSION, user_key)
            if history is not None:
                self._append_history(user_key, history, now)
            if message_id is not None:
                self._record_seen(user_key, message_id, seen, now)
            return _SAVED

    def _append_history(self, user_key: str, entry: HistoryEntry, now: float) -> None:
        entries = self._history.get(user_key)
        if entries is None or entries.expires <= now:  # expired, not yet swept
            entries = self._history[user_key] = _History(self._history_limit)
        entries.entries.append(entry)  # maxlen drops the oldest
        entries.expires = now + self._history_ttl
        self._deadlines.expire_at(entries.expires, _HISTORY, user_key)

    def _record_seen(
        self, user_key: str, message_id: str, seen: OrderedDict[str, float] | None, now: float
    ) -> None:
        if seen is None:
            seen = self._seen[user_key] = OrderedDict()
        seen[message_id] = now + self._dedupe_ttl
        if len(seen) > self._dedupe_limit:
            seen.popitem(last=False)
        self._deadlines.expire_at(now + self._dedupe_ttl, _SEEN, user_key)

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

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        positive("ttl", ttl)
        with self._mutex:
            now = self._tick()
            if self._live_lock(user_key, now) is not None:
                return None
            self._set_lock(user_key, owner, now + ttl)
            return self._loaded(user_key, message_id, now)

    def _set_lock(self, user_key: str, owner: str, deadline: float) -> None:
        self._locks[user_key] = (owner, deadline)
        self._deadlines.expire_at(deadline, _LOCK, user_key)

    def release_lock(self, user_key: str, owner: str) -> bool:
        with self._mutex:
            lock = self._live_lock(user_key, self._tick())
            if lock is None or lock[0] != owner:
                return False
            del self._locks[user_key]
            return True

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        positive("ttl", ttl)
        with self._mutex:
            now = self._tick()
            lock = self._live_lock(user_key, now)
            if lock is None or lock[0] != owner:
                return False
            self._set_lock(user_key, owner, now + ttl)
            return True

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

    # -- the index of deadlines ------------------------------------------------------------
    def index_due(self, user_key: str, armed: str, due: float) -> None:
        with self._mutex:
            self._index_at(user_key, armed, float(due))

    def _index_at(self, user_key: str, armed: str, due: float) -> None:
        self._index[(user_key, armed)] = due
        heapq.heappush(self._index_heap, (due, user_key, armed))

    def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        positive("limit", limit)
        positive("hold", hold)
        with self._mutex:
            for member, (due, until) in list(self._claimed.items()):
                if until <= now:  # its ticker died: due again (its own due, or now)
                    del self._claimed[member]
                    self._index_at(*member, min(due, now))
            taken: list[Due] = []
            heap = self._index_heap
            while heap and heap[0][0] <= now and len(taken) < limit:
                due, user_key, armed = heapq.heappop(heap)
                if self._index.get((user_key, armed)) != due:
                    continue  # re-indexed at another due, or claimed: a stale row
                del self._index[(user_key, armed)]
                self._claimed[(user_key, armed)] = (due, now + hold)
                taken.append(Due(user_key, armed, due))
            return taken

    def settle_due(self, entries: Sequence[Due]) -> None:
        with self._mutex:
            for entry in entries:
                self._claimed.pop((entry.user_key, entry.armed), None)

    def due_stats(self, now: float) -> DueStats:
        with self._mutex:
            dues = list(self._index.values())
            return DueStats(
                indexed=len(dues),
                due=sum(1 for d in dues if d <= now),
                claimed=len(self._claimed),
                oldest_due=min(dues) if dues else None,
            )

    def indexed_due(self, *, user_key: str | None = None) -> Iterator[Due]:
        with self._mutex:
            rows = [
                Due(user, armed, due)
                for (user, armed), due in self._index.items()
                if user_key is None or user == user_key
            ]
        yield from sorted(rows, key=lambda d: (d.due, d.user_key, d.armed))
