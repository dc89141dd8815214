"""The messaging limit counted in Redis (a real redis-server of the tests' own): the same rules
as in memory, one count for processes admitting at once, two ``fsm serve``-style apps on one
store spending one limit, and nothing past the limit while Redis is down."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from adapters import AsyncRedisStore
from adapters.whatsapp.limits_redis import RedisMessagingLimit
from adapters.whatsapp.server import messaging_tracker
from fsm import FakeClock
from fsm.async_engine import AsyncEngine
from fsm.errors import StoreUnavailable
from tests import redis_servers

from .fake_graph import FakeGraph
from .limit_rules import admit_in_processes, counts_unique_users_in_a_moving_day
from .proactive import Bot, served, until
from .test_messaging_limit import HOUR, PARCEL, TICK, USERS, Parcels, gauges, hello, parcel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    return f"lim{os.getpid()}{abs(hash(request.node.nodeid)) % 10**8}"


def test_the_rules_hold_in_redis(namespace: str) -> None:
    async def run() -> None:
        client = Redis.from_url(redis_servers.standalone().url)
        try:
            await counts_unique_users_in_a_moving_day(
                RedisMessagingLimit(client, 2, namespace=namespace)
            )
        finally:
            await client.aclose()

    asyncio.run(run())


def test_the_rules_hold_on_a_cluster(namespace: str) -> None:
    async def run() -> None:
        store = AsyncRedisStore.from_url(redis_servers.cluster().url, namespace=namespace)
        try:
            tracker = messaging_tracker(2, store)
            assert isinstance(tracker, RedisMessagingLimit)
            await counts_unique_users_in_a_moving_day(tracker)
        finally:
            await store.aclose()

    asyncio.run(run())


def test_processes_admitting_at_once_share_one_count(namespace: str) -> None:
    url = redis_servers.standalone().url
    admitted = admit_in_processes(url, namespace, 5, str(ROOT))
    assert sum(admitted) == 5, admitted  # 40 distinct users, 4 processes: exactly 5 slots

    async def counted() -> tuple[int, int]:
        client = Redis.from_url(url)
        try:
            return await RedisMessagingLimit(client, 5, namespace=namespace).counts(1000.0)
        finally:
            await client.aclose()

    assert asyncio.run(counted()) == (5, 0)


def test_redis_down_admits_nobody_new_and_names_no_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        client = Redis.from_url(f"redis://127.0.0.1:{redis_servers.free_port()}/0")
        tracker = RedisMessagingLimit(client, 5)
        try:
            assert await tracker.admit("263770000001", 0.0) is None
            assert await tracker.ready(0.0) == []
            assert not await tracker.hold("263770000001", 0.0)
            assert not await tracker.held("263770000001")
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await tracker.counts(0.0)  # the bot's gauges keep their values
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="adapters.whatsapp"):
        asyncio.run(run())
    assert "nobody new is sent" in caplog.text and "263770000001" not in caplog.text


@pytest.fixture
def two_workers(graph: FakeGraph, namespace: str) -> Iterator[tuple[Bot, Bot]]:
    """Two webhook apps, each with its engine, store client and ticker, on one Redis."""
    url, clock = redis_servers.standalone().url, FakeClock()
    stores = [AsyncRedisStore.from_url(url, namespace=namespace) for _ in range(2)]
    engines = [AsyncEngine(Parcels(), store, clock=clock) for store in stores]
    trackers = [messaging_tracker(5, store) for store in stores]
    with (
        served(
            graph, engine=engines[0], clock=clock, timer_tick=TICK, messaging_limit=trackers[0]
        ) as one,
        served(
            graph, engine=engines[1], clock=clock, timer_tick=TICK, messaging_limit=trackers[1]
        ) as two,
    ):
        yield one, two


def test_two_workers_on_one_redis_spend_one_limit(
    graph: FakeGraph, two_workers: tuple[Bot, Bot]
) -> None:
    one, two = two_workers
    for n, user in enumerate(USERS):
        hello(one if n % 2 else two, user)
    one.clock.advance(25 * HOUR)  # every window is closed
    for n, user in enumerate(USERS[:5]):  # the workers take turns
        assert parcel(one if n % 2 else two, user, f"p-{n}") == 200
        one.clock.advance(HOUR)
    for bot in (one, two):
        assert gauges(bot)[:3] == (5, 5, 0)  # each sees the shared count
    assert parcel(two, USERS[5], "p-5") == 202  # the sixth waits, whichever worker
    assert parcel(one, USERS[5], "p-5") == 202
    assert graph.templates(USERS[5]) == []
    assert gauges(one)[:3] == (5, 5, 1)

    one.clock.advance(19 * HOUR)  # the first user's day is over: a slot frees
    until(lambda: graph.templates(USERS[5]), "the held template")
    time.sleep(10 * TICK)  # both tickers had their rounds: sent once
    assert [graph.texts(user)[1:] for user in USERS] == [[PARCEL]] * 6
    until(lambda: gauges(two)[:3] == (5, 5, 0), "the shared gauges")
