"""Real threads against one user through Engine.handle on the memory store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest

from adapters import MemoryStore
from adapters.base import Loaded
from fsm import Engine, FakeClock, Result, decode_snapshot, encode_snapshot
from fsm.errors import ConflictError
from tests.fsm.sample_flows import Counter

THREADS = 8
PER_THREAD = 250


def _run_threads(worker: Callable[[int], list[Result]], threads: int = THREADS) -> list[Result]:
    start = threading.Barrier(threads)

    def run(n: int) -> list[Result]:
        start.wait()
        return worker(n)

    with ThreadPoolExecutor(threads) as pool:
        return [r for batch in pool.map(run, range(threads)) for r in batch]


def test_8_threads_x_250_messages_apply_2000_updates_with_gapless_versions(
    counter_engine: Engine,
) -> None:
    counter_engine.handle("u", "go")

    def worker(n: int) -> list[Result]:
        return [counter_engine.handle("u", "+1", message_id=f"t{n}-{i}") for i in range(PER_THREAD)]

    results = _run_threads(worker)
    assert len(results) == THREADS * PER_THREAD
    assert not any(r.duplicate for r in results)
    versions = sorted(r.snapshot.version for r in results)
    assert versions == list(range(2, THREADS * PER_THREAD + 2))  # every version exactly once
    counts = sorted(r.snapshot.data["count"] for r in results)
    assert counts == list(range(1, THREADS * PER_THREAD + 1))  # no update lost
    final = counter_engine.peek("u")
    assert final is not None and final.data["count"] == 2000 and final.version == 2001
    history = counter_engine.store.history("u")
    assert [h.version for h in history] == list(range(2001, 2001 - len(history), -1))


def test_redelivered_message_ids_race_and_apply_once(counter_engine: Engine) -> None:
    counter_engine.handle("u", "go")
    ids = [f"m{i}" for i in range(100)]

    def worker(n: int) -> list[Result]:  # every thread delivers the same 100 messages
        return [counter_engine.handle("u", "+1", message_id=mid) for mid in ids]

    results = _run_threads(worker)
    applied = [r for r in results if not r.duplicate]
    assert len(applied) == 100
    assert sum(r.duplicate for r in results) == 700
    final = counter_engine.peek("u")
    assert final is not None and final.data["count"] == 100


def test_side_effect_step_runs_under_the_lock_once_per_message(clock: FakeClock) -> None:
    flow = Counter()
    engine = Engine(flow, MemoryStore(clock=clock), clock=clock, lock_wait=30)
    engine.handle("u", "locked")

    def worker(n: int) -> list[Result]:
        return [engine.handle("u", "+1", message_id=f"{n}-{i}") for i in range(40)]

    results = _run_threads(worker)
    assert flow.side_effects == THREADS * 40
    assert flow.overlaps == 0  # never two handlers at once for one user
    final = engine.peek("u")
    assert final is not None and final.data["count"] == THREADS * 40
    assert engine.store.lock_info("u") is None  # every lease released
    assert engine.stats["conflicts"] == 0  # under the lock, compare-and-set never lost
    assert len({r.snapshot.version for r in results}) == len(results)


class _RacingStore(MemoryStore):
    """A store where another writer saves between every load and save of ours."""

    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        loaded = super().load(user_key, message_id=message_id)
        if loaded.record is not None:
            rec = loaded.record
            other = decode_snapshot(rec.payload)
            bumped = msgspec.structs.replace(other, version=rec.version + 1)
            super().save(
                user_key,
                encode_snapshot(bumped),
                version=rec.version + 1,
                expected_version=rec.version,
                ttl=60,
            )
        return loaded


def test_conflicts_are_bounded_then_reported(clock: FakeClock) -> None:
    store = _RacingStore(clock=clock)
    engine = Engine(Counter(), store, clock=clock, max_attempts=4)
    engine.handle("u", "go")
    before = store.load("u").record
    with pytest.raises(ConflictError) as info:
        engine.handle("u", "+1")
    assert info.value.attempts == 4 and info.value.user_key == "u"
    assert engine.stats["conflicts"] == 4
    after = store.load("u").record
    assert before is not None and after is not None
    assert after.version > before.version  # only the racing writer's saves landed
