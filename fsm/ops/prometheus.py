"""Prometheus export (prometheus-client): the message path's in-process counters, and the
store-wide figures.

In the bot process, mount the engine's counters; they are read at scrape time from
:class:`~fsm.stats.EngineStats`, so counting costs the message path no store round trip::

    from prometheus_client import make_wsgi_app
    registry = engine_registry(engine)
    app = make_wsgi_app(registry)          # mount at /metrics in your WSGI app, or:
    prometheus_client.start_http_server(9108, addr="127.0.0.1", registry=registry)

The store-wide gauges (:class:`StoreCollector`) scan every session on each scrape: run them in
one place (``fsm metrics --prometheus``, or a small exporter), not in every worker.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fsm.async_engine import AsyncEngine
from fsm.engine import Engine
from fsm.errors import FsmError
from fsm.ops.metrics import collect_metrics
from fsm.stats import LATENCY_BUCKETS
from fsm.store import Store, operator_store

#: EngineStats counter -> (metric name without ``fsm_`` and ``_total``, help).
COUNTERS = {
    "applied": ("messages_applied", "Messages applied (a new snapshot saved)."),
    "conflicts": ("conflicts", "Compare-and-set conflicts (each one is retried)."),
    "lock_waits": ("lock_waits", "Messages that queued behind another worker's lease."),
    "lock_acquisitions": ("lock_acquisitions", "Leases taken (actions, contention)."),
    "lock_timeouts": ("lock_timeouts", "Leases not obtained within lock_wait."),
    "duplicates": ("dedupe_hits", "Re-delivered messages acknowledged, not re-applied."),
    "corrupt": ("corrupt_snapshots", "Snapshots quarantined because they did not decode."),
    "token_refused": ("token_refusals", "Messages sent to sign in again (token refused)."),
    "expired": ("sessions_expired", "Messages that found their session expired."),
    "expired_unfinished": (
        "sessions_expired_unfinished",
        "Sessions found expired with an action pending or replies unsent (logged).",
    ),
    "migrated": ("flow_migrations", "Flow-version migrations applied on load."),
    "version_regressions": ("version_regressions", "Stored versions seen going backwards."),
    "actions": ("actions", "Actions (side-effect steps) run."),
    "actions_abandoned": ("actions_abandoned", "Actions given up after repeated failure."),
    "lease_lost": ("leases_lost", "Leases that expired under a running step."),
    "step_failures": ("step_failures", "Steps that raised."),
    "poisoned": ("sessions_poisoned", "Sessions reset after failing on message after message."),
    "outbox_confirmed": ("outbox_confirmed", "Pending replies confirmed as sent."),
    "outbox_dropped": ("outbox_dropped", "Pending replies dropped: the outbox was full."),
    "outbox_confirm_failures": (
        "outbox_confirm_failures",
        "Confirmations of sent replies that could not be saved.",
    ),
    "attachments_refused": (
        "attachments_refused",
        "Attachments a step does not accept (answered with its prompt or unsupported_reply).",
    ),
    "media_uploads": ("media_uploads", "Replies made from bytes uploaded before their save."),
    "timers_armed": ("timers_armed", "Timer deadlines indexed (saves that armed timers)."),
    "timers_fired": ("timers_fired", "Timers fired (their handler's save landed)."),
    "timers_cancelled": ("timers_cancelled", "Timers cancelled: the conversation left the step."),
    "timers_dropped_late": (
        "timers_dropped_late",
        "Timers dropped unfired: later than their max_late, or no longer declared.",
    ),
    "timers_failed": ("timers_failed", "Timers dropped because their handler failed."),
    "timer_errors": (
        "timer_errors",
        "Firings not done for a store or I/O failure (tried again when the claim runs out).",
    ),
}


class EngineCollector(Collector):
    """The counters and store latency of one or more engines (summed), read at scrape time."""

    def __init__(self, *engines: Engine | AsyncEngine) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        counts: dict[str, int] = {}
        for engine in self.engines:
            for name, value in engine.stats.as_dict().items():
                counts[name] = counts.get(name, 0) + value
        for key, (name, text) in COUNTERS.items():
            family = CounterMetricFamily(f"fsm_{name}", text)
            family.add_metric([], counts.get(key, 0))
            yield family
        transitions = CounterMetricFamily(
            "fsm_transitions", "Stage transitions applied.", labels=["from_stage", "to_stage"]
        )
        for name, value in sorted(counts.items()):
            if name.startswith("transitions:"):
                source, _, dest = name.removeprefix("transitions:").partition("->")
                transitions.add_metric([source, dest], value)
        yield transitions
        merged = self._latencies()  # the store's operations, and timer_lag: not one of them
        lag = merged.pop("timer_lag", ([0] * (len(LATENCY_BUCKETS) + 1), 0.0))
        timer_lag = HistogramMetricFamily(
            "fsm_timer_lag_seconds", "How late each timer fired, after its due time."
        )
        timer_lag.add_metric([], *_cumulative(*lag))
        yield timer_lag
        latency = HistogramMetricFamily(
            "fsm_store_seconds",
            "Store latency on the message path by operation (lock includes waiting).",
            labels=["operation"],
        )
        for op, (buckets, total) in sorted(merged.items()):
            latency.add_metric([op], *_cumulative(buckets, total))
        yield latency

    def _latencies(self) -> dict[str, tuple[list[int], float]]:
        """The engines' latency histograms added up, by operation: (buckets, sum)."""
        merged: dict[str, tuple[list[int], float]] = {}
        for engine in self.engines:
            for op, hist in engine.stats.latencies().items():
                buckets, total = merged.get(op, ([0] * len(hist.buckets), 0.0))
                merged[op] = (
                    [a + b for a, b in zip(buckets, hist.buckets, strict=True)],
                    total + hist.sum,
                )
        return merged


