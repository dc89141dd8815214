"""MemoryStore specifics: argument checks, bounded memory, quarantine limit. The behaviour every
store shares is in ``test_store_contract.py``."""

from __future__ import annotations

import doctest
import math

import pytest

from adapters import memory
from adapters.memory import MemoryStore
from fsm.clock import FakeClock
from fsm.records import HistoryEntry, Record


def entry(version: int) -> HistoryEntry:
    return HistoryEntry(
        version=version, from_stage="A", to_stage="B", event="go", update_from="test", at=0.0
    )


def sizes(store: MemoryStore) -> dict[str, int]:
    return {
        "sessions": len(store._sessions),
        "history": len(store._history),
        "seen": len(store._seen),
        "locks": len(store._locks),
    }


def heap_bound(store: MemoryStore) -> int:
    """About one heap entry per live entry (and a few for entries gone before their time)."""
    return sum(sizes(store).values()) + 8


def test_docstring_example_runs() -> None:
    assert doctest.testmod(memory, raise_on_error=True).attempted > 0


@pytest.mark.parametrize(
    "option",
    ["history_limit", "history_ttl", "dedupe_limit", "dedupe_ttl", "quarantine_limit"],
)
@pytest.mark.parametrize("value", [0, -1, math.nan])
def test_constructor_refuses_non_positive_limits(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        MemoryStore(**{option: value})  # type: ignore[arg-type]


def test_argument_checks() -> None:
    store = MemoryStore(clock=FakeClock())
    with pytest.raises(ValueError, match="ttl"):
        store.acquire_lock("u", "a", 0)
    store.acquire_lock("u", "a", 1)
    with pytest.raises(ValueError, match="ttl"):
        store.extend_lock("u", "a", -1)
    with pytest.raises(ValueError, match="batch"):
        list(store.scan(batch=0))
    with pytest.raises(ValueError, match="limit"):
        store.history("u", limit=-1)


def test_default_clock_is_the_system_clock() -> None:
    store = MemoryStore()
    store.save("u", b"x", version=1, expected_version=0, ttl=60)
    ttl = store.ttl("u")
    assert ttl is not None and 59 < ttl <= 60


def test_expired_entries_are_dropped_on_access() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, dedupe_ttl=5, history_ttl=5)
    store.save("u", b"x", version=1, expected_version=0, ttl=5, history=entry(1), message_id="m")
    store.acquire_lock("u", "a", 5)
    clock.advance(6)
    store._deadlines.clear()  # no sweep help: only the reads themselves may purge
    assert store.load("u", message_id="m").record is None
    assert store.history("u") == []
    assert store.lock_info("u") is None
    assert sizes(store) == {"sessions": 0, "history": 0, "seen": 0, "locks": 0}


def test_sweep_leaves_no_residue_of_expired_users() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, history_ttl=50, dedupe_ttl=50)
    for n in range(20_000):
        key = f"user-{n}"
        store.save(
            key, b"x", version=1, expected_version=0, ttl=10, history=entry(1), message_id="m"
        )
        store.acquire_lock(key, "owner", 10)
    assert sizes(store) == {"sessions": 20_000, "history": 20_000, "seen": 20_000, "locks": 20_000}
    clock.advance(100)
    # A handful of users keep writing; nobody reads the expired ones again.
    for version in range(1, 201):
        for key in ("hot-1", "hot-2"):
            store.save(
                key, b"y", version=version, expected_version=version - 1, ttl=10,
                history=entry(version), message_id=f"m{version}",
            )  # fmt: skip
    assert sizes(store) == {"sessions": 2, "history": 2, "seen": 2, "locks": 0}
    assert len(store._deadlines) <= heap_bound(store)
    assert store.load("hot-1").record == Record(b"y", 200)
    assert sorted(store.scan()) == ["hot-1", "hot-2"]


def test_reads_alone_also_sweep() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for n in range(2_000):
        store.save(f"user-{n}", b"x", version=1, expected_version=0, ttl=10)
    clock.advance(11)
    for _ in range(10):
        store.load("somebody")
    assert sizes(store)["sessions"] == 0 and len(store._deadlines) == 0


