"""convo-fsm's pytest plugin: a flow's conversation tests, run on the memory store and on a real
Redis, from one fixture of your own.

The package registers it with pytest (the ``pytest11`` entry point ``convo_fsm``), so it is
active in any project that installs ``convo-fsm`` beside pytest: nothing to import or list.
Its fixtures (every name but ``conversation`` starts with ``fsm_``):

- ``fsm_engine_factory``: **yours to define**, in your ``conftest.py``: returns a callable
  that takes ``clock=`` and ``store=`` and returns the :class:`~fsm.Engine` (or
  :class:`~fsm.AsyncEngine`) to test, as ``fsm chat --engine`` factories do;
- ``conversation``: a :class:`~fsm.testing.Conversation` with that engine, as ``fsm_user``, on
  ``fsm_clock``; a test that takes it runs twice, ``[memory]`` and ``[redis]``, and its store is
  closed when the test ends;
- ``fsm_store``: the store the factory is given: a fresh :class:`~adapters.MemoryStore` on
  ``fsm_clock``, or a :class:`~adapters.RedisStore` on ``fsm_redis_server`` in a namespace of
  its own (deleted after the test); their async twins when ``fsm_async`` is true;
- ``fsm_async``: ``False``; override it to return ``True`` for a flow with ``async def``
  handlers (the factory then gets an :class:`~adapters.AsyncMemoryStore` or an
  :class:`~adapters.AsyncRedisStore`, as with ``fsm chat --async``);
- ``fsm_clock``: a fresh :class:`~fsm.FakeClock` per test (it does not move Redis's TTLs);
- ``fsm_user``: who ``conversation`` talks as (default ``"user-1"``);
- ``fsm_redis_server`` (session): a private ``redis-server`` (:mod:`adapters.redis_server`) on a
  free loopback port, in a temp dir, keeping nothing on disk, stopped by its PID at the end of
  the session. Where ``redis-server`` is not installed, the tests that need it are skipped,
  saying so.

::

    # conftest.py
    @pytest.fixture
    def fsm_engine_factory():
        def build(clock, store):
            return Engine(Booking(FakeBookingApi()), store, clock=clock, session_ttl=1800)
        return build

    # test_booking.py
    def test_hello(conversation):
        conversation.say("hi").expect("What would you like to book?", stage="menu")
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from adapters.redis_server import RedisServer, RedisServerMissing
from fsm.clock import FakeClock
from fsm.testing import Conversation

__all__ = [
    "conversation",
    "fsm_async",
    "fsm_clock",
    "fsm_engine_factory",
    "fsm_redis_server",
    "fsm_store",
    "fsm_user",
]

#: The stores ``fsm_store`` (and so ``conversation``) is parametrised over, as test ids.
STORES = ("memory", "redis")

_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def fsm_redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session (``.url``, ``.port``, ``.client()``); skips the
    test, saying why, where the binary is missing."""
    try:
        server = RedisServer(name="pytest").start()
    except RedisServerMissing as exc:
        pytest.skip(f"the Redis-backed tests need redis-server: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fsm_clock() -> FakeClock:
    """A fresh fake clock at ``fsm.clock.FAKE_EPOCH``."""
    return FakeClock()


@pytest.fixture
def fsm_async() -> bool:
    """Whether the factory gets an async store; override it to return True for an async
    flow."""
    return False


@pytest.fixture
def fsm_user() -> str:
    """The user ``conversation`` talks as."""
    return "user-1"


@pytest.fixture(params=STORES)
def fsm_store(
    request: pytest.FixtureRequest, fsm_clock: FakeClock, fsm_async: bool
) -> Iterator[Any]:
    """The store of this run of the test: memory, or Redis in a fresh namespace."""
    if request.param == "memory":
        from adapters import AsyncMemoryStore, MemoryStore

        memory = MemoryStore(clock=fsm_clock)
        yield AsyncMemoryStore(memory) if fsm_async else memory
        return
    from adapters import AsyncRedisStore, RedisStore
    from fsm.blocking import run

    server: RedisServer = request.getfixturevalue("fsm_redis_server")
    namespace = f"fsm-test-{os.getpid()}-{next(_namespaces)}"
    if fsm_async:
        async_store = AsyncRedisStore.from_url(server.url, namespace=namespace)
        try:
            yield async_store
        finally:
            run(async_store.aclose())  # on the loop its connections were opened on
            _forget(server, namespace)
        return
    store = RedisStore.from_url(server.url, namespace=namespace)
    try:
        yield store
    finally:
        store.close()
        _forget(server, namespace)


def _forget(server: RedisServer, namespace: str) -> None:
    """Delete every key of ``namespace`` (the server lives on for the next tests)."""
    with server.client() as client:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.unlink(*keys)


@pytest.fixture
def fsm_engine_factory() -> Callable[..., Any]:
    """Define this fixture in your conftest.py: it returns ``build(clock=..., store=...)``,
    which returns the engine to test."""
    pytest.fail(
        "the conversation fixture needs a fixture named fsm_engine_factory (in your "
        "conftest.py) returning a callable that takes clock= and store= and returns the "
        "fsm.Engine or fsm.AsyncEngine to test; see docs/testing.md",
        pytrace=False,
    )


@pytest.fixture
def conversation(
    fsm_engine_factory: Callable[..., Any],
    fsm_store: Any,
    fsm_clock: FakeClock,
    fsm_user: str,
) -> Iterator[Conversation]:
    """A conversation with the engine your ``fsm_engine_factory`` builds on ``fsm_store``."""
    engine = fsm_engine_factory(clock=fsm_clock, store=fsm_store)
    with Conversation(engine, fsm_user, clock=fsm_clock) as chat:
        yield chat
