"""WhatsApp's messaging limit: how many unique users a business may send messages to *outside*
their 24-hour window (a template that opens a business-initiated conversation) in a moving
24 hours. Meta sets it per business portfolio (250, 2,000, 10,000, 100,000 or unlimited) and
refuses what goes past it.

:class:`MessagingLimit` paces those sends under a configured limit. It remembers, per user,
when a template last went to them outside their window, oldest first: a user counts from that
send for 24 hours, and a user already counted does not count twice. A template to a *new* user
while the count is at the limit is not sent: the reply stays pending in the outbox (the user
waits, oldest first), and goes out when a counted user's 24 hours are over and a slot frees.
Replies inside the window are never counted nor held.

Every process that sends proactive replies (each ``fsm serve`` worker's ticker and ``POST
/events``, ``fsm timers run``, ``fsm notify``) must see one count, or each would spend the
whole limit: :class:`Tracker` is that count's contract. :class:`MessagingLimit` keeps it in
this process's memory (one process: the memory store, tests);
:class:`~adapters.whatsapp.limits_redis.RedisMessagingLimit` keeps it in Redis, shared by
every process on the same store (``fsm serve`` picks it on a Redis store).

>>> import asyncio
>>> limit = MessagingLimit(2)
>>> async def demo():
...     admitted = [await limit.admit(user, 0.0) is not None for user in ("a", "b", "a", "c")]
...     return admitted, await limit.hold("c", 0.0), await limit.counts(0.0), await limit.ready(DAY)
>>> asyncio.run(demo())
([True, True, True, False], True, (2, 1), ['c'])
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

#: The moving period over which Meta counts unique users (seconds).
DAY = 24 * 60 * 60.0

#: The most users counted without a limit (the gauge then saturates: memory stays bounded).
COUNTED_KEPT = 100_000

#: The most users whose held replies are remembered (past it the oldest are forgotten: their
#: replies stay in the outbox, and the user's next message sends them).
WAITING_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Admission:
    """A user counted for a send at ``at``; ``new``: they were not counted before, so
    :meth:`MessagingLimit.give_back` frees their slot if nothing was sent."""

    user: str
    at: float
    new: bool


@dataclass(frozen=True, slots=True)
class Gate:
    """The limit as one user's send at ``now`` meets it (handed to the delivery)."""

    limit: Tracker
    user: str
    now: float

    async def admit(self) -> Admission | None:
        return await self.limit.admit(self.user, self.now)

    async def give_back(self, admission: Admission) -> None:
        await self.limit.give_back(admission)


class Tracker(Protocol):
    """The count of users sent business-initiated messages in a moving day, and the users
    whose replies wait for a slot: what the bot, its delivery and its ticker need."""

    #: Users per moving day (None: no limit; users are counted all the same).
    limit: int | None

    async def admit(self, user: str, now: float) -> Admission | None:
        """Count ``user`` for a business-initiated send at ``now``: an :class:`Admission`,
        or None if it must wait (a new user, and the limit is reached, or others wait
        first)."""

    async def give_back(self, admission: Admission) -> None:
        """Nothing was sent on ``admission``: a user it counted anew is forgotten (unless
        counted again since); one counted before stays counted, from the later time."""

    async def hold(self, user: str, now: float) -> bool:
        """``user``'s replies wait for a slot: True if they were not waiting already."""

    async def unhold(self, user: str) -> None:
        """``user``'s replies no longer wait (sent, or gone)."""

    async def held(self, user: str) -> bool:
        """Whether ``user``'s replies wait for a slot."""

    async def ready(self, now: float) -> list[str]:
        """The waiting users who may be sent to at ``now``, oldest first: as many as there
        are free slots."""

    async def counts(self, now: float) -> tuple[int, int]:
        """The users counted at ``now``, and the users waiting (for the gauges);
        :class:`~fsm.errors.StoreUnavailable` if a shared count cannot be read."""


class MessagingLimit:
    """A :class:`Tracker` in this process's memory (bounded): unique users sent a
    business-initiated message in the last ``period`` seconds, at most ``limit``."""

    def __init__(self, limit: int | None = None, *, period: float = DAY) -> None:
        self.limit = checked_limit(limit)
        self.period = checked_period(period)
        self._counted: OrderedDict[str, float] = OrderedDict()  # user -> last send, oldest first
        self._waiting: OrderedDict[str, float] = OrderedDict()  # user -> held since

    def __repr__(self) -> str:
        return (
            f"MessagingLimit(limit={self.limit}, counted={len(self._counted)}, "
            f"waiting={len(self._waiting)})"
        )

    async def admit(self, user: str, now: float) -> Admission | None:
        self._expire(now)
        before = self._counted.get(user)
        if before is None and self.limit is not None:
            ahead = 0 if user in self._waiting else len(self._waiting)
            if len(self._counted) + ahead >= self.limit:
                return None
        self._counted.pop(user, None)
        self._counted[user] = now
        while len(self._counted) > (self.limit or COUNTED_KEPT):
            self._counted.popitem(last=False)
        self._waiting.pop(user, None)
        return Admission(user, now, before is None)

    async def give_back(self, admission: Admission) -> None:
        if admission.new and self._counted.get(admission.user) == admission.at:
            del self._counted[admission.user]

    def _expire(self, now: float) -> None:
        """Forget the users whose 24 hours are over at ``now`` (they are the oldest)."""
        horizon = now - self.period
        while self._counted:
            user, at = next(iter(self._counted.items()))
            if at > horizon:
                return
            del self._counted[user]

    async def hold(self, user: str, now: float) -> bool:
        if user in self._waiting:
            return False
        self._waiting[user] = now
        while len(self._waiting) > WAITING_KEPT:
            self._waiting.popitem(last=False)
        return True

    async def unhold(self, user: str) -> None:
        self._waiting.pop(user, None)

    async def held(self, user: str) -> bool:
        return user in self._waiting

    async def ready(self, now: float) -> list[str]:
        self._expire(now)
        free = len(self._waiting) if self.limit is None else self.limit - len(self._counted)
        return list(islice(self._waiting, max(free, 0)))

    async def counts(self, now: float) -> tuple[int, int]:
        self._expire(now)
        return len(self._counted), len(self._waiting)


def checked_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"a messaging limit is a number of users >= 1, got {limit!r}")
    return limit


def checked_period(period: float) -> float:
    if not 0 < period < float("inf"):
        raise ValueError(f"period is a number of seconds > 0, got {period!r}")
    return period
