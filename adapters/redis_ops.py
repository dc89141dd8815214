"""The Redis stores' operations, written once for :class:`~adapters.redis.RedisStore` and
:class:`~adapters.redis_async.AsyncRedisStore`.

Theory of operation (the shape of psycopg's ``generators.py``): each store operation the engine
uses is a generator that builds its keys and arguments, yields the Redis calls it needs (a
registered :class:`Script`, a plain :class:`Command`, a :class:`Pause` before a retry), is sent
each reply, or has the call's Redis error thrown into it, and returns the parsed result. It does
no I/O of its own. A store is a driver: RedisStore runs the calls on a blocking client,
AsyncRedisStore awaits them on an asyncio one, and neither holds any other logic, so the two
cannot drift apart (redis-py's own async lock did) and a sync and an async worker read and
write the same keys, values, tags, locks and message ids.

The retry rules live here too (:meth:`RedisOperations.retrying`): a connection loss or timeout
is retried ``retries`` times with backoff, then raised as
:class:`~fsm.errors.StoreUnavailable` naming the operation; any other Redis error at once. A
retried write is applied once (the save script recognises its own tagged bytes, a lock its own
owner token), and a lock attempt whose outcome stayed unknown frees the lock if it is ours.
The index of deadlines' writes are idempotent (a retried index or settle sets or drops the
same members again); a retried claim claims afresh, and what a lost reply had claimed comes
back due when its hold runs out.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import secrets
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeAlias, TypedDict, TypeVar

import msgspec
import redis
from redis.exceptions import RedisClusterException

from adapters.environment import flag
from adapters.redis_keys import DEFAULT_NAMESPACE, KeyLayout
from adapters.redis_scripts import TAG_DIGITS, VALUE_PREFIX, scripts
from fsm.errors import StoreUnavailable
from fsm.records import (
    Due,
    DueStats,
    HistoryEntry,
    Loaded,
    LockInfo,
    Record,
    SaveResult,
    SaveStatus,
    decode_history,
    encode_history,
)
from fsm.store import check_save_arguments

T = TypeVar("T")


# -- what an operation asks for --------------------------------------------------------------
class Script(msgspec.Struct, frozen=True):
    """Run the registered Lua script ``name`` (a key of :attr:`RedisOperations.scripts`).
    (Requests are frozen msgspec Structs: one is made per store call, cheaply.)"""

    name: str
    keys: Sequence[str]
    args: Sequence[Any]


class Command(msgspec.Struct, frozen=True):
    """Send one plain command, e.g. ``("GET", key)``; the reply is redis-py's parsed one."""

    args: tuple[Any, ...]


class Pause(msgspec.Struct, frozen=True):
    """Wait before the next attempt (``time.sleep`` or ``asyncio.sleep``)."""

    seconds: float


Request: TypeAlias = Script | Command | Pause
#: An operation: yields requests, is sent their replies, returns its result.
Operation: TypeAlias = Generator[Request, Any, T]

#: Every error a redis-py client raises (thrown into the operation by its driver).
ERRORS = (redis.RedisError, RedisClusterException)
#: Errors worth another attempt: the command may not have reached the server, or its reply
#: did not come back.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)

_STATUS = {
    b"saved": SaveStatus.SAVED,
    b"duplicate": SaveStatus.DUPLICATE,
    b"locked": SaveStatus.LOCKED,
    b"conflict": SaveStatus.CONFLICT,
}


# -- the stored value ------------------------------------------------------------------------
TAG = TAG_DIGITS  # hex digits of a write's tag; history entries are stored behind theirs


def split_value(value: bytes) -> Record:
    """A session value as a record: ``b"<version>.<tag>:<payload>"``; bytes without that
    prefix (not written by this store) are version 0 with the whole value as payload, so the
    engine quarantines them byte for byte. The scripts read values the same way."""
    match = VALUE_PREFIX.match(value)
    if match is None:
        return Record(value, 0)
    return Record(value[match.end() :], int(match[1]), match[2].decode())


