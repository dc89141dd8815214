"""Sending a user's pending replies (the engine's outbox) in order, with bounded retries.

Each pending :class:`~fsm.snapshot.Outgoing` is rendered and sent; a retryable failure
(network, 5xx, throughput or pair rate limit) is retried with jittered exponential backoff,
at most ``attempts`` times. A final failure (outside the customer service window, a bad
parameter) is logged and counted, and the reply is given up: confirmed like a sent one, so
it is not retried forever. If the retries run out, delivery stops there, so later replies
never overtake an earlier one: that reply and the rest stay pending, for the next delivery.

When the user's 24-hour window is closed (the caller says so: :mod:`adapters.whatsapp.window`)
each reply goes out as its message template instead; one without a template is not attempted:
dropped (confirmed unsent) or kept pending, as the caller says, logged and counted. A reply
the Graph API refuses for the window anyway (131047: the clocks differ) is sent once more, as
its template, if it has one; else it is given up.

A template sent outside the window opens a business-initiated conversation, which Meta counts
against the account's messaging limit (:mod:`adapters.whatsapp.limits`): the caller's gate
admits it first. A new user past the limit is not sent to: that reply and the rest stay
pending, *held* until a slot frees (not a failure of the Graph API).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.whatsapp.graph import PAIR_LIMIT_PAUSE, GraphClient, GraphError, OutsideWindow
from adapters.whatsapp.limits import Gate
from adapters.whatsapp.metrics import WhatsAppMetrics
from adapters.whatsapp.render import Payload, render, render_template
from adapters.whatsapp.window import ClosedWindow
from fsm.redaction import user_tail
from fsm.snapshot import Outgoing
from fsm.templates import Template

log = logging.getLogger("adapters.whatsapp")

#: How many sent message parts this process remembers (user, entry id, part), so that a reply
#: whose confirmation was not saved yet, or a long text cut short after its first part, is not
#: sent again by this process. Entry ids are random (:attr:`fsm.snapshot.Outgoing.id`): a
#: version reused after a failover that lost writes never matches an old mark.
SENT_KEPT = 100_000

#: Users whose pending count the gauge keeps (past it the oldest are forgotten).
PENDING_KEPT = 100_000

#: The part number under which a reply sent as its template is remembered as sent.
TEMPLATE_PART = -1


@dataclass(slots=True)
class Delivered:
    """What became of a user's pending replies."""

    #: Keys to confirm (:attr:`fsm.snapshot.Outgoing.key`): sent, or given up on a final error.
    done: list[str] = field(default_factory=list)
    #: How many stay pending (the retries ran out): the webhook answers 503.
    left: int = 0
    #: How many were kept pending for the user's next message (the window is closed and
    #: they have no template): not a failure, no 503.
    kept: int = 0
    #: How many stay pending because the messaging limit is reached (the gate refused a
    #: template to a new user): they wait for a slot, not a failure.
    held: int = 0


class _Left(Exception):
    """This reply and the rest stay pending (the retries ran out, the lease ends...)."""


class _Held(Exception):
    """This reply and the rest stay pending: the messaging limit is reached."""


