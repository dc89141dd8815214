"""The Store contract: the ports the core needs from persistence, split by who calls them.

- :class:`SessionStore` is **the engine's port**: what :class:`fsm.Engine` needs to apply a
  message (load; compare-and-set save; the last history entry; the lease lock; quarantine). A
  store that implements only these seven methods runs every engine. :class:`AsyncSessionStore`
  is the same port on asyncio, for :class:`fsm.AsyncEngine`.
- :class:`OperatorStore` is **the operator's port**: what the toolkit (:mod:`fsm.ops`, the
  ``fsm`` command) needs to look after many sessions (scan, TTL, delete, lock info, the
  quarantine's listing). :class:`Store` is both ports, what the toolkit takes; it says which
  methods a store lacks when given one without them (:func:`operator_store`).

Every write of a session is a compare-and-set on the version: :meth:`SessionStore.save`
succeeds only if the stored version is still the one the caller loaded. The version is the
fencing token: a writer whose lock expired is still refused by the compare-and-set, so the lock
is for efficiency (side effects do not run twice), the version for correctness.

Stores move bytes (:mod:`fsm.records`); decoding them is :mod:`fsm.snapshot`'s job. Adapters
(the ``adapters`` package) implement these classes; the core never imports an adapter.
"""

from __future__ import annotations

import abc
import itertools
import random
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fsm.records import (
    MAX_VERSION,
    Due,
    DueStats,
    HistoryEntry,
    Loaded,
    LockInfo,
    QuarantineEntry,
    SaveResult,
    SessionView,
)

__all__ = [
    "AsyncSessionStore",
    "AsyncStore",
    "OperatorStore",
    "SessionStore",
    "Store",
    "check_save_arguments",
    "lock_backoff",
    "new_owner_token",
    "operator_store",
]


