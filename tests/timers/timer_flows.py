"""Small flows with timers and events, for the timer and event tests."""

from __future__ import annotations

from fsm import Context, Flow, Outcome, Stage, on_enter, on_event, step, timeout


class Nudge(Flow):
    """A menu, and an order with a confirm step that is nudged after 10 minutes and dropped
    20 minutes later; a ``ping`` event says something wherever the user is; ``gift`` starts
    a conversation; ``buy`` at the order moves it."""

    name = "nudge"
    stages = (
        Stage("menu", steps=("home",)),
        Stage("order", steps=("amount", "confirm")),
    )
    transitions = (("order", "menu", "order"), ("done", "order", "menu"))

    @on_enter("menu", "home")
    def home_prompt(self, ctx: Context) -> list[str]:
        return ["Menu: 1 to order"]

    @step("menu", "home")
    def home(self, ctx: Context) -> Outcome:
        if ctx.text == "1":
            return ctx.go("order")
        return ctx.stay("Say 1")

    @on_enter("order", "amount")
    def amount_prompt(self, ctx: Context) -> list[str]:
        return ["How much?"]

    @step("order", "amount")
    def amount(self, ctx: Context) -> Outcome:
        return ctx.stay(step="confirm", set={"amount": ctx.text})

    @on_enter("order", "confirm")
    def confirm_prompt(self, ctx: Context) -> list[str]:
        return [f"Confirm {ctx.data['amount']}? yes/no"]

    @step("order", "confirm")
    def confirm(self, ctx: Context) -> Outcome:
        if ctx.text == "yes":
            return ctx.go("done", "Ordered.", unset=["amount"])
        if ctx.text == "no":
            return ctx.go("done", "Cancelled.", unset=["amount"])
        return ctx.stay("yes or no?")

    @timeout("order", "confirm", after="10m", max_late="5m")
    def remind(self, ctx: Context) -> Outcome:
        return ctx.stay(f"Still there? Confirm {ctx.data['amount']}? yes/no")

    @timeout("order", "confirm", after="25m", rearm=True)
    def drop(self, ctx: Context) -> Outcome:
        return ctx.go("done", "Your order was dropped.", unset=["amount"])

    @on_event("ping")
    def ping(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        return ctx.stay(f"Ping: {ctx.event.data.get('note', '')}")

    @on_event("gift", starts=True, reprompt=False)
    def gift(self, ctx: Context) -> Outcome:
        assert ctx.event is not None
        return ctx.stay(f"A gift of {ctx.event.data['amount']}")

    @on_event("buy", stage="order", reprompt=False)
    def buy(self, ctx: Context) -> Outcome:
        return ctx.go("done", "Bought by the shop.", unset=["amount"])
