"""Store-wide figures (``fsm metrics``, :func:`collect_metrics`): how many sessions, in which
stages, locked, expiring, quarantined. One streamed scan of the store; the message path is not
involved (its counters are in-process: :class:`fsm.stats.EngineStats`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fsm.errors import FsmError, SchemaTooNew
from fsm.ops.validate import is_reserved
from fsm.snapshot import decode_snapshot
from fsm.store import Store, operator_store

#: The stage reported for sessions that do not decode.
UNREADABLE = "<unreadable>"
#: The stage reported for sessions written in a newer schema than this code reads.
NEWER = "<newer schema>"


@dataclass
class StoreMetrics:
    sessions: int = 0
    by_stage: dict[str, int] = field(default_factory=dict)
    locked: int = 0
    average_ttl: float | None = None  # seconds left, over sessions that expire
    expiring_soon: int = 0  # sessions with at most ``expiring_within`` seconds left
    expiring_within: float = 300.0
    expired_since_start: int | None = None  # the server's count (Redis INFO stats: all keys)
    quarantined: int = 0
    unreadable: int = 0
    newer_schema: int = 0  # written by newer code: readable by it, not by this one
    used_memory: int | None = None  # bytes, the whole server
    maxmemory: int | None = None  # bytes; 0: no limit
    evicted_since_start: int | None = None  # the server's count (Redis INFO stats: all keys)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_metrics(
    store: Store,
    *,
    expiring_within: float = 300.0,
    batch: int = 500,
    progress: Callable[[], None] | None = None,
) -> StoreMetrics:
    """Scan every session once and count (``progress`` is called once per session)."""
    store = operator_store(store)
    stages: Counter[str] = Counter()
    metrics = StoreMetrics(expiring_within=expiring_within)
    ttl_total, with_ttl = 0.0, 0
    for view in store.sessions(batch=batch):
        if is_reserved(view.user_key):
            continue
        metrics.sessions += 1
        if progress is not None:
            progress()
        try:
            stages[decode_snapshot(view.record.payload).stage] += 1
        except SchemaTooNew:  # valid, written by newer code (a rolling deploy): not broken
            stages[NEWER] += 1
            metrics.newer_schema += 1
        except FsmError:
            stages[UNREADABLE] += 1
            metrics.unreadable += 1
        if view.lock is not None:
            metrics.locked += 1
        if view.ttl is not None:
            ttl_total += view.ttl
            with_ttl += 1
            if view.ttl <= expiring_within:
                metrics.expiring_soon += 1
    metrics.by_stage = dict(sorted(stages.items()))
    metrics.average_ttl = ttl_total / with_ttl if with_ttl else None
    metrics.quarantined = sum(1 for _ in store.quarantined())
    stats = store.server_stats()
    if "expired_keys" in stats:
        metrics.expired_since_start = int(stats["expired_keys"])
    if "used_memory" in stats:
        metrics.used_memory = int(stats["used_memory"])
    if "maxmemory" in stats:
        metrics.maxmemory = int(stats["maxmemory"])
    if "evicted_keys" in stats:
        metrics.evicted_since_start = int(stats["evicted_keys"])
    return metrics
