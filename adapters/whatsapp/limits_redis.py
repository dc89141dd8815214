"""WhatsApp's messaging limit counted in Redis: one count for every process of a bot.

:class:`RedisMessagingLimit` is the :class:`~adapters.whatsapp.limits.Tracker` ``fsm serve``
uses on a Redis store: each worker, ``fsm timers run`` and ``fsm notify`` admit users against
the same two sorted sets, beside the store's keys (``<namespace>:{limit:<namespace>}:u`` and
``:w``, one Cluster slot: :mod:`adapters.redis_keys`). Each decision is one script, so two
processes never both take the last slot. The rules are :class:`~adapters.whatsapp.limits.
MessagingLimit`'s: a user counts for ``period`` seconds from their last business-initiated
send, a user counted already does not count twice, a new user past the limit waits (oldest
first), and a slot not used is given back.

Times are the callers' (the engine's clock, as everywhere), sent as arguments: Redis's own
clock is never read, so a fake clock in tests works as in production.

When Redis cannot be reached the count is not known, so nobody new is admitted: replies that
need a slot stay pending in the outbox (never past the limit) and the ticker tries again;
the failure is logged, without the user's number.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from redis.asyncio.cluster import RedisCluster

from adapters.redis_keys import DEFAULT_NAMESPACE, KeyLayout
from adapters.redis_lua import Lua
from adapters.redis_ops import ERRORS
from adapters.whatsapp.limits import (
    COUNTED_KEPT,
    DAY,
    WAITING_KEPT,
    Admission,
    checked_limit,
    checked_period,
)
from fsm.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: Keys outlive the last write by this much past the period (milliseconds): an idle bot's
#: count disappears on its own.
SLACK_MS = 60_000

# KEYS: counted, waiting. ARGV: user, now, horizon, limit (0: none), kept, ttl ms.
# Returns -1 (wait), 0 (counted before: from now), 1 (counted anew).
_ADMIT = """
local counted, waiting = KEYS[1], KEYS[2]
local user, limit = ARGV[1], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', counted, '-inf', ARGV[3])
local before = redis.call('ZSCORE', counted, user)
if not before and limit > 0 then
  local ahead = 0
  if not redis.call('ZSCORE', waiting, user) then ahead = redis.call('ZCARD', waiting) end
  if redis.call('ZCARD', counted) + ahead >= limit then return -1 end
end
redis.call('ZADD', counted, ARGV[2], user)
local over = redis.call('ZCARD', counted) - tonumber(ARGV[5])
if over > 0 then redis.call('ZREMRANGEBYRANK', counted, 0, over - 1) end
redis.call('ZREM', waiting, user)
redis.call('PEXPIRE', counted, ARGV[6])
if before then return 0 end
return 1
"""

# KEYS: counted. ARGV: user, at. The user is forgotten if still counted from ``at``.
_GIVE_BACK = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS: waiting. ARGV: user, now, kept, ttl ms. Returns 1 if the user was not waiting yet.
_HOLD = """
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return added
"""

# KEYS: counted, waiting. ARGV: horizon, limit (0: none). The waiting users a slot is free for.
_READY = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit, free = tonumber(ARGV[2]), 0
if limit > 0 then free = limit - redis.call('ZCARD', KEYS[1])
else free = redis.call('ZCARD', KEYS[2]) end
if free <= 0 then return {} end
return redis.call('ZRANGE', KEYS[2], 0, free - 1)
"""

# KEYS: counted, waiting. ARGV: horizon. The users counted, and the users waiting.
_COUNTS = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}
"""


class RedisMessagingLimit:
    """A :class:`~adapters.whatsapp.limits.Tracker` in Redis, on a ``redis.asyncio`` client
    that does not decode responses (a store's ``client``: standalone, Sentinel or Cluster),
    under the store's ``namespace``."""

    def __init__(
        self,
        client: Any,
        limit: int | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        period: float = DAY,
    ) -> None:
        self.limit = checked_limit(limit)
        self.period = checked_period(period)
        self.client = client
        layout = KeyLayout(namespace)
        self._keys = [layout.limit_counted, layout.limit_waiting]
        self._ttl_ms = str(math.ceil(period * 1000) + SLACK_MS)
        self._admit, self._give_back, self._hold = Lua(_ADMIT), Lua(_GIVE_BACK), Lua(_HOLD)
        self._ready, self._counts = Lua(_READY), Lua(_COUNTS)
        self._unhold = Lua("return redis.call('ZREM', KEYS[1], ARGV[1])")
        self._held = Lua("return redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0")
        self._cluster_pending = isinstance(client, RedisCluster)
        self._initializing = asyncio.Lock()

    def __repr__(self) -> str:
        return f"RedisMessagingLimit(limit={self.limit}, key={self._keys[0]!r})"

    async def _eval(self, script: Lua, keys: list[str], args: list[Any]) -> Any:
        if self._cluster_pending:  # discover the nodes before the first commands race
            async with self._initializing:
                if self._cluster_pending:
                    await self.client.initialize()
                    self._cluster_pending = False
        return await script.arun(self.client, keys, args)

    def _horizon(self, now: float) -> str:
        return repr(now - self.period)

    async def admit(self, user: str, now: float) -> Admission | None:
        kept = self.limit or COUNTED_KEPT
        args = [user, repr(now), self._horizon(now), self.limit or 0, kept, self._ttl_ms]
        try:
            reply = await self._eval(self._admit, self._keys, args)
        except ERRORS as exc:
            log.warning("the messaging limit's count is unreachable (%s): nobody new is sent", exc)
            return None
        return None if int(reply) < 0 else Admission(user, now, int(reply) == 1)

    async def give_back(self, admission: Admission) -> None:
        if not admission.new:
            return  # counted before: stays counted, from the later time
        args = [admission.user, repr(admission.at)]
        try:
            await self._eval(self._give_back, self._keys[:1], args)
        except ERRORS as exc:  # the user stays counted: the limit is undershot, never passed
            log.warning("a messaging-limit slot was not given back (%s)", exc)

    async def hold(self, user: str, now: float) -> bool:
        args = [user, repr(now), WAITING_KEPT, self._ttl_ms]
        try:
            return int(await self._eval(self._hold, self._keys[1:], args)) == 1
        except ERRORS as exc:  # not noted as waiting: the ticker's own retries send it
            log.warning("a held reply was not noted in the messaging limit (%s)", exc)
            return False

    async def unhold(self, user: str) -> None:
        try:
            await self._eval(self._unhold, self._keys[1:], [user])
        except ERRORS as exc:  # left waiting: send_held finds nothing to send and lets go
            log.warning("a held user was not let go in the messaging limit (%s)", exc)

    async def held(self, user: str) -> bool:
        try:
            return bool(await self._eval(self._held, self._keys[1:], [user]))
        except ERRORS:
            return False  # the ticker's own retries go on

    async def ready(self, now: float) -> list[str]:
        args = [self._horizon(now), self.limit or 0]
        try:
            users = await self._eval(self._ready, self._keys, args)
        except ERRORS as exc:
            log.warning("the messaging limit's count is unreachable (%s): held replies wait", exc)
            return []
        return [u.decode() if isinstance(u, bytes) else str(u) for u in users]

    async def counts(self, now: float) -> tuple[int, int]:
        try:
            counted, waiting = await self._eval(self._counts, self._keys, [self._horizon(now)])
        except ERRORS as exc:
            raise StoreUnavailable(f"the messaging limit's count is unreachable: {exc}") from exc
        return int(counted), int(waiting)
