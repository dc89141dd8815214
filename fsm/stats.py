"""In-process counters of the message path (what happened, how often, how long the store took),
cheap and thread-safe.

They cost no store round trip; read them from ``engine.stats`` (tests do), or export them with
:mod:`fsm.ops.prometheus`.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the store latency histogram's buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Latency:
    """One operation's latency histogram: counts per bucket (not cumulative), total, sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    count: int = 0
    sum: float = 0.0


class EngineStats:
    """Named counters: ``applied``, ``conflicts``, ``duplicates``, ``corrupt``, ``expired``,
    ``token_refused``, ``lock_acquisitions``, ``lock_waits``, ``lock_timeouts``,
    ``lease_lost``, ``step_failures``, ``migrated``, ``version_regressions``, ``actions``,
    ``actions_abandoned``, ``transitions:<from>-><to>``; and the store's latency per operation
    (``load``, ``save``, ``lock``: taking the lease, waiting included)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._latency: dict[str, Latency] = {}
        self._lock = threading.Lock()

    def incr(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    def observe(self, operation: str, seconds: float, counts: Iterable[str] = ()) -> None:
        """One ``operation`` took ``seconds``; and each of ``counts`` happened once (counted
        under the same lock: the message path takes it once per save)."""
        slot = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            for name in counts:
                self._counts[name] += 1
            latency = self._latency.get(operation)
            if latency is None:
                latency = self._latency[operation] = Latency()
            latency.buckets[slot] += 1
            latency.count += 1
            latency.sum += seconds

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def latencies(self) -> dict[str, Latency]:
        """A copy of the latency histograms, by operation."""
        with self._lock:
            return {op: Latency(list(h.buckets), h.count, h.sum) for op, h in self._latency.items()}

    def __repr__(self) -> str:
        return f"EngineStats({self.as_dict()!r})"
