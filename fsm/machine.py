"""The stage graph as a ``transitions`` machine, built once per flow and shared by every user.

Theory of operation: ``transitions`` binds state to *model* objects, and ``Machine.add_model`` is
O(number of models) and keeps each model alive (~10 KB apiece). One model per user would leak.
So each flow builds exactly one :class:`transitions.Machine` at class creation, and a small
pool of probe models is attached to it. To decide a move, the engine borrows a probe, sets its
state to the snapshot's stage, fires the event and reads where the probe landed; the probe
goes back to the pool. The pool grows only to the number of messages decided at the same
instant, never with the number of users.

Guards are the machine's ``conditions``: every transition checks that the JWT was preserved
(unless the move carries an auth event), and a transition whose landing stage is protected checks
that the conversation holds a valid token. A refused trigger raises
:class:`~fsm.errors.TransitionNotAllowed` naming the stage and the event; nothing is mutated
except the borrowed probe, which is reset on the next use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from transitions import EventData, Machine, MachineError

from fsm.errors import TransitionNotAllowed


@dataclass(frozen=True, slots=True)
class Move:
    """The facts the guards read while one move is being decided."""

    token_preserved: bool
    may_enter_protected: bool
    landing: str | None  # None: where this transition leads


class _Probe:
    """A pooled model. ``transitions`` adds ``state``, ``trigger`` and the event methods."""

    state: str
    trigger: Callable[[str], bool]

    def __init__(self, protected: frozenset[str]) -> None:
        self.move: Move | None = None
        self._protected = protected

    # Guard callbacks named in the machine's ``conditions``; ``transitions`` passes the event
    # data (``send_event=True``), which names the transition being checked.
    def token_preserved(self, event: EventData) -> bool:
        return self.move is not None and self.move.token_preserved

    def may_land(self, event: EventData) -> bool:
        move = self.move
        if move is None:
            return False
        landing = move.landing
        if landing is None:
            assert event.transition is not None
            landing = str(event.transition.dest)
        return move.may_enter_protected or landing not in self._protected


class StageMachine:
    """One flow's stage graph: decides moves, holds the probe pool."""

    def __init__(
        self,
        *,
        name: str,
        stages: Sequence[str],
        initial: str,
        transitions: Iterable[tuple[str, str, str]],
        protected: frozenset[str],
    ) -> None:
        self.name = name
        self.protected = protected
        rows = list(transitions)
        self._events = frozenset(trigger for trigger, _, _ in rows)
        self._machine = Machine(
            model=None,
            states=list(stages),
            transitions=[
                {
                    "trigger": trigger,
                    "source": source,
                    "dest": dest,
                    "conditions": ["token_preserved", "may_land"],
                }
                for trigger, source, dest in rows
            ],
            initial=initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=True,
        )
        self._initial = initial
        self._pool: list[_Probe] = []
        self._pool_lock = threading.Lock()
        self.models_created = 0

    @property
    def events(self) -> frozenset[str]:
        return self._events

    def fire(
        self,
        stage: str,
        event: str,
        *,
        token_preserved: bool,
        token_valid: bool,
        landing: str | None = None,
        user_key: str | None = None,
    ) -> str:
        """The stage ``event`` leads to from ``stage``, or :class:`TransitionNotAllowed`.

        ``landing`` is where the whole move ends (a multi-hop redirect passes through
        protected stages on its way to the auth stage); the protected-stage guard reads it.
        """
        if event not in self._events:
            raise TransitionNotAllowed(stage, event, user_key=user_key, reason="unknown event")
        probe = self._borrow()
        try:
            self._machine.set_state(stage, model=probe)
            probe.move = Move(
                token_preserved=token_preserved,
                may_enter_protected=token_valid,
                landing=landing,
            )
            try:
                moved = probe.trigger(event)
            except MachineError:
                raise TransitionNotAllowed(
                    stage, event, user_key=user_key, reason="not in the stage graph"
                ) from None
            if not moved:
                reason = (
                    "the token must not change without an auth event"
                    if not token_preserved
                    else "the landing stage needs a valid token"
                )
                raise TransitionNotAllowed(stage, event, user_key=user_key, reason=reason)
            return probe.state
        finally:
            probe.move = None
            self._give_back(probe)

    def destination(self, stage: str, event: str) -> str | None:
        """Where ``event`` would lead from ``stage`` ignoring guards (for planning paths)."""
        for transition in self._machine.get_transitions(trigger=event, source=stage):
            return str(transition.dest)
        return None

    def _borrow(self) -> _Probe:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
            self.models_created += 1
        probe = _Probe(self.protected)
        self._machine.add_model(probe, initial=self._initial)
        return probe

    def _give_back(self, probe: _Probe) -> None:
        with self._pool_lock:
            self._pool.append(probe)

    @property
    def attached_models(self) -> int:
        return len(self._machine.models)
