"""Real threads against one user through Engine.handle on the memory store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest

from adapters import MemoryStore
from fsm import Engine, FakeClock, Result, decode_snapshot, encode_snapshot
from fsm.engine import LOCK_AFTER_CONFLICTS
from fsm.errors import ConflictError
from fsm.records import SaveResult
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
    """A store where another writer saves just before every save of ours."""

    racing = False

    def save(self, user_key: str, payload: bytes, **kw: Any) -> SaveResult:
        rec = super().load(user_key).record
        if self.racing and rec is not None:
            other = decode_snapshot(rec.payload)
            bumped = msgspec.structs.replace(other, version=rec.version + 1)
            super().save(
                user_key,
                encode_snapshot(bumped),
                version=rec.version + 1,
                expected_version=rec.version,
                ttl=60,
            )
        return super().save(user_key, payload, **kw)


def test_conflicts_are_bounded_then_reported(clock: FakeClock) -> None:
    store = _RacingStore(clock=clock)
    engine = Engine(Counter(), store, clock=clock, max_attempts=LOCK_AFTER_CONFLICTS)
    engine.handle("u", "go")
    store.racing = True
    before = store.load("u").record
    with pytest.raises(ConflictError) as info:
        engine.handle("u", "+1")
    assert info.value.attempts == LOCK_AFTER_CONFLICTS and info.value.user_key == "u"
    assert engine.stats["conflicts"] == LOCK_AFTER_CONFLICTS
    assert engine.stats["lock_acquisitions"] == 0
    after = store.load("u").record
    assert before is not None and after is not None
    assert after.version > before.version  # only the racing writer's saves landed


def test_after_a_few_conflicts_the_lease_wins_because_every_writer_respects_it(
    clock: FakeClock,
) -> None:
    store = _RacingStore(clock=clock)
    engine = Engine(Counter(), store, clock=clock)
    engine.handle("u", "go")
    store.racing = True
    result = engine.handle("u", "+1")  # the racer is refused (LOCKED) once we hold the lease
    assert engine.stats["conflicts"] == LOCK_AFTER_CONFLICTS
    assert engine.stats["lock_acquisitions"] == 1
    assert result.snapshot == engine.peek("u") and store.lock_info("u") is None


def test_same_message_redelivered_to_a_side_effect_step_runs_it_once(clock: FakeClock) -> None:
    flow = Counter()
    engine = Engine(flow, MemoryStore(clock=clock), clock=clock, lock_wait=30)
    engine.handle("u", "locked")

    def worker(n: int) -> list[Result]:  # 8 deliveries of each of 20 messages, all at once
        return [engine.handle("u", "+1", message_id=f"m{i}") for i in range(20)]

    results = _run_threads(worker)
    assert flow.side_effects == 20  # once per message, not once per delivery
    assert sum(not r.duplicate for r in results) == 20
    assert engine.peek("u").data["count"] == 20  # type: ignore[union-attr]


class _SlowCounter(Counter):
    """The first side effect outlives its lease: it moves the clock past lock_ttl and waits
    while a re-delivery of the same message takes the lapsed lock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.lapsed = threading.Event()
        self.resume = threading.Event()

    def locked(self, ctx):  # type: ignore[no-untyped-def]
        if not self.lapsed.is_set():
            self.clock.advance(31)
            self.lapsed.set()
            assert self.resume.wait(10)
        return super().locked(ctx)


def test_side_effect_outliving_its_lease_is_reported_not_hidden(clock: FakeClock) -> None:
    flow = _SlowCounter(clock)
    engine = Engine(flow, MemoryStore(clock=clock), clock=clock, lock_ttl=30, lock_wait=5)
    engine.handle("u", "locked")
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            engine.handle("u", "+1", message_id="m1")
        except ConflictError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    assert flow.lapsed.wait(10)
    second = engine.handle("u", "+1", message_id="m1")  # the webhook re-delivers
    flow.resume.set()
    thread.join(10)
    assert not second.duplicate and second.snapshot.data["count"] == 1
    assert len(errors) == 1  # the late first delivery says so instead of acking a duplicate
    assert engine.stats["lease_lost"] == 1
    assert engine.peek("u").data["count"] == 1  # type: ignore[union-attr]
