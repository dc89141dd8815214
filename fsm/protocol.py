"""The message protocol: one user message in, replies out, the conversation saved in between.

Written once, with no I/O of its own: :meth:`MessageProtocol.message` is a generator that
yields what it needs done (:mod:`fsm.effects`: store calls, handler calls, sleeps) and is sent
the results. :class:`fsm.Engine` drives it with a :class:`~adapters.base.Store`,
:class:`fsm.AsyncEngine` with an :class:`~adapters.base.AsyncStore`; neither holds any of the
logic below.

Theory of operation, per message (one *pass* of :meth:`MessageProtocol._pass` at a time):

1. **Load** the user's record (:meth:`~MessageProtocol._obtain`); if the message id was
   already applied, acknowledge and stop.
2. **Restore** the snapshot (:meth:`~MessageProtocol._restore`). Absent: a new conversation at
   the flow's initial stage (with a notice when the history shows the session expired), its
   version continuing the old chain so no version is ever reused. Undecodable or inconsistent
   with the flow: quarantine the bytes unchanged, reset to the safe stage, report it. Written
   by newer code: refuse, touch nothing.
3. **Decide** (:meth:`~MessageProtocol._decide`, :mod:`fsm.decide`). In a protected stage
   without a valid token the user is sent to the auth stage along the flow's own edges, with
   a resume point. Otherwise the current step's handler reads the message and returns an
   :class:`~fsm.step.Outcome`; the flow's machine checks its event. A handler marked
   ``side_effects`` runs under the user's lease lock, after a reload made under that lock, so
   two workers never run it for the same state.
4. **Save** (:meth:`~MessageProtocol._save`) by compare-and-set on the version, with the
   history entry and the message id in the same atomic write. On a version conflict, go back
   to 1 (with jitter; after a few conflicts under the user's lock), bounded by
   ``max_attempts``, then :class:`~fsm.errors.ConflictError`.
5. **Act.** If the saved state is at an *action* step (:func:`fsm.flow.action`: an API call
   that changes something), the save of 4 took the user's lease in the same write; run the
   action on that state with its idempotency key; save its outcome by compare-and-set like
   any other (step 4). An action left pending by a worker that died is run first by the
   next message for that user, or by a re-delivery of the same one, before the message
   itself is applied.
6. **Return** the replies of every save, only now that the state that expects the answer is
   stored. The lease, if this message took it, is freed with the last save or on the way out.

Nothing is swallowed: a handler's exception surfaces as :class:`~fsm.errors.StepFailed` with the
stored snapshot unchanged; store failures surface as :class:`~fsm.errors.StoreUnavailable`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from adapters.base import (
    AsyncStore,
    HistoryEntry,
    Loaded,
    Record,
    SaveResult,
    SaveStatus,
    Store,
    lock_backoff,
    new_owner_token,
)
from fsm.auth import Claims, TokenVerifier
from fsm.clock import SYSTEM_CLOCK, Clock
from fsm.decide import Decider, Decision
from fsm.effects import Sleep, StoreCall
from fsm.effects import Steps as Steps
from fsm.errors import (
    ConflictError,
    CorruptSnapshot,
    FsmError,
    InvalidUserKey,
    LockTimeout,
    SchemaTooNew,
    StepFailed,
    StepNotFound,
    TokenRefused,
    TransitionNotAllowed,
)
from fsm.flow import Flow, FlowSpec
from fsm.migrations import MigrationError, apply_flow_migrations
from fsm.recent import RecentRecords
from fsm.reply import Reply
from fsm.snapshot import (
    VERSION_LIMIT,
    Outgoing,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from fsm.snapshot import chain_floor as _chain
from fsm.stats import EngineStats

log = logging.getLogger("fsm.engine")

S = TypeVar("S", Store, AsyncStore)

MAX_USER_KEY = 256

#: After this many lost compare-and-sets in one message, take the user's lock for the rest:
#: under heavy contention on one user, queueing beats retrying.
LOCK_AFTER_CONFLICTS = 3

#: How many failed messages for one user keep the failures' record apart, per process.
FAILURES_KEPT = 10_000

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

#: The most replies an outbox keeps pending for one user (a channel down for long while the
#: user goes on typing): past it the oldest are dropped, logged and counted.
MAX_OUTBOX = 64


class Result(msgspec.Struct, frozen=True):
    """What ``handle`` returns: replies to send and the snapshot now stored.

    ``duplicate`` is true when the message id had already been applied; ``snapshot`` is then
    what is stored (or, if the session has since expired or is unreadable, a fresh one at the
    initial stage with version 0). A duplicate usually has no replies, but not always: if the
    worker that applied it died before its action ran, this delivery ran the action and
    returns its replies. Send ``replies`` whenever there are any, duplicate or not.
    """

    replies: tuple[Reply, ...]
    snapshot: Snapshot
    duplicate: bool = False
    events: tuple[str, ...] = ()

    @property
    def texts(self) -> list[str]:
        return [reply.render() for reply in self.replies]

    @property
    def outbox(self) -> tuple[Outgoing, ...]:
        """With ``outbox=True``: every reply saved and not yet confirmed sent, oldest first
        (this message's, and any an earlier delivery could not send). Send these, not
        ``replies``, then :meth:`~fsm.Engine.confirm` the ones the channel accepted."""
        return self.snapshot.outbox


class _Restored(msgspec.Struct, frozen=True):
    """The conversation a message applies to, and what the store holds now."""

    snapshot: Snapshot
    expected_version: int  # what the compare-and-set expects: 0 when nothing is stored
    expected_tag: str = ""  # and the write that stored it, where the store keeps tags
    notices: tuple[Reply, ...] = ()
    expired: bool = False
    record: Record | None = None  # the stored bytes it was read from (None: nothing stored)
    claims: Claims | None = None  # its token's claims, verified by this process, when known


class _Message(msgspec.Struct):
    """Where one message stands: the state the passes of :meth:`MessageProtocol.message`
    share (one mutable object per call; a Struct, so making it is one C call)."""

    key: str
    text: str
    message_id: str | None
    #: What the next pass works on without asking the store: the record this process saw
    #: last (the compare-and-set makes a stale one harmless), a conflict reply's current
    #: record, or what the lock was taken with. None: load it.
    ready: Loaded | None
    pressed: str | None = None
    due: bool = True  # the message is not applied yet (False once saved, or if seen)
    duplicate: bool = False  # it was applied before; this delivery finishes its action
    owner: str | None = None  # our lease's owner token while we hold it
    leased_at: float = 0.0  # when the lease was taken or last renewed (monotonic)
    locked: bool = False  # the last load said another worker holds the lease
    #: Versions never go back: a session restarted after this call quarantined its record
    #: continues above that record's version (None: nothing quarantined).
    floor: int | None = None
    notices: tuple[Reply, ...] = ()  # said once even if the save is retried
    #: Replies still pending in a poisoned session this call quarantined: carried into the
    #: restarted conversation's outbox, so healing loses no reply.
    carried: tuple[Outgoing, ...] = ()
    conflicts: int = 0
    actions: int = 0
    version: int = 0
    said: list[Reply] = msgspec.field(default_factory=list)  # replies of this call's saves
    events: list[str] = msgspec.field(default_factory=list)
    stored: Snapshot | None = None  # the last snapshot this call saved
    known: _Restored | None = None  # set when we hold the lease and just saved

    def __repr__(self) -> str:
        return f"_Message(key={self.key!r}, version={self.version}, due={self.due})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # not the text, the lease, the replies
        return [("key", self.key), ("version", self.version), ("due", self.due)]

    @property
    def mid(self) -> str | None:
        """The message id to check and record, while the message is still to be applied."""
        return self.message_id if self.due else None

    def result(self, snapshot: Snapshot) -> Result:
        return Result(tuple(self.said), snapshot, self.duplicate, tuple(self.events))


class MessageProtocol(Generic[S]):
    """The engine's options and its per-message algorithm; the engines add only a driver.

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
        session_ttl: float = 30 * 60,
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
    ) -> None:
        if session_ttl <= 0 or lock_ttl <= 0 or lock_wait < 0:
            raise ValueError("session_ttl and lock_ttl must be > 0, lock_wait >= 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if poison_after < 1:
            raise ValueError("poison_after must be >= 1")
        self.flow = flow
        self.spec: FlowSpec = type(flow).spec
        if self.spec.machine.protected and verifier is None:
            raise ValueError(f"flow {self.spec.name!r} has protected stages: pass a TokenVerifier")
        self.store: S = store
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
        #: (:class:`~fsm.snapshot.Outgoing`, :meth:`confirm_steps`): a transport that must
        #: never lose a reply turns it on (the WhatsApp transport does).
        self.outbox = outbox
        # user key -> (version, messages failing in a row at that version, the last one's id)
        self._failures: OrderedDict[str, tuple[int, int, str | None]] = OrderedDict()
        self._decider = Decider(
            flow,
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flow={self.spec.name!r}, store={type(self.store).__name__})"

    @property
    def source(self) -> str:
        """What this engine writes into ``update_from``: host and pid unless configured."""
        return self._source or _Process.name  # forks differ

    # -- the protocol -----------------------------------------------------------------------
    def message(
        self, user_id: str, text: str, message_id: str | None, pressed: str | None = None
    ) -> Steps[Result]:
        """Apply one user message; returns the replies once the new state is saved."""
        key = check_key(user_id)
        check_text(text)
        check_message_id(message_id)
        if pressed is not None:
            check_text(pressed)
        m = _Message(key, text, message_id, self._recent.get(key), pressed)
        try:
            for _ in range(self._passes):
                result = yield from self._pass(m)
                if result is not None:
                    return result
            raise ConflictError(key, attempts=m.conflicts, version=m.version)
        except GeneratorExit:
            m.owner = None  # abandoned by its driver: no more I/O; the lease expires by itself
            raise
        except BaseException as exc:
            # Whatever failed, the next message reads the store: a cached record must never
            # make an error permanent (the session may be repaired, rolled back or gone).
            self._recent.forget(key)
            if isinstance(exc, FsmError):
                # Earlier saves of this call (an action finished first) happened and were not
                # said: the error carries their replies so the transport can still send them.
                exc.replies = tuple(m.said)
            raise
        finally:
            if m.owner is not None:
                yield from self._release(key, m.owner)

    def peek_steps(self, user_id: str) -> Steps[Snapshot | None]:
        """The stored snapshot, decoded, without changing anything (None if absent)."""
        loaded: Loaded = yield StoreCall("load", (check_key(user_id),), {})
        record = loaded.record
        return None if record is None else decode_snapshot(record.payload, user_key=user_id)

    def _pass(self, m: _Message) -> Steps[Result | None]:
        """One load-decide-save round. A Result ends the message; None: another pass."""
        restored = self._at_hand(m) or (yield from self._obtain(m))
        if not isinstance(restored, _Restored):
            return restored
        current = restored.snapshot
        m.version = current.version
        at_action = self._decider.is_action(current)
        if not m.due and not at_action:
            stored = m.stored
            return m.result(
                current if stored is None or current.version >= stored.version else stored
            )
        m.notices = restored.notices or m.notices
        if m.owner is None and self._needs_lock(m, current, at_action):
            # Lock and load in one step: the state may have moved meanwhile.
            yield from self._lock(m)
            return None
        if at_action and m.owner is not None and self._lease_aging(m.leased_at):
            # Renew a lease taken a while ago before running an action under it.
            if not (yield from self._lease_held(m.key, m.owner)):
                m.owner = None  # it lapsed: someone else may be running it; re-lock
                return None
            m.leased_at = time.monotonic()
        try:
            # Nothing stored, and not a reset this call made: a new (or expired) conversation.
            fresh = restored.expected_version == 0 and m.floor is None
            decision = yield from self._decide(m, restored, at_action, fresh)
        except (StepFailed, StepNotFound, TransitionNotAllowed) as exc:
            if not (yield from self._poisoned(m, restored, exc)):
                raise
            return None  # quarantined: the next pass restarts the user at the safe stage
        return (yield from self._save(m, restored, decision, at_action))

    def _needs_lock(self, m: _Message, current: Snapshot, at_action: bool) -> bool:
        return (
            at_action
            or m.conflicts >= LOCK_AFTER_CONFLICTS
            or self._decider.side_effects(current)
            or m.locked  # someone holds the lease: queue behind them, do not race
        )

    # -- load and restore -------------------------------------------------------------------
    def _at_hand(self, m: _Message) -> _Restored | None:
        """The conversation this pass works on when getting it takes no store call: what this
        call just saved under the lease, or a record at hand (the recent one, a refusal's)
        with no message id seen and nothing broken in it. None: :meth:`_obtain` it."""
        m.locked = False
        if m.known is not None:
            restored, m.known = m.known, None
            return restored
        loaded = m.ready
        if loaded is None or loaded.record is None or loaded.seen:
            return None
        try:
            restored = self._stored(m.key, loaded.record)
        except CorruptSnapshot:
            return None  # _obtain quarantines it
        m.ready = None
        m.locked = loaded.locked and m.owner is None
        return restored

    def _obtain(self, m: _Message) -> Steps[_Restored | Result | None]:
        """The conversation this pass works on (:meth:`_at_hand` found none); a Result if the
        message was applied already; None after quarantining a broken record (the next pass
        reloads)."""
        loaded = m.ready
        if loaded is None:
            since = self._recent.tick()
            call = StoreCall("load", (m.key,), {"message_id": m.mid})
            loaded = yield from self._timed("load", call)
            self._remember(m.key, loaded.record, since)
        m.ready = None
        m.locked = loaded.locked and m.owner is None
        if loaded.seen and m.due:
            if m.said or self._pending_action(m.key, loaded.record) is None:
                return self._duplicate(m, loaded.record)
            # Applied before, but the worker that applied it left an action pending (it died
            # or lost its lease): finish that, and say its replies.
            m.due, m.duplicate = False, True
            self.stats.incr("duplicates")
        try:
            return (yield from self._restore(m.key, loaded.record, m.floor))
        except CorruptSnapshot as exc:
            assert loaded.record is not None
            self._recent.forget(m.key)
            if (yield from self._quarantine(m.key, loaded.record, exc)):
                m.floor = max(m.floor or 0, _chain(loaded.record.version))
                m.notices = (Reply(self.reset_notice),)
            return None  # reload: it is gone now, or someone rewrote it meanwhile

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

    def _restore(self, key: str, record: Record | None, floor: int | None) -> Steps[_Restored]:
        """The snapshot to apply the message to (:class:`CorruptSnapshot` if it is broken).

        ``floor`` is the version of a record this message quarantined: the restarted
        conversation continues above it, at the flow's safe stage."""
        if record is not None:
            return self._stored(key, record)
        # Continue the version chain of an expired or reset session, so a worker that stalled
        # on the old session can never compare-and-set onto the new one.
        last: list[HistoryEntry] = yield StoreCall("history", (key,), {"limit": 1})
        base = max(floor or 0, _chain(last[0].version) if last else 0)
        if floor is not None:  # we quarantined it: the reset notice is already said
            return _Restored(self._fresh(self.spec.safe_stage, base), 0)
        fresh = self._fresh(self.spec.initial, base)
        if last:  # it existed and is gone: the session expired
            return _Restored(fresh, 0, notices=(Reply(self.expired_notice),), expired=True)
        return _Restored(fresh, 0)

    def _stored(self, key: str, record: Record) -> _Restored:
        """The conversation ``record`` holds (:class:`CorruptSnapshot` if it is broken), with
        the claims of its token when this process verified them."""
        snapshot = self._validated(key, record)
        claims = self._recent.claims(key, record)
        return _Restored(snapshot, record.version, record.tag, record=record, claims=claims)

    def _quarantine(self, key: str, record: Record, exc: CorruptSnapshot) -> Steps[bool]:
        """Move the bytes aside unchanged and report it; False if they changed meanwhile."""
        quarantine_id = yield StoreCall("quarantine", (key, record.payload, exc.detail), {})
        if quarantine_id is None:
            return False
        self.stats.incr("corrupt")
        log.warning(
            "user %r: corrupt snapshot quarantined as %s: %s", key, quarantine_id, exc.detail
        )
        return True

    def _validated(self, key: str, record: Record) -> Snapshot:
        if record.version > VERSION_LIMIT:
            raise CorruptSnapshot(
                f"version {record.version} is above the limit {VERSION_LIMIT} - at `$.version`",
                raw=record.payload,
                user_key=key,
            )
        known = self._recent.snapshot(key, record)
        if known is not None:  # this process saved these very bytes: checked already
            return known
        snapshot = decode_snapshot(record.payload, user_key=key)
        if snapshot.version != record.version:  # so it is within the limit too
            raise CorruptSnapshot(
                f"snapshot version {snapshot.version} != stored version {record.version}"
                " - at `$.version`",
                raw=record.payload,
                user_key=key,
            )
        snapshot = self._migrated(key, snapshot, record)
        problem = self.spec.problem_with(snapshot)
        if problem is not None:
            raise CorruptSnapshot(problem, raw=record.payload, user_key=key)
        if snapshot.flow_version > self.spec.version:
            # Written by a newer deploy of this flow: not corrupt, just not ours to rewrite.
            raise SchemaTooNew(
                snapshot.flow_version, self.spec.version, user_key=key, what="flow version"
            )
        return snapshot

    def _migrated(self, key: str, snapshot: Snapshot, record: Record) -> Snapshot:
        """Apply the flow's migrations (:func:`fsm.migrations.apply_flow_migrations`) to a
        snapshot written by an older flow version; the result is still checked against the
        flow. A migration that fails makes the record unreadable (quarantined, kept)."""
        try:
            snapshot, moved = apply_flow_migrations(snapshot, self.spec)
        except MigrationError as exc:
            raise CorruptSnapshot(str(exc), raw=record.payload, user_key=key) from exc
        if not moved:
            return snapshot
        self.stats.incr("migrated", moved)
        # Through its bytes once: what a migration wrote is then exactly what a load returns
        # (every snapshot the engine works on is), and bytes it cannot store are found here.
        try:
            return decode_snapshot(encode_snapshot(snapshot, user_key=key), user_key=key)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError, CorruptSnapshot) as exc:
            raise CorruptSnapshot(
                f"migrated snapshot cannot be stored: {type(exc).__name__}",
                raw=record.payload,
                user_key=key,
            ) from exc

    def _duplicate(self, m: _Message, record: Record | None) -> Result:
        """The message was applied already (by another delivery). Replies this call produced
        (finishing a pending action first) are still returned: they were saved and not said."""
        self.stats.incr("duplicates")
        found = [s for s in (m.stored, self._readable(m.key, record)) if s is not None]
        latest = max(found, key=lambda s: s.version) if found else self._fresh(self.spec.initial)
        return Result(tuple(m.said), latest, True, tuple(m.events))

    def _readable(self, key: str, record: Record | None) -> Snapshot | None:
        if record is None:
            return None
        try:
            return decode_snapshot(record.payload, user_key=key)
        except CorruptSnapshot:
            return None  # reported on the next real message, which quarantines it

    def _pending_action(self, key: str, record: Record | None) -> Snapshot | None:
        """The stored snapshot if it is valid and waits at an action step, else None (a broken
        one is quarantined, with its notice, by the next new message)."""
        if record is None:
            return None
        try:
            snapshot = self._validated(key, record)
        except (CorruptSnapshot, SchemaTooNew):
            return None
        return snapshot if self._decider.is_action(snapshot) else None

    # -- decide -----------------------------------------------------------------------------
    def _decide(
        self, m: _Message, restored: _Restored, at_action: bool, fresh: bool
    ) -> Steps[Decision]:
        # A pending action runs before the message: the message was typed after the prompt
        # that led to it, and is applied to the state the action leaves.
        text, mid = ("", None) if at_action else (m.text, m.message_id)
        decider = self._decider
        now = self.clock.now()
        current = restored.snapshot
        try:
            return (
                yield from decider.decide(
                    m.key,
                    current,
                    text,
                    mid,
                    m.notices,
                    now,
                    m.pressed,
                    fresh=fresh,
                    verified=restored.claims,
                )
            )
        except (StepFailed, StepNotFound, TransitionNotAllowed, TokenRefused) as exc:
            if not (at_action and m.due):
                raise
            # A new message waits behind an action that fails: give up the action rather
            # than lock the user out of their conversation.
            return self._abandon(m.key, current, exc, m.notices)

    def _abandon(
        self, key: str, current: Snapshot, exc: FsmError, notices: tuple[Reply, ...]
    ) -> Decision:
        """Give up a pending action that keeps failing: the conversation restarts at the safe
        stage (the token kept, the conversation's data cleared so no half-done request comes
        back), the user is told that the request may or may not have gone through, and the
        error is logged with the action's idempotency key for follow-up. The history entry
        says "abandon"."""
        self.stats.incr("actions_abandoned")
        log.error(
            "user %r: action %s.%s (idempotency key %s) failed again and was abandoned: %r",
            key,
            current.stage,
            current.step,
            current.pending or "-",
            exc.__cause__ or exc,
        )
        safe = self.spec.safe_stage
        new = msgspec.structs.replace(
            current,
            stage=safe,
            step=self.spec.stages[safe].entry,
            option="",
            data={},
            resume=None,
            pending="",
            version=current.version + 1,
            last_updated=self.clock.now(),
            update_from=self.source,
        )
        replies = (*notices, Reply(self.abandon_notice))
        return Decision(new, replies, (), side_effects=False, note="abandon", plain=True)

    # -- save -------------------------------------------------------------------------------
    def _save(
        self, m: _Message, restored: _Restored, decision: Decision, at_action: bool
    ) -> Steps[Result | None]:
        """Compare-and-set the decision; a Result if the message is done, None to go on."""
        new = decision.snapshot
        acts_next = self._decider.is_action(new)
        # The last save of this call (the message applied, no action next) frees the lease
        # in the same step; a save that leads to an action takes it in the same step, so the
        # action runs next with no round trip to lock.
        last = (not m.due or not at_action) and not acts_next
        leased = acts_next and m.owner is None and self._lease_on_save
        owner = new_owner_token() if leased else m.owner
        if self.outbox:
            decision = self._with_outbox(m, restored.snapshot, decision)
            new = decision.snapshot
        payload = self._encode(m.key, decision)
        options: dict[str, Any] = {
            "version": new.version,
            "expected_version": restored.expected_version,
            "expected_tag": restored.expected_tag,
            "ttl": self.session_ttl,
            "history": self._history(restored.snapshot, decision),
            "message_id": None if at_action else m.message_id,
            "owner": owner,
            "release": last and owner is not None,
        }
        if leased:  # only then: a store that takes no lease on save never sees the option
            options["lease"] = self.lock_ttl
        call = StoreCall("save", (m.key, payload), options)
        since = self._recent.tick()
        try:
            saved: SaveResult = yield from self._timed("save", call)
        except BaseException:
            if leased:
                m.owner = owner  # it may have been taken: the way out frees it if it is ours
            raise
        if not saved.saved:
            yield from self._refused(m, decision, saved, since)
            return None
        if leased and not saved.unleased:
            m.owner, m.leased_at = owner, time.monotonic()
        # (Unleased: it landed on a retry, but the lease is another worker's now. The owner
        # stays unset, so the next pass takes the lease, and reloads, before the action.)
        record = Record(payload, new.version, saved.tag)
        self._count(restored, decision, leased)
        return self._saved(m, restored, decision, record, last, acts_next, at_action, since)

    def _with_outbox(self, m: _Message, stored: Snapshot, decision: Decision) -> Decision:
        """``decision`` with its replies appended to the outbox of what is stored (the
        oldest dropped, and counted, past :data:`MAX_OUTBOX`)."""
        new = decision.snapshot
        added = tuple(
            Outgoing(new.version, index, m.message_id or "", reply)
            for index, reply in enumerate(decision.replies)
        )
        outbox = (stored.outbox or m.carried) + added
        if len(outbox) > MAX_OUTBOX:
            dropped = len(outbox) - MAX_OUTBOX
            self.stats.incr("outbox_dropped", dropped)
            log.error(
                "user %r: %d unsent replies dropped from the outbox (more than %d pending)",
                m.key,
                dropped,
                MAX_OUTBOX,
            )
            outbox = outbox[dropped:]
        if outbox == new.outbox:
            return decision
        # A handler may build a Reply with a list of options: decode the stored outbox.
        return msgspec.structs.replace(
            decision,
            plain=False,
            snapshot=msgspec.structs.replace(new, outbox=outbox),
        )

    def _saved(
        self,
        m: _Message,
        restored: _Restored,
        decision: Decision,
        record: Record,
        last: bool,
        acts_next: bool,
        at_action: bool,
        since: int,
    ) -> Result | None:
        """Book a successful save; a Result if the message is done (no action pending).
        ``acts_next``: the saved state is at an action step; ``at_action``: so was the one
        it was made from."""
        # What a later load of these bytes gives: the decision's own snapshot when its data is
        # plain (every value as decoding returns it), else decoded from the bytes just stored.
        # (Its data's depth was checked when the step produced it.)
        stored = m.stored = (
            decision.snapshot
            if decision.plain
            else decode_snapshot(record.payload, user_key=m.key, check_depth=False)
        )
        self._remember(m.key, record, since, stored, decision.claims)
        if last:
            m.owner = None  # released with the save
        m.said.extend(decision.replies)
        m.events.extend(decision.events)
        m.notices = ()
        m.carried = ()  # in the outbox now
        if at_action:
            m.actions += 1
            self.stats.incr("actions")
            if m.actions > MAX_ACTIONS:
                raise StepFailed(
                    stored.stage, stored.step, user_key=m.key, version=stored.version
                ) from RuntimeError(f"more than {MAX_ACTIONS} actions in a row")
        else:
            m.due = False
        if not m.due and not acts_next:
            return m.result(stored)
        if m.owner is not None:  # nobody else writes while we hold the lease
            m.known = _Restored(stored, stored.version, expected_tag=record.tag)
        else:  # an action is pending: lock next, with no read before
            m.ready = Loaded(record)
        return None  # an action is pending now (or the message still is)

    def _refused(
        self, m: _Message, decision: Decision, saved: SaveResult, since: int
    ) -> Steps[None]:
        """The compare-and-set refused: set up the next pass (or raise when it must not)."""
        self._remember(m.key, saved.current, since)
        if decision.side_effects:
            # The side effect already ran and someone else wrote meanwhile, or holds the
            # lease now (ours had expired). Retrying could run it twice: report, do not retry.
            self.stats.incr("conflicts")
            self._lease_lost(m.key)
            raise ConflictError(
                m.key,
                attempts=m.conflicts + 1,
                version=m.version,
                detail="another worker wrote while a side-effecting step ran; "
                "its effect happened but this result was not saved",
            )
        if saved.status is SaveStatus.DUPLICATE:
            # As if a load had said so: the next pass acknowledges it, or finishes an action
            # the worker that applied it left pending.
            m.ready = Loaded(saved.current, seen=True)
            return
        if saved.status is SaveStatus.LOCKED:
            # Another worker holds the lease (running a side effect): queue behind it.
            self.stats.incr("lock_waits")
            if m.owner is not None:  # ours lapsed and was taken: start over, re-locking
                self._lease_lost(m.key)
                m.owner = None
            m.ready = Loaded(saved.current, locked=True)
            return
        m.conflicts += 1
        self.stats.incr("conflicts")
        if m.conflicts >= self.max_attempts:
            raise ConflictError(m.key, attempts=m.conflicts, version=m.version)
        m.ready = Loaded(saved.current)  # the reply carries the current record: no read
        yield Sleep(random.uniform(0, 0.001 * m.conflicts))

    def _poisoned(self, m: _Message, restored: _Restored, exc: FsmError) -> Steps[bool]:
        """Count a failed decision on a stored session; at ``poison_after`` distinct messages
        failing in a row on the same version (this process's count), the session is taken for
        poisoned (data on which the step can only fail): its bytes are quarantined and the
        user restarts with the reset notice, this message applied to the new conversation.
        A failure caused by I/O (an API timing out: ``OSError``) and a re-delivery of the
        message that failed last do not count. False: raise it."""
        record = restored.record
        if record is None or m.actions or not m.due or isinstance(exc.__cause__, OSError):
            return False  # a new conversation, an action's turn, or a transient failure
        version, failures, last = self._failures.pop(m.key, (record.version, 0, None))
        if version != record.version:
            failures, last = 0, None
        if m.message_id is None or m.message_id != last:
            failures += 1
        if failures < self.poison_after:
            self._failures[m.key] = (record.version, failures, m.message_id)
            while len(self._failures) > FAILURES_KEPT:
                self._failures.popitem(last=False)
            return False
        current = restored.snapshot
        reason = (
            f"step {current.stage}.{current.step} failed {failures} times in a row "
            f"({type(exc.__cause__ or exc).__name__}) - poisoned session"
        )
        self._recent.forget(m.key)
        if (
            yield from self._quarantine(m.key, record, CorruptSnapshot(reason, raw=record.payload))
        ):
            self.stats.incr("poisoned")
            m.carried = current.outbox
            m.floor = max(m.floor or 0, _chain(record.version))
            m.notices = (Reply(self.reset_notice),)
        return True

    def _encode(self, key: str, decision: Decision) -> bytes:
        snapshot = decision.snapshot
        try:
            return encode_snapshot(snapshot, user_key=key)
        except (TypeError, msgspec.EncodeError) as exc:
            raise StepFailed(
                snapshot.stage, snapshot.step, user_key=key, version=snapshot.version - 1
            ) from exc

    def _history(self, current: Snapshot, decision: Decision) -> HistoryEntry:
        return _entry(current, decision.snapshot, ",".join(decision.events) or decision.note)

    def _count(self, restored: _Restored, decision: Decision, leased: bool) -> None:
        """Count a save that landed (``leased``: it took the lease too)."""
        self.stats.incr("applied")
        if restored.expired:
            self.stats.incr("expired")
        if decision.reauth:
            self.stats.incr("token_refused")
        if leased:
            self.stats.incr("lock_acquisitions")
        if decision.events:
            self.stats.incr(f"transitions:{restored.snapshot.stage}->{decision.snapshot.stage}")

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
                "user %r: the stored version went back from %d to %d (failover with lost "
                "writes, or an old copy restored); continuing from what is stored",
                key,
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

    # -- the outbox -------------------------------------------------------------------------
    def confirm_steps(self, user_id: str, sent: Iterable[tuple[int, int]]) -> Steps[bool]:
        """Drop the outbox entries whose :attr:`~fsm.snapshot.Outgoing.key` is in ``sent``
        (the channel accepted them), by compare-and-set like any save, with a history entry
        ("sent") so the version chain stays whole. True once none of them is pending; False
        if that could not be saved (they stay pending: sent again rather than lost)."""
        key = check_key(user_id)
        done = frozenset(sent)
        if not done:
            return True
        ready: Loaded | None = self._recent.get(key)
        delays = lock_backoff()
        for _ in range(self.max_attempts):
            if ready is None:
                since = self._recent.tick()
                ready = yield from self._timed("load", StoreCall("load", (key,), {}))
                self._remember(key, ready.record, since)
            record, ready = ready.record, None
            current = self._confirmable(key, record)
            if current is None or not any(o.key in done for o in current.outbox):
                return True  # nothing of it left to drop
            keep = tuple(o for o in current.outbox if o.key not in done)
            new = msgspec.structs.replace(
                current,
                outbox=keep,
                version=current.version + 1,
                last_updated=self.clock.now(),
                update_from=self.source,
            )
            assert record is not None
            saved = yield from self._save_confirm(key, record, current, new)
            if saved.saved:
                self.stats.incr("outbox_confirmed", len(current.outbox) - len(keep))
                return True
            ready = Loaded(saved.current)
            if saved.status is SaveStatus.LOCKED:
                yield Sleep(next(delays))  # an action runs for this user: let it finish
        self.stats.incr("outbox_confirm_failures")
        return False

    def _confirmable(self, key: str, record: Record | None) -> Snapshot | None:
        """The stored snapshot whose outbox to trim; None if there is none we may rewrite
        (absent, corrupt, or newer code's: the next message deals with those)."""
        if record is None:
            return None
        try:
            return self._validated(key, record)
        except (CorruptSnapshot, SchemaTooNew, MigrationError):
            return None

    def _save_confirm(
        self, key: str, record: Record, current: Snapshot, new: Snapshot
    ) -> Steps[SaveResult]:
        payload = encode_snapshot(new, user_key=key)
        call = StoreCall(
            "save",
            (key, payload),
            {
                "version": new.version,
                "expected_version": record.version,
                "expected_tag": record.tag,
                "ttl": self.session_ttl,
                "history": _entry(current, new, "sent"),
            },
        )
        since = self._recent.tick()
        saved: SaveResult = yield from self._timed("save", call)
        if saved.saved:
            self._remember(key, Record(payload, new.version, saved.tag), since, new)
        else:
            self._remember(key, saved.current, since)
        return saved

    # -- the lease --------------------------------------------------------------------------
    def _lock(self, m: _Message) -> Steps[None]:
        """Take the user's lease (waiting up to ``lock_wait``, jittered backoff) and load under
        it: the next pass works on what the lock was taken with."""
        self.stats.incr("lock_acquisitions")
        owner = new_owner_token()
        call = StoreCall("lock_and_load", (m.key, owner, self.lock_ttl), {"message_id": m.mid})
        started = time.perf_counter()
        # Waiting is real time even on a fake clock: the holder needs real time to finish.
        deadline = time.monotonic() + self.lock_wait
        delays = lock_backoff()
        try:
            while (loaded := (yield from self._lock_attempt(m, owner, call))) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats.incr("lock_timeouts")
                    raise LockTimeout(m.key, waited=self.lock_wait)
                yield Sleep(min(next(delays), left))
        finally:
            self.stats.observe("lock", time.perf_counter() - started)
        m.owner, m.ready, m.leased_at = owner, loaded, time.monotonic()

    def _lock_attempt(self, m: _Message, owner: str, call: StoreCall) -> Steps[Loaded | None]:
        since = self._recent.tick()
        try:
            loaded: Loaded | None = yield call
        except Exception:
            raise  # the store already freed a lock whose outcome it could not tell
        except BaseException:
            # Cancelled mid-call: the lock may be ours now. The way out frees it (only if it is
            # ours), rather than leaving the user locked out until its TTL.
            m.owner = owner
            raise
        if loaded is not None:
            self._remember(m.key, loaded.record, since)
        return loaded

    def _release(self, key: str, owner: str) -> Steps[None]:
        """Free our lease on the way out. A store error here must not replace the result or
        the error being returned: it is logged, and the lease expires on its own."""
        try:
            yield StoreCall("release_lock", (key, owner), {})
        except FsmError as exc:
            log.warning("user %r: could not release the lease (%s); it expires by itself", key, exc)

    def _lease_aging(self, leased_at: float) -> bool:
        """Whether a lease taken (or renewed) at ``leased_at`` is old enough to renew before
        another action runs under it. A fresh one is not: that saves a round trip."""
        return time.monotonic() - leased_at > self.lock_ttl / 3

    def _lease_held(self, key: str, owner: str) -> Steps[bool]:
        """Renew our lease. False if it lapsed meanwhile: another worker may have taken the
        lock, so the caller must stop relying on it (the compare-and-set still decides whose
        state lands); the overlap is reported."""
        if (yield StoreCall("extend_lock", (key, owner, self.lock_ttl), {})):
            return True
        self._lease_lost(key)
        return False

    def _lease_lost(self, key: str) -> None:
        self.stats.incr("lease_lost")
        log.warning("user %r: the lease expired during a step (lock_ttl=%ss)", key, self.lock_ttl)


