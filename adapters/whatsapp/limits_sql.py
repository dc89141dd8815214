"""The messaging limit's count in a SQL store's database, shared by every process on it: a
:class:`~adapters.whatsapp.limits.Tracker` for the SQLite and PostgreSQL stores, as
:class:`~adapters.whatsapp.limits_redis.RedisMessagingLimit` is for Redis.

Two tables beside the store's: ``limit_counted`` (a user and when a business-initiated message
last went to them) and ``limit_waiting`` (a user whose replies wait for a slot, and since
when). The store's schema makes them (SQLite schema 2, PostgreSQL migration 3: ``fsm db
migrate`` or the store's first use), so the workers' role needs no right to create tables.
Each decision is one transaction that holds a lock for its length, so two processes never
both take the last slot: the file's write lock on SQLite (``BEGIN IMMEDIATE``), a
transaction-scoped advisory lock on PostgreSQL. Decisions are rare (a template to a user
outside their window), so they are not on any message's path.

An operation is a generator of statements (``%(name)s`` parameters), sent the rows of each;
a backend runs it in one transaction: :class:`SQLiteLimitBackend` on a thread,
:class:`PostgresLimitBackend` on the store's own async pool. If the database cannot be
reached, nobody new is admitted (the replies stay pending) and the limit is never passed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from adapters.sqlite_schema import immediate
from adapters.whatsapp.limits import DAY, Admission, checked_limit, checked_period
from fsm.errors import StoreUnavailable

if TYPE_CHECKING:
    from adapters.postgres_async import AsyncPostgresStore

__all__ = ["PostgresLimitBackend", "SQLMessagingLimit", "SQLiteLimitBackend"]

log = logging.getLogger(__name__)

Rows = list[tuple[Any, ...]]
Step = tuple[str, dict[str, Any]]
Steps = Generator[Step, Rows, Any]


class Backend(Protocol):
    """Runs an operation's statements in one transaction under the count's lock."""

    prefix: str  # what names the tables ("" on SQLite, '"schema".' on PostgreSQL)

    async def run(self, steps: Callable[[], Steps]) -> Any:
        """The value ``steps()`` returns; :class:`~fsm.errors.StoreUnavailable` if the
        database failed (nothing was changed)."""


class SQLMessagingLimit:
    """A :class:`~adapters.whatsapp.limits.Tracker` in a SQL database (``backend``)."""

    def __init__(self, backend: Backend, limit: int | None = None, *, period: float = DAY) -> None:
        self.limit = checked_limit(limit)
        self.period = checked_period(period)
        self._backend = backend
        p = backend.prefix
        self._counted, self._waiting = f"{p}limit_counted", f"{p}limit_waiting"

    def __repr__(self) -> str:
        return f"SQLMessagingLimit(limit={self.limit}, table={self._counted!r})"

    def _expire(self, now: float) -> Step:
        return f"DELETE FROM {self._counted} WHERE at <= %(h)s", {"h": now - self.period}

    def _tally(self, user: str = "") -> Step:
        sql = (
            f"SELECT (SELECT count(*) FROM {self._counted}), "
            f"(SELECT count(*) FROM {self._waiting}), "
            f"EXISTS (SELECT 1 FROM {self._waiting} WHERE user_key = %(u)s)"
        )
        return sql, {"u": user}

    # -- the operations, as steps ------------------------------------------------------------
    def _admit(self, user: str, now: float) -> Steps:
        yield self._expire(now)
        rows = yield f"SELECT at FROM {self._counted} WHERE user_key = %(u)s", {"u": user}
        new = not rows
        if new and self.limit is not None:
            counted, waiting, is_waiting = (yield self._tally(user))[0]
            if counted + (0 if is_waiting else waiting) >= self.limit:
                return None
        yield (
            f"INSERT INTO {self._counted} (user_key, at) VALUES (%(u)s, %(now)s) "
            "ON CONFLICT (user_key) DO UPDATE SET at = excluded.at",
            {"u": user, "now": now},
        )
        yield f"DELETE FROM {self._waiting} WHERE user_key = %(u)s", {"u": user}
        return Admission(user, now, new)

    def _ready(self, now: float) -> Steps:
        yield self._expire(now)
        counted, waiting, _ = (yield self._tally())[0]
        free = waiting if self.limit is None else self.limit - counted
        if free <= 0:
            return []
        sql = f"SELECT user_key FROM {self._waiting} ORDER BY since, user_key LIMIT %(n)s"
        return [row[0] for row in (yield sql, {"n": free})]

    def _counts(self, now: float) -> Steps:
        yield self._expire(now)
        counted, waiting, _ = (yield self._tally())[0]
        return int(counted), int(waiting)

    def _one(self, sql: str, **params: Any) -> Callable[[], Steps]:
        def steps() -> Steps:
            return (yield sql, params)

        return steps

    # -- the Tracker -------------------------------------------------------------------------
    async def admit(self, user: str, now: float) -> Admission | None:
        try:
            admission: Admission | None = await self._backend.run(lambda: self._admit(user, now))
        except StoreUnavailable as exc:
            log.warning("the messaging limit's count is unreachable (%s): nobody new is sent", exc)
            return None
        return admission

    async def give_back(self, admission: Admission) -> None:
        if not admission.new:
            return  # counted before: stays counted, from the later time
        sql = f"DELETE FROM {self._counted} WHERE user_key = %(u)s AND at = %(at)s"
        try:
            await self._backend.run(self._one(sql, u=admission.user, at=admission.at))
        except StoreUnavailable as exc:  # the user stays counted: undershot, never passed
            log.warning("a messaging-limit slot was not given back (%s)", exc)

    async def hold(self, user: str, now: float) -> bool:
        sql = (
            f"INSERT INTO {self._waiting} (user_key, since) VALUES (%(u)s, %(now)s) "
            "ON CONFLICT (user_key) DO NOTHING RETURNING 1"
        )
        try:
            return bool(await self._backend.run(self._one(sql, u=user, now=now)))
        except StoreUnavailable as exc:  # not noted as waiting: the ticker's retries send it
            log.warning("a held reply was not noted in the messaging limit (%s)", exc)
            return False

    async def unhold(self, user: str) -> None:
        sql = f"DELETE FROM {self._waiting} WHERE user_key = %(u)s"
        try:
            await self._backend.run(self._one(sql, u=user))
        except StoreUnavailable as exc:  # left waiting: send_held finds nothing and lets go
            log.warning("a held user was not let go in the messaging limit (%s)", exc)

    async def held(self, user: str) -> bool:
        sql = f"SELECT 1 FROM {self._waiting} WHERE user_key = %(u)s"
        try:
            return bool(await self._backend.run(self._one(sql, u=user)))
        except StoreUnavailable:
            return False  # the ticker's own retries go on

    async def ready(self, now: float) -> list[str]:
        try:
            users: list[str] = await self._backend.run(lambda: self._ready(now))
        except StoreUnavailable as exc:
            log.warning("the messaging limit's count is unreachable (%s): held replies wait", exc)
            return []
        return users

    async def counts(self, now: float) -> tuple[int, int]:
        result: tuple[int, int] = await self._backend.run(lambda: self._counts(now))
        return result


def _drive(steps: Steps, execute: Callable[[Step], Rows]) -> Any:
    """Run ``steps`` to its end, each statement through ``execute``; its return value."""
    try:
        step = next(steps)
        while True:
            step = steps.send(execute(step))
    except StopIteration as done:
        return done.value


_NAMED = re.compile(r"%\((\w+)\)s")


class SQLiteLimitBackend:
    """The count in the SQLite file at ``path`` (the store's), on a connection of its own,
    used by one thread at a time (``asyncio.to_thread``)."""

    prefix = ""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = path
        self._timeout = timeout
        self._mutex = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
        return self._conn

    def _run(self, steps: Callable[[], Steps]) -> Any:
        with self._mutex:
            try:
                conn = self._connection()
                with immediate(conn):
                    result = _drive(
                        steps(), lambda s: conn.execute(_NAMED.sub(r":\1", s[0]), s[1]).fetchall()
                    )
            except sqlite3.Error as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise StoreUnavailable("messaging limit", detail=str(exc)) from exc
            return result

    async def run(self, steps: Callable[[], Steps]) -> Any:
        return await asyncio.to_thread(self._run, steps)


class PostgresLimitBackend:
    """The count in the PostgreSQL schema of ``store`` (an
    :class:`~adapters.postgres_async.AsyncPostgresStore`), on the store's pool."""

    def __init__(self, store: AsyncPostgresStore) -> None:
        self.store = store
        self.prefix = f'"{store.schema}".'
        self._lock = f"convo-fsm messaging limit {store.schema}"

    async def run(self, steps: Callable[[], Steps]) -> Any:
        await self.store.open()
        return await self.store.transaction("messaging limit", lambda: self._locked(steps()))

    def _locked(self, steps: Steps) -> Generator[tuple[bytes, dict[str, Any]], Rows, Any]:
        """``steps`` under the count's lock, their SQL as psycopg takes it."""
        yield b"SELECT pg_advisory_xact_lock(hashtextextended(%(lock)s, 0))", {"lock": self._lock}
        try:
            sql, params = next(steps)
            while True:
                sql, params = steps.send((yield sql.encode(), params))
        except StopIteration as done:
            return done.value
