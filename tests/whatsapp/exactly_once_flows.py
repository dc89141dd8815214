"""Engine factories for the ``fsm serve`` workers of :mod:`tests.whatsapp.test_exactly_once`
(``fsm serve --engine tests.whatsapp.exactly_once_flows:counter_engine``).

Kept light (no pytest, no test helpers): each worker process imports this module.
"""

from __future__ import annotations

import asyncio

from fsm import Context, Flow, Outcome, Stage, step
from fsm.async_engine import AsyncEngine
from fsm.store import AsyncStore
from tests.fsm.sample_flows import Counter

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
