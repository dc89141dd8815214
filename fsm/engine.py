"""The engine: one message in, replies out, the conversation saved in between.

Theory of operation, per message (:meth:`Engine.handle`):

1. **Load** the user's record; if the message id was already applied, acknowledge and stop.
2. **Restore** the snapshot. Absent: a new conversation at the flow's initial stage (with a
   notice when the history shows the session expired), its version continuing the old chain so
   no version is ever reused. Undecodable or inconsistent with the flow: quarantine the bytes
   unchanged, reset to the safe stage, report it. Written by newer code: refuse, touch nothing.
3. **Decide** (:mod:`fsm.decide`, no I/O of its own). In a protected stage without a valid
   token the user is sent to the auth stage along the flow's own edges, with a resume point.
   Otherwise the current step's handler reads the message and returns an
   :class:`~fsm.step.Outcome`; the flow's machine checks its event. A handler marked
   ``side_effects`` runs under the user's lease lock, after a reload made under that lock, so
   two workers never run it for the same state.
4. **Save** by compare-and-set on the version, with the history entry and the message id in the
   same atomic write. On a version conflict, go back to 1 (with jitter; after a few conflicts
   under the user's lock), bounded by ``max_attempts``, then :class:`~fsm.errors.ConflictError`.
5. **Act.** If the saved state is at an *action* step (:func:`fsm.flow.action`: an API call
   that changes something), take the user's lease, and run the action on that state with its
   idempotency key; save its outcome by compare-and-set like any other (step 4). An action left
   pending by a worker that died is run first by the next message for that user, or by a
   re-delivery of the same one, before the message itself is applied.
6. **Return** the replies of every save, only now that the state that expects the answer is
   stored.

Nothing is swallowed: a handler's exception surfaces as :class:`~fsm.errors.StepFailed` with the
stored snapshot unchanged; store failures surface as :class:`~fsm.errors.StoreUnavailable`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from adapters.base import HistoryEntry, Loaded, Record, SaveStatus
from fsm.auth import TokenVerifier
from fsm.clock import SYSTEM_CLOCK, Clock
from fsm.decide import Decider, Decision
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
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from fsm.stats import EngineStats

if TYPE_CHECKING:
    from adapters.base import Store

log = logging.getLogger("fsm.engine")

MAX_USER_KEY = 256


@dataclass(frozen=True, slots=True)
class Result:
    """What :meth:`Engine.handle` returns: replies to send and the snapshot now stored.

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


@dataclass(frozen=True, slots=True)
class _Restored:
    """The conversation a message applies to, and what the store holds now."""

    snapshot: Snapshot
    expected_version: int  # what the compare-and-set expects: 0 when nothing is stored
    expected_tag: str = ""  # and the write that stored it, where the store keeps tags
    notices: tuple[Reply, ...] = ()
    expired: bool = False


#: After this many lost compare-and-sets in one message, take the user's lock for the rest:
#: under heavy contention on one user, queueing beats retrying.
LOCK_AFTER_CONFLICTS = 3

#: Actions (:func:`fsm.flow.action`) may lead to further actions; more than this many in a row
#: for one message is a flow bug (a loop), reported as :class:`~fsm.errors.StepFailed`.
MAX_ACTIONS = 8


