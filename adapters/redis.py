"""RedisStore: the production store, on standalone Redis, Sentinel or Cluster (redis-py).

Each operation is one atomic Lua script on the keys of one user (one Cluster slot; see
:mod:`adapters.redis_keys` for the layout and :mod:`adapters.redis_scripts` for the scripts), so
a message costs one round trip for the compare-and-set, plus one read when the engine does not
already hold the current record. A conflict reply carries the current record, so a retry needs
no second read; the lock can be taken and the session read in one round trip, and a save can
release the lock in the same step.

The operations themselves, their retry rules and the value layout are written once, in
:mod:`adapters.redis_ops`, and shared with :class:`~adapters.redis_async.AsyncRedisStore`; this
store runs them on a blocking client (:meth:`RedisStore._run`) and adds the operator's methods
(scans, session views, the quarantine listing, server figures) that the ``fsm`` toolkit uses.

Connection loss and timeouts are retried a few times, then raised as
:class:`~fsm.errors.StoreUnavailable` naming the operation. A retried write is applied once: the
compare-and-set refuses a second copy, and a save whose first attempt landed (its reply was
lost) is recognised by its exact bytes.

>>> store = RedisStore.from_url("redis://127.0.0.1:6379/0", namespace="mybot")  # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, Unpack, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from adapters.redis_keys import DEFAULT_NAMESPACE
from adapters.redis_lua import Lua
from adapters.redis_ops import (
    ERRORS,
    Operation,
    Pause,
    Quarantined,
    RedisLimits,
    RedisOperations,
    Script,
    describe,
    immediate,
    quarantine_decoder,
    split_value,
)
from adapters.redis_url import ClientClasses, connect
from fsm.errors import StoreUnavailable
from fsm.records import (
    Due,
    DueStats,
    HistoryEntry,
    Loaded,
    LockInfo,
    QuarantineEntry,
    Record,
    SaveResult,
    SessionView,
)
from fsm.store import Store

__all__ = ["RedisStore", "split_value"]

T = TypeVar("T")
Client = redis.Redis | RedisCluster

BLOCKING = ClientClasses(redis.Redis, RedisCluster, ClusterNode, Sentinel, Retry)


class RedisStore(Store):
    """The :class:`~fsm.store.Store` contract on Redis. Build it with :meth:`from_url` or
    from a ready redis-py client (``redis.Redis``, a Sentinel ``master_for`` client or
    ``redis.cluster.RedisCluster``); clients must not decode responses.

    Limits are per user: ``history_limit`` entries kept ``history_ttl`` seconds after the last
    append, ``dedupe_limit`` message ids each remembered ``dedupe_ttl`` seconds, and
    ``quarantine_limit`` quarantined records (oldest dropped first); ``retries`` further
    attempts follow a connection loss or timeout.
    """

    takes_lease_on_save = True
    keeps_timers = True

    def __init__(
        self, client: Client, *, namespace: str = DEFAULT_NAMESPACE, **limits: Unpack[RedisLimits]
    ) -> None:
        self._ops = RedisOperations(namespace, **limits)
        self.client = client
        self.layout = self._ops.layout
        self._scripts = {name: Lua(lua) for name, lua in self._ops.scripts.items()}

    @classmethod
    def from_url(
        cls, url: str, *, namespace: str = DEFAULT_NAMESPACE, **options: Unpack[RedisLimits]
    ) -> RedisStore:
        """A store from a URL (``options`` go to :class:`RedisStore`):

        - ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock``
        - ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): Cluster,
          discovered from any of the nodes
        - ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the primary
          the Sentinels name for ``service``, followed across failovers
        """
        client: Client = connect(url, BLOCKING)
        return cls(client, namespace=namespace, **options)

    def __repr__(self) -> str:
        return (
            f"RedisStore(namespace={self.layout.namespace!r}, client={type(self.client).__name__})"
        )

    # -- the driver --------------------------------------------------------------------------
    def _run(self, operation: Operation[T]) -> T:
        """Run ``operation``'s calls on the client, sending back each reply; a Redis error is
        thrown into the operation instead, which retries or wraps it."""
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
                    if isinstance(request, Script):
                        reply = self._scripts[request.name].run(
                            self.client, request.keys, request.args
                        )
                    elif isinstance(request, Pause):
                        time.sleep(request.seconds)
                    else:
                        reply = self.client.execute_command(*request.args)  # type: ignore[no-untyped-call]
                except ERRORS as exc:
                    error = exc
        finally:
            reply = error = None  # no cycle through this frame from a raised error's traceback
            operation.close()

    def _call(self, operation: str, user_key: str | None, fn: Callable[[bool], T]) -> T:
        """Run ``fn(retried)``, which uses the client itself, under the shared retry rules."""
        return self._run(self._ops.retrying(operation, user_key, immediate(fn)))

    # -- sessions --------------------------------------------------------------------------
    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        return self._run(self._ops.load(user_key, message_id=message_id))

    def save(
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
        return self._run(
            self._ops.save(
                user_key, payload, version=version, expected_version=expected_version,
                ttl=ttl, history=history, message_id=message_id, owner=owner,
                release=release, expected_tag=expected_tag, lease=lease,
            )
        )  # fmt: skip

    def delete(self, user_key: str) -> bool:
        return self._run(self._ops.delete(user_key))

    def ttl(self, user_key: str) -> float | None:
        return self._run(self._ops.ttl(user_key))

    def scan(self, *, batch: int = 500) -> Iterator[str]:
        if batch <= 0:
            raise ValueError(f"batch must be > 0, got {batch}")
        pattern = self.layout.session_pattern
        seen: set[bytes] = set()
        try:
            # SCAN, never KEYS; on Cluster, redis-py walks every primary. Not retried: a
            # cursor broken midway would silently skip keys.
            for key in self.client.scan_iter(match=pattern, count=batch):
                if key in seen:  # SCAN may return a key twice while the keyspace rehashes
                    continue
                seen.add(key)
                yield self.layout.user_of(key)
        except ERRORS as exc:
            raise StoreUnavailable("scan", detail=describe(exc)) from exc

    # -- history ---------------------------------------------------------------------------
    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return self._run(self._ops.history(user_key, limit=limit))

    def import_history(self, user_key: str, entries: Sequence[HistoryEntry]) -> int:
        return self._run(self._ops.import_history(user_key, entries))

    # -- lease lock ------------------------------------------------------------------------
    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self._run(self._ops.acquire_lock(user_key, owner, ttl))

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        return self._run(self._ops.lock_and_load(user_key, owner, ttl, message_id=message_id))

    def release_lock(self, user_key: str, owner: str) -> bool:
        return self._run(self._ops.release_lock(user_key, owner))

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return self._run(self._ops.extend_lock(user_key, owner, ttl))

    def lock_info(self, user_key: str) -> LockInfo | None:
        return self._run(self._ops.lock_info(user_key))

    # -- quarantine ------------------------------------------------------------------------
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return self._run(self._ops.quarantine(user_key, raw, reason))

    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        entries: list[Quarantined] = []
        pattern = self.layout.quarantine_pattern

        def collect(_: bool) -> None:
            entries.clear()
            keys: Iterable[Any] = (
                [self.layout.keys(user_key)[4]]
                if user_key is not None
                else self.client.scan_iter(match=pattern, count=500)
            )
            for key in keys:
                items: list[bytes] = self.client.lrange(key, 0, -1)  # type: ignore[assignment]
                entries.extend(quarantine_decoder.decode(item) for item in items)

        self._call("quarantined", user_key, collect)
        entries.sort(key=lambda e: (e.at, e.id))
        for e in entries:
            yield QuarantineEntry(e.id, e.user_key, e.raw, e.reason, e.at)

    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        qkey = self.layout.keys(user_key)[4]

        def remove(_: bool) -> QuarantineEntry | None:
            items: list[bytes] = self.client.lrange(qkey, 0, -1)  # type: ignore[assignment]
            for item in items:
                e = quarantine_decoder.decode(item)
                if e.id == entry_id:
                    # LREM of the exact bytes: atomic, and a second remover finds nothing.
                    if not self.client.lrem(qkey, 1, item):  # type: ignore[arg-type]
                        return None
                    return QuarantineEntry(e.id, e.user_key, e.raw, e.reason, e.at)
            return None

        return self._call("remove_quarantined", user_key, remove)

    # -- the index of deadlines ------------------------------------------------------------
    def index_due(self, user_key: str, armed: str, due: float) -> None:
        self._run(self._ops.index_due(user_key, armed, due))

    def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        return self._run(self._ops.claim_due(now, limit=limit, hold=hold))

    def settle_due(self, entries: Sequence[Due]) -> None:
        self._run(self._ops.settle_due(entries))

    def due_stats(self, now: float) -> DueStats:
        return self._run(self._ops.due_stats(now))

    def indexed_due(self, *, user_key: str | None = None, batch: int = 500) -> Iterator[Due]:
        """The index, soonest first, read a page of ``batch`` entries of a shard at a time
        (never the whole index in one command): like SCAN, an entry indexed, claimed or moved
        while the listing runs may be missed or listed twice."""
        if batch <= 0:
            raise ValueError(f"batch must be > 0, got {batch}")
        if user_key is not None:
            shards = [self.layout.index_shard(user_key)]
        else:
            sizes = self._run(self._ops.index_sizes())
            shards = [n for n, size in enumerate(sizes) if size]
        streams = [self._shard_listing(n, batch) for n in shards]
        prefix = None if user_key is None else self.layout.index_member(user_key, "").encode()
        entry = self.layout.index_entry
        for due, member in heapq.merge(*streams):
            if prefix is None or member.startswith(prefix):
                yield Due(*entry(member), due)

    def _shard_listing(self, shard: int, batch: int) -> Iterator[tuple[float, bytes]]:
        """One shard's entries as (due, member), in Redis's order, a page at a time; each page
        starts at the last one's due, past the entries of that due already listed."""
        low, skip = float("-inf"), 0
        while True:
            page = self._run(self._ops.index_page(shard, low, skip, batch))
            for member, due in page:
                yield due, member
            if len(page) < batch:
                return
            last = page[-1][1]
            ties = sum(1 for _, due in page if due == last)
            skip = skip + ties if last == low else ties
            low = last

    # -- operations ------------------------------------------------------------------------
    def session_view(self, user_key: str) -> SessionView | None:
        views = self._call("session_view", user_key, lambda _: self._views([user_key]))
        return views[0] if views else None

    def _views(self, user_keys: list[str]) -> list[SessionView]:
        """Session, TTL and lock of each user in one pipelined round trip (per Cluster node:
        redis-py splits a non-transactional pipeline by slot)."""
        if not isinstance(self.client, RedisCluster):
            return self._views_standalone(user_keys)
        pipe = self.client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for user_key in user_keys:
            session, _, _, lock, _ = self.layout.keys(user_key)
            pipe.get(session)
            pipe.pttl(session)
            pipe.get(lock)
            pipe.pttl(lock)
        # One key of the wrong type must not hide every other session: errors come back per
        # command, and connection errors are raised all the same.
        replies = pipe.execute(raise_on_error=False)
        views = []
        for i, user_key in enumerate(user_keys):
            value, ttl_ms, holder, lock_ms = replies[4 * i : 4 * i + 4]
            if isinstance(value, redis.ResponseError) and str(value).startswith("WRONGTYPE"):
                views.append(_not_a_session(user_key, ttl_ms, "WRONGTYPE"))
                continue
            # Anything else (CLUSTERDOWN, TRYAGAIN, a lost node) is the store's trouble, not
            # the session's: raised, so the caller sees StoreUnavailable.
            failed = next(
                (r for r in (value, ttl_ms, holder, lock_ms) if isinstance(r, Exception)), None
            )
            if failed is not None:
                raise failed
            if value is None:
                continue  # expired or deleted since the scan saw it
            lease = (
                None if holder is None or lock_ms < 0 else LockInfo(holder.decode(), lock_ms / 1000)
            )
            ttl = None if ttl_ms < 0 else ttl_ms / 1000
            views.append(SessionView(user_key, split_value(value), ttl, lease))
        return views

    def _views_standalone(self, user_keys: list[str]) -> list[SessionView]:
        """:meth:`_views` with two MGETs and a PTTL per session (N + 2 commands, not 4N); the
        lock's TTL is read only for the few users whose lock is held."""
        keys = [self.layout.keys(user_key) for user_key in user_keys]
        # MULTI/EXEC (same round trip): the value and the TTL are read at one instant, so a key
        # replaced between two reads is never mistaken for one of another type.
        pipe = self.client.pipeline(transaction=True)
        pipe.mget([k[0] for k in keys])
        pipe.mget([k[3] for k in keys])
        for k in keys:
            pipe.pttl(k[0])
        values, holders, *ttls = pipe.execute()
        held = [i for i, holder in enumerate(holders) if holder is not None]
        lock_ttls: dict[int, int] = {}
        if held:
            pipe = self.client.pipeline(transaction=False)
            for i in held:
                pipe.pttl(keys[i][3])
            lock_ttls = dict(zip(held, pipe.execute(), strict=True))
        views = []
        for i, user_key in enumerate(user_keys):
            value, ttl_ms = values[i], ttls[i]
            if value is None:
                if ttl_ms >= -1:  # the key exists, but MGET saw no string: another type
                    views.append(_not_a_session(user_key, ttl_ms, "WRONGTYPE"))
                continue  # expired or deleted since the scan saw it
            lock_ms = lock_ttls.get(i, -2)
            holder = holders[i]
            lease = (
                None if holder is None or lock_ms < 0 else LockInfo(holder.decode(), lock_ms / 1000)
            )
            views.append(
                SessionView(
                    user_key, split_value(value), None if ttl_ms < 0 else ttl_ms / 1000, lease
                )
            )
        return views

    def sessions(self, *, batch: int = 500) -> Iterator[SessionView]:
        def views(keys: list[str]) -> list[SessionView]:
            return self._call("sessions", None, lambda _: self._views(keys))

        pending: list[str] = []
        for user_key in self.scan(batch=batch):
            pending.append(user_key)
            if len(pending) >= batch:
                yield from views(pending)
                pending = []
        if pending:
            yield from views(pending)

    def server_stats(self) -> dict[str, int | float]:
        def read(_: bool) -> dict[str, int | float]:
            if isinstance(self.client, RedisCluster):
                per_node: dict[str, Any] = self.client.info(target_nodes=RedisCluster.PRIMARIES)
                # One primary: redis-py returns its INFO itself, not a dict per node.
                infos = [per_node] if "redis_version" in per_node else list(per_node.values())
            else:
                infos = [self.client.info()]
            totals: dict[str, int | float] = {}
            names = ("expired_keys", "evicted_keys", "used_memory", "maxmemory", "keyspace_hits")
            for name in names:
                values = [info[name] for info in infos if isinstance(info.get(name), int | float)]
                if values:
                    totals[name] = sum(values)
            return totals

        return self._call("server_stats", None, read)

    def script_cache(self) -> tuple[int, int] | None:
        scripts = list(self._scripts.values())

        def check(_: bool) -> tuple[int, int]:
            # On Cluster a script counts as cached only if every primary has it.
            cached: list[bool] = self.client.script_exists(*(s.sha for s in scripts))
            for script, present in zip(scripts, cached, strict=True):
                if not present:
                    self.client.script_load(script.script)
            return sum(cached), len(scripts)

        return self._call("script_cache", None, check)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.client.close()


def _not_a_session(user_key: str, ttl_ms: object, error: str) -> SessionView:
    ttl = ttl_ms / 1000 if isinstance(ttl_ms, int) and ttl_ms >= 0 else None
    return SessionView(
        user_key,
        Record(b"", 0),
        ttl,
        None,
        error=f"{error}: the key holds another Redis type, not a session value",
    )
