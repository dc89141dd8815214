"""AsyncRedisStore: the :class:`~fsm.store.AsyncStore` contract on ``redis.asyncio``.

It runs the very operations :class:`~adapters.redis.RedisStore` runs (:mod:`adapters.redis_ops`:
the same keys, Lua scripts, value layout, tags, retry rules and lock recovery), awaiting each
Redis call instead of blocking on it; this module is only the driver, with two guards around
redis-py's asyncio clients (a bound on the commands in flight, and a Cluster's discovery done
once, up front), and auto-pipelining (:mod:`adapters.redis_pipeline`). A sync and an async
worker therefore serve the same users of one deployment side by side: each sees the other's
sessions, versions, locks, history and seen message ids.

Cancellation (a client disconnect, ``asyncio.timeout``) is safe: redis-py closes a connection
whose reply was not read yet (the CVE-2023-28858/28859 class of bug is fixed in the redis-py
this package requires), and every operation is one atomic script or command, so the stored
value is the old one or the new one. The engine frees a lock whose request was cancelled on
its way out; only if the cancelled lock command reaches the server after that release (it
may travel on another connection) is the lock left to its TTL, which bounds it.

``max_connections`` bounds the commands in flight (redis-py 8's asyncio pools refuse a command
past their size instead of waiting): with a client of your own, pass its pool's size.

>>> store = AsyncRedisStore.from_url("redis://127.0.0.1:6379/0", namespace="bot")  # doctest: +SKIP
>>> await store.load("alice")                                                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar, Unpack, cast

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel

from adapters.redis_keys import DEFAULT_NAMESPACE
from adapters.redis_lua import Lua
from adapters.redis_ops import (
    ERRORS,
    Command,
    Operation,
    Pause,
    RedisLimits,
    RedisOperations,
    Script,
)
from adapters.redis_pipeline import AutoPipeline
from adapters.redis_url import ClientClasses, connect
from fsm.records import Due, DueStats, HistoryEntry, Loaded, LockInfo, SaveResult
from fsm.store import AsyncStore

__all__ = ["AsyncRedisStore"]

T = TypeVar("T")
AsyncClient = redis.asyncio.Redis | RedisCluster

#: Pipelines in flight at once (a connection each), at most: a few keep the server busy.
MAX_PIPELINES = 16

ASYNCIO = ClientClasses(redis.asyncio.Redis, RedisCluster, ClusterNode, Sentinel, Retry)


class AsyncRedisStore(AsyncStore):
    """:class:`~adapters.redis.RedisStore` on asyncio. Build it with :meth:`from_url` or from
    a ready ``redis.asyncio`` client (``redis.asyncio.Redis``, a Sentinel ``master_for``
    client or ``redis.asyncio.cluster.RedisCluster``); clients must not decode responses.
    The options are RedisStore's (``history_limit``, ``dedupe_ttl``, ``retries``, ...), and
    ``max_connections``: at most that many commands in flight at once (the client's pool size,
    per node on a Cluster). Further ones wait their turn, since redis-py's asyncio pools refuse
    a command rather than wait when every connection is busy. ``pipeline`` (default true):
    the commands of one turn of the event loop go as one pipeline
    (:mod:`adapters.redis_pipeline`; not on a Cluster client)."""

    takes_lease_on_save = True
    keeps_timers = True

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_connections: int = 100,
        pipeline: bool = True,
        **limits: Unpack[RedisLimits],
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._ops = RedisOperations(namespace, **limits)
        self.client = client
        self.layout = self._ops.layout
        self._scripts = {name: Lua(lua) for name, lua in self._ops.scripts.items()}
        self._in_flight = asyncio.Semaphore(max_connections)
        self._cluster_pending = isinstance(client, RedisCluster)
        self._initializing = asyncio.Lock()
        #: Commands of one turn of the loop batched into pipelines (not on a Cluster client).
        self.pipeline: AutoPipeline | None = None
        if pipeline and not self._cluster_pending:
            slots = min(MAX_PIPELINES, max_connections)
            self.pipeline = AutoPipeline(client, self._scripts, max_pipelines=slots)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_connections: int = 100,
        **options: Unpack[RedisLimits],
    ) -> AsyncRedisStore:
        """A store from a URL: exactly the URLs :meth:`RedisStore.from_url` takes
        (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
        ``redis+sentinel://``). Nothing is sent yet: the client connects on the first call."""
        client: AsyncClient = connect(url, ASYNCIO, max_connections=max_connections)
        return cls(client, namespace=namespace, max_connections=max_connections, **options)

    def __repr__(self) -> str:
        return (
            f"AsyncRedisStore(namespace={self.layout.namespace!r}, "
            f"client={type(self.client).__name__})"
        )

    # -- the driver --------------------------------------------------------------------------
    async def _run(self, operation: Operation[T]) -> T:
        """Await ``operation``'s calls on the client, sending back each reply; a Redis error
        is thrown into the operation instead, which retries or wraps it. A cancellation
        propagates: the operation is closed where it stood."""
        reply: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    request = operation.send(reply) if error is None else operation.throw(error)
                except StopIteration as done:
                    return cast(T, done.value)
                reply, error = None, None
                try:
                    if isinstance(request, Pause):
                        await asyncio.sleep(request.seconds)
                    else:
                        reply = await self._execute(request)
                except ERRORS as exc:
                    error = exc
        finally:
            reply = error = None  # no cycle through this frame from a raised error's traceback
            operation.close()

    async def _execute(self, request: Script | Command) -> Any:
        if self.pipeline is not None:
            if isinstance(request, Script):
                return await self.pipeline.script(request.name, request.keys, request.args)
            return await self.pipeline.command(*request.args)
        async with self._in_flight:
            if self._cluster_pending:
                await self._initialize_cluster()
            if isinstance(request, Script):
                return await self._scripts[request.name].arun(
                    self.client, request.keys, request.args
                )
            return await self.client.execute_command(*request.args)

    async def _initialize_cluster(self) -> None:
        """Discover a Cluster client's nodes once, before its first command. redis-py's async
        Cluster client races when its first commands arrive together: they are routed
        through the startup nodes whose connections the discovery then closes, and fail
        with "Connection closed by server" (or an AttributeError) though the cluster is fine."""
        async with self._initializing:
            if self._cluster_pending:
                await cast(RedisCluster, self.client).initialize()
                self._cluster_pending = False

    # -- sessions ----------------------------------------------------------------------------
    async def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return await self._run(self._ops.load(user_key, message_id=message_id))

    async def save(
        self,
        user_key: str,
        payload: bytes,
        *,
        version: int,
        expected_version: int,
        ttl: float,
        history: HistoryEntry | None = None,
        message_id: str | None = None,
        owner: str | None = None,
        release: bool = False,
        expected_tag: str = "",
        lease: float | None = None,
    ) -> SaveResult:
        return await self._run(
            self._ops.save(
                user_key, payload, version=version, expected_version=expected_version,
                ttl=ttl, history=history, message_id=message_id, owner=owner,
                release=release, expected_tag=expected_tag, lease=lease,
            )
        )  # fmt: skip

    async def delete(self, user_key: str) -> bool:
        return await self._run(self._ops.delete(user_key))

    async def ttl(self, user_key: str) -> float | None:
        return await self._run(self._ops.ttl(user_key))

    async def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return await self._run(self._ops.history(user_key, limit=limit))

    # -- lease lock --------------------------------------------------------------------------
    async def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return await self._run(self._ops.acquire_lock(user_key, owner, ttl))

    async def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        return await self._run(self._ops.lock_and_load(user_key, owner, ttl, message_id=message_id))

    async def release_lock(self, user_key: str, owner: str) -> bool:
        return await self._run(self._ops.release_lock(user_key, owner))

    async def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return await self._run(self._ops.extend_lock(user_key, owner, ttl))

    async def lock_info(self, user_key: str) -> LockInfo | None:
        return await self._run(self._ops.lock_info(user_key))

    # -- quarantine --------------------------------------------------------------------------
    async def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return await self._run(self._ops.quarantine(user_key, raw, reason))

    # -- the index of deadlines --------------------------------------------------------------
    async def index_due(self, user_key: str, armed: str, due: float) -> None:
        await self._run(self._ops.index_due(user_key, armed, due))

    async def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        return await self._run(self._ops.claim_due(now, limit=limit, hold=hold))

    async def settle_due(self, entries: Sequence[Due]) -> None:
        await self._run(self._ops.settle_due(entries))

    async def due_stats(self, now: float) -> DueStats:
        return await self._run(self._ops.due_stats(now))

    # -- lifecycle ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the client's connections, and a Sentinel client's connections to its
        Sentinels too."""
        if self.pipeline is not None:
            await self.pipeline.aclose()
        await self.client.aclose()
        pool = getattr(self.client, "connection_pool", None)
        manager = getattr(pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()