class Engine:
    """Runs a flow against a store.

    >>> from adapters import MemoryStore
    >>> engine = Engine(my_flow, MemoryStore())            # doctest: +SKIP
    >>> result = engine.handle("263770000001", "hi")       # doctest: +SKIP
    >>> result.snapshot.stage, [r.body for r in result.replies]   # doctest: +SKIP
    """

    def __init__(
        self,
        flow: Flow,
        store: Store,
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
        abandon_notice: str = (
            "We could not finish your last request and cannot tell whether it went through. "
            "Please check before you try again."
        ),
    ) -> None:
        if session_ttl <= 0 or lock_ttl <= 0 or lock_wait < 0:
            raise ValueError("session_ttl and lock_ttl must be > 0, lock_wait >= 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.flow = flow
        self.spec: FlowSpec = type(flow).spec
        if self.spec.machine.protected and verifier is None:
            raise ValueError(f"flow {self.spec.name!r} has protected stages: pass a TokenVerifier")
        self.store = store
        self.verifier = verifier
        self.session_ttl = float(session_ttl)
        self.max_attempts = max_attempts
        self.lock_ttl = float(lock_ttl)
        self.lock_wait = float(lock_wait)
        self.clock = clock
        self._source = source
        self._host = socket.gethostname()
        self.expired_notice = expired_notice
        self.reset_notice = reset_notice
        self.auth_notice = auth_notice
        self.abandon_notice = abandon_notice
        self.stats = EngineStats()
        self._recent = RecentRecords(recent)
        self._decider = Decider(
            flow,
            verifier=verifier,
            stats=self.stats,
            source=lambda: self.source,
            auth_notice=auth_notice,
        )

    def __repr__(self) -> str:
        return f"Engine(flow={self.spec.name!r}, store={type(self.store).__name__})"

    @property
    def source(self) -> str:
        """What this engine writes into ``update_from``: host and pid unless configured."""
        return self._source or f"{self._host}:{os.getpid()}"  # pid read now: forks differ

    # -- public API -------------------------------------------------------------------------
    def handle(self, user_id: str, text: str, *, message_id: str | None = None) -> Result:
        """Apply one user message and return the replies, after the new state is saved.

        ``user_id`` is the conversation key chosen by the transport (a phone number, a chat
        id). ``message_id``, when the transport has one, makes re-deliveries harmless: a
        message id already applied for this user is acknowledged (``result.duplicate``)
        without being applied again.
        """
        key = _check_key(user_id)
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        if message_id is not None and (not isinstance(message_id, str) or not message_id):
            raise ValueError("message_id must be a non-empty string or None")
        decider = self._decider
        owner: str | None = None
        # Versions never go back: a session restarted after this call quarantined its record
        # continues above that record's version (None: nothing quarantined).
        floor: int | None = None
        notices: tuple[Reply, ...] = ()  # said once even if the save is retried
        conflicts = actions = version = 0
        message_due = True  # the message is not applied yet (False once saved, or if seen)
        duplicate = False
        said: list[Reply] = []  # replies of the saves this call made, in order
        events: list[str] = []
        stored: Snapshot | None = None  # the last snapshot this call saved
        known: _Restored | None = None  # set when we hold the lease and just saved
        leased_at = 0.0  # when our lease was taken or last renewed (monotonic)
        # What the next pass works on without asking the store: the record this process saw
        # last (the compare-and-set makes a stale one harmless), a conflict reply's current
        # record, or what the lock was taken with. None: load it.
        ready = self._recent.get(key)
        try:
            # Each pass loads at most once (or reuses what it just saved under the lease);
            # passes that reload under a new lock, after a lost quarantine race or after an
            # action are bounded too, so this loop always ends.
            for _ in range(3 * self.max_attempts + 3 * MAX_ACTIONS + 2):
                locked = False
                if known is not None:
                    restored, known = known, None
                else:
                    if ready is None:
                        mid = message_id if message_due else None
                        started = time.perf_counter()
                        try:
                            ready = self.store.load(key, message_id=mid)
                        finally:  # failures too: they are the slowest, and the ones to see
                            self.stats.observe("load", time.perf_counter() - started)
                        self._remember(key, ready.record)
                    loaded, ready = ready, None
                    locked = loaded.locked and owner is None
                    if loaded.seen and message_due:
                        if said or self._pending_action(key, loaded.record) is None:
                            return self._duplicate(key, loaded.record, said, stored, events)
                        # Applied before, but the worker that applied it left an action
                        # pending (it died or lost its lease): finish that, say its replies.
                        message_due, duplicate = False, True
                        self.stats.incr("duplicates")
                    try:
                        restored = self._restore(key, loaded.record, floor)
                    except CorruptSnapshot as exc:
                        assert loaded.record is not None
                        self._recent.forget(key)
                        if self._quarantine(key, loaded.record, exc):
                            floor = max(floor or 0, loaded.record.version)
                            notices = (Reply(self.reset_notice),)
                        continue  # reload: it is gone now, or someone rewrote it meanwhile
                current = restored.snapshot
                version = current.version
                at_action = decider.is_action(current)
                if not message_due and not at_action:
                    latest = (
                        current if stored is None or current.version >= stored.version else stored
                    )
                    return Result(tuple(said), latest, duplicate, tuple(events))
                notices = restored.notices or notices
                needs_lock = (
                    at_action
                    or conflicts >= LOCK_AFTER_CONFLICTS
                    or decider.side_effects(current)
                    or locked  # someone holds the lease: queue behind them, do not race
                )
                if owner is None and needs_lock:
                    # Lock and load in one step: the state may have moved meanwhile.
                    owner, ready = self._lock(key, message_id if message_due else None)
                    leased_at = time.monotonic()
                    self._remember(key, ready.record)
                    continue
                if at_action and owner is not None and self._lease_aging(leased_at):
                    # Renew a lease taken a while ago before running an action under it.
                    if not self._lease_held(key, owner):
                        owner = None  # it lapsed: someone else may be running it; re-lock
                        continue
                    leased_at = time.monotonic()
                # A pending action runs before the message: the message was typed after the
                # prompt that led to it, and is applied to the state the action leaves.
                text_in, mid = ("", None) if at_action else (text, message_id)
                try:
                    decision = decider.decide(key, current, text_in, mid, notices, self.clock.now())
                except (StepFailed, StepNotFound, TransitionNotAllowed, TokenRefused) as exc:
                    if not (at_action and message_due):
                        raise
                    # A new message waits behind an action that fails: give up the action
                    # rather than lock the user out of their conversation.
                    decision = self._abandon(key, current, exc, notices)
                new = decision.snapshot
                # The last save of this call (the message applied, no action next) frees the
                # lease in the same step.
                last = (not message_due or not at_action) and not decider.is_action(new)
                payload = self._encode(key, decision)
                started = time.perf_counter()
                try:
                    saved = self.store.save(
                        key,
                        payload,
                        version=new.version,
                        expected_version=restored.expected_version,
                        expected_tag=restored.expected_tag,
                        ttl=self.session_ttl,
                        history=self._history(current, decision),
                        message_id=mid,
                        owner=owner,
                        release=last and owner is not None,
                    )
                finally:
                    self.stats.observe("save", time.perf_counter() - started)
                if saved.saved:
                    stored_record = Record(payload, new.version, saved.tag)
                    self._remember(key, stored_record)
                    if last:
                        owner = None  # released with the save
                    self._count(current, decision, expired=restored.expired)
                    # Decoded from the bytes just stored, so it equals what a later load sees.
                    stored = decode_snapshot(payload, user_key=key)
                    said.extend(decision.replies)
                    events.extend(decision.events)
                    notices = ()
                    if at_action:
                        actions += 1
                        self.stats.incr("actions")
                        if actions > MAX_ACTIONS:
                            raise StepFailed(
                                stored.stage, stored.step, user_key=key, version=stored.version
                            ) from RuntimeError(f"more than {MAX_ACTIONS} actions in a row")
                    else:
                        message_due = False
                    if not message_due and not decider.is_action(stored):
                        return Result(tuple(said), stored, duplicate, tuple(events))
                    if owner is not None:  # nobody else writes while we hold the lease
                        known = _Restored(stored, stored.version, expected_tag=saved.tag)
                    else:  # an action is pending: lock next, with no read before
                        ready = Loaded(stored_record)
                    continue  # an action is pending now (or the message still is)
                self._remember(key, saved.current)
                if decision.side_effects:
                    # The side effect already ran and someone else wrote meanwhile, or holds
                    # the lease now (ours had expired). Retrying could run it twice: report,
                    # do not retry.
                    self.stats.incr("conflicts")
                    self._lease_lost(key)
                    raise ConflictError(
                        key,
                        attempts=conflicts + 1,
                        version=version,
                        detail="another worker wrote while a side-effecting step ran; "
                        "its effect happened but this result was not saved",
                    )
                if saved.status is SaveStatus.DUPLICATE:
                    # As if a load had said so: the next pass acknowledges it, or finishes an
                    # action the worker that applied it left pending.
                    ready = Loaded(saved.current, seen=True)
                    continue
                if saved.status is SaveStatus.LOCKED:
                    # Another worker holds the lease (running a side effect): queue behind it.
                    self.stats.incr("lock_waits")
                    if owner is not None:  # ours lapsed and was taken: start over, re-locking
                        self._lease_lost(key)
                        owner = None
                    ready = Loaded(saved.current, locked=True)
                    continue
                conflicts += 1
                self.stats.incr("conflicts")
                if conflicts >= self.max_attempts:
                    break
                ready = Loaded(saved.current)  # the reply carries the current record: no read
                time.sleep(random.uniform(0, 0.001 * conflicts))
            raise ConflictError(key, attempts=conflicts, version=version)
        except FsmError as exc:
            # Earlier saves of this call (an action finished first) happened and were not said:
            # the error carries their replies so the transport can still send them.
            exc.replies = tuple(said)
            raise
        finally:
            if owner is not None:
                self._release(key, owner)

    def peek(self, user_id: str) -> Snapshot | None:
        """The stored snapshot, decoded, without changing anything (None if absent)."""
        record = self.store.load(_check_key(user_id)).record
        return None if record is None else decode_snapshot(record.payload, user_key=user_id)

    # -- restore ----------------------------------------------------------------------------
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

    def _restore(self, key: str, record: Record | None, floor: int | None) -> _Restored:
        """The snapshot to apply the message to (:class:`CorruptSnapshot` if it is broken).

        ``floor`` is the version of a record this message quarantined: the restarted
        conversation continues above it, at the flow's safe stage."""
        if record is None:
            # Continue the version chain of an expired or reset session, so a worker that
            # stalled on the old session can never compare-and-set onto the new one.
            last = self.store.history(key, limit=1)
            base = max(floor or 0, last[0].version if last else 0)
            if floor is not None:  # we quarantined it: the reset notice is already said
                return _Restored(self._fresh(self.spec.safe_stage, base), 0)
            fresh = self._fresh(self.spec.initial, base)
            if last:  # it existed and is gone: the session expired
                return _Restored(fresh, 0, notices=(Reply(self.expired_notice),), expired=True)
            return _Restored(fresh, 0)
        return _Restored(self._validated(key, record), record.version, expected_tag=record.tag)

    def _quarantine(self, key: str, record: Record, exc: CorruptSnapshot) -> bool:
        """Move the bytes aside unchanged and report it; False if they changed meanwhile."""
        quarantine_id = self.store.quarantine(key, record.payload, exc.detail)
        if quarantine_id is None:
            return False
        self.stats.incr("corrupt")
        log.warning(
            "user %r: corrupt snapshot quarantined as %s: %s", key, quarantine_id, exc.detail
        )
        return True

    def _validated(self, key: str, record: Record) -> Snapshot:
        snapshot = decode_snapshot(record.payload, user_key=key)
        if snapshot.version != record.version:
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
        if moved:
            self.stats.incr("migrated", moved)
        return snapshot

    # -- save -------------------------------------------------------------------------------
    def _encode(self, key: str, decision: Decision) -> bytes:
        snapshot = decision.snapshot
        try:
            return encode_snapshot(snapshot, user_key=key)
        except (TypeError, msgspec.EncodeError) as exc:
            raise StepFailed(
                snapshot.stage, snapshot.step, user_key=key, version=snapshot.version - 1
            ) from exc

    def _history(self, current: Snapshot, decision: Decision) -> HistoryEntry:
        new = decision.snapshot
        return HistoryEntry(
            version=new.version,
            from_stage=current.stage,
            to_stage=new.stage,
            event=",".join(decision.events) or decision.note,
            update_from=new.update_from,
            at=new.last_updated,
            from_step=current.step,
            to_step=new.step,
        )

    def _count(self, current: Snapshot, decision: Decision, *, expired: bool) -> None:
        self.stats.incr("applied")
        if expired:
            self.stats.incr("expired")
        if decision.reauth:
            self.stats.incr("token_refused")
        if decision.events:
            self.stats.incr(f"transitions:{current.stage}->{decision.snapshot.stage}")

    def _remember(self, key: str, record: Record | None) -> None:
        """Keep the record this process saw last for ``key``; report a version that went
        backwards (a failover lost acknowledged writes, or someone restored an old copy)."""
        seen = self._recent.get(key)
        old = seen.record if seen is not None else None
        if record is not None and old is not None:  # noqa: SIM102
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
        self._recent.put(key, record)

    def _release(self, key: str, owner: str) -> None:
        """Free our lease on the way out. A store error here must not replace the result or
        the error being returned: it is logged, and the lease expires on its own."""
        try:
            self.store.release_lock(key, owner)
        except FsmError as exc:
            log.warning("user %r: could not release the lease (%s); it expires by itself", key, exc)

    def _lease_aging(self, leased_at: float) -> bool:
        """Whether a lease taken (or renewed) at ``leased_at`` is old enough to renew before
        another action runs under it. A fresh one is not: that saves a round trip."""
        return time.monotonic() - leased_at > self.lock_ttl / 3

    def _lease_held(self, key: str, owner: str) -> bool:
        """Renew our lease. False if it lapsed meanwhile: another worker may have taken the
        lock, so the caller must stop relying on it (the compare-and-set still decides whose
        state lands); the overlap is reported."""
        if self.store.extend_lock(key, owner, self.lock_ttl):
            return True
        self._lease_lost(key)
        return False

    def _lease_lost(self, key: str) -> None:
        self.stats.incr("lease_lost")
        log.warning("user %r: the lease expired during a step (lock_ttl=%ss)", key, self.lock_ttl)

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
        return Decision(new, replies, (), side_effects=False, note="abandon")

    def _duplicate(
        self,
        key: str,
        record: Record | None,
        said: list[Reply],
        stored: Snapshot | None,
        events: list[str],
    ) -> Result:
        """The message was applied already (by another delivery). Replies this call produced
        (finishing a pending action first) are still returned: they were saved and not said."""
        self.stats.incr("duplicates")
        found = [s for s in (stored, self._readable(key, record)) if s is not None]
        latest = max(found, key=lambda s: s.version) if found else self._fresh(self.spec.initial)
        return Result(tuple(said), latest, True, tuple(events))

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

    def _lock(self, key: str, message_id: str | None) -> tuple[str, Loaded]:
        """Take the user's lease (waiting up to ``lock_wait``) and load under it."""
        self.stats.incr("lock_acquisitions")
        started = time.perf_counter()
        try:
            return self.store.acquire_lease_loaded(
                key, ttl=self.lock_ttl, wait=self.lock_wait, message_id=message_id
            )
        except TimeoutError:
            self.stats.incr("lock_timeouts")
            raise LockTimeout(key, waited=self.lock_wait) from None
        finally:
            self.stats.observe("lock", time.perf_counter() - started)


def _check_key(user_key: str) -> str:
    if not isinstance(user_key, str):
        raise InvalidUserKey(f"must be str, got {type(user_key).__name__}")
    if not user_key or not user_key.strip():
        raise InvalidUserKey("must not be empty")
    if len(user_key) > MAX_USER_KEY:
        raise InvalidUserKey(f"longer than {MAX_USER_KEY} characters")
    if "\x00" in user_key:
        raise InvalidUserKey("must not contain NUL")
    return user_key