class Quarantined(msgspec.Struct, array_like=True):
    """A quarantine list item as stored."""

    id: str
    user_key: str
    raw: bytes
    reason: str
    at: float


quarantine_encoder = msgspec.msgpack.Encoder()
quarantine_decoder = msgspec.msgpack.Decoder(Quarantined)


#: Where write tags come from: a generator of this module's own, seeded from the OS (and again
#: in each forked child), which an application's random.seed() cannot make repeat.
_tags = random.Random()
os.register_at_fork(after_in_child=_tags.seed)


#: The environment variable that sets ``legacy_format`` for stores built without it.
LEGACY_FORMAT_ENV = "FSM_LEGACY_FORMAT"


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def describe(exc: BaseException) -> str:
    """One line naming the error; long driver messages (a Sentinel's repr of its whole
    configuration) are cut, so error output stays readable."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    text = text.split(" : <", 1)[0]  # redis-py appends a client's repr to some messages
    return text if len(text) <= 300 else text[:297] + "..."


def _positive_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"ttl must be > 0, got {ttl!r}")


def _positive(name: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive, got {value!r}")


def score(seconds: float) -> str:
    """A time as a sorted-set score: ``repr`` of the float, which Redis reads back exactly."""
    value = float(seconds)
    if value != value:
        raise ValueError("a time must be a number, got NaN")
    return repr(value)


# -- replies -----------------------------------------------------------------------------------
def _loaded(reply: Any) -> Loaded:
    value, seen, locked = reply
    return Loaded(None if value is None else split_value(value), bool(seen), bool(locked))


def _lock_info(reply: Any) -> LockInfo | None:
    owner, left = reply
    if owner is None or left < 0:
        return None
    return LockInfo(owner.decode(), left / 1000)


def _seconds_left(reply: Any) -> float | None:
    return None if reply is None or reply < 0 else float(reply / 1000)


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """A sorted set's ``WITHSCORES`` reply as (member, score): flat (RESP2, and what the
    scripts return) or in pairs (RESP3)."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, float(at)) for member, at in reply]
    return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]


def _due_stats(reply: Any) -> DueStats:
    indexed, due, claimed, oldest = reply
    return DueStats(int(indexed), int(due), int(claimed), None if not oldest else float(oldest))


#: At most this many entries are settled per script call (each call's arguments are bounded).
SETTLE_BATCH = 500


class RedisLimits(TypedDict, total=False):
    """The options both Redis stores take besides the namespace (see :class:`RedisOperations`)."""

    history_limit: int
    history_ttl: float
    dedupe_limit: int
    dedupe_ttl: float
    quarantine_limit: int
    retries: int
    legacy_format: bool


