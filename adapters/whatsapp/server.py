"""Wiring for ``fsm serve``: settings -> store -> engine -> bot -> app, served by uvicorn."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from adapters.base import AsyncStore
from adapters.memory_async import AsyncMemoryStore
from adapters.redis_async import AsyncRedisStore
from adapters.whatsapp.app import WebhookConfig, create_app
from adapters.whatsapp.bot import WhatsAppBot
from adapters.whatsapp.graph import GraphClient
from adapters.whatsapp.settings import Settings
from fsm.async_engine import AsyncEngine

EngineFactory = Callable[[AsyncStore], AsyncEngine]


def open_async_store(url: str | None, namespace: str) -> AsyncStore:
    """The embedded memory store (``url`` None), else an AsyncRedisStore for ``url``."""
    if url is None:
        return AsyncMemoryStore()
    return AsyncRedisStore.from_url(url, namespace=namespace)


def build_app(settings: Settings, factory: EngineFactory, store: AsyncStore) -> Starlette:
    engine = factory(store)
    if not isinstance(engine, AsyncEngine):
        raise TypeError(
            f"the engine factory returned {type(engine).__name__}: fsm serve needs an "
            "fsm.AsyncEngine (build it on the async store it is given)"
        )
    client = GraphClient(
        access_token=settings.access_token,
        phone_number_id=settings.phone_number_id,
        api_url=settings.api_url,
        rate=settings.rate,
    )
    bot = WhatsAppBot(engine, client, mark_as_read=settings.mark_as_read)
    config = WebhookConfig(
        app_secret=settings.app_secret,
        verify_token=settings.verify_token,
        phone_number_id=settings.phone_number_id,
    )
    return create_app(bot, config)


async def serve(app: Starlette, store: AsyncStore, *, host: str, port: int, check: bool) -> None:
    """Serve ``app`` with uvicorn until stopped (SIGINT/SIGTERM), on this event loop (the
    store's connections belong to it). With ``check``, one round trip to the store first:
    an unreachable Redis raises its :class:`~fsm.errors.StoreUnavailable` before any port
    is opened. No access log: the handshake's query string carries the verify token."""
    if check:
        await store.load("fsm-healthz")
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, log_level="info", lifespan="on"
    )
    await uvicorn.Server(config).serve()
