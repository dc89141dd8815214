"""Deciding one message: the pure core between loading a snapshot and saving the next one.

Given the conversation as loaded and the user's text, :class:`Decider` runs the step handler,
checks its outcome against the flow's machine (guards included) and derives the next snapshot,
the replies and the events fired. It does no I/O of its own: the engine loads and saves around
it, and may call it again on a fresh snapshot after a lost compare-and-set. A handler the
engine's driver would just call (every handler on the sync engine, one that never blocks on
the async one) is called here; any other is a request (:class:`~fsm.effects.HandlerCall`)
that :meth:`Decider.decide` yields to the driver (to await it, or run it in a worker
thread), so one decision serves the sync engine and the async one alike. Step handlers may
call APIs that read; calls that change something belong in actions (steps marked with
:func:`fsm.flow.action`), which the engine decides only under the user's lease, with the
pending action's idempotency key in the context.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from fsm.attachments import Attachment, attachment_kind
from fsm.auth import Claims, TokenVerifier
from fsm.effects import HandlerCall, Steps
from fsm.errors import FsmError, StepFailed, StepNotFound, TokenRefused, TransitionNotAllowed
from fsm.flow import Exit, Flow, FlowSpec, StepSpec, call_mode, folded
from fsm.media import MediaAccess, MediaChannel, MediaError
from fsm.reply import Reply, buttons
from fsm.snapshot import (
    MAX_DEPTH,
    SCHEMA_VERSION,
    Armed,
    Auth,
    Resume,
    Snapshot,
    is_plain,
    nesting,
)
from fsm.stats import EngineStats
from fsm.step import Context, FrozenData, Login, Logout, Outcome, thaw
from fsm.templates import mismatch
from fsm.timers import Event


class Decision(msgspec.Struct, frozen=True):
    """The next snapshot, the replies to send once it is saved, and the events fired."""

    snapshot: Snapshot
    replies: tuple[Reply, ...]
    events: tuple[str, ...]
    side_effects: bool
    reauth: bool = False
    #: What the history entry names when no event was fired (e.g. "abandon").
    note: str = ""
    #: The snapshot's data holds only what decoding its bytes gives back (plain str, int,
    #: float, bool, None, bytes, lists and str-keyed dicts of them), given that the data it
    #: was made from did: the engine then keeps it as stored without decoding those bytes.
    plain: bool = False
    #: It moves to another step (or stage) whose prompt is still to be added (internal).
    enters: bool = False
    #: The verified claims of the token the new snapshot holds, when this decision had them
    #: (the same token as before: the next message need not look it up again).
    claims: Claims | None = None


class _Place(msgspec.Struct, frozen=True):
    """Where an outcome takes a conversation (:meth:`Decider._route`)."""

    stage: str
    step: str
    option: str
    resume: Resume | None
    pending: str
    events: list[str]


#: The ids of the Yes / No buttons of an exit question (:class:`~fsm.flow.Exit`).
LEAVE_ID = "fsm.exit.yes"
STAY_ID = "fsm.exit.no"
_YES = frozenset({"yes", "y", "1", "ok", "okay"})
_NO = frozenset({"no", "n", "2"})


class Decider:
    """Decides messages for one flow instance. Shared by every user; holds no per-user state."""

    def __init__(
        self,
        flow: Flow,
        *,
        verifier: TokenVerifier | None,
        stats: EngineStats,
        source: Callable[[], str],
        auth_notice: str,
        in_place: frozenset[str] = frozenset(),
        media: MediaChannel | None = None,
    ) -> None:
        self.flow = flow
        self.media = media
        self.spec: FlowSpec = type(flow).spec
        self.verifier = verifier
        self.stats = stats
        self._source = source
        self.auth_notice = auth_notice
        # How each flow method is called, decided once: looked up on the instance, so a
        # subclass override counts.
        names = {s.handler for s in self.spec.steps.values()}
        names |= {s.enter for s in self.spec.steps.values() if s.enter is not None}
        names |= {t.handler for t in self.spec.timers.values()}
        names |= {e.handler for e in self.spec.events.values()}
        blocking = bool(getattr(flow, "blocking", True))
        self._modes = {name: call_mode(getattr(flow, name), blocking=blocking) for name in names}
        # The call modes the driving engine would run by calling the handler where it is:
        # those handlers are called here, with no round trip through the driver.
        self._in_place = in_place

    def async_methods(self) -> list[str]:
        """The flow's ``async def`` handlers and hooks (only the async engine can run them)."""
        return sorted(name for name, mode in self._modes.items() if mode == "async")

    def side_effects(self, current: Snapshot) -> bool:
        """Whether the user's current step runs side effects (then the message takes the lock).
        This holds even when the token has expired and the message will only redirect to
        auth: the redirect then waits for a side effect in flight instead of racing it."""
        return self.spec.steps[(current.stage, current.step)].side_effects

    def new_key(self) -> str:
        """A fresh idempotency key: random, so it is never reused (not even when a version
        chain restarts after the history expired), and free of the user's id."""
        return f"{self.spec.name}-{secrets.token_hex(12)}"

    def is_action(self, current: Snapshot) -> bool:
        """Whether the user's current step is an action the engine runs without input."""
        return self.spec.steps[(current.stage, current.step)].action

    def key_of(self, key: str, current: Snapshot) -> str:
        """The idempotency key of the action pending at ``current`` (user ``key``). A snapshot
        from before ``pending`` existed has none: one is derived from the user and version."""
        return current.pending or f"{self.spec.name}:{key}:v{current.version}"

    def _token_ok(self, auth: Auth | None) -> bool:
        return self._claims(auth) is not None

    def _unexpired(self, claims: Claims) -> bool:
        return self.verifier is not None and self.verifier.unexpired(claims)

    def _claims(self, auth: Auth | None) -> Claims | None:
        """The verified claims of the token ``auth`` holds, or None if it is not valid."""
        if self.verifier is None or auth is None:
            return None
        try:
            return self.verifier.verify(auth.token)
        except TokenRefused:
            return None

    def _call(self, key: str, snapshot: Snapshot, method: str, ctx: Context) -> Steps[Any]:
        """Run a flow method; its own exceptions are wrapped and raised, never swallowed."""
        fn, mode = getattr(self.flow, method), self._modes[method]
        try:
            if mode in self._in_place:
                return fn(ctx)
            return (yield HandlerCall(fn, ctx, mode))
        except MediaError as exc:  # a download the step did not catch: the step failed
            self.stats.incr("step_failures")
            raise StepFailed(
                snapshot.stage, snapshot.step, user_key=key, version=snapshot.version
            ) from exc
        except FsmError:
            raise
        except Exception as exc:
            self.stats.incr("step_failures")
            raise StepFailed(
                snapshot.stage, snapshot.step, user_key=key, version=snapshot.version
            ) from exc

    def decide(
        self,
        key: str,
        current: Snapshot,
        text: str,
        message_id: str | None,
        notices: tuple[Reply, ...],
        now: float,
        pressed: str | None = None,
        fresh: bool = False,
        verified: Claims | None = None,
        event: Event | None = None,
        timer: Armed | None = None,
        attachment: Attachment | None = None,
    ) -> Steps[Decision]:
        """What ``text`` (and ``attachment``) does to ``current`` (or, given one, what
        ``event`` or the due ``timer`` does: :meth:`_outside`). Raises the flow's refusals
        (TransitionNotAllowed, StepNotFound, TokenRefused) and StepFailed; nothing is
        changed when it raises.

        ``fresh``: ``current`` is a conversation just started (nothing was stored): unless
        the flow takes its first message, the user is shown the initial step's prompt.
        ``verified``: the claims this process verified for the token ``current`` holds, if
        it kept them; only their expiry is checked again."""
        # Verified once per message, before any handler runs; the move is checked with it.
        if verified is not None and self._unexpired(verified):
            claims: Claims | None = verified
        else:
            claims = self._claims(current.auth)
        if event is not None or timer is not None:
            return (
                yield from self._outside(
                    key, current, now, notices, claims, message_id, event=event, timer=timer
                )
            )
        if claims is None and self.spec.is_protected(current.stage):
            return (yield from self._send_to_auth(key, current, now, notices))
        spec = self.spec.steps[(current.stage, current.step)]
        if fresh and not self.spec.takes_first_message and current.stage == self.spec.initial:
            # A new conversation: the first message is not applied to a question not yet seen.
            return (yield from self._prompt(key, current, now, notices, note="start"))
        kind = attachment_kind(attachment)
        if kind != "text" and not spec.action and kind not in spec.accepts:
            return (yield from self._not_accepted(key, current, spec, kind, now, notices))
        way = self.spec.stages[current.stage].exit
        if way is not None and not spec.action:
            verdict, text, pressed = self._way_out(way, current, spec, text, pressed)
            if verdict == "leave":
                return (yield from self._leave(key, current, way, now, notices, message_id, claims))
            if verdict == "ask":
                return self._ask(key, current, way, text, now, notices, message_id)
            if verdict == "prompt":
                return (yield from self._prompt(key, current, now, notices, note="prompt"))
        ctx = self._context(key, current, text, now, message_id, pressed, attachment)
        return (yield from self._run_step(key, current, spec, way, ctx, notices, claims))

    def _not_accepted(
        self,
        key: str,
        current: Snapshot,
        spec: StepSpec,
        kind: str,
        now: float,
        notices: tuple[Reply, ...],
    ) -> Steps[Decision]:
        """An attachment the step does not take: nothing for a reaction (it asks nothing),
        else the step's prompt again if it accepts other kinds, else the flow's
        ``unsupported_reply``. The conversation stays where it is."""
        if spec.accepts and kind != "reaction":  # the history notes the kind (counted once saved)
            return (yield from self._prompt(key, current, now, notices, note=kind))
        said = () if kind == "reaction" else (Reply(self.spec.unsupported_reply),)
        new = self._restamped(current, now)
        return Decision(new, (*notices, *said), (), side_effects=False, note=kind, plain=True)

    def _run_step(
        self,
        key: str,
        current: Snapshot,
        spec: StepSpec,
        way: Exit | None,
        ctx: Context,
        notices: tuple[Reply, ...],
        claims: Claims | None,
    ) -> Steps[Decision]:
        """Run the step's handler (an action's, with its pending key and no input) and make
        the decision its outcome asks for."""
        now, message_id = ctx.now, ctx.message_id
        if spec.action:
            # No input reaches an action; the key names this pending action, not the message.
            ctx = msgspec.structs.replace(
                ctx,
                text="",
                pressed=None,
                attachment=None,
                idempotency_key=self.key_of(key, current),
                uncertain=False,
            )
        outcome = self._checked(
            key, current, (yield from self._call(key, current, spec.handler, ctx))
        )
        if outcome.exit:
            return (
                yield from self._exit(key, current, spec, way, now, notices, message_id, claims)
            )
        if outcome.reauth:
            return (yield from self._send_to_auth(key, current, now, notices, said=outcome.replies))
        if outcome.keep_key and not spec.action:
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from ValueError("retry_later() is for actions; a step uses stay() or go()")
        decision = self._apply(key, current, outcome, now, notices, spec.side_effects, claims)
        if decision.enters:
            decision = yield from self._entered(key, decision, now)
        new = decision.snapshot
        if spec.action and (new.stage, new.step) == (current.stage, current.step):
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from ValueError("an action must move the user to another step")
        return decision

    def _checked(self, key: str, current: Snapshot, outcome: object) -> Outcome:
        """``outcome`` if a handler returned an :class:`Outcome` whose templates the flow
        declares, else the flow's bug."""
        if not isinstance(outcome, Outcome):
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from TypeError(f"handler returned {type(outcome).__name__}, not Outcome")
        self._declared(key, current, outcome.replies)
        return outcome

    def _declared(self, key: str, at: Snapshot, replies: Sequence[Reply]) -> None:
        """Every message template among ``replies`` fits one the flow declares
        (``Flow.templates``), else the flow's bug (StepFailed at ``at``'s step)."""
        for reply in replies:
            if reply.template is None:
                continue
            problem = mismatch(self.spec.templates, reply.template)
            if problem is not None:
                self.stats.incr("step_failures")
                raise StepFailed(
                    at.stage, at.step, user_key=key, version=at.version
                ) from ValueError(problem)

    def _outside(
        self,
        key: str,
        current: Snapshot,
        now: float,
        notices: tuple[Reply, ...],
        claims: Claims | None,
        message_id: str | None,
        *,
        event: Event | None,
        timer: Armed | None,
    ) -> Steps[Decision]:
        """Input from outside the conversation: a due timer of the current step, or an event
        (its handler was looked up by the protocol). The conversation is not sent to sign in:
        the handler may reply and keep the step with an expired token (staying is no move),
        and a move it makes is checked like any other. An event's handler that keeps the step
        has the step's prompt said again after its replies (``reprompt``)."""
        if timer is not None:
            tspec = self.spec.timers[(current.stage, current.step, timer.name)]
            handler, reprompt, side_effects = tspec.handler, False, False
            note = f"timer:{timer.name}"
        else:
            assert event is not None
            espec = self.spec.event_handler(event.name, current.stage)
            assert espec is not None
            handler, reprompt, side_effects = espec.handler, espec.reprompt, espec.side_effects
            note = f"event:{event.name}"
        ctx = msgspec.structs.replace(
            self._context(key, current, "", now, message_id),
            event=event,
            timer=timer.name if timer is not None else "",
        )
        outcome = self._checked(key, current, (yield from self._call(key, current, handler, ctx)))
        way = self.spec.stages[current.stage].exit
        if outcome.exit:
            spec = self.spec.steps[(current.stage, current.step)]
            left = yield from self._exit(key, current, spec, way, now, notices, message_id, claims)
            return msgspec.structs.replace(left, note=note)
        if outcome.reauth:
            return (yield from self._send_to_auth(key, current, now, notices, said=outcome.replies))
        if outcome.keep_key:
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from ValueError("retry_later() is for actions")
        decision = self._apply(
            key, current, outcome, now, notices, side_effects, claims, lenient=True
        )
        if decision.enters:
            decision = yield from self._entered(key, decision, now)
        elif reprompt:
            said = yield from self._enter(key, decision.snapshot, now)
            decision = msgspec.structs.replace(decision, replies=(*decision.replies, *said))
        return msgspec.structs.replace(decision, note=note)

    def _exit(
        self,
        key: str,
        current: Snapshot,
        spec: StepSpec,
        way: Exit | None,
        now: float,
        notices: tuple[Reply, ...],
        message_id: str | None,
        claims: Claims | None,
    ) -> Steps[Decision]:
        """A step's ``ctx.exit()``: the stage's declared way out, as a typed "cancel" takes it.
        Not from an action: one whose call may have gone through returns ``retry_later``, one
        that knows it did not returns where to go."""
        problem = None
        if way is None:
            problem = f"ctx.exit(): stage {current.stage!r} declares no Exit"
        elif spec.action:
            problem = "ctx.exit() is for steps; an action returns retry_later(), stay() or go()"
        if problem is not None:
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from ValueError(problem)
        assert way is not None
        return (
            yield from self._leave(
                key, current, way, now, notices, message_id, claims, spec.side_effects
            )
        )

    def _restamped(self, current: Snapshot, now: float, **changes: Any) -> Snapshot:
        """``current`` as the next save writes it when no handler ran: one version on."""
        return msgspec.structs.replace(
            current,
            version=current.version + 1,
            last_updated=now,
            update_from=self._source(),
            **changes,
        )

    def _prompt(
        self, key: str, current: Snapshot, now: float, notices: tuple[Reply, ...], *, note: str
    ) -> Steps[Decision]:
        """Stay, and say the step's prompt (again): a new conversation, or a tap that answers
        nothing the step asks. ``note`` names it in the history."""
        new = self._restamped(current, now)
        replies = (*notices, *(yield from self._enter(key, new, now)))
        return Decision(new, replies, (), side_effects=False, note=note, plain=True)

    @staticmethod
    def _way_out(
        way: Exit, current: Snapshot, spec: StepSpec, text: str, pressed: str | None
    ) -> tuple[str, str, str | None]:
        """What the stage's exit makes of a message: ``"leave"``, ``"ask"`` (a free-text
        step), ``"prompt"`` (a late *No* with no question open: say the step's prompt), or
        ``"answer"`` with the text and tap the step's handler gets (after *No* to an exit
        question: the held word)."""
        if current.asked:
            if pressed == LEAVE_ID or pressed in way.ids:
                return "leave", text, pressed
            if pressed is None and folded(text) in _YES | way.words:
                return "leave", text, pressed
            if pressed == STAY_ID or (pressed is None and folded(text) in _NO):
                return "answer", current.asked, None
            return "answer", text, pressed
        if way.to == current.step:
            return "answer", text, pressed
        if pressed == STAY_ID:  # a late tap on an earlier question's No: ask the step again
            return "prompt", text, pressed
        if pressed is not None:  # an exit id, or a late tap on an earlier question's Yes
            leaves = pressed in way.ids or pressed == LEAVE_ID
            return ("leave" if leaves else "answer"), text, pressed
        word = folded(text)
        if word in way.words:  # a /command is never an answer: it leaves at once
            asks = spec.free_text and not word.startswith("/")
            return ("ask" if asks else "leave"), text, pressed
        return "answer", text, pressed

    def _leave(
        self,
        key: str,
        current: Snapshot,
        way: Exit,
        now: float,
        notices: tuple[Reply, ...],
        message_id: str | None,
        claims: Claims | None,
        side_effects: bool = False,
    ) -> Steps[Decision]:
        """Take the stage's declared way out: its trigger (checked by the machine like any
        other) or its step, with its reply, the sub-flow's data deleted. A key kept for a
        retry goes with it (in ``say``, ``ctx.uncertain`` is True and ``ctx.idempotency_key``
        is that key, so the reply can say the last attempt may still have gone through)."""
        ctx = self._context(key, current, "", now, message_id)
        said = self._exit_text(key, current, way.say, ctx)
        replies = (said,) if said else ()
        if way.to in self.spec.stages[current.stage].steps:
            outcome = ctx.stay(*replies, step=way.to, unset=way.unset)
        else:
            outcome = ctx.go(way.to, *replies, unset=way.unset)
        # ``side_effects``: a step that ran them chose to leave (a lost compare-and-set must
        # then not run the step again).
        decision = self._apply(key, current, outcome, now, notices, side_effects, claims)
        if decision.enters:
            decision = yield from self._entered(key, decision, now)
        left = decision.snapshot
        if left.pending and not self.is_action(left):  # leaving ends the request
            decision = msgspec.structs.replace(
                decision, snapshot=msgspec.structs.replace(left, pending="")
            )
        return msgspec.structs.replace(decision, note="exit")

    def _exit_text(self, key: str, current: Snapshot, said: Any, ctx: Context) -> str:
        """An Exit's ``say`` or ``ask``: a str, or the str its function returns for ``ctx``
        (a function that fails is the flow's bug, raised as StepFailed like a handler's)."""
        if not callable(said):
            return str(said)
        try:
            text = said(ctx)
            if not isinstance(text, str):
                raise TypeError(f"an Exit's say/ask returned {type(text).__name__}, not str")
        except Exception as exc:
            self.stats.incr("step_failures")
            raise StepFailed(
                current.stage, current.step, user_key=key, version=current.version
            ) from exc
        return text

    def _ask(
        self,
        key: str,
        current: Snapshot,
        way: Exit,
        text: str,
        now: float,
        notices: tuple[Reply, ...],
        message_id: str | None,
    ) -> Decision:
        """An exit word at a free-text step: hold it and ask, rather than guess."""
        ctx = self._context(key, current, text, now, message_id)
        question = self._exit_text(key, current, way.ask, ctx)
        new = self._restamped(current, now, asked=text)
        ask = buttons(question, [(LEAVE_ID, "Yes"), (STAY_ID, "No")])
        return Decision(new, (*notices, ask), (), False, note="ask-exit", plain=True)

    def _walk(
        self,
        key: str,
        stage: str,
        target: str,
        *,
        event: str,
        token_valid: bool,
        token_preserved: bool = True,
    ) -> tuple[str, list[str]]:
        """Fire the declared events of the shortest path from ``stage`` to ``target``, each
        checked by the machine. ``event`` names the move in the error if there is no path."""
        route = self.spec.path(stage, target)
        if route is None:
            raise TransitionNotAllowed(stage, event, user_key=key, reason=f"no path to {target!r}")
        fired: list[str] = []
        for hop, _ in route:
            stage = self.spec.machine.fire(
                stage,
                hop,
                token_preserved=token_preserved,
                token_valid=token_valid,
                landing=target,
                user_key=key,
            )
            fired.append(hop)
        return stage, fired

    def _send_to_auth(
        self,
        key: str,
        current: Snapshot,
        now: float,
        notices: tuple[Reply, ...],
        *,
        said: tuple[Reply, ...] = (),
    ) -> Steps[Decision]:
        """Move to the auth stage along the graph, remembering where to resume. The user is
        told why (``said`` by the handler, else the engine's ``auth_notice``), then prompted."""
        auth_stage = self.spec.auth_stage
        if auth_stage is None:
            raise TransitionNotAllowed(
                current.stage, "reauth", user_key=key, reason="the flow has no auth stage"
            )
        stage, events = self._walk(
            key, current.stage, auth_stage, event="reauth", token_valid=False
        )
        resume = current.resume or Resume(
            stage=current.stage, step=current.step, option=current.option, pending=current.pending
        )
        entry = self.spec.stages[stage].entry
        new = msgspec.structs.replace(
            current,
            stage=stage,
            step=entry,
            option="",
            resume=resume,
            # The interrupted action's key travels in the resume point, not here.
            pending=self.new_key() if self.spec.steps[(stage, entry)].action else "",
            asked="",
            version=current.version + 1,
            last_updated=now,
            update_from=self._source(),
        )
        why = said or (Reply(self.auth_notice),)
        replies = (*notices, *why, *(yield from self._enter(key, new, now)))
        return Decision(new, replies, tuple(events), side_effects=False, reauth=True, plain=True)

    def _apply(
        self,
        key: str,
        current: Snapshot,
        outcome: Outcome,
        now: float,
        notices: tuple[Reply, ...],
        side_effects: bool,
        claims: Claims | None,
        lenient: bool = False,
    ) -> Decision:
        """The snapshot ``outcome`` makes of ``current``; ``claims``: those of the token
        ``current`` holds, verified for this message (None: not valid). A decision that
        ``enters`` a step still needs that step's prompt (:meth:`_entered`)."""
        auth = current.auth
        if isinstance(outcome.auth, Login):
            auth = self._replace_token(key, current.auth, outcome.auth.token)
        elif isinstance(outcome.auth, Logout):
            auth = None
        data: dict[str, Any] = {} if outcome.clear else dict(current.data)
        for name in outcome.unset:
            data.pop(name, None)
        plain = True
        if outcome.set:  # what was read is within bounds already: only new values can exceed
            if any(nesting(value) >= MAX_DEPTH for value in outcome.set.values()):
                raise StepFailed(
                    current.stage, current.step, user_key=key, version=current.version
                ) from ValueError(f"data nested deeper than {MAX_DEPTH} levels")
            if not all(isinstance(name, str) for name in outcome.set):
                raise StepFailed(
                    current.stage, current.step, user_key=key, version=current.version
                ) from TypeError("data names in set=... must be str")
            added = {name: thaw(value) for name, value in outcome.set.items()}
            plain = is_plain(added)
            data.update(added)
        if outcome.option is not None and type(outcome.option) is not str:
            if not isinstance(outcome.option, str):
                raise StepFailed(
                    current.stage, current.step, user_key=key, version=current.version
                ) from TypeError(f"option must be str, got {type(outcome.option).__name__}")
            plain = False  # a str subclass: stored, and read back, as a plain str
        # The same token: its signature was checked for this message, its expiry is checked
        # again now (the handler may have taken long); a new one is verified in full.
        if auth is current.auth:
            token_valid = claims is not None and self._unexpired(claims)
        else:
            token_valid = self._token_ok(auth)
        kept = self._kept(key, current, outcome, data)
        place = self._route(key, current, outcome, auth, token_valid, kept, lenient)
        new = Snapshot(
            flow=self.spec.name,
            stage=place.stage,
            step=place.step,
            option=place.option,
            data=data,
            auth=auth,
            resume=place.resume,
            version=current.version + 1,
            schema=SCHEMA_VERSION,
            flow_version=current.flow_version,
            last_updated=now,
            update_from=self._source(),
            pending=place.pending,
        )
        return Decision(
            new,
            (*notices, *outcome.replies),
            tuple(place.events),
            side_effects,
            plain=plain,
            enters=bool(place.events) or place.step != current.step,
            claims=claims if auth is current.auth and token_valid else None,
        )

    def _entered(self, key: str, decision: Decision, now: float) -> Steps[Decision]:
        """``decision`` with the prompt of the step it moves to (its ``@on_enter`` hook)."""
        said = yield from self._enter(key, decision.snapshot, now)
        return msgspec.structs.replace(decision, replies=(*decision.replies, *said), enters=False)

    def _kept(self, key: str, current: Snapshot, outcome: Outcome, data: dict[str, Any]) -> str:
        """The idempotency key this outcome carries within the stage, or "": an action's key
        when it says its call may have been applied (``retry_later``), and, at the step it sent
        the user back to, that key for as long as the request's data stays the same."""
        if self.is_action(current):
            return self.key_of(key, current) if outcome.keep_key else ""
        if current.pending and data == current.data:
            return current.pending
        return ""

    def _route(
        self,
        key: str,
        current: Snapshot,
        outcome: Outcome,
        auth: Auth | None,
        token_valid: bool,
        kept: str,
        lenient: bool = False,
    ) -> _Place:
        """Where ``outcome`` takes the conversation, each move checked by the machine.
        ``token_valid``: ``auth`` was verified valid for this message. ``kept`` is the
        idempotency key carried while it stays in the stage (:meth:`_kept`). ``lenient``: a
        timer or an event may keep the step without a valid token (staying is no move)."""
        # The guard every transition checks. The engine alone builds ``auth``, so today this
        # holds by construction; the machine re-checks it so a future change cannot slip.
        token_preserved = outcome.auth is not None or auth == current.auth
        stage, step, option, resume = current.stage, current.step, current.option, current.resume
        # A resumed action keeps its key, as does a retry within the stage (``kept``); leaving
        # the stage drops it, and any other action lands with a new one.
        pending = ""
        events: list[str] = []
        if outcome.resume and resume is not None:
            pending = resume.pending
            stage, events = self._walk(
                key,
                stage,
                resume.stage,
                event="resume",
                token_valid=token_valid,
                token_preserved=token_preserved,
            )
            step, option, resume = resume.step, resume.option, None
        elif outcome.event is not None:
            stage = self.spec.machine.fire(
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
            stays = outcome.step in (None, step)
            if self.spec.is_protected(stage) and not token_valid and not (lenient and stays):
                raise TokenRefused("this stage needs a valid token", user_key=key)
            step = outcome.step or step
            option = outcome.option if outcome.option is not None else option
            pending = kept
        if step not in self.spec.stages[stage].steps:
            raise StepNotFound(stage, step, user_key=key)
        if self.spec.steps[(stage, step)].action and not pending:
            pending = self.new_key()  # a new pending action: its key is fixed until it has run
        return _Place(stage, step, option, resume, pending, events)

    def _replace_token(self, key: str, current: Auth | None, token: str) -> Auth:
        if self.verifier is None:
            raise TokenRefused("no TokenVerifier configured", user_key=key)
        try:
            return self.verifier.replacement(current, token)
        except TokenRefused as exc:
            self.stats.incr("token_refused")
            raise TokenRefused(exc.reason, user_key=key) from None

    def _enter(self, key: str, snapshot: Snapshot, now: float) -> Steps[tuple[Reply, ...]]:
        hook = self.spec.steps[(snapshot.stage, snapshot.step)].enter
        if hook is None:
            return ()
        ctx = self._context(key, snapshot, "", now, None)
        replies: Sequence[Reply | str] = yield from self._call(key, snapshot, hook, ctx)
        said = tuple(r if isinstance(r, Reply) else Reply(r) for r in replies)
        self._declared(key, snapshot, said)
        return said

    def context_of(self, key: str, snapshot: Snapshot) -> Context:
        """The context a handler at ``snapshot``'s step would see with no input (a timer's
        ``after`` function reads it)."""
        return self._context(key, snapshot, "", snapshot.last_updated, None)

    def event_side_effects(self, event: str, current: Snapshot) -> bool:
        """Whether ``event``'s handler at ``current``'s stage runs side effects (the lease)."""
        handler = self.spec.event_handler(event, current.stage)
        return handler is not None and handler.side_effects

    def _context(
        self,
        key: str,
        snapshot: Snapshot,
        text: str,
        now: float,
        message_id: str | None,
        pressed: str | None = None,
        attachment: Attachment | None = None,
    ) -> Context:
        auth = snapshot.auth
        # A key at a step that is no action was kept by ``retry_later``: the request may
        # have been applied (an action's own context is given its key in ``decide``).
        kept = snapshot.pending
        if kept and self.spec.steps[(snapshot.stage, snapshot.step)].action:
            kept = ""
        return Context(
            user_key=key,
            text=text,
            stage=snapshot.stage,
            step=snapshot.step,
            option=snapshot.option,
            data=FrozenData(snapshot.data, self.spec.sensitive),
            subject=auth.subject if auth else "",
            token_expires_at=auth.expires_at if auth else None,
            now=now,
            message_id=message_id,
            _token=auth.token if auth else None,
            idempotency_key=kept,
            pressed=pressed,
            attachment=attachment,
            _media=None if self.media is None else MediaAccess(self.media, _running_loop()),
            uncertain=bool(kept),
            _sensitive=self.spec.sensitive,  # hidden in its repr (and data's)
        )

    # -- save -------------------------------------------------------------------------------


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this decision runs on (an async engine's), or None (the sync one's)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
