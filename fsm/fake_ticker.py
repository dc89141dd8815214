"""Time passing in tests: a :class:`~fsm.clock.FakeClock` moved with a ticker running.

Production fires timers with tickers that call :meth:`fsm.Engine.fire_due` all the time, so
a timer fires at its due time. :func:`pass_time` does what they would have done while the
clock moves: it stops the clock at each deadline of the store's index of deadlines on the way
(:meth:`~fsm.store.SessionStore.due_stats`, on every store alike) and fires everything due
there (``fire_due``, batch after batch), until the clock is where it was asked to go. So
``advance("30m")`` over a reminder due at 10 minutes fires it at 10 minutes, not 20 minutes
late (past its ``max_late``). To test tickers that were down, move the clock itself
(``clock.advance``), then fire what is due (:func:`fire_now`, ``chat.advance(0)``).

It fires at the start and at the end of every move too, so an engine whose ticker does more
than fire timers (one that delivers notifications in its ``fire_due``) does it at least
there. On a store without an index of deadlines (:attr:`~fsm.store.SessionStore.keeps_timers`)
nothing is ever due: the clock just moves. Nothing sleeps. The testing kit
(:meth:`fsm.testing.Conversation.advance`) and transcripts (``! clock +10m``) use it; both hand
back what each firing said to its user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fsm.blocking import BlockingEngine, run
from fsm.clock import FakeClock
from fsm.records import DueStats
from fsm.result import Result
from fsm.snapshot import Snapshot

if TYPE_CHECKING:
    from fsm.engine import Engine

__all__ = ["MAX_ROUNDS", "MAX_STOPS", "blank", "combined", "fire_now", "move_clock", "pass_time"]

#: How many deadlines one move of the clock stops at, at most: more means timers that keep
#: arming each other faster than the clock moves (an error, not an endless test).
MAX_STOPS = 10_000
#: How many batches of :meth:`~fsm.Engine.fire_due` one stop runs, at most.
MAX_ROUNDS = 1_000

#: What a firing said: the user it was for, and the result to send.
Said = tuple[str, Result]


def move_clock(engine: object, clock: FakeClock, seconds: float) -> None:
    """Move ``clock`` by ``seconds``, the clock ``engine`` runs on: every session it judges
    (its expiry, its tokens' expiry) moves with it, on every store. A clock the engine does
    not run on would move nothing: that is an error, not a silent no-op. Fires nothing (see
    :func:`pass_time`)."""
    runs_on = getattr(engine, "clock", None)
    if runs_on is not clock:
        raise ValueError(
            f"the engine runs on another clock ({type(runs_on).__name__}, or says none): "
            "moving this "
            "FakeClock would change nothing; build the engine with clock= this FakeClock"
        )
    clock.advance(seconds)


def pass_time(engine: Engine | BlockingEngine, clock: FakeClock, seconds: float) -> list[Said]:
    """Move ``clock`` (``engine``'s) by ``seconds``, firing each timer at its due time on the
    way (the module's doc); return what the firings said, for every user, in order.
    ``ValueError`` for another clock or a negative move; ``RuntimeError`` for timers that
    keep arming each other faster than the clock moves (:data:`MAX_STOPS`)."""
    move_clock(engine, clock, 0.0)
    if not seconds >= 0:
        raise ValueError(f"a clock does not go backwards ({seconds!r} seconds)")
    target = clock.now() + seconds
    if not _keeps_timers(engine):  # no index to read: nothing can be due
        clock.advance(seconds)
        return []
    said = fire_now(engine)
    for _ in range(MAX_STOPS):
        now = clock.now()
        soonest = _due_stats(engine, now).oldest_due
        stop = target if soonest is None or soonest > target else max(soonest, now)
        clock.advance(stop - now)
        said += fire_now(engine)
        if stop >= target:
            return said
    raise RuntimeError(
        f"the clock stopped at {MAX_STOPS} deadlines within {seconds:g}s: timers keep arming "
        "each other; move it by less at a time"
    )


def fire_now(engine: Engine | BlockingEngine) -> list[Said]:
    """Fire every timer due by ``engine``'s clock now, batch after batch until none is due;
    return what the firings said (user, result), in order."""
    said: list[Said] = []
    if not _keeps_timers(engine):
        return said
    for _ in range(MAX_ROUNDS):
        engine.fire_due(on_result=lambda user, result: said.append((user, result)))
        if _due_stats(engine, engine.clock.now()).due == 0:
            return said
    raise RuntimeError(f"timers were still due after {MAX_ROUNDS} rounds of firing")


def combined(results: list[Result], snapshot: Snapshot) -> Result:
    """One result for several that came to one user (each firing's, in order): their replies
    one after another, and ``snapshot``, the conversation as it is now."""
    replies = tuple(reply for result in results for reply in result.replies)
    events = tuple(event for result in results for event in result.events)
    return Result(replies, snapshot, events=events)


def blank(engine: Engine | BlockingEngine) -> Snapshot:
    """What a user without a conversation is at: the initial step, version 0 (as a
    :class:`~fsm.result.Result` shows it)."""
    spec = engine.spec
    entry = spec.stages[spec.initial].entry
    return Snapshot(flow=spec.name, stage=spec.initial, step=entry, flow_version=spec.version)


def _keeps_timers(engine: Engine | BlockingEngine) -> bool:
    """Whether ``engine``'s store keeps the index of deadlines (a flow with timers has one:
    the engine refuses other stores for it). Without one, nothing is ever due."""
    store = engine.engine.store if isinstance(engine, BlockingEngine) else engine.store
    return bool(getattr(store, "keeps_timers", False))


def _due_stats(engine: Engine | BlockingEngine, now: float) -> DueStats:
    """The index of deadlines at ``now``, from the engine's own store (awaited for an async
    one, on the loop its connections live on)."""
    if isinstance(engine, BlockingEngine):
        return run(engine.engine.store.due_stats(now))
    return engine.store.due_stats(now)
