"""Engine factories for the ``fsm serve`` workers of :mod:`tests.whatsapp.test_exactly_once`
(``fsm serve --engine tests.whatsapp.exactly_once_flows:counter_engine``).

Kept light (no pytest, no test helpers): each worker process imports this module.
"""

from __future__ import annotations

import asyncio

from fsm import Context, Flow, Outcome, Stage, TemplateSpec, on_event, step, template
from fsm.async_engine import AsyncEngine
from fsm.store import AsyncStore
from tests.fsm.sample_flows import Counter, Receipts

#: How long the Ledger's "slow..." messages take to handle.
SLOW_STEP = 2.0


class Ledger(Flow):
    """Every message is appended to ``data["seen"]`` and answered ``noted <text>``; a text
    starting with "slow" takes :data:`SLOW_STEP` seconds (awaited: no thread held)."""

    name = "ledger"
    takes_first_message = True
    stages = (Stage("open", ("note",)),)
    transitions = ()

    @step("open", "note")
    async def note(self, ctx: Context) -> Outcome:
        if ctx.text.startswith("slow"):
            await asyncio.sleep(SLOW_STEP)
        seen = [*ctx.data.get("seen", []), ctx.text]
        return ctx.stay(f"noted {ctx.text}", set={"seen": seen})


def counter_engine(store: AsyncStore) -> AsyncEngine:
    """The Counter flow: "counting", then "1", "2", ... one reply per message."""
    return AsyncEngine(Counter(), store)


def ledger_engine(store: AsyncStore) -> AsyncEngine:
    return AsyncEngine(Ledger(), store)


class Offers(Flow):
    """An ``offer`` event starts a conversation and says so with the ``offer_received``
    template (its free-form fallback inside the window); messages are noted."""

    name = "offers"
    takes_first_message = True
    session_ttl = 48 * 3600
    stages = (Stage("open", ("note",)),)
    transitions = ()
    templates = (TemplateSpec("offer_received", "en", body_params=1),)

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        return ctx.stay(f"noted {ctx.text}")

    @on_event("offer", starts=True, reprompt=False)
    def offer(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        amount = str(ctx.event.data["amount"])
        return ctx.stay(
            template("offer_received", "en", params=[amount], fallback=f"An offer: {amount}.")
        )


def offers_engine(store: AsyncStore) -> AsyncEngine:
    return AsyncEngine(Offers(), store)


def receipts_engine(store: AsyncStore) -> AsyncEngine:
    return AsyncEngine(Receipts(), store)
