"""What the Redis stores add to the index of deadlines' contract: its layout (one slot of its
own, shards that stay compact listpacks), retries after a lost reply, the merge of shards on
a claim, and the index on a real Cluster, across a Sentinel failover and a restart with AOF.

The contract itself (tests/adapters/test_store_contract.py) runs on every Redis deployment,
sync and async. Every test here runs on a real redis-server started by the tests.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from adapters.redis import RedisStore
from adapters.redis_async import AsyncRedisStore
from adapters.redis_keys import INDEX_SHARDS, KeyLayout
from fsm import AsyncEngine, Engine, FakeClock
from fsm.errors import StoreUnavailable
from fsm.records import Due, DueStats
from tests import redis_servers
from tests.timers.timer_flows import Nudge

_names = itertools.count(1)
T0 = 1_700_000_000.0


def _namespace() -> str:
    return f"idx{next(_names)}-{os.getpid()}"


@pytest.fixture
def server() -> redis_servers.RedisServer:
    return redis_servers.standalone()


@pytest.fixture
def store(server: redis_servers.RedisServer) -> Iterator[RedisStore]:
    s = RedisStore.from_url(server.url, namespace=_namespace())
    yield s
    s.close()


def phone(n: int) -> str:
    return f"26377{n:07d}"


def to_confirm(engine: Engine, user: str) -> None:
    """Nudge's conversation to order.confirm: its two timers armed, one index entry."""
    for n, text in enumerate(("hi", "1", "5")):
        engine.handle(user, text, message_id=f"{user}-{n}")


# -- layout ----------------------------------------------------------------------------------
def test_the_index_has_a_slot_of_its_own_per_namespace(store: RedisStore) -> None:
    layout = store.layout
    assert len(layout.index_shards) == INDEX_SHARDS
    assert len({key_slot(k.encode()) for k in layout.index_keys}) == 1  # one script, all keys
    slots = {key_slot(KeyLayout(f"bot{n}").index_keys[0].encode()) for n in range(20)}
    assert len(slots) > 1  # each bot's index its own slot, not all on one primary
    store.save("u", b"x", version=1, expected_version=0, ttl=60)
    store.index_due("u", "1.aa", T0)
    store.claim_due(T0, limit=1, hold=60)
    store.index_due("u", "1.bb", T0)
    assert list(store.scan()) == ["u"]  # the index's keys are no sessions
    assert list(store.quarantined()) == []


def test_a_users_shard_is_fixed_by_the_layout() -> None:
    layout = KeyLayout("bot")
    # CRC-32 of the escaped user key: part of the layout, the same in every release and
    # every namespace (a release that moved users would strand their entries).
    keys = ("263770000001", "alice", "", "a|b", "日本")
    assert [layout.index_shard(k) for k in keys] == [110, 71, 0, 75, 1]
    assert [KeyLayout("other").index_shard(k) for k in keys] == [110, 71, 0, 75, 1]
    assert layout.index_member("a|b", "3.x") == "a%7Cb|3.x"
    assert layout.index_entry(layout.index_member("a|b%7C", "3.x")) == ("a|b%7C", "3.x")


def test_the_shards_stay_compact_listpacks(store: RedisStore, server: Any) -> None:
    """The design's memory property: a few hundred armed conversations keep every shard, and
    the claims, in Redis's compact encoding, at about 50 bytes an entry."""
    rng = random.Random(7)
    users = [phone(rng.randrange(10**7)) for _ in range(600)]

    def index(some: list[str]) -> int:
        """Index ``some`` users; the index's bytes (MEMORY USAGE) after."""
        for n, user in enumerate(some):
            armed = f"{n + 3}.{rng.getrandbits(24):06x}"  # as the engine makes them
            store.index_due(user, armed, time.time() + rng.uniform(0, 3600))
        with server.client() as client:
            return sum(client.memory_usage(k, samples=0) or 0 for k in store.layout.index_keys)

    first = index(users[:300])
    more = index(users[300:])
    assert (more - first) / 300 < 60  # per entry, past each shard's fixed cost; a skiplist: 120
    assert len(store.claim_due(time.time() + 600, limit=100, hold=30)) == 100
    with server.client() as client:
        keys = [k for k in store.layout.index_keys if client.exists(k)]
        assert len(keys) > 100  # spread over the shards (and the claims' two keys)
        encodings = {client.object("encoding", k) for k in keys}
    assert encodings == {b"listpack"}  # shards, claims and the claims' dues alike


