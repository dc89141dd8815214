"""The SQLite store's file: where it is (its URL), its tables and their migrations, and the
connections that open it.

The layout (schema version 2; ``PRAGMA user_version`` holds the version, ``PRAGMA
application_id`` marks the file as this store's):

- ``sessions(user_key PK, version, tag, payload BLOB, expires_at)``: one row per conversation,
  ``tag`` naming the write that stored it (:class:`~fsm.records.Record`'s tag).
- ``leases(user_key PK, owner, expires_at)``: the lease lock. Its own table, not columns of
  ``sessions``: a lease outlives the session (``delete`` keeps it) and comes before one (the
  engine locks a user who has no session yet).
- ``history_heads(user_key PK, expires_at, last_seq)`` and ``history(user_key, seq, entry)``:
  the bounded history, its one TTL per user kept on the head, so an append refreshes one row.
- ``seen(seq PK, user_key, message_id, expires_at)``: seen message ids; ``seq`` orders a
  user's ids for eviction (the oldest first past ``dedupe_limit``).
- ``quarantine(seq PK AUTOINCREMENT, id UNIQUE, user_key, raw BLOB, reason, at)``.
- ``timers(user_key, armed, due)`` and ``timer_claims(user_key, armed, due, held_until)``:
  the index of deadlines and the entries tickers hold.
- ``counters(name PK, value)``: store-wide figures (``expired_sessions``).

Every time column is epoch seconds of the store's clock, passed in as a parameter (never
SQLite's own ``now``), and each table that expires has an index on its deadline, for the sweep.

Migrations: :data:`MIGRATIONS`\\ ``[n]`` takes a file from version ``n`` to ``n + 1``; they run
in one ``BEGIN IMMEDIATE`` transaction with the new ``user_version`` (several processes opening
a new file at once: the first migrates, the others find it done). A file of a newer version is
refused rather than written by code that does not know its columns. A future change appends a
migration (``ALTER TABLE``, a new index), never edits one.

Connections: one per thread, opened on first use (:class:`Connections`): sqlite3 connections
must not be shared by threads that use them at once, and WAL lets each thread read while
another writes. Each connection is in autocommit mode; the store opens its own transactions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import parse_qsl, unquote, urlsplit

from fsm.store import lock_backoff

#: The layout this code reads and writes.
SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a file of this store: "FSM1".
APPLICATION_ID = 0x46534D31
#: The oldest SQLite with every feature used (UPSERT: 3.24; RETURNING: 3.35).
#: Python 3.11 ships with 3.39 or later on Windows and macOS; Debian 12 and Ubuntu 22.04 link
#: 3.40 and 3.37.
MIN_SQLITE = (3, 35, 0)
SYNCHRONOUS = ("full", "normal")


_V1 = (
    """CREATE TABLE sessions (
        user_key TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        tag TEXT NOT NULL,
        payload BLOB NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
    """CREATE TABLE leases (
        user_key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX leases_by_expiry ON leases (expires_at)",
    """CREATE TABLE history_heads (
        user_key TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        last_seq INTEGER NOT NULL
    )""",
    "CREATE INDEX history_heads_by_expiry ON history_heads (expires_at)",
    """CREATE TABLE history (
        user_key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry BLOB NOT NULL,
        PRIMARY KEY (user_key, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE seen (
        seq INTEGER PRIMARY KEY,
        user_key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (user_key, message_id)
    )""",
    "CREATE INDEX seen_by_age ON seen (user_key, seq)",
    "CREATE INDEX seen_by_expiry ON seen (expires_at)",
    """CREATE TABLE quarantine (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        user_key TEXT NOT NULL,
        raw BLOB NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX quarantine_by_user ON quarantine (user_key, seq)",
    """CREATE TABLE timers (
        user_key TEXT NOT NULL,
        armed TEXT NOT NULL,
        due REAL NOT NULL,
        PRIMARY KEY (user_key, armed)
    ) WITHOUT ROWID""",
    "CREATE INDEX timers_by_due ON timers (due, user_key, armed)",
    """CREATE TABLE timer_claims (
        user_key TEXT NOT NULL,
        armed TEXT NOT NULL,
        due REAL NOT NULL,
        held_until REAL NOT NULL,
        PRIMARY KEY (user_key, armed)
    ) WITHOUT ROWID""",
    "CREATE INDEX timer_claims_by_end ON timer_claims (held_until)",
    """CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    f"PRAGMA application_id = {APPLICATION_ID}",
)

#: Version 2: the WhatsApp transport's shared messaging-limit count
#: (:mod:`adapters.whatsapp.limits_sql`).
_V2 = (
    "CREATE TABLE limit_counted (user_key TEXT PRIMARY KEY, at REAL NOT NULL)",
    "CREATE INDEX limit_counted_by_at ON limit_counted (at)",
    "CREATE TABLE limit_waiting (user_key TEXT PRIMARY KEY, since REAL NOT NULL)",
    "CREATE INDEX limit_waiting_by_since ON limit_waiting (since, user_key)",
)

#: ``MIGRATIONS[n]``: the statements that take a file from version ``n`` to ``n + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2)


class SchemaError(sqlite3.DatabaseError):
    """The file is not one this code may use (another application's, or a newer layout); a
    ``sqlite3.DatabaseError``, so the store reports it as it reports SQLite's own."""


def check_sqlite_version(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    if version < MIN_SQLITE:
        found = ".".join(map(str, version))
        needed = ".".join(map(str, MIN_SQLITE))
        raise RuntimeError(f"SQLiteStore needs SQLite {needed} or later; Python links {found}")


def connect(path: str, *, timeout: float, synchronous: str) -> sqlite3.Connection:
    """A connection to ``path`` set up for the store: autocommit (the store opens its own
    transactions), a busy timeout, WAL, the given ``synchronous``, foreign keys off."""
    connection = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        mode = _to_wal(connection, timeout)
        if mode != "wal":
            raise SchemaError(f"the file cannot use write-ahead logging (journal mode {mode})")
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        connection.execute("PRAGMA foreign_keys = OFF")
    except BaseException:
        connection.close()
        raise
    return connection


def _to_wal(connection: sqlite3.Connection, timeout: float) -> str:
    """Turn the file to WAL (once: on a WAL file this changes nothing) and return the journal
    mode. Turning needs the file alone for a moment, and SQLite refuses at once rather than
    call the busy handler when another process holds it (several processes opening a new file
    together): so retry, with jittered backoff, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delays = lock_backoff(start=0.002, cap=0.05)
    while True:
        try:
            return str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            busy = (
                getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) & 0xFF == sqlite3.SQLITE_BUSY
            )
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(next(delays))


@contextmanager
def immediate(connection: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction (the file's write lock from its start): committed
    when the block ends, rolled back whole when it raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the file to :data:`SCHEMA_VERSION` (creating it on first use); returns the
    version found. Raises :class:`SchemaError` for a file this code may not use."""
    with immediate(connection):
        found = _check_file(connection)
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                connection.execute(statement)
        if found < SCHEMA_VERSION:
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found


def _check_file(connection: sqlite3.Connection) -> int:
    """The file's schema version, if this code may use it."""
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    application = int(connection.execute("PRAGMA application_id").fetchone()[0])
    if application not in (0, APPLICATION_ID):
        raise SchemaError(f"the file belongs to another application (id {application:#x})")
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the file's schema is version {version}, newer than this code knows "
            f"({SCHEMA_VERSION}): upgrade this worker"
        )
    if version == 0 and connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        raise SchemaError("the file holds another application's tables, not an fsm store")
    return version


#: Connections a forked child inherited, kept so that they are never closed in it.
_INHERITED: list[object] = []


class Connections:
    """One connection per thread to one file, opened on first use; :meth:`close` closes
    them all. A connection of a thread that ended is closed with it (a server that starts a
    thread per request leaks none). After ``fork`` the child opens its own: a connection
    must never cross a fork."""

    def __init__(self, path: str, *, timeout: float, synchronous: str) -> None:
        self.path = path
        self._timeout = timeout
        self._synchronous = synchronous
        self._mutex = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()
        self._closers: list[weakref.finalize] = []  # type: ignore[type-arg]
        self._closed = False

    def get(self) -> sqlite3.Connection:
        """This thread's connection (``sqlite3.ProgrammingError`` once closed)."""
        holder = getattr(self._local, "holder", None)
        if holder is not None and self._pid == os.getpid() and not self._closed:
            return holder.connection  # type: ignore[no-any-return]
        return self._open()

    def _open(self) -> sqlite3.Connection:
        with self._mutex:
            if self._closed:
                raise sqlite3.ProgrammingError("the store is closed")
            if self._pid != os.getpid():  # a forked child: the parent's connections stay its
                # Neither used nor closed here (closing runs SQLite's close-time work on the
                # parent's files): kept, unclosed, for the child's lifetime.
                _INHERITED.extend(closer.detach() for closer in self._closers)
                self._pid, self._local, self._closers = os.getpid(), threading.local(), []
            connection = connect(self.path, timeout=self._timeout, synchronous=self._synchronous)
            holder = _Holder(connection)
            self._closers = [c for c in self._closers if c.alive]
            self._closers.append(weakref.finalize(holder, connection.close))
            self._local.holder = holder
            return connection

    def close(self) -> None:
        """Close every connection; the store is unusable afterwards."""
        with self._mutex:
            self._closed = True
            closers, self._closers = self._closers, []
        if self._pid == os.getpid():
            for closer in closers:
                with suppress(sqlite3.Error):
                    closer()


class _Holder:
    """A thread's connection, in its thread-local slot: when the thread ends, the slot is
    cleared and the holder's finalizer closes the connection."""

    __slots__ = ("__weakref__", "connection")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection


#: What a ``sqlite:`` URL's query may set (see :func:`file_from_url`).
URL_OPTIONS = ("synchronous", "timeout")


def file_from_url(url: str) -> tuple[str, dict[str, str | float]]:
    """The file a ``sqlite:`` URL names, and the options its query sets. As SQLAlchemy reads
    them: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``; the query may set
    ``synchronous`` (``full`` or ``normal``) and ``timeout`` (seconds). ``ValueError`` for a
    host, no file, an in-memory database or another option; messages never repeat the query."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ValueError(f"not a sqlite URL (scheme {parts.scheme!r}): sqlite:///path/to/fsm.db")
    if parts.netloc:
        raise ValueError(
            "a sqlite URL names a local file, not a host: sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = unquote(parts.path)[1:]  # the slash after the empty host is not the path's
    if not path:
        raise ValueError("the sqlite URL names no file: sqlite:///path/to/fsm.db")
    refuse_private(path)
    options: dict[str, str | float] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in URL_OPTIONS:
            raise ValueError(f"unknown sqlite URL option {name!r}: only {', '.join(URL_OPTIONS)}")
        options[name] = value if name == "synchronous" else _seconds(name, value)
    return path, options


def refuse_private(path: str) -> None:
    """``ValueError`` for a database that lives in one connection (``:memory:``, ``""``, a
    ``mode=memory`` URI): the store opens a connection per thread and per process, which
    would each see an empty database of their own."""
    if path in ("", ":memory:") or (path.startswith("file:") and "mode=memory" in path):
        raise ValueError(
            "an in-memory SQLite database lives in one connection, and the store opens one per "
            "thread and per process: give it a file (or use MemoryStore in one process)"
        )


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"sqlite URL option {name} must be a number of seconds") from None
    if not seconds > 0:
        raise ValueError(f"sqlite URL option {name} must be positive")
    return seconds
