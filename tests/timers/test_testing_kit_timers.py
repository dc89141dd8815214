"""The testing kit with timers and events: ``chat.advance`` fires each timer at its due time
(a ticker running while the fake clock moves) and hands back what came to the user;
``chat.notify`` applies an event. On the memory store and on a real redis-server alike, with
no real waiting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters import MemoryStore
from fsm import (
    Context,
    Engine,
    FakeClock,
    Flow,
    Outcome,
    Stage,
    fake_ticker,
    on_event,
    step,
    timeout,
)
from fsm.blocking import BlockingEngine
from fsm.testing import Conversation, Proactive

from .kit_stores import STORES, engine_on, nudge_engine


@pytest.fixture(params=STORES)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine | BlockingEngine]:
    yield from engine_on(request.param)


def at_confirm(engine: Engine | BlockingEngine, user: str = "ann") -> Conversation:
    chat = Conversation(engine, user)
    chat.say("hi").expect("Menu")
    chat.say("1").expect("How much?")
    chat.say("5").expect("Confirm 5? yes/no", step="confirm")
    return chat


def test_advance_fires_a_due_timer_and_returns_what_came_to_the_user(
    engine: Engine | BlockingEngine,
) -> None:
    chat = at_confirm(engine)
    started = time.monotonic()
    early = chat.advance("9m")
    assert early.texts == [] and early.step == "confirm"
    turn = chat.advance("1m").expect("Still there? Confirm 5? yes/no", stage="order")
    assert turn.step == "confirm" and turn.text == "! clock +1m"
    assert turn.snapshot.version == chat.snapshot.version  # type: ignore[union-attr]
    assert [t.name for t in turn.snapshot.timers] == ["drop"]  # the reminder is consumed
    assert chat.advance("5m").texts == []  # it fired once
    assert chat.turns[-1] is not turn and chat.turns[-1].texts == turn.texts  # kept in turns
    assert time.monotonic() - started < 10  # 15 minutes passed, none of them waited


def test_one_move_fires_each_timer_at_its_own_time(engine: Engine | BlockingEngine) -> None:
    """The reminder may be at most 5 minutes late: a ticker running all along fires it at
    10 minutes, then the drop at 25, both within one advance of 30 minutes."""
    chat = at_confirm(engine)
    turn = chat.advance("30m")
    turn.expect("Still there?", "Your order was dropped.", "Menu: 1 to order", stage="menu")
    assert turn.snapshot.data == {} and not turn.snapshot.timers
    assert engine.stats["timers_fired"] == 2 and engine.stats["timers_dropped_late"] == 0
    assert [p.cause for p in chat.proactive] == ["! clock +30m", "! clock +30m"]


def test_tickers_down_is_a_clock_moved_by_hand_then_fired(engine: Engine | BlockingEngine) -> None:
    chat = at_confirm(engine)
    assert chat.clock is not None
    chat.clock.advance(26 * 60)  # no ticker ran meanwhile
    turn = chat.advance(0)  # fire what is due now
    turn.expect("Your order was dropped.", absent=("Still there?",), stage="menu")
    assert engine.stats["timers_dropped_late"] == 1  # 16 minutes late: over its max_late


def test_a_message_pushes_the_timer_back(engine: Engine | BlockingEngine) -> None:
    chat = at_confirm(engine)
    chat.advance("5m")
    chat.say("hmm").expect("yes or no?")
    assert chat.advance("9m").texts == []
    chat.advance("1m").expect("Still there?")


def test_other_users_timers_fire_too_and_stay_theirs(engine: Engine | BlockingEngine) -> None:
    ann = at_confirm(engine, "ann")
    ann.advance("3m")
    bob = at_confirm(engine, "bob")
    turn = ann.advance("10m")  # ann's reminder at 10 min, bob's at 13
    assert turn.texts == ["Still there? Confirm 5? yes/no"]  # ann's only
    assert [(p.user, p.result.texts) for p in ann.proactive] == [
        ("ann", ["Still there? Confirm 5? yes/no"]),
        ("bob", ["Still there? Confirm 5? yes/no"]),
    ]
    assert all(isinstance(p, Proactive) for p in ann.proactive)
    assert bob.advance("1m").texts == []  # already fired, while ann's clock moved
    assert bob.snapshot is not None and [t.name for t in bob.snapshot.timers] == ["drop"]


def test_notify_applies_an_event_under_a_fresh_id(engine: Engine | BlockingEngine) -> None:
    chat = at_confirm(engine)
    first = chat.notify("ping", {"note": "hello"}).expect("Ping: hello", "Confirm 5? yes/no")
    assert first.text == "! event ping" and first.step == "confirm"
    chat.notify("ping", {"note": "again"}).expect("Ping: again")  # a new id: applied
    chat.notify("ping", event_id="e-1").expect("Ping: ")
    repeat = chat.notify("ping", event_id="e-1")
    assert repeat.result.duplicate and repeat.texts == []
    chat.notify("buy").expect("Bought by the shop.", "Menu: 1 to order", stage="menu")
    ignored = chat.notify("buy")
    assert "no handler for event 'buy' in stage 'menu'" in ignored.result.ignored
    assert ignored.texts == [] and ignored.stage == "menu"
    assert [p.cause for p in chat.proactive][-2:] == ["! event buy", "! event buy"]


def test_an_event_can_start_a_conversation(engine: Engine | BlockingEngine) -> None:
    chat = Conversation(engine, "new")
    nothing = chat.advance("1h")  # no conversation: the initial step, version 0
    assert (nothing.stage, nothing.step, nothing.snapshot.version) == ("menu", "home", 0)
    chat.notify("gift", {"amount": 3}).expect("A gift of 3", stage="menu")
    with pytest.raises(ValueError, match="declares no event 'nope'"):
        chat.notify("nope")


def test_a_failed_expectation_names_the_clock_move() -> None:
    chat = at_confirm(nudge_engine(FakeClock()))
    with pytest.raises(AssertionError) as info:
        chat.advance("10m").expect("Your order was dropped.")
    message = str(info.value)
    assert "after '! clock +10m' (order.confirm v" in message
    assert "    | Still there? Confirm 5? yes/no" in message


class Loop(Flow):
    """Two steps whose timers send the conversation back and forth every second."""

    name = "loop"
    takes_first_message = True
    stages = (Stage("s", ("a", "b")),)
    transitions = ()

    @step("s", "a")
    @step("s", "b")
    def wait(self, ctx: Context) -> Outcome:
        return ctx.stay()

    @timeout("s", "a", after=1)
    def to_b(self, ctx: Context) -> Outcome:
        return ctx.stay(step="b")

    @timeout("s", "b", after=1)
    def to_a(self, ctx: Context) -> Outcome:
        return ctx.stay(step="a")


def test_timers_that_keep_arming_each_other_stop_at_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    chat = Conversation(Engine(Loop(), MemoryStore(clock=clock), clock=clock), "u")
    chat.say("go")
    assert chat.advance(5.5).step == "b"  # at 1, 2, 3, 4, 5 seconds: five moves
    assert chat.engine.stats["timers_fired"] == 5
    monkeypatch.setattr(fake_ticker, "MAX_STOPS", 20)
    with pytest.raises(RuntimeError, match="stopped at 20 deadlines within 3600s"):
        chat.advance("1h")


def test_a_flow_without_timers_only_moves_the_clock() -> None:
    from tests.fsm.sample_flows import Counter
    from tests.support import EnginePortOnly

    clock = FakeClock()
    engine = Engine(Counter(), EnginePortOnly(MemoryStore(clock=clock)), clock=clock)
    chat = Conversation(engine, "u")
    chat.say("go")
    before = clock.now()
    assert chat.advance("2h").texts == [] and clock.now() == before + 7200
    with pytest.raises(RuntimeError, match="a clock does not go backwards"):
        chat.advance(-1)


class Inbox(Flow):
    """No timers: an event only."""

    name = "inbox"
    takes_first_message = True
    stages = (Stage("home", ("wait",)),)
    transitions = ()

    @step("home", "wait")
    def wait(self, ctx: Context) -> Outcome:
        return ctx.stay("Waiting.")

    @on_event("letter")
    def letter(self, ctx: Context) -> Outcome:
        return ctx.stay("A letter.")


class Postman(Engine):
    """An engine whose ticker also delivers what waits in its bag (as an engine delivering
    an API's notifications at each tick does)."""

    bag: list[str]

    def fire_due(self, *, limit: int | None = None, on_result: Any = None) -> int:
        while self.bag:
            user = self.bag.pop(0)
            result = self.notify(user, "letter")
            if on_result is not None:
                on_result(user, result)
        return super().fire_due(limit=limit, on_result=on_result)


def test_a_flow_without_timers_still_ticks_so_the_ticker_delivers() -> None:
    clock = FakeClock()
    engine = Postman(Inbox(), MemoryStore(clock=clock), clock=clock)
    engine.bag = []
    chat = Conversation(engine, "u")
    chat.say("hi").expect("Waiting.")
    engine.bag += ["u", "someone-else"]
    chat.advance(1).expect("A letter.", stage="home")
    assert [p.user for p in chat.proactive] == ["u", "someone-else"]
    assert chat.advance(1).texts == []  # delivered once
