from __future__ import annotations

from dataclasses import dataclass

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from flows.credex import build_async_engine, build_engine
from flows.credex.fake import FakeCredexApi
from fsm import Engine, FakeClock
from fsm.blocking import BlockingEngine
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
    engine: Engine | BlockingEngine

    def raw(self, user: str) -> bytes | None:
        return stored_bytes(self.store, user)


@pytest.fixture(params=["sync", "async"])
def bot(request: pytest.FixtureRequest) -> Bot:
    """The reference bot on ``Engine``, and on ``AsyncEngine`` over the same MemoryStore (driven
    through :class:`fsm.blocking.BlockingEngine`): every bot test runs on both engines."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    api = FakeCredexApi(clock=clock, token_ttl=3600)
    options = {"clock": clock, "jwt_leeway": 0, "session_ttl": 1800}
    engine: Engine | BlockingEngine
    if request.param == "sync":
        engine = build_engine(store, api, **options)
    else:
        engine = BlockingEngine(build_async_engine(AsyncMemoryStore(store), api, **options))
    return Bot(clock, store, api, engine)
