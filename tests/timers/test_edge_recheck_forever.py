"""Review: an index entry whose arming save never lands (the save failed after the index
write, or the writer died between the two, or the session was deleted/quarantined) is meant
to be "dropped once it is GIVE_UP seconds past due". But each recheck re-indexes it at
``now + RECHECK``, and the next claim measures lateness from that *new* due: with a ticker
running, ``now - claim.due`` never exceeds RECHECK, so the entry is rechecked every 5 s
forever (a claim, a load, an index write and a settle each time, per such entry)."""

from __future__ import annotations

import contextlib
from typing import Any

from adapters import MemoryStore
from fsm import Engine, FakeClock
from fsm.errors import StoreUnavailable
from fsm.firing import GIVE_UP
from tests.timers.timer_flows import Nudge


class FailsOneSave(MemoryStore):
    fail_next_save = False
    loads = 0

    def save(self, user_key: str, payload: bytes, **kw: Any) -> Any:
        if self.fail_next_save:
            self.fail_next_save = False
            raise StoreUnavailable("save", user_key=user_key, detail="timeout")
        return super().save(user_key, payload, **kw)

    def load(self, user_key: str, **kw: Any) -> Any:
        self.loads += 1
        return super().load(user_key, **kw)


def test_an_entry_whose_save_never_landed_is_given_up_while_a_ticker_runs() -> None:
    clock = FakeClock()
    store = FailsOneSave(clock=clock)
    engine = Engine(Nudge(), store, clock=clock)
    engine.handle("u", "hi", message_id="0")
    engine.handle("u", "1", message_id="1")
    store.fail_next_save = True
    # The save arriving at the confirm step fails after its index entry was written.
    with contextlib.suppress(StoreUnavailable):
        engine.handle("u", "5", message_id="2")
    (orphan,) = list(store.indexed_due())  # stands for a save that never landed
    store.loads = 0
    for _ in range(int(600 + 4 * GIVE_UP)):  # the user never writes again; a ticker runs
        clock.advance(1)
        engine.fire_due()
    left = [d for d in store.indexed_due() if d.armed == orphan.armed]
    assert left == [], (
        f"{4 * GIVE_UP:g}s after it was due the orphan entry is still indexed ({left}); "
        f"the ticker loaded the session {store.loads} times for it"
    )


def test_a_deleted_sessions_entry_is_given_up_while_a_ticker_runs() -> None:
    clock = FakeClock()
    store = FailsOneSave(clock=clock)
    engine = Engine(Nudge(), store, clock=clock)
    for n, text in enumerate(("hi", "1", "5")):
        engine.handle("u", text, message_id=str(n))
    record = store.load("u").record
    assert record is not None
    assert store.quarantine("u", record.payload, "operator") is not None  # gone from sessions
    store.loads = 0
    for _ in range(int(600 + 4 * GIVE_UP)):
        clock.advance(1)
        engine.fire_due()
    assert list(store.indexed_due()) == [], (
        f"entry of a session that is gone still indexed; {store.loads} loads for it"
    )
