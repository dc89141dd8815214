"""In-process delivery of the fake Credex API's notifications: the ticker brings them.

The Credex API tells a member's bot about an offer made to them unasked: it POSTs the event to
the bot's ``/events`` (``fsm serve``; the fake HTTP server does so, :mod:`.fake_server`). With
the fake API in the bot's own process (``fsm chat``, the testing kit, transcripts, ``fsm
serve`` without ``CREDEX_API_URL``) nothing is posted: the fake's notifier puts each
:class:`~flows.credex.fake.Notification` in a :class:`Mailbox`, and the engine applies what is
there (``engine.notify``) each time its ticker runs (:meth:`DeliveringEngine.fire_due`), handing
each result to ``on_result`` as it does a timer's.

Why at the tick, and not at the end of the sender's message: the notification is made inside
the sender's action, under the sender's lease (on AsyncEngine, on the loop or in a worker
thread); applying the receiver's event there would nest one user's input inside another's. The
tick comes after the sender's message, on the engine's own driver (sync or async), and its
replies reach the transport the way every proactive reply does, through the ticker's
``on_result``: in ``fsm serve`` (its ticker runs every second, so an offer reaches its receiver
about as fast as through a webhook), in a transcript (``! clock +1s``) and in the testing kit
(``chat.advance(1)``). Tests call :meth:`DeliveringEngine.fire_due` themselves.

A notification that cannot be applied now (the store is down, the receiver's lease is busy past
``lock_wait``) waits in the mailbox for the next tick; one whose handler fails (the flow's bug:
it would fail again) is dropped, logged. Each is applied once however often it is tried: its
event id (the credex id) is deduplicated like a message id.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from flows.credex.fake import Notification
from fsm import AsyncEngine, Engine, Flow
from fsm.errors import FsmError
from fsm.firing import FLOW_FAILURES
from fsm.redaction import user_tail
from fsm.result import Result
from fsm.store import AsyncSessionStore, SessionStore

__all__ = ["AsyncDeliveringEngine", "DeliveringEngine", "Mailbox"]

log = logging.getLogger("flows.credex.delivery")

#: How many notifications a mailbox keeps waiting at most (no ticker running for long); past it
#: the oldest are dropped, logged (the offers are still in each member's menu).
CAPACITY = 10_000


class Mailbox:
    """Notifications waiting for the next tick, oldest first; thread-safe. ``put`` is the fake
    API's notifier (``FakeCredexApi(notifier=mailbox.put)``)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.dropped = 0
        self._lock = threading.Lock()
        self._waiting: deque[Notification] = deque()

    def put(self, notification: Notification) -> None:
        with self._lock:
            if len(self._waiting) >= self.capacity:
                old = self._waiting.popleft()
                self.dropped += 1
                log.warning("mailbox full: notification %s dropped", old.event_id)
            self._waiting.append(notification)

    def take(self) -> list[Notification]:
        """Everything waiting, now out of the mailbox."""
        with self._lock:
            taken = list(self._waiting)
            self._waiting.clear()
            return taken

    def put_back(self, notifications: Iterable[Notification]) -> None:
        """Return ``notifications`` (taken, not applied) to the front, in their order."""
        with self._lock:
            self._waiting.extendleft(reversed(list(notifications)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def __repr__(self) -> str:
        return f"Mailbox(waiting={len(self)}, dropped={self.dropped})"


def _not_applied(notification: Notification, exc: FsmError) -> bool:
    """Log why ``notification`` was not applied; True if it is worth trying again next tick
    (a store or lock failure), False if it is dropped (the flow failed on it)."""
    who = user_tail(notification.user)
    if isinstance(exc, FLOW_FAILURES):
        log.error(
            "user %s: event %s (%s) dropped: its handler failed (%s)",
            who,
            notification.event,
            notification.event_id,
            type(exc.__cause__ or exc).__name__,
        )
        return False
    log.warning(
        "user %s: event %s (%s) not applied yet: %s",
        who,
        notification.event,
        notification.event_id,
        type(exc).__name__,
    )
    return True


class DeliveringEngine(Engine):
    """:class:`fsm.Engine` whose ticker (:meth:`fire_due`) first applies the notifications
    waiting in ``mailbox`` (the module's doc)."""

    def __init__(self, flow: Flow, store: SessionStore, *, mailbox: Mailbox, **options: Any):
        super().__init__(flow, store, **options)
        self.mailbox = mailbox

    def fire_due(
        self,
        *,
        limit: int | None = None,
        on_result: Callable[[str, Result], None] | None = None,
    ) -> int:
        """Apply the waiting notifications, then fire the due timers (as
        :meth:`fsm.Engine.fire_due`; the count is of timers)."""
        self.deliver(on_result)
        return super().fire_due(limit=limit, on_result=on_result)

    def deliver(self, on_result: Callable[[str, Result], None] | None = None) -> int:
        """Apply the waiting notifications; how many were applied."""
        waiting = self.mailbox.take()
        applied = 0
        for n, notification in enumerate(waiting):
            try:
                result = self.notify(
                    notification.user,
                    notification.event,
                    data=notification.data,
                    event_id=notification.event_id,
                )
            except FsmError as exc:
                if _not_applied(notification, exc):
                    self.mailbox.put_back(waiting[n:])
                    break
                continue
            applied += not (result.ignored or result.duplicate)
            if on_result is not None and result.to_send:
                on_result(notification.user, result)
        return applied


class AsyncDeliveringEngine(AsyncEngine):
    """:class:`fsm.AsyncEngine` whose ticker (:meth:`fire_due`) first applies the
    notifications waiting in ``mailbox`` (the module's doc)."""

    def __init__(
        self, flow: Flow, store: AsyncSessionStore, *, mailbox: Mailbox, **options: Any
    ) -> None:
        super().__init__(flow, store, **options)
        self.mailbox = mailbox

    async def fire_due(
        self,
        *,
        limit: int | None = None,
        on_result: Callable[[str, Result], Awaitable[None] | None] | None = None,
    ) -> int:
        """Apply the waiting notifications, then fire the due timers (as
        :meth:`fsm.AsyncEngine.fire_due`; the count is of timers)."""
        await self.deliver(on_result)
        return await super().fire_due(limit=limit, on_result=on_result)

    async def deliver(
        self, on_result: Callable[[str, Result], Awaitable[None] | None] | None = None
    ) -> int:
        """Apply the waiting notifications, one after another; how many were applied."""
        waiting = self.mailbox.take()
        applied = 0
        for n, notification in enumerate(waiting):
            try:
                result = await self.notify(
                    notification.user,
                    notification.event,
                    data=notification.data,
                    event_id=notification.event_id,
                )
            except FsmError as exc:
                if _not_applied(notification, exc):
                    self.mailbox.put_back(waiting[n:])
                    break
                continue
            applied += not (result.ignored or result.duplicate)
            if on_result is not None and result.to_send:
                pending = on_result(notification.user, result)
                if pending is not None:
                    await pending
        return applied
