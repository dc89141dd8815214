"""Review: an event handler declared ``side_effects=True`` runs under the user's lease, but a
lease this process already holds (a send lease folded in, taken "for aged") is renewed before
the decision only when the *step* runs side effects or an action is due (``acts`` in
``MessageProtocol._pass`` ignores the event's own ``side_effects``). So the event's side effect
can run with the lease already lapsed: another worker may hold it and run its own."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters import AsyncMemoryStore, MemoryStore
from fsm import AsyncEngine, Context, FakeClock, Flow, Outcome, Stage, on_enter, on_event, step

SEEN: dict[str, Any] = {}


class Pay(Flow):
    name = "pay"
    stages = (Stage("menu", steps=("home",)),)
    transitions = ()

    @on_enter("menu", "home")
    def prompt(self, ctx: Context) -> list[str]:
        return ["Menu"]

    @step("menu", "home")
    def home(self, ctx: Context) -> Outcome:
        return ctx.stay("ok")

    @on_event("refund", side_effects=True, reprompt=False)
    def refund(self, ctx: Context) -> Outcome:
        SEEN["lock_while_refunding"] = SEEN["store"].lock_info("u")  # the API call happens here
        return ctx.stay("refunded")


def test_a_side_effecting_event_renews_a_folded_lease_before_running() -> None:
    clock = FakeClock()
    sync = MemoryStore(clock=clock)
    SEEN["store"] = sync
    engine = AsyncEngine(Pay(), AsyncMemoryStore(sync), clock=clock, outbox=True, send_lease=5)

    async def scenario() -> None:
        first = await engine.handle("u", "hi", message_id="m1")
        assert first.lease is not None
        keys = [o.key for o in first.snapshot.outbox]
        engine.sent("u", first.lease, keys, done=True)  # confirmation deferred (confirm_delay)
        clock.advance(6)  # the send lease (5 s) ran out before the event came
        result = await engine.notify("u", "refund", event_id="r1")
        assert result.texts == ["refunded"]

    asyncio.run(scenario())
    assert SEEN["lock_while_refunding"] is not None, (
        "the side-effecting event ran while nobody held the user's lease"
    )


class PayStep(Pay):
    name = "pay"

    @step("menu", "home", side_effects=True)
    def home(self, ctx: Context) -> Outcome:
        if ctx.text == "refund":
            SEEN["lock_while_step"] = SEEN["store"].lock_info("u")
        return ctx.stay("ok")


def test_control_a_side_effecting_step_does_renew_it() -> None:
    clock = FakeClock()
    sync = MemoryStore(clock=clock)
    SEEN["store"] = sync
    engine = AsyncEngine(PayStep(), AsyncMemoryStore(sync), clock=clock, outbox=True, send_lease=5)

    async def scenario() -> None:
        first = await engine.handle("u", "hi", message_id="m1")
        assert first.lease is not None
        engine.sent("u", first.lease, [o.key for o in first.snapshot.outbox], done=True)
        clock.advance(6)
        await engine.handle("u", "refund", message_id="m2")

    asyncio.run(scenario())
    assert SEEN["lock_while_step"] is not None
