"""Review: a user's tap on an event_option button is turned into an event; when the event does
not apply (no handler in the user's stage, or the session expired and the handler does not
start one) the message is acknowledged with no reply at all. A user's own input is answered
silently: after the session expired, not even the expired notice and the menu."""

from __future__ import annotations

from adapters import MemoryStore
from fsm import Engine, FakeClock, event_option
from tests.timers.timer_flows import Nudge


def test_a_tap_that_applies_no_event_is_still_answered() -> None:
    clock = FakeClock()
    engine = Engine(Nudge(), MemoryStore(clock=clock), clock=clock)
    engine.handle("u", "hi", message_id="1")
    tapped = engine.handle("u", "Buy", message_id="2", pressed=event_option("buy", "x"))
    clock.advance(3600)  # the session expired
    late = engine.handle("u", "Ping", message_id="3", pressed=event_option("ping", "x"))
    assert tapped.texts and late.texts, (
        f"silent: {tapped.texts!r} ({tapped.ignored}); {late.texts!r} ({late.ignored})"
    )
