"""The store contract's two ports: the engine needs only its own, the toolkit asks for both."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from adapters.memory_session import MemorySessionStore
from fsm import AsyncEngine, Engine
from fsm.clock import SYSTEM_CLOCK
from fsm.ops import backup, check_store, health_check, list_sessions
from fsm.records import HistoryEntry, Loaded, SaveResult
from fsm.store import (
    AsyncSessionStore,
    AsyncStore,
    OperatorStore,
    SessionStore,
    Store,
    operator_store,
)
from tests.fsm.sample_flows import Counter
from tests.support import EnginePortOnly

ENGINE_PORT = {
    "load", "save", "history", "lock_and_load", "release_lock", "extend_lock", "quarantine",
}  # fmt: skip
OPERATOR_PORT = {"scan", "ttl", "delete", "lock_info", "quarantined", "remove_quarantined"}


def test_each_port_is_small_and_the_async_one_mirrors_the_sync_one() -> None:
    assert SessionStore.__abstractmethods__ == ENGINE_PORT
    assert AsyncSessionStore.__abstractmethods__ == ENGINE_PORT
    assert OperatorStore.__abstractmethods__ == OPERATOR_PORT
    assert Store.__abstractmethods__ == ENGINE_PORT | OPERATOR_PORT
    assert AsyncStore.__abstractmethods__ == ENGINE_PORT | {"ttl", "delete", "lock_info"}


def test_an_adapter_with_only_the_engine_port_runs_a_conversation() -> None:
    store = MemorySessionStore()
    assert not isinstance(store, OperatorStore)
    engine = Engine(Counter(), store)
    engine.handle("u", "go")
    result = engine.handle("u", "+1", message_id="m1")
    assert result.snapshot.data == {"count": 1} and result.snapshot.version == 2
    assert engine.handle("u", "+1", message_id="m1").duplicate  # dedupe is the port's too
    assert [h.version for h in store.history("u")] == [2, 1]


def test_the_toolkit_names_what_an_engine_port_store_lacks() -> None:
    port_only = EnginePortOnly(MemoryStore())
    expected = re.escape(", ".join(sorted(OPERATOR_PORT)))
    with pytest.raises(TypeError, match=f"engine's port only.*adds {expected}"):
        operator_store(port_only)
    with pytest.raises(TypeError, match="engine's port only"):
        health_check(port_only)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="engine's port only"):
        backup(port_only, io.BytesIO(), clock=SYSTEM_CLOCK)  # type: ignore[arg-type]
    spec = Counter.spec
    for listing in (list_sessions, check_store):
        with pytest.raises(TypeError, match="engine's port only"):
            list(listing(port_only, spec, now=0.0))  # type: ignore[arg-type]
    full = MemoryStore()
    assert operator_store(full) is full


def test_the_toolkit_refuses_an_async_store_with_what_to_use_instead() -> None:
    with pytest.raises(TypeError, match=r"needs a sync store.*\.sync"):
        operator_store(AsyncMemoryStore())


def test_each_engine_refuses_the_other_kind_of_store() -> None:
    with pytest.raises(TypeError, match=r"Engine needs a sync store.*AsyncMemoryStore"):
        Engine(Counter(), AsyncMemoryStore())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"AsyncEngine needs an async store.*MemoryStore"):
        AsyncEngine(Counter(), MemoryStore())  # type: ignore[arg-type]


class AsyncPortOnly(AsyncSessionStore):
    """The async engine's port over an AsyncMemoryStore's data, nothing more."""

    takes_lease_on_save = True

    def __init__(self) -> None:
        self.inner = AsyncMemoryStore()

    async def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return await self.inner.load(user_key, message_id=message_id)

    async def save(self, user_key: str, payload: bytes, **options: Any) -> SaveResult:  # type: ignore[override]
        return await self.inner.save(user_key, payload, **options)

    async def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return await self.inner.history(user_key, limit=limit)

    async def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        return await self.inner.lock_and_load(user_key, owner, ttl, message_id=message_id)

    async def release_lock(self, user_key: str, owner: str) -> bool:
        return await self.inner.release_lock(user_key, owner)

    async def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return await self.inner.extend_lock(user_key, owner, ttl)

    async def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return await self.inner.quarantine(user_key, raw, reason)


def test_the_async_port_alone_runs_the_async_engine_with_a_lease() -> None:
    store = AsyncPortOnly()
    flow = Counter()

    async def chat() -> tuple[int, int]:
        engine = AsyncEngine(flow, store)
        await engine.handle("u", "locked")  # the "locked" step counts under the lease
        result = await engine.handle("u", "+1")
        return result.snapshot.version, result.snapshot.data["count"]

    assert asyncio.run(chat()) == (2, 1)
    assert flow.side_effects == 1  # the step with side effects ran, under the lease
    assert store.inner.sync.lock_info("u") is None  # the lease was given back


def test_the_old_homes_of_the_contract_still_give_the_same_names() -> None:
    """adapters.base is a re-export for one release; ``adapters`` keeps its public names."""
    import adapters
    import adapters.base as base
    from fsm import records, store

    for name in base.__all__:
        home = store if hasattr(store, name) else records
        assert getattr(base, name) is getattr(home, name), name
    assert adapters.Store is Store and adapters.AsyncStore is AsyncStore
    assert issubclass(adapters.MemoryStore, Store) and issubclass(adapters.RedisStore, Store)
    assert issubclass(adapters.AsyncRedisStore, AsyncStore)
