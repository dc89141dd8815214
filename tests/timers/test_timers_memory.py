"""Timers and events on the memory store with a fake clock: arming, re-arming, cancelling,
firing once, late drops, events applied once."""

from __future__ import annotations

from adapters import MemoryStore
from fsm import Engine, FakeClock

from .timer_flows import Nudge


def setup() -> tuple[Engine, MemoryStore, FakeClock]:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    return Engine(Nudge(), store, clock=clock), store, clock


def to_confirm(engine: Engine, user: str = "u") -> None:
    engine.handle(user, "hi", message_id=f"{user}-1")
    engine.handle(user, "1", message_id=f"{user}-2")
    engine.handle(user, "5", message_id=f"{user}-3")


def test_arriving_at_the_step_arms_its_timers_and_the_index() -> None:
    engine, store, clock = setup()
    to_confirm(engine)
    snap = engine.peek("u")
    assert snap is not None
    assert [t.name for t in snap.timers] == ["remind", "drop"]
    assert snap.timers[0].due == clock.now() + 600
    assert [(d.user_key, d.armed) for d in store.indexed_due()] == [("u", snap.armed)]


def test_a_due_timer_fires_once_with_its_reply() -> None:
    engine, store, clock = setup()
    to_confirm(engine)
    clock.advance(599)
    assert engine.fire_due() == 0
    clock.advance(1)
    said: list[tuple[str, list[str]]] = []
    assert engine.fire_due(on_result=lambda u, r: said.append((u, r.texts))) == 1
    assert said == [("u", ["Still there? Confirm 5? yes/no"])]
    assert engine.fire_due() == 0  # consumed
    snap = engine.peek("u")
    assert snap is not None and [t.name for t in snap.timers] == ["drop"]
    clock.advance(15 * 60)
    said.clear()
    assert engine.fire_due(on_result=lambda u, r: said.append((u, r.texts))) == 1
    assert said == [("u", ["Your order was dropped.", "Menu: 1 to order"])]
    snap = engine.peek("u")
    assert snap is not None and snap.stage == "menu" and not snap.timers
    assert list(store.indexed_due()) == []


def test_leaving_the_step_cancels_and_a_stale_entry_fires_nothing() -> None:
    engine, store, clock = setup()
    to_confirm(engine)
    engine.handle("u", "yes", message_id="u-4")
    snap = engine.peek("u")
    assert snap is not None and not snap.timers
    clock.advance(3600)
    assert engine.fire_due() == 0
    assert list(store.indexed_due()) == []
    assert store.due_stats(clock.now()).claimed == 0


def test_a_message_at_the_step_pushes_the_timers_back() -> None:
    engine, _store, clock = setup()
    to_confirm(engine)
    clock.advance(500)
    engine.handle("u", "maybe", message_id="u-4")
    clock.advance(200)  # 700 s after arriving, 200 after the message
    assert engine.fire_due() == 0
    clock.advance(400)
    assert engine.fire_due() == 1


def test_a_late_timer_beyond_max_late_is_dropped_not_fired() -> None:
    engine, _store, clock = setup()
    to_confirm(engine)
    clock.advance(600 + 301)
    fired: list[list[str]] = []
    engine.fire_due(on_result=lambda u, r: fired.append(r.texts))
    assert fired == []  # the reminder is dropped (over 5 min late); the drop is not due yet
    assert engine.stats["timers_dropped_late"] == 1
    snap = engine.peek("u")
    assert snap is not None and [t.name for t in snap.timers] == ["drop"]
    clock.advance(600)
    engine.fire_due(on_result=lambda u, r: fired.append(r.texts))
    assert fired == [["Your order was dropped.", "Menu: 1 to order"]]


def test_events_apply_wherever_the_conversation_is_once_per_id() -> None:
    engine, _store, _clock = setup()
    to_confirm(engine)
    first = engine.notify("u", "ping", data={"note": "hello"}, event_id="e1")
    assert first.texts == ["Ping: hello", "Confirm 5? yes/no"]  # the step's prompt again
    assert first.snapshot.step == "confirm" and first.snapshot.data["amount"] == "5"
    again = engine.notify("u", "ping", data={"note": "hello"}, event_id="e1")
    assert again.duplicate and again.texts == []
    moved = engine.notify("u", "buy", event_id="e2")
    assert moved.texts == ["Bought by the shop.", "Menu: 1 to order"]
    ignored = engine.notify("u", "buy", event_id="e3")
    assert ignored.ignored and ignored.texts == []


def test_an_event_starts_a_conversation_only_if_its_handler_says_so() -> None:
    engine, _store, _clock = setup()
    assert engine.notify("new", "ping", event_id="p").ignored
    assert engine.peek("new") is None
    gift = engine.notify("new", "gift", data={"amount": 3}, event_id="g")
    assert gift.texts == ["A gift of 3"] and engine.peek("new") is not None


def test_unknown_events_are_refused() -> None:
    engine, _, _ = setup()
    import pytest

    with pytest.raises(ValueError, match="declares no event 'nope'"):
        engine.notify("u", "nope")


def test_the_last_inbound_time_is_recorded() -> None:
    engine, _store, clock = setup()
    engine.handle("u", "hi", message_id="a")
    at = clock.now()
    clock.advance(30)
    engine.notify("u", "ping", event_id="x")
    snap = engine.peek("u")
    assert snap is not None and snap.last_inbound == at


def test_an_event_option_tapped_at_any_step_applies_the_event_and_keeps_the_draft() -> None:
    from fsm import event_option

    engine, _store, clock = setup()
    to_confirm(engine)
    tap = engine.handle(
        "u", event_option("ping", "x"), message_id="tap", pressed=event_option("ping", "x")
    )
    assert tap.texts == ["Ping: ", "Confirm 5? yes/no"]
    assert tap.snapshot.step == "confirm" and tap.snapshot.data["amount"] == "5"
    assert tap.snapshot.last_inbound == clock.now()
    again = engine.handle("u", "x", message_id="tap", pressed=event_option("ping", "x"))
    assert again.duplicate
