from __future__ import annotations

from dataclasses import dataclass

import pytest

from adapters import MemoryStore
from fsm import Engine, FakeClock, TokenVerifier
from tests.fsm.sample_flows import SECRET, Counter, Vault
from tests.support import stored_bytes


@dataclass
class VaultWorld:
    clock: FakeClock
    store: MemoryStore
    flow: Vault
    engine: Engine

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


@pytest.fixture
def vault(clock: FakeClock) -> VaultWorld:
    store = MemoryStore(clock=clock)
    flow = Vault(clock)
    engine = Engine(
        flow,
        store,
        verifier=TokenVerifier(SECRET, clock=clock, leeway=0),
        clock=clock,
        session_ttl=600,
        source="test-worker",
    )
    return VaultWorld(clock, store, flow, engine)


@pytest.fixture
def counter_engine(clock: FakeClock) -> Engine:
    return Engine(Counter(), MemoryStore(clock=clock), clock=clock)
