"""Review: ``fsm quarantine restore`` (fsm.ops.recover.restore_quarantined) puts a snapshot
back with its ``timers`` and ``armed`` but does not index them (``fsm restore`` does: see
fsm.ops.backup._index_timers). The quarantined session's entry was claimed meanwhile, found
no session and dropped (GIVE_UP), so the restored conversation waits at its step with armed
timers that no ticker will ever fire."""

from __future__ import annotations

from adapters import MemoryStore
from fsm import Engine, FakeClock
from fsm.firing import GIVE_UP
from fsm.ops.recover import restore_quarantined
from tests.timers.timer_flows import Nudge


def test_a_snapshot_restored_from_the_quarantine_fires_its_timers() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = Engine(Nudge(), store, clock=clock)
    for n, text in enumerate(("hi", "1", "5")):
        engine.handle("u", text, message_id=str(n))
    record = store.load("u").record
    assert record is not None
    qid = store.quarantine("u", record.payload, "operator: looked broken")
    assert qid is not None
    engine.handle("u", "hello", message_id="after")  # the user starts over meanwhile
    for _ in range(int((600 + GIVE_UP) / 5) + 3):  # the tickers run meanwhile
        clock.advance(5)
        engine.fire_due()
    # The operator fixed the cause and puts the conversation back over the new one.
    ok, _, why = restore_quarantined(store, Nudge.spec, "u", qid, clock=clock, replace=True)
    assert ok, why
    snap = engine.peek("u")
    assert snap is not None and [t.name for t in snap.timers] == ["remind", "drop"]
    said: list[list[str]] = []
    for _ in range(20):  # the restored "drop" timer was due at +25 min: within these 10 min
        clock.advance(30)
        engine.fire_due(on_result=lambda u, r: said.append(r.texts))
    assert ["Your order was dropped.", "Menu: 1 to order"] in said, f"never fired: {said}"
    still = engine.peek("u")
    assert still is not None and still.stage == "menu" and not still.timers
