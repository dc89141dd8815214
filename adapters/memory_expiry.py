"""One heap of deadlines for everything a MemoryStore keeps that expires.

Every entry that expires (a session, a user's history, their seen message ids, a lock) is read
through its deadline, so it is invisible at once; this heap is what removes it too, so users
who never come back leave no residue. Each store call pops a bounded number of due entries
(:meth:`Deadlines.due`) and the store drops what really expired; an entry refreshed since it
was queued is queued again at its new deadline. One heap entry per live entry: a deadline that
moves later (every save slides the TTL) is found when the earlier one comes due, and only one
that moves earlier is queued again, so the heap stays proportional to the live state.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

#: Due entries handed out per call: bounds the latency any one call adds, while a steady
#: write rate still purges faster (hundreds per call) than it creates (a handful per call).
SWEEP_BUDGET = 512


class Deadlines:
    """``(kind, key)`` entries by deadline; not thread-safe (the store's mutex guards it)."""

    __slots__ = ("_heap", "_queued")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        # (kind, key) -> the earliest deadline queued for it in the heap.
        self._queued: dict[tuple[int, str], float] = {}

    def expire_at(self, deadline: float, kind: int, key: str) -> None:
        """See that the entry is checked at ``deadline`` (or earlier)."""
        queued = self._queued.get((kind, key))
        if queued is not None and queued <= deadline:
            return
        self._queued[(kind, key)] = deadline
        heapq.heappush(self._heap, (deadline, kind, key))

    def any_due(self, now: float) -> bool:
        """Whether some deadline has come by ``now``."""
        heap = self._heap
        return bool(heap) and heap[0][0] <= now

    def due(self, now: float, budget: int = SWEEP_BUDGET) -> Iterator[tuple[int, str]]:
        """Up to ``budget`` entries whose deadline has come, each once; the caller drops what
        expired and calls :meth:`expire_at` again for what was refreshed meanwhile."""
        heap, queued = self._heap, self._queued
        for _ in range(budget):
            if not heap or heap[0][0] > now:
                return
            deadline, kind, key = heapq.heappop(heap)
            if queued.get((kind, key)) != deadline:
                continue  # superseded by an earlier deadline, handled already
            del queued[(kind, key)]
            yield kind, key

    def clear(self) -> None:
        """Forget every deadline (the entries still expire when they are read)."""
        self._heap.clear()
        self._queued.clear()

    def __len__(self) -> int:
        return len(self._heap)
