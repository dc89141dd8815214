from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from flows.credex import build_async_engine, build_engine, fake_server
from flows.credex.delivery import Mailbox
from flows.credex.fake import FakeCredexApi
from flows.credex.fake_server import FakeCredexServer
from flows.credex.http import CredexHttpApi, Timeouts
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


@dataclass
class HttpBot(Bot):
    """The reference bot talking to Credex over HTTP: ``api`` is the fake behind the server
    (for its controls and counts), ``server`` the loopback server, ``client`` the bot's
    HTTP client."""

    server: FakeCredexServer
    client: CredexHttpApi


@pytest.fixture(params=["sync", "async"])
def http_bot(request: pytest.FixtureRequest) -> Iterator[HttpBot]:
    """The reference bot on both engines, its Credex API a real HTTP server on loopback."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    api = FakeCredexApi(clock=clock, token_ttl=3600)
    options: dict[str, Any] = {
        "clock": clock,
        "jwt_leeway": 0,
        "session_ttl": 1800,
        "jwt_key": api.verification_key,
    }
    # What the fake behind the server tells the bot reaches the engine's ticker in-process
    # (the fake server's own POST /events is tested in test_credex_events_http.py).
    mailbox = Mailbox()
    api.notifier = mailbox.put
    options["mailbox"] = mailbox
    with fake_server.serving(api) as server:
        client = CredexHttpApi(
            server.url, fake_server.DEV_CLIENT_KEY, timeouts=Timeouts(read=2.0), retries=1
        )
        engine: Engine | BlockingEngine
        if request.param == "sync":
            engine = build_engine(store, client, **options)
        else:
            engine = BlockingEngine(build_async_engine(AsyncMemoryStore(store), client, **options))
        try:
            yield HttpBot(clock, store, api, engine, server, client)
        finally:
            client.close()
