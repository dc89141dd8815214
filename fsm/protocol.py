"""The message protocol: one user message in, replies out, the conversation saved in between.

Written once, with no I/O of its own: :meth:`MessageProtocol.message` is a generator that
yields what it needs done (:mod:`fsm.effects`: store calls, handler calls, sleeps) and is sent
the results. :class:`fsm.Engine` drives it with a :class:`~fsm.store.SessionStore`,
:class:`fsm.AsyncEngine` with an :class:`~fsm.store.AsyncSessionStore`; neither holds any of the
logic below.

Theory of operation, per message (one *pass* of :meth:`MessageProtocol._pass` at a time):

1. **Load** the user's record (:meth:`~MessageProtocol._obtain`); if the message id was
   already applied, acknowledge and stop.
2. **Restore** the snapshot (:mod:`fsm.restore`). Absent: a new conversation at
   the flow's initial stage (with a notice when the history shows the session expired), its
   version continuing the old chain so no version is ever reused. Undecodable or inconsistent
   with the flow: quarantine the bytes unchanged, reset to the safe stage, report it (and so
   for a session on which distinct messages keep failing, :mod:`fsm.poison`). Written by
   newer code: refuse, touch nothing.
3. **Decide** (:meth:`~MessageProtocol._decide`, :mod:`fsm.decide`). In a protected stage
   without a valid token the user is sent to the auth stage along the flow's own edges, with
   a resume point. Otherwise the current step's handler reads the message and returns an
   :class:`~fsm.step.Outcome`; the flow's machine checks its event. A handler marked
   ``side_effects`` runs under the user's lease lock (:mod:`fsm.leases`), after a reload
   made under that lock, so two workers never run it for the same state.
4. **Save** (:meth:`~MessageProtocol._save`) by compare-and-set on the version, with the
   history entry and the message id in the same atomic write (and, with ``outbox=True``,
   the replies: :mod:`fsm.outbox`). On a version conflict, go back
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

import random
import time
from typing import Any

import msgspec

from fsm.attachments import ATTACHMENT_KINDS, ATTACHMENT_TYPES, Attachment
from fsm.decide import Decision
from fsm.effects import Download, Guard, Sleep, StoreCall, Unguard, Upload
from fsm.engine_core import MAX_ACTIONS, S, Steps, log
from fsm.errors import (
    ConflictError,
    CorruptSnapshot,
    FsmError,
    StepFailed,
    StepNotFound,
    TokenRefused,
    TransitionNotAllowed,
)
from fsm.firing import FLOW_FAILURES, Ticking, Verdict
from fsm.history import history_entry
from fsm.inflight import Held, Message, Restored
from fsm.inputs import MAX_USER_KEY as MAX_USER_KEY
from fsm.inputs import check_key, check_message_id, check_text
from fsm.leases import Leasing
from fsm.media import MediaError
from fsm.outbox import MAX_OUTBOX as MAX_OUTBOX
from fsm.outbox import Outbox
from fsm.poison import FAILURES_KEPT as FAILURES_KEPT
from fsm.records import Due, HistoryEntry, Loaded, Record, SaveResult, SaveStatus
from fsm.redaction import mask_user, user_tail
from fsm.reply import Reply
from fsm.result import Result
from fsm.snapshot import Snapshot, decode_snapshot, encode_snapshot
from fsm.snapshot import chain_floor as _chain
from fsm.store import new_owner_token
from fsm.timers import pressed_event

__all__ = ["LOCK_AFTER_CONFLICTS", "MAX_ACTIONS", "MessageProtocol", "Result", "check_key"]

#: After this many lost compare-and-sets in one message, take the user's lock for the rest:
#: under heavy contention on one user, queueing beats retrying.
LOCK_AFTER_CONFLICTS = 3

#: With a send lease, a decision still running after this many seconds takes the user's lease
#: (:meth:`MessageProtocol._guard`): the user's next message waits for it on any worker.
GUARD_AFTER = 0.05


class MessageProtocol(Outbox[S], Ticking[S], Leasing[S]):
    """The engine's per-message algorithm (the theory of operation above); the engines add
    only a driver. Its parts: :class:`~fsm.engine_core.EngineCore` (options and shared
    state), :class:`~fsm.restore.Restoring`, :class:`~fsm.leases.Leasing` and
    :class:`~fsm.outbox.Outbox`.

    Not used directly: build an :class:`fsm.Engine` or an :class:`fsm.AsyncEngine`.
    """

    def message(
        self,
        user_id: str,
        text: str,
        message_id: str | None,
        pressed: str | None = None,
        attachment: Attachment | None = None,
    ) -> Steps[Result]:
        """Apply one user message; returns the replies once the new state is saved."""
        key = check_key(user_id)
        check_text(text)
        check_message_id(message_id)
        if pressed is not None:
            check_text(pressed)
        if attachment is not None and not isinstance(attachment, ATTACHMENT_TYPES):
            raise TypeError(
                f"an attachment is one of fsm.attachments' types, got {type(attachment).__name__}"
            )
        m = Message(key, text, message_id, self._recent.get(key), pressed, attachment)
        tapped = pressed_event(pressed, message_id)
        if tapped is not None and any(name == tapped.name for name, _ in self.spec.events):
            m.event = tapped  # an event's button, from any step
        return (yield from self._run(m))

    def event_steps(
        self, user_id: str, event: str, data: object = None, event_id: str | None = None
    ) -> Steps[Result]:
        """Apply an external event (:meth:`fsm.Engine.notify`): once per ``event_id``."""
        key = check_key(user_id)
        happened = self.new_event(event, data, event_id)
        mid = None if event_id is None else f"event:{event_id}"
        check_message_id(mid)
        m = Message(key, "", mid, self._recent.get(key), event=happened, inbound=False)
        return (yield from self._run(m))

    def fire_steps(self, claim: Due) -> Steps[tuple[Result, Verdict]]:
        """Fire the timer a claimed index entry stands for, if it is due; with the result, what
        becomes of the claim (:class:`~fsm.firing.Verdict`). A timer whose handler fails (the
        flow's bug) is dropped in the same way; a failure after the timer's save landed (an
        action it led to) leaves the action pending for the user's next message, and the
        result carries the replies saved before it."""
        # What this process saved last for the user spares a load (the compare-and-set makes
        # a stale one harmless, and a claim it does not fire is judged again on a fresh load).
        key = claim.user_key
        m = Message(
            key, "", f"timer:{claim.armed}", self._recent.get(key), claim=claim, inbound=False
        )
        try:
            result = yield from self._run(m)
        except FsmError as exc:
            if m.firing is None or m.due or m.stored is None:
                raise
            log.warning(
                "user %s: a timer's firing was saved, then what it led to failed (%s)",
                user_tail(m.key),
                type(exc.__cause__ or exc).__name__,
            )
            # I/O: the claim comes back, and the firing's id, seen, finishes what it left
            # pending (as a message's re-delivery does); the flow's bug: the user's next
            # message meets it.
            verdict = Verdict.RECHECK if exc.transient else m.verdict or Verdict.FIRED
            return Result(tuple(exc.replies), m.stored), verdict
        if result.duplicate:
            return result, Verdict.STALE  # fired before: its id is seen
        if m.verdict is Verdict.LATER:  # pushed back since: indexed again at its soonest
            call = StoreCall("index_due", (claim.user_key, claim.armed, m.later), {})
            yield from self._timed("index", call)
        return result, m.verdict or Verdict.FIRED

    def _run(self, m: Message) -> Steps[Result]:
        """Run the passes of one input (a message, an event or a timer) to its result."""
        key = m.key
        held = self._take_held(key)
        if held is not None:  # our send lease, its confirmation deferred: fold it in
            # (taken for aged: renewed before an action or a side effect runs under it)
            m.owner, m.sent, m.leased_at = held.lease, held.sent, 0.0
        try:
            for _ in range(self._passes):
                result = yield from self._pass(m)
                if result is not None:
                    return result
            raise ConflictError(key, attempts=m.conflicts, version=m.version)
        except GeneratorExit:
            if m.owner is not None and m.sent:  # no I/O now: its flush writes it
                self._hold(key, Held(m.owner, m.sent, m.leased_at, done=True))
            m.owner = None  # abandoned by its driver: no more I/O; the lease expires by itself
            raise
        except BaseException as exc:
            # Whatever failed, the next message reads the store: a cached record must never
            # make an error permanent (the session may be repaired, rolled back or gone).
            self._recent.forget(key)
            if m.lease is not None and m.owner is None:
                m.owner = m.lease  # a send lease kept by a save the caller will not see
            if isinstance(exc, FsmError):
                # Earlier saves of this call (an action finished first) happened and were not
                # said: the error carries their replies so the transport can still send them.
                exc.replies = tuple(m.said)
                if isinstance(exc, FLOW_FAILURES):
                    self._failed(m, exc)
            raise
        finally:
            if m.owner is not None:
                if m.sent:  # the deferred confirmation was not folded into a save
                    self._hold(key, Held(m.owner, m.sent, m.leased_at, done=True))
                else:
                    yield from self._release(key, m.owner)

    def _failed(self, m: Message, exc: FsmError) -> None:
        """The flow's own code failed on this message: what the user is told (the flow's
        ``failure_reply``, or ``delay_reply`` when its action failed on I/O and a re-delivery
        may finish it), and one log line naming the step and the exception's class (never its text,
        which may quote the user's data or a secret)."""
        spec = self.spec
        # Only a message already saved (its action failed) is worth delivering again: the
        # re-delivery is then a duplicate that only finishes the action, same key. A message
        # not applied (a step failed) is not: a newer message may be applied before it comes
        # back, and it would then land on a question it was not typed for.
        exc.transient = not m.due and spec.is_transient(exc)
        exc.notice = Reply(spec.delay_reply if exc.transient else spec.failure_reply)
        cause = exc.__cause__ or exc
        where = f"{exc.stage}.{exc.step}" if isinstance(exc, StepFailed) else "-"
        log.warning(
            "user %s: message %s failed at step %s: %s%s",
            user_tail(m.key),
            m.message_id or "-",
            where,
            type(cause).__name__,
            " (I/O: a re-delivery may finish it)" if exc.transient else "",
        )

    def peek_steps(self, user_id: str) -> Steps[Snapshot | None]:
        """The stored snapshot, decoded, without changing anything (None if absent)."""
        loaded: Loaded = yield StoreCall("load", (check_key(user_id),), {})
        record = loaded.record
        return None if record is None else decode_snapshot(record.payload, user_key=user_id)

    def _pass(self, m: Message) -> Steps[Result | None]:
        """One load-decide-save round. A Result ends the message; None: another pass."""
        at_hand = self._at_hand(m)
        restored = at_hand or (yield from self._obtain(m))
        if not isinstance(restored, Restored):
            return restored
        current = restored.snapshot
        m.version = current.version
        if m.due and (m.claim is not None or m.event is not None):
            ignored = self._outside_input(m, restored)
            if ignored and at_hand is not None and m.stored is None:
                return None  # judged on a record at hand, maybe stale: judge a fresh load
            if ignored and m.inbound:  # a tapped event option that applies nowhere here:
                m.event = None  # the tap is an ordinary message (the step answers it)
            elif ignored:
                m.due = False
                return m.result(current, ignored)
        at_action = self._decider.is_action(current)
        if not m.due and not at_action:
            stored = m.stored
            return m.result(
                current if stored is None or current.version >= stored.version else stored
            )
        if m.owner is None and self._needs_lock(m, current, at_action):
            # Lock and load in one step: the state may have moved meanwhile.
            yield from self._lock(m)
            return None
        acts = at_action or self._decider.side_effects(current)
        if m.event is not None and m.due:
            acts = acts or self._decider.event_side_effects(m.event.name, current)
        if acts and m.owner is not None and self._lease_aging(m.leased_at):
            # Renew a lease taken a while ago (or for sending, or by a guard, which may be
            # near its end) before running an action or a side effect under it.
            if not (yield from self._lease_held(m.key, m.owner)):
                m.owner = None  # it lapsed: someone else may be running it; re-lock
                return None
            m.leased_at = time.monotonic()
        # With a send lease, a decision that takes a while (a slow API lookup) takes the
        # user's lease too, so the user's next message, on another worker, waits for it.
        guard = self._guard(m, at_action)
        if guard is not None:
            lease = self.send_lease or self.lock_ttl
            yield Guard(StoreCall("lock_and_load", (m.key, guard, lease), {}), GUARD_AFTER)
        try:
            # Nothing stored (or expired), not a reset this call made: a new conversation.
            fresh = (restored.expected_version == 0 or restored.fresh) and m.floor is None
            decision = yield from self._decide(m, restored, at_action, fresh)
        except (StepFailed, StepNotFound, TransitionNotAllowed) as exc:
            yield from self._unguard(m, guard)
            if not (yield from self._poisoned(m, restored, exc)):
                raise
            return None  # quarantined: the next pass restarts the user at the safe stage
        yield from self._unguard(m, guard)
        # Files reach the channel before the save, and a record at hand does not say whether
        # this message was applied already (a re-delivery): check it with one load, so that a
        # duplicate uploads nothing (and the decision is not made twice).
        checks = m.cached and m.due and self.media is not None and _files(decision)
        if checks and not (yield from self._unchanged(m, restored)):
            return None  # applied already, or moved on: the next pass works on that load
        return (yield from self._save(m, restored, decision, at_action))

    def _unchanged(self, m: Message, restored: Restored) -> Steps[bool]:
        """Whether the stored conversation is still the one ``restored`` was read from and
        this message is not seen; else the load is kept for the next pass."""
        call = StoreCall("load", (m.key,), {"message_id": m.mid})
        loaded: Loaded = yield from self._timed("load", call)
        record = loaded.record
        same = record is not None and (record.version, record.tag) == (
            restored.expected_version,
            restored.expected_tag,
        )
        if same and not loaded.seen and not loaded.locked:
            return True
        m.ready, m.ready_checked = loaded, True
        return False

    def _outside_input(self, m: Message, restored: Restored) -> str:
        """Check a timer's claim or an event against the conversation: "" to apply it, else
        why not (the timer to fire is kept in ``m.firing``)."""
        if m.event is not None:
            return self._event_ignored(m, restored)
        m.verdict = None  # each pass judges the claim against what it loaded
        m.firing = self._due_timer(m, restored)
        return "" if m.firing is not None else "nothing due"

    def _guard(self, m: Message, at_action: bool) -> str | None:
        """The owner token to take the lease with if deciding ``m`` takes longer than
        :data:`GUARD_AFTER`; None when no lease is taken that way (no send lease, the lease
        held already, or an action's turn: those lock first)."""
        if self.send_lease is None or m.owner is not None or at_action or not m.due:
            return None
        return new_owner_token()

    def _unguard(self, m: Message, guard: str | None) -> Steps[None]:
        """End the guard of :meth:`_guard`: if it took the lease, the lease is ours now."""
        if guard is not None and (yield Unguard()) is not None:
            self.stats.incr("lock_acquisitions")
            m.owner, m.leased_at = guard, 0.0  # taken for aged: renewed before an action

    def _needs_lock(self, m: Message, current: Snapshot, at_action: bool) -> bool:
        return (
            at_action
            or m.conflicts >= LOCK_AFTER_CONFLICTS
            or self._decider.side_effects(current)
            or m.locked  # someone holds the lease: queue behind them, do not race
            or (m.event is not None and self._decider.event_side_effects(m.event.name, current))
        )

    def _at_hand(self, m: Message) -> Restored | None:
        """The conversation this pass works on when getting it takes no store call: what this
        call just saved under the lease, or a record at hand (the recent one, a refusal's)
        with no message id seen and nothing broken in it. None: :meth:`_obtain` it."""
        m.locked, m.cached = False, False
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
        m.cached, m.ready_checked = not m.ready_checked, False
        return restored

    def _obtain(self, m: Message) -> Steps[Restored | Result | None]:
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

    def _duplicate(self, m: Message, record: Record | None) -> Result:
        """The message was applied already (by another delivery). Replies this call produced
        (finishing a pending action first) are still returned: they were saved and not said."""
        self.stats.incr("duplicates")
        found = [s for s in (m.stored, self._readable(m.key, record)) if s is not None]
        latest = max(found, key=lambda s: s.version) if found else self._fresh(self.spec.initial)
        return Result(tuple(m.said), latest, True, tuple(m.events))

    def _decide(
        self, m: Message, restored: Restored, at_action: bool, fresh: bool
    ) -> Steps[Decision]:
        # A pending action runs before the message: the message was typed after the prompt
        # that led to it, and is applied to the state the action leaves.
        text, mid = ("", None) if at_action else (m.text, m.message_id)
        decider = self._decider
        now = self.clock.now()
        current = restored.snapshot
        # What this pass found (an expired session's notice) is said only by this pass: a
        # retry that finds a live session (someone saved meanwhile) does not say it. What the
        # message met earlier (a reset notice after a quarantine) is carried in ``m``.
        notices = restored.notices or m.notices
        if m.event is not None and restored.expired:  # the user did not write: nothing to
            notices = m.notices  # tell them about their old session (a reset notice stays)
        if m.firing is not None and not at_action and self._late(current, m.firing):
            return self._dropped(m, current, m.firing, "late")
        try:
            return (
                yield from decider.decide(
                    m.key,
                    current,
                    text,
                    mid,
                    notices,
                    now,
                    m.pressed,
                    fresh=fresh and m.event is None,
                    verified=restored.claims,
                    event=None if at_action else m.event,
                    timer=None if at_action else m.firing,
                    attachment=None if at_action else m.attachment,
                )
            )
        except (StepFailed, StepNotFound, TransitionNotAllowed, TokenRefused) as exc:
            if m.claim is not None and not at_action:
                dropped = self._failed_timer(m, current, exc)
                if dropped is None:
                    raise
                return dropped
            if not (at_action and m.due):
                raise
            # A new message waits behind an action that fails: give up the action rather
            # than lock the user out of their conversation.
            return self._abandon(m.key, current, exc, notices)

    def _abandon(
        self, key: str, current: Snapshot, exc: FsmError, notices: tuple[Reply, ...]
    ) -> Decision:
        """Give up a pending action that keeps failing: the conversation restarts at the safe
        stage (the token kept, the conversation's data cleared so no half-done request comes
        back), the user is told that the request may or may not have gone through, and the
        error is logged with the action's idempotency key for follow-up (its class, never its
        text: that may quote the user's data, a sensitive key's value or a secret). The
        history entry says "abandon"."""
        self.stats.incr("actions_abandoned")
        log.error(
            "user %s: action %s.%s (idempotency key %s) failed again and was abandoned: %s",
            user_tail(key),
            current.stage,
            current.step,
            mask_user(current.pending or "-", key),
            type(exc.__cause__ or exc).__name__,
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

    def _uploaded(self, decision: Decision) -> Steps[Decision]:
        """``decision`` with every reply made from bytes uploaded to the media channel and
        kept by its media id (:mod:`fsm.media`): no snapshot holds a file, and a resend
        never uploads again."""
        if not _files(decision):
            return decision
        replies = []
        for reply in decision.replies:
            if reply.media is not None and _to_upload(reply):
                media = reply.media
                try:
                    if media.forward:  # a file the user sent, sent back: its bytes first
                        media = media.fetched((yield Download(media.forwarded())))
                    media_id: str = yield Upload(media)
                except Exception as exc:  # told as a MediaError
                    raise self._media_failed(exc, decision) from exc
                self.stats.incr("media_uploads")
                reply = msgspec.structs.replace(reply, media=media.uploaded(media_id))
            replies.append(reply)
        return msgspec.structs.replace(decision, replies=tuple(replies))

    def _media_failed(self, exc: Exception, decision: Decision) -> MediaError:
        """A file that could not reach the channel before the save (nothing is saved): a
        channel out of reach is worth a re-delivery (``transient``: the transport answers
        503 and the user hears the flow's ``delay_reply``), unless the step had side effects
        (a re-delivery would run them again: the user hears the ``failure_reply`` and tries
        again); a file the channel refuses is not either."""
        error = (
            exc if isinstance(exc, MediaError) else MediaError("unavailable", type(exc).__name__)
        )
        error.transient = error.reason == "unavailable" and not decision.side_effects
        reply = self.spec.delay_reply if error.transient else self.spec.failure_reply
        error.notice = Reply(reply)
        log.warning("a reply's file did not reach the media channel: %s", error)
        return error

    def _save(
        self, m: Message, restored: Restored, decision: Decision, at_action: bool
    ) -> Steps[Result | None]:
        """Compare-and-set the decision; a Result if the message is done, None to go on."""
        if self.media is not None:
            decision = yield from self._uploaded(decision)
        decision = self._with_timers(m, restored, decision, at_action)
        if self.outbox:
            decision = self._with_outbox(m, restored.snapshot, decision)
        if m.index is not None:  # the index first: a stored timer is never unindexed
            index = m.index
            yield from self._timed(
                "index", StoreCall("index_due", (m.key, index.armed, index.due), {})
            )
        new = decision.snapshot
        acts_next = self._decider.is_action(new)
        # The last save of this call (the message applied, no action next) frees the lease
        # in the same step, or keeps it as the send lease of the replies it leaves pending; a
        # save that leads to an action takes it in the same step, so the action runs next
        # with no round trip to lock.
        last = (not m.due or not at_action) and not acts_next
        keep = last and bool(new.outbox) and self.send_lease is not None and self._lease_on_save
        leased = (acts_next or keep) and m.owner is None and self._lease_on_save
        owner = new_owner_token() if leased else m.owner
        payload = self._encode(m.key, decision)
        options: dict[str, Any] = {
            "version": new.version,
            "expected_version": restored.expected_version,
            "expected_tag": restored.expected_tag,
            "ttl": self._session_ttl_for(new),
            "history": self._history(restored.snapshot, decision),
            "message_id": None if at_action else m.message_id,
            "owner": owner,
            "release": last and owner is not None and not keep,
        }
        if leased or keep:  # only then: a store that takes no lease on save never sees it
            options["lease"] = self.send_lease if keep else self.lock_ttl
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
        if keep and not saved.unleased:
            m.lease = owner  # the send lease, handed to the caller with the result
        if m.sent:
            folded = sum(1 for o in restored.snapshot.outbox if o.key in m.sent)
            self.stats.incr("outbox_confirmed", folded)
            m.sent = set()
        # (Unleased: it landed on a retry, but the lease is another worker's now. The owner
        # stays unset, so the next pass takes the lease, and reloads, before the action.)
        record = Record(payload, new.version, saved.tag)
        self._count(restored, decision, leased)
        return self._saved(m, restored, decision, record, last, acts_next, at_action, since)

    def _saved(
        self,
        m: Message,
        restored: Restored,
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
            m.known = Restored(stored, stored.version, expected_tag=record.tag)
        else:  # an action is pending: lock next, with no read before
            m.ready = Loaded(record)
        return None  # an action is pending now (or the message still is)

    def _refused(
        self, m: Message, decision: Decision, saved: SaveResult, since: int
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

    def _poisoned(self, m: Message, restored: Restored, exc: FsmError) -> Steps[bool]:
        """Count a failed decision on a stored session; at ``poison_after`` distinct messages
        failing in a row on the same version (this process's count), the session is taken for
        poisoned (data on which the step can only fail): its bytes are quarantined and the
        user restarts with the reset notice, this message applied to the new conversation.
        A failure caused by I/O (an API timing out: one of the flow's ``transient_errors``)
        and a re-delivery of the message that failed last do not count. False: raise it."""
        record = restored.record
        if m.claim is not None or m.event is not None:
            return False  # a timer's failure drops it; an event's goes back to its sender
        if record is None or m.actions or not m.due or self.spec.is_transient(exc):
            return False  # a new conversation, an action's turn, or a transient failure
        failures = self._failures.add(m.key, record.version, m.message_id, self.poison_after)
        if failures < self.poison_after:
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
        return history_entry(current, decision.snapshot, ",".join(decision.events) or decision.note)

    def _count(self, restored: Restored, decision: Decision, leased: bool) -> None:
        """Count a save that landed (``leased``: it took the lease too)."""
        self.stats.incr("applied")
        if restored.expired:
            self.stats.incr("expired")
        if decision.reauth:
            self.stats.incr("token_refused")
        if decision.note in ATTACHMENT_KINDS:  # an attachment the step does not accept
            self.stats.incr("attachments_refused")
        if leased:
            self.stats.incr("lock_acquisitions")
        if decision.events:
            self.stats.incr(f"transitions:{restored.snapshot.stage}->{decision.snapshot.stage}")


def _files(decision: Decision) -> bool:
    """Whether ``decision`` has replies whose files must reach the media channel first."""
    return any(_to_upload(reply) for reply in decision.replies)


def _to_upload(reply: Reply) -> bool:
    """Whether ``reply``'s file must reach the media channel before the save (bytes, or a
    file the user sent that it forwards)."""
    return reply.media is not None and bool(reply.media.data or reply.media.forward)
