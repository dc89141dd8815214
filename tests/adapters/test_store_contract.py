"""The Store contract: every adapter runs this whole module, the async ones included.

Adding an adapter means adding one entry to ``ADAPTERS``: a context manager that opens a fresh
store as a :class:`StoreEnv` (the store, the clock it runs on and how to move it), and the length
of one test time unit. Every duration here is counted in ticks, so a real-time adapter can pick a
short tick and sleep in ``advance``, while the memory store moves a fake clock.

An async adapter runs behind :class:`~tests.adapters.async_facade.AsyncStoreFacade`: its own
methods on an event loop, the operator's methods (``scan``, ``sessions``, ...) on a sync store
over the same data, so the tests that list what they saved also show that sync and async stores
read each other's writes.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, NamedTuple

import pytest

from adapters.memory import MemoryStore
from adapters.memory_async import AsyncMemoryStore
from adapters.redis import RedisStore
from adapters.redis_async import AsyncRedisStore
from fsm.clock import FakeClock
from fsm.records import Due, DueStats, HistoryEntry, Loaded, Record, SaveStatus
from fsm.store import AsyncStore, Store
from tests import redis_servers
from tests.adapters.async_facade import AsyncStoreFacade
from tests.adapters.postgres_envs import postgres_adapters
from tests.adapters.sqlite_envs import sqlite_adapters


class StoreEnv:
    """One store under test and control over the time it sees."""

    def __init__(
        self, store: Store, clock: FakeClock, *, tick: float, advance: Callable[[float], None]
    ) -> None:
        self.store = store
        self.clock = clock  # the clock the store reads (or one that follows it)
        self.tick = tick  # one test time unit, in seconds
        self._advance = advance

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for the store."""
        self._advance(seconds)

    def wait(self, ticks: float) -> None:
        self.advance(ticks * self.tick)


@contextmanager
def memory_env(tick: float, **options: Any) -> Iterator[StoreEnv]:
    clock = FakeClock()
    store = MemoryStore(clock=clock, **options)
    try:
        yield StoreEnv(store, clock, tick=tick, advance=clock.advance)
    finally:
        store.close()


@contextmanager
def async_memory_env(tick: float, **options: Any) -> Iterator[StoreEnv]:
    clock = FakeClock()
    twin = MemoryStore(clock=clock, **options)
    store = AsyncStoreFacade(AsyncMemoryStore(store=twin), twin)
    try:
        yield StoreEnv(store, clock, tick=tick, advance=clock.advance)
    finally:
        store.close()


_namespaces = itertools.count(1)


def _redis_env(
    url: Callable[[], str], *, asynchronous: bool = False
) -> Callable[..., AbstractContextManager[StoreEnv]]:
    """A fresh namespace on a real redis-server deployment per store; time is real time. With
    ``asynchronous``, an AsyncRedisStore, with a RedisStore on the same namespace as its twin."""

    @contextmanager
    def open_env(tick: float, **options: Any) -> Iterator[StoreEnv]:
        namespace = f"contract{next(_namespaces)}-{os.getpid()}"
        store: Store = RedisStore.from_url(url(), namespace=namespace, **options)
        if asynchronous:
            astore: AsyncStore = AsyncRedisStore.from_url(url(), namespace=namespace, **options)
            store = AsyncStoreFacade(astore, store)
        clock = FakeClock(time.time())

        def advance(seconds: float) -> None:
            time.sleep(seconds)
            clock.advance(seconds)

        try:
            yield StoreEnv(store, clock, tick=tick, advance=advance)
        finally:
            store.close()

    return open_env


class Adapter(NamedTuple):
    tick: float  # one test time unit for this adapter, in seconds
    open: Callable[..., AbstractContextManager[StoreEnv]]  # (tick, **store options)


def _standalone() -> str:
    return redis_servers.standalone().url


def _cluster() -> str:
    return redis_servers.cluster().url


def _sentinel() -> str:
    return redis_servers.sentinel().url


# One entry per adapter; each opens a fresh, empty store.
ADAPTERS: dict[str, Adapter] = {
    "memory": Adapter(tick=1.0, open=memory_env),
    "redis": Adapter(tick=0.1, open=_redis_env(_standalone)),
    "redis-cluster": Adapter(tick=0.1, open=_redis_env(_cluster)),
    "redis-sentinel": Adapter(tick=0.1, open=_redis_env(_sentinel)),
    "async-memory": Adapter(tick=1.0, open=async_memory_env),
    "async-redis": Adapter(tick=0.1, open=_redis_env(_standalone, asynchronous=True)),
    "async-redis-cluster": Adapter(tick=0.1, open=_redis_env(_cluster, asynchronous=True)),
    "async-redis-sentinel": Adapter(tick=0.1, open=_redis_env(_sentinel, asynchronous=True)),
}
# The SQL stores' entries live in their own modules (each opens a fresh store as a StoreEnv).
ADAPTERS.update(sqlite_adapters(Adapter, StoreEnv))
ADAPTERS.update(postgres_adapters(Adapter, StoreEnv))


class EnvMaker:
    """Opens stores of one adapter with given limits (``history_limit=3``, ...)."""

    def __init__(self, adapter: Adapter, stack: ExitStack) -> None:
        self.tick = adapter.tick
        self._adapter = adapter
        self._stack = stack  # closes every store this maker opened, at teardown

    def __call__(self, **options: Any) -> StoreEnv:
        return self._stack.enter_context(self._adapter.open(self.tick, **options))


@pytest.fixture(params=sorted(ADAPTERS))
def make_store_env(request: pytest.FixtureRequest) -> Iterator[EnvMaker]:
    with ExitStack() as stack:
        yield EnvMaker(ADAPTERS[request.param], stack)


