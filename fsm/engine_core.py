"""What every part of the message protocol shares: the engine's options and state.

:class:`EngineCore` holds the flow, the store, the clock, the stats, the records this process
saw last and the per-process failure count, and the two things every store call goes through
(:meth:`~EngineCore._timed`, :meth:`~EngineCore._remember`). The protocol's parts build on it,
each in its own module: restoring a stored conversation (:mod:`fsm.restore`), the lease
(:mod:`fsm.leases`), the outbox (:mod:`fsm.outbox`), and the pass that ties them together
(:mod:`fsm.protocol`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, ClassVar, Generic, TypeVar

from fsm.auth import Claims, TokenVerifier
from fsm.clock import SYSTEM_CLOCK, Clock
from fsm.decide import Decider
from fsm.effects import Steps as Steps
from fsm.effects import StoreCall
from fsm.flow import Flow, FlowSpec
from fsm.inflight import Held
from fsm.media import MediaChannel
from fsm.poison import FailureCount
from fsm.recent import RecentRecords
from fsm.records import Record
from fsm.redaction import user_tail
from fsm.snapshot import Snapshot
from fsm.stats import EngineStats
from fsm.store import AsyncSessionStore, SessionStore

log = logging.getLogger("fsm.engine")

#: Said first when a user's outbox overflowed (:data:`fsm.outbox.MAX_OUTBOX`): the replies
#: kept are the newest.
DROPPED_NOTICE = "Some of our earlier messages could not be delivered. Here are the latest."

#: The store an engine runs on: the engine's port, sync or async.
S = TypeVar("S", SessionStore, AsyncSessionStore)

#: Actions (:func:`fsm.flow.action`) may lead to further actions; more than this many in a row
#: for one message is a flow bug (a loop), reported as :class:`~fsm.errors.StepFailed`.
MAX_ACTIONS = 8


class _Process:
    """``host:pid`` of this process, made once and again after each fork (``os.getpid()`` is
    a system call, and ``source`` names the writer by it on every save)."""

    name = ""

    @classmethod
    def named(cls) -> None:
        cls.name = f"{socket.gethostname()}:{os.getpid()}"


_Process.named()
os.register_at_fork(after_in_child=_Process.named)


class EngineCore(Generic[S]):
    """The engine's options and the state its protocol shares (see the module's doc).

    Not used directly: build an :class:`fsm.Engine` or an :class:`fsm.AsyncEngine`.
    """

    #: The handler call modes (:func:`fsm.flow.call_mode`) this engine's driver runs by
    #: calling the handler in place: the protocol calls those itself instead of yielding a
    #: :class:`~fsm.effects.HandlerCall`, which is the same call without the round trip.
    calls_in_place: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        flow: Flow,
        store: S,
        *,
        verifier: TokenVerifier | None = None,
        session_ttl: float | None = None,
        max_attempts: int = 10,
        lock_ttl: float = 30.0,
        lock_wait: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        source: str | None = None,
        expired_notice: str = "Your session expired, so we are starting again.",
        reset_notice: str = "Something went wrong with your conversation; we are starting again.",
        auth_notice: str = "Your sign-in has expired. Please sign in again to continue.",
        recent: int = 10_000,
        poison_after: int = 3,
        abandon_notice: str = (
            "We could not finish your last request and cannot tell whether it went through. "
            "Please check before you try again."
        ),
        outbox: bool = False,
        send_lease: float | None = None,
        dropped_notice: str = DROPPED_NOTICE,
        media: MediaChannel | None = None,
    ) -> None:
        self.spec: FlowSpec = type(flow).spec
        if session_ttl is None:
            session_ttl = self.spec.session_ttl
        if session_ttl <= 0 or lock_ttl <= 0 or lock_wait < 0:
            raise ValueError("session_ttl and lock_ttl must be > 0, lock_wait >= 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if poison_after < 1:
            raise ValueError("poison_after must be >= 1")
        if send_lease is not None and not send_lease > 0:
            raise ValueError("send_lease must be > 0 seconds, or None")
        self.flow = flow
        if self.spec.machine.protected and verifier is None:
            raise ValueError(f"flow {self.spec.name!r} has protected stages: pass a TokenVerifier")
        self.store: S = store
        _check_timers(self.spec, store, float(session_ttl))
        self.verifier = verifier
        self.session_ttl = float(session_ttl)
        self.max_attempts = max_attempts
        self.lock_ttl = float(lock_ttl)
        self.lock_wait = float(lock_wait)
        self.clock = clock
        self._source = source
        self.expired_notice = expired_notice
        self.reset_notice = reset_notice
        self.auth_notice = auth_notice
        self.abandon_notice = abandon_notice
        self.stats = EngineStats()
        self._recent = RecentRecords(recent)
        # Whether a save that leads to an action can take the lease in the same step.
        self._lease_on_save = bool(getattr(store, "takes_lease_on_save", False))
        self.poison_after = poison_after
        #: Keep each save's replies in the snapshot until the transport confirms them sent
        #: (:class:`~fsm.snapshot.Outgoing`, :meth:`~fsm.outbox.Outbox.confirm_steps`): a
        #: transport that must never lose a reply turns it on (the WhatsApp transport does).
        self.outbox = outbox
        #: Where files go and come from (:mod:`fsm.media`): a reply made from bytes is
        #: uploaded before its save, and ``ctx.download()`` fetches a file the user sent.
        self._media: MediaChannel | None = None
        #: Hold the user's lease while sending the outbox, for this many seconds at most
        #: (:mod:`fsm.outbox`): None for no send lease. Needs ``outbox`` and a store that
        #: takes the lease on save; the WhatsApp transport sets it.
        self.send_lease = send_lease
        self.dropped_notice = dropped_notice
        #: Send leases this process holds with confirmations not written yet, by user key.
        self._held: dict[str, Held] = {}
        self._failures = FailureCount()
        self._decider = Decider(
            flow,
            media=media,
            verifier=verifier,
            stats=self.stats,
            source=lambda: self.source,
            auth_notice=auth_notice,
            in_place=self.calls_in_place,
        )
        # Each pass loads at most once (or reuses what it just saved under the lease); passes
        # that reload under a new lock, after a lost quarantine race or after an action are
        # bounded too, so a message always ends.
        self._passes = 3 * self.max_attempts + 3 * MAX_ACTIONS + 2
        self.media = media

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flow={self.spec.name!r}, store={type(self.store).__name__})"

    @property
    def media(self) -> MediaChannel | None:
        """Where files go and come from (:mod:`fsm.media`): a reply made from bytes is
        uploaded before its save, and ``ctx.download()`` fetches a file the user sent. A
        transport may set it (the WhatsApp one sets the Graph API's when none is given)."""
        return self._media

    @media.setter
    def media(self, channel: MediaChannel | None) -> None:
        self._media = self._decider.media = channel

    @property
    def source(self) -> str:
        """What this engine writes into ``update_from``: host and pid unless configured."""
        return self._source or _Process.name  # forks differ

    def _fresh(self, stage: str, version: int = 0) -> Snapshot:
        return Snapshot(
            flow=self.spec.name,
            stage=stage,
            step=self.spec.stages[stage].entry,
            version=version,
            flow_version=self.spec.version,
            last_updated=self.clock.now(),
            update_from=self.source,
        )

    def _session_ttl_for(self, snapshot: Snapshot) -> float:
        """The TTL a save gives ``snapshot``: the session's, or longer while a timer that
        extends the session is armed (a full session after it is due)."""
        ttl = self.session_ttl
        for timer in snapshot.timers:
            spec = self.spec.timers.get((snapshot.stage, snapshot.step, timer.name))
            if spec is not None and spec.extends_session:
                ttl = max(ttl, timer.due - snapshot.last_updated + self.session_ttl)
        return ttl

    def _take_held(self, key: str) -> Held | None:
        """The send lease this process holds for ``key`` with its confirmation deferred, taken
        out of :attr:`_held` so the caller folds the confirmation into its own save; None if
        there is none, or its sending is not over."""
        held = self._held.get(key)
        if held is None or not held.done:
            return None
        del self._held[key]
        return held

    def _hold(self, key: str, held: Held) -> None:
        """Keep ``held`` for ``key``: its confirmation is written later (:meth:`_flush_later`),
        or folded into the user's next save in this process."""
        self._held[key] = held
        self._flush_later(key)

    def _flush_later(self, key: str) -> None:
        """Have the held confirmation of ``key`` written soon. Engines without a loop to do it
        on never defer a confirmation, so there is nothing to do here."""

    def _remember(
        self,
        key: str,
        record: Record | None,
        since: int,
        snapshot: Snapshot | None = None,
        claims: Claims | None = None,
    ) -> None:
        """Keep the record this process saw last for ``key`` (read by a request sent at
        ``since``, a :meth:`RecentRecords.tick`); report a version that went backwards (a
        failover lost acknowledged writes, or someone restored an old copy)."""
        old = self._recent.put(key, record, since, snapshot, claims)
        if record is None or old is None or record.version == 0:
            return  # version 0: foreign bytes, reported as corruption when quarantined
        # Lower, or the same version written by another write: a write we saw was lost.
        if record.version < old.version or (
            record.version == old.version and record.tag and old.tag and record.tag != old.tag
        ):
            self.stats.incr("version_regressions")
            log.error(
                "user %s: the stored version went back from %d to %d (failover with lost "
                "writes, or an old copy restored); continuing from what is stored",
                user_tail(key),
                old.version,
                record.version,
            )

    def _timed(self, operation: str, call: StoreCall) -> Steps[Any]:
        """``call``, its duration observed in the store latency histogram (failures too: they
        are the slowest, and the ones to see)."""
        started = time.perf_counter()
        try:
            return (yield call)
        finally:
            self.stats.observe(operation, time.perf_counter() - started)


def _check_timers(spec: FlowSpec, store: object, session_ttl: float) -> None:
    """A flow with timers needs a store that keeps the index of deadlines, and each timer
    must be able to fire within the session unless it extends it (``ValueError``)."""
    if not spec.timers:
        return
    if not getattr(store, "keeps_timers", False):
        raise ValueError(
            f"flow {spec.name!r} declares timers, and {type(store).__name__} keeps no index "
            "of deadlines (fsm.store.SessionStore.keeps_timers): use a store that does"
        )
    for timer in spec.timers.values():
        if not callable(timer.after) and not timer.extends_session and timer.after >= session_ttl:
            raise ValueError(
                f"timer {timer.name!r} of {timer.stage}.{timer.step} is due after "
                f"{timer.after:g}s, when the session ({session_ttl:g}s) is over: shorten it, "
                "lengthen session_ttl, or declare it with extends_session=True"
            )
