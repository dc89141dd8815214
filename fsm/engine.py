"""The engine: one message in, replies out, the conversation saved in between.

Theory of operation, per message (:meth:`Engine.handle`):

1. **Load** the user's record; if the message id was already applied, acknowledge and stop.
2. **Restore** the snapshot. Absent: a new conversation at the flow's initial stage (with a
   notice when the history shows the session expired). Undecodable or inconsistent with the
   flow: quarantine the bytes unchanged, reset to the safe stage, report it.
3. **Decide**. In a protected stage without a valid token the user is sent to the auth stage
   along the flow's own edges, with a resume point. Otherwise the current step's handler reads
   the message and returns an :class:`~fsm.step.Outcome`; the flow's machine checks its event.
   A handler marked ``side_effects`` runs under the user's lease lock, after a reload made under
   that lock, so two workers never run it for the same state.
4. **Save** by compare-and-set on the version, with the history entry and the message id in the
   same atomic write. On a version conflict, go back to 1 (bounded, with jitter), then
   :class:`~fsm.errors.ConflictError`.
5. **Return** the replies, only now that the state that expects the answer is stored.

Nothing is swallowed: a handler's exception surfaces as :class:`~fsm.errors.StepFailed` with the
stored snapshot unchanged; store failures surface as :class:`~fsm.errors.StoreUnavailable`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from adapters.base import HistoryEntry, Record, SaveStatus
from fsm.auth import TokenVerifier
from fsm.clock import SYSTEM_CLOCK, Clock
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
from fsm.reply import Reply
from fsm.snapshot import (
    SCHEMA_VERSION,
    Auth,
    Resume,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from fsm.stats import EngineStats
from fsm.step import Context, Login, Logout, Outcome

if TYPE_CHECKING:
    from adapters.base import Store

log = logging.getLogger("fsm.engine")

MAX_USER_KEY = 256


@dataclass(frozen=True, slots=True)
class Result:
    """What :meth:`Engine.handle` returns: replies to send and the snapshot now stored.

    ``duplicate`` is true when the message id had already been applied: nothing changed and
    there is nothing to send.
    """

    replies: tuple[Reply, ...]
    snapshot: Snapshot
    duplicate: bool = False
    events: tuple[str, ...] = ()

    @property
    def texts(self) -> list[str]:
        return [reply.render() for reply in self.replies]


@dataclass(frozen=True, slots=True)
class _Decision:
    snapshot: Snapshot
    replies: tuple[Reply, ...]
    events: tuple[str, ...]
    side_effects: bool


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
        self.stats = EngineStats()

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
        owner: str | None = None
        notices: tuple[Reply, ...] = ()  # kept across retries: said once, not lost
        after_reset = False
        current: Snapshot | None = None
        try:
            for attempt in range(1, self.max_attempts + 1):
                loaded = self.store.load(key, message_id=message_id)
                if loaded.seen:
                    return self._duplicate(key, loaded.record)
                restored = self._restore(key, loaded.record, after_reset=after_reset)
                if restored is None:  # the bytes changed while we quarantined them: reload
                    continue
                current, fresh_notices, was_reset = restored
                notices = fresh_notices or notices
                after_reset = after_reset or was_reset
                if owner is None and self._runs_side_effects(current):
                    owner = self._lock(key)
                    continue  # reload under the lock: the state may have moved meanwhile
                decision = self._decide(key, current, text, message_id, notices)
                saved = self.store.save(
                    key,
                    self._encode(key, decision),
                    version=decision.snapshot.version,
                    expected_version=current.version,
                    ttl=self.session_ttl,
                    history=self._history(current, decision),
                    message_id=message_id,
                )
                if saved.saved:
                    self._count(current, decision)
                    return Result(decision.replies, decision.snapshot, events=decision.events)
                if saved.status is SaveStatus.DUPLICATE:
                    return self._duplicate(key, saved.current)
                self.stats.incr("conflicts")
                if decision.side_effects:
                    # The side effect already ran; running it again could double it. Our lease
                    # must have expired and someone else wrote: report it, do not retry.
                    raise ConflictError(key, attempts=attempt, version=current.version)
                time.sleep(random.uniform(0, 0.001 * attempt))
            raise ConflictError(
                key, attempts=self.max_attempts, version=current.version if current else 0
            )
        finally:
            if owner is not None:
                self.store.release_lock(key, owner)

    def peek(self, user_id: str) -> Snapshot | None:
        """The stored snapshot, decoded, without changing anything (None if absent)."""
        record = self.store.load(_check_key(user_id)).record
        return None if record is None else decode_snapshot(record.payload, user_key=user_id)

    # -- restore ----------------------------------------------------------------------------
    def _fresh(self, stage: str, auth: Auth | None = None) -> Snapshot:
        return Snapshot(
            flow=self.spec.name,
            stage=stage,
            step=self.spec.stages[stage].entry,
            auth=auth,
            version=0,
            flow_version=self.spec.version,
            last_updated=self.clock.now(),
            update_from=self.source,
        )

    def _restore(
        self, key: str, record: Record | None, *, after_reset: bool
    ) -> tuple[Snapshot, tuple[Reply, ...], bool] | None:
        """(snapshot, notices, was_reset), or None when the record changed under us."""
        if record is None:
            if after_reset:  # we quarantined it ourselves on an earlier attempt
                return self._fresh(self.spec.safe_stage), (), False
            if self.store.history(key, limit=1):  # it existed: the session expired
                self.stats.incr("expired")
                return self._fresh(self.spec.initial), (Reply(self.expired_notice),), False
            return self._fresh(self.spec.initial), (), False
        try:
            return self._validated(key, record), (), False
        except CorruptSnapshot as exc:
            quarantine_id = self.store.quarantine(key, record.payload, exc.detail)
            if quarantine_id is None:
                return None
            self.stats.incr("corrupt")
            log.warning(
                "user %r: corrupt snapshot quarantined as %s: %s", key, quarantine_id, exc.detail
            )
            return self._fresh(self.spec.safe_stage), (Reply(self.reset_notice),), True

    def _validated(self, key: str, record: Record) -> Snapshot:
        snapshot = decode_snapshot(record.payload, user_key=key)
        if snapshot.schema > SCHEMA_VERSION:
            raise SchemaTooNew(snapshot.schema, SCHEMA_VERSION, user_key=key)

        def corrupt(detail: str) -> CorruptSnapshot:
            return CorruptSnapshot(detail, raw=record.payload, user_key=key)

        if snapshot.version != record.version:
            raise corrupt(
                f"snapshot version {snapshot.version} != stored version {record.version}"
                " - at `$.version`"
            )
        if snapshot.flow != self.spec.name:
            raise corrupt(f"flow {snapshot.flow!r} is not {self.spec.name!r} - at `$.flow`")
        stage = self.spec.stages.get(snapshot.stage)
        if stage is None:
            raise corrupt(f"unknown stage {snapshot.stage!r} - at `$.stage`")
        if snapshot.step not in stage.steps:
            raise corrupt(f"stage {stage.name!r} has no step {snapshot.step!r} - at `$.step`")
        if snapshot.flow_version > self.spec.version:
            raise corrupt(
                f"flow version {snapshot.flow_version} is newer than {self.spec.version}"
                " - at `$.flow_version`"
            )
        return snapshot

    # -- decide -----------------------------------------------------------------------------
    def _runs_side_effects(self, current: Snapshot) -> bool:
        if self._needs_reauth(current):
            return False
        return self.spec.steps[(current.stage, current.step)].side_effects

    def _needs_reauth(self, current: Snapshot) -> bool:
        return self.spec.is_protected(current.stage) and not self._token_ok(current.auth)

    def _token_ok(self, auth: Auth | None) -> bool:
        return self.verifier is not None and self.verifier.is_valid(auth)

    def _decide(
        self,
        key: str,
        current: Snapshot,
        text: str,
        message_id: str | None,
        notices: tuple[Reply, ...],
    ) -> _Decision:
        now = self.clock.now()
        if self._needs_reauth(current):
            return self._send_to_auth(key, current, now, notices)
        spec = self.spec.steps[(current.stage, current.step)]
        ctx = self._context(key, current, text, now, message_id)
        try:
            outcome = getattr(self.flow, spec.handler)(ctx)
        except FsmError:
            raise
        except Exception as exc:  # wrapped and raised, never swallowed
            self.stats.incr("step_failures")
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from exc
        if not isinstance(outcome, Outcome):
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from TypeError(f"handler returned {type(outcome).__name__}, not Outcome")
        if outcome.reauth:
            if self.spec.auth_stage is None:
                raise TransitionNotAllowed(
                    current.stage, "reauth", user_key=key, reason="the flow has no auth stage"
                )
            return self._send_to_auth(key, current, now, (*notices, *outcome.replies))
        return self._apply(key, current, outcome, now, notices, spec.side_effects)

    def _send_to_auth(
        self, key: str, current: Snapshot, now: float, notices: tuple[Reply, ...]
    ) -> _Decision:
        auth_stage = self.spec.auth_stage
        assert auth_stage is not None  # guaranteed by the flow check for protected stages
        self.stats.incr("token_refused")
        route = self.spec.path(current.stage, auth_stage)
        if route is None:
            raise TransitionNotAllowed(
                current.stage, "reauth", user_key=key, reason=f"no path to {auth_stage!r}"
            )
        stage, events = current.stage, []
        for event, _ in route:
            stage = self.spec.machine.fire(
                stage,
                event,
                token_preserved=True,
                token_valid=False,
                landing=auth_stage,
                user_key=key,
            )
            events.append(event)
        resume = current.resume or Resume(
            stage=current.stage, step=current.step, option=current.option
        )
        new = msgspec.structs.replace(
            current,
            stage=stage,
            step=self.spec.stages[stage].entry,
            option="",
            resume=resume,
            version=current.version + 1,
            last_updated=now,
            update_from=self.source,
        )
        entered = self._enter(key, new, now)
        replies = (*notices, *(entered or (Reply(self.auth_notice),)))
        return _Decision(new, replies, tuple(events), side_effects=False)

    def _apply(
        self,
        key: str,
        current: Snapshot,
        outcome: Outcome,
        now: float,
        notices: tuple[Reply, ...],
        side_effects: bool,
    ) -> _Decision:
        auth = current.auth
        if isinstance(outcome.auth, Login):
            auth = self._login(key, current.auth, outcome.auth.token)
        elif isinstance(outcome.auth, Logout):
            auth = None
        token_preserved = outcome.auth is not None or auth == current.auth
        token_valid = self._token_ok(auth)
        machine = self.spec.machine

        stage, step, option, resume = current.stage, current.step, current.option, current.resume
        events: list[str] = []
        if outcome.resume and resume is not None:
            target = resume
            route = self.spec.path(stage, target.stage)
            if route is None:
                raise TransitionNotAllowed(
                    stage, "resume", user_key=key, reason=f"no path to {target.stage!r}"
                )
            for event, _ in route:
                stage = machine.fire(
                    stage,
                    event,
                    token_preserved=token_preserved,
                    token_valid=token_valid,
                    landing=target.stage,
                    user_key=key,
                )
                events.append(event)
            step, option, resume = target.step, target.option, None
        elif outcome.event is not None:
            stage = machine.fire(
                stage,
                outcome.event,
                token_preserved=token_preserved,
                token_valid=token_valid,
                user_key=key,
            )
            events.append(outcome.event)
            step = outcome.step or self.spec.stages[stage].entry
            option = outcome.option if outcome.option is not None else ""
            resume = None
        else:
            if self.spec.is_protected(stage) and not token_valid:
                raise TokenRefused("this stage needs a valid token", user_key=key)
            step = outcome.step or step
            option = outcome.option if outcome.option is not None else option
        if step not in self.spec.stages[stage].steps:
            raise StepNotFound(stage, step, user_key=key)

        data: dict[str, Any] = {} if outcome.clear else dict(current.data)
        for name in outcome.unset:
            data.pop(name, None)
        data.update(outcome.set)
        new = Snapshot(
            flow=self.spec.name,
            stage=stage,
            step=step,
            option=option,
            data=data,
            auth=auth,
            resume=resume,
            version=current.version + 1,
            schema=SCHEMA_VERSION,
            flow_version=current.flow_version,
            last_updated=now,
            update_from=self.source,
        )
        replies = (*notices, *outcome.replies)
        if events or step != current.step:
            replies = (*replies, *self._enter(key, new, now))
        return _Decision(new, replies, tuple(events), side_effects)

    def _login(self, key: str, current: Auth | None, token: str) -> Auth:
        if self.verifier is None:
            raise TokenRefused("no TokenVerifier configured", user_key=key)
        try:
            fresh = self.verifier.auth_for(token)
        except TokenRefused as exc:
            self.stats.incr("token_refused")
            raise TokenRefused(exc.reason, user_key=key) from None
        # A token issued before the one we hold is stale (a slow response to an old refresh);
        # it must never replace the fresher one.
        if (
            current is not None
            and current.issued_at is not None
            and fresh.issued_at is not None
            and fresh.issued_at < current.issued_at
        ):
            self.stats.incr("token_refused")
            raise TokenRefused("stale token: issued before the one held", user_key=key)
        return fresh

    def _enter(self, key: str, snapshot: Snapshot, now: float) -> tuple[Reply, ...]:
        hook = self.spec.steps[(snapshot.stage, snapshot.step)].enter
        if hook is None:
            return ()
        ctx = self._context(key, snapshot, "", now, None)
        try:
            replies: Sequence[Reply | str] = getattr(self.flow, hook)(ctx)
        except FsmError:
            raise
        except Exception as exc:
            self.stats.incr("step_failures")
            raise StepFailed(
                snapshot.stage, snapshot.step, user_key=key, version=snapshot.version - 1
            ) from exc
        return tuple(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def _context(
        self, key: str, snapshot: Snapshot, text: str, now: float, message_id: str | None
    ) -> Context:
        auth = snapshot.auth
        return Context(
            user_key=key,
            text=text,
            stage=snapshot.stage,
            step=snapshot.step,
            option=snapshot.option,
            data=Context.readonly(snapshot.data),
            subject=auth.subject if auth else "",
            token_expires_at=auth.expires_at if auth else None,
            now=now,
            message_id=message_id,
            _token=auth.token if auth else None,
        )

    # -- save -------------------------------------------------------------------------------
    def _encode(self, key: str, decision: _Decision) -> bytes:
        snapshot = decision.snapshot
        try:
            return encode_snapshot(snapshot, user_key=key)
        except (TypeError, msgspec.EncodeError) as exc:
            raise StepFailed(
                snapshot.stage, snapshot.step, user_key=key, version=snapshot.version - 1
            ) from exc

    def _history(self, current: Snapshot, decision: _Decision) -> HistoryEntry:
        new = decision.snapshot
        return HistoryEntry(
            version=new.version,
            from_stage=current.stage,
            to_stage=new.stage,
            event=",".join(decision.events),
            update_from=new.update_from,
            at=new.last_updated,
            from_step=current.step,
            to_step=new.step,
        )

    def _count(self, current: Snapshot, decision: _Decision) -> None:
        self.stats.incr("applied")
        if decision.events:
            self.stats.incr(f"transitions:{current.stage}->{decision.snapshot.stage}")

    def _duplicate(self, key: str, record: Record | None) -> Result:
        self.stats.incr("duplicates")
        snapshot = None
        if record is not None:
            try:
                snapshot = decode_snapshot(record.payload, user_key=key)
            except CorruptSnapshot:
                snapshot = None  # reported on the next real message, which quarantines it
        return Result((), snapshot or self._fresh(self.spec.initial), duplicate=True)

    def _lock(self, key: str) -> str:
        self.stats.incr("lock_acquisitions")
        try:
            return self.store.acquire_lease(key, ttl=self.lock_ttl, wait=self.lock_wait)
        except TimeoutError:
            self.stats.incr("lock_timeouts")
            raise LockTimeout(key, waited=self.lock_wait) from None


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
