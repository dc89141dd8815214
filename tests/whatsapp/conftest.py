"""Fixtures: the fake Graph API, and a real uvicorn server running the webhook app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from adapters import AsyncMemoryStore, MemoryStore, Store
from adapters.whatsapp import GraphClient, WebhookConfig, WhatsAppBot, create_app
from adapters.whatsapp.delivery import Delivery
from adapters.whatsapp.testing import serving
from fsm.async_engine import AsyncEngine
from fsm.snapshot import Snapshot, decode_snapshot

from .fake_graph import FakeGraph, fake_graph
from .payloads import APP_SECRET, VERIFY_TOKEN, signed


class Webhook:
    """A running webhook server: its URL, the bot, and a client to post to it."""

    def __init__(self, url: str, bot: WhatsAppBot, store: MemoryStore | None) -> None:
        self.url = url
        self.bot = bot
        self.store = store
        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, raw: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST ``raw``; returns once the answer came and the confirmations the bot deferred
        are written (within the engine's ``confirm_delay``), so the store can be checked."""
        answer = self.http.post(
            "/webhook", content=raw, headers=signed(raw) if headers is None else headers
        )
        settle(self.bot.engine)
        return answer

    def metric(self, name: str, **labels: str) -> float:
        value = self.bot.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def settle(engine: AsyncEngine, timeout: float = 5.0) -> None:
    """Wait until ``engine`` holds no deferred confirmation (bounded)."""
    deadline = time.monotonic() + timeout
    while not engine.settled:
        assert time.monotonic() < deadline, "deferred confirmations not written in time"
        time.sleep(0.01)


def stored(store: Store, user: str) -> Snapshot:
    """The snapshot ``store`` holds for ``user`` (which must have one), decoded."""
    record = store.load(user).record
    assert record is not None, f"nothing stored for {user}"
    return decode_snapshot(record.payload, user_key=user)


EngineFactory = Callable[[AsyncMemoryStore], AsyncEngine]


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with fake_graph() as fake:
        yield fake


def start_webhook(
    graph: FakeGraph,
    engine: AsyncEngine,
    *,
    store: MemoryStore | None = None,
    mark_as_read: bool = False,
    **bot_options: Any,
) -> Any:
    client = GraphClient(
        access_token=graph.token, phone_number_id=graph.phone_number_id, api_url=graph.url
    )
    bot = WhatsAppBot(engine, client, mark_as_read=mark_as_read, **bot_options)
    bot.delivery = Delivery(client, bot.metrics, attempts=4, base_delay=0.02, max_delay=0.1)
    config = WebhookConfig(
        APP_SECRET, VERIFY_TOKEN, graph.phone_number_id, max_body=256 * 1024, max_messages=1000
    )

    @contextmanager
    def running() -> Iterator[Webhook]:
        with serving(create_app(bot, config)) as url:
            hook = Webhook(url, bot, store)
            try:
                yield hook
            finally:
                hook.http.close()

    return running()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def hook(graph: FakeGraph, store: MemoryStore) -> Iterator[Webhook]:
    """The webhook serving the :class:`~tests.whatsapp.shop.Shop` flow on ``store``."""
    from .shop import Shop

    engine = AsyncEngine(Shop(), AsyncMemoryStore(store))
    with start_webhook(graph, engine, store=store) as running:
        yield running
