"""AsyncPostgresStore: the :class:`~fsm.store.AsyncStore` contract on PostgreSQL, awaited
(psycopg 3's ``AsyncConnection`` in a ``psycopg_pool.AsyncConnectionPool``).

It runs the very calls :class:`~adapters.postgres.PostgresStore` runs (the operations of
:class:`~adapters.postgres.PostgresOperations`: the same SQL, functions, tags, retry rules and
lock recovery), awaiting each instead of blocking on it; this module is only the driver. A sync
and an async worker therefore serve the same users of one database side by side, and the
operator's toolkit (synchronous) reads what an async worker wrote with a PostgresStore on the
same schema.

Cancellation (a client gone, ``asyncio.timeout``) is safe: every operation is one statement in
its own transaction, so the stored state is the old one or the new one; psycopg cancels the
statement on the server and the pool drops the connection if it was left in a bad state.

>>> store = AsyncPostgresStore.from_url("postgresql://bot@db/bot?schema=fsm")  # doctest: +SKIP
>>> await store.load("alice")                                                  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar, Unpack, cast

import psycopg
import psycopg_pool

from adapters.postgres import (
    Call,
    PostgresLimits,
    PostgresOperations,
    Rows,
    StoreOptions,
    parse_url,
    pool_arguments,
    split_options,
)
from adapters.postgres_schema import DEFAULT_SCHEMA, LATEST, Step
from fsm.clock import Clock
from fsm.errors import StoreUnavailable
from fsm.records import Due, DueStats, HistoryEntry, Loaded, LockInfo, SaveResult
from fsm.store import AsyncStore

__all__ = ["AsyncPostgresStore"]

T = TypeVar("T")


class AsyncPostgresStore(AsyncStore):
    """:class:`~adapters.postgres.PostgresStore` on asyncio. Build it with :meth:`from_url`,
    or from a ``psycopg_pool.AsyncConnectionPool`` (opened on the first call if it is not
    open yet). The options are PostgresStore's."""

    takes_lease_on_save = True
    keeps_timers = True

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        clock: Clock | None = None,
        where: str = "",
        **limits: Unpack[PostgresLimits],
    ) -> None:
        self._ops = PostgresOperations(schema, clock=clock, **limits)
        self.pool = pool
        self.schema = schema
        self._where = where or pool.name
        self._password: str | None = None
        self._ready = False
        self._starting: asyncio.Lock | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        schema: str | None = None,
        clock: Clock | None = None,
        **options: Unpack[StoreOptions],
    ) -> AsyncPostgresStore:
        """A store from a URL: exactly the URLs and options :meth:`PostgresStore.from_url`
        takes. Nothing is sent yet: the pool opens on the first call."""
        target = parse_url(url, schema)
        pooling, limits = split_options(options)
        pool = psycopg_pool.AsyncConnectionPool(open=False, **pool_arguments(target, pooling))
        store = cls(pool, schema=target.schema, clock=clock, where=target.where, **limits)
        store._password = target.password
        return store

    def __repr__(self) -> str:
        return f"AsyncPostgresStore(schema={self.schema!r}, server={self._where!r})"

    # -- the driver ------------------------------------------------------------------------------
    async def _run(self, call: Call[T]) -> T:
        await self._ensure_ready()
        return await self._attempts(call)

    async def _attempts(self, call: Call[T]) -> T:
        for attempt in itertools.count():
            try:
                return await self._execute(call, call.params_for(attempt))
            except psycopg.Error as exc:
                try:
                    pause = self._ops.pause_after(
                        call.operation, call.user_key, attempt, exc, self._password
                    )
                except StoreUnavailable:
                    if call.undo is not None:
                        await self._quietly(call.undo)
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _execute(self, call: Call[T], params: dict[str, Any]) -> T:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(call.sql, params)
                rows = await cursor.fetchall() if cursor.rownumber is not None else []
        except psycopg.Error:
            if conn is not None and conn.broken:
                await self._check_pool()
            raise
        return call.parse(rows)

    async def _check_pool(self) -> None:
        with contextlib.suppress(psycopg.Error):
            await self.pool.check()

    async def _quietly(self, call: Call[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            await self._execute(call, call.params)

    async def open(self) -> None:
        """Open the pool and make or migrate the schema now (else the first call does)."""
        await self._ensure_ready()

    async def _ensure_ready(self) -> None:
        """Open the pool and make or migrate the schema, once (the first call)."""
        if self._ready:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._ready:
                return
            if self.pool.closed:
                await self.pool.open()
            exists = await self._attempts(self._ops.schema_exists())
            if not exists or await self._attempts(self._ops.schema_version()) < LATEST:
                await self._migrate()
            self._ready = True

    async def _migrate(self) -> None:
        await self.transaction("schema", self._ops.migration)

    async def transaction(self, operation: str, steps: Callable[[], Generator[Step, Rows, T]]) -> T:
        """Run the statements ``steps()`` yields in one transaction, each sent the rows of the
        one before, and return what it returns. A transient failure runs new steps again, up
        to the store's retries; then :class:`~fsm.errors.StoreUnavailable` naming
        ``operation`` (the URL's password never in it). For the store's own schema, and for
        a component that keeps tables beside it (the messaging limit's count)."""
        for attempt in itertools.count():
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    running, rows = steps(), None
                    try:
                        step = next(running)
                        while True:
                            cursor = await conn.execute(*step)
                            rows = await cursor.fetchall() if cursor.rownumber is not None else []
                            step = running.send(rows)
                    except StopIteration as done:
                        return cast(T, done.value)
            except psycopg.Error as exc:
                pause = self._ops.pause_after(operation, None, attempt, exc, self._password)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- sessions --------------------------------------------------------------------------------
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
        result = await self._run(
            self._ops.save(
                user_key, payload, version=version, expected_version=expected_version,
                ttl=ttl, history=history, message_id=message_id, owner=owner,
                release=release, expected_tag=expected_tag, lease=lease,
            )
        )  # fmt: skip
        if self._ops.sweep_due():
            await self._quietly(self._ops.sweep())
        return result

    async def delete(self, user_key: str) -> bool:
        return await self._run(self._ops.delete(user_key))

    async def ttl(self, user_key: str) -> float | None:
        return await self._run(self._ops.ttl(user_key))

    async def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return await self._run(self._ops.history(user_key, limit=limit))

    # -- the lease -------------------------------------------------------------------------------
    async def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return await self._run(self._ops.acquire_lock(user_key, owner, ttl))

    async def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        call = self._ops.lock_and_load(user_key, owner, ttl, message_id=message_id)
        return await self._run(call)

    async def release_lock(self, user_key: str, owner: str) -> bool:
        return await self._run(self._ops.release_lock(user_key, owner))

    async def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        return await self._run(self._ops.extend_lock(user_key, owner, ttl))

    async def lock_info(self, user_key: str) -> LockInfo | None:
        return await self._run(self._ops.lock_info(user_key))

    async def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return await self._run(self._ops.quarantine(user_key, raw, reason))

    async def sweep(self) -> int:
        """One bounded sweep of expired rows now; returns how many rows it removed."""
        return await self._run(self._ops.sweep())

    # -- the index of deadlines ------------------------------------------------------------------
    async def index_due(self, user_key: str, armed: str, due: float) -> None:
        await self._run(self._ops.index_due(user_key, armed, due))

    async def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        return await self._run(self._ops.claim_due(now, limit=limit, hold=hold))

    async def settle_due(self, entries: Sequence[Due]) -> None:
        for call in self._ops.settle_due(entries):
            await self._run(call)

    async def due_stats(self, now: float) -> DueStats:
        return await self._run(self._ops.due_stats(now))

    # -- lifecycle -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self.pool.close()
