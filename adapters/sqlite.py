"""SQLiteStore: the whole Store contract in one SQLite file, durable, shared by the worker
processes of one host.

Theory of operation. Every write is one ``BEGIN IMMEDIATE`` transaction: it takes the file's
one write lock first (waiting up to ``timeout`` behind another process), reads the store's
clock, decides and writes, and commits, so no other writer interleaves and a save is atomic
with all it writes (session, history, seen message id, lease). The compare-and-set is one
statement all the same (``UPDATE ... WHERE user_key=? AND version=? AND tag=? AND expires_at >
now``, or for a new session ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the old row expired):
its row count is the verdict, so it stays right even if the transaction around it changed.
The results mirror RedisStore's: refusals in the order DUPLICATE, LOCKED, CONFLICT, with the
current record; the same tags, the same limits (1,000 message ids per user for 7 days, 50
history entries for 7 days after the last append). Reads are single statements (one snapshot
each) and never wait for a writer: the file is in WAL mode. Listings read in pages by key, each
page its own short read, so a long listing holds no transaction open.

Time is the store's ``clock``, read once per call and passed into SQL as a parameter (never
SQLite's own ``now``): an expiry decision and a test's :class:`~fsm.clock.FakeClock` agree, and
a write's time is read once its write lock is held, so times follow the commit order. Every
read filters on ``expires_at > now``, so what expired is invisible at once. Expired rows are
deleted by a *sweep* of bounded work: every ``sweep_every``-th write transaction of a store
also deletes up to ``sweep_limit`` expired rows of each kind (sessions, leases, seen ids,
histories), in the same transaction; :meth:`SQLiteStore.sweep` runs one on demand. A write
creates at most one row of each kind, so the sweep outpaces expiry by ``sweep_limit /
sweep_every`` (16 by default) and the file does not grow with users who never come back.

Design choices and their risks:

- **One connection per thread** (:class:`~adapters.sqlite_schema.Connections`), and within a
  process one writer at a time (a mutex, so threads queue in order instead of polling
  SQLite's busy handler); across processes SQLite's file locks, with ``busy_timeout``. Safe
  for several processes on one host; not across hosts, nor on a network file system (WAL
  needs shared memory between the processes).
- **``synchronous=FULL`` by default**: a commit is on disk before the save is acknowledged,
  power cut included (one fsync per write). ``synchronous="normal"`` (several times the write
  rate) is as safe against a crashed process, but a power cut or OS crash may roll back the
  last commits: acknowledged saves lost, as after a Redis failover. The engine then sees a
  version go back, or the same version with another tag (tags are kept for that), and
  continues from what is stored.
- **A full disk or a failed write** raises :class:`~fsm.errors.StoreUnavailable` naming the
  operation; the transaction is rolled back whole, so nothing half-written stays and what
  was acknowledged before is kept. Nothing is retried: unlike a network call, a failed
  SQLite transaction has no unknown outcome. So ``SaveResult.unleased`` is never set.
- **Errors never show a payload**: SQLite's messages do not include bound values, and the
  store's repr shows its path and settings only.

The operator's methods (scan, sessions, TTL, delete, lock info, the quarantine, the index of
deadlines' listing) are this class's too; :class:`~adapters.sqlite_async.AsyncSQLiteStore` runs
these methods on a thread pool for asyncio.

>>> import pathlib, tempfile
>>> folder = tempfile.TemporaryDirectory()
>>> store = SQLiteStore(pathlib.Path(folder.name) / "fsm.db")
>>> store.save("alice", b"snapshot", version=1, expected_version=0, ttl=60).status
<SaveStatus.SAVED: 'saved'>
>>> SQLiteStore(pathlib.Path(folder.name) / "fsm.db").load("alice").record  # another store
Record(version=1, payload=<8 bytes>)
>>> store.close(); folder.cleanup()
"""

from __future__ import annotations

import os
import random
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, TypedDict, Unpack

