"""Timers and events in the core, beyond the happy path: declarations refused when they
cannot work, tickers racing each other and the user (real threads), failing handlers,
entries that stand for nothing, the async engine."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from adapters import AsyncMemoryStore, MemoryStore
from fsm import (
    AsyncEngine,
    Context,
    Engine,
    FakeClock,
    Flow,
    Outcome,
    Stage,
    on_enter,
    step,
    timeout,
)
from fsm.errors import InvalidFlowDefinition
from fsm.firing import CLAIM_HOLD, GIVE_UP
from fsm.records import Due
from fsm.store import SessionStore
from fsm.timers import seconds

from .timer_flows import Nudge


def engine_on(clock: FakeClock, flow: Flow | None = None, **options: Any) -> Engine:
    return Engine(flow or Nudge(), MemoryStore(clock=clock), clock=clock, **options)


def to_confirm(engine: Engine, user: str) -> None:
    for n, text in enumerate(("hi", "1", "5")):
        engine.handle(user, text, message_id=f"{user}-{n}")


def events(engine: Engine, user: str) -> list[str]:
    store = engine.store
    assert isinstance(store, MemoryStore)
    return [entry.event for entry in reversed(store.history(user))]


# -- declarations --------------------------------------------------------------------------
def test_delays_are_read_as_seconds_or_unit_strings() -> None:
    assert seconds("10m") == 600 and seconds("1h30m") == 5400 and seconds(2.5) == 2.5
    for bad in ("10", "ten minutes", "0s", "-5m", 0, True, "5x"):
        with pytest.raises(ValueError):
            seconds(bad)  # type: ignore[arg-type]


def _flow_with(decorate: Any, *, ttl: float = 30 * 60) -> type[Flow]:
    class F(Flow):
        name = "f"
        session_ttl = ttl
        stages = (Stage("a", steps=("x", "act")),)
        transitions = ()

        @on_enter("a", "x")
        def prompt(self, ctx: Context) -> list[str]:
            return ["?"]

        @step("a", "x")
        def x(self, ctx: Context) -> Outcome:
            return ctx.stay()

        @step("a", "act")
        def act(self, ctx: Context) -> Outcome:
            return ctx.stay()

        @decorate
        def t(self, ctx: Context) -> Outcome:
            return ctx.stay("tick")

    return F


def test_a_timer_that_cannot_fire_within_the_session_is_refused_when_the_class_is_built() -> None:
    with pytest.raises(InvalidFlowDefinition, match="extends_session=True"):
        _flow_with(timeout("a", "x", after="30m"))
    _flow_with(timeout("a", "x", after="30m", extends_session=True))  # it may extend it
    with pytest.raises(InvalidFlowDefinition, match="does not declare"):
        _flow_with(timeout("a", "nope", after="1m"))
    with pytest.raises(InvalidFlowDefinition, match="unknown stage"):
        _flow_with(timeout("b", "x", after="1m"))


def test_the_engine_checks_timers_against_its_own_session_ttl_and_store() -> None:
    flow = _flow_with(timeout("a", "x", after="20m"))()
    clock = FakeClock()
    with pytest.raises(ValueError, match="session"):
        Engine(flow, MemoryStore(clock=clock), clock=clock, session_ttl=600)

    class NoIndex(MemoryStore):
        keeps_timers = False

    with pytest.raises(ValueError, match="keeps no index of deadlines"):
        Engine(flow, NoIndex(clock=clock), clock=clock)
    assert not SessionStore.keeps_timers


def test_a_delay_read_from_data_and_a_timer_that_extends_the_session() -> None:
    def later(ctx: Context) -> float:
        return float(ctx.data.get("wait", 60))

    flow = _flow_with(timeout("a", "x", after=later, extends_session=True), ttl=100)()
    clock = FakeClock()
    engine = engine_on(clock, flow)
    engine.handle("u", "hi", message_id="1")
    snap = engine.peek("u")
    assert snap is not None and snap.timers[0].due == clock.now() + 60
    store = engine.store
    assert isinstance(store, MemoryStore)
    # The session lives a full session_ttl after the timer is due (it extends the session).
    assert store.ttl("u") == pytest.approx(60 + 100)
    clock.advance(150)  # past the session's own 100 s: still alive, and the timer fired
    assert engine.fire_due() == 1
    snap = engine.peek("u")
    assert snap is not None and not snap.timers


# -- races ---------------------------------------------------------------------------------
def test_tickers_in_threads_fire_each_timer_once() -> None:
    clock = FakeClock()
    engine = engine_on(clock)
    users = [f"u{n}" for n in range(120)]
    for user in users:
        to_confirm(engine, user)
    clock.advance(600)
    tickers = [engine_on(clock) for _ in range(3)]
    for ticker in tickers:
        ticker.store = engine.store  # three workers on one store
    fired: list[int] = []
    lock = threading.Lock()

    def tick(ticker: Engine) -> None:
        for _ in range(50):
            n = ticker.fire_due(limit=7)
            with lock:
                fired.append(n)

    threads = [threading.Thread(target=tick, args=(t,)) for t in tickers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(fired) == len(users)
    for user in users:
        assert events(engine, user).count("timer:remind") == 1


def _race_once(trial: int) -> None:
    clock = FakeClock()
    engine = engine_on(clock)
    to_confirm(engine, "u")
    clock.advance(600)
    barrier = threading.Barrier(2)
    said: dict[str, Any] = {}

    def user() -> None:
        barrier.wait()
        said["user"] = engine.handle("u", "yes", message_id=f"yes-{trial}").texts

    def ticker() -> None:
        barrier.wait()
        said["fired"] = engine.fire_due()

    threads = [threading.Thread(target=user), threading.Thread(target=ticker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    history = events(engine, "u")
    assert said["user"][0] == "Ordered."
    snap = engine.peek("u")
    assert snap is not None and (snap.stage, snap.timers) == ("menu", ())
    if said["fired"]:  # the reminder went first: saved before the user's answer
        assert history[-2:] == ["timer:remind", "done"]
    else:
        assert "timer:remind" not in history
    engine.fire_due()
    assert "timer:remind" not in events(engine, "u")[history.index("done") :]


def test_a_message_racing_a_firing_is_applied_after_or_instead_never_half() -> None:
    for trial in range(40):
        _race_once(trial)


# -- failures and stale entries ------------------------------------------------------------
class Broken(Nudge):
    name = "nudge"

    @timeout("order", "confirm", after="10m")
    def remind(self, ctx: Context) -> Outcome:
        raise RuntimeError("bug")


def test_a_failing_timer_handler_drops_its_timer_once_and_is_counted() -> None:
    clock = FakeClock()
    engine = engine_on(clock, Broken())
    to_confirm(engine, "u")
    clock.advance(600)
    assert engine.fire_due() == 0
    assert engine.stats["timers_failed"] == 1
    snap = engine.peek("u")
    assert snap is not None and [t.name for t in snap.timers] == ["drop"]
    clock.advance(60)
    assert engine.fire_due() == 0 and engine.stats["timers_failed"] == 1  # not retried


def test_an_entry_whose_save_has_not_landed_is_looked_at_again_then_given_up() -> None:
    clock = FakeClock()
    engine = engine_on(clock)
    store = engine.store
    assert isinstance(store, MemoryStore)
    to_confirm(engine, "u")
    stored = engine.peek("u")
    assert stored is not None
    ahead = f"{stored.version + 5}.abcdef"  # a save in flight, not landed yet
    store.index_due("u", ahead, clock.now())
    loads = 0
    for _ in range(int(GIVE_UP // CLAIM_HOLD) + 3):  # a ticker every claim_hold, past GIVE_UP
        engine.fire_due()
        loads += 1
        left = [d for d in store.indexed_due() if d.armed == ahead]
        claimed = store.due_stats(clock.now()).claimed
        if not left and not claimed:
            break
        assert left == [] and claimed == 1  # kept claimed: looked at again when it runs out
        clock.advance(CLAIM_HOLD)
    assert [d for d in store.indexed_due() if d.armed == ahead] == []
    assert store.due_stats(clock.now()).claimed == 0
    assert loads <= GIVE_UP // CLAIM_HOLD + 2  # given up once GIVE_UP past its due
    behind = Due("u", "1.abcdef", clock.now())  # superseded: dropped at once
    store.index_due(behind.user_key, behind.armed, behind.due)
    engine.fire_due()
    assert [d for d in store.indexed_due() if d.armed == behind.armed] == []
    assert store.due_stats(clock.now()).claimed == 0


def test_a_ticker_that_dies_leaves_a_claim_that_comes_back() -> None:
    clock = FakeClock()
    engine = engine_on(clock)
    store = engine.store
    assert isinstance(store, MemoryStore)
    to_confirm(engine, "u")
    clock.advance(600)
    claimed = store.claim_due(clock.now(), limit=10, hold=30)  # and then the ticker died
    assert len(claimed) == 1 and engine.fire_due() == 0
    clock.advance(31)
    assert engine.fire_due() == 1


# -- async ---------------------------------------------------------------------------------
def test_the_async_engine_notifies_and_fires() -> None:
    clock = FakeClock()
    store = AsyncMemoryStore(clock=clock)
    engine = AsyncEngine(Nudge(), store, clock=clock)

    async def scenario() -> None:
        for n, text in enumerate(("hi", "1", "5")):
            await engine.handle("u", text, message_id=str(n))
        pinged = await engine.notify("u", "ping", data={"note": "n"}, event_id="e")
        assert pinged.texts == ["Ping: n", "Confirm 5? yes/no"]
        assert (await engine.notify("u", "ping", event_id="e")).duplicate
        clock.advance(600)
        got: list[tuple[str, list[str]]] = []

        async def deliver(user: str, result: Any) -> None:
            got.append((user, result.texts))

        assert await engine.fire_due(on_result=deliver) == 1
        assert got == [("u", ["Still there? Confirm 5? yes/no"])]

    asyncio.run(scenario())


def test_a_restored_backup_fires_its_timers_in_the_new_store() -> None:
    import io

    from fsm.ops.backup import backup, restore

    clock = FakeClock()
    engine = engine_on(clock)
    to_confirm(engine, "u")
    saved = io.BytesIO()
    store = engine.store
    assert isinstance(store, MemoryStore)
    backup(store, saved, clock=clock)
    fresh = MemoryStore(clock=clock)
    saved.seek(0)
    restore(fresh, saved, clock=clock)
    assert [d.user_key for d in fresh.indexed_due()] == ["u"]
    other = Engine(Nudge(), fresh, clock=clock)
    clock.advance(600)
    assert other.fire_due() == 1