# -- the merge of shards -----------------------------------------------------------------------
def test_a_claim_takes_the_soonest_across_every_shard_and_page(store: RedisStore) -> None:
    rng = random.Random(11)
    entries = {(phone(n), f"{n}.ab"): T0 + rng.uniform(0, 1000) for n in range(2000)}
    for (user, armed), due in entries.items():
        store.index_due(user, armed, due)
    soonest = sorted((due, user, armed) for (user, armed), due in entries.items())
    due_now = [e for e in soonest if e[0] <= T0 + 500]
    got = store.claim_due(T0 + 500, limit=300, hold=60)
    assert [(d.due, d.user_key, d.armed) for d in got] == due_now[:300]
    rest = store.claim_due(T0 + 500, limit=10_000, hold=60)
    assert [(d.due, d.user_key, d.armed) for d in rest] == due_now[300:]
    assert store.due_stats(T0 + 500).claimed == len(due_now)


def test_the_heads_stay_each_shards_soonest_due(store: RedisStore) -> None:
    """A claim reads only the shards whose head (soonest due) is due: every write keeps the
    heads exact, or an entry would never be claimed."""
    rng = random.Random(5)
    client = store.client

    def check() -> None:
        heads = {
            int(m): at for m, at in client.zrange(store.layout.index_heads, 0, -1, withscores=True)
        }
        for n, key in enumerate(store.layout.index_shards):
            first = client.zrange(key, 0, 0, withscores=True)
            assert heads.get(n) == (first[0][1] if first else None), n

    now = T0
    for _ in range(60):  # index, re-index later or sooner, claim, let claims run out, settle
        for _ in range(rng.randrange(1, 30)):
            n = rng.randrange(400)
            store.index_due(phone(n), f"{n % 3}.aa", now + rng.uniform(-5, 60))
        claimed = store.claim_due(now, limit=rng.randrange(1, 40), hold=rng.uniform(1, 20))
        store.settle_due(claimed[: len(claimed) // 2])  # the rest: their ticker "died"
        check()
        now += rng.uniform(0, 10)
    for _ in range(3):  # the claims left run out, then everything is claimed and settled
        store.settle_due(store.claim_due(now + 10_000, limit=10_000, hold=1))
        now += 2
    check()
    assert store.due_stats(now).indexed == 0 and client.exists(store.layout.index_heads) == 0


def test_the_listing_pages_through_ties_and_one_user(store: RedisStore) -> None:
    # More entries of one due than a page holds, in one shard (one user's) and in many.
    for n in range(12):
        store.index_due("same", f"{n}.aa", T0)
        store.index_due(phone(n), "1.bb", T0 + 1)
    store.index_due("same", "99.zz", T0 - 1)
    listed = list(store.indexed_due(batch=5))
    assert len(listed) == 25 and len(set(listed)) == 25
    assert [d.due for d in listed] == sorted(d.due for d in listed)
    mine = list(store.indexed_due(user_key="same", batch=5))
    assert [d.armed for d in mine] == ["99.zz", *sorted(f"{n}.aa" for n in range(12))]
    with pytest.raises(ValueError):
        list(store.indexed_due(batch=0))


# -- retries -----------------------------------------------------------------------------------
class _LosesOneReply(redis.Redis):
    """Runs the next command of a kind, then loses its reply, as a dropped connection would."""

    lose: str | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        result = super().execute_command(*args, **options)
        name = args[0] if args[0] != "EVALSHA" else f"EVALSHA:{str(args[1])[:8]}"
        if self.lose is not None and str(name).startswith(self.lose):
            self.lose = None
            raise redis.ConnectionError("reply lost")
        return result


def test_a_claim_whose_reply_was_lost_loses_no_entry(server: redis_servers.RedisServer) -> None:
    client = _LosesOneReply(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=_namespace())
    for n in range(6):
        store.index_due(phone(n), "1.aa", T0 + n)
    store.due_stats(T0)  # (scripts loaded)
    store.claim_due(T0 - 10, limit=1, hold=30)
    client.lose = f"EVALSHA:{store._scripts['claim_due'].sha[:8]}"
    retried = store.claim_due(T0 + 10, limit=2, hold=30)  # the first attempt took 0 and 1
    assert [d.user_key for d in retried] == [phone(2), phone(3)]
    assert store.claim_due(T0 + 39, limit=10, hold=30) == [
        Due(phone(n), "1.aa", T0 + n) for n in (4, 5)
    ]
    back = store.claim_due(T0 + 40, limit=10, hold=30)  # the lost claim's hold ran out
    assert [d.user_key for d in back] == [phone(0), phone(1), phone(2), phone(3)]


def test_a_retried_index_or_settle_applies_once(server: redis_servers.RedisServer) -> None:
    client = _LosesOneReply(host="127.0.0.1", port=server.port)
    store = RedisStore(client, namespace=_namespace())
    store.index_due("v", "1.aa", T0 + 60)  # (the script loaded)
    client.lose = f"EVALSHA:{store._scripts['index_due'].sha[:8]}"
    store.index_due("u", "1.aa", T0)
    assert list(store.indexed_due()) == [Due("u", "1.aa", T0), Due("v", "1.aa", T0 + 60)]
    claimed = store.claim_due(T0, limit=10, hold=30)
    client.lose = f"EVALSHA:{store._scripts['settle_due'].sha[:8]}"
    store.settle_due(claimed)
    assert store.due_stats(T0 + 100) == DueStats(1, 1, 0, T0 + 60)


def test_index_errors_are_store_unavailable_naming_the_operation(store: RedisStore) -> None:
    store.client.set(store.layout.index_heads, b"not a zset")
    with pytest.raises(StoreUnavailable, match="index_due"):
        store.index_due("u", "1.aa", T0)
    with pytest.raises(StoreUnavailable, match="claim_due"):
        store.claim_due(T0, limit=1, hold=1)
    with pytest.raises(ValueError, match="NaN"):
        store.index_due("v", "1.aa", float("nan"))


# -- on a real Cluster ---------------------------------------------------------------------------
def test_tickers_claim_on_a_real_cluster_each_entry_once() -> None:
    store = RedisStore.from_url(redis_servers.cluster().url, namespace=_namespace())
    try:
        for n in range(300):
            store.index_due(phone(n), f"{n}.cc", T0 + n / 10)
        got: list[list[Due]] = [[] for _ in range(4)]

        def tick(me: int) -> None:
            for _ in range(200):  # bounded: 300 entries, at least one per claim while any is due
                claimed = store.claim_due(T0 + 100, limit=9, hold=60)
                if not claimed:
                    return
                got[me].extend(claimed)
                store.settle_due(claimed)

        threads = [threading.Thread(target=tick, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        every = sorted(d.user_key for claims in got for d in claims)
        assert every == sorted(phone(n) for n in range(300))
        assert store.due_stats(T0 + 100) == DueStats(0, 0, 0, None)
    finally:
        store.close()


def test_an_engine_on_a_cluster_arms_indexes_and_fires_a_timer() -> None:
    clock = FakeClock()
    store = RedisStore.from_url(redis_servers.cluster().url, namespace=_namespace())
    try:
        engine = Engine(Nudge(), store, clock=clock)
        users = [phone(n) for n in range(5)]  # in other slots than the index, most of them
        for user in users:
            to_confirm(engine, user)
        indexed = list(store.indexed_due())
        assert sorted(d.user_key for d in indexed) == users
        snap = engine.peek(users[0])
        assert snap is not None and [t.name for t in snap.timers] == ["remind", "drop"]
        assert Due(users[0], snap.armed, clock.now() + 600) in indexed
        clock.advance(599)
        assert engine.fire_due() == 0
        clock.advance(1)
        said: list[tuple[str, list[str]]] = []
        assert engine.fire_due(on_result=lambda u, r: said.append((u, r.texts))) == 5
        assert sorted(said) == [(u, ["Still there? Confirm 5? yes/no"]) for u in users]
        assert engine.fire_due() == 0  # fired once
        assert store.due_stats(clock.now()).claimed == 0
    finally:
        store.close()


# -- the async store -------------------------------------------------------------------------------
def test_the_async_engine_fires_from_the_index_a_sync_store_lists(
    server: redis_servers.RedisServer,
) -> None:
    clock, namespace = FakeClock(), _namespace()
    sync = RedisStore.from_url(server.url, namespace=namespace)

    async def scenario() -> None:
        store = AsyncRedisStore.from_url(server.url, namespace=namespace)
        try:
            engine = AsyncEngine(Nudge(), store, clock=clock)
            for n, text in enumerate(("hi", "1", "5")):
                await engine.handle("u", text, message_id=str(n))
            assert [d.user_key for d in sync.indexed_due()] == ["u"]
            clock.advance(600)
            assert await engine.fire_due() == 1
            assert await store.due_stats(clock.now()) == DueStats(1, 0, 0, clock.now() + 900)
        finally:
            await store.aclose()

    try:
        asyncio.run(scenario())
    finally:
        sync.close()


# -- the server itself: restarted, failed over -----------------------------------------------
def test_the_index_and_its_claims_survive_a_restart_with_aof() -> None:
    server = redis_servers.RedisServer(
        "--appendonly", "yes", "--appendfsync", "always", name="index-aof"
    ).start()
    try:
        clock = FakeClock()
        store = RedisStore.from_url(server.url, namespace="aof", retries=3)
        engine = Engine(Nudge(), store, clock=clock)
        users = [phone(n) for n in range(40)]
        for user in users:
            to_confirm(engine, user)
        clock.advance(600)
        claimed = store.claim_due(clock.now(), limit=10, hold=30)  # then the ticker died
        before = (list(store.indexed_due()), store.due_stats(clock.now()))
        assert len(claimed) == 10 and before[1] == DueStats(30, 30, 10, clock.now())
        server.kill()  # SIGKILL, as a crash would
        server.start()  # same port, same dir: replays the append-only file
        assert (list(store.indexed_due()), store.due_stats(clock.now())) == before
        clock.advance(30)  # the dead ticker's claims ran out
        said: list[str] = []
        assert engine.fire_due(limit=100, on_result=lambda u, r: said.append(u)) == 40
        assert sorted(said) == users
    finally:
        server.stop()


def test_the_index_follows_a_sentinel_failover() -> None:
    setup = redis_servers.SentinelSetup()
    setup.start()
    try:
        store = RedisStore.from_url(setup.url, namespace="failover", retries=3)
        for n in range(50):
            store.index_due(phone(n), "1.aa", T0 + n)
        store.claim_due(T0 + 4, limit=5, hold=30)
        before = list(store.indexed_due())
        with setup.primary.client() as primary:
            assert primary.execute_command("WAIT", 1, 5000) == 1  # the replica has it all
        setup.primary.kill()
        deadline, stats = time.monotonic() + 30, None
        while time.monotonic() < deadline:  # unavailable until the Sentinel promotes
            try:
                stats = store.due_stats(T0 + 4)
                break
            except StoreUnavailable:
                time.sleep(0.2)
        assert stats == DueStats(45, 0, 5, T0 + 5), "no failover within 30 s, or entries lost"
        assert list(store.indexed_due()) == before
        back = store.claim_due(T0 + 40, limit=100, hold=30)  # the claims ran out meanwhile
        assert [d.due for d in back] == [T0 + n for n in range(41)]
    finally:
        setup.stop()
