"""The Nudge flow's engine on each store the testing kit runs on, with a fake clock: the
memory store (sync and async) and a real redis-server (sync and async)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from adapters import AsyncMemoryStore, AsyncRedisStore, MemoryStore, RedisStore
from fsm import AsyncEngine, Engine, FakeClock
from fsm.blocking import BlockingEngine
from fsm.testing import Conversation
from tests import redis_servers

from .timer_flows import Nudge

STORES = ("memory", "async-memory", "redis", "async-redis")


def nudge_engine(clock: FakeClock, kind: str = "memory") -> Engine | BlockingEngine:
    """``Nudge`` on the store ``kind`` names (a fresh namespace on Redis), on ``clock``.
    Skips the test when that Redis store keeps no index of deadlines yet."""
    if kind == "memory":
        return Engine(Nudge(), MemoryStore(clock=clock), clock=clock)
    if kind == "async-memory":
        aio = AsyncMemoryStore(MemoryStore(clock=clock))
        return BlockingEngine(AsyncEngine(Nudge(), aio, clock=clock))
    store_class = RedisStore if kind == "redis" else AsyncRedisStore
    if not store_class.keeps_timers:
        pytest.skip(
            f"{store_class.__name__} keeps no index of deadlines yet (keeps_timers is False): "
            "an engine refuses a flow with timers on it"
        )
    url, namespace = redis_servers.standalone().url, f"kit-timers-{secrets.token_hex(4)}"
    if kind == "redis":
        return Engine(Nudge(), RedisStore.from_url(url, namespace=namespace), clock=clock)
    store = AsyncRedisStore.from_url(url, namespace=namespace)
    return BlockingEngine(AsyncEngine(Nudge(), store, clock=clock))


def engine_on(kind: str) -> Iterator[Engine | BlockingEngine]:
    """A fixture's body: the engine on ``kind``, its store closed at the end."""
    clock = FakeClock()
    engine = nudge_engine(clock, kind)
    with Conversation(engine, clock=clock):  # closes the store (on its own loop if async)
        yield engine
