"""Timers and events in the message protocol: arming on save, firing what is due, notifying.

Theory of operation.

**Arming.** Each save derives the conversation's timers from the one it replaces
(:meth:`Firing._with_timers`): the timers of the step it arrives at are armed when it arrives
(due ``after`` from now), kept while it stays, pushed back by the user's own message (unless
``rearm=False``), consumed when fired, cancelled when it leaves. They are stored in the
snapshot (:class:`~fsm.snapshot.Armed`), so they change by compare-and-set with the state.

**The index.** The store keeps an index of deadlines (:meth:`~fsm.store.SessionStore.index_due`):
one entry per arming, ``(user, armed)`` due at the soonest timer, where ``armed`` (kept in
the snapshot) is ``"<version>.<random>"`` of the save that indexed it. A save whose soonest
timer is sooner than the stored one (or that fires one) makes a new entry, written to the
index *before* the save: a stored timer is never missing from the index, even where the
index cannot be written in the same step as the session (Redis Cluster). An entry may stand
for nothing (the save lost its compare-and-set; the timers were cancelled or pushed back):
every entry is checked against the stored snapshot before anything fires.

**Firing.** A ticker claims due entries (:meth:`~fsm.store.SessionStore.claim_due`: atomic,
hidden from other tickers for :data:`CLAIM_HOLD` seconds, due again if the ticker dies) and
runs each through the message protocol as input of its own (:meth:`Firing.fire_steps`):
load; if the snapshot's ``armed`` is the entry's and a timer is due, decide with that timer's
handler and save by compare-and-set, the timer consumed in the same write, under the
deterministic message id ``timer:<armed>``. So a timer fires once per arming whatever number
of tickers run: a second firing finds it consumed (or its id seen). A claimed entry that is
not the snapshot's is dropped once the stored version has passed the one that armed it (that
save lost, or was superseded); before that it is looked at again (its save may still land).

**Events** (:meth:`Firing.event_steps`) are messages without text: the handler declared for
the conversation's stage, applied once per event id (the seen-id window, as for messages).
"""

from __future__ import annotations

import enum
import secrets

import msgspec

from fsm.decide import Decision
from fsm.effects import StoreCall
from fsm.engine_core import S, Steps, log
from fsm.errors import FsmError, StepFailed, StepNotFound, TokenRefused, TransitionNotAllowed
from fsm.inflight import Message, Restored
from fsm.media import MediaError
from fsm.records import Due
from fsm.redaction import user_tail
from fsm.restore import Restoring
from fsm.result import Result
from fsm.snapshot import Armed, Snapshot
from fsm.timers import Event, TimerSpec

#: How long a ticker's claim hides an index entry from other tickers (seconds): a ticker that
#: dies mid-firing leaves its claims, and they come back due after this.
CLAIM_HOLD = 30.0

#: An entry whose arming save has not landed yet (the stored version is older) is looked at
#: again when its claim runs out, until it is this many seconds past due (that save died with
#: its writer, or failed after the entry was written): then it is dropped.
GIVE_UP = 300.0

#: How many entries a ticker claims at once when not told (:meth:`fsm.Engine.fire_due`).
FIRE_BATCH = 100

#: A timer's handler failing with one of these is the flow's own bug: its timer is dropped.
FLOW_FAILURES = (StepFailed, StepNotFound, TransitionNotAllowed, TokenRefused)


class Verdict(enum.Enum):
    """What becomes of a claimed index entry once checked against the stored snapshot."""

    FIRED = "fired"  # a timer fired (or was dropped late, or failed): settle the claim
    STALE = "stale"  # it stands for nothing any more: settle it
    RECHECK = "recheck"  # its arming save may still land: leave the claim to run out
    LATER = "later"  # its timers were pushed back: index it again at the soonest, settle
    DROPPED = "dropped"  # its timer was consumed without firing (late, or it failed): settle


def armed_version(armed: str) -> int:
    """The version of the save that made the index entry ``armed`` (0 if unreadable)."""
    head = armed.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