class RedisOperations:
    """The store operations of one namespace, as generators of Redis calls.

    Limits are per user: ``history_limit`` entries kept ``history_ttl`` seconds after the last
    append, ``dedupe_limit`` message ids each remembered ``dedupe_ttl`` seconds, and
    ``quarantine_limit`` quarantined records (oldest dropped first). ``retries``: further
    attempts after a connection loss or timeout. ``legacy_format=True`` writes what release
    0.1.0 reads and writes (history entries as maps with field names, seen message ids as
    they came rather than as digests): use it while such workers still run (a rolling
    deploy) or may come back (a rollback); this code reads both forms (see docs/redis.md,
    "Upgrading"). Not given, it is read from the environment, ``FSM_LEGACY_FORMAT=1`` (so
    ``fsm serve`` and the CLI follow it too), else false.
    """

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        history_limit: int = 50,
        history_ttl: float = 7 * 24 * 3600,
        dedupe_limit: int = 1000,
        dedupe_ttl: float = 7 * 24 * 3600,
        quarantine_limit: int = 100,
        retries: int = 2,
        legacy_format: bool | None = None,
    ) -> None:
        for name, value in [
            ("history_limit", history_limit),
            ("history_ttl", history_ttl),
            ("dedupe_limit", dedupe_limit),
            ("dedupe_ttl", dedupe_ttl),
            ("quarantine_limit", quarantine_limit),
        ]:
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.layout = KeyLayout(namespace)
        self.history_limit = history_limit
        self.history_ttl = history_ttl
        self.dedupe_limit = dedupe_limit
        self.dedupe_ttl = dedupe_ttl
        self.quarantine_limit = quarantine_limit
        self.retries = retries
        if legacy_format is None:
            legacy_format = flag(os.environ, LEGACY_FORMAT_ENV, False)
        self.legacy = legacy_format
        self._ids = itertools.count(1)
        #: The Lua every store registers once on its client, by name (these limits in it).
        self.scripts = scripts(
            history_limit=history_limit,
            history_ttl_ms=ms(history_ttl),
            dedupe_limit=dedupe_limit,
            dedupe_ttl_ms=ms(dedupe_ttl),
            raw_message_ids=self.legacy,
        )

    # -- retries -----------------------------------------------------------------------------
    def retrying(
        self, operation: str, user_key: str | None, attempt: Callable[[bool], Operation[T]]
    ) -> Operation[T]:
        """Run ``attempt(retried)``; transient failures are retried, then every Redis error is
        raised as StoreUnavailable naming ``operation``."""
        for n in range(self.retries + 1):
            try:
                return (yield from attempt(n > 0))
            except TRANSIENT as exc:
                if n == self.retries:
                    raise StoreUnavailable(
                        operation, user_key=user_key, detail=describe(exc)
                    ) from exc
                yield Pause(0.05 * 2**n)
            except ERRORS as exc:
                raise StoreUnavailable(operation, user_key=user_key, detail=describe(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _single(
        self, operation: str, user_key: str | None, request: Request, parse: Callable[[Any], T]
    ) -> Operation[T]:
        """An operation of one call, whose retry cannot apply anything twice."""

        def attempt(_: bool) -> Operation[T]:
            return parse((yield request))

        return self.retrying(operation, user_key, attempt)

    def _locking(
        self, operation: str, user_key: str, owner: str, attempt: Callable[[bool], Operation[T]]
    ) -> Operation[T]:
        """:meth:`retrying` for an attempt to take the lock: if it fails with its outcome
        unknown, free the lock if it is ours, so a lost reply does not lock the user out for
        the lease's TTL. Best effort: the TTL frees it anyway if Redis stays away."""
        try:
            return (yield from self.retrying(operation, user_key, attempt))
        except StoreUnavailable:
            with contextlib.suppress(*ERRORS):
                yield Script("release", [self.layout.keys(user_key)[3]], [owner])
            raise

    # -- sessions ----------------------------------------------------------------------------
    def load(self, user_key: str, *, message_id: str | None = None) -> Operation[Loaded]:
        session, _, seen, lock, _ = self.layout.keys(user_key)
        request = Script("load", [session, seen, lock], [message_id or ""])
        return self._single("load", user_key, request, _loaded)

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
    ) -> Operation[SaveResult]:
        check_save_arguments(ttl, version, expected_version, owner, release, lease)
        keys = self.layout.keys(user_key)[:4]
        tag = b"%08x" % _tags.getrandbits(32)  # names the write; no system call per save
        args: list[Any] = [
            expected_version,
            b"%d.%s:" % (version, tag) + payload,
            ms(ttl),
            b"" if history is None else tag + encode_history(history, compact=not self.legacy),
            message_id or b"",
            owner or b"",
            expected_tag,
            b"" if lease is None else ms(lease),
            b"r" if release else b"",
        ]

        def attempt(retried: bool) -> Operation[SaveResult]:
            # On a retry the script first looks for this very write (its tagged value or
            # history entry): if the first attempt landed and only its reply was lost, it is
            # SAVED, never applied twice nor mistaken for someone else's.
            sent = [*args[:-1], args[-1] + b"t"] if retried else args
            status, current = yield Script("save", keys, sent)
            if status == b"saved":
                return SaveResult(SaveStatus.SAVED, tag=tag.decode(), unleased=bool(current))
            return SaveResult(_STATUS[status], None if current is None else split_value(current))

        return self.retrying("save", user_key, attempt)

    def delete(self, user_key: str) -> Operation[bool]:
        return self._single(
            "delete", user_key, Command(("DEL", self.layout.session(user_key))), bool
        )

    def ttl(self, user_key: str) -> Operation[float | None]:
        request = Command(("PTTL", self.layout.session(user_key)))
        return self._single("ttl", user_key, request, _seconds_left)

    # -- history -----------------------------------------------------------------------------
    def history(self, user_key: str, *, limit: int | None = None) -> Operation[list[HistoryEntry]]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        hist = self.layout.keys(user_key)[1]
        end = -1 if limit is None else limit - 1

        def attempt(_: bool) -> Operation[list[HistoryEntry]]:
            if limit == 0:
                return []
            raw: list[bytes] = yield Command(("LRANGE", hist, 0, end))
            return [decode_history(item[TAG:]) for item in raw]

        return self.retrying("history", user_key, attempt)

    def import_history(self, user_key: str, entries: Sequence[HistoryEntry]) -> Operation[int]:
        """Push ``entries`` (oldest first) as saves would have, trimmed and given the history's
        TTL, in one script. Each gets a fresh tag; a retry after a lost reply finds the newest
        one's and pushes nothing again."""
        hist = self.layout.keys(user_key)[1]
        compact = not self.legacy
        items = [
            b"%08x" % _tags.getrandbits(32) + encode_history(e, compact=compact) for e in entries
        ]

        def attempt(_: bool) -> Operation[int]:
            if items:
                yield Script("import_history", [hist], items)
            return len(items)

        return self.retrying("import_history", user_key, attempt)

    # -- lease lock --------------------------------------------------------------------------
    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> Operation[bool]:
        _positive_ttl(ttl)
        lock = self.layout.keys(user_key)[3]

        def attempt(retried: bool) -> Operation[bool]:
            if (yield Command(("SET", lock, owner, "NX", "PX", ms(ttl)))):
                return True
            # A retry after a lost reply finds the lock already ours.
            return retried and (yield Command(("GET", lock))) == owner.encode()

        return self._locking("acquire_lock", user_key, owner, attempt)

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Operation[Loaded | None]:
        _positive_ttl(ttl)
        session, _, seen, lock, _ = self.layout.keys(user_key)
        args: list[Any] = [owner, ms(ttl), message_id or ""]

        def attempt(retried: bool) -> Operation[Loaded | None]:
            reply = yield Script("lock_and_load", [session, seen, lock], args)
            if reply is not None:
                return _loaded(reply)
            if retried and (yield Command(("GET", lock))) == owner.encode():
                again = yield from self.load(user_key, message_id=message_id)
                return Loaded(again.record, again.seen, locked=True)
            return None

        return self._locking("lock_and_load", user_key, owner, attempt)

    def release_lock(self, user_key: str, owner: str) -> Operation[bool]:
        request = Script("release", [self.layout.keys(user_key)[3]], [owner])
        return self._single("release_lock", user_key, request, bool)

    def extend_lock(self, user_key: str, owner: str, ttl: float) -> Operation[bool]:
        _positive_ttl(ttl)
        request = Script("extend", [self.layout.keys(user_key)[3]], [owner, ms(ttl)])
        return self._single("extend_lock", user_key, request, bool)

    def lock_info(self, user_key: str) -> Operation[LockInfo | None]:
        request = Script("lock_info", [self.layout.keys(user_key)[3]], [])
        return self._single("lock_info", user_key, request, _lock_info)

    # -- quarantine --------------------------------------------------------------------------
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> Operation[str | None]:
        session, _, _, _, qkey = self.layout.keys(user_key)
        now = time.time()
        entry_id = f"{int(now * 1000):013d}-{next(self._ids):06d}-{secrets.token_hex(3)}"
        entry = quarantine_encoder.encode(Quarantined(entry_id, user_key, raw, reason, now))
        request = Script("quarantine", [session, qkey], [raw, entry, self.quarantine_limit])
        # A retry finds its own entry listed: the script reports it moved, not moved twice.
        return self._single(
            "quarantine", user_key, request, lambda moved: entry_id if moved else None
        )

    # -- the index of deadlines (see adapters.redis_keys for its layout) ---------------------
    def index_due(self, user_key: str, armed: str, due: float) -> Operation[None]:
        layout = self.layout
        n = layout.index_shard(user_key)
        keys = [layout.index_shards[n], layout.index_heads]
        request = Script("index_due", keys, [score(due), layout.index_member(user_key, armed), n])
        # A retry sets the same score on the same member again: applied once.
        return self._single("index_due", user_key, request, lambda _: None)

    def claim_due(self, now: float, *, limit: int, hold: float) -> Operation[list[Due]]:
        _positive("limit", limit)
        _positive("hold", hold)
        args = [score(now), max(1, int(limit)), score(now + hold)]
        request = Script("claim_due", self.layout.index_keys, args)
        entry = self.layout.index_entry

        def claimed(reply: Any) -> list[Due]:
            return [Due(*entry(member), due) for member, due in _pairs(reply)]

        # A retry is a claim of its own. If the first attempt landed and only its reply was
        # lost, what it claimed is hidden until its hold runs out, then due again (as for a
        # ticker that died): fired late, never lost, and never fired twice (firing checks
        # the stored snapshot).
        return self._single("claim_due", None, request, claimed)

    def settle_due(self, entries: Sequence[Due]) -> Operation[None]:
        members = [self.layout.index_member(e.user_key, e.armed) for e in entries]
        keys = [self.layout.index_claims, self.layout.index_claim_dues]

        def attempt(_: bool) -> Operation[None]:
            # Dropping a claim twice is dropping it once: a retry repeats every batch.
            for start in range(0, len(members), SETTLE_BATCH):
                yield Script("settle_due", keys, members[start : start + SETTLE_BATCH])

        return self.retrying("settle_due", None, attempt)

    def due_stats(self, now: float) -> Operation[DueStats]:
        request = Script("due_stats", self.layout.index_keys, [score(now)])
        return self._single("due_stats", None, request, _due_stats)

    def index_sizes(self) -> Operation[list[int]]:
        """How many entries each shard of the index holds, in shard order."""
        request = Script("index_sizes", self.layout.index_shards, [])
        return self._single("indexed_due", None, request, lambda sizes: [int(n) for n in sizes])

    def index_page(
        self, shard: int, low: float, skip: int, count: int
    ) -> Operation[list[tuple[bytes, float]]]:
        """Up to ``count`` entries of one shard due at ``low`` or later, soonest first, after
        the first ``skip`` of them: a page of :meth:`RedisStore.indexed_due`'s listing."""
        key = self.layout.index_shards[shard]
        args = ("ZRANGEBYSCORE", key, score(low), "+inf", "WITHSCORES", "LIMIT", skip, count)
        return self._single("indexed_due", None, Command(args), _pairs)


def immediate(fn: Callable[[bool], T]) -> Callable[[bool], Operation[T]]:
    """An attempt that calls a blocking client itself, for the sync store's operator methods
    (scans, pipelines), so they share :meth:`RedisOperations.retrying` all the same."""

    def attempt(retried: bool) -> Operation[T]:
        yield from ()
        return fn(retried)

    return attempt
