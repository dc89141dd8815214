"""In-process counters of the message path (what happened, how often, how long the store took),
cheap and thread-safe.

They cost no store round trip; read them from ``engine.stats`` (tests do), or export them with
:mod:`fsm.ops.prometheus`.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the store latency histogram's buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Latency:
    """One operation's latency histogram: counts per bucket (not cumulative), total, sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    count: int = 0
    sum: float = 0.0


class _Shard:
    """One thread's counters and histograms: only that thread writes them."""

    __slots__ = ("counts", "latency")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latency: dict[str, Latency] = {}


class EngineStats:
    """Named counters: ``applied``, ``conflicts``, ``duplicates``, ``corrupt``, ``expired``,
    ``expired_unfinished``,
    ``token_refused``, ``lock_acquisitions``, ``lock_waits``, ``lock_timeouts``,
    ``lease_lost``, ``step_failures``, ``migrated``, ``version_regressions``, ``actions``,
    ``actions_abandoned``, ``transitions:<from>-><to>``; and the store's latency per operation
    (``load``, ``save``, ``lock``: taking the lease, waiting included).

    Each thread counts into its own shard, with no lock (the message path counts on every
    save, and an uncontended lock costs more than the count); reads add the shards up. The
    shard of a thread that ended is folded into one total, so nothing counted is lost and a
    thread per request costs no memory."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._shards: list[tuple[threading.Thread, _Shard]] = []
        self._ended = _Shard()  # what threads that ended counted
        self._lock = threading.Lock()  # guards the shards list and _ended, not the counting

    def _shard(self) -> _Shard:
        try:
            shard: _Shard = self._local.shard
        except AttributeError:  # this thread's first count
            shard = self._local.shard = _Shard()
            with self._lock:
                self._fold_ended()
                self._shards.append((threading.current_thread(), shard))
        return shard

    def _fold_ended(self) -> None:
        """Add the shards of threads that ended into one (the caller holds the lock)."""
        live = []
        for thread, shard in self._shards:
            if thread.is_alive():
                live.append((thread, shard))
            else:
                _add(self._ended, shard)
        self._shards = live

    def incr(self, name: str, by: int = 1) -> None:
        self._shard().counts[name] += by

    def observe(self, operation: str, seconds: float) -> None:
        """One ``operation`` took ``seconds``."""
        shard = self._shard()
        latency = shard.latency.get(operation)
        if latency is None:
            latency = shard.latency[operation] = Latency()
        latency.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.count += 1
        latency.sum += seconds

    def __getitem__(self, name: str) -> int:
        return self.as_dict().get(name, 0)

    def as_dict(self) -> dict[str, int]:
        return dict(self._total().counts)

    def latencies(self) -> dict[str, Latency]:
        """A copy of the latency histograms, by operation (all threads' added up)."""
        return self._total().latency

    def _total(self) -> _Shard:
        total = _Shard()
        with self._lock:
            self._fold_ended()
            _add(total, self._ended)
            for _, shard in self._shards:
                _add(total, shard)
        return total

    def __repr__(self) -> str:
        return f"EngineStats({self.as_dict()!r})"


def _add(into: _Shard, shard: _Shard) -> None:
    """Add ``shard`` into ``into``, reading each of its dicts in one step (``dict.copy`` is
    one C call: its thread may go on counting meanwhile)."""
    into.counts.update(dict.copy(shard.counts))
    for operation, h in dict.copy(shard.latency).items():
        total = into.latency.get(operation)
        if total is None:
            total = into.latency[operation] = Latency()
        total.buckets = [a + b for a, b in zip(total.buckets, list(h.buckets), strict=True)]
        total.count += h.count
        total.sum += h.sum
