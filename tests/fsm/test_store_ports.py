"""The store contract's two ports: the engine needs only its own, the toolkit asks for both."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from adapters.memory_session import MemorySessionStore
from fsm import AsyncEngine, Engine
from fsm.clock import SYSTEM_CLOCK
from fsm.ops import backup, check_store, health_check, list_sessions
from fsm.ops.recover import find_quarantined
from fsm.records import HistoryEntry, Loaded, LockInfo, QuarantineEntry, SaveResult
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
    for listing in (list_sessions, check_store):  # refused when called, not at the first row
        with pytest.raises(TypeError, match="engine's port only"):
            listing(port_only, spec, now=0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="engine's port only"):
        find_quarantined(port_only, "1-1")  # type: ignore[arg-type]
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
    """adapters.base is a re-export for one release (with a DeprecationWarning); ``adapters``
    keeps its public names; the protocol's constants are found where they were."""
    import importlib
    import sys

    import adapters
    from fsm import protocol, records, store

    sys.modules.pop("adapters.base", None)
    with pytest.warns(DeprecationWarning, match="fsm.store"):
        base = importlib.import_module("adapters.base")
    for name in base.__all__:
        home = store if hasattr(store, name) else records
        assert getattr(base, name) is getattr(home, name), name
    assert adapters.Store is Store and adapters.AsyncStore is AsyncStore
    assert issubclass(adapters.MemoryStore, Store) and issubclass(adapters.RedisStore, Store)
    assert issubclass(adapters.AsyncRedisStore, AsyncStore)
    assert (protocol.MAX_OUTBOX, protocol.FAILURES_KEPT, protocol.MAX_USER_KEY) == (
        64, 10_000, 256,
    )  # fmt: skip


class StoreOfRelease02(Store):
    """A store written against release 0.2, over a MemoryStore's data: it implements
    acquire_lock and not lock_and_load (which 0.2 built on acquire_lock and load)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.locks = 0

    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        self.locks += 1
        return self.inner.acquire_lock(user_key, owner, ttl)

    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return self.inner.load(user_key, message_id=message_id)

    def save(self, user_key: str, payload: bytes, **options: Any) -> SaveResult:  # type: ignore[override]
        return self.inner.save(user_key, payload, **options)

    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return self.inner.history(user_key, limit=limit)

    def release_lock(self, user_key: str, owner: str) -> bool:
        return self.inner.release_lock(user_key, owner)

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self.inner.extend_lock(user_key, owner, ttl)

    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return self.inner.quarantine(user_key, raw, reason)

    def scan(self, *, batch: int = 500) -> Iterator[str]:
        return self.inner.scan(batch=batch)

    def ttl(self, user_key: str) -> float | None:
        return self.inner.ttl(user_key)

    def delete(self, user_key: str) -> bool:
        return self.inner.delete(user_key)

    def lock_info(self, user_key: str) -> LockInfo | None:
        return self.inner.lock_info(user_key)

    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        return self.inner.quarantined(user_key)

    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        return self.inner.remove_quarantined(user_key, entry_id)


def test_a_store_written_for_release_0_2_still_runs_the_engine() -> None:
    store = StoreOfRelease02()  # instantiable: lock_and_load is made from its acquire_lock
    flow = Counter()
    engine = Engine(flow, store)
    engine.handle("u", "locked")
    assert engine.handle("u", "+1").snapshot.data == {"count": 1}
    assert store.locks == 1 and flow.side_effects == 1  # the lease came from its acquire_lock
    assert store.inner.lock_info("u") is None
