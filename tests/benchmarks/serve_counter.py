"""The engine factory ``fsm serve --engine tests.benchmarks.serve_counter:engine`` runs in
:mod:`tests.benchmarks.bench_serve_writes`: the tests' counter flow (every message one reply
and one step), so a message's store traffic is the framework's alone."""

from __future__ import annotations

from fsm.async_engine import AsyncEngine
from fsm.store import AsyncStore
from tests.fsm.sample_flows import Counter


def engine(store: AsyncStore) -> AsyncEngine:
    """What ``fsm serve`` calls with its async store."""
    return AsyncEngine(Counter(), store)
