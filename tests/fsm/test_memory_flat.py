"""Memory stays flat after 100,000 distinct users: no per-user model is left attached."""

from __future__ import annotations

import gc
import tracemalloc

from adapters import MemoryStore
from fsm import Engine, FakeClock
from tests.fsm.sample_flows import Counter

USERS = 100_000
BATCH = 200  # users whose sessions are live at once


def test_100k_distinct_users_leave_memory_flat() -> None:
    clock = FakeClock()
    # Short TTLs so the store forgets users too: what is left is what the engine keeps.
    store = MemoryStore(clock=clock, history_ttl=5, dedupe_ttl=5)
    # The engine's cache of recent records is bounded by design (its own test); keep it to a
    # batch here, or the 10,000 entries it holds would be traced after warm-up but not before.
    engine = Engine(Counter(), store, clock=clock, session_ttl=5, recent=BATCH)
    machine = Counter.spec.machine

    def run(start: int, stop: int) -> None:
        for first in range(start, stop, BATCH):
            for n in range(first, first + BATCH):
                engine.handle(f"user-{n}", "go", message_id=f"m{n}")
            clock.advance(10)  # this batch's sessions expire

    run(0, 10_000)  # warm up: pools, caches and interned strings reach their size
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        run(10_000, USERS)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = end - base
    print(f"\n90,000 users after warm-up: traced memory grew {grown / 1024:.1f} KiB")
    # One leaked model per user would be ~10 KB x 90,000; a leaked key ~100 B x 90,000.
    # What may differ between the two points is the store's few batches of live users.
    assert grown < 1024 * 1024, f"memory grew {grown} bytes"
    assert machine.attached_models <= 4  # the probe pool, not one model per user
    assert engine.stats["applied"] == USERS