class Firing(Restoring[S]):
    """The protocol's timer and event steps (see the module's doc)."""

    def _with_timers(
        self, m: Message, restored: Restored, decision: Decision, at_action: bool
    ) -> Decision:
        """``decision`` with its timers derived from ``stored``'s (the module's doc), a new
        index entry when they need one (``m.index``, written before the save), and the time
        of the user's message when this save applies one."""
        new, stored = decision.snapshot, restored.snapshot
        now = new.last_updated
        typed = m.due and not at_action and m.event is None and m.claim is None
        arrived = restored.expected_version == 0 or restored.fresh
        timers = self._timers_after(m, stored, new, typed, arrived)
        armed = ""
        m.index = None
        if timers:
            soonest = timers[0].due
            before = stored.timers[0].due if stored.timers and stored.armed else None
            if m.claim is not None or before is None or soonest < before:
                armed = f"{new.version}.{secrets.token_hex(3)}"
                # Never in the past: a claim's lateness counts from when it was indexed.
                m.index = Due(m.key, armed, max(soonest, now))
                self.stats.incr("timers_armed")
            else:
                armed = stored.armed
        heard = m.inbound and m.due and not at_action
        inbound = now if heard else new.last_inbound or stored.last_inbound
        if (timers, armed, inbound) == (new.timers, new.armed, new.last_inbound):
            return decision
        dropped = self._cancelled(m, stored, new)
        if dropped:
            self.stats.incr("timers_cancelled", dropped)
        changed = msgspec.structs.replace(new, timers=timers, armed=armed, last_inbound=inbound)
        return msgspec.structs.replace(decision, snapshot=changed)

    def _timers_after(
        self, m: Message, stored: Snapshot, new: Snapshot, typed: bool, arrived: bool
    ) -> tuple[Armed, ...]:
        """The timers ``new`` keeps: see the module's doc. ``typed``: this save applies the
        user's own message; ``arrived``: ``stored`` is a conversation just begun."""
        declared = self.spec.timers_at(new.stage, new.step)
        if not declared:
            return ()
        if arrived or (new.stage, new.step) != (stored.stage, stored.step):
            chosen = {t.name: self._arm(m.key, t, new) for t in declared}
        else:
            chosen = {t.name: t for t in stored.timers}
            if m.claim is not None and m.firing is not None:
                chosen.pop(m.firing.name, None)  # consumed (fired, or dropped late)
            for spec in declared:
                if typed and spec.rearm:
                    chosen[spec.name] = self._arm(m.key, spec, new)
            names = {t.name for t in declared}
            chosen = {name: t for name, t in chosen.items() if name in names}
        return tuple(sorted(chosen.values(), key=lambda t: (t.due, t.name)))

    def _arm(self, key: str, spec: TimerSpec, new: Snapshot) -> Armed:
        """``spec`` armed at ``new``'s step, due from ``new``'s time. A delay the session
        cannot wait for (from a function of the context: constant ones are checked when the
        engine is built) is the flow's bug, raised as StepFailed."""
        ctx = self._decider.context_of(key, new)
        try:
            delay = spec.delay(ctx)
            if delay >= self.session_ttl and not spec.extends_session:
                raise ValueError(
                    f"timer {spec.name!r} is due in {delay:g}s, after the session "
                    f"({self.session_ttl:g}s) is over: declare it with extends_session=True"
                )
        except Exception as exc:
            raise StepFailed(new.stage, new.step, user_key=key, version=new.version - 1) from exc
        return Armed(spec.name, new.last_updated + delay)

    @staticmethod
    def _cancelled(m: Message, stored: Snapshot, new: Snapshot) -> int:
        """How many of ``stored``'s timers this save cancels (leaving their step; the timer a
        firing consumes is not cancelled)."""
        if not stored.timers or (new.stage, new.step) == (stored.stage, stored.step):
            return 0
        return len([t for t in stored.timers if t is not m.firing])

    # -- firing --------------------------------------------------------------------------
    def _due_timer(self, m: Message, restored: Restored) -> Armed | None:
        """The timer the claimed entry ``m.claim`` fires now, or None with ``m.verdict`` saying
        what becomes of the entry (the module's doc)."""
        claim = m.claim
        assert claim is not None
        current = restored.snapshot
        now = self.clock.now()
        if restored.fresh or current.armed != claim.armed:
            # The version the user's conversation reached (a new one continues the chain).
            reached = max(restored.expected_version, current.version)
            if reached >= armed_version(claim.armed) or now - claim.due > GIVE_UP:
                m.verdict = Verdict.STALE
            else:
                m.verdict = Verdict.RECHECK  # its save may still land
            return None
        due = [t for t in current.timers if t.due <= now]
        if not due:  # pushed back since it was indexed: due later
            m.verdict, m.later = Verdict.LATER, current.timers[0].due
            return None
        return due[0]

    def _late(self, snapshot: Snapshot, timer: Armed) -> bool:
        """Whether ``timer`` is too late to fire (its ``max_late`` passed), or no longer
        declared (a deploy removed it): it is then dropped without firing."""
        spec = self.spec.timers.get((snapshot.stage, snapshot.step, timer.name))
        if spec is None:
            return True
        return spec.max_late is not None and self.clock.now() - timer.due > spec.max_late

    def _failed_timer(self, m: Message, current: Snapshot, exc: FsmError) -> Decision | None:
        """The decision that drops the firing timer whose handler failed (the flow's bug: it
        would fail again every tick), logged and counted; None if the failure is transient
        (the claim runs out and the firing is tried again) or not a timer's."""
        if m.firing is None or self.spec.is_transient(exc):
            return None
        log.error(
            "user %s: timer %s.%s.%s failed (%s): dropped",
            user_tail(m.key),
            current.stage,
            current.step,
            m.firing.name,
            type(exc.__cause__ or exc).__name__,
        )
        return self._dropped(m, current, m.firing, "failed")

    def _dropped(self, m: Message, current: Snapshot, timer: Armed, why: str) -> Decision:
        """A decision that consumes ``timer`` without running it (late, undeclared, or its
        handler failed): nothing else changes and nothing is said."""
        m.verdict = Verdict.DROPPED
        self.stats.incr("timers_failed" if why == "failed" else "timers_dropped_late")
        if why != "failed":
            log.warning(
                "user %s: timer %s.%s.%s dropped (%s)",
                user_tail(m.key),
                current.stage,
                current.step,
                timer.name,
                why,
            )
        new = msgspec.structs.replace(
            current,
            version=current.version + 1,
            last_updated=self.clock.now(),
            update_from=self.source,
        )
        return Decision(new, (), (), side_effects=False, note=f"timer-{why}:{timer.name}")

    # -- events --------------------------------------------------------------------------
    def _event_ignored(self, m: Message, restored: Restored) -> str:
        """Why ``m.event`` does not apply to this conversation ("" if it does)."""
        event = m.event
        assert event is not None
        current = restored.snapshot
        handler = self.spec.event_handler(event.name, current.stage)
        if handler is None:
            return f"no handler for event {event.name!r} in stage {current.stage!r}"
        if (restored.expected_version == 0 or restored.fresh) and not handler.starts:
            return "no conversation (the handler does not start one)"
        return ""

    def check_event(self, event: str) -> None:
        """``ValueError`` unless the flow declares a handler for ``event`` somewhere."""
        if not any(name == event for name, _ in self.spec.events):
            known = sorted({name for name, _ in self.spec.events})
            raise ValueError(
                f"flow {self.spec.name!r} declares no event {event!r} (it has {known})"
            )

    def new_event(self, event: str, data: object, event_id: str | None) -> Event:
        """The :class:`Event` for ``notify``'s arguments, checked."""
        self.check_event(event)
        if data is None:
            data = {}
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise TypeError("an event's data is a dict with str keys (JSON-like), or None")
        if event_id is not None and (not isinstance(event_id, str) or not event_id):
            raise ValueError("event_id must be a non-empty str, or None")
        return Event(event, data, event_id)


