"""The Store contract: what the engine needs from persistence, and nothing more.

A store keeps, per user key:

- the **session**: the encoded snapshot (opaque bytes) and its version, under one sliding TTL;
- the **history**: a bounded list of the transitions that produced each version;
- the **seen message ids**: a bounded set, so a re-delivered webhook is applied once;
- a **lease lock** with an owner token and an expiry.

and, store-wide, a **quarantine** of bytes that could not be decoded.

Every write of a session is a compare-and-set on the version: :meth:`Store.save` succeeds only if
the stored version is still the one the caller loaded. The version is the fencing token: a writer
whose lock expired is still refused by the compare-and-set, so the lock is for efficiency (side
effects do not run twice), the version for correctness.

Stores do not decode snapshots (that is :mod:`fsm.snapshot`'s job); they move bytes. This module
imports nothing from :mod:`fsm`, so either package can be imported first.
"""

from __future__ import annotations

import abc
import enum
import itertools
import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import msgspec


class Record(msgspec.Struct, frozen=True):
    """A stored session: the bytes exactly as stored and the version they were saved with.

    ``tag`` is an opaque id of the write that stored it, for stores that keep one (RedisStore
    does): passed back as ``expected_tag``, it lets the compare-and-set tell apart two writes
    of the same version, as after a failover lost one. It takes no part in equality.
    """

    payload: bytes
    version: int
    tag: str = ""

    def __eq__(self, other: object) -> bool:
        if type(other) is not Record:
            return NotImplemented
        return self.version == other.version and self.payload == other.payload

    def __hash__(self) -> int:
        return hash((self.payload, self.version))

    def __repr__(self) -> str:  # the payload holds a JWT: never print it
        return f"Record(version={self.version}, payload=<{len(self.payload)} bytes>)"

    def __rich_repr__(self) -> list[tuple[str, object]]:  # msgspec's shows the payload
        return [("version", self.version), ("payload", f"<{len(self.payload)} bytes>")]


class Loaded(msgspec.Struct, frozen=True):
    """What :meth:`Store.load` returns: the record (``None`` if absent or expired), whether
    the given message id was already applied for this user, and whether a worker holds the
    user's lease lock right now.

    ``locked`` is a hint read in the same round trip: a writer that sees it queues behind the
    lock instead of racing its holder (the compare-and-set, not the hint, keeps data safe).
    """

    record: Record | None
    seen: bool = False
    locked: bool = False


class SaveStatus(enum.Enum):
    SAVED = "saved"
    CONFLICT = "conflict"  # the stored version is not the expected one
    DUPLICATE = "duplicate"  # the message id was already applied
    LOCKED = "locked"  # another worker holds the user's lease: queue behind it


class SaveResult(msgspec.Struct, frozen=True):
    """Outcome of a compare-and-set. On conflict or duplicate, ``current`` is what is stored now
    (``None`` if nothing is), so a retry does not need another read."""

    status: SaveStatus
    current: Record | None = None
    tag: str = ""  # on SAVED, the tag of the record just written (stores that keep tags)
    #: On SAVED with ``lease``: the save landed but the lease is not the caller's (a retried
    #: save whose first attempt landed, after which the lease went to another worker or the
    #: state moved on). The caller must take the lease, and reload, before acting.
    unleased: bool = False

    @property
    def saved(self) -> bool:
        return self.status is SaveStatus.SAVED


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One save of a conversation: which version it produced and what moved."""

    version: int
    from_stage: str
    to_stage: str
    event: str
    update_from: str
    at: float
    from_step: str = ""
    to_step: str = ""


@dataclass(frozen=True, slots=True)
class LockInfo:
    owner: str
    ttl: float  # seconds left


@dataclass(frozen=True, slots=True)
class SessionView:
    """One stored session as an operator sees it: the record, its TTL left and its lock,
    read together (:meth:`Store.sessions`, :meth:`Store.session_view`)."""

    user_key: str
    record: Record
    ttl: float | None  # seconds left; None if the session never expires
    lock: LockInfo | None
    #: Set when the key holds something no session value can be (a Redis hash, say): the
    #: record is then empty, and this says what was found instead.
    error: str = ""


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Bytes taken out of a session because they could not be decoded, kept byte-for-byte."""

    id: str
    user_key: str
    raw: bytes
    reason: str
    at: float

    def __repr__(self) -> str:
        return (
            f"QuarantineEntry(id={self.id!r}, user_key={self.user_key!r}, "
            f"raw=<{len(self.raw)} bytes>, reason={self.reason!r}, at={self.at!r})"
        )


