"""PostgresStore: the :class:`~fsm.store.Store` contract on PostgreSQL (psycopg 3, with a
``psycopg_pool.ConnectionPool``); :class:`~adapters.postgres_async.AsyncPostgresStore` is the
same on asyncio (``AsyncConnectionPool``).

Theory of operation. The schema and every statement are written once, in
:mod:`adapters.postgres_schema`; the operations are written once too, here
(:class:`PostgresOperations`): each builds a :class:`Call` (one statement, its parameters, how
to read its rows, what a retry sends instead) and does no I/O. A store is a driver that runs
calls on its pool, blocking or awaited, so the sync and the async store send the same SQL and
a sync and an async worker serve the same users side by side.

- **One round trip per operation.** A save is one call of the ``save`` function: one
  transaction that locks the user's row (or makes it with ``INSERT ... ON CONFLICT DO
  NOTHING``), checks in the contract's order (a seen message id: DUPLICATE; another worker's
  lease: LOCKED; the version and tag: CONFLICT) and writes the session, its history entry, its
  message id and the lease change together; a refusal carries the current record. Functions,
  not one statement of CTEs, because a statement's parts all read the snapshot from before any
  lock wait (see :mod:`adapters.postgres_schema`).
- **One clock.** Every expiry (session TTL, lease, history, seen ids) is decided against the
  store's ``clock``, sent as a parameter; the server's ``now()`` decides nothing. Tests run the
  whole contract on a ``FakeClock``.
- **Expiry.** Reads filter on ``expires_at > now``, so an expired row is invisible at once;
  it is removed by a bounded sweep (``sweep_batch`` rows a table, ``SKIP LOCKED``) that a save
  runs at most every ``sweep_interval`` seconds (:meth:`PostgresStore.sweep` runs one now).
- **Due timers by polling.** ``claim_due`` takes the soonest due entries with ``FOR UPDATE
  SKIP LOCKED``: claimers never wait for each other nor take the same entry. Not LISTEN/NOTIFY:
  the ticker polls anyway (a deadline is a time, not an event: nothing happens when it comes),
  notifications are lost while a listener is disconnected, and a listening connection cannot
  be a pooled one (nor pass through a transaction-mode PgBouncer).
- **Errors.** Any psycopg error becomes :class:`~fsm.errors.StoreUnavailable` naming the
  operation. Transient ones (``OperationalError``: a lost connection, ``pg_terminate_backend``,
  a server restarting, a statement timeout, a serialization failure, no pooled connection in
  time) are retried ``retries`` times with backoff first, and the pool's idle connections are
  checked after a broken one. A retry never applies a write twice: a save marks itself retried
  and the function recognises its own tag (stored, or on its history entry), a lock attempt
  finds the lease already its own, a quarantine finds its own entry; a lock attempt that failed
  with its outcome unknown frees the lease if it is ours.

- **The schema** is made and migrated by the library on its first call (tables, indexes, the
  functions, and ``fsm_schema``, the record of applied migrations), in the schema named by
  ``schema=`` or ``?schema=`` (default ``fsm``); see :mod:`adapters.postgres_schema`.

Use :meth:`PostgresStore.from_url` (or :meth:`AsyncPostgresStore.from_url
<adapters.postgres_async.AsyncPostgresStore.from_url>`) with a ``postgresql://`` or
``postgres://`` URL; ``close()`` (``aclose()``) closes the pool. Reprs and errors name the host,
port and database, never the password.

>>> store = PostgresStore.from_url("postgresql://bot@db.internal/bot?schema=fsm")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, Unpack, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from adapters.postgres_schema import (
    DEFAULT_SCHEMA,
    LATEST,
    Statements,
    Step,
    check_schema_name,
    migrate,
)
from fsm.clock import SYSTEM_CLOCK, Clock
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
    SaveStatus,
    SessionView,
    decode_history,
    encode_history,
)
from fsm.store import Store, check_save_arguments

__all__ = [
    "Call",
    "PoolOptions",
    "PostgresLimits",
    "PostgresOperations",
    "PostgresStore",
    "StoreOptions",
    "Target",
    "next_step",
    "parse_url",
]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]

_STATUS = {
    "duplicate": SaveStatus.DUPLICATE,
    "locked": SaveStatus.LOCKED,
    "conflict": SaveStatus.CONFLICT,
}
#: Expired claims returned to the index per claim (the rest come back on the next claims).
RETURNS_PER_CLAIM = 1000
#: Entries settled per call (each call's arrays are bounded).
SETTLE_BATCH = 1000


# -- URLs --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: the libpq connection string (it may hold a password, so it is never
    shown), the schema, ``where`` (host:port/database) for reprs and messages, and the password
    to scrub from driver messages."""

    conninfo: str = field(repr=False)
    schema: str
    where: str
    password: str | None = field(default=None, repr=False)