@pytest.fixture
def store_env(make_store_env: EnvMaker) -> StoreEnv:
    return make_store_env()


def entry(version: int, *, at: float = 0.0, event: str = "next") -> HistoryEntry:
    return HistoryEntry(
        version=version,
        from_stage=f"S{version - 1}",
        to_stage=f"S{version}",
        event=event,
        update_from="test",
        at=at,
    )


def approx_ticks(env: StoreEnv, ticks: float) -> Any:
    return pytest.approx(ticks * env.tick, abs=env.tick / 2)


# -- sessions ------------------------------------------------------------------------------
def test_load_of_missing_key_is_empty(store_env: StoreEnv) -> None:
    store = store_env.store
    assert store.load("nobody") == Loaded(None, False)
    assert store.load("nobody", message_id="m1") == Loaded(None, False)
    assert store.ttl("nobody") is None
    assert store.history("nobody") == []


def test_save_with_expected_version_zero_creates(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    result = store.save("u", b"\x00snap\xff", version=1, expected_version=0, ttl=10 * t)
    assert result.saved and result.status is SaveStatus.SAVED
    assert store.load("u").record == Record(b"\x00snap\xff", 1)


def test_conflict_returns_current_record_and_changes_nothing(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t, history=entry(1))
    for expected in (0, 2, 5):
        result = store.save(
            "u",
            b"other",
            version=expected + 1,
            expected_version=expected,
            ttl=10 * t,
            history=entry(expected + 1),
            message_id=f"m{expected}",
        )
        assert result.status is SaveStatus.CONFLICT and not result.saved
        assert result.current == Record(b"one", 1)
    assert store.load("u").record == Record(b"one", 1)
    assert store.history("u") == [entry(1)]
    assert not any(store.load("u", message_id=f"m{n}").seen for n in (0, 2, 5))


def test_conflict_on_missing_session_reports_nothing_stored(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    result = store.save("u", b"x", version=4, expected_version=3, ttl=10 * t)
    assert result.status is SaveStatus.CONFLICT and result.current is None
    assert store.load("u").record is None


def test_version_chain(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    for version in range(1, 11):
        result = store.save(
            "u", b"v%d" % version, version=version, expected_version=version - 1, ttl=10 * t
        )
        assert result.saved
    assert store.load("u").record == Record(b"v10", 10)
    stale = store.save("u", b"stale", version=10, expected_version=9, ttl=10 * t)
    assert stale.status is SaveStatus.CONFLICT and stale.current == Record(b"v10", 10)


def test_save_refuses_nonsense_arguments(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    for ttl in (0, -1.0):
        with pytest.raises(ValueError):
            store.save("u", b"x", version=1, expected_version=0, ttl=ttl)
    for version, expected in ((1, 1), (0, 0), (1, 2)):
        with pytest.raises(ValueError):
            store.save("u", b"x", version=version, expected_version=expected, ttl=t)
    assert store.load("u").record is None


# -- message ids ---------------------------------------------------------------------------
def test_duplicate_message_id_is_refused_atomically(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    first = store.save(
        "u", b"one", version=1, expected_version=0, ttl=10 * t, history=entry(1), message_id="m1"
    )
    assert first.saved
    assert store.load("u", message_id="m1").seen
    assert not store.load("u", message_id="m2").seen
    assert not store.load("u").seen

    again = store.save(
        "u", b"two", version=2, expected_version=1, ttl=10 * t, history=entry(2), message_id="m1"
    )
    assert again.status is SaveStatus.DUPLICATE and again.current == Record(b"one", 1)
    assert store.load("u").record == Record(b"one", 1)
    assert store.history("u") == [entry(1)]

    fresh = store.save("u", b"two", version=2, expected_version=1, ttl=10 * t, message_id="m2")
    assert fresh.saved and store.load("u", message_id="m2") == Loaded(Record(b"two", 2), True)


def test_duplicate_wins_over_conflict(store_env: StoreEnv) -> None:
    # A re-delivered webhook carries the version its first delivery already moved past: the
    # engine must learn "duplicate" (acknowledge) rather than "conflict" (retry and re-apply).
    store, t = store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    store.save("u", b"two", version=2, expected_version=1, ttl=10 * t, message_id="m2")
    result = store.save("u", b"x", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    assert result.status is SaveStatus.DUPLICATE and result.current == Record(b"two", 2)


def test_message_ids_survive_session_delete(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    assert store.delete("u")
    assert store.load("u", message_id="m1") == Loaded(None, True)
    result = store.save("u", b"x", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    assert result.status is SaveStatus.DUPLICATE and result.current is None
    assert store.load("u").record is None


def test_message_id_of_another_user_is_not_a_duplicate(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    store.save("alice", b"a", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    assert not store.load("bob", message_id="m1").seen
    result = store.save("bob", b"b", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    assert result.saved and store.load("bob", message_id="m1").seen


def test_dedupe_limit_evicts_oldest_ids(make_store_env: EnvMaker) -> None:
    env = make_store_env(dedupe_limit=3)
    store, t = env.store, env.tick
    for version in range(1, 5):
        store.save(
            "u", b"x", version=version, expected_version=version - 1, ttl=10 * t,
            message_id=f"m{version}",
        )  # fmt: skip
    assert not store.load("u", message_id="m1").seen
    assert all(store.load("u", message_id=f"m{n}").seen for n in (2, 3, 4))
    assert store.save("u", b"y", version=5, expected_version=4, ttl=10 * t, message_id="m1").saved


def test_seen_message_ids_expire(make_store_env: EnvMaker) -> None:
    env = make_store_env(dedupe_ttl=5 * make_store_env.tick)
    store, t = env.store, env.tick
    store.save("u", b"x", version=1, expected_version=0, ttl=100 * t, message_id="m1")
    env.wait(3)
    assert store.load("u", message_id="m1").seen
    env.wait(3)
    assert not store.load("u", message_id="m1").seen
    assert store.load("u").record == Record(b"x", 1)


# -- TTL -----------------------------------------------------------------------------------
def test_ttl_slides_on_save_and_expiry_hides_the_session(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t)
    assert store.ttl("u") == approx_ticks(env, 10)
    env.wait(6)
    assert store.ttl("u") == approx_ticks(env, 4)
    assert store.save("u", b"two", version=2, expected_version=1, ttl=10 * t).saved
    assert store.ttl("u") == approx_ticks(env, 10)
    env.wait(6)  # 12 ticks after the first save: alive only because the second save slid it
    assert store.load("u").record == Record(b"two", 2)
    env.wait(5)
    assert store.load("u") == Loaded(None, False)
    assert store.ttl("u") is None
    assert "u" not in set(store.scan())
    assert not store.delete("u")
    stale = store.save("u", b"x", version=3, expected_version=2, ttl=10 * t)
    assert stale.status is SaveStatus.CONFLICT and stale.current is None
    assert store.save("u", b"new", version=1, expected_version=0, ttl=10 * t).saved
    assert store.load("u").record == Record(b"new", 1)


def test_conflict_does_not_refresh_ttl(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t)
    env.wait(6)
    store.save("u", b"x", version=6, expected_version=5, ttl=10 * t)
    assert store.ttl("u") == approx_ticks(env, 4)


# -- history -------------------------------------------------------------------------------
def test_history_is_bounded_and_newest_first(make_store_env: EnvMaker) -> None:
    env = make_store_env(history_limit=3)
    store, t = env.store, env.tick
    for version in range(1, 6):
        store.save(
            "u", b"x", version=version, expected_version=version - 1, ttl=10 * t,
            history=entry(version),
        )  # fmt: skip
    store.save("u", b"x", version=6, expected_version=5, ttl=10 * t)  # no history: none added
    assert [h.version for h in store.history("u")] == [5, 4, 3]
    assert store.history("u")[0] == entry(5)
    assert [h.version for h in store.history("u", limit=2)] == [5, 4]
    assert [h.version for h in store.history("u", limit=10)] == [5, 4, 3]
    assert store.history("u", limit=0) == []
    assert store.history("someone else") == []


def test_history_survives_session_expiry_and_delete(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    store.save("u", b"x", version=1, expected_version=0, ttl=2 * t, history=entry(1))
    env.wait(3)
    assert store.load("u").record is None
    assert store.history("u") == [entry(1)]
    store.save("u", b"y", version=1, expected_version=0, ttl=2 * t, history=entry(1, event="b"))
    assert store.delete("u")
    assert store.history("u") == [entry(1, event="b"), entry(1)]


def test_history_expires_on_its_own_ttl_refreshed_by_appends(make_store_env: EnvMaker) -> None:
    env = make_store_env(history_ttl=20 * make_store_env.tick)
    store, t = env.store, env.tick
    store.save("u", b"x", version=1, expected_version=0, ttl=100 * t, history=entry(1))
    env.wait(15)
    store.save("u", b"x", version=2, expected_version=1, ttl=100 * t)  # no append: no refresh
    env.wait(6)
    assert store.history("u") == []
    store.save("u", b"x", version=3, expected_version=2, ttl=100 * t, history=entry(3))
    env.wait(15)
    store.save("u", b"x", version=4, expected_version=3, ttl=100 * t, history=entry(4))
    env.wait(15)  # 30 ticks after the first append, 15 after the last
    assert [h.version for h in store.history("u")] == [4, 3]


def test_imported_history_reads_as_if_saved_bounded_and_expiring(
    make_store_env: EnvMaker,
) -> None:
    env = make_store_env(history_limit=3, history_ttl=20 * make_store_env.tick)
    store, t = env.store, env.tick
    assert store.import_history("u", []) == 0
    assert store.history("u") == []
    assert store.import_history("u", [entry(1), entry(2)]) == 2  # no session: history only
    assert store.history("u") == [entry(2), entry(1)]
    assert store.load("u").record is None
    store.save("u", b"x", version=3, expected_version=0, ttl=10 * t, history=entry(3))
    assert store.import_history("u", [entry(4), entry(5)]) == 2
    assert [h.version for h in store.history("u")] == [5, 4, 3]  # bounded, newest first
    store.save("u", b"y", version=4, expected_version=3, ttl=10 * t, history=entry(6))
    assert [h.version for h in store.history("u")] == [6, 5, 4]  # saves append after it
    assert store.import_history("v", [entry(n) for n in range(1, 8)]) == 7
    assert [h.version for h in store.history("v")] == [7, 6, 5]
    env.wait(15)
    store.import_history("v", [entry(8)])  # an import refreshes the history's TTL...
    env.wait(15)
    assert [h.version for h in store.history("v")] == [8, 7, 6]
    assert store.history("u") == []  # ... and an untouched one expires
    store.import_history("u", [entry(9)])  # after expiry it starts afresh
    assert store.history("u") == [entry(9)]


# -- delete and scan -----------------------------------------------------------------------
def test_delete_removes_only_the_session(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    store.save("u", b"x", version=1, expected_version=0, ttl=10 * t, history=entry(1))
    store.save("other", b"o", version=1, expected_version=0, ttl=10 * t)
    assert store.acquire_lock("u", "owner", 10 * t)
    assert store.delete("u") is True
    assert store.load("u").record is None and store.ttl("u") is None
    assert store.delete("u") is False
    assert store.history("u") == [entry(1)]
    lock = store.lock_info("u")
    assert lock is not None and lock.owner == "owner"
    assert store.load("other").record == Record(b"o", 1)
    assert store.delete("never") is False


def test_scan_lists_live_sessions_only(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    for n in range(1200):
        ttl = 2 * t if n % 3 == 0 else 100 * t  # a third will expire
        store.save(f"user-{n}", b"x", version=1, expected_version=0, ttl=ttl)
    for n in range(1, 1200, 10):
        store.delete(f"user-{n}")
    env.wait(3)
    expected = {f"user-{n}" for n in range(1200) if n % 3 != 0 and n % 10 != 1}
    for batch in (1, 7, 500, 5000):
        keys = list(store.scan(batch=batch))
        assert len(keys) == len(set(keys)) and set(keys) == expected
    assert set(store.scan()) == expected


def test_scan_survives_concurrent_writes(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    for n in range(300):
        store.save(f"k{n}", b"x", version=1, expected_version=0, ttl=100 * t)
    seen = []
    for i, key in enumerate(store.scan(batch=16)):
        seen.append(key)
        if i == 10:  # writes and deletes in the middle of the iteration
            for n in range(300, 400):
                store.save(f"k{n}", b"x", version=1, expected_version=0, ttl=100 * t)
            for n in range(0, 300, 2):
                store.delete(f"k{n}")
    survivors = {f"k{n}" for n in range(1, 300, 2)}
    assert survivors <= set(seen)  # present throughout: always reported
    assert set(seen) <= {f"k{n}" for n in range(400)}


# -- keys ----------------------------------------------------------------------------------
AWKWARD_KEYS = [
    "",
    "a",
    "A",
    " a",
    "a ",
    "a:b",
    "a:b:c",
    "{a}",
    "a}b",
    "{",
    "}",
    "fsm:{a}:session",
    "a\nb",
    "a\x00b",
    "ä",
    "日本語",
    "😀",
    "+44 7700 900123",
    "*",
    "a?",
    "[ab]",
]


def test_awkward_user_keys_are_distinct(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    for i, key in enumerate(AWKWARD_KEYS):
        payload = key.encode() + b"|%d" % i
        saved = store.save(
            key, payload, version=1, expected_version=0, ttl=10 * t, history=entry(1, event=key),
            message_id="m",
        )  # fmt: skip
        assert saved.saved, key
        assert store.acquire_lock(key, f"owner-{i}", 10 * t), key
    for i, key in enumerate(AWKWARD_KEYS):
        expected = Loaded(Record(key.encode() + b"|%d" % i, 1), seen=True, locked=True)
        assert store.load(key, message_id="m") == expected
        assert store.history(key) == [entry(1, event=key)]
        lock = store.lock_info(key)
        assert lock is not None and lock.owner == f"owner-{i}"
    assert sorted(store.scan(batch=4)) == sorted(AWKWARD_KEYS)
    assert store.delete("a:b")
    assert store.load("a:b:c").record is not None and store.load("a").record is not None


# -- lease lock ----------------------------------------------------------------------------
def _left_of(store: Store, owner: str, ttl: float, since: float) -> None:
    """The user's lock is ``owner``'s, with what is left of ``ttl`` taken at ``since``
    (``time.monotonic()``): less the time that passed, never more (not extended)."""
    info = store.lock_info("u")
    passed = time.monotonic() - since
    assert info is not None and info.owner == owner
    assert ttl - passed - 0.01 <= info.ttl <= ttl + 0.005, (info.ttl, ttl, passed)


def test_lock_acquire_release_owner_only(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    assert store.lock_info("u") is None
    taken = time.monotonic()
    assert store.acquire_lock("u", "a", 10 * t)
    assert not store.acquire_lock("u", "b", 10 * t)
    assert not store.acquire_lock("u", "a", 10 * t)  # not re-entrant
    _left_of(store, "a", 10 * t, taken)
    assert store.acquire_lock("v", "b", 10 * t)  # locks are per user

    assert not store.release_lock("u", "b")
    assert not store.extend_lock("u", "b", 50 * t)
    _left_of(store, "a", 10 * t, taken)  # b's extend did not extend it

    assert store.release_lock("u", "a")
    assert store.lock_info("u") is None
    assert not store.release_lock("u", "a")
    assert store.acquire_lock("u", "b", 10 * t)


def test_lock_extend_and_expiry(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    assert store.acquire_lock("u", "a", 10 * t)
    env.wait(6)
    assert store.extend_lock("u", "a", 10 * t)
    info = store.lock_info("u")
    assert info is not None and info.ttl == approx_ticks(env, 10)
    env.wait(6)  # 12 ticks after acquiring: held only thanks to the extension
    assert not store.acquire_lock("u", "b", 10 * t)
    env.wait(5)
    assert store.lock_info("u") is None
    assert not store.extend_lock("u", "a", 10 * t)  # an expired lease cannot be revived
    assert store.acquire_lock("u", "b", 10 * t)
    assert not store.release_lock("u", "a")  # the old owner cannot free the new holder's lock
    info = store.lock_info("u")
    assert info is not None and info.owner == "b"


def test_load_says_whether_the_user_is_locked(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    assert not store.load("u").locked
    assert store.acquire_lock("u", "a", 10 * t)
    assert store.load("u").locked and store.load("u", message_id="m").locked
    assert store.load("u").record is None  # a lock alone is not a session
    assert not store.load("v").locked  # per user
    assert store.release_lock("u", "a")
    assert not store.load("u").locked
    assert store.acquire_lock("u", "b", 5 * t)
    env.wait(6)
    assert not store.load("u").locked  # an expired lease is not a lock


def test_save_respects_another_workers_lease(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t)
    assert store.acquire_lock("u", "a", 10 * t)
    for owner in (None, "b"):
        refused = store.save(
            "u", b"two", version=2, expected_version=1, ttl=10 * t, history=entry(2),
            message_id="m", owner=owner,
        )  # fmt: skip
        assert refused.status is SaveStatus.LOCKED and refused.current == Record(b"one", 1)
    assert store.history("u") == [] and not store.load("u", message_id="m").seen
    stale = store.save("u", b"two", version=3, expected_version=2, ttl=10 * t, owner="a")
    assert stale.status is SaveStatus.CONFLICT  # the lease does not bypass the version check
    kept = store.save("u", b"two", version=2, expected_version=1, ttl=10 * t, owner="a")
    assert kept.saved
    info = store.lock_info("u")
    assert info is not None and info.owner == "a"  # still held: no release asked
    done = store.save("u", b"three", version=3, expected_version=2, ttl=10 * t, owner="a",
                      release=True)  # fmt: skip
    assert done.saved and store.lock_info("u") is None  # released in the same step
    assert store.save("u", b"four", version=4, expected_version=3, ttl=10 * t).saved


def test_a_save_can_take_the_lease_in_the_same_step(store_env: StoreEnv) -> None:
    """``lease``: the save also gives ``owner`` the lease (the engine saves a move to an
    action step and locks it for the action in one round trip); refused saves take nothing."""
    env, store, t = store_env, store_env.store, store_env.tick
    taken = store.save("u", b"one", version=1, expected_version=0, ttl=20 * t, owner="a",
                       lease=10 * t)  # fmt: skip
    assert taken.saved
    info = store.lock_info("u")
    assert info is not None and info.owner == "a" and info.ttl == approx_ticks(env, 10)
    assert store.load("u").locked and not store.acquire_lock("u", "b", 10 * t)
    # Another worker cannot take it by saving: the lease is held.
    other = store.save("u", b"x", version=2, expected_version=1, ttl=20 * t, owner="b",
                       lease=10 * t)  # fmt: skip
    assert other.status is SaveStatus.LOCKED
    assert store.save("u", b"two", version=2, expected_version=1, ttl=20 * t, owner="a",
                      release=True).saved  # fmt: skip
    assert store.lock_info("u") is None
    stale = store.save("u", b"x", version=9, expected_version=8, ttl=20 * t, owner="c",
                       lease=10 * t)  # fmt: skip
    assert stale.status is SaveStatus.CONFLICT and store.lock_info("u") is None
    assert store.save("v", b"one", version=1, expected_version=0, ttl=20 * t, owner="d",
                      lease=5 * t).saved  # fmt: skip
    env.wait(6)
    assert store.lock_info("v") is None and store.acquire_lock("v", "e", 5 * t)  # it expires
    for bad in (
        {"lease": 1.0},
        {"owner": "a", "lease": 0},
        {"owner": "a", "lease": 1.0, "release": True},
    ):
        with pytest.raises(ValueError):
            store.save("w", b"x", version=1, expected_version=0, ttl=t, **bad)  # type: ignore[arg-type]


def test_duplicate_is_reported_before_locked(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    assert store.acquire_lock("u", "a", 10 * t)
    again = store.save("u", b"x", version=2, expected_version=1, ttl=10 * t, message_id="m1")
    assert again.status is SaveStatus.DUPLICATE


def test_release_needs_an_owner(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    with pytest.raises(ValueError):
        store.save("u", b"x", version=1, expected_version=0, ttl=t, release=True)


def test_lock_and_load_in_one_step(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    store.save("u", b"one", version=1, expected_version=0, ttl=10 * t, message_id="m1")
    loaded = store.lock_and_load("u", "a", 10 * t, message_id="m1")
    assert loaded == Loaded(Record(b"one", 1), seen=True, locked=True)
    assert store.lock_and_load("u", "b", 10 * t) is None  # taken
    info = store.lock_info("u")
    assert info is not None and info.owner == "a"
    assert store.lock_and_load("nobody", "c", 10 * t) == Loaded(None, seen=False, locked=True)
    owner, fresh = store.acquire_lease_loaded("nobody-else", ttl=10 * t, wait=0.05)
    assert fresh.record is None and store.release_lock("nobody-else", owner)


def test_lease_helper(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    with store.lease("u", ttl=10 * t, wait=0.05) as owner:
        info = store.lock_info("u")
        assert info is not None and info.owner == owner
        with pytest.raises(TimeoutError), store.lease("u", ttl=10 * t, wait=0.01):
            pass
    assert store.lock_info("u") is None


# -- quarantine ----------------------------------------------------------------------------
def test_quarantine_only_when_bytes_unchanged(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    raw = bytes(range(256)) + b"\x00\xc1 not msgpack"
    store.save("u", raw, version=1, expected_version=0, ttl=10 * t, history=entry(1))
    assert store.quarantine("u", raw + b"!", "bad") is None
    assert store.quarantine("u", raw[:-1], "bad") is None
    assert store.load("u").record == Record(raw, 1)
    assert list(store.quarantined()) == []

    qid = store.quarantine("u", raw, "decode failed at $.stage")
    assert isinstance(qid, str) and qid
    assert store.load("u").record is None
    assert store.history("u") == [entry(1)]
    [moved] = store.quarantined()
    assert (moved.id, moved.user_key, moved.raw, moved.reason) == (
        qid,
        "u",
        raw,
        "decode failed at $.stage",
    )
    assert store.quarantine("u", raw, "again") is None  # nothing left to move
    assert store.quarantine("missing", b"", "none") is None


def test_quarantine_ignores_expired_session(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    store.save("u", b"raw", version=1, expected_version=0, ttl=2 * t)
    env.wait(3)
    assert store.quarantine("u", b"raw", "bad") is None
    assert list(store.quarantined()) == []


def test_quarantined_oldest_first_with_unique_ids(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    users = [f"u{n}" for n in range(5)]
    for user in users:
        store.save(user, user.encode(), version=1, expected_version=0, ttl=100 * t)
    ids = []
    for user in users:
        qid = store.quarantine(user, user.encode(), f"reason {user}")
        assert qid is not None
        ids.append(qid)
        env.wait(0.1)
    entries = list(store.quarantined())
    assert [e.user_key for e in entries] == users
    assert [e.id for e in entries] == ids and len(set(ids)) == len(ids)
    assert [e.raw for e in entries] == [u.encode() for u in users]
    assert [e.at for e in entries] == sorted(e.at for e in entries)


def test_quarantine_per_user_and_removal(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    for user in ("a", "b", "a"):
        store.save(user, b"x" + user.encode(), version=1, expected_version=0, ttl=10 * t)
        assert store.quarantine(user, b"x" + user.encode(), f"bad {user}") is not None
    assert [e.user_key for e in store.quarantined("a")] == ["a", "a"]
    assert [e.reason for e in store.quarantined("b")] == ["bad b"]
    assert list(store.quarantined("nobody")) == []
    first, second = store.quarantined("a")
    assert store.remove_quarantined("b", first.id) is None  # ids are looked up per user
    removed = store.remove_quarantined("a", first.id)
    assert removed is not None and (removed.id, removed.raw) == (first.id, b"xa")
    assert store.remove_quarantined("a", first.id) is None  # already gone
    assert {e.id for e in store.quarantined()} == {
        second.id,
        *(e.id for e in store.quarantined("b")),
    }


# -- operations ----------------------------------------------------------------------------
def test_session_view_reads_record_ttl_and_lock(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    assert store.session_view("u") is None
    store.save("u", b"p1", version=1, expected_version=0, ttl=50 * t)
    view = store.session_view("u")
    assert view is not None
    assert (view.user_key, view.record, view.lock) == ("u", Record(b"p1", 1), None)
    assert view.ttl == approx_ticks(store_env, 50)
    assert store.acquire_lock("u", "worker-1", 20 * t)
    view = store.session_view("u")
    assert view is not None and view.lock is not None
    assert view.lock.owner == "worker-1"
    assert view.lock.ttl == approx_ticks(store_env, 20)
    assert store.acquire_lock("nosession", "w", 20 * t)
    assert store.session_view("nosession") is None  # a lock alone is not a session


def test_sessions_stream_every_live_session_with_ttl_and_lock(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    users = [f"user {n}" for n in range(23)] + ["{odd}:*", "ünï"]
    started = time.monotonic()
    for n, user in enumerate(users):
        store.save(user, f"p{n}".encode(), version=1, expected_version=0, ttl=(100 + n) * t)
    store.save("short", b"gone soon", version=1, expected_version=0, ttl=2 * t)
    store.acquire_lock("user 3", "holder", 30 * t)
    env.wait(3)
    views = {v.user_key: v for v in store.sessions(batch=4)}
    # On a real-time store the saves and the scan take time too (more on a busy machine).
    slack = max(0.0, time.monotonic() - started - 3 * t)
    assert sorted(views) == sorted(users)
    for n, user in enumerate(users):
        assert views[user].record == Record(f"p{n}".encode(), 1)
        ttl = views[user].ttl
        assert ttl is not None and (100 + n - 4) * t - slack <= ttl <= (100 + n - 2) * t
    locked = {u for u, v in views.items() if v.lock is not None}
    assert locked == {"user 3"}
    with pytest.raises(ValueError):
        list(store.sessions(batch=0))


def test_server_stats_count_expired_sessions(store_env: StoreEnv) -> None:
    env, store, t = store_env, store_env.store, store_env.tick
    before = store.server_stats().get("expired_keys", 0)
    for n in range(3):
        store.save(f"e{n}", b"x", version=1, expected_version=0, ttl=1 * t)
    env.wait(3)
    for n in range(3):  # reading an expired key makes every store notice it
        assert store.load(f"e{n}").record is None
    assert store.server_stats()["expired_keys"] - before >= 3


def test_script_cache_reports_and_reloads(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    status = store.script_cache()
    scripted = store.twin if isinstance(store, AsyncStoreFacade) else store  # same scripts
    if not isinstance(scripted, RedisStore):
        assert status is None
        return
    assert status is not None
    cached, total = status
    assert total >= 7 and 0 <= cached <= total
    scripted.client.script_flush()
    assert store.script_cache() == (0, total)  # reported missing, and loaded again
    assert store.script_cache() == (total, total)
    scripted.client.script_flush()
    assert store.save("u", b"x", version=1, expected_version=0, ttl=10 * t).saved  # NOSCRIPT
    assert store.load("u").record == Record(b"x", 1)  # reloaded transparently


# -- the index of deadlines ---------------------------------------------------------------
# Times here are the engine's clock values, passed in: no test waits, on any adapter.
T0 = 1_700_000_000.25


class Deadlines:
    """A store's index of deadlines, called blocking: an async store's own methods run on its
    facade's loop; the listing (the operator's port) is the sync store's, so what an async
    store indexes, a sync one lists."""

    def __init__(self, store: Store) -> None:
        self.facade = store if isinstance(store, AsyncStoreFacade) else None
        self.store = store
        self.lister: Store = store if self.facade is None else self.facade.twin

    @property
    def keeps_timers(self) -> bool:
        return (self.store if self.facade is None else self.facade.store).keeps_timers

    def index_due(self, user_key: str, armed: str, due: float) -> None:
        if self.facade is None:
            return self.store.index_due(user_key, armed, due)
        return self.facade._wait(self.facade.store.index_due(user_key, armed, due))

    def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        if self.facade is None:
            return self.store.claim_due(now, limit=limit, hold=hold)
        return self.facade._wait(self.facade.store.claim_due(now, limit=limit, hold=hold))

    def settle_due(self, entries: Sequence[Due]) -> None:
        if self.facade is None:
            return self.store.settle_due(entries)
        return self.facade._wait(self.facade.store.settle_due(entries))

    def due_stats(self, now: float) -> DueStats:
        if self.facade is None:
            return self.store.due_stats(now)
        return self.facade._wait(self.facade.store.due_stats(now))

    def listed(self, user_key: str | None = None) -> list[tuple[str, str, float]]:
        return [(d.user_key, d.armed, d.due) for d in self.lister.indexed_due(user_key=user_key)]


@pytest.fixture
def index(store_env: StoreEnv) -> Deadlines:
    return Deadlines(store_env.store)


def test_the_store_keeps_an_index_of_deadlines(index: Deadlines) -> None:
    assert index.keeps_timers
    assert index.listed() == []
    assert index.due_stats(T0) == DueStats(indexed=0, due=0, claimed=0, oldest_due=None)
    assert index.claim_due(T0, limit=10, hold=30) == []
    index.settle_due([])  # nothing to settle: nothing happens


def test_index_due_adds_and_replaces_entries_listed_soonest_first(index: Deadlines) -> None:
    index.index_due("b", "1.aa", T0 + 20)
    index.index_due("a", "1.bb", T0 + 10)
    index.index_due("a", "2.cc", T0 + 30)
    index.index_due("c", "4.dd", T0 + 0.001)
    assert index.listed() == [
        ("c", "4.dd", T0 + 0.001), ("a", "1.bb", T0 + 10), ("b", "1.aa", T0 + 20),
        ("a", "2.cc", T0 + 30),
    ]  # fmt: skip
    index.index_due("a", "1.bb", T0 + 40)  # the same entry: its due replaced
    index.index_due("b", "1.aa", T0 + 20)  # again, as a retry would: still one entry
    assert index.listed(user_key="a") == [("a", "2.cc", T0 + 30), ("a", "1.bb", T0 + 40)]
    assert index.listed(user_key="b") == [("b", "1.aa", T0 + 20)]
    assert index.listed(user_key="nobody") == []
    stats = index.due_stats(T0 + 25)
    assert stats == DueStats(indexed=4, due=2, claimed=0, oldest_due=T0 + 0.001)


def test_awkward_user_keys_and_dues_come_back_exactly(index: Deadlines) -> None:
    dues = {key: T0 + i / 7 for i, key in enumerate([*AWKWARD_KEYS, "a|b", "a%7Cb", "|"])}
    for key, due in dues.items():
        index.index_due(key, "7.e1f2a3", due)
    listed = index.listed()
    assert sorted(listed) == sorted((key, "7.e1f2a3", due) for key, due in dues.items())
    for key, due in dues.items():
        assert index.listed(user_key=key) == [(key, "7.e1f2a3", due)]
    claimed = index.claim_due(T0 + 100, limit=1000, hold=30)
    assert {(c.user_key, c.armed, c.due) for c in claimed} == set(listed)  # dues to the bit


def test_claim_takes_what_is_due_soonest_first_up_to_the_limit(index: Deadlines) -> None:
    for n in range(30):  # due at T0 + 29, 28, ..., 0: indexed latest first
        index.index_due(f"user{n}", f"{n}.00", T0 + 29 - n)
    first = index.claim_due(T0 + 9, limit=4, hold=30)
    assert [(c.user_key, c.due) for c in first] == [
        (f"user{n}", T0 + 29 - n) for n in (29, 28, 27, 26)
    ]
    rest = index.claim_due(T0 + 9, limit=100, hold=30)
    assert [c.due for c in rest] == [T0 + n for n in range(4, 10)]  # due by T0 + 9 only
    assert index.claim_due(T0 + 9, limit=100, hold=30) == []  # claimed: hidden
    assert index.due_stats(T0 + 9) == DueStats(indexed=20, due=0, claimed=10, oldest_due=T0 + 10)
    assert [due for _, _, due in index.listed()] == [T0 + n for n in range(10, 30)]


def test_claims_whose_hold_ran_out_are_due_again_with_their_own_due(index: Deadlines) -> None:
    index.index_due("a", "1.aa", T0)
    index.index_due("b", "1.bb", T0 + 1)
    claimed = index.claim_due(T0 + 5, limit=10, hold=30)
    assert [c.user_key for c in claimed] == ["a", "b"]
    assert index.claim_due(T0 + 34.9, limit=10, hold=30) == []  # still held
    again = index.claim_due(T0 + 35, limit=1, hold=30)  # the claims' end: its ticker died
    assert again == [Due("a", "1.aa", T0)]
    stats = index.due_stats(T0 + 35)
    assert stats == DueStats(indexed=1, due=1, claimed=1, oldest_due=T0 + 1)
    assert index.listed() == [("b", "1.bb", T0 + 1)]  # back in the index, unclaimed
    index.settle_due(again)
    assert index.claim_due(T0 + 36, limit=10, hold=30) == [Due("b", "1.bb", T0 + 1)]


def test_settle_drops_claims_and_never_touches_the_index(index: Deadlines) -> None:
    index.index_due("a", "1.aa", T0)
    index.index_due("b", "1.bb", T0)
    claimed = index.claim_due(T0, limit=10, hold=30)
    assert len(claimed) == 2
    index.index_due("a", "1.aa", T0 + 50)  # looked at again later (its save may land)
    index.settle_due(claimed)
    index.settle_due(claimed)  # a retried settle: nothing more happens
    index.settle_due([Due("nobody", "9.zz", T0)])  # never claimed: nothing happens
    assert index.due_stats(T0 + 100) == DueStats(1, 1, 0, T0 + 50)
    assert index.listed() == [("a", "1.aa", T0 + 50)]
    # Settled claims never come back when their hold would have run out.
    assert index.claim_due(T0 + 40, limit=10, hold=30) == []
    assert index.claim_due(T0 + 50, limit=10, hold=30) == [Due("a", "1.aa", T0 + 50)]


def test_claim_refuses_a_limit_or_hold_that_is_not_positive(index: Deadlines) -> None:
    index.index_due("a", "1.aa", T0)
    for limit, hold in ((0, 30.0), (-1, 30.0), (10, 0.0), (10, -5.0), (10, float("nan"))):
        with pytest.raises(ValueError):
            index.claim_due(T0, limit=limit, hold=hold)
    assert index.listed() == [("a", "1.aa", T0)]  # nothing was claimed


@pytest.mark.usefixtures("eager_thread_switches")
def test_simultaneous_claimers_never_claim_the_same_entry(index: Deadlines) -> None:
    entries = {(f"user{n}", f"{n}.ab"): T0 + n / 100 for n in range(240)}
    for (user, armed), due in entries.items():
        index.index_due(user, armed, due)
    threads_n = 6
    got: list[list[Due]] = [[] for _ in range(threads_n)]
    start = threading.Barrier(threads_n)

    def work(me: int) -> None:
        start.wait()
        for _ in range(100):  # bounded: 240 entries, at least one per claim while any is due
            claimed = index.claim_due(T0 + 10, limit=7, hold=60)
            if not claimed:
                return
            got[me].extend(claimed)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [(d.user_key, d.armed, d.due) for claims in got for d in claims]
    assert sorted(every) == sorted((u, a, due) for (u, a), due in entries.items())  # once each
    assert index.due_stats(T0 + 10) == DueStats(0, 0, 240, None)


# -- concurrency ---------------------------------------------------------------------------
@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    """Switch threads as often as possible, so a check-then-act race has a chance to show."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("eager_thread_switches")
def test_threads_incrementing_one_key_produce_every_version_once(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    threads_n, loops = 8, 40
    produced: list[list[int]] = [[] for _ in range(threads_n)]
    start = threading.Barrier(threads_n)

    def work(me: int) -> None:
        start.wait()
        for _ in range(loops):
            current = store.load("hot").record
            while True:
                version = current.version if current is not None else 0
                result = store.save(
                    "hot", b"%d" % (version + 1), version=version + 1,
                    expected_version=version, ttl=100 * t,
                )  # fmt: skip
                if result.saved:
                    produced[me].append(version + 1)
                    break
                assert result.status is SaveStatus.CONFLICT
                current = result.current  # the retry needs no second read

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    total = threads_n * loops
    assert store.load("hot").record == Record(b"%d" % total, total)
    every = sorted(v for versions in produced for v in versions)
    assert every == list(range(1, total + 1))


@pytest.mark.usefixtures("eager_thread_switches")
def test_lock_gives_mutual_exclusion(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    threads_n, loops = 8, 40
    counter = [0]
    start = threading.Barrier(threads_n)

    def work() -> None:
        start.wait()
        for _ in range(loops):
            with store.lease("shared", ttl=100 * t, wait=10):
                value = counter[0]
                time.sleep(0)  # invite a thread switch inside the critical section
                counter[0] = value + 1

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert counter[0] == threads_n * loops
    assert store.lock_info("shared") is None


def race(threads_n: int, rounds: int, attempt: Callable[[int, int], bool]) -> list[int]:
    """Start ``attempt(round, thread)`` on every thread at once, round after round; returns how
    many attempts succeeded in each round."""
    wins = [0] * rounds
    tally = threading.Lock()
    start = threading.Barrier(threads_n)

    def work(me: int) -> None:
        for r in range(rounds):
            start.wait()
            if attempt(r, me):
                with tally:
                    wins[r] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return wins


@pytest.mark.usefixtures("eager_thread_switches")
def test_exactly_one_of_simultaneous_acquirers_wins(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick
    wins = race(8, 200, lambda r, me: store.acquire_lock(f"k{r}", f"owner-{me}", 100 * t))
    assert wins == [1] * 200


@pytest.mark.usefixtures("eager_thread_switches")
def test_exactly_one_of_simultaneous_writers_wins(store_env: StoreEnv) -> None:
    store, t = store_env.store, store_env.tick

    def create(r: int, me: int) -> bool:
        return store.save(f"k{r}", b"%d" % me, version=1, expected_version=0, ttl=100 * t).saved

    def same_message(r: int, me: int) -> bool:
        return store.save(
            f"k{r}", b"again", version=2 + me, expected_version=1 + me, ttl=100 * t,
            message_id="m",
        ).saved  # fmt: skip

    assert race(8, 200, create) == [1] * 200
    # Writer n expects version n+1: writer 0 always succeeds, and a writer that read the stored
    # version just after it must still be refused, by the message id that writer 0 recorded.
    wins = race(8, 200, same_message)
    assert wins == [1] * 200
