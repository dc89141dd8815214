"""The ASGI app: ``GET``/``POST /webhook``, ``POST /events``, ``GET /healthz`` and ``GET
/metrics``, and the ticker that fires due timers (:mod:`adapters.whatsapp.ticker`) while it runs.

``POST /webhook``, in order: the body is read up to ``max_body`` bytes (413 past it); the
``X-Hub-Signature-256`` header is checked on those raw bytes (401 missing, 403 wrong:
nothing parsed, nothing applied); the body is parsed (400 if it is not an update at all);
then every message is handled (:class:`~adapters.whatsapp.bot.WhatsAppBot`). The answer is
200 once every message's state is saved and its replies sent or kept pending; 503 while the
store is unavailable or a reply could not be sent yet, so Meta delivers the body again (the
messages already applied are not applied twice). An error never answers 500 with a trace.

A ``failed`` status of one of our messages (Meta could not deliver it: 131047 outside the
24-hour window, 131026 undeliverable...) is counted by its code
(``fsm_whatsapp_delivery_failures_total``), once per message in this process; when the flow
declares a handler for :data:`~adapters.whatsapp.updates.FAILED_EVENT` it is applied to the
recipient's conversation as that event, once per message (its event id is
``status:<wamid>:failed``). No status moves a conversation by itself.

``POST /events`` (:mod:`adapters.whatsapp.events`) is served when the config has an events
secret; the ticker runs when the store keeps an index of deadlines and ``timer_tick`` is set.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.whatsapp.body import TooLarge, read_body
from adapters.whatsapp.bot import IDS_KEPT, TRANSIENT, WhatsAppBot
from adapters.whatsapp.delivery import remember_bounded
from adapters.whatsapp.events import EventsEndpoint
from adapters.whatsapp.signature import signature_problem
from adapters.whatsapp.ticker import DEFAULT_TICK, Ticker, sample_due
from adapters.whatsapp.updates import FAILED_EVENT, BadUpdate, StatusUpdate, parse_update
from fsm.errors import FsmError
from fsm.redaction import user_tail
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
    #: Signs ``POST /events`` bodies (``FSM_EVENTS_SECRET``); "" serves no ``/events``.
    events_secret: str = ""

    def __repr__(self) -> str:
        return (
            f"WebhookConfig(phone_number_id={self.phone_number_id!r}, max_body={self.max_body}, "
            "app_secret=<redacted>, verify_token=<redacted>, "
            f"events_secret={'<redacted>' if self.events_secret else '<none>'})"
        )


def create_app(
    bot: WhatsAppBot,
    config: WebhookConfig,
    *,
    routes: Sequence[BaseRoute] = (),
    on_close: Sequence[Callable[[], Awaitable[None]]] = (),
    timer_tick: float | None = DEFAULT_TICK,
) -> Starlette:
    """The webhook app for ``bot``; closing it (ASGI lifespan) stops the ticker (the round under
    way finishes), then runs the ``on_close`` callbacks, then closes the bot (its last
    confirmations written, the Graph client closed). ``routes`` are served beside the
    webhook's (the simulator's). ``timer_tick``: seconds between the ticker's rounds (None or
    0: no ticker); it runs only on a store that keeps an index of deadlines."""
    metrics = bot.metrics
    store: AsyncSessionStore = bot.engine.store
    ticker = _ticker(bot, timer_tick)
    failures = FailedStatuses(bot)

    async def handshake(request: Request) -> Response:
        query = request.query_params
        if query.get("hub.mode") != "subscribe" or not _same(
            query.get("hub.verify_token", ""), config.verify_token
        ):
            return PlainTextResponse("forbidden", status_code=403)
        return PlainTextResponse(query.get("hub.challenge", ""))

    async def webhook(request: Request) -> Response:
        try:
            body = await read_body(request, config.max_body)
        except TooLarge:
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
            status = max(status, await failures.handle(update.statuses))
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
        await sample_due(store, metrics, bot.engine.clock.now())
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
            *_events_route(bot, config),
            *routes,
        ],
        exception_handlers={Exception: server_error},
        lifespan=_lifespan(bot, on_close, ticker),
    )
    app.state.bot = bot
    app.state.ticker = ticker
    return app


class FailedStatuses:
    """The ``failed`` statuses of ``bot``'s messages: counted by code once per message id in
    this process (bounded memory), and applied to the flow as :data:`FAILED_EVENT` when it
    declares a handler for it."""

    def __init__(self, bot: WhatsAppBot) -> None:
        self.bot = bot
        self.hooked = any(event == FAILED_EVENT for event, _ in bot.engine.spec.events)
        self._counted: OrderedDict[str, None] = OrderedDict()

    async def handle(self, statuses: Iterable[StatusUpdate]) -> int:
        """Count and apply the failed ones: 200, or 503 if one must be delivered again."""
        answer = 200
        for status in statuses:
            if not status.failed:
                continue
            if status.message_id not in self._counted:
                self.bot.metrics.delivery_failures.labels(status.code_label).inc()
                remember_bounded(self._counted, status.message_id, None, IDS_KEPT)
            if self.hooked and status.recipient:
                answer = max(answer, await self._apply(status))
        return answer

    async def _apply(self, status: StatusUpdate) -> int:
        """Apply one failed status to its recipient's conversation, once per message id (the
        event id): 503 when the store is unavailable or the handler's action failed on I/O
        (Meta delivers the status again), else 200, even when the handler failed."""
        who, wamid = user_tail(status.recipient), status.message_id
        data = {"code": status.code, "message_id": wamid}
        try:
            _, answer = await self.bot.notify(
                status.recipient, FAILED_EVENT, data=data, event_id=f"status:{wamid}:failed"
            )
        except TRANSIENT as exc:
            log.warning("failed status of %s for %s not applied yet: %s", wamid, who, exc)
            return 503
        except (ValueError, TypeError) as exc:  # a recipient no conversation can be keyed by
            log.warning("failed status of %s not applied: %s", wamid, type(exc).__name__)
            return 200
        except FsmError as exc:
            cause = type(exc.__cause__ or exc).__name__
            log.error("the flow's %r handler failed for %s: %s", FAILED_EVENT, who, cause)
            return 503 if exc.transient else 200
        return answer


def _ticker(bot: WhatsAppBot, timer_tick: float | None) -> Ticker | None:
    """The app's ticker, when asked for and the store keeps an index of deadlines."""
    if not timer_tick or not getattr(bot.engine.store, "keeps_timers", False):
        return None
    return Ticker(bot, interval=timer_tick)


def _events_route(bot: WhatsAppBot, config: WebhookConfig) -> list[BaseRoute]:
    """``POST /events`` when there is a secret to check it with; else none (404)."""
    if not config.events_secret:
        return []
    events = EventsEndpoint(bot, config.events_secret)
    return [Route("/events", events.handle, methods=["POST"])]


def _lifespan(
    bot: WhatsAppBot, on_close: Sequence[Callable[[], Awaitable[None]]], ticker: Ticker | None
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(bot.aclose)  # last, even if a callback below fails
            for close in reversed(on_close):
                stack.push_async_callback(close)
            if ticker is not None:  # first to stop: its round's replies go out before aclose
                await stack.enter_async_context(_ticking(ticker))
            yield

    return lifespan


@asynccontextmanager
async def _ticking(ticker: Ticker) -> AsyncIterator[None]:
    """Run ``ticker`` in a task for the block; at its end, stop it once its round is over."""
    stop = asyncio.Event()
    task = asyncio.create_task(ticker.run(stop), name="fsm-ticker")
    try:
        yield
    finally:
        stop.set()
        await task


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