class PoolOptions(TypedDict, total=False):
    """How :meth:`PostgresStore.from_url` builds its pool: ``pool_min``/``pool_max``
    connections, ``pool_timeout`` seconds to wait for one, ``connect_timeout`` seconds to
    connect, ``statement_timeout`` seconds for any statement (None: the server's setting; set
    None behind a PgBouncer, which refuses the ``options`` startup parameter)."""

    pool_min: int
    pool_max: int
    pool_timeout: float
    connect_timeout: float
    statement_timeout: float | None


def parse_url(url: str, schema: str | None = None) -> Target:
    """A ``postgresql://`` or ``postgres://`` URL (libpq's: ``user:password@host:port/db`` and
    any libpq parameter in the query, ``sslmode=require`` say), plus ``?schema=name``, this
    library's own option. ``schema`` given here must agree with the URL's. Errors name the
    host and database, never the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            f"unsupported PostgreSQL URL scheme {parts.scheme!r}: use postgresql:// or postgres://"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    named = {value for key, value in query if key == "schema"}
    if len(named) > 1 or (schema is not None and named and named != {schema}):
        raise ValueError("the schema is named twice, differently (in the URL and as schema=)")
    chosen = check_schema_name(schema if schema is not None else next(iter(named), DEFAULT_SCHEMA))
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    # Rebuilt by hand: urlunsplit drops the "//" of a URL without a host (a Unix socket's,
    # postgresql:///db?host=/run/postgresql), which libpq needs.
    conninfo = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        secret = unquote(parts.password) if parts.password else None
        raise ValueError(f"invalid PostgreSQL URL: {describe(exc, secret)}") from None
    where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    where += f"/{params.get('dbname') or params.get('user') or ''}"
    password = params.get("password")
    return Target(conninfo, chosen, where, None if password is None else str(password))


def connection_string(target: Target, options: PoolOptions) -> str:
    """The target's conninfo with this library's defaults where the URL set none: a connect
    timeout, an application name, and the statement timeout (as a startup option)."""
    given = conninfo_to_dict(target.conninfo)
    extra: dict[str, Any] = {}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = max(2, round(options.get("connect_timeout", 5.0)))
    if "application_name" not in given:
        extra["application_name"] = "convo-fsm"
    timeout = options.get("statement_timeout", 5.0)
    if timeout is not None:
        if not timeout > 0:
            raise ValueError(f"statement_timeout must be > 0 or None, got {timeout!r}")
        ms = max(1, int(timeout * 1000))
        extra["options"] = f"{given.get('options') or ''} -c statement_timeout={ms}".strip()
    return make_conninfo(target.conninfo, **extra)


def pool_arguments(target: Target, options: PoolOptions) -> dict[str, Any]:
    """The keyword arguments of a (sync or async) pool for ``target``: autocommit connections,
    so a call is one statement and one round trip."""
    low, high = options.get("pool_min", 1), options.get("pool_max", 10)
    if not 0 <= low <= high or high < 1:
        raise ValueError(f"need 0 <= pool_min <= pool_max and pool_max >= 1, got {low}, {high}")
    timeout = options.get("pool_timeout", 5.0)
    if not timeout > 0:
        raise ValueError(f"pool_timeout must be > 0, got {timeout!r}")
    return {
        "conninfo": connection_string(target, options),
        "kwargs": {"autocommit": True},
        "min_size": low,
        "max_size": high,
        "timeout": timeout,
        "name": f"convo-fsm:{target.schema}",
    }


def describe(exc: BaseException, password: str | None = None) -> str:
    """One line naming the error (a driver's first line: no DETAIL, no CONTEXT), the password
    cut out if the message somehow holds it, and long messages cut."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return text if len(text) <= 300 else text[:297] + "..."


# -- calls ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One statement of an operation: its SQL and parameters, how to read its rows, whether a
    retry says so (``retried``: its parameter ``retried`` is then true), and ``undo``, a call
    to make (best effort) when it fails for good with its outcome unknown."""

    operation: str
    user_key: str | None
    sql: bytes = field(repr=False)
    params: dict[str, Any] = field(repr=False)
    parse: Callable[[Rows], T] = field(repr=False)
    retried: bool = False
    undo: Call[Any] | None = field(default=None, repr=False)

    def params_for(self, attempt: int) -> dict[str, Any]:
        return self.params if attempt == 0 or not self.retried else {**self.params, "retried": True}


class PostgresLimits(TypedDict, total=False):
    """The options both PostgreSQL stores take besides the schema and the clock (see
    :class:`PostgresOperations`)."""

    history_limit: int
    history_ttl: float
    dedupe_limit: int
    dedupe_ttl: float
    quarantine_limit: int
    retries: int
    sweep_interval: float
    sweep_batch: int


def _positive(name: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive, got {value!r}")


def _key(user_key: str) -> bytes:
    return user_key.encode()


def _message(message_id: str | None) -> bytes | None:
    """A message id as stored: 16 bytes of its BLAKE2b digest (a WhatsApp id runs 60 to 80
    characters; two of one user's last 1,000 ids collide with a chance of about 2^-109)."""
    if message_id is None:
        return None
    return hashlib.blake2b(message_id.encode(), digest_size=16).digest()


def _record(version: int | None, tag: str | None, payload: bytes | None) -> Record | None:
    if payload is None or version is None:
        return None
    return Record(bytes(payload), int(version), tag or "")


def _time(name: str, value: float) -> float:
    number = float(value)
    if number != number:
        raise ValueError(f"{name} must be a number, got NaN")
    return number


class PostgresOperations:
    """The store operations of one schema, as :class:`Call` objects.

    Limits are per user, as RedisStore's: ``history_limit`` entries kept ``history_ttl``
    seconds after the last append, ``dedupe_limit`` message ids each remembered ``dedupe_ttl``
    seconds, ``quarantine_limit`` quarantined records (oldest dropped first). ``retries``:
    further attempts after a transient error. ``sweep_interval``: seconds (of ``clock``)
    between two sweeps of expired rows, each of at most ``sweep_batch`` rows a table.
    """

    def __init__(
        self,
        schema: str = DEFAULT_SCHEMA,
        *,
        clock: Clock | None = None,
        history_limit: int = 50,
        history_ttl: float = 7 * 24 * 3600,
        dedupe_limit: int = 1000,
        dedupe_ttl: float = 7 * 24 * 3600,
        quarantine_limit: int = 100,
        retries: int = 2,
        sweep_interval: float = 60.0,
        sweep_batch: int = 500,
    ) -> None:
        for name, value in [
            ("history_limit", history_limit), ("history_ttl", history_ttl),
            ("dedupe_limit", dedupe_limit), ("dedupe_ttl", dedupe_ttl),
            ("quarantine_limit", quarantine_limit), ("sweep_interval", sweep_interval),
            ("sweep_batch", sweep_batch),
        ]:  # fmt: skip
            _positive(name, value)
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.sql = Statements(schema)
        self.schema = schema
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self.history_limit, self.history_ttl = int(history_limit), float(history_ttl)
        self.dedupe_limit, self.dedupe_ttl = int(dedupe_limit), float(dedupe_ttl)
        self.quarantine_limit = int(quarantine_limit)
        self.retries = retries
        self.sweep_interval, self.sweep_batch = float(sweep_interval), int(sweep_batch)
        self._next_sweep = self.clock.now() + self.sweep_interval
        self._ids = itertools.count(1)

    # -- retries -------------------------------------------------------------------------------
    def pause_after(
        self, operation: str, user_key: str | None, attempt: int, exc: psycopg.Error,
        password: str | None = None,
    ) -> float:  # fmt: skip
        """After attempt number ``attempt`` (from 0) failed with ``exc``: the pause before the
        next one, or StoreUnavailable if the error is not transient or retries are used up."""
        transient = isinstance(exc, psycopg.OperationalError) and not isinstance(
            exc, psycopg_pool.PoolClosed
        )
        if transient and attempt < self.retries:
            return 0.05 * 2.0**attempt
        detail = describe(exc, password)
        raise StoreUnavailable(operation, user_key=user_key, detail=detail) from exc

    # -- the schema ------------------------------------------------------------------------------
    def schema_exists(self) -> Call[bool]:
        params = {"table": self.sql.schema_table}
        return Call("schema", None, self.sql.schema_exists, params, lambda rows: bool(rows[0][0]))

    def schema_version(self) -> Call[int]:
        return Call("schema", None, self.sql.schema_version, {}, lambda rows: int(rows[0][0]))

    def migration(self) -> Generator[Step, Rows, None]:
        """The steps of a migration to :data:`~adapters.postgres_schema.LATEST` (one
        transaction; see :func:`~adapters.postgres_schema.migrate`)."""
        return migrate(self.schema)

    # -- sessions --------------------------------------------------------------------------------
    def load(self, user_key: str, *, message_id: str | None = None) -> Call[Loaded]:
        params = {"k": _key(user_key), "mid": _message(message_id), "now": self.clock.now()}
        return Call("load", user_key, self.sql.load, params, _loaded)

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
    ) -> Call[SaveResult]:
        check_save_arguments(ttl, version, expected_version, owner, release, lease)
        now, tag = self.clock.now(), secrets.token_hex(8)
        params: dict[str, Any] = {
            "k": _key(user_key), "payload": bytes(payload), "version": version,
            "expected": expected_version, "tag": tag, "expires": now + ttl, "now": now,
            "hist": None if history is None else encode_history(history),
            "mid": _message(message_id), "owner": owner, "expected_tag": expected_tag or "",
            "lease_until": None if lease is None else now + lease, "release": bool(release),
            "retried": False, "history_limit": self.history_limit,
            "history_until": now + self.history_ttl, "dedupe_limit": self.dedupe_limit,
            "seen_until": now + self.dedupe_ttl,
        }  # fmt: skip

        def parse(rows: Rows) -> SaveResult:
            status, *current = rows[0]
            if status in ("saved", "unleased"):
                return SaveResult(SaveStatus.SAVED, tag=tag, unleased=status == "unleased")
            return SaveResult(_STATUS[status], _record(*current))

        return Call("save", user_key, self.sql.save, params, parse, retried=True)

    def delete(self, user_key: str) -> Call[bool]:
        params = {"k": _key(user_key), "now": self.clock.now()}
        return Call("delete", user_key, self.sql.delete, params, bool)

    def ttl(self, user_key: str) -> Call[float | None]:
        now = self.clock.now()

        def parse(rows: Rows) -> float | None:
            return float(rows[0][0]) - now if rows else None

        return Call("ttl", user_key, self.sql.ttl, {"k": _key(user_key), "now": now}, parse)

    def history(self, user_key: str, *, limit: int | None = None) -> Call[list[HistoryEntry]]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        params = {"k": _key(user_key), "now": self.clock.now(), "limit": limit}
        return Call("history", user_key, self.sql.history, params, _entries)

    # -- the lease -----------------------------------------------------------------------------
    def import_history(
        self, user_key: str, entries: Sequence[HistoryEntry]
    ) -> Callable[[], Generator[Step, Rows, None]]:
        """What makes the steps (one transaction) that append ``entries`` (oldest first; past
        the limit, only the newest) as saves would have. Every attempt's steps carry the same
        tags, and stop at once when the newest entry is stored already (a lost commit reply)."""
        k = _key(user_key)
        kept = list(entries)[-self.history_limit :]
        tags = [secrets.token_hex(8) for _ in kept]
        encoded = [encode_history(entry) for entry in kept]

        def steps() -> Generator[Step, Rows, None]:
            now = self.clock.now()
            until = now + self.history_ttl
            if not kept or (yield self.sql.history_has_tag, {"k": k, "tag": tags[-1]}):
                return
            seq, expires = (yield self.sql.history_head, {"k": k, "until": until})[0]
            if expires <= now:  # none, or expired and not swept yet
                yield self.sql.history_clear, {"k": k}
                seq = 0
            yield self.sql.history_insert, {"k": k, "base": seq, "tags": tags, "entries": encoded}
            last = seq + len(kept)
            yield self.sql.history_set_head, {"k": k, "last": last, "until": until}
            yield self.sql.history_trim, {"k": k, "last": last, "limit": self.history_limit}

        return steps

    def _lease(self, user_key: str, owner: str, ttl: float) -> dict[str, Any]:
        _positive("ttl", ttl)
        now = self.clock.now()
        return {"k": _key(user_key), "owner": owner, "until": now + ttl, "now": now}

    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> Call[bool]:
        params = {**self._lease(user_key, owner, ttl), "retried": False}
        return Call(
            "acquire_lock", user_key, self.sql.acquire_lock, params, bool,
            retried=True, undo=self.release_lock(user_key, owner),
        )  # fmt: skip

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Call[Loaded | None]:
        params = {**self._lease(user_key, owner, ttl), "mid": _message(message_id)}
        params["retried"] = False
        return Call(
            "lock_and_load", user_key, self.sql.lock_and_load, params, _locked_load,
            retried=True, undo=self.release_lock(user_key, owner),
        )  # fmt: skip

    def release_lock(self, user_key: str, owner: str) -> Call[bool]:
        params = {"k": _key(user_key), "owner": owner, "now": self.clock.now()}
        return Call("release_lock", user_key, self.sql.release_lock, params, bool)

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> Call[bool]:
        params = self._lease(user_key, owner, ttl)
        return Call("extend_lock", user_key, self.sql.extend_lock, params, bool)

    def lock_info(self, user_key: str) -> Call[LockInfo | None]:
        now = self.clock.now()

        def parse(rows: Rows) -> LockInfo | None:
            return LockInfo(rows[0][0], float(rows[0][1]) - now) if rows else None

        params = {"k": _key(user_key), "now": now}
        return Call("lock_info", user_key, self.sql.lock_info, params, parse)

    # -- quarantine ----------------------------------------------------------------------------
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> Call[str | None]:
        now = self.clock.now()
        entry_id = f"{int(now * 1000):013d}-{next(self._ids):06d}-{secrets.token_hex(3)}"
        params = {
            "k": _key(user_key), "raw": bytes(raw), "id": entry_id,
            "reason": reason.replace("\x00", "\ufffd"), "now": now, "keep": self.quarantine_limit,
        }  # fmt: skip

        def parse(rows: Rows) -> str | None:
            return entry_id if rows[0][0] else None

        return Call("quarantine", user_key, self.sql.quarantine, params, parse)

    def quarantined(self, user_key: str | None = None) -> Call[list[QuarantineEntry]]:
        if user_key is None:
            return Call("quarantined", None, self.sql.quarantined_all, {}, _quarantined)
        params = {"k": _key(user_key)}
        return Call("quarantined", user_key, self.sql.quarantined_of, params, _quarantined)

    def remove_quarantined(self, user_key: str, entry_id: str) -> Call[QuarantineEntry | None]:
        def parse(rows: Rows) -> QuarantineEntry | None:
            return _quarantined(rows)[0] if rows else None

        params = {"k": _key(user_key), "id": entry_id}
        return Call("remove_quarantined", user_key, self.sql.remove_quarantined, params, parse)

    # -- the operator's reads ------------------------------------------------------------------
    def scan_page(self, after: bytes | None, batch: int) -> Call[list[bytes]]:
        """Up to ``batch`` user keys with a live session, after ``after`` (keyset paging: a
        key present throughout a scan is listed once, whatever is written meanwhile)."""
        params = {"from": b"" if after is None else after + b"\x00", "batch": batch}
        params["now"] = self.clock.now()
        return Call("scan", None, self.sql.scan, params, lambda rows: [bytes(r[0]) for r in rows])

    def views_page(self, after: bytes | None, batch: int) -> Call[list[SessionView]]:
        now = self.clock.now()
        params = {"from": b"" if after is None else after + b"\x00", "batch": batch, "now": now}
        return Call("sessions", None, self.sql.views, params, lambda rows: _views(rows, now))

    def session_view(self, user_key: str) -> Call[SessionView | None]:
        now = self.clock.now()

        def parse(rows: Rows) -> SessionView | None:
            views = _views(rows, now)
            return views[0] if views else None

        params = {"k": _key(user_key), "now": now}
        return Call("session_view", user_key, self.sql.view, params, parse)

    def server_stats(self) -> Call[dict[str, int | float]]:
        def parse(rows: Rows) -> dict[str, int | float]:
            return {"expired_keys": int(rows[0][0])}

        return Call("server_stats", None, self.sql.stats, {"now": self.clock.now()}, parse)

    # -- the sweep -------------------------------------------------------------------------------
    def sweep(self) -> Call[int]:
        now = self.clock.now()
        params = {"now": now, "batch": self.sweep_batch}

        def parse(rows: Rows) -> int:
            removed = int(rows[0][0])
            # A full batch: more is due, so the next save sweeps again.
            self._next_sweep = now if removed >= self.sweep_batch else now + self.sweep_interval
            return removed

        return Call("sweep", None, self.sql.sweep, params, parse)

    def sweep_due(self) -> bool:
        """Whether a save should sweep now (at most once per ``sweep_interval``)."""
        now = self.clock.now()
        if now < self._next_sweep:
            return False
        self._next_sweep = now + self.sweep_interval
        return True

    # -- the index of deadlines ------------------------------------------------------------------
    def index_due(self, user_key: str, armed: str, due: float) -> Call[None]:
        params = {"k": _key(user_key), "armed": armed, "due": _time("due", due)}
        return Call("index_due", user_key, self.sql.index_due, params, lambda _: None)

    def claim_due(self, now: float, *, limit: int, hold: float) -> Call[list[Due]]:
        _positive("limit", limit)
        _positive("hold", hold)
        at = _time("now", now)
        params = {"now": at, "limit": max(1, int(limit)), "until": at + float(hold)}
        params["returns"] = RETURNS_PER_CLAIM
        # A retry is a claim of its own: what a lost reply claimed comes back due when its
        # hold runs out (fired late, never lost; firing checks the stored snapshot).
        return Call("claim_due", None, self.sql.claim_due, params, _dues)

    def settle_due(self, entries: Sequence[Due]) -> list[Call[None]]:
        calls = []
        for start in range(0, len(entries), SETTLE_BATCH):
            batch = entries[start : start + SETTLE_BATCH]
            params = {"keys": [_key(e.user_key) for e in batch], "armeds": [e.armed for e in batch]}
            calls.append(Call("settle_due", None, self.sql.settle_due, params, lambda _: None))
        return calls

    def due_stats(self, now: float) -> Call[DueStats]:
        def parse(rows: Rows) -> DueStats:
            indexed, due, claimed, oldest = rows[0]
            return DueStats(int(indexed), int(due), int(claimed), oldest)

        return Call("due_stats", None, self.sql.due_stats, {"now": _time("now", now)}, parse)

    def indexed_page(self, after: Due | None, batch: int) -> Call[list[Due]]:
        if after is None:
            return Call("indexed_due", None, self.sql.indexed_first, {"batch": batch}, _dues)
        params = {"due": after.due, "k": _key(after.user_key), "armed": after.armed}
        params["batch"] = batch
        return Call("indexed_due", None, self.sql.indexed_page, params, _dues)

    def indexed_of(self, user_key: str) -> Call[list[Due]]:
        return Call("indexed_due", user_key, self.sql.indexed_of, {"k": _key(user_key)}, _dues)


# -- rows --------------------------------------------------------------------------------------
def _loaded(rows: Rows) -> Loaded:
    version, tag, payload, locked, seen = rows[0]
    return Loaded(_record(version, tag, payload), bool(seen), bool(locked))


def _locked_load(rows: Rows) -> Loaded | None:
    taken, version, tag, payload, seen = rows[0]
    return Loaded(_record(version, tag, payload), bool(seen), True) if taken else None


def _entries(rows: Rows) -> list[HistoryEntry]:
    return [decode_history(bytes(row[0])) for row in rows]


def _quarantined(rows: Rows) -> list[QuarantineEntry]:
    return [
        QuarantineEntry(entry_id, bytes(key).decode(), bytes(raw), reason, float(at))
        for entry_id, key, raw, reason, at in rows
    ]


def _views(rows: Rows, now: float) -> list[SessionView]:
    views = []
    for key, version, tag, payload, expires_at, owner, lease_expires in rows:
        record = Record(bytes(payload), int(version), tag)
        held = owner is not None and lease_expires > now
        lock = LockInfo(owner, lease_expires - now) if held else None
        views.append(SessionView(bytes(key).decode(), record, float(expires_at) - now, lock))
    return views


def _dues(rows: Rows) -> list[Due]:
    dues = [Due(bytes(key).decode(), armed, float(due)) for key, armed, due in rows]
    dues.sort(key=lambda d: (d.due, d.user_key.encode(), d.armed))
    return dues


class StoreOptions(PostgresLimits, PoolOptions, total=False):
    """Everything :meth:`PostgresStore.from_url` takes besides the schema and the clock."""


def split_options(options: StoreOptions) -> tuple[PoolOptions, PostgresLimits]:
    """``options`` as the pool's and the operations'."""
    pool_keys = PoolOptions.__optional_keys__
    pooling = {k: v for k, v in options.items() if k in pool_keys}
    limits = {k: v for k, v in options.items() if k not in pool_keys}
    return cast(PoolOptions, pooling), cast(PostgresLimits, limits)


# -- the blocking store --------------------------------------------------------------------------
class PostgresStore(Store):
    """The :class:`~fsm.store.Store` contract on PostgreSQL. Build it with :meth:`from_url`, or
    from an open ``psycopg_pool.ConnectionPool`` (autocommit connections save a round trip per
    call). ``clock`` decides every expiry (default: the system clock); ``schema`` is where the
    tables live; the limits are :class:`PostgresOperations`'."""

    takes_lease_on_save = True
    keeps_timers = True

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        clock: Clock | None = None,
        where: str = "",
        **limits: Unpack[PostgresLimits],
    ) -> None:
        self._ops = PostgresOperations(schema, clock=clock, **limits)
        self.pool = pool
        self.schema = schema
        self._where = where or getattr(pool, "name", "")
        self._password: str | None = None
        self._ready = False
        self._schema_mutex = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        schema: str | None = None,
        clock: Clock | None = None,
        **options: Unpack[StoreOptions],
    ) -> PostgresStore:
        """A store from a ``postgresql://`` or ``postgres://`` URL (``?schema=name`` picks
        the schema; any libpq parameter may follow), with its own pool (:class:`PoolOptions`);
        the other ``options`` are :class:`PostgresOperations`'. The pool starts connecting at
        once; the schema is made or migrated on the first call."""
        target = parse_url(url, schema)
        pooling, limits = split_options(options)
        pool = psycopg_pool.ConnectionPool(open=True, **pool_arguments(target, pooling))
        store = cls(pool, schema=target.schema, clock=clock, where=target.where, **limits)
        store._password = target.password
        return store

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r}, server={self._where!r})"

    # -- the driver ------------------------------------------------------------------------------
    def _run(self, call: Call[T]) -> T:
        self._ensure_schema()
        return self._attempts(call)

    def _attempts(self, call: Call[T]) -> T:
        for attempt in itertools.count():
            try:
                return self._execute(call, call.params_for(attempt))
            except psycopg.Error as exc:
                try:
                    pause = self._ops.pause_after(
                        call.operation, call.user_key, attempt, exc, self._password
                    )
                except StoreUnavailable:
                    if call.undo is not None:
                        self._quietly(call.undo)
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def _execute(self, call: Call[T], params: dict[str, Any]) -> T:
        conn: psycopg.Connection[Any] | None = None
        try:
            with self.pool.connection() as conn:
                cursor = conn.execute(call.sql, params)
                rows = cursor.fetchall() if cursor.rownumber is not None else []
        except psycopg.Error:
            if conn is not None and conn.broken:
                self._check_pool()  # the server restarted, say: replace the dead connections
            raise
        return call.parse(rows)

    def _check_pool(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.pool.check()

    def _quietly(self, call: Call[Any]) -> None:
        """One attempt at ``call``, its failure ignored (best effort)."""
        with contextlib.suppress(psycopg.Error):
            self._execute(call, call.params)

    def _ensure_schema(self) -> None:
        """Make or migrate the schema, once per store (the first call)."""
        if not self._ready:
            self.migrate_schema()

    def migrate_schema(self) -> tuple[int, int]:
        """Make or migrate the schema now (else the first call does): (the version found, 0
        for none; :data:`~adapters.postgres_schema.LATEST`). One migrator at a time runs."""
        with self._schema_mutex:
            exists = self._attempts(self._ops.schema_exists())
            found = self._attempts(self._ops.schema_version()) if exists else 0
            if found < LATEST:
                self._migrate()
            self._ready = True
            return found, LATEST

    def _migrate(self) -> None:
        self._transaction("schema", None, self._ops.migration)

    def _transaction(
        self,
        operation: str,
        user_key: str | None,
        steps: Callable[[], Generator[Step, Rows, None]],
    ) -> None:
        """Run the steps ``steps()`` makes in one transaction, each sent the rows of the one
        before; a transient failure runs them again from new steps."""
        for attempt in itertools.count():
            try:
                with self.pool.connection() as conn, conn.transaction():
                    running, rows = steps(), None
                    while (step := next_step(running, rows)) is not None:
                        cursor = conn.execute(*step)
                        rows = cursor.fetchall() if cursor.rownumber is not None else []
                return
            except psycopg.Error as exc:
                pause = self._ops.pause_after(operation, user_key, attempt, exc, self._password)
                time.sleep(pause)

    # -- sessions --------------------------------------------------------------------------------
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
        result = self._run(
            self._ops.save(
                user_key, payload, version=version, expected_version=expected_version,
                ttl=ttl, history=history, message_id=message_id, owner=owner,
                release=release, expected_tag=expected_tag, lease=lease,
            )
        )  # fmt: skip
        if self._ops.sweep_due():
            self._quietly(self._ops.sweep())
        return result

    def delete(self, user_key: str) -> bool:
        return self._run(self._ops.delete(user_key))

    def ttl(self, user_key: str) -> float | None:
        return self._run(self._ops.ttl(user_key))

    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        return self._run(self._ops.history(user_key, limit=limit))

    # -- the lease -------------------------------------------------------------------------------
    def import_history(self, user_key: str, entries: Sequence[HistoryEntry]) -> int:
        self._ensure_schema()
        self._transaction("import_history", user_key, self._ops.import_history(user_key, entries))
        return len(entries)

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

    # -- quarantine ------------------------------------------------------------------------------
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        return self._run(self._ops.quarantine(user_key, raw, reason))

    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        yield from self._run(self._ops.quarantined(user_key))

    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        return self._run(self._ops.remove_quarantined(user_key, entry_id))

    # -- the operator's reads --------------------------------------------------------------------
    def scan(self, *, batch: int = 500) -> Iterator[str]:
        _positive("batch", batch)
        after: bytes | None = None
        while True:
            keys = self._run(self._ops.scan_page(after, batch))
            yield from (key.decode() for key in keys)
            if len(keys) < batch:
                return
            after = keys[-1]

    def session_view(self, user_key: str) -> SessionView | None:
        return self._run(self._ops.session_view(user_key))

    def sessions(self, *, batch: int = 500) -> Iterator[SessionView]:
        _positive("batch", batch)
        after: bytes | None = None
        while True:
            views = self._run(self._ops.views_page(after, batch))
            yield from views
            if len(views) < batch:
                return
            after = views[-1].user_key.encode()

    def server_stats(self) -> dict[str, int | float]:
        return self._run(self._ops.server_stats())

    def sweep(self) -> int:
        """One bounded sweep of expired rows now; returns how many rows it removed."""
        return self._run(self._ops.sweep())

    # -- the index of deadlines ------------------------------------------------------------------
    def index_due(self, user_key: str, armed: str, due: float) -> None:
        self._run(self._ops.index_due(user_key, armed, due))

    def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        return self._run(self._ops.claim_due(now, limit=limit, hold=hold))

    def settle_due(self, entries: Sequence[Due]) -> None:
        for call in self._ops.settle_due(entries):
            self._run(call)

    def due_stats(self, now: float) -> DueStats:
        return self._run(self._ops.due_stats(now))

    def indexed_due(self, *, user_key: str | None = None, batch: int = 500) -> Iterator[Due]:
        """The index, soonest first, a page of ``batch`` entries at a time (keyset paging on
        due, user, armed: an entry indexed or claimed meanwhile may be missed, never listed
        twice)."""
        _positive("batch", batch)
        if user_key is not None:
            yield from self._run(self._ops.indexed_of(user_key))
            return
        after: Due | None = None
        while True:
            page = self._run(self._ops.indexed_page(after, batch))
            yield from page
            if len(page) < batch:
                return
            after = page[-1]

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self.pool.close()


def next_step(steps: Generator[Step, Rows, None], rows: Rows | None) -> Step | None:
    """The next step of a migration (:func:`~adapters.postgres_schema.migrate`), sent the rows
    of the one before (None: it is the first); None when there are no more."""
    try:
        return next(steps) if rows is None else steps.send(rows)
    except StopIteration:
        return None