class Delivery:
    def __init__(
        self,
        client: GraphClient,
        metrics: WhatsAppMetrics,
        *,
        attempts: int = 4,
        base_delay: float = 0.25,
        max_delay: float = 4.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.client = client
        self.metrics = metrics
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sent: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._kept: OrderedDict[tuple[str, str, int], None] = OrderedDict()  # told once
        self._pending: OrderedDict[str, int] = OrderedDict()

    async def deliver(
        self,
        to: str,
        pending: Sequence[Outgoing],
        *,
        remember: bool = True,
        on_done: Callable[[str], None] | None = None,
        until: float | None = None,
        closed: ClosedWindow | None = None,
        gate: Gate | None = None,
    ) -> Delivered:
        """Send ``pending`` to ``to`` in order. With ``remember``, parts this process sent
        already are skipped (their confirmation may not be saved yet). ``on_done`` is called
        with each entry's key as soon as it is sent (or given up), so it is confirmed then, not
        after the batch; no entry is started after ``until`` (``time.monotonic()``: the send
        lease's end), the rest stays pending. ``closed``: the user's 24-hour window is closed;
        each reply goes out as its template, and one without is dropped (``"drop"``: done,
        unsent) or kept pending (``"keep"``). ``gate``: the messaging limit, which admits
        each template sent outside the window first; one it refuses and the rest are held."""
        delivered = Delivered()
        for index, entry in enumerate(pending):
            try:
                done = await self._entry(to, entry, closed, remember, until, gate)
            except _Left as stop:
                return self._left(to, delivered, len(pending) - index, str(stop))
            except _Held:
                delivered.held = len(pending) - index
                self._count_pending(to, 0)  # held, not left: the limit's own gauge counts them
                return delivered
            if not done:
                delivered.kept += 1
                continue
            delivered.done.append(entry.key)
            if on_done is not None:
                on_done(entry.key)
        self._count_pending(to, 0)
        return delivered

    async def _entry(
        self,
        to: str,
        entry: Outgoing,
        closed: ClosedWindow | None,
        remember: bool,
        until: float | None,
        gate: Gate | None = None,
    ) -> bool:
        """Send one entry: True once it is done (sent, or given up), False if it is kept for
        the user's next message; :class:`_Left` if it and the rest must stay pending,
        :class:`_Held` if the messaging limit holds them."""
        template = entry.reply.template
        if closed is not None and template is None:
            return self._unsendable(to, entry, closed)
        try:
            if closed is not None and template is not None:
                sent = await self._template(to, entry, template, remember, until, gate)
            else:
                payloads = list(enumerate(render(entry.reply, to)))
                sent = await self._parts(to, entry, payloads, remember, until)
        except OutsideWindow as exc:
            if closed is None and template is not None:  # the clocks differ: once more
                log.warning(
                    "reply to %s refused for the window: sent as its template", phone_tail(to)
                )
                return await self._entry(to, entry, "drop", remember, until, gate)
            self.metrics.window_closed.labels("dropped").inc()
            log.error("reply to %s given up: %s", phone_tail(to), exc)
        except GraphError as exc:
            if exc.retryable or exc.hold:  # retries ran out, or the account is refused:
                raise _Left(str(exc)) from None  # keep this one and the rest, in order
            log.error("reply to %s given up: %s", phone_tail(to), exc)
        except ValueError as exc:  # no payload can say it (a file never uploaded): a bug
            log.error("reply to %s cannot be sent, given up: %s", phone_tail(to), exc)
        else:
            if closed is not None and sent:
                self.metrics.window_closed.labels("template").inc()
        return True

    async def _template(
        self,
        to: str,
        entry: Outgoing,
        template: Template,
        remember: bool,
        until: float | None,
        gate: Gate | None,
    ) -> int:
        """Send ``entry`` as its ``template``, once ``gate`` admits it (:class:`_Held` if
        not; unless this process sent it already); the slot is given back if it is not sent."""
        payloads = [(TEMPLATE_PART, render_template(template, to))]
        admission = None
        if gate is not None and not (remember and (to, entry.key, TEMPLATE_PART) in self._sent):
            admission = await gate.admit()
            if admission is None:
                raise _Held
        try:
            return await self._parts(to, entry, payloads, remember, until)
        except BaseException:
            if gate is not None and admission is not None:
                await gate.give_back(admission)
            raise

    async def _parts(
        self,
        to: str,
        entry: Outgoing,
        payloads: list[tuple[int, Payload]],
        remember: bool,
        until: float | None,
    ) -> int:
        """Send ``payloads`` (numbered parts of ``entry``), skipping those this process sent
        already; how many it sent now."""
        sent = 0
        for part, payload in payloads:
            key = (to, entry.key, part)
            if remember and key in self._sent:
                continue
            if until is not None and time.monotonic() > until:
                raise _Left("the send lease ends")
            await self._send(payload, until)
            sent += 1
            if remember:
                remember_bounded(self._sent, key, None, SENT_KEPT)
        return sent

    def _unsendable(self, to: str, entry: Outgoing, closed: ClosedWindow) -> bool:
        """A reply without a template while the window is closed: not attempted. Dropped
        (True: done) or kept for the user's next message (False); logged and counted once
        per entry in this process."""
        mark = (to, entry.key, TEMPLATE_PART)
        if mark in self._kept:
            return False
        outcome = "kept" if closed == "keep" else "dropped"
        self.metrics.window_closed.labels(outcome).inc()
        log.warning(
            "reply to %s not sent: the 24-hour window is closed and it has no template (%s)",
            phone_tail(to),
            outcome,
        )
        if closed == "keep":
            remember_bounded(self._kept, mark, None, SENT_KEPT)
        return closed != "keep"

    def _left(self, to: str, delivered: Delivered, left: int, why: str) -> Delivered:
        delivered.left = left
        self._count_pending(to, left)
        log.warning("%d replies to %s stay pending: %s", left, phone_tail(to), why)
        return delivered

    def _count_pending(self, to: str, left: int) -> None:
        """The pending gauge: what this process last left pending, summed over users."""
        if left:
            remember_bounded(self._pending, to, left, PENDING_KEPT)
        elif self._pending.pop(to, None) is None:
            return
        self.metrics.pending.set(sum(self._pending.values()))

    async def _send(self, payload: dict[str, object], until: float | None = None) -> str:
        """Send one payload, retrying what may succeed later (no retry starts after
        ``until``); the last error if not."""
        for attempt in range(1, self.attempts + 1):
            started = time.perf_counter()
            try:
                message_id = await self.client.send(payload)
            except GraphError as exc:
                outcome = "retry" if exc.retryable else "held" if exc.hold else "failed"
                self.metrics.sends.labels(outcome, exc.label).inc()
                if not exc.retryable or attempt == self.attempts:
                    raise
                delay = self._delay(attempt, exc)
                if until is not None and time.monotonic() + delay > until:
                    raise  # the send lease ends: the rest stays pending
                await asyncio.sleep(delay)
                continue
            finally:
                self.metrics.send_seconds.observe(time.perf_counter() - started)
            self.metrics.sends.labels("sent", "").inc()
            return message_id
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, exc: GraphError) -> float:
        delay: float = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        if exc.code == 131056:  # pair rate limit: this user's messages need spacing out
            delay = max(delay, PAIR_LIMIT_PAUSE)
        return delay


def remember_bounded(seen: OrderedDict[Any, Any], key: Any, value: Any, most: int) -> None:
    """``seen[key] = value`` as the newest entry, forgetting the oldest past ``most``."""
    seen.pop(key, None)
    seen[key] = value
    while len(seen) > most:
        seen.popitem(last=False)


#: A phone number as logs show it: its last four digits (the one rule of the engine's too).
phone_tail = user_tail
