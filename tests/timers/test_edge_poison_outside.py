"""Review: input from outside the conversation (an event, a timer) counts towards poisoning a
session (``poison_after`` distinct inputs failing on one version); the quarantine it triggers
then has no save of the restarted conversation behind it (the next pass finds "no
conversation" / "nothing due" and returns): the event is reported *ignored*, the replies still
pending in the outbox (``Message.carried``) and the reset notice are lost, and the user's next
message is told the session *expired*."""

from __future__ import annotations

from adapters import MemoryStore
from fsm import Context, Engine, FakeClock, Flow, Outcome, Stage, on_enter, on_event, step


class Shop(Flow):
    name = "shop"
    stages = (Stage("menu", steps=("home",)),)
    transitions = ()

    @on_enter("menu", "home")
    def prompt(self, ctx: Context) -> list[str]:
        return ["Menu"]

    @step("menu", "home")
    def home(self, ctx: Context) -> Outcome:
        return ctx.stay("ok")

    @on_event("offer")
    def offer(self, ctx: Context) -> Outcome:
        raise KeyError("amount")  # the flow's bug, the same for every user


def test_failing_events_quarantine_the_session_and_lose_its_pending_replies() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    engine = Engine(Shop(), store, clock=clock, outbox=True, poison_after=3)
    first = engine.handle("u", "hi", message_id="m1")
    assert first.texts  # replies saved in the outbox, not confirmed yet (the channel was down)
    before = engine.peek("u")
    assert before is not None and before.outbox
    results = []
    for n in range(3):
        try:
            results.append(engine.notify("u", "offer", data={}, event_id=f"ev{n}"))
        except Exception as exc:  # noqa: BLE001
            results.append(type(exc).__name__)
    after = engine.peek("u")
    # Whatever the policy on poisoning, the user's conversation and its unsent replies must
    # not vanish without a trace in the live store because an event handler is broken.
    assert after is not None and after.outbox, (
        f"results={results!r}; session now {after!r}; quarantined={len(list(store.quarantined()))}"
    )