def _cumulative(buckets: list[int], total: float) -> tuple[list[tuple[str, float]], float]:
    """Per-bucket counts as Prometheus's cumulative ``(le, count)`` pairs, and the sum."""
    cumulative, running = [], 0
    for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], buckets, strict=True):
        running += count
        cumulative.append((bound, float(running)))
    return cumulative, total


class StoreCollector(Collector):
    """Store-wide gauges from :func:`~fsm.ops.metrics.collect_metrics` (a scan per scrape)."""

    def __init__(self, store: Store, *, expiring_within: float = 300.0) -> None:
        store = operator_store(store)
        self.store = store
        self.expiring_within = expiring_within

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fsm_store_up", "1 if the store answered this scrape, else 0.")
        try:
            m = collect_metrics(self.store, expiring_within=self.expiring_within)
        except FsmError:  # unreachable: say so, rather than fail the whole scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        def gauge(name: str, text: str, value: float | None) -> GaugeMetricFamily | None:
            if value is None:
                return None
            return GaugeMetricFamily(f"fsm_{name}", text, value=value)

        by_stage = GaugeMetricFamily(
            "fsm_sessions_by_stage", "Sessions per stage.", labels=["stage"]
        )
        for stage, count in m.by_stage.items():
            by_stage.add_metric([stage], count)
        families: list[Metric | None] = [
            gauge("sessions", "Sessions stored.", m.sessions),
            by_stage,
            gauge("sessions_locked", "Sessions whose lease a worker holds.", m.locked),
            gauge("session_ttl_average_seconds", "Average TTL left.", m.average_ttl),
            gauge(
                "sessions_expiring_soon",
                f"Sessions with at most {m.expiring_within:g}s left.",
                m.expiring_soon,
            ),
            gauge("sessions_unreadable", "Sessions that do not decode.", m.unreadable),
            gauge(
                "sessions_newer_schema",
                "Sessions written in a newer schema than this code reads.",
                m.newer_schema,
            ),
            gauge("quarantined", "Entries in the quarantine.", m.quarantined),
            gauge("redis_used_memory_bytes", "Redis used_memory (INFO).", m.used_memory),
            gauge("redis_maxmemory_bytes", "Redis maxmemory (INFO; 0: no limit).", m.maxmemory),
        ]
        if m.expired_since_start is not None:
            expired = CounterMetricFamily(
                "fsm_store_expired_keys", "Keys expired since the server started."
            )
            expired.add_metric([], m.expired_since_start)
            families.append(expired)
        if m.evicted_since_start is not None:
            evicted = CounterMetricFamily(
                "fsm_store_evicted_keys",
                "Keys evicted since the server started (an evicted session is lost).",
            )
            evicted.add_metric([], m.evicted_since_start)
            families.append(evicted)
        yield from (f for f in families if f is not None)


def engine_registry(*engines: Engine) -> CollectorRegistry:
    """A registry with the engines' counters, for the bot's /metrics endpoint."""
    registry = CollectorRegistry(auto_describe=False)  # describing would scan/read now
    registry.register(EngineCollector(*engines))
    return registry


def store_registry(store: Store, *, expiring_within: float = 300.0) -> CollectorRegistry:
    """A registry with the store-wide gauges (scans the store on each scrape)."""
    registry = CollectorRegistry(auto_describe=False)  # describing would scan/read now
    registry.register(StoreCollector(store, expiring_within=expiring_within))
    return registry
