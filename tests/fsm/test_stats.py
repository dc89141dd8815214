"""EngineStats: counted per thread without a lock, read as one total."""

from __future__ import annotations

import threading

from fsm.stats import LATENCY_BUCKETS, EngineStats


def test_counts_from_many_threads_add_up_exactly() -> None:
    stats = EngineStats()
    threads_n, per_thread = 8, 5_000
    start = threading.Barrier(threads_n)

    def count(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            stats.incr("applied")
            stats.observe("save", 0.0001 * (n + 1))
            if i % 2:
                stats.incr("conflicts")

    threads = [threading.Thread(target=count, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):  # reads while threads count: never an error
        assert stats["applied"] <= threads_n * per_thread
        stats.latencies()
    for thread in threads:
        thread.join()
    assert stats["applied"] == threads_n * per_thread
    assert stats.as_dict() == {"applied": 40_000, "conflicts": 20_000}
    save = stats.latencies()["save"]
    assert save.count == sum(save.buckets) == threads_n * per_thread
    expected = sum(0.0001 * (n + 1) for n in range(threads_n)) * per_thread
    assert abs(save.sum - expected) < 1e-6
    assert len(save.buckets) == len(LATENCY_BUCKETS) + 1


def test_a_thread_that_ended_keeps_its_counts() -> None:
    stats = EngineStats()
    worker = threading.Thread(target=lambda: stats.incr("corrupt", 3))
    worker.start()
    worker.join()
    stats.incr("corrupt")
    assert stats["corrupt"] == 4 and stats["unknown"] == 0
    assert "corrupt" in repr(stats)


def test_threads_that_ended_are_folded_into_one_total() -> None:
    """A thread per request must not grow the stats: an ended thread's shard is added into
    one total (when a new thread first counts, and on every read)."""
    stats = EngineStats()

    def count_once() -> None:
        stats.observe("save", 0.001)
        stats.incr("applied")

    for _ in range(200):
        worker = threading.Thread(target=count_once)
        worker.start()
        worker.join()
    assert stats["applied"] == 200
    assert stats.latencies()["save"].count == 200
    assert len(stats._shards) <= 1  # at most the reading thread's, none of the 200
