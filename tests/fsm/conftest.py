from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from fsm import AsyncEngine, Engine, FakeClock, TokenVerifier
from fsm.blocking import BlockingEngine
from tests.fsm.sample_flows import SECRET, Counter, Vault
from tests.support import EnginePortOnly, stored_bytes


@dataclass
class VaultWorld:
    clock: FakeClock
    store: MemoryStore
    flow: Vault
    engine: Engine | BlockingEngine

    def raw(self, user: str) -> bytes | None:
        return stored_bytes(self.store, user)

    def say(self, user: str, *texts: str) -> list[str]:
        out: list[str] = []
        for text in texts:
            out = self.engine.handle(user, text).texts
        return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sync", "async", "port"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    """Every engine test runs on both engines: ``Engine`` on the MemoryStore, and
    ``AsyncEngine`` on an AsyncMemoryStore over the same MemoryStore (driven through
    :class:`fsm.blocking.BlockingEngine`, so the test reads the same); and ``Engine`` on a
    store that offers the engine's port and nothing more (:class:`EnginePortOnly`)."""
    return str(request.param)


def make_engine(kind: str, flow: Any, store: MemoryStore, **options: Any) -> Any:
    """``Engine(flow, store, ...)``, or its twin on the same data: an AsyncEngine, or an
    Engine that sees only the engine's port."""
    if kind == "sync":
        return Engine(flow, store, **options)
    if kind == "port":
        return Engine(flow, EnginePortOnly(store), **options)
    return BlockingEngine(AsyncEngine(flow, AsyncMemoryStore(store), **options))


@pytest.fixture
def vault(clock: FakeClock, engine_kind: str) -> VaultWorld:
    store = MemoryStore(clock=clock)
    flow = Vault(clock)
    engine = make_engine(
        engine_kind,
        flow,
        store,
        verifier=TokenVerifier(SECRET, clock=clock, leeway=0),
        clock=clock,
        session_ttl=600,
        source="test-worker",
    )
    return VaultWorld(clock, store, flow, engine)


@pytest.fixture
def counter_engine(clock: FakeClock, engine_kind: str) -> Any:
    return make_engine(engine_kind, Counter(), MemoryStore(clock=clock), clock=clock)
