"""Declaring input from time and from the world outside: timers and events.

A **timer** belongs to a step, next to the step it nudges::

    @timeout("credex", "confirm", after="10m")
    def remind(self, ctx: Context) -> Outcome:
        return ctx.stay("Still there? Confirm or cancel your offer.")

It is armed by the save that brings the conversation to that step (stored in the snapshot, under
its version: :class:`~fsm.snapshot.Armed`), re-armed by a user message at that step (unless
``rearm=False``), cancelled when the conversation leaves the step, and fired once per arming by
:meth:`fsm.Engine.fire_due` through the message protocol. Its handler sees a
:class:`~fsm.step.Context` whose ``text`` is ``""`` and whose ``timer`` is its name, and returns
an :class:`~fsm.step.Outcome` as a step does.

An **event** is input from outside the conversation (another user's action, a payment
webhook), applied by :meth:`fsm.Engine.notify` wherever the conversation is::

    @on_event("offer_received")
    def offer_received(self, ctx: Context) -> Outcome:
        return ctx.stay(f"{ctx.event.data['from']} offered you {ctx.event.data['amount']}")

``ctx.event`` (:class:`Event`) carries its name, data and id; an id is applied once.

This module holds the declarations and their checks; :mod:`fsm.firing` arms and fires.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

F = TypeVar("F", bound=Callable[..., Any])

#: A delay: seconds, a string such as ``"10m"``, ``"1h30m"``, ``"45s"``, ``"2d"``, or a
#: function of the step's context returning seconds (a delay read from data).
Delay = float | int | str | Callable[[Any], float]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


def seconds(value: float | int | str) -> float:
    """A delay in seconds: a number, or a string of number-unit pairs (``"10m"``,
    ``"1h30m"``, ``"90s"``, ``"2d"``). ``ValueError`` for anything else, or a delay <= 0.

    >>> seconds("1h30m"), seconds(45), seconds("2.5s")
    (5400.0, 45.0, 2.5)
    """
    if isinstance(value, bool):
        raise ValueError(f"a delay is seconds or a string like '10m', got {value!r}")
    if isinstance(value, int | float):
        total = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        parts = _DURATION.findall(text)
        if not parts or _DURATION.sub("", text).strip():
            raise ValueError(
                f"cannot read the delay {value!r}: write seconds or number-unit pairs such as "
                "'45s', '10m', '1h30m', '2d'"
            )
        total = sum(float(n) * _UNITS[unit] for n, unit in parts)
    else:
        raise ValueError(f"a delay is seconds or a string like '10m', got {value!r}")
    if not total > 0 or total != total or total == float("inf"):
        raise ValueError(f"a delay must be > 0 seconds, got {value!r}")
    return total


#: The option ids :func:`event_option` makes: ``fsm.ev.<event>:<arg>``.
EVENT_OPTION = "fsm.ev."


def event_option(event: str, arg: str = "") -> str:
    """The id of a button (or list row) that, tapped at any step, applies ``event`` (with
    ``data={"arg": arg}``) to the conversation instead of the step: "Accept" on an offer that
    arrived while the user was busy elsewhere. The tap's message id is the event's id.

    >>> event_option("offer_accept", "cx-0007")
    'fsm.ev.offer_accept:cx-0007'
    """
    if not event or ":" in event:
        raise ValueError(f"an event name for an option has no ':' and is not empty: {event!r}")
    return f"{EVENT_OPTION}{event}:{arg}"


def pressed_event(pressed: str | None, message_id: str | None) -> Event | None:
    """The event a tapped :func:`event_option` stands for, or None."""
    if pressed is None or not pressed.startswith(EVENT_OPTION):
        return None
    name, _, arg = pressed[len(EVENT_OPTION) :].partition(":")
    return Event(name, {"arg": arg}, message_id) if name else None


class Event(msgspec.Struct, frozen=True):
    """``ctx.event``: input from outside the conversation (:meth:`fsm.Engine.notify`).

    ``data`` is what the sender passed (a JSON-like mapping, read-only); ``id`` the sender's
    id for it, which makes a repeat harmless (None: the sender gave none). Its repr shows the
    data's keys, never their values."""

    name: str
    data: Mapping[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None

    def __repr__(self) -> str:
        return f"Event(name={self.name!r}, id={self.id!r}, data_keys={sorted(self.data)!r})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("name", self.name), ("id", self.id), ("data_keys", sorted(self.data))]


@dataclass(frozen=True, slots=True)
class TimerSpec:
    """A declared timer (:func:`timeout`), checked when the flow class is built."""

    stage: str
    step: str
    name: str
    handler: str
    #: Seconds, or a function of the context (``after`` given as a callable).
    after: float | Callable[[Any], float]
    rearm: bool = True
    #: Fire at most this many seconds late (tickers down, a deploy); later, the timer is
    #: dropped and counted. None: however late.
    max_late: float | None = None
    #: The timer may fire after the session would expire: the session lives until a full
    #: ``session_ttl`` after it is due.
    extends_session: bool = False

    def delay(self, ctx: Any) -> float:
        """Seconds from arming to firing, for the context of the step it is armed at."""
        if callable(self.after):
            return seconds(self.after(ctx))
        return self.after


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A declared event handler (:func:`on_event`)."""

    event: str
    stage: str | None
    handler: str
    side_effects: bool = False
    starts: bool = False
    reprompt: bool = True


def timeout(
    stage: str,
    step: str,
    *,
    after: Delay,
    name: str | None = None,
    rearm: bool = True,
    max_late: float | str | None = None,
    extends_session: bool = False,
) -> Callable[[F], F]:
    """Mark a method as the handler of a timer of ``stage.step``, due ``after`` (seconds, a
    string such as ``"10m"``, or a function of the step's context) once the conversation
    arrives there. ``name`` (default: the method's name) tells the step's timers apart; a
    timer of the same name replaces the earlier one.

    ``rearm=False``: a user message at the step does not push the timer back (a deadline,
    not an idle timeout). ``max_late``: a timer found more than this late (tickers were down)
    is dropped, not fired. ``extends_session``: the timer may be due after the session would
    expire, and keeps the session alive until then (otherwise the flow class refuses a timer
    that cannot fire within the session)."""
    if not callable(after):
        after = seconds(after)  # a bad delay fails at import, where it is written
    late = None if max_late is None else _lateness(max_late)

    def mark(fn: F) -> F:
        timer = (stage, step, name or fn.__name__, after, rearm, late, extends_session)
        fn.__dict__.setdefault("_fsm_timers", []).append(timer)
        return fn

    return mark


def _lateness(value: float | str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    return seconds(value)


def on_event(
    event: str,
    stage: str | None = None,
    *,
    side_effects: bool = False,
    starts: bool = False,
    reprompt: bool = True,
) -> Callable[[F], F]:
    """Mark a method as the handler of the external event ``event`` (:meth:`fsm.Engine.notify`)
    while the conversation is in ``stage`` (None: in any stage without a handler of its own).
    The handler sees ``ctx.event`` and ``ctx.text == ""`` and returns an outcome: it can reply
    and keep the step (the step's prompt is then said again after its replies, unless
    ``reprompt=False``), or move.

    ``side_effects=True`` runs it under the user's lease, as for a step. ``starts=True``: an
    event for a user without a conversation starts one (at the initial step) and is applied
    to it; otherwise it is acknowledged and not applied."""
    if not isinstance(event, str) or not event:
        raise ValueError(f"an event name is a non-empty str, got {event!r}")

    def mark(fn: F) -> F:
        fn.__dict__.setdefault("_fsm_events", []).append(
            (event, stage, side_effects, starts, reprompt)
        )
        return fn

    return mark


def collect(
    cls: type,
    stages: Mapping[str, Any],
    actions: set[tuple[str, str]],
    session_ttl: float | None,
    fail: Callable[[str], Exception],
) -> tuple[dict[tuple[str, str, str], TimerSpec], dict[tuple[str, str | None], EventSpec]]:
    """The timers and event handlers a flow class declares, checked: known stages and steps,
    no timer on an action (nothing waits there), names unique per step, a timer that fits in
    the flow's ``session_ttl`` unless it extends the session."""
    timers: dict[tuple[str, str, str], TimerSpec] = {}
    events: dict[tuple[str, str | None], EventSpec] = {}
    for klass in reversed(cls.__mro__):  # a subclass overrides its base's
        own: set[tuple[Any, ...]] = set()
        for attr_name, attr in vars(klass).items():
            fn = getattr(attr, "__func__", attr)
            for stage, step, name, after, rearm, late, extends in getattr(fn, "_fsm_timers", ()):
                key = (stage, step, name)
                if key in own:
                    raise fail(f"step {stage}.{step} declares two timers named {name!r}")
                own.add(key)
                _check_place(stages, stage, step, actions, fail, "a timer")
                fixed = not callable(after) and not extends
                if fixed and session_ttl is not None and after >= session_ttl:
                    raise fail(
                        f"timer {name!r} of {stage}.{step} is due after {after:g}s, when "
                        f"the session ({session_ttl:g}s) is over: shorten it, or declare "
                        "it with extends_session=True"
                    )
                timers[key] = TimerSpec(stage, step, name, attr_name, after, rearm, late, extends)
            for event, stage, side_effects, starts, reprompt in getattr(fn, "_fsm_events", ()):
                key2 = (event, stage)
                if ("event", *key2) in own:
                    raise fail(f"event {event!r} has two handlers for stage {stage!r}")
                own.add(("event", *key2))
                if stage is not None and stage not in stages:
                    raise fail(f"event handler {attr_name} names unknown stage {stage!r}")
                events[key2] = EventSpec(event, stage, attr_name, side_effects, starts, reprompt)
    return timers, events


def _check_place(
    stages: Mapping[str, Any],
    stage: str,
    step: str,
    actions: set[tuple[str, str]],
    fail: Callable[[str], Exception],
    what: str,
) -> None:
    if stage not in stages:
        raise fail(f"{what} names unknown stage {stage!r}")
    if step not in stages[stage].steps:
        raise fail(f"{what} names step {step!r}, which stage {stage!r} does not declare")
    if (stage, step) in actions:
        raise fail(f"{what} is declared on action {stage}.{step}: nothing waits at an action")
