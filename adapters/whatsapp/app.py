"""The ASGI app: ``GET``/``POST /webhook``, ``GET /healthz`` and ``GET /metrics``.

``POST /webhook``, in order: the body is read up to ``max_body`` bytes (413 past it); the
``X-Hub-Signature-256`` header is checked on those raw bytes (401 missing, 403 wrong:
nothing parsed, nothing applied); the body is parsed (400 if it is not an update at all);
then every message is handled (:class:`~adapters.whatsapp.bot.WhatsAppBot`). The answer is
200 once every message's state is saved and its replies sent or kept pending; 503 while the
store is unavailable or a reply could not be sent yet, so Meta delivers the body again (the
messages already applied are not applied twice). An error never answers 500 with a trace.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.whatsapp.bot import WhatsAppBot
from adapters.whatsapp.signature import signature_problem
from adapters.whatsapp.updates import BadUpdate, parse_update
from fsm.errors import FsmError
from fsm.store import AsyncSessionStore

log = logging.getLogger("adapters.whatsapp")

MAX_BODY = 1024 * 1024  # Meta's bodies are a few KB; a batch is far below this


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """What the webhook checks against. Secrets: no repr shows them."""

    app_secret: str
    verify_token: str
    phone_number_id: str
    max_body: int = MAX_BODY
    max_messages: int = 1000

    def __repr__(self) -> str:
        return (
            f"WebhookConfig(phone_number_id={self.phone_number_id!r}, max_body={self.max_body}, "
            "app_secret=<redacted>, verify_token=<redacted>)"
        )


class _TooLarge(Exception):
    pass


def create_app(
    bot: WhatsAppBot,
    config: WebhookConfig,
    *,
    routes: Sequence[BaseRoute] = (),
    on_close: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Starlette:
    """The webhook app for ``bot``; closing it (ASGI lifespan) closes the Graph client, after
    the ``on_close`` callbacks. ``routes`` are served beside the webhook's (the simulator's)."""
    metrics = bot.metrics
    store: AsyncSessionStore = bot.engine.store

    async def handshake(request: Request) -> Response:
        query = request.query_params
        if query.get("hub.mode") != "subscribe" or not _same(
            query.get("hub.verify_token", ""), config.verify_token
        ):
            return PlainTextResponse("forbidden", status_code=403)
        return PlainTextResponse(query.get("hub.challenge", ""))

    async def webhook(request: Request) -> Response:
        try:
            body = await _read(request, config.max_body)
        except _TooLarge:
            metrics.updates.labels("too_large").inc()
            return PlainTextResponse("body too large", status_code=413)
        except ClientDisconnect:
            return PlainTextResponse("client went away", status_code=400)
        problem = signature_problem(
            request.headers.get("x-hub-signature-256"), body, config.app_secret
        )
        if problem is not None:
            metrics.updates.labels("bad_signature").inc()
            metrics.signature_failures.labels(problem).inc()
            status = 401 if problem == "missing" else 403
            return PlainTextResponse(f"signature {problem}", status_code=status)
        try:
            update = parse_update(
                body, phone_number_id=config.phone_number_id, max_messages=config.max_messages
            )
        except BadUpdate as exc:  # one line: the trace would say nothing more
            metrics.updates.labels("bad_request").inc()
            log.warning("webhook body refused (400): %s", exc)
            return PlainTextResponse(str(exc), status_code=400)
        try:
            status = await bot.receive(update)
        except Exception:  # a bug: Meta will deliver again; the trace goes to the log only
            log.exception("webhook body not handled")
            metrics.updates.labels("unavailable").inc()
            return PlainTextResponse("retry later", status_code=503)
        outcome = "ok" if status == 200 else "unavailable"
        if status == 200 and update.ignored and not update.messages:
            outcome = "ignored"
        metrics.updates.labels(outcome).inc()
        return PlainTextResponse("ok" if status == 200 else "retry later", status_code=status)

    async def healthz(request: Request) -> Response:
        try:
            await store.load("fsm-healthz")
        except FsmError as exc:
            return PlainTextResponse(f"store unavailable: {type(exc).__name__}", status_code=503)
        return PlainTextResponse("ok")

    async def prometheus(request: Request) -> Response:
        metrics.store_up.set(1 if await _store_answers(store) else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("webhook error", exc_info=exc)
        return PlainTextResponse("internal error", status_code=500)

    app = Starlette(
        routes=[
            Route("/webhook", handshake, methods=["GET"]),
            Route("/webhook", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            *routes,
        ],
        exception_handlers={Exception: server_error},
        lifespan=_lifespan(bot, on_close),
    )
    app.state.bot = bot
    return app


def _lifespan(
    bot: WhatsAppBot, on_close: Sequence[Callable[[], Awaitable[None]]]
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(bot.aclose)  # last, even if a callback below fails
            for close in reversed(on_close):
                stack.push_async_callback(close)
            yield

    return lifespan


async def _store_answers(store: AsyncSessionStore, timeout: float = 1.0) -> bool:
    """One read of a reserved key within ``timeout`` seconds: is the store usable now?"""
    try:
        async with asyncio.timeout(timeout):
            await store.load("fsm-healthz")
    except (FsmError, TimeoutError):
        return False
    return True


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


async def _read(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)