from adapters.sqlite_schema import (
    SCHEMA_VERSION,
    SYNCHRONOUS,
    Connections,
    check_sqlite_version,
    file_from_url,
    immediate,
    migrate,
    refuse_private,
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

__all__ = ["SQLiteOptions", "SQLiteStore", "Swept"]

_WEEK = 7 * 24 * 3600.0


class SQLiteOptions(TypedDict, total=False):
    """The options :class:`SQLiteStore` takes besides the path (see its docstring)."""

    clock: Clock
    history_limit: int
    history_ttl: float
    dedupe_limit: int
    dedupe_ttl: float
    quarantine_limit: int
    timeout: float
    synchronous: str
    sweep_every: int
    sweep_limit: int


class Swept(NamedTuple):
    """Expired rows a sweep deleted, by kind (``sum(swept)`` for the total)."""

    sessions: int
    leases: int
    seen: int
    histories: int


# The session, whether the message id was seen and who holds the lease, in one snapshot.
# The session row comes whether it expired or not (a save counts an expired one it replaces).
_STATE = """
SELECT s.version, s.tag, s.payload, s.expires_at,
    EXISTS (SELECT 1 FROM seen WHERE user_key = :key AND message_id = :message_id
            AND expires_at > :now),
    (SELECT owner FROM leases WHERE user_key = :key AND expires_at > :now)
FROM (SELECT 1) LEFT JOIN sessions AS s ON s.user_key = :key
"""
_CREATE = """
INSERT INTO sessions (user_key, version, tag, payload, expires_at)
VALUES (:key, :version, :tag, :payload, :expires_at)
ON CONFLICT (user_key) DO UPDATE SET version = excluded.version, tag = excluded.tag,
    payload = excluded.payload, expires_at = excluded.expires_at
WHERE sessions.expires_at <= :now
"""
_UPDATE = """
UPDATE sessions SET version = :version, tag = :tag, payload = :payload, expires_at = :expires_at
WHERE user_key = :key AND version = :expected AND expires_at > :now
    AND (:expected_tag = '' OR tag = :expected_tag)
"""
# The common case in one statement: the compare-and-set with every check of the contract in
# its WHERE (the message id not seen, no lease but the caller's). No row: the slow path reads
# the state to say why.
_FAST_UPDATE = """
UPDATE sessions SET version = :version, tag = :tag, payload = :payload, expires_at = :expires_at
WHERE user_key = :key AND version = :expected AND expires_at > :now
    AND (:expected_tag = '' OR tag = :expected_tag)
    AND NOT EXISTS (SELECT 1 FROM seen WHERE user_key = :key AND message_id = :message_id
                    AND expires_at > :now)
    AND NOT EXISTS (SELECT 1 FROM leases WHERE user_key = :key AND expires_at > :now
                    AND owner IS NOT :owner)
"""
_TAKE_LEASE = """
INSERT INTO leases (user_key, owner, expires_at) VALUES (:key, :owner, :expires_at)
ON CONFLICT (user_key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE leases.expires_at <= :now
"""
_SET_LEASE = """
INSERT INTO leases (user_key, owner, expires_at) VALUES (?, ?, ?)
ON CONFLICT (user_key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
"""
# The user's next history sequence number, and when their history expires. The expiry is
# moved by a second statement, and only when it would move by more than a hundredth of the
# TTL: most appends leave the indexed column, and so its index, untouched.
_NEXT_SEQ = """
UPDATE history_heads SET last_seq = last_seq + 1 WHERE user_key = ?
RETURNING last_seq, expires_at
"""
#: Where write tags come from (distinct, not secret): a generator of this module's own, seeded
#: from the OS (and again in each forked child), which random.seed() cannot make repeat.
_tags = random.Random()
os.register_at_fork(after_in_child=_tags.seed)
#: Appends between two trims of a user's history past its limit (reads stop at the limit).
_TRIM_EVERY = 8
_NEW_HEAD = """
INSERT INTO history_heads (user_key, expires_at, last_seq) VALUES (?, ?, 1)
ON CONFLICT (user_key) DO UPDATE SET expires_at = excluded.expires_at, last_seq = 1
"""
_EVICT_SEEN = """
DELETE FROM seen WHERE user_key = :key AND seq <= (
    SELECT seq FROM seen WHERE user_key = :key ORDER BY seq DESC LIMIT 1 OFFSET :keep)
"""
_TRIM_QUARANTINE = """
DELETE FROM quarantine WHERE user_key = :key AND seq <= (
    SELECT seq FROM quarantine WHERE user_key = :key ORDER BY seq DESC LIMIT 1 OFFSET :keep)
"""
_COUNT = """
INSERT INTO counters (name, value) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
"""
_SCAN = """
SELECT s.user_key FROM sessions AS s WHERE s.expires_at > :now {after}
ORDER BY s.user_key LIMIT :batch
"""
_VIEWS = """
SELECT s.user_key, s.version, s.tag, s.payload, s.expires_at, l.owner, l.expires_at
FROM sessions AS s LEFT JOIN leases AS l ON l.user_key = s.user_key AND l.expires_at > :now
WHERE s.expires_at > :now {after}
ORDER BY s.user_key LIMIT :batch
"""
_HISTORY = """
SELECT h.entry FROM history_heads AS hh JOIN history AS h ON h.user_key = hh.user_key
WHERE hh.user_key = ? AND hh.expires_at > ? ORDER BY h.seq DESC LIMIT ?
"""
_QUARANTINED = """
SELECT seq, id, user_key, raw, reason, at FROM quarantine
WHERE seq > :after AND (:key IS NULL OR user_key = :key) ORDER BY seq LIMIT :batch
"""
# Claims whose hold ran out (their ticker died) go back to the index, due at their own due
# (or now, if the index had them due later meanwhile: as RedisStore and MemoryStore do).
_RETURN_CLAIMS = """
INSERT INTO timers (user_key, armed, due)
SELECT user_key, armed, min(due, :now) FROM timer_claims WHERE held_until <= :now
ON CONFLICT (user_key, armed) DO UPDATE SET due = excluded.due
"""
_DUE_STATS = """
SELECT (SELECT count(*) FROM timers), (SELECT count(*) FROM timers WHERE due <= ?),
    (SELECT count(*) FROM timer_claims), (SELECT min(due) FROM timers)
"""
_INDEX_PAGE = """
SELECT user_key, armed, due FROM timers {after} ORDER BY due, user_key, armed LIMIT ?
"""
_SWEEP = "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE expires_at <= ? " \
    "ORDER BY expires_at LIMIT ?)"  # fmt: skip


#: What an operator can do about the errors a working store meets, by SQLite's error name.
_HINTS = {
    "SQLITE_FULL": "the disk, or the file's size limit, is full",
    "SQLITE_IOERR_WRITE": "a write to the file failed: a full disk, or the file's size limit",
    "SQLITE_BUSY": "another process kept the file's write lock past the timeout",
    "SQLITE_READONLY": "the file or its folder is read-only",
    "SQLITE_CANTOPEN": "a missing folder, or no permission",
}


def _describe(exc: sqlite3.Error) -> str:
    """SQLite's message, error name and what it likely means (``database or disk is full
    (SQLITE_FULL: ...)``): never a bound value, so never a payload."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    name = getattr(exc, "sqlite_errorname", None)
    if name is None:
        return text
    hint = _HINTS.get(name)
    return f"{text} ({name}: {hint})" if hint else f"{text} ({name})"


def _positive(name: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive, got {value!r}")


def _time(name: str, value: float) -> float:
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must be a number, got NaN")
    return value


def _record(row: Sequence[Any], now: float) -> Record | None:
    """The live session of a ``_STATE`` row (version, tag, payload, expires_at first)."""
    if row[0] is None or row[3] <= now:
        return None
    return Record(bytes(row[2]), int(row[0]), str(row[1]))


class SQLiteStore(Store):
    """The :class:`~fsm.store.Store` contract in the SQLite file ``path`` (created, with its
    tables, on first use; see :mod:`adapters.sqlite_schema`). Build it from a path or with
    :meth:`from_url`; every process and thread of one host may open the same file.

    Limits are per user, as RedisStore's: ``history_limit`` entries kept ``history_ttl``
    seconds after the last append, ``dedupe_limit`` message ids each remembered
    ``dedupe_ttl`` seconds, ``quarantine_limit`` quarantined records (oldest dropped first).
    ``clock`` decides every expiry. ``timeout``: seconds a write waits for the file's write
    lock before :class:`~fsm.errors.StoreUnavailable`. ``synchronous``: ``"full"`` (durable
    across a power cut) or ``"normal"`` (faster; see the module docstring for the risk).
    ``sweep_every`` / ``sweep_limit``: every that many write transactions, delete up to that
    many expired rows of each kind.
    """

    takes_lease_on_save = True
    keeps_timers = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        history_limit: int = 50,
        history_ttl: float = _WEEK,
        dedupe_limit: int = 1000,
        dedupe_ttl: float = _WEEK,
        quarantine_limit: int = 100,
        timeout: float = 5.0,
        synchronous: str = "full",
        sweep_every: int = 16,
        sweep_limit: int = 256,
    ) -> None:
        check_sqlite_version()
        self.path = os.fspath(path)
        refuse_private(self.path)
        limits = [("history_limit", history_limit), ("history_ttl", history_ttl)]
        limits += [("dedupe_limit", dedupe_limit), ("dedupe_ttl", dedupe_ttl)]
        limits += [("quarantine_limit", quarantine_limit), ("timeout", timeout)]
        for name, value in [*limits, ("sweep_every", sweep_every), ("sweep_limit", sweep_limit)]:
            _positive(name, value)
        if synchronous.lower() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.synchronous = synchronous.lower()
        self._clock = clock
        self._history_limit, self._history_ttl = int(history_limit), float(history_ttl)
        self._dedupe_limit, self._dedupe_ttl = int(dedupe_limit), float(dedupe_ttl)
        self._quarantine_limit, self._timeout = int(quarantine_limit), float(timeout)
        self._sweep_every, self._sweep_limit = int(sweep_every), int(sweep_limit)
        self._writes = 0
        self._write_mutex, self._pid = threading.Lock(), os.getpid()
        self._connections = Connections(self.path, timeout=timeout, synchronous=self.synchronous)
        try:
            self._schema_found = migrate(self._connections.get())
        except sqlite3.Error as exc:  # SchemaError too: a file this code may not use
            self._connections.close()
            raise StoreUnavailable("open", detail=f"{self.path}: {_describe(exc)}") from exc

    @classmethod
    def from_url(cls, url: str, **options: Unpack[SQLiteOptions]) -> SQLiteStore:
        """A store on the file a URL names, as SQLAlchemy reads them:
        ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; the query may set
        ``synchronous`` and ``timeout`` (``?synchronous=normal&timeout=10``). An in-memory
        database (``sqlite:///:memory:``) is refused: it would live in one connection, and the
        store opens one per thread and per process."""
        path, settings = file_from_url(url)
        both = sorted(set(settings) & set(options))
        if both:
            raise TypeError(f"{', '.join(both)} given both in the URL and as an argument")
        return cls(path, **settings, **options)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r})"

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def _failing(self, operation: str, user_key: str | None = None) -> Iterator[None]:
        """SQLite's errors as :class:`~fsm.errors.StoreUnavailable` naming ``operation``."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(operation, user_key=user_key, detail=_describe(exc)) from exc

    def _read(self, operation: str, user_key: str | None = None) -> sqlite3.Connection:
        with self._failing(operation, user_key):
            return self._connections.get()

    @contextmanager
    def _writing(
        self, operation: str, user_key: str | None = None
    ) -> Iterator[tuple[sqlite3.Connection, float]]:
        """One write transaction: ``(connection, now)``, now read once the write lock is held.
        Commits when the block ends (with a sweep every ``sweep_every`` writes), rolls back
        whole when it raises."""
        if self._pid != os.getpid():  # a forked child: the parent's threads are not here
            self._write_mutex, self._pid = threading.Lock(), os.getpid()
        if not self._write_mutex.acquire(timeout=self._timeout):
            detail = f"another thread kept the write turn for {self._timeout:g}s"
            raise StoreUnavailable(operation, user_key=user_key, detail=detail)
        try:
            db = self._connections.get()
            with immediate(db):
                now = self._clock.now()
                yield db, now
                self._writes += 1
                if self._writes % self._sweep_every == 0:
                    self._sweep_rows(db, now, self._sweep_limit)
        except sqlite3.Error as exc:
            raise StoreUnavailable(operation, user_key=user_key, detail=_describe(exc)) from exc
        finally:
            self._write_mutex.release()

    # -- sessions --------------------------------------------------------------------------
    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        db = self._read("load", user_key)
        now = self._clock.now()
        with self._failing("load", user_key):
            row = db.execute(_STATE, _state_args(user_key, message_id, now)).fetchone()
        return Loaded(_record(row, now), bool(row[4]), row[5] is not None)

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
        check_save_arguments(ttl, version, expected_version, owner, release, lease)
        tag = f"{_tags.getrandbits(32):08x}"  # names this write, as RedisStore's tags do
        with self._writing("save", user_key) as (db, now):
            args = {"key": user_key, "version": version, "tag": tag, "payload": bytes(payload)}
            args |= {"expires_at": now + ttl, "now": now}
            if expected_version != 0:
                fast = args | {"expected": expected_version, "expected_tag": expected_tag}
                fast |= {"message_id": message_id, "owner": owner}
                if db.execute(_FAST_UPDATE, fast).rowcount == 1:
                    self._after_save(db, user_key, now, history, message_id)
                    self._after_lease(db, user_key, owner, release, lease, now)
                    return SaveResult(SaveStatus.SAVED, tag=tag)
            row = db.execute(_STATE, _state_args(user_key, message_id, now)).fetchone()
            current, holder = _record(row, now), row[5]
            # Duplicate first: a re-delivered message is acknowledged, never retried against
            # the version its first delivery moved; then the lease; then the version.
            if row[4]:
                return SaveResult(SaveStatus.DUPLICATE, current)
            if holder is not None and holder != owner:
                return SaveResult(SaveStatus.LOCKED, current)
            if expected_version == 0:
                landed = db.execute(_CREATE, args).rowcount == 1
            else:
                args |= {"expected": expected_version, "expected_tag": expected_tag}
                landed = db.execute(_UPDATE, args).rowcount == 1
            if not landed:
                return SaveResult(SaveStatus.CONFLICT, current)
            if current is None and row[0] is not None:  # replaced a session that expired
                db.execute(_COUNT, ("expired_sessions", 1))
            self._after_save(db, user_key, now, history, message_id)
            self._after_lease(db, user_key, owner, release, lease, now)
        return SaveResult(SaveStatus.SAVED, tag=tag)

    @staticmethod
    def _after_lease(
        db: sqlite3.Connection,
        user_key: str,
        owner: str | None,
        release: bool,
        lease: float | None,
        now: float,
    ) -> None:
        """Free ``owner``'s lease (``release``) or give it to them for ``lease`` seconds, in
        a save that landed (so no one else holds it)."""
        if release:
            db.execute("DELETE FROM leases WHERE user_key = ? AND owner = ?", (user_key, owner))
        elif lease is not None:
            db.execute(_SET_LEASE, (user_key, owner, now + lease))

    def _after_save(
        self,
        db: sqlite3.Connection,
        user_key: str,
        now: float,
        history: HistoryEntry | None,
        message_id: str | None,
    ) -> None:
        """Append ``history`` and record ``message_id`` (in the save's transaction)."""
        if history is not None:
            self._append_history(db, user_key, now, history)
        if message_id is not None:
            # REPLACE: an expired copy of the id (not swept yet) goes; the new row is the
            # user's newest (the highest seq), so eviction drops the oldest first.
            db.execute(
                "INSERT OR REPLACE INTO seen (user_key, message_id, expires_at) VALUES (?, ?, ?)",
                (user_key, message_id, now + self._dedupe_ttl),
            )
            db.execute(_EVICT_SEEN, {"key": user_key, "keep": self._dedupe_limit})

    def _append_history(
        self, db: sqlite3.Connection, user_key: str, now: float, entry: HistoryEntry
    ) -> None:
        """Append ``entry`` to the user's history (in a write); past the limit, every
        :data:`_TRIM_EVERY`th append trims it (reads stop at the limit)."""
        until = now + self._history_ttl
        head = db.execute(_NEXT_SEQ, (user_key,)).fetchone()
        if head is None or head[1] <= now:  # none, or expired and not swept yet
            db.execute(_NEW_HEAD, (user_key, until))
            db.execute("DELETE FROM history WHERE user_key = ?", (user_key,))
            seq = 1
        else:
            seq = int(head[0])
            if until - head[1] > self._history_ttl / 100:
                db.execute(
                    "UPDATE history_heads SET expires_at = ? WHERE user_key = ?", (until, user_key)
                )
        db.execute(
            "INSERT INTO history (user_key, seq, entry) VALUES (?, ?, ?)",
            (user_key, seq, encode_history(entry)),
        )
        if seq > self._history_limit and seq % _TRIM_EVERY == 0:  # reads stop at the limit
            db.execute(
                "DELETE FROM history WHERE user_key = ? AND seq <= ?",
                (user_key, seq - self._history_limit),
            )

    def import_history(self, user_key: str, entries: Sequence[HistoryEntry]) -> int:
        if entries:
            with self._writing("import_history", user_key) as (db, now):
                for entry in entries:
                    self._append_history(db, user_key, now, entry)
        return len(entries)

    def migrate_schema(self) -> tuple[int, int]:
        """The file is made or migrated when the store opens it: (the version it had then,
        the version now)."""
        return self._schema_found, SCHEMA_VERSION

    def delete(self, user_key: str) -> bool:
        with self._writing("delete", user_key) as (db, now):
            sql = "DELETE FROM sessions WHERE user_key = ? AND expires_at > ?"
            return db.execute(sql, (user_key, now)).rowcount == 1

    def ttl(self, user_key: str) -> float | None:
        db = self._read("ttl", user_key)
        now = self._clock.now()
        with self._failing("ttl", user_key):
            sql = "SELECT expires_at FROM sessions WHERE user_key = ? AND expires_at > ?"
            row = db.execute(sql, (user_key, now)).fetchone()
        return None if row is None else float(row[0]) - now

    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        db = self._read("history", user_key)
        now = self._clock.now()
        with self._failing("history", user_key):
            kept = self._history_limit if limit is None else min(limit, self._history_limit)
            rows = db.execute(_HISTORY, (user_key, now, kept))
            return [decode_history(bytes(entry)) for (entry,) in rows.fetchall()]

    # -- the lease lock --------------------------------------------------------------------
    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        _positive("ttl", ttl)
        with self._writing("acquire_lock", user_key) as (db, now):
            args = {"key": user_key, "owner": owner, "expires_at": now + ttl, "now": now}
            return db.execute(_TAKE_LEASE, args).rowcount == 1

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        _positive("ttl", ttl)
        with self._writing("lock_and_load", user_key) as (db, now):
            args = {"key": user_key, "owner": owner, "expires_at": now + ttl, "now": now}
            if db.execute(_TAKE_LEASE, args).rowcount != 1:
                return None
            row = db.execute(_STATE, _state_args(user_key, message_id, now)).fetchone()
        return Loaded(_record(row, now), bool(row[4]), locked=True)

    def release_lock(self, user_key: str, owner: str) -> bool:
        with self._writing("release_lock", user_key) as (db, now):
            sql = "DELETE FROM leases WHERE user_key = ? AND owner = ? AND expires_at > ?"
            return db.execute(sql, (user_key, owner, now)).rowcount == 1

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        _positive("ttl", ttl)
        with self._writing("extend_lock", user_key) as (db, now):
            sql = (
                "UPDATE leases SET expires_at = ? "
                "WHERE user_key = ? AND owner = ? AND expires_at > ?"
            )
            return db.execute(sql, (now + ttl, user_key, owner, now)).rowcount == 1

    def lock_info(self, user_key: str) -> LockInfo | None:
        db = self._read("lock_info", user_key)
        now = self._clock.now()
        with self._failing("lock_info", user_key):
            sql = "SELECT owner, expires_at FROM leases WHERE user_key = ? AND expires_at > ?"
            row = db.execute(sql, (user_key, now)).fetchone()
        return None if row is None else LockInfo(str(row[0]), float(row[1]) - now)

    # -- quarantine ------------------------------------------------------------------------
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        with self._writing("quarantine", user_key) as (db, now):
            moved = db.execute(
                "DELETE FROM sessions WHERE user_key = ? AND payload = ? AND expires_at > ?",
                (user_key, bytes(raw), now),
            ).rowcount
            if moved != 1:
                return None
            seq = db.execute(
                "INSERT INTO quarantine (id, user_key, raw, reason, at) VALUES (?, ?, ?, ?, ?)",
                (secrets.token_hex(16), user_key, bytes(raw), reason, now),
            ).lastrowid
            entry_id = f"{int(now * 1000):013d}-{seq:06d}"  # seq is never reused: unique
            db.execute("UPDATE quarantine SET id = ? WHERE seq = ?", (entry_id, seq))
            db.execute(_TRIM_QUARANTINE, {"key": user_key, "keep": self._quarantine_limit})
        return entry_id

    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        after = 0
        while True:
            db = self._read("quarantined", user_key)
            with self._failing("quarantined", user_key):
                args = {"after": after, "key": user_key, "batch": 500}
                rows = db.execute(_QUARANTINED, args).fetchall()
            for seq, entry_id, user, raw, reason, at in rows:
                yield QuarantineEntry(entry_id, user, bytes(raw), reason, at)
                after = seq
            if len(rows) < 500:
                return

    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        with self._writing("remove_quarantined", user_key) as (db, _):
            row = db.execute(
                "SELECT seq, raw, reason, at FROM quarantine WHERE user_key = ? AND id = ?",
                (user_key, entry_id),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM quarantine WHERE seq = ?", (row[0],))
        return QuarantineEntry(entry_id, user_key, bytes(row[1]), row[2], row[3])

    # -- listings --------------------------------------------------------------------------
    def scan(self, *, batch: int = 500) -> Iterator[str]:
        for keys, _ in self._pages("scan", _SCAN, batch):
            yield from (str(user_key) for (user_key,) in keys)

    def sessions(self, *, batch: int = 500) -> Iterator[SessionView]:
        for views, now in self._pages("sessions", _VIEWS, batch):
            yield from (_view(row, now) for row in views)

    def _pages(self, operation: str, sql: str, batch: int) -> Iterator[tuple[list[Any], float]]:
        """The rows of ``sql`` (live sessions, by key) a page of ``batch`` at a time, each with
        the time it was read at. Each page is its own read, started after the last key of the
        one before, so keys present throughout are listed once whatever is written meanwhile."""
        _positive("batch", batch)
        after: str | None = None
        while True:
            db = self._read(operation)
            now = self._clock.now()
            page_sql = sql.format(after="" if after is None else "AND s.user_key > :after")
            with self._failing(operation):
                args = {"now": now, "after": after, "batch": batch}
                rows = db.execute(page_sql, args).fetchall()
            if rows:
                yield rows, now
                after = rows[-1][0]
            if len(rows) < batch:
                return

    def session_view(self, user_key: str) -> SessionView | None:
        db = self._read("session_view", user_key)
        now = self._clock.now()
        sql = _VIEWS.format(after="AND s.user_key = :after")
        with self._failing("session_view", user_key):
            row = db.execute(sql, {"now": now, "after": user_key, "batch": 1}).fetchone()
        return None if row is None else _view(row, now)

    # -- the index of deadlines ------------------------------------------------------------
    def index_due(self, user_key: str, armed: str, due: float) -> None:
        due = _time("due", due)
        with self._writing("index_due", user_key) as (db, _):
            db.execute(
                "INSERT INTO timers (user_key, armed, due) VALUES (?, ?, ?) "
                "ON CONFLICT (user_key, armed) DO UPDATE SET due = excluded.due",
                (user_key, armed, due),
            )

    def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        _positive("limit", limit)
        _positive("hold", hold)
        now = _time("now", now)
        with self._writing("claim_due") as (db, _):
            db.execute(_RETURN_CLAIMS, {"now": now})
            db.execute("DELETE FROM timer_claims WHERE held_until <= ?", (now,))
            rows = db.execute(
                "SELECT user_key, armed, due FROM timers WHERE due <= ? "
                "ORDER BY due, user_key, armed LIMIT ?",
                (now, int(limit)),
            ).fetchall()
            db.executemany(
                "DELETE FROM timers WHERE user_key = ? AND armed = ?", [r[:2] for r in rows]
            )
            db.executemany(
                "INSERT OR REPLACE INTO timer_claims (user_key, armed, due, held_until) "
                "VALUES (?, ?, ?, ?)",
                [(*r, now + hold) for r in rows],
            )
        return [Due(user_key, armed, due) for user_key, armed, due in rows]

    def settle_due(self, entries: Sequence[Due]) -> None:
        if not entries:
            return
        with self._writing("settle_due") as (db, _):
            db.executemany(
                "DELETE FROM timer_claims WHERE user_key = ? AND armed = ?",
                [(e.user_key, e.armed) for e in entries],
            )

    def due_stats(self, now: float) -> DueStats:
        db = self._read("due_stats")
        with self._failing("due_stats"):
            indexed, due, claimed, oldest = db.execute(_DUE_STATS, (now,)).fetchone()
        return DueStats(indexed, due, claimed, oldest)

    def indexed_due(self, *, user_key: str | None = None, batch: int = 500) -> Iterator[Due]:
        """The index, soonest first, read ``batch`` entries at a time (each page its own
        read: an entry indexed, claimed or moved meanwhile may be missed or listed twice)."""
        _positive("batch", batch)
        if user_key is not None:
            db = self._read("indexed_due", user_key)
            with self._failing("indexed_due", user_key):
                sql = "SELECT user_key, armed, due FROM timers WHERE user_key = ? ORDER BY due"
                mine = db.execute(sql + ", armed", (user_key,)).fetchall()
            yield from (Due(*row) for row in mine)
            return
        last: tuple[float, str, str] | None = None
        while True:
            db = self._read("indexed_due")
            after = "" if last is None else "WHERE (due, user_key, armed) > (?, ?, ?)"
            with self._failing("indexed_due"):
                sql = _INDEX_PAGE.format(after=after)
                page = db.execute(sql, (*(last or ()), batch)).fetchall()
            yield from (Due(*row) for row in page)
            if len(page) < batch:
                return
            user, armed, due = page[-1]
            last = (due, user, armed)

    # -- upkeep ------------------------------------------------------------------------------
    def sweep(self, *, limit: int | None = None) -> Swept:
        """Delete up to ``limit`` (default ``sweep_limit``) expired rows of each kind now, in
        one write transaction; what the writes do every ``sweep_every`` transactions."""
        limit = self._sweep_limit if limit is None else limit
        _positive("limit", limit)
        with self._writing("sweep") as (db, now):
            return self._sweep_rows(db, now, int(limit))

    def _sweep_rows(self, db: sqlite3.Connection, now: float, limit: int) -> Swept:
        sessions, leases, seen = (
            db.execute(_SWEEP.format(table=table), (now, limit)).rowcount
            for table in ("sessions", "leases", "seen")
        )
        if sessions:
            db.execute(_COUNT, ("expired_sessions", sessions))
        heads = db.execute(
            "SELECT user_key FROM history_heads WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        ).fetchall()
        db.executemany("DELETE FROM history WHERE user_key = ?", heads)
        db.executemany("DELETE FROM history_heads WHERE user_key = ?", heads)
        return Swept(sessions, leases, seen, len(heads))

    def server_stats(self) -> dict[str, int | float]:
        """``expired_keys``: sessions that expired since the file was made (swept or not yet);
        ``file_bytes``: the file's size in pages (the WAL aside)."""
        db = self._read("server_stats")
        now = self._clock.now()
        with self._failing("server_stats"):
            expired = db.execute(
                "SELECT coalesce((SELECT value FROM counters WHERE name = 'expired_sessions'), 0)"
                " + (SELECT count(*) FROM sessions WHERE expires_at <= ?)",
                (now,),
            ).fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
        return {"expired_keys": int(expired), "file_bytes": int(pages) * int(size)}

    def close(self) -> None:
        self._connections.close()


def _state_args(user_key: str, message_id: str | None, now: float) -> dict[str, Any]:
    return {"key": user_key, "message_id": message_id, "now": now}


def _view(row: Sequence[Any], now: float) -> SessionView:
    user_key, version, tag, payload, expires_at, owner, lease_expires = row
    lock = None if owner is None else LockInfo(str(owner), float(lease_expires) - now)
    record = Record(bytes(payload), int(version), str(tag))
    return SessionView(str(user_key), record, float(expires_at) - now, lock)