#: A history entry as stored: an array of HistoryEntry's fields in order, no names (made from
#: HistoryEntry's own fields, so the two cannot drift apart).
_HistoryRow = msgspec.defstruct(
    "_HistoryRow",
    [
        (f.name, f.type) if f.required else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(HistoryEntry)
    ],
    array_like=True,
)


_history_encoder = msgspec.msgpack.Encoder()
_history_decoder = msgspec.msgpack.Decoder(HistoryEntry)
_row_decoder = msgspec.msgpack.Decoder(_HistoryRow)
#: The first byte of a msgpack array (fixarray, array 16, array 32).
_ARRAY_STARTS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


def encode_history(entry: HistoryEntry, *, compact: bool = True) -> bytes:
    """``entry`` as stored: an array in field order (half the bytes of a map with names), or
    with ``compact=False`` the map with field names, the only form earlier releases read."""
    if not compact:
        return _history_encoder.encode(entry)
    return _history_encoder.encode(msgspec.structs.astuple(entry))


def decode_history(raw: bytes) -> HistoryEntry:
    """An entry as :func:`encode_history` stores it, or as a map with field names (what
    releases before the array form wrote, still read)."""
    if raw[:1] and raw[0] in _ARRAY_STARTS:
        return HistoryEntry(**msgspec.structs.asdict(_row_decoder.decode(raw)))
    return _history_decoder.decode(raw)