def _entry(current: Snapshot, new: Snapshot, event: str) -> HistoryEntry:
    """The history entry of the save that turns ``current`` into ``new``."""
    return HistoryEntry(
        version=new.version,
        from_stage=current.stage,
        to_stage=new.stage,
        event=event,
        update_from=new.update_from,
        at=new.last_updated,
        from_step=current.step,
        to_step=new.step,
    )


def check_key(user_key: str) -> str:
    """``user_key`` if it can name a conversation, else :class:`InvalidUserKey` (the same
    answer on every store: none sees a key that another would refuse)."""
    if not isinstance(user_key, str):
        raise InvalidUserKey(f"must be str, got {type(user_key).__name__}")
    if not user_key or not user_key.strip():
        raise InvalidUserKey("must not be empty")
    if len(user_key) > MAX_USER_KEY:
        raise InvalidUserKey(f"longer than {MAX_USER_KEY} characters")
    if "\x00" in user_key:
        raise InvalidUserKey("must not contain NUL")
    if not _is_unicode(user_key):
        raise InvalidUserKey("must be valid Unicode text (it holds a lone surrogate)")
    return user_key


def check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not _is_unicode(text):
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)")


def check_message_id(message_id: str | None) -> None:
    if message_id is None:
        return
    if not isinstance(message_id, str) or not message_id:
        raise ValueError("message_id must be a non-empty string or None")
    if not _is_unicode(message_id):
        raise ValueError("message_id must be valid Unicode (it holds a lone surrogate)")


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates, which no store can keep)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
