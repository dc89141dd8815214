"""A flow behind WhatsApp: each webhook message into ``engine.handle``, its replies out.

Per message: ``await engine.handle(user, text, message_id=wamid, pressed=...)`` saves the
new state with its replies in the engine's outbox and takes the user's *send lease*, in one
atomic write; the pending replies are then sent in order (:mod:`adapters.whatsapp.delivery`),
each confirmed as the Graph API accepts it (:meth:`fsm.AsyncEngine.sent`: written a moment
later, or folded into the user's next save), and the confirmation frees the lease. So:

- a reply is sent only after the state that produced it is saved;
- while one process sends a user's replies, no other sends them or applies that user's next
  message (a re-delivery elsewhere waits for the lease: :meth:`fsm.AsyncEngine.take_outbox`);
- if the process dies between the save and the send, or the retries run out, the replies
  stay in the outbox: the next delivery of the same message (Meta re-delivers when the
  webhook did not answer 200) or the user's next message sends them first, once the lease
  has lapsed;
- a re-delivery of a message whose replies were confirmed sends nothing again.

Before sending, the bot decides whether the user's 24-hour window is open, by the engine's
clock and the snapshot's ``last_inbound`` (:mod:`adapters.whatsapp.window`): outside it each
reply goes out as its message template (:func:`fsm.template`), and one without a template is
dropped or kept pending (``closed_window``), never attempted.

A template sent outside the window opens a business-initiated conversation, counted against
the messaging limit (``messaging_limit``: :mod:`adapters.whatsapp.limits`): one to a new user
past the limit is *held*, left pending in the outbox (202 to ``POST /events``), and
sent by :meth:`WhatsAppBot.send_held` (the ticker's rounds) once a slot frees, oldest first.

A message with a file, a location, a reaction or contact cards reaches the engine as its
``attachment`` (:mod:`fsm.attachments`; parsed by :mod:`adapters.whatsapp.updates`). The
engine's media channel is the Graph API's (:class:`~adapters.whatsapp.media.GraphMedia`)
unless it came with one: a reply made from bytes is uploaded before its save and sent by its
media id, and a step downloads what the user sent when it asks (``ctx.download()``).

Messages of one user are handled one at a time in this process, in the order they come;
across processes, a slow decision holds the user's lease too (:data:`fsm.protocol.GUARD_AFTER`),
so the user's next message waits for it. Different users are handled concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from adapters.whatsapp.delivery import Delivery, phone_tail, remember_bounded
from adapters.whatsapp.graph import GraphClient
from adapters.whatsapp.limits import Gate, MessagingLimit, Tracker
from adapters.whatsapp.media import GraphMedia
from adapters.whatsapp.metrics import WhatsAppMetrics
from adapters.whatsapp.render import mark_read
from adapters.whatsapp.updates import Incoming, Update
from adapters.whatsapp.window import CLOSED_WINDOW, WINDOW, ClosedWindow, window_closed
from fsm.async_engine import AsyncEngine
from fsm.errors import (
    ConflictError,
    FsmError,
    LockTimeout,
    SchemaTooNew,
    StepFailed,
    StoreUnavailable,
)
from fsm.media import MediaChannel
from fsm.ops.prometheus import EngineCollector
from fsm.reply import Reply
from fsm.result import Result
from fsm.snapshot import Outgoing, Snapshot

log = logging.getLogger("adapters.whatsapp")

#: What a message the flow cannot read (an image, a location...) gets back: a Reply sent as
#: it is, a str handed to the flow as if typed, or None (nothing).
Unsupported = Callable[[Incoming], Reply | str | None]

UNSUPPORTED_NOTICE = "Sorry, I can only read text and button answers."


def default_unsupported(message: Incoming) -> Reply | str | None:
    return Reply(UNSUPPORTED_NOTICE)


#: How many times one message whose action keeps failing on I/O is answered 503 (so Meta
#: delivers it again) before it is acknowledged: the action then stays pending, and the
#: user's next message finishes it first (or gives it up, with the abandon notice).
MAX_REDELIVERIES = 5

#: How long (seconds) a worker holds a user's lease while it sends the user's replies, at most:
#: no other worker sends them, or applies the user's next message, meanwhile. If the worker
#: dies, the user's replies and messages wait this long for another worker to take over.
SEND_LEASE = 15.0

#: No reply is started after this share of the send lease: the rest stays pending (503).
SEND_WINDOW = 0.8

#: How many message ids the bot's own memories keep (notices said, 503s answered).
IDS_KEPT = 10_000

#: Trouble a later delivery may not meet: answer 503 so Meta re-delivers. SchemaTooNew: the
#: session was written by a newer deploy; a newer worker will take the re-delivery.
TRANSIENT = (StoreUnavailable, LockTimeout, ConflictError, SchemaTooNew)


class WhatsAppBot:
    def __init__(
        self,
        engine: AsyncEngine,
        client: GraphClient,
        *,
        metrics: WhatsAppMetrics | None = None,
        unsupported: Unsupported = default_unsupported,
        mark_as_read: bool = True,
        delivery: Delivery | None = None,
        window: float = WINDOW,
        closed_window: ClosedWindow = "drop",
        messaging_limit: int | Tracker | None = None,
        media: MediaChannel | None = None,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise TypeError(f"WhatsAppBot needs an fsm.AsyncEngine, got {type(engine).__name__}")
        if closed_window not in CLOSED_WINDOW:
            raise ValueError(f"closed_window is one of {CLOSED_WINDOW}, got {closed_window!r}")
        if not 0 < window < float("inf"):
            raise ValueError(f"window is a number of seconds > 0, got {window!r}")
        engine.outbox = True  # replies are kept with the state until the Graph API has them
        if engine.media is None:  # files go to and come from the Graph API (or ``media``)
            engine.media = media if media is not None else GraphMedia(client)
        if engine.send_lease is None:  # and whoever sends them holds the user's lease
            engine.send_lease = SEND_LEASE
        self.engine = engine
        self.client = client
        self.metrics = metrics if metrics is not None else WhatsAppMetrics()
        # The engine's counters and store latency, read at scrape time, beside the transport's.
        self.metrics.registry.register(EngineCollector(engine))
        self.delivery = delivery if delivery is not None else Delivery(client, self.metrics)
        self.unsupported = unsupported
        self.mark_as_read = mark_as_read
        #: Seconds after the user's last message in which free-form replies are sent
        #: (WhatsApp's 24 hours), and what becomes of a reply without a template after it.
        self.window = window
        self.closed_window: ClosedWindow = closed_window
        #: Unique users business-initiated messages may go to in a moving 24 hours (None: no
        #: limit; they are counted all the same), and the users whose replies wait for a slot.
        self.limit: Tracker = (
            MessagingLimit(messaging_limit)
            if messaging_limit is None or isinstance(messaging_limit, int)
            else messaging_limit
        )
        self.metrics.limit.set(self.limit.limit or 0)
        self._locks = _UserLocks()
        self._noticed: OrderedDict[str, None] = OrderedDict()  # wamids answered by the hook
        self._retried: OrderedDict[str, int] = OrderedDict()  # wamids answered 503 (failed)
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"WhatsAppBot(engine={self.engine!r}, client={self.client!r})"

    async def receive(self, update: Update) -> int:
        """Handle every message of ``update`` (users concurrently, each user's in order);
        the HTTP status to answer: 200, or 503 if any message must be delivered again."""
        for status in update.statuses:
            self.metrics.statuses.labels(status.status).inc()
            if status.error_codes:
                log.warning(
                    "message %s %s: codes %s",
                    status.message_id,
                    status.status,
                    list(status.error_codes),
                )
        if update.malformed:
            self.metrics.messages.labels("malformed").inc(update.malformed)
        by_user: defaultdict[str, list[Incoming]] = defaultdict(list)
        for message in update.messages:
            by_user[message.user].append(message)
        outcomes = await asyncio.gather(*(self._user(msgs) for msgs in by_user.values()))
        return max(outcomes, default=int(HTTPStatus.OK))

    async def _user(self, messages: list[Incoming]) -> int:
        async with self._locks.hold(messages[0].user):
            for message in messages:
                status = await self._one(message)
                if status != HTTPStatus.OK:
                    return status  # the rest waits for the re-delivery, so the order holds
        return int(HTTPStatus.OK)

    async def _one(self, message: Incoming) -> int:
        if self.mark_as_read:
            self._spawn(self._mark_read(message.message_id))
        text, pressed = message.text, message.pressed
        if not message.readable:
            answer = self.unsupported(message)
            if answer is None or isinstance(answer, Reply):
                return await self._notice(message, answer)
            text, pressed = answer, None
        try:
            result = await self.engine.handle(
                message.user,
                text,
                message_id=message.message_id,
                pressed=pressed,
                attachment=message.attachment,
            )
        except TRANSIENT as exc:
            self.metrics.messages.labels("unavailable").inc()
            log.warning("message %s not applied yet (%s): answering 503", message.message_id, exc)
            return HTTPStatus.SERVICE_UNAVAILABLE
        except (ValueError, TypeError) as exc:  # text the engine refuses (a lone surrogate)
            self.metrics.messages.labels("malformed").inc()
            log.warning("message %s refused: %s", message.message_id, exc)
            return HTTPStatus.OK
        except FsmError as exc:
            return await self._failed(message, exc)
        self.metrics.messages.labels("duplicate" if result.duplicate else "applied").inc()
        return await self._send(message.user, result)

    async def notify(
        self,
        user: str,
        event: str,
        *,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> tuple[Result, int]:
        """Apply the external event ``event`` to ``user``'s conversation
        (:meth:`fsm.AsyncEngine.notify`) and send its replies as a message's: the result, and
        200; 202 if they are held for the messaging limit (a ticker sends them when a slot
        frees); 503 if some stay pending otherwise (deliver the event again, same
        ``event_id``: they go out then). The user's messages in this process wait
        meanwhile. Raises what ``notify`` raises; on the flow's own failure, what earlier
        saves left pending is sent first (no notice: the user did not write)."""
        async with self._locks.hold(user):
            try:
                result = await self.engine.notify(user, event, data=data, event_id=event_id)
            except TRANSIENT:
                raise
            except FsmError as exc:
                if not isinstance(exc, ValueError):
                    await self._flush(user)
                raise
            status = await self._send(user, result)
            if status != HTTPStatus.OK and await self.limit.held(user):
                status = HTTPStatus.ACCEPTED  # pending for the limit: the ticker sends them
            return result, status

    async def send_result(self, user: str, result: Result) -> int:
        """Send the replies of ``result`` (a timer's firing: :meth:`fsm.AsyncEngine.fire_due`)
        as a message's, under the send lease its save kept (else taken first): 200, or 503 if
        some stay pending in the outbox. No per-user wait: the send lease orders the sends."""
        return await self._send(user, result)

    async def flush_pending(self, user: str) -> int:
        """Send what ``user``'s outbox holds (taking the send lease): 200, or 503 if some stay
        pending (the store is unavailable, the lease is held, the retries ran out)."""
        return await self._flush(user)

    async def _send(self, user: str, result: Result | Snapshot, *, heard: bool = False) -> int:
        """Send the outbox of ``result`` (or of a snapshot) under the user's send lease
        (taking it first when the result came without one: another worker may be sending
        them), confirming each as it is accepted; 503 if some stay pending (Meta delivers the
        message again). The window is judged by the engine's clock, now; ``heard``: the user
        has just written (a message not saved), so it is open."""
        snapshot = result.snapshot if isinstance(result, Result) else result
        pending, lease = snapshot.outbox, result.lease if isinstance(result, Result) else None
        if not pending:
            return HTTPStatus.OK
        last_inbound = snapshot.last_inbound
        if lease is None:
            try:
                taken = await self.engine.take_outbox(user)
            except FsmError as exc:  # held by a worker still sending, or the store is down
                log.warning("replies to %s wait (%s): answering 503", phone_tail(user), exc)
                return HTTPStatus.SERVICE_UNAVAILABLE
            if taken is None:
                return HTTPStatus.OK  # sent meanwhile, by whoever held the lease
            pending, lease = taken.pending, taken.lease
            last_inbound = max(last_inbound, taken.last_inbound)
        engine, now = self.engine, self.engine.clock.now()
        until = time.monotonic() + SEND_WINDOW * (engine.send_lease or 0.0)
        closed = not heard and window_closed(last_inbound, now, self.window)
        try:
            delivered = await self.delivery.deliver(
                user,
                pending,
                on_done=lambda key: engine.sent(user, lease, (key,)),
                until=until if engine.send_lease else None,
                closed=self.closed_window if closed else None,
                gate=Gate(self.limit, user, now),
            )
        finally:
            engine.sent(user, lease, done=True)
        # Only a template can be held or counted: a plain reply costs the limit no store call.
        if closed or delivered.held or any(e.reply.template is not None for e in pending):
            await self._held(user, delivered.held, now)
        pending_left = delivered.left or delivered.held
        return HTTPStatus.SERVICE_UNAVAILABLE if pending_left else HTTPStatus.OK

    async def _held(self, user: str, held: int, now: float) -> None:
        """Note whether ``user``'s replies wait for the messaging limit (``held`` of them)."""
        if not held:
            await self.limit.unhold(user)
        elif await self.limit.hold(user, now):
            self.metrics.limit_held.inc()
            log.warning(
                "%d replies to %s held: the messaging limit (%s users in 24 hours) is reached",
                held,
                phone_tail(user),
                self.limit.limit,
            )
        await self._limit_gauges(now)

    async def _limit_gauges(self, now: float) -> None:
        try:
            users, waiting = await self.limit.counts(now)
        except FsmError as exc:  # a shared count unreachable: the gauges keep their values
            log.warning("the messaging limit's gauges are not updated (%s)", exc)
            return
        self.metrics.limit_users.set(users)
        self.metrics.limit_waiting.set(waiting)

    async def is_held(self, user: str) -> bool:
        """Whether ``user``'s replies wait for the messaging limit (:meth:`send_held` sends
        them)."""
        return await self.limit.held(user)

    async def send_held(self) -> list[str]:
        """Send the replies held for the messaging limit, oldest first, to as many users as
        there are free slots (the ticker calls it each round); the users whose replies stay
        pending for another reason (the Graph API kept failing), to try again later."""
        now = self.engine.clock.now()
        failed = []
        for user in await self.limit.ready(now):
            try:
                snapshot = await self.engine.peek(user)
            except FsmError:
                continue  # the store is unavailable: a later round tries again
            if snapshot is None or not snapshot.outbox:  # sent meanwhile, or gone
                await self.limit.unhold(user)
                if snapshot is None:
                    log.warning(
                        "replies held for %s expired with the conversation", phone_tail(user)
                    )
            elif await self._send(user, snapshot) == HTTPStatus.OK:
                await self.limit.unhold(user)
            elif not await self.limit.held(user):
                failed.append(user)
        await self._limit_gauges(now)
        return failed

    async def _flush(self, user: str, *, heard: bool = False) -> int:
        try:
            snapshot = await self.engine.peek(user)
        except FsmError:
            return HTTPStatus.SERVICE_UNAVAILABLE  # pending replies wait for the re-delivery
        return HTTPStatus.OK if snapshot is None else await self._send(user, snapshot, heard=heard)

    async def _failed(self, message: Incoming, exc: FsmError) -> int:
        """The flow failed on ``message``: send what earlier saves of it left pending, then
        tell the user (the flow's ``failure_reply`` or ``delay_reply``, once per message id in
        this process). An action that failed on I/O after the message was saved
        (``exc.transient``) answers 503, up to :data:`MAX_REDELIVERIES` times, so Meta
        delivers the message again and the action is finished with the same idempotency key;
        any other failure answers 200 (retrying the same body cannot help, and the engine
        counts repeated failures to heal a poisoned session). The log names the step and the
        exception's class, never its text, and only the tail of the user's number."""
        again = exc.transient and self._redeliveries(message.message_id) <= MAX_REDELIVERIES
        self.metrics.messages.labels("retried" if again else "failed").inc()
        cause = exc.__cause__ or exc
        log.error(
            "message %s from %s failed at %s: %s%s",
            message.message_id,
            phone_tail(message.user),
            f"{exc.stage}.{exc.step}" if isinstance(exc, StepFailed) else type(exc).__name__,
            type(cause).__name__,
            ": answering 503 for a re-delivery" if again else "",
        )
        status = await self._flush(message.user, heard=True)
        if status == HTTPStatus.OK and exc.notice is not None:
            status = await self._say_once(message, exc.notice, flushed=True)
        return HTTPStatus.SERVICE_UNAVAILABLE if again else status

    def _redeliveries(self, message_id: str) -> int:
        """How many times this process answered 503 to ``message_id`` for a failed action,
        this time included (bounded memory: the oldest ids are forgotten)."""
        count = self._retried.pop(message_id, 0) + 1
        remember_bounded(self._retried, message_id, count, IDS_KEPT)
        return count

    async def _notice(self, message: Incoming, reply: Reply | None) -> int:
        """Answer a message the flow cannot read, once per message id in this process (it
        is not applied: nothing is saved)."""
        self.metrics.messages.labels("unsupported").inc()
        return await self._say_once(message, reply)

    async def _say_once(
        self, message: Incoming, reply: Reply | None, *, flushed: bool = False
    ) -> int:
        """Send ``reply`` about ``message`` once per message id in this process, after what
        is pending (unless ``flushed`` just sent it). Nothing is saved."""
        if reply is None or message.message_id in self._noticed:
            return HTTPStatus.OK
        if not flushed and await self._flush(message.user, heard=True) != HTTPStatus.OK:
            return HTTPStatus.SERVICE_UNAVAILABLE  # what is pending goes first
        notice = Outgoing(0, 0, message.message_id, reply)
        delivered = await self.delivery.deliver(message.user, (notice,), remember=False)
        if delivered.left:
            return HTTPStatus.SERVICE_UNAVAILABLE  # not sent: the re-delivery tries again
        remember_bounded(self._noticed, message.message_id, None, IDS_KEPT)
        return HTTPStatus.OK

    async def _mark_read(self, message_id: str) -> None:
        try:
            await self.client.mark_read(mark_read(message_id))
        except Exception as exc:  # noqa: BLE001 - best effort: it must not fail anything
            self.metrics.mark_read.labels("failed").inc()
            log.info("mark as read of %s failed: %s", message_id, type(exc).__name__)
        else:
            self.metrics.mark_read.labels("ok").inc()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Wait for background requests (mark-as-read), then close the Graph API client, and
        the flow's own resources: a flow may define ``close()`` (an API client, say)."""
        try:
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            await self.engine.flush()  # deferred confirmations, written before we go
            await self.client.aclose()
        finally:
            close = getattr(self.engine.flow, "close", None)
            if callable(close):
                await asyncio.to_thread(close)


class _UserLocks:
    """One asyncio lock per user with messages in flight; dropped when none wait."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, user: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(user, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[user] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user]
            if users == 1:
                del self._locks[user]
            else:
                self._locks[user] = (lock, users - 1)
