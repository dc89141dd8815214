"""The ticker: fires the timers that are due (:meth:`fsm.AsyncEngine.fire_due`) every
``interval`` seconds and sends each firing's replies through the bot, as a message's.

It runs inside ``fsm serve`` (the app's lifespan; ``FSM_TIMER_TICK``) or alone (``fsm timers
run``). Any number of tickers may run at once, in any number of processes: the store's claims
share the due timers out, and each fires once. A round that fails (the store is unavailable)
is logged (the error's class and the library's own message, never a token) and counted, and
the next one comes after a backoff; nothing stops the loop but :meth:`Ticker.run`'s ``stop``.
Stopping lets the current round finish (its replies are sent), so the bot's ``aclose`` can then
write the last confirmations.

Replies a round could not send (the Graph API kept failing) stay in the outbox, never lost: the
ticker tries them again on later rounds (with a backoff, a few times), and the user's next
message sends them in any case.

Replies held for the messaging limit (:mod:`adapters.whatsapp.limits`: a template to a new user
past the limit) are not retried on that schedule, and never given up: each round first sends
those of this process's bot, oldest first, to as many users as there are free slots
(:meth:`~adapters.whatsapp.bot.WhatsAppBot.send_held`), before it fires anything new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from http import HTTPStatus

from adapters.whatsapp.bot import WhatsAppBot
from adapters.whatsapp.metrics import WhatsAppMetrics
from fsm.async_engine import AsyncEngine
from fsm.errors import FsmError
from fsm.records import DueStats
from fsm.redaction import user_tail
from fsm.result import Result
from fsm.store import AsyncSessionStore

log = logging.getLogger("adapters.whatsapp")

#: Seconds between two rounds when not told (``FSM_TIMER_TICK``).
DEFAULT_TICK = 1.0
#: The longest wait after failed rounds (the wait doubles from ``interval`` up to this).
MAX_BACKOFF = 30.0
#: Retries of a user's replies left pending by a firing: after ``RETRY_FIRST * 2**n`` seconds,
#: at most ``RETRY_TIMES`` times (then the user's next message sends them), for at most
#: ``RETRY_USERS`` users at once (the oldest are forgotten).
RETRY_FIRST = 5.0
RETRY_TIMES = 6
RETRY_USERS = 10_000
#: Batches one round fires at most while a backlog remains (then it waits for the next round).
BACKLOG_ROUNDS = 50


async def sample_due(
    store: AsyncSessionStore, metrics: WhatsAppMetrics, now: float, timeout: float = 1.0
) -> DueStats | None:
    """Set the backlog gauges from the store's index of deadlines (one cheap read) and return
    what it read; None if the store keeps no index or did not answer within ``timeout``."""
    if not getattr(store, "keeps_timers", False):
        return None
    try:
        async with asyncio.timeout(timeout):
            stats = await store.due_stats(now)
    except (FsmError, TimeoutError):
        return None
    metrics.timers_due.set(stats.due)
    metrics.timers_claimed.set(stats.claimed)
    oldest = stats.oldest_due
    metrics.timers_overdue.set(max(0.0, now - oldest) if oldest is not None else 0.0)
    return stats


class Ticker:
    """Fires ``bot``'s due timers every ``interval`` seconds (:meth:`run`)."""

    def __init__(self, bot: WhatsAppBot, *, interval: float = DEFAULT_TICK) -> None:
        if not interval > 0:
            raise ValueError(f"a ticker's interval is > 0 seconds, got {interval!r}")
        self.bot = bot
        self.engine: AsyncEngine = bot.engine
        self.metrics = bot.metrics
        self.interval = interval
        self.fired = 0
        self._retry: OrderedDict[str, tuple[float, int]] = OrderedDict()  # user -> (at, tries)

    def __repr__(self) -> str:
        return f"Ticker(interval={self.interval:g}, fired={self.fired})"

    async def run(self, stop: asyncio.Event) -> None:
        """Run rounds until ``stop`` is set; the round under way when it is set finishes."""
        failures = 0
        while not stop.is_set():
            failures = 0 if await self.tick() else min(failures + 1, 16)
            wait = min(self.interval * 2**failures, max(MAX_BACKOFF, self.interval))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def tick(self) -> bool:
        """One round: sample the backlog, fire what is due and send its replies, try again the
        replies earlier rounds left pending. Replies held for the messaging limit go first, as
        slots free. False if it failed (logged and counted)."""
        try:
            for user in await self.bot.send_held():
                self._later(user, 0)
            await self._fire_backlog()
            await self._retry_pending()
        except FsmError as exc:
            self.metrics.timer_ticks.labels("failed").inc()
            log.warning("timers: round failed (%s): %s", type(exc).__name__, exc)
            return False
        except Exception as exc:  # a bug: the trace goes to the log; the loop goes on
            self.metrics.timer_ticks.labels("failed").inc()
            log.error("timers: round failed (%s)", type(exc).__name__, exc_info=True)
            return False
        self.metrics.timer_ticks.labels("ok").inc()
        return True

    async def _fire_backlog(self) -> None:
        """Fire what is due, batch after batch while a backlog remains (a batch is what one
        claim takes), for at most ``BACKLOG_ROUNDS`` batches: the next round goes on."""
        for _ in range(BACKLOG_ROUNDS):
            stats = await sample_due(self.engine.store, self.metrics, self.engine.clock.now())
            fired = await self.engine.fire_due(on_result=self._send)
            self.fired += fired
            if not fired or stats is None or stats.due <= fired:
                return

    async def _send(self, user: str, result: Result) -> None:
        try:
            status = await self.bot.send_result(user, result)
        except Exception as exc:  # noqa: BLE001 - the replies stay in the outbox
            log.error("timers: replies to %s not sent (%s)", user_tail(user), type(exc).__name__)
            status = HTTPStatus.SERVICE_UNAVAILABLE
        if status != HTTPStatus.OK and not await self.bot.is_held(user):
            self._later(user, 0)  # held ones wait for a slot: send_held, not this schedule

    def _later(self, user: str, tries: int) -> None:
        """Try ``user``'s pending replies again later (or give up, after enough tries)."""
        self._retry.pop(user, None)
        if tries >= RETRY_TIMES:
            log.warning(
                "timers: replies to %s still pending; the user's next message sends them",
                user_tail(user),
            )
            return
        self._retry[user] = (time.monotonic() + RETRY_FIRST * 2**tries, tries + 1)
        while len(self._retry) > RETRY_USERS:
            self._retry.popitem(last=False)

    async def _retry_pending(self) -> None:
        now = time.monotonic()
        due = [(user, tries) for user, (at, tries) in self._retry.items() if at <= now]
        for user, tries in due:
            if await self.bot.flush_pending(user) == HTTPStatus.OK or await self.bot.is_held(user):
                self._retry.pop(user, None)
            else:
                self._later(user, tries)