class Store(abc.ABC):
    """The persistence contract. Every adapter passes ``tests/adapters/test_store_contract.py``.

    User keys are plain strings chosen by the transport (a phone number, a chat id); adapters
    escape them as their key layout needs. TTLs are seconds (floats allowed).
    """

    #: Whether :meth:`save` takes ``lease`` (give the caller the lease in the same step).
    #: A store that does not say so still works: the engine then takes the lease with
    #: :meth:`lock_and_load` before an action, one round trip more.
    takes_lease_on_save: bool = False

    # -- sessions --------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        """The stored record, and whether ``message_id`` was already applied for this user."""

    @abc.abstractmethod
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
        """Atomically: if the stored version is ``expected_version`` (0: nothing stored; with
        ``expected_tag``, in a store that keeps tags, the stored tag must be that too),
        ``message_id`` was not applied yet and no worker but ``owner`` holds the user's lease,
        store ``payload`` as ``version`` with a fresh ``ttl``, append ``history``, record
        ``message_id``, with ``release`` free ``owner``'s lease, and with ``lease`` (seconds)
        give ``owner`` the lease for that long (the engine saves a move to an action step
        and takes the lease to run it in one step). Otherwise change nothing and say why, in
        this order: DUPLICATE (a re-delivered message is acknowledged, not retried), LOCKED
        (another worker holds the lease: queue behind it), CONFLICT. Raises ``ValueError`` if
        ``ttl <= 0``, ``expected_version < 0``, ``version <= expected_version``, ``release``
        or ``lease`` without ``owner``, ``release`` with ``lease``, or ``lease <= 0``."""

    @abc.abstractmethod
    def delete(self, user_key: str) -> bool:
        """Remove the session (not its history). True if there was one."""

    @abc.abstractmethod
    def ttl(self, user_key: str) -> float | None:
        """Seconds before the session expires; None if there is no session."""

    @abc.abstractmethod
    def scan(self, *, batch: int = 500) -> Iterator[str]:
        """Every user key with a session, streamed (never a blocking listing of all keys)."""

    # -- history ---------------------------------------------------------------------------
    @abc.abstractmethod
    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        """The user's recent transitions, newest first (bounded by the store's history limit)."""

    # -- lease lock ------------------------------------------------------------------------
    @abc.abstractmethod
    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """Take the user's lock for ``ttl`` seconds if it is free (or expired)."""

    @abc.abstractmethod
    def release_lock(self, user_key: str, owner: str) -> bool:
        """Release the lock only if ``owner`` holds it. True if it did."""

    @abc.abstractmethod
    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """Reset the lock's expiry to ``ttl`` only if ``owner`` holds it. True if it did."""

    @abc.abstractmethod
    def lock_info(self, user_key: str) -> LockInfo | None:
        """Who holds the lock and for how long, or None."""

    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        """Take the user's lock if it is free and load, as one step where the store can (one
        round trip on Redis); None if the lock is taken. The default composes the two."""
        if not self.acquire_lock(user_key, owner, ttl):
            return None
        return self.load(user_key, message_id=message_id)

    # -- quarantine ------------------------------------------------------------------------
    @abc.abstractmethod
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        """Atomically: if the session still holds exactly ``raw``, move it to the quarantine
        (kept byte-for-byte) and remove the session. Returns the quarantine id, or None if the
        session changed meanwhile (then nothing was moved)."""

    @abc.abstractmethod
    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        """Every quarantined entry (only ``user_key``'s if given), oldest first."""

    @abc.abstractmethod
    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        """Take one entry out of the quarantine (after it was restored or is no longer
        wanted); returns it, or None if there is no such entry."""

    # -- operations ------------------------------------------------------------------------
    def session_view(self, user_key: str) -> SessionView | None:
        """The user's session with its TTL and lock, or None. Not one atomic read: for
        operators, who read, not decide (the default composes load, ttl and lock_info)."""
        record = self.load(user_key).record
        if record is None:
            return None
        return SessionView(user_key, record, self.ttl(user_key), self.lock_info(user_key))

    def sessions(self, *, batch: int = 500) -> Iterator[SessionView]:
        """Every session with its TTL and lock, streamed in batches of about ``batch`` (a
        session that vanishes while the scan runs is left out). Stores override this to read a
        batch in one round trip."""
        for user_key in self.scan(batch=batch):
            view = self.session_view(user_key)
            if view is not None:
                yield view

    def server_stats(self) -> dict[str, int | float]:
        """Store-wide figures the store keeps itself: ``expired_keys`` (sessions and other keys
        expired since the server started), ``used_memory`` (bytes), when known."""
        return {}

    def script_cache(self) -> tuple[int, int] | None:
        """For stores that run server-side scripts: (cached, total) of this store's scripts,
        loading the missing ones. None for stores without scripts."""
        return None

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections; the store is unusable afterwards."""

    # -- helpers built on the contract -----------------------------------------------------
    def acquire_lease(self, user_key: str, *, ttl: float, wait: float) -> str:
        """Take the user's lock, waiting up to ``wait`` seconds (jittered backoff).

        Returns the owner token to release with. Raises ``TimeoutError`` if the lock stays
        taken; the engine turns that into :class:`fsm.errors.LockTimeout`.
        """
        owner = new_owner_token()
        # Waiting is real time even when the store runs on a fake clock: the holder is another
        # thread or process that needs real time to finish.
        deadline = time.monotonic() + wait
        delays = lock_backoff()
        while not self.acquire_lock(user_key, owner, ttl):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(user_key)
            time.sleep(min(next(delays), left))
        return owner

    def acquire_lease_loaded(
        self, user_key: str, *, ttl: float, wait: float, message_id: str | None = None
    ) -> tuple[str, Loaded]:
        """:meth:`acquire_lease`, returning the record loaded under the new lease as well."""
        owner = new_owner_token()
        deadline = time.monotonic() + wait
        delays = lock_backoff()
        while (loaded := self.lock_and_load(user_key, owner, ttl, message_id=message_id)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(user_key)
            time.sleep(min(next(delays), left))
        return owner, loaded

    @contextmanager
    def lease(self, user_key: str, *, ttl: float, wait: float) -> Iterator[str]:
        """Hold the user's lock for the ``with`` block; yields the owner token. Releases only
        its own lock, so a lease that outlived its TTL cannot free the next holder's lock."""
        owner = self.acquire_lease(user_key, ttl=ttl, wait=wait)
        try:
            yield owner
        finally:
            self.release_lock(user_key, owner)


