from __future__ import annotations

from dataclasses import dataclass

import pytest

from adapters import MemoryStore
from flows.credex import build_engine
from flows.credex.fake import FakeCredexApi
from fsm import Engine, FakeClock
from tests.support import stored_bytes

ALICE = "263770000001"  # tier 1, incoming and outgoing offers
BOB = "263770000002"  # tier 3, no offers
CAROL = "263770000003"  # tier 2, one incoming offer
STRANGER = "263779999999"  # not a member


@dataclass
class Bot:
    clock: FakeClock
    store: MemoryStore
    api: FakeCredexApi
    engine: Engine

    def raw(self, user: str) -> bytes | None:
        return stored_bytes(self.store, user)


@pytest.fixture
def bot() -> Bot:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    api = FakeCredexApi(clock=clock, token_ttl=3600)
    engine = build_engine(store, api, clock=clock, jwt_leeway=0, session_ttl=1800)
    return Bot(clock, store, api, engine)
