"""Review: a timer indexed with a due already more than GIVE_UP in the past (the second timer
of a step, re-indexed by the firing of the first after the tickers were down; or a restored
backup's timers) is dropped as "stale" by a second ticker that claims it between the index
write and the save: the save then lands with that entry's ``armed``, and the timer is never
fired although the conversation stays at its step."""

from __future__ import annotations

import io
from typing import Any

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock, Flow, Outcome, Stage, on_enter, step, timeout
from fsm.firing import GIVE_UP


class TwoTimers(Flow):
    name = "two"
    session_ttl = 4 * 3600
    stages = (Stage("a", steps=("x",)),)
    transitions = ()

    @on_enter("a", "x")
    def prompt(self, ctx: Context) -> list[str]:
        return ["?"]

    @step("a", "x")
    def x(self, ctx: Context) -> Outcome:
        return ctx.stay()

    @timeout("a", "x", after=60)
    def first(self, ctx: Context) -> Outcome:
        return ctx.stay("first")

    @timeout("a", "x", after=120)
    def second(self, ctx: Context) -> Outcome:
        return ctx.stay("second")


class RacingStore(MemoryStore):
    """Runs ``between`` once, right after the next index write (before the save that follows
    it): another ticker working at that moment."""

    between: Any = None

    def index_due(self, user_key: str, armed: str, due: float) -> None:
        super().index_due(user_key, armed, due)
        run, self.between = self.between, None
        if run is not None:
            run()


def test_a_second_timer_overdue_by_more_than_give_up_is_lost_to_a_concurrent_ticker() -> None:
    clock = FakeClock()
    store = RacingStore(clock=clock)
    worker = Engine(TwoTimers(), store, clock=clock)
    other_ticker = Engine(TwoTimers(), store, clock=clock)
    worker.handle("u", "hi", message_id="m1")
    clock.advance(120 + GIVE_UP + 60)  # the tickers were down for a deploy: both overdue

    seen: dict[str, Any] = {}

    def other() -> None:  # between ticker 1's index write and its save
        seen["fired_by_other"] = other_ticker.fire_due()
        seen["index_after_other"] = list(store.indexed_due())

    store.between = other
    said: list[list[str]] = []
    assert worker.fire_due(on_result=lambda u, r: said.append(r.texts)) == 1
    assert said == [["first"]]
    snap = worker.peek("u")
    assert snap is not None and [t.name for t in snap.timers] == ["second"]
    # The conversation still waits at a.x with "second" armed ...
    for _ in range(5):
        clock.advance(60)
        worker.fire_due(on_result=lambda u, r: said.append(r.texts))
    snap = worker.peek("u")
    assert snap is not None and (snap.stage, snap.step) == ("a", "x")
    # ... and "second" must have fired. It did not: its only index entry was dropped.
    assert said == [["first"], ["second"]], (
        f"second timer lost: snapshot timers={[t.name for t in snap.timers]}, "
        f"index={list(store.indexed_due())}, other ticker saw {seen}"
    )


def test_a_restored_backups_overdue_timer_is_lost_to_a_live_ticker() -> None:
    from fsm.ops.backup import backup, restore

    clock = FakeClock()
    old = MemoryStore(clock=clock)
    Engine(TwoTimers(), old, clock=clock).handle("u", "hi", message_id="m1")
    saved = io.BytesIO()
    backup(old, saved, clock=clock)
    saved.seek(0)
    clock.advance(GIVE_UP + 200)  # restored a few minutes later; its timers are overdue

    new = RacingStore(clock=clock)
    live = Engine(TwoTimers(), new, clock=clock)  # the new deployment's ticker is running
    new.between = lambda: live.fire_due()
    restore(new, saved, clock=clock)
    said: list[list[str]] = []
    for _ in range(5):
        clock.advance(30)
        live.fire_due(on_result=lambda u, r: said.append(r.texts))
    snap = live.peek("u")
    assert snap is not None and (snap.stage, snap.step) == ("a", "x")
    assert said, (
        f"restored timers never fired: snapshot {snap.timers}, index {list(new.indexed_due())}"
    )


def test_the_same_loss_on_redis() -> None:
    import secrets

    from adapters import RedisStore
    from tests import redis_servers

    class RacingRedis(RedisStore):
        between: Any = None

        def index_due(self, user_key: str, armed: str, due: float) -> None:
            super().index_due(user_key, armed, due)
            run, self.between = self.between, None
            if run is not None:
                run()

    clock = FakeClock()
    url, ns = redis_servers.standalone().url, f"review-{secrets.token_hex(4)}"
    store = RacingRedis.from_url(url, namespace=ns)
    try:
        worker = Engine(TwoTimers(), store, clock=clock)
        other = Engine(TwoTimers(), store, clock=clock)
        worker.handle("u", "hi", message_id="m1")
        clock.advance(120 + GIVE_UP + 60)
        store.between = lambda: other.fire_due()
        said: list[list[str]] = []
        worker.fire_due(on_result=lambda u, r: said.append(r.texts))
        for _ in range(5):
            clock.advance(60)
            worker.fire_due(on_result=lambda u, r: said.append(r.texts))
        assert said == [["first"], ["second"]], (
            f"lost on Redis too: said={said}, index={list(store.indexed_due())}"
        )
    finally:
        store.close()
