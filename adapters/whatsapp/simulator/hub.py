"""Events for the simulator's pages: what each user's chat shows, pushed as server-sent events.

Each user's chat is a bounded log of events (the user's messages, the bot's sends, read
receipts, the webhook's answers). A page subscribes to one user: it first gets the log so far
(a reload shows the conversation), then each new event as it happens. Nothing is polled.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec

__all__ = ["Hub"]

Event = dict[str, Any]


class Hub:
    """Per-user event logs and their live subscribers (one asyncio loop)."""

    def __init__(self, keep: int = 500, queue_size: int = 1000) -> None:
        self._logs: defaultdict[str, deque[Event]] = defaultdict(lambda: deque(maxlen=keep))
        self._subscribers: defaultdict[str, set[asyncio.Queue[Event | None]]] = defaultdict(set)
        self._queue_size = queue_size
        self._ids = itertools.count(1)
        self._closed = False

    def publish(self, user: str, event: Event) -> Event:
        """Add ``event`` to ``user``'s log and hand it to every page watching that user."""
        event = {"seq": next(self._ids), "at": time.time(), **event}
        self._logs[user].append(event)
        for queue in list(self._subscribers[user]):
            if queue.full():  # a page that stopped reading: its stream ends once it has read
                self._subscribers[user].discard(queue)  # what is queued; it reconnects, replays
                continue
            queue.put_nowait(event)
        return event

    def log(self, user: str) -> list[Event]:
        return list(self._logs.get(user, ()))

    def clear(self, user: str) -> None:
        self._logs.pop(user, None)

    async def stream(self, user: str, *, heartbeat: float = 15.0) -> AsyncIterator[bytes]:
        """Server-sent events for ``user``: the log so far, then live events; a comment line
        every ``heartbeat`` seconds keeps proxies from closing an idle stream."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        self._subscribers[user].add(queue)
        replay = self.log(user)  # taken with the subscription: no event is missed or doubled
        try:
            yield b"retry: 1000\n\n"
            for past in replay:
                yield _frame(past)
            while not self._closed:
                if queue not in self._subscribers[user] and queue.empty():
                    return  # dropped as too slow: end the stream, the page reconnects
                try:
                    async with asyncio.timeout(heartbeat):
                        event = await queue.get()
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                if event is None:
                    return
                yield _frame(event)
        finally:
            self._subscribers[user].discard(queue)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self._closed = True
        for queues in self._subscribers.values():
            for queue in queues:
                if not queue.full():
                    queue.put_nowait(None)


def _frame(event: Event) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event["seq"], msgspec.json.encode(event))
