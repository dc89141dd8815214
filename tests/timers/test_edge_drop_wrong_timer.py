"""Review: when a timer's handler fails, fire_one_steps fires the claim again with drop=True,
which drops whatever timer is *soonest due at that moment* (``_due_timer``), not the one whose
handler failed. If a user message re-armed the failed timer in between, the step's other due
timer is dropped unrun (logged and counted as failed), and the failing one fires again later."""

from __future__ import annotations

from typing import Any

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock, Flow, Outcome, Stage, on_enter, step, timeout

HOOK: dict[str, Any] = {}


class Two(Flow):
    name = "two"
    stages = (Stage("a", steps=("x",)),)
    transitions = ()

    @on_enter("a", "x")
    def prompt(self, ctx: Context) -> list[str]:
        return ["?"]

    @step("a", "x")
    def x(self, ctx: Context) -> Outcome:
        return ctx.stay()

    @timeout("a", "x", after=60)
    def idle(self, ctx: Context) -> Outcome:
        run = HOOK.pop("during_idle", None)
        if run is not None:
            run()  # the user writes while this handler runs
        raise RuntimeError("idle's bug")

    @timeout("a", "x", after=61, rearm=False)
    def deadline(self, ctx: Context) -> Outcome:
        return ctx.stay("deadline reached")


def test_the_drop_after_a_failure_drops_another_timer() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    ticker = Engine(Two(), store, clock=clock)
    worker = Engine(Two(), store, clock=clock)
    worker.handle("u", "hi", message_id="m1")
    clock.advance(100)  # both due: idle (60) first, then deadline (61)
    HOOK["during_idle"] = lambda: worker.handle("u", "still here", message_id="m2")
    said: list[list[str]] = []
    for _ in range(3):
        ticker.fire_due(on_result=lambda u, r: said.append(r.texts))
        clock.advance(1)
    assert ["deadline reached"] in said, (
        f"deadline never ran: said={said}, timers_failed={ticker.stats['timers_failed']}, "
        f"timers left={[t.name for t in worker.peek('u').timers]}"
    )