class SessionStore(abc.ABC):
    """The engine's port. Every adapter passes ``tests/adapters/test_store_contract.py``.

    User keys are plain strings chosen by the transport (a phone number, a chat id); adapters
    escape them as their key layout needs. TTLs are seconds (floats allowed).
    """

    #: Whether :meth:`save` takes ``lease`` (give the caller the lease in the same step).
    #: A store that does not say so still works: the engine then takes the lease with
    #: :meth:`lock_and_load` before an action, one round trip more.
    takes_lease_on_save: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A store written for release 0.2 implements acquire_lock and took lock_and_load's
        # default; it keeps working (before the ABC counts what is abstract).
        if "acquire_lock" in cls.__dict__ and getattr(
            cls.lock_and_load, "__isabstractmethod__", False
        ):
            cls.lock_and_load = _lock_then_load  # type: ignore[method-assign]

    @abc.abstractmethod
    def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        """The stored record, whether ``message_id`` was already applied for this user, and
        whether a worker holds the user's lease lock right now."""

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
        or ``lease`` without ``owner``, ``release`` with ``lease``, or ``lease <= 0``
        (:func:`check_save_arguments`)."""

    @abc.abstractmethod
    def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        """The user's recent transitions, newest first (bounded by the store's history limit).
        The engine reads the last one to continue an expired session's version chain."""

    @abc.abstractmethod
    def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        """Take the user's lease lock for ``ttl`` seconds if it is free (or expired) and load,
        as one atomic step; None if another owner holds it."""

    @abc.abstractmethod
    def release_lock(self, user_key: str, owner: str) -> bool:
        """Release the lock only if ``owner`` holds it. True if it did."""

    @abc.abstractmethod
    def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """Reset the lock's expiry to ``ttl`` only if ``owner`` holds it. True if it did."""

    @abc.abstractmethod
    def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        """Atomically: if the session still holds exactly ``raw``, move it to the quarantine
        (kept byte-for-byte) and remove the session. Returns the quarantine id, or None if the
        session changed meanwhile (then nothing was moved)."""

    # -- the index of deadlines (timers: fsm.timeout) ---------------------------------------
    #: Whether this store keeps the index of deadlines (the four methods below). A flow that
    #: declares timers needs one; the engine says so when built on a store without it.
    keeps_timers: bool = False

    def index_due(self, user_key: str, armed: str, due: float) -> None:
        """Add ``(user_key, armed)`` to the index, due at ``due`` (replacing the due of the same
        entry). The engine calls it *before* the save that stores the snapshot with those
        timers, so a stored timer is never missing from the index (on Redis Cluster the index
        lives in another slot than the user's keys and cannot be written in the same step)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        """Take up to ``limit`` entries due at ``now`` (soonest first) out of the index for the
        caller, hidden from other claimers for ``hold`` seconds; an entry whose claim ran out
        (its ticker died) is due again. Atomic: two tickers never claim the same entry."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    def settle_due(self, entries: Sequence[Due]) -> None:
        """Drop the claims on ``entries``: they were fired, or found to stand for nothing (an
        entry to keep is indexed again first with :meth:`index_due`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    def due_stats(self, now: float) -> DueStats:
        """How many entries are indexed, due at ``now``, and claimed."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    # -- helpers built on the port ---------------------------------------------------------
    def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """Take the user's lock for ``ttl`` seconds if it is free (or expired). The default
        is :meth:`lock_and_load`'s, the record read and dropped; stores override it."""
        return self.lock_and_load(user_key, owner, ttl) is not None

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

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections; the store is unusable afterwards."""


def _lock_then_load(
    self: SessionStore, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
) -> Loaded | None:
    """:meth:`SessionStore.lock_and_load` for a store that implements only ``acquire_lock``
    (written for release 0.2): the two steps in turn, not one atomic one."""
    if not self.acquire_lock(user_key, owner, ttl):
        return None
    return self.load(user_key, message_id=message_id)


class OperatorStore(abc.ABC):
    """The operator's port: what the toolkit needs beside the engine's (:class:`Store` is
    both). Streams, never blocks the store on a listing of every key."""

    @abc.abstractmethod
    def scan(self, *, batch: int = 500) -> Iterator[str]:
        """Every user key with a session, streamed (never a blocking listing of all keys)."""

    @abc.abstractmethod
    def ttl(self, user_key: str) -> float | None:
        """Seconds before the session expires; None if there is no session."""

    @abc.abstractmethod
    def delete(self, user_key: str) -> bool:
        """Remove the session (not its history). True if there was one."""

    @abc.abstractmethod
    def lock_info(self, user_key: str) -> LockInfo | None:
        """Who holds the lock and for how long, or None."""

    @abc.abstractmethod
    def quarantined(self, user_key: str | None = None) -> Iterator[QuarantineEntry]:
        """Every quarantined entry (only ``user_key``'s if given), oldest first."""

    @abc.abstractmethod
    def remove_quarantined(self, user_key: str, entry_id: str) -> QuarantineEntry | None:
        """Take one entry out of the quarantine (after it was restored or is no longer
        wanted); returns it, or None if there is no such entry."""

    def import_history(self, user_key: str, entries: Sequence[HistoryEntry]) -> int:
        """Append ``entries`` (oldest first) to the user's history as saves would have: kept
        the store's history TTL from now, the oldest dropped past its history limit. For moving
        a conversation between stores (``fsm restore``); returns how many were appended.
        Raises ``NotImplementedError`` on a store that cannot (the default)."""
        raise NotImplementedError(f"{type(self).__name__} cannot import history entries")

    def migrate_schema(self) -> tuple[int, int] | None:
        """For a store with a schema of its own (the SQL stores): make or migrate it now rather
        than on first use, and return (the version found, 0 for none; the version now). None
        for a store without one (memory, Redis)."""
        return None

    def indexed_due(self, *, user_key: str | None = None) -> Iterator[Due]:
        """The index of deadlines, soonest first (``user_key``'s entries only if given); claimed
        entries are not listed. Stores that keep no index list nothing."""
        return iter(())

    def server_stats(self) -> dict[str, int | float]:
        """Store-wide figures the store keeps itself: ``expired_keys`` (sessions and other keys
        expired since the server started), ``used_memory`` (bytes), when known."""
        return {}

    def script_cache(self) -> tuple[int, int] | None:
        """For stores that run server-side scripts: (cached, total) of this store's scripts,
        loading the missing ones. None for stores without scripts."""
        return None


class Store(SessionStore, OperatorStore):
    """A store with both ports: what the toolkit (``fsm ls``, ``check``, ``backup``, ...)
    and the engine together need. Adds two views built on the ports, which stores may read
    in fewer round trips."""

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


def operator_store(store: object) -> Store:
    """``store`` if it has the operator's port, else a ``TypeError`` naming what it lacks
    (a store written for the engine alone runs bots, not the toolkit)."""
    if isinstance(store, Store):
        return store
    if not isinstance(store, SessionStore):
        raise TypeError(
            f"the operator toolkit needs a sync store (fsm.store.Store), got "
            f"{type(store).__name__}: an async store's .sync, or a sync store on the same data"
        )
    missing = sorted(OperatorStore.__abstractmethods__)
    raise TypeError(
        f"{type(store).__name__} implements the engine's port only: the operator toolkit "
        f"needs fsm.store.Store, which adds {', '.join(missing)}"
    )


class AsyncSessionStore(abc.ABC):
    """The engine's port on asyncio, for :class:`fsm.AsyncEngine`: the same seven methods,
    with the same semantics, as :class:`SessionStore`, awaited.

    For the Redis adapters the keys and scripts are the sync store's, so sync and async
    workers serve one deployment side by side. The operator's port stays on the sync stores:
    the ``fsm`` toolkit is synchronous.
    """

    #: As :attr:`SessionStore.takes_lease_on_save`.
    takes_lease_on_save: bool = False

    @abc.abstractmethod
    async def load(self, user_key: str, *, message_id: str | None = None) -> Loaded:
        """As :meth:`SessionStore.load`."""

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
        """As :meth:`SessionStore.save`."""

    @abc.abstractmethod
    async def history(self, user_key: str, *, limit: int | None = None) -> list[HistoryEntry]:
        """As :meth:`SessionStore.history`."""

    @abc.abstractmethod
    async def lock_and_load(
        self, user_key: str, owner: str, ttl: float, *, message_id: str | None = None
    ) -> Loaded | None:
        """As :meth:`SessionStore.lock_and_load`."""

    @abc.abstractmethod
    async def release_lock(self, user_key: str, owner: str) -> bool:
        """As :meth:`SessionStore.release_lock`."""

    @abc.abstractmethod
    async def extend_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """As :meth:`SessionStore.extend_lock`."""

    @abc.abstractmethod
    async def quarantine(self, user_key: str, raw: bytes, reason: str) -> str | None:
        """As :meth:`SessionStore.quarantine`."""

    #: As :attr:`SessionStore.keeps_timers`.
    keeps_timers: bool = False

    async def index_due(self, user_key: str, armed: str, due: float) -> None:
        """As :meth:`SessionStore.index_due`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    async def claim_due(self, now: float, *, limit: int, hold: float) -> list[Due]:
        """As :meth:`SessionStore.claim_due`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    async def settle_due(self, entries: Sequence[Due]) -> None:
        """As :meth:`SessionStore.settle_due`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    async def due_stats(self, now: float) -> DueStats:
        """As :meth:`SessionStore.due_stats`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of deadlines")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections; the store is unusable afterwards."""


class AsyncStore(AsyncSessionStore):
    """An async store with the few operator reads that async code needs beside the engine's
    port (a test, a health check): the sync store's methods of the same names, awaited."""

    @abc.abstractmethod
    async def ttl(self, user_key: str) -> float | None:
        """As :meth:`OperatorStore.ttl`."""

    @abc.abstractmethod
    async def delete(self, user_key: str) -> bool:
        """As :meth:`OperatorStore.delete`."""

    @abc.abstractmethod
    async def lock_info(self, user_key: str) -> LockInfo | None:
        """As :meth:`OperatorStore.lock_info`."""

    async def acquire_lock(self, user_key: str, owner: str, ttl: float) -> bool:
        """As :meth:`SessionStore.acquire_lock`."""
        return (await self.lock_and_load(user_key, owner, ttl)) is not None


def check_save_arguments(
    ttl: float,
    version: int,
    expected_version: int,
    owner: str | None,
    release: bool,
    lease: float | None = None,
) -> None:
    """The argument checks every :meth:`SessionStore.save` makes (``ValueError``)."""
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
    """Jittered exponential delays between attempts to take a lock."""
    for attempt in itertools.count():
        yield random.uniform(0, min(cap, start * 2**attempt))
