"""Helpers of the tests of ``POST /events`` and the ticker: the webhook app served for real on a
loopback port, with an events secret and a ticker, and signed event posts."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from adapters import AsyncMemoryStore, MemoryStore
from adapters.whatsapp import GraphClient, WebhookConfig, WhatsAppBot, create_app
from adapters.whatsapp.delivery import Delivery
from adapters.whatsapp.testing import serving
from fsm import FakeClock, Flow
from fsm.async_engine import AsyncEngine

from .conftest import settle
from .fake_graph import FakeGraph
from .payloads import APP_SECRET, VERIFY_TOKEN, signed
from .proactive_flows import Reminder

EVENTS_SECRET = "test-events-secret-0f1e2d3c4b5a6978"
ALICE = "263770000001"


def sign_event(raw: bytes, secret: str = EVENTS_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return {"X-Fsm-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def event_body(user: str, event: str, **fields: Any) -> bytes:
    return json.dumps({"user": user, "event": event, **fields}).encode()


class Bot:
    """The served app: its URL, bot, store and clock, and clients for its routes."""

    def __init__(self, url: str, bot: WhatsAppBot, store: MemoryStore, clock: FakeClock) -> None:
        self.url = url
        self.bot = bot
        self.store = store
        self.clock = clock
        self.http = httpx.Client(base_url=url, timeout=30)

    def event(self, raw: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST ``raw`` to /events (signed with the events secret unless ``headers``)."""
        answer = self.http.post(
            "/events", content=raw, headers=sign_event(raw) if headers is None else headers
        )
        settle(self.bot.engine)
        return answer

    def message(self, raw: bytes) -> httpx.Response:
        answer = self.http.post("/webhook", content=raw, headers=signed(raw))
        settle(self.bot.engine)
        return answer

    def metric(self, name: str, **labels: str) -> float:
        value = self.bot.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextmanager
def served(
    graph: FakeGraph,
    *,
    events_secret: str = EVENTS_SECRET,
    timer_tick: float | None = None,
    store: MemoryStore | None = None,
    clock: FakeClock | None = None,
    flow: Flow | None = None,
    engine: AsyncEngine | None = None,
    **bot_options: Any,
) -> Iterator[Bot]:
    """The Reminder flow (or ``flow``) behind the webhook app, served on loopback (its
    lifespan, and so its ticker when ``timer_tick`` is given, running), on ``store`` (a fresh
    one by default); ``bot_options`` go to the WhatsAppBot."""
    clock = clock if clock is not None else FakeClock()
    store = store if store is not None else MemoryStore(clock=clock)
    if engine is None:  # else a ready engine, on AsyncMemoryStore(store) and this clock
        flow = flow if flow is not None else Reminder()
        engine = AsyncEngine(flow, AsyncMemoryStore(store), clock=clock)
    client = GraphClient(
        access_token=graph.token, phone_number_id=graph.phone_number_id, api_url=graph.url
    )
    bot = WhatsAppBot(engine, client, mark_as_read=False, **bot_options)
    bot.delivery = Delivery(client, bot.metrics, attempts=2, base_delay=0.02, max_delay=0.05)
    config = WebhookConfig(
        APP_SECRET, VERIFY_TOKEN, graph.phone_number_id, events_secret=events_secret
    )
    app = create_app(bot, config, timer_tick=timer_tick)
    with serving(app) as url:
        running = Bot(url, bot, store, clock)
        try:
            yield running
        finally:
            running.http.close()


def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something true (bounded); AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout:g}s")
