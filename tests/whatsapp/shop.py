"""A small flow for the transport's tests: a list, buttons, and typed vs pressed "cancel"."""

from __future__ import annotations

from fsm import Context, Flow, Outcome, Stage, step
from fsm.reply import buttons, choices, pick

FRUITS = choices("Pick a fruit", [("fruit-apple", "Apple"), ("fruit-pear", "Pear")])
CONFIRM = buttons("Buy it?", [("cancel", "Cancel"), ("ok", "OK")])


class Shop(Flow):
    name = "shop"
    takes_first_message = True
    stages = (Stage("start", ("hello", "fruit", "confirm")),)
    transitions = ()
    blocking = False

    @step("start", "hello")
    def hello(self, ctx: Context) -> Outcome:
        return ctx.stay(f"Hello, you said {ctx.text}", FRUITS, step="fruit")

    @step("start", "fruit")
    def fruit(self, ctx: Context) -> Outcome:
        chosen = pick(FRUITS, ctx.text)
        if chosen is None:
            return ctx.stay("Please pick a fruit from the list.", FRUITS)
        return ctx.stay(
            CONFIRM.with_body(f"Buy one {chosen.title}?"),
            step="confirm",
            set={"fruit": chosen.title},
        )

    @step("start", "confirm")
    def confirm(self, ctx: Context) -> Outcome:
        if ctx.pressed == "cancel":
            return ctx.stay("Cancelled (button).", step="hello", unset=["fruit"])
        if ctx.pressed == "ok":
            return ctx.stay(f"Bought one {ctx.data['fruit']}.", step="hello", unset=["fruit"])
        return ctx.stay(f"You typed {ctx.text!r}: please press a button.", CONFIRM)
