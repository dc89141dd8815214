"""Review: a timer whose handler moves the conversation to an action step (cancel an offer
through an API when it times out). The timer's save lands (timer consumed, action pending),
then the action fails. fire_one_steps handles that as if the *timer's handler* had failed:

* the replies of the timer's own save (carried by the exception, ``exc.replies``) are dropped:
  on_result never sees them (without an outbox they are lost; with one they wait for the
  user's next message);
* a non-transient failure is logged as "timer handler failed ... the timer is dropped", the
  drop pass then re-runs the pending action (the claim's ``timer:<armed>`` id is seen, and a
  seen id finishes a pending action), fails again, and the claim is left to run out: the
  action is retried by every ticker round after claim_hold, forever (a message in the same
  situation abandons the action)."""

from __future__ import annotations

from typing import Any

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock, Flow, Outcome, Stage, on_enter, step, timeout
from fsm.flow import action

CALLS: list[str] = []
MODE = {"fail": "once"}


class Offer(Flow):
    name = "offer"
    stages = (Stage("o", steps=("wait", "cancel", "done")),)
    transitions = ()

    @on_enter("o", "wait")
    def prompt(self, ctx: Context) -> list[str]:
        return ["Waiting for payment"]

    @step("o", "wait")
    def wait(self, ctx: Context) -> Outcome:
        return ctx.stay()

    @timeout("o", "wait", after=60)
    def expire(self, ctx: Context) -> Outcome:
        return ctx.stay("Your offer expired; cancelling it.", step="cancel")

    @action("o", "cancel")
    def cancel(self, ctx: Context) -> Outcome:
        CALLS.append(ctx.idempotency_key or "")
        if MODE["fail"] == "always":
            raise ValueError("the flow's bug")
        if len(CALLS) == 1:
            raise ConnectionError("payments API timed out")
        return ctx.stay("Cancelled.", step="done")

    @step("o", "done")
    def done(self, ctx: Context) -> Outcome:
        return ctx.stay()


def _run(minutes: int) -> tuple[Engine, list[Any]]:
    CALLS.clear()
    clock = FakeClock()
    engine = Engine(Offer(), MemoryStore(clock=clock), clock=clock)
    engine.handle("u", "hi", message_id="m1")
    clock.advance(60)
    said: list[Any] = []
    for _ in range(minutes * 2):
        engine.fire_due(on_result=lambda u, r: said.append(r.texts))
        clock.advance(30)
    return engine, said


def test_the_timers_own_replies_are_lost_when_its_action_fails_on_io() -> None:
    MODE["fail"] = "once"
    engine, said = _run(5)
    snap = engine.peek("u")
    assert snap is not None and snap.step == "done"  # the re-claim finished the action
    flat = [t for texts in said for t in texts]
    assert "Your offer expired; cancelling it." in flat, f"on_result got only {said}"


def test_a_failing_action_after_a_timer_is_retried_forever() -> None:
    MODE["fail"] = "always"
    engine, _ = _run(30)
    assert len(CALLS) <= 3, (
        f"the failing action ran {len(CALLS)} times in 30 minutes of ticking "
        f"(timers_failed={engine.stats['timers_failed']}, "
        f"timer_errors={engine.stats['timer_errors']})"
    )