class AsyncStore(abc.ABC):
    """The part of the :class:`Store` contract that :class:`fsm.AsyncEngine` needs, on asyncio.

    Same semantics, method for method, as :class:`Store`: the same compare-and-set, dedupe,
    lease and quarantine rules, and for the Redis adapters the same keys and scripts, so sync
    and async workers serve one deployment side by side. The operator's methods (``scan``,
    ``sessions``, ``quarantined``, ...) stay on the sync stores: the ``fsm`` toolkit is
    synchronous. Every adapter passes ``tests/adapters/test_store_contract.py``.
    """

    #: As :attr:`Store.takes_lease_on_save`.
    takes_lease_on_save: bool = False

    @abc.abstractmethod
    async def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        """As :meth:`Store.load`."""

    @abc.abstractmethod
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
        """As :meth:`Store.save`."""

    @abc.abstractmethod
    async def delete(self, user_key: str) -> bool:
        """As :meth:`Store.delete`."""

    @abc.abstractmethod
    async def ttl(self, user_key: str) -> float | None:
        """As :meth:`Store.ttl`."""

    @abc.abstractmethod
    async def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        """As :meth:`Store.history`."""

    @abc.abstractmethod
    async def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """As :meth:`Store.acquire_lock`."""

    @abc.abstractmethod
    async def release_lock(self, user_key: str, owner: str) -> bool:
        """As :meth:`Store.release_lock`."""

    @abc.abstractmethod
    async def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """As :meth:`Store.extend_lock`."""

    @abc.abstractmethod
    async def lock_info(self, user_key: str) -> LockInfo | None:
        """As :meth:`Store.lock_info`."""

    @abc.abstractmethod
    async def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        """As :meth:`Store.lock_and_load`."""

    @abc.abstractmethod
    async def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        """As :meth:`Store.quarantine`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections; the store is unusable afterwards."""


#: The highest version a session can be saved with (10^12 saves of one conversation). Stores
#: refuse more; the engine takes a record claiming more for corruption, and never continues a
#: version chain above it. The Redis value layout reads versions of up to 15 digits.
MAX_VERSION = 10**12


def check_save_arguments(
    ttl: float,
    version: int,
    expected_version: int,
    owner: str | None,
    release: bool,
    lease: float | None = None,
) -> None:
    """The argument checks every :meth:`Store.save` makes (``ValueError``)."""
    if not ttl > 0:
        raise ValueError(f"ttl must be > 0, got {ttl!r}")
    if expected_version < 0 or version <= expected_version:
        raise ValueError(f"version {version} must follow expected_version {expected_version}")
    if version > MAX_VERSION:
        raise ValueError(f"version {version} is above MAX_VERSION ({MAX_VERSION})")
    if release and owner is None:
        raise ValueError("release=True needs the owner whose lease to release")
    if lease is not None:
        if owner is None:
            raise ValueError("lease needs the owner to give the lease to")
        if release:
            raise ValueError("release=True and lease: a save frees the lease or takes it")
        if not lease > 0:
            raise ValueError(f"lease must be > 0, got {lease!r}")


def new_owner_token() -> str:
    """A lock owner token unique across processes and hosts (os entropy: safe after fork)."""
    return secrets.token_hex(16)


def lock_backoff(start: float = 0.001, cap: float = 0.05) -> Iterator[float]:
    for attempt in itertools.count():
        yield random.uniform(0, min(cap, start * 2**attempt))
