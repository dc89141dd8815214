"""``Conversation.close()`` and ``with Conversation(...)``: the engine's store is closed, an
async store on the kit's own event loop (where its connections were opened)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from adapters import AsyncMemoryStore, AsyncRedisStore, RedisStore
from fsm import AsyncEngine, Engine, FakeClock
from fsm.blocking import background_loop
from fsm.testing import Conversation
from tests import redis_servers
from tests.fsm.sample_flows import Counter


def connections(name: str) -> int:
    """How many connections the standalone test server has from clients named ``name``."""
    with redis_servers.standalone().client() as admin:
        return sum(1 for c in admin.client_list() if c.get("name") == name)


def wait_connections(name: str, count: int) -> None:
    deadline = time.monotonic() + 5
    while connections(name) != count:
        assert time.monotonic() < deadline, f"{connections(name)} connections named {name}"
        time.sleep(0.01)


def url_named(name: str) -> str:
    return f"{redis_servers.standalone().url}?client_name={name}"


def test_close_closes_a_sync_redis_stores_connections() -> None:
    name = f"kit-sync-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(url_named(name), namespace=name)
    with Conversation(Engine(Counter(), store), "ann") as chat:
        chat.say("go").expect("counting")
        assert connections(name) >= 1
    wait_connections(name, 0)
    chat.close()  # again: nothing more happens


def test_close_closes_an_async_redis_store_on_the_kits_loop() -> None:
    """``asyncio.run(store.aclose())`` would meet connections "attached to a different loop":
    the kit ran the engine on its own background loop, and closes the store there."""
    name = f"kit-async-{uuid.uuid4().hex[:8]}"
    store = AsyncRedisStore.from_url(url_named(name), namespace=name)
    chat = Conversation(AsyncEngine(Counter(), store), "ann")
    chat.concurrently("go", workers=3, same_message=False)  # several connections in use
    assert connections(name) >= 1
    chat.close()
    wait_connections(name, 0)
    chat.close()


class RecordingAsyncStore(AsyncMemoryStore):
    """An async memory store that records the event loop it is closed on."""

    closed_on: list[asyncio.AbstractEventLoop] = []

    async def aclose(self) -> None:
        self.closed_on.append(asyncio.get_running_loop())
        await super().aclose()


def test_the_context_manager_closes_even_when_the_test_fails() -> None:
    clock = FakeClock()
    store = RecordingAsyncStore(clock=clock)
    store.closed_on = []
    with (
        pytest.raises(AssertionError, match="expected 'nope'"),
        Conversation(AsyncEngine(Counter(), store, clock=clock)) as chat,
    ):
        chat.say("go").expect("nope")
    assert store.closed_on == [background_loop()]  # once, on the kit's loop
    chat.close()
    assert len(store.closed_on) == 1