def test_refreshing_one_key_keeps_the_heap_small() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, dedupe_limit=4)
    for version in range(1, 20_001):
        store.save(
            "hot", b"x", version=version, expected_version=version - 1, ttl=3600,
            history=entry(version), message_id=f"m{version}",
        )  # fmt: skip
        store.acquire_lock("hot", "a", 60)
        store.release_lock("hot", "a")
    assert len(store._deadlines) <= heap_bound(store)
    assert len(store._seen["hot"]) == 4
    assert len(store.history("hot")) == 50


def test_quarantine_is_bounded_and_counts_drops() -> None:
    clock = FakeClock(1_000.0)
    store = MemoryStore(clock=clock, quarantine_limit=3)
    ids = []
    for n in range(5):
        store.save(f"u{n}", b"raw%d" % n, version=1, expected_version=0, ttl=60)
        qid = store.quarantine(f"u{n}", b"raw%d" % n, "bad")
        assert qid is not None and qid.startswith("1000000-")
        ids.append(qid)
    assert [e.id for e in store.quarantined()] == ids[2:]
    assert [e.raw for e in store.quarantined()] == [b"raw2", b"raw3", b"raw4"]
    assert store.quarantine_dropped == 2


def test_quarantined_is_a_snapshot() -> None:
    store = MemoryStore(clock=FakeClock())
    store.save("a", b"1", version=1, expected_version=0, ttl=60)
    store.save("b", b"2", version=1, expected_version=0, ttl=60)
    store.quarantine("a", b"1", "bad")
    entries = store.quarantined()
    next(entries)
    store.quarantine("b", b"2", "bad")  # writing meanwhile does not break the iteration
    assert list(entries) == []
    assert len(list(store.quarantined())) == 2


def test_expired_history_is_not_revived_by_a_save() -> None:
    from fsm.clock import FakeClock
    from fsm.records import HistoryEntry

    clock = FakeClock()
    store = MemoryStore(clock=clock, history_ttl=5)

    def entry(v: int) -> HistoryEntry:
        return HistoryEntry(version=v, from_stage="a", to_stage="a", event="", update_from="t",
                            at=clock.now())  # fmt: skip

    # Many expiries due at once, ours sorting last: one amortised sweep cannot reach it.
    for n in range(2_000):
        store.save(f"z{n}", b"1", version=1, expected_version=0, ttl=60, history=entry(1))
    store.save("zz-last", b"1", version=1, expected_version=0, ttl=60, history=entry(1))
    clock.advance(6)  # the history expired; nothing swept it yet
    store.save("zz-last", b"2", version=2, expected_version=1, ttl=60, history=entry(2))
    assert [h.version for h in store.history("zz-last")] == [2]


def test_the_sweep_follows_a_deadline_that_moved_either_way() -> None:
    """One heap entry per live entry: a TTL that slides later is found when the earlier
    deadline comes due, and one that moves earlier is queued again, so both are purged on
    time by the sweep alone (nobody reads these users again)."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.save("later", b"x", version=1, expected_version=0, ttl=10)
    store.save("sooner", b"x", version=1, expected_version=0, ttl=100)
    store.acquire_lock("sooner", "a", 100)
    store.release_lock("sooner", "a")
    store.acquire_lock("sooner", "b", 5)
    clock.advance(8)
    store.save("later", b"y", version=2, expected_version=1, ttl=10)  # now due at 18
    store.save("sooner", b"y", version=2, expected_version=1, ttl=1)  # now due at 9
    clock.advance(3)  # t = 11: "later" was queued for 10, is live until 18
    store.load("somebody")
    assert sizes(store) == {"sessions": 1, "history": 0, "seen": 0, "locks": 0}
    assert store.load("later").record == Record(b"y", 2)
    clock.advance(8)  # t = 19
    store.load("somebody")
    assert sizes(store)["sessions"] == 0
    # What is left in the heap is superseded, dropped when due.
    assert store._deadlines._queued == {}
    clock.advance(100)
    store.load("somebody")
    assert len(store._deadlines) == 0
