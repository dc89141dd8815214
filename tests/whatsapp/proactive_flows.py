"""A flow with a short timer and external events, and its engine factories, for the tests of
``POST /events``, the ticker, ``fsm timers`` and ``fsm notify``
(``fsm serve --engine tests.whatsapp.proactive_flows:reminder_engine``).

Kept light (no pytest, no test helpers): ``fsm serve`` workers import this module.
"""

from __future__ import annotations

from fsm import Context, Flow, Outcome, Stage, on_event, step, timeout
from fsm.async_engine import AsyncEngine
from fsm.store import AsyncStore

#: How long after the user's message the reminder is due (seconds).
REMIND_AFTER = 1.0


class Reminder(Flow):
    """Every message is noted (``noted <text>``) and re-arms a reminder due
    :data:`REMIND_AFTER` seconds later (``Still there? You said <text>.``), which fires once.
    Events: ``ping`` says its note to a user with a conversation, ``gift`` starts one,
    ``boom`` is a handler that fails."""

    name = "reminder"
    takes_first_message = True
    stages = (Stage("open", ("note",)),)
    transitions = ()

    @step("open", "note")
    def note(self, ctx: Context) -> Outcome:
        return ctx.stay(f"noted {ctx.text}", set={"last": ctx.text})

    @timeout("open", "note", after=REMIND_AFTER)
    def remind(self, ctx: Context) -> Outcome:
        return ctx.stay(f"Still there? You said {ctx.data.get('last', '')}.")

    @on_event("ping", reprompt=False)
    def ping(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        return ctx.stay(f"Ping: {ctx.event.data.get('note', '')}")

    @on_event("gift", starts=True, reprompt=False)
    def gift(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        return ctx.stay(f"A gift of {ctx.event.data.get('amount', 0)}")

    @on_event("boom", reprompt=False)
    def boom(self, ctx: Context) -> Outcome:
        raise RuntimeError("the handler's own bug")


def reminder_engine(store: AsyncStore) -> AsyncEngine:
    return AsyncEngine(Reminder(), store)
