"""The outbox (``outbox=True``): replies saved with the state that produced them until the
transport confirms them sent; and ``pressed``, a tapped option told apart from typed text."""

from __future__ import annotations

from typing import Any

import pytest

from adapters import MemoryStore
from fsm import Context, FakeClock, Flow, Outcome, Stage, step
from fsm.outbox import MAX_OUTBOX
from fsm.reply import buttons

from .conftest import make_engine
from .sample_flows import Counter

CONFIRM = buttons("Sure?", [("cancel", "Cancel"), ("ok", "OK")])


class Taps(Flow):
    """Says what it got: a tap (``ctx.pressed``) or typed text."""

    name = "taps"
    takes_first_message = True
    stages = (Stage("start", ("ask",)),)
    transitions = ()

    @step("start", "ask")
    def ask(self, ctx: Context) -> Outcome:
        if ctx.pressed is not None:
            return ctx.stay(f"pressed {ctx.pressed}", CONFIRM)
        return ctx.stay(f"typed {ctx.text}")


@pytest.fixture
def outboxed(clock: FakeClock, engine_kind: str) -> Any:
    return make_engine(engine_kind, Counter(), MemoryStore(clock=clock), clock=clock, outbox=True)


def test_replies_stay_in_the_outbox_until_confirmed(outboxed: Any) -> None:
    first = outboxed.handle("u", "go", message_id="m1")
    assert [o.reply.body for o in first.outbox] == ["counting"]
    assert first.outbox[0].message_id == "m1"
    second = outboxed.handle("u", "x", message_id="m2")
    # Not confirmed: the first reply is still pending, before the second's.
    assert [(o.message_id, o.reply.body) for o in second.outbox] == [
        ("m1", "counting"),
        ("m2", "1"),
    ]
    assert outboxed.confirm("u", [o.key for o in second.outbox])
    stored = outboxed.peek("u")
    assert stored.outbox == ()
    assert stored.version == second.snapshot.version + 1  # a save of its own
    assert stored.data == {"count": 1}  # nothing else changed


def test_a_redelivery_returns_what_is_still_pending(outboxed: Any) -> None:
    first = outboxed.handle("u", "go", message_id="m1")
    again = outboxed.handle("u", "go", message_id="m1")
    assert again.duplicate and again.replies == ()
    assert again.outbox == first.outbox  # the process died before sending: send them now
    assert outboxed.confirm("u", [o.key for o in again.outbox])
    third = outboxed.handle("u", "go", message_id="m1")
    assert third.duplicate and third.outbox == ()  # confirmed: never sent twice


def test_confirming_a_part_keeps_the_rest_in_order(outboxed: Any) -> None:
    outboxed.handle("u", "go", message_id="m1")
    second = outboxed.handle("u", "x", message_id="m2")
    third = outboxed.handle("u", "x", message_id="m3")
    assert [o.reply.body for o in third.outbox] == ["counting", "1", "2"]
    assert outboxed.confirm("u", [second.outbox[0].key])
    assert [o.reply.body for o in outboxed.peek("u").outbox] == ["1", "2"]
    # Confirming what is gone already is fine; an empty confirm writes nothing.
    version = outboxed.peek("u").version
    assert outboxed.confirm("u", [second.outbox[0].key])
    assert outboxed.confirm("u", [])
    assert outboxed.peek("u").version == version


def test_confirm_retries_a_lost_compare_and_set(outboxed: Any) -> None:
    outboxed.handle("u", "go", message_id="m1")
    pending = outboxed.handle("u", "x", message_id="m2").outbox
    # Another worker saves meanwhile (its own engine: this one's recent record is stale).
    other = make_engine("sync", Counter(), outboxed.store, clock=outboxed.clock, outbox=True)
    other.handle("u", "x", message_id="m3")
    assert outboxed.confirm("u", [o.key for o in pending])
    left = outboxed.peek("u")
    assert [o.reply.body for o in left.outbox] == ["2"] and left.data == {"count": 2}


def test_the_outbox_is_bounded(outboxed: Any) -> None:
    outboxed.handle("u", "go", message_id="m0")
    for n in range(1, MAX_OUTBOX + 5):
        last = outboxed.handle("u", "x", message_id=f"m{n}")
    assert len(last.outbox) == MAX_OUTBOX
    assert last.outbox[-1].reply.body == str(MAX_OUTBOX + 4)  # the newest kept
    # The user is told once, first, that earlier replies were dropped (it takes a place).
    bodies = [o.reply.body for o in last.outbox]
    assert bodies[0] == outboxed.dropped_notice and bodies.count(bodies[0]) == 1
    assert bodies[1] == str(6)  # "counting", "1".."5" dropped
    assert outboxed.stats.as_dict()["outbox_dropped"] == 6


def test_outbox_entries_have_unique_ids_even_when_versions_are_reused(outboxed: Any) -> None:
    """A failover that lost writes reuses versions: what was sent is told apart by id."""
    first = outboxed.handle("u", "go", message_id="m1").outbox
    # The store lost that write (a replica promoted without it): the next save is version 1.
    lost = make_engine("sync", Counter(), MemoryStore(clock=outboxed.clock), outbox=True)
    again = lost.handle("u", "go", message_id="m2").outbox
    assert [o.version for o in first] == [o.version for o in again] == [1]
    assert first[0].key != again[0].key and len(first[0].key) == 16
    # Confirming the old entry's key does not drop the new one.
    assert lost.confirm("u", [first[0].key])
    assert [o.key for o in lost.peek("u").outbox] == [again[0].key]


def test_without_the_outbox_nothing_is_kept(counter_engine: Any) -> None:
    result = counter_engine.handle("u", "go", message_id="m1")
    assert result.replies and result.outbox == ()


def test_a_tap_and_typed_text_are_told_apart(clock: FakeClock, engine_kind: str) -> None:
    engine = make_engine(engine_kind, Taps(), MemoryStore(clock=clock), clock=clock)
    typed = engine.handle("u", "cancel", message_id="m1")
    tapped = engine.handle("u", "cancel", message_id="m2", pressed="cancel")
    assert [r.body for r in typed.replies] == ["typed cancel"]
    assert [r.body for r in tapped.replies] == ["pressed cancel", "Sure?"]


def test_healing_a_poisoned_session_keeps_its_pending_replies(
    clock: FakeClock, engine_kind: str
) -> None:
    engine = make_engine(
        engine_kind, Counter(), MemoryStore(clock=clock), clock=clock, outbox=True, poison_after=1
    )
    engine.handle("u", "go", message_id="m1")  # "counting": saved, never confirmed
    healed = engine.handle("u", "boom", message_id="m2")  # the step raises: quarantined
    bodies = [o.reply.body for o in healed.outbox]
    assert bodies == ["counting", engine.reset_notice, "counting"]
    assert healed.outbox[0].message_id == "m1"