class Fired(msgspec.Struct, frozen=True):
    """What firing one claimed entry came to: the result when there is something to send
    (None if nothing fired, or the firing failed and is left to be tried again when the claim
    runs out), whether a timer fired, and whether the claim is settled."""

    result: Result | None
    settle: bool
    fired: bool = False


class Ticking(Firing[S]):
    """The ticker's steps around :meth:`MessageProtocol.fire_steps` (one per claimed entry):
    claim, fire each with its failures handled, settle. The engines drive them (the async one
    fires claims concurrently)."""

    #: How long this engine's claims hide an entry from other tickers (:data:`CLAIM_HOLD`):
    #: longer than a firing takes, short enough that a dead ticker's claims come back soon.
    claim_hold: float = CLAIM_HOLD

    def claim_steps(self, limit: int | None) -> Steps[list[Due]]:
        """Claim what is due by the engine's clock (at most ``limit``, else :data:`FIRE_BATCH`)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        now = self.clock.now()
        options = {"limit": limit or FIRE_BATCH, "hold": self.claim_hold}
        call = StoreCall("claim_due", (now,), options)
        claims: list[Due] = yield from self._timed("claim", call)
        return claims

    def fire_one_steps(self, claim: Due) -> Steps[Fired]:
        """Fire one claimed entry (:meth:`MessageProtocol.fire_steps`). A failure of the store,
        of I/O or of a lease leaves the claim to run out, and the entry is tried again then; so
        does an entry whose arming save may still land (:attr:`Verdict.RECHECK`)."""
        try:
            result, verdict = yield from self.fire_steps(claim)  # type: ignore[attr-defined]
        except MediaError as exc:
            if exc.transient:  # the channel out of reach: the claim runs out, tried again then
                self.stats.incr("timer_errors")
                return Fired(None, settle=False)
            self.stats.incr("timers_failed")  # a file the channel refuses: never, retrying
            log.warning("user %s: timer dropped: %s", user_tail(claim.user_key), exc)
            return Fired(None, settle=True)
        except FsmError as exc:
            self.stats.incr("timer_errors")
            log.warning(
                "user %s: timer not fired yet (%s)", user_tail(claim.user_key), type(exc).__name__
            )
            return Fired(None, settle=False)
        fired = verdict is Verdict.FIRED and not result.ignored
        if fired:
            self.stats.incr("timers_fired")
            self.stats.observe("timer_lag", max(0.0, self.clock.now() - claim.due))
        settle = verdict is not Verdict.RECHECK  # else the claim runs out: looked at again
        return Fired(result if result.to_send else None, settle=settle, fired=fired)

    def settle_steps(self, claims: list[Due]) -> Steps[None]:
        if claims:
            yield from self._timed("settle", StoreCall("settle_due", (claims,), {}))
