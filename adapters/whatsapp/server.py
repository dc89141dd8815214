"""Wiring for ``fsm serve``: settings -> store -> engine -> bot -> app, served by uvicorn."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from adapters import urls
from adapters.memory_async import AsyncMemoryStore
from adapters.redis_async import AsyncRedisStore
from adapters.sqlite_async import AsyncSQLiteStore
from adapters.whatsapp.app import WebhookConfig, create_app
from adapters.whatsapp.bot import WhatsAppBot
from adapters.whatsapp.graph import GraphClient
from adapters.whatsapp.limits import MessagingLimit, Tracker
from adapters.whatsapp.limits_redis import RedisMessagingLimit
from adapters.whatsapp.limits_sql import PostgresLimitBackend, SQLiteLimitBackend, SQLMessagingLimit
from adapters.whatsapp.settings import Settings
from adapters.whatsapp.simulator import Contact, Simulator
from adapters.whatsapp.simulator.app import LOOPBACK
from fsm.async_engine import AsyncEngine
from fsm.store import AsyncStore

log = logging.getLogger("adapters.whatsapp")

EngineFactory = Callable[[AsyncStore], AsyncEngine]
#: The phone number id the simulated bot sends from (any id works; this one is recognisable).
SIMULATOR_NUMBER_ID = "100000000000001"


def open_async_store(url: str | None, namespace: str) -> AsyncStore:
    """The embedded memory store (``url`` None), else the store ``url`` names (Redis, SQLite,
    PostgreSQL: :mod:`adapters.urls`)."""
    if url is None:
        return AsyncMemoryStore()
    return urls.open_async_store(url, namespace=namespace)


def build_engine(factory: EngineFactory, store: AsyncStore) -> AsyncEngine:
    engine = factory(store)
    if not isinstance(engine, AsyncEngine):
        raise TypeError(
            f"the engine factory returned {type(engine).__name__}: fsm serve needs an "
            "fsm.AsyncEngine (build it on the async store it is given)"
        )
    return engine


def build_app(
    settings: Settings,
    factory: EngineFactory,
    store: AsyncStore,
    *,
    routes: Sequence[BaseRoute] = (),
    on_close: Sequence[Callable[[], Awaitable[None]]] = (),
    engine: AsyncEngine | None = None,
) -> Starlette:
    """The webhook app: the engine ``factory`` builds on ``store`` (or ``engine``), behind the
    WhatsApp bot configured by ``settings`` (``POST /events`` if it has an events secret, the
    ticker unless its ``timer_tick`` is None)."""
    engine = engine if engine is not None else build_engine(factory, store)
    bot = build_bot(settings, engine)
    config = WebhookConfig(
        app_secret=settings.app_secret,
        verify_token=settings.verify_token,
        phone_number_id=settings.phone_number_id,
        events_secret=settings.events_secret,
    )
    return create_app(bot, config, routes=routes, on_close=on_close, timer_tick=settings.timer_tick)


def build_bot(settings: Settings, engine: AsyncEngine) -> WhatsAppBot:
    """The bot that sends ``engine``'s replies to the Graph API ``settings`` name (``fsm
    serve``, and the commands that only send: ``fsm timers run``, ``fsm notify``)."""
    client = GraphClient(
        access_token=settings.access_token,
        phone_number_id=settings.phone_number_id,
        api_url=settings.api_url,
        rate=settings.rate,
    )
    return WhatsAppBot(
        engine,
        client,
        mark_as_read=settings.mark_as_read,
        closed_window=settings.closed_window,
        messaging_limit=messaging_tracker(settings.messaging_limit, engine.store),
    )


def messaging_tracker(limit: int | None, store: object) -> Tracker:
    """The messaging limit's count: beside ``store``'s data when it is a Redis, SQLite or
    PostgreSQL store (every process of the bot shares it), else in this process (the memory
    store is one process's)."""
    if isinstance(store, AsyncRedisStore):
        return RedisMessagingLimit(store.client, limit, namespace=store.layout.namespace)
    if isinstance(store, AsyncSQLiteStore):
        return SQLMessagingLimit(SQLiteLimitBackend(store.sync.path), limit)
    if type(store).__name__ == "AsyncPostgresStore":  # psycopg is an optional extra
        from adapters.postgres_async import AsyncPostgresStore

        assert isinstance(store, AsyncPostgresStore)
        return SQLMessagingLimit(PostgresLimitBackend(store), limit)
    if limit is not None and not isinstance(store, AsyncMemoryStore):
        log.warning(
            "the messaging limit (%d users in 24 hours) is counted by this process alone on "
            "%s: give each process that sends its share of the account's limit",
            limit,
            type(store).__name__,
        )
    return MessagingLimit(limit)


def build_simulator_app(
    factory: EngineFactory,
    store: AsyncStore,
    *,
    host: str,
    port: int,
    contacts: Sequence[Contact],
    events_secret: str = "",
    timer_tick: float | None = 1.0,
) -> Starlette:
    """The webhook app with the simulator beside it (``fsm serve --simulator``): the bot sends
    to the simulator's fake Graph API on this same server, and the page posts to its webhook.
    The secrets are fresh random ones, known to both sides only (``events_secret``, given,
    signs ``POST /events``, as without the simulator; the ticker runs every ``timer_tick``)."""
    base = f"http://{_loopback(host)}:{port}"
    settings = Settings(
        access_token=secrets.token_urlsafe(24),
        app_secret=secrets.token_urlsafe(24),
        verify_token=secrets.token_urlsafe(12),
        phone_number_id=SIMULATOR_NUMBER_ID,
        api_url=f"{base}/graph",
        rate=0,
        events_secret=events_secret,
        timer_tick=timer_tick,
    )
    engine = build_engine(factory, store)
    simulator = Simulator(
        engine,
        webhook_url=f"{base}/webhook",
        app_secret=settings.app_secret,
        access_token=settings.access_token,
        phone_number_id=settings.phone_number_id,
        contacts=list(contacts),
        hosts=None if host in ("", "0.0.0.0", "::") else LOOPBACK | {host, f"[{host}]"},
    )
    app = build_app(
        settings,
        factory,
        store,
        routes=simulator.routes(),
        on_close=[simulator.aclose],
        engine=engine,
    )
    app.state.on_exit = [simulator.hub.close]  # open event streams end when stopping begins
    return app


def _loopback(host: str) -> str:
    """Where this process reaches its own server: a wildcard address is reached on loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve(app: Starlette, store: AsyncStore, *, host: str, port: int, check: bool) -> None:
    """Serve ``app`` with uvicorn until stopped (SIGINT/SIGTERM), on this event loop (the
    store's connections belong to it). With ``check``, one round trip to the store first:
    an unreachable Redis raises its :class:`~fsm.errors.StoreUnavailable` before any port
    is opened. No access log: the handshake's query string carries the verify token."""
    if check:
        await store.load("fsm-healthz")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=3,  # open event streams (the simulator's) end after this
    )
    await _Server(config, getattr(app.state, "on_exit", [])).serve()


class _Server(uvicorn.Server):
    """uvicorn's server, running ``on_exit`` callbacks on the loop as soon as a stop is asked
    for: an endless response (an event stream) ends then, so the graceful shutdown does not
    wait for its timeout."""

    def __init__(self, config: uvicorn.Config, on_exit: Sequence[Callable[[], None]]) -> None:
        super().__init__(config)
        self._on_exit = list(on_exit)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:
            for callback in self._on_exit:
                self._loop.call_soon_threadsafe(callback)
